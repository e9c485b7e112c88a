// tidegate status page: live status from GET /api/v1/events (server-sent events read with
// fetch, so the bearer token travels in a header, never in a URL), and confirmed actions on
// the admin API. No framework, no external asset; values are written with textContent.
"use strict";

const TOKEN_KEY = "tidegate-admin-token";
const state = { status: null, offset: 0, prev: new Map(), pending: null, retryMs: 1000,
  history: { samples: [], marks: [], seq: 0 } };

const $ = (id) => document.getElementById(id);
const token = () => sessionStorage.getItem(TOKEN_KEY) || "";

function headers(json) {
  const h = {};
  if (token()) h["Authorization"] = "Bearer " + token();
  if (json) h["Content-Type"] = "application/json";
  return h;
}

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    // Through the CSSOM: the Content-Security-Policy forbids inline style attributes.
    else if (k === "width") e.style.width = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const k of kids) if (k !== null && k !== undefined) e.append(k);
  return e;
}

// A value that flashes when it differs from the last render under the same key.
function live(key, value, tag) {
  const text = String(value);
  const e = el(tag || "span", { text, "data-key": key });
  const before = state.prev.get(key);
  if (before !== undefined && before !== text) e.classList.add("changed");
  state.prev.set(key, text);
  return e;
}

function badge(s) { return el("span", { class: "badge", "data-state": s, text: s }); }

function setConn(s, text) { const c = $("conn"); c.dataset.state = s; c.textContent = text || s; }

function notice(text, kind) {
  const n = $("notice");
  n.hidden = !text;
  n.textContent = text || "";
  n.dataset.kind = kind || "info";
}

// "1h30m", "250ms", "30s", "0" → seconds (0 = none).
function seconds(d) {
  if (!d || d === "0") return 0;
  let total = 0;
  for (const [, n, u] of String(d).matchAll(/([\d.]+)\s*(ms|s|m|h|d)/g)) {
    total += parseFloat(n) * { ms: 0.001, s: 1, m: 60, h: 3600, d: 86400 }[u];
  }
  return total;
}

function fmtSecs(s) {
  if (s === null || s === undefined) return "–";
  s = Math.max(0, s);
  if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + "s";
  const m = Math.floor(s / 60), r = Math.floor(s % 60);
  if (m < 60) return m + "m" + String(r).padStart(2, "0") + "s";
  return Math.floor(m / 60) + "h" + String(m % 60).padStart(2, "0") + "m";
}

const now = () => Date.now() / 1000 + state.offset;

// ---- the events stream -------------------------------------------------------------
async function connect() {
  setConn("connecting", "connecting…");
  let resp;
  try {
    resp = await fetch("/api/v1/events", { headers: headers(false), cache: "no-store" });
  } catch (e) {
    return retry("proxy unreachable");
  }
  if (resp.status === 401) {
    setConn("unauthorized", "401");
    showAuth(token()
      ? "401 Unauthorized: the proxy refused this token. Enter the admin token again."
      : "This proxy's admin API requires a bearer token (admin.token_env or admin.token_file in its config). Enter it to see the live status.");
    return;
  }
  if (!resp.ok || !resp.body) return retry("HTTP " + resp.status);
  $("auth").hidden = true;
  state.retryMs = 1000;
  setConn("live", "live");
  const reader = resp.body.getReader();
  const dec = new TextDecoder();
  let buf = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        onEvent(block);
      }
    }
  } catch (e) { /* connection lost */ }
  retry("connection lost");
}

function retry(why) {
  setConn("reconnecting", "reconnecting (" + why + ")");
  const wait = state.retryMs;
  state.retryMs = Math.min(state.retryMs * 2, 10000);
  setTimeout(connect, wait);
}

function onEvent(block) {
  let type = "message", data = "";
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) type = line.slice(6).trim();
    else if (line.startsWith("data:")) data += line.slice(5).trimStart();
  }
  if (!data) return;
  if (type === "history") return onHistory(JSON.parse(data));
  if (type !== "status") return;
  const ev = JSON.parse(data);
  state.offset = ev.now - Date.now() / 1000;
  state.status = ev;
  render();
}

// History comes first whole (what the proxy keeps: 15 minutes), then in increments.
function onHistory(h) {
  const hist = state.history;
  for (const s of h.samples) if (s.seq > hist.seq) hist.samples.push(s);
  for (const m of h.marks) if (m.seq > hist.seq) hist.marks.push(m);
  hist.seq = Math.max(hist.seq, ...h.samples.map((s) => s.seq), ...h.marks.map((m) => m.seq));
  const oldest = now() - 15 * 60;
  hist.samples = hist.samples.filter((s) => s.t >= oldest);
  hist.marks = hist.marks.filter((m) => m.t >= oldest);
  renderCharts();
}

// ---- rendering -----------------------------------------------------------------------
function render() {
  const s = state.status;
  if (!s) return;
  $("meta").textContent = "generation " + s.generation + " · " + s.in_flight + " in flight" +
    (s.shutting_down ? " · shutting down" : "") + (s.ready ? "" : " · not ready");
  renderMaintenance(s.maintenance);
  $("routes").replaceChildren(...s.routes.map(renderRoute));
  $("pools").replaceChildren(...Object.entries(s.pools).map(([n, p]) => renderPool(n, p)),
    ...(s.removed.length ? [renderRemoved(s.removed)] : []));
  renderSpool(s.spool || []);
  renderFleet(s.fleet);
  renderCharts();
}

// With a control_store: the proxies of the fleet, their heartbeats and their work.
function renderFleet(f) {
  $("fleet").hidden = !f;
  if (!f) return;
  const store = f.store_reachable ? badge("reachable")
    : el("span", { class: "badge", "data-state": "unhealthy", text: "store unreachable" });
  $("fleet-list").replaceChildren(el("div", { class: "card" },
    el("p", {}, "node ", el("code", { text: f.node }), " · control store ", store,
      " · revision " + f.rev + (f.loaded ? "" : " · not loaded")),
    el("div", { class: "scroll" }, el("table", {},
      el("thead", {}, el("tr", {}, el("th", { text: "proxy" }), el("th", { text: "admin" }),
        el("th", { text: "heartbeat" }), el("th", { class: "num", text: "rev" }),
        ...KINDS.map((k) => el("th", { class: "num", text: k })))),
      el("tbody", {}, ...f.proxies.map((p) => el("tr", { "data-proxy": p.node, "data-lost": String(p.lost) },
        el("td", {}, p.node + (p.me ? " (this)" : "")), el("td", { text: p.admin }),
        el("td", {}, p.lost ? badge("lost") : fmtSecs(p.heartbeat_age_seconds)),
        el("td", { class: "num", text: String(p.rev) }),
        ...KINDS.map((k) => el("td", { class: "num", text: String(p.in_flight[k] || 0) })))))))));
}

function renderMaintenance(m) {
  const box = $("maintenance");
  const on = m && m.maintenance;
  box.replaceChildren(el("div", { class: "card row" },
    el("strong", { text: "Maintenance" }), badge(on ? "on" : "off"),
    on ? el("span", { class: "kv", text: (m.message || "") }) : null,
    el("button", { text: on ? "Turn maintenance off" : "Turn maintenance on",
      "data-action": on ? "maintenance-off" : "maintenance-on",
      onclick: () => ask(on ? "Turn maintenance mode off?" :
        "Turn maintenance mode on? Every route answers 503 until it is turned off.",
        on ? () => call("DELETE", "/api/v1/maintenance")
           : () => call("POST", "/api/v1/maintenance", {})) })));
}

function renderRoute(r) {
  const total = Object.values(r.split).reduce((a, b) => a + b, 0) || 1;
  const bar = el("div", { class: "bar" }, ...Object.entries(r.split).map(([p, w]) =>
    el("span", { width: (100 * w / total) + "%", title: p + " " + w, text: w ? p : "" })));
  const rows = Object.entries(r.split).map(([p, w]) => el("tr", {},
    el("td", { text: p }), el("td", { class: "num" }, live("route/" + r.name + "/" + p, w)),
    el("td", { class: "num", text: String((r.file_split || {})[p] ?? "–") }),
    el("td", {}, el("input", { type: "number", min: "0", max: "10000", value: String(w),
      "data-route": r.name, "data-pool": p, "aria-label": "new weight of " + p }))));
  const ramp = r.ramp ? el("div", { class: "row" }, el("strong", { text: "Ramp" }),
    badge(r.ramp.state),
    el("span", { class: "kv" }, "step ", live("ramp/" + r.name, r.ramp.steps_done + "/" + r.ramp.steps_total, "b")),
    el("span", { class: "kv", text: "→ " + JSON.stringify(r.ramp.to) }),
    r.ramp.reason ? el("span", { class: "kv", text: r.ramp.reason }) : null) : null;
  return el("div", { class: "card", "data-route": r.name },
    el("h3", {}, r.name, r.override ? badge("override") : null),
    bar, ramp, picking(r.picking),
    el("div", { class: "scroll" }, el("table", {},
      el("thead", {}, el("tr", {}, el("th", { text: "pool" }), el("th", { class: "num", text: "weight" }),
        el("th", { class: "num", text: "file" }), el("th", { text: "shift to" }))),
      el("tbody", {}, ...rows))),
    el("div", { class: "row" },
      el("button", { text: "Shift split", "data-action": "shift", "data-route": r.name,
        onclick: () => shift(r.name) }),
      r.override ? el("button", { text: "Back to file split", "data-action": "unshift",
        onclick: () => ask("Put route " + r.name + " back on the file's split?",
          () => call("DELETE", "/api/v1/routes/" + enc(r.name) + "/split")) }) : null));
}

// How the route picks pools: its affinity mode and key, forced pools, pick counts.
function picking(p) {
  if (!p) return null;
  const mode = p.affinity
    ? p.affinity + (p.key_name ? " " + p.key_name : "") + (p.sticky_backends ? ", sticky backends" : "")
    : "none (every request by the split)";
  const forced = p.force_pool
    ? el("span", { class: "kv", "data-force": "1",
        text: "forced by " + p.force_pool.from + " " + p.force_pool.name + ": " +
          p.force_pool.pools.join(", ") + " (else " + p.force_pool.fallback + ")" })
    : null;
  const picks = Object.entries(p.picks || {}).filter(([, n]) => n > 0)
    .map(([how, n]) => how + " " + n).join(" · ");
  return el("div", { class: "row", "data-affinity": p.affinity || "none" },
    el("strong", { text: "Affinity" }), el("span", { class: "kv", text: mode }), forced,
    picks ? el("span", { class: "kv", text: picks }) : null);
}

function drainLine(key, startedAt, drainedAt, deadlines) {
  if (!startedAt) return null;
  if (drainedAt) {
    return el("div", { class: "row", "data-drain": key }, el("span", { class: "kv" },
      "drained in ", el("b", { text: fmtSecs(drainedAt - startedAt) }),
      ", " + fmtSecs(now() - drainedAt) + " ago"));
  }
  const elapsed = now() - startedAt;
  const parts = [el("span", { class: "kv" }, "draining for ", el("b", { "data-since": startedAt, text: fmtSecs(elapsed) }))];
  if (deadlines) {
    for (const [name, d] of [["requests", deadlines.requests_deadline], ["streams", deadlines.streams_deadline]]) {
      const secs = seconds(d);
      parts.push(el("span", { class: "kv" }, name + " deadline ",
        secs ? el("span", { class: "countdown", "data-deadline": startedAt + secs, text: fmtSecs(startedAt + secs - now()) })
             : el("b", { text: "none" })));
    }
  }
  return el("div", { class: "row", "data-drain": key }, ...parts);
}

// The kinds of work, as the server names them (the keys of every `in_flight`, in its order):
// a kind added to the server shows up here without a change.
let KINDS = ["http", "sse", "websocket", "grpc"];

function renderPool(name, p) {
  KINDS = Object.keys(p.in_flight);
  const rows = p.backends.map((b) => backendRow(b));
  const draining = p.state !== "active";
  return el("div", { class: "card", "data-pool": name },
    el("h3", {}, name, badge(p.state), p.backends_override ? badge("runtime members") : null),
    el("div", { class: "row" },
      ...KINDS.map((k) => el("span", { class: "kv" }, k + " ", live("pool/" + name + "/" + k, p.in_flight[k], "b"))),
      el("button", { text: draining ? "Undrain" : "Drain", "data-action": draining ? "undrain" : "drain",
        "data-pool": name, onclick: () => draining
          ? ask("Undrain pool " + name + "? It takes new traffic again.",
              () => call("POST", "/api/v1/pools/" + enc(name) + "/undrain"))
          : ask("Drain pool " + name + "? It stops taking new requests; work in flight finishes.",
              () => call("POST", "/api/v1/pools/" + enc(name) + "/drain", {})) })),
    drainLine(name, p.drain_started_at, p.drained_at, p.drain_deadlines),
    el("div", { class: "charts", "data-charts": name }),
    el("div", { class: "scroll" }, el("table", {},
      el("thead", {}, el("tr", {}, ...["backend", "address", "state", "health", "weight", ...KINDS, "oldest stream", "connect fails"]
        .map((h, i) => el("th", { class: i >= 4 ? "num" : "", text: h })))),
      el("tbody", {}, ...rows))));
}

function backendRow(b) {
  const k = "backend/" + b.id + "/";
  return el("tr", { "data-backend": b.id },
    el("td", { text: b.name }), el("td", { text: b.address || "–" }),
    el("td", {}, badge(b.state)),
    el("td", {}, badge(b.healthy ? (b.available ? "healthy" : "unavailable") : "down")),
    el("td", { class: "num", text: b.weight ?? "–" }),
    ...KINDS.map((kind) => el("td", { class: "num" }, live(k + kind, b.in_flight[kind] ?? 0))),
    el("td", { class: "num", text: b.oldest_stream_age_seconds == null ? "–" : fmtSecs(b.oldest_stream_age_seconds) }),
    el("td", { class: "num" }, live(k + "fails", b.connect_failures)));
}

function renderRemoved(list) {
  return el("div", { class: "card" }, el("h3", {}, "Removed, still busy"),
    el("div", { class: "scroll" }, el("table", {}, el("tbody", {}, ...list.map(backendRow)))));
}

function renderSpool(list) {
  if (!list.length) { $("spool").replaceChildren(el("p", { class: "hint", text: "No route spools." })); return; }
  $("spool").replaceChildren(el("div", { class: "card scroll" }, el("table", {},
    el("thead", {}, el("tr", {}, el("th", { text: "route" }), el("th", { class: "num", text: "pending" }),
      el("th", { class: "num", text: "dead" }), el("th", { class: "num", text: "oldest pending" }))),
    el("tbody", {}, ...list.map((d) => el("tr", { "data-spool": d.route }, el("td", { text: d.route }),
      el("td", { class: "num" }, live("spool/" + d.route + "/pending", d.pending)),
      el("td", { class: "num" }, live("spool/" + d.route + "/dead", d.dead)),
      el("td", { class: "num", text: fmtSecs(d.oldest_pending_seconds) })))))));
}

// ---- charts: the last minutes of each pool, with the moments of changes -----------------
const SVG = "http://www.w3.org/2000/svg";
const CHARTS = [
  { title: "per second", series: [["rps", "requests"], ["errors", "5xx"], ["connect_failures", "connect failures"]] },
  { title: "now", get series() { return [...KINDS.map((k) => [k, k]), ["held", "held"]]; } },
];
const W = 600, H = 110;

function svg(tag, attrs, ...kids) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const k of kids) e.append(k);
  return e;
}

function clock(t) { return new Date(t * 1000).toTimeString().slice(0, 8); }

function renderCharts() {
  const { samples, marks } = state.history;
  const t1 = now();
  const first = samples.length ? samples[0].t : t1;
  const span = Math.min(15 * 60, Math.max(120, t1 - first));
  const t0 = t1 - span;
  const x = (t) => ((t - t0) / span) * W;
  const shown = marks.filter((m) => m.t >= t0);
  for (const box of document.querySelectorAll("[data-charts]")) {
    const pool = box.dataset.charts;
    const pts = samples.filter((s) => s.pools[pool]).map((s) => [s.t, s.pools[pool]]);
    box.replaceChildren(el("div", { class: "chart-row" }, ...CHARTS.map((c) => chart(c, pts, shown, x))),
      el("div", { class: "axis" }, el("span", { text: clock(t0) }), el("span", { text: "last " + fmtSecs(span) }),
        el("span", { text: clock(t1) })),
      shown.length ? el("ul", { class: "marks" }, ...shown.slice(-8).map((m) =>
        el("li", { "data-mark": m.kind }, el("b", { text: clock(m.t) }), " " + m.text))) : null);
  }
}

function chart(c, pts, marks, x) {
  const max = Math.max(1, ...pts.flatMap(([, p]) => c.series.map(([k]) => p[k] || 0)));
  const top = niceCeil(max);
  const y = (v) => H - 4 - (v / top) * (H - 8);
  const lines = c.series.map(([k]) => svg("polyline", { class: "s s-" + k, "data-series": k,
    points: pts.map(([t, p]) => x(t).toFixed(1) + "," + y(p[k] || 0).toFixed(1)).join(" ") }));
  const ticks = marks.map((m) => svg("line", { class: "mark m-" + m.kind, x1: x(m.t), x2: x(m.t), y1: 0, y2: H },
    svg("title", {}, clock(m.t) + " " + m.text)));
  const last = pts.length ? pts[pts.length - 1][1] : {};
  return el("figure", { class: "chart" },
    el("figcaption", {}, el("span", { class: "kv", text: c.title + " (max " + fmt(top) + ")" }),
      ...c.series.map(([k, label]) => el("span", { class: "legend l-" + k },
        label + " ", el("b", { "data-now": k, text: fmt(last[k] || 0) })))),
    svg("svg", { viewBox: "0 0 " + W + " " + H, preserveAspectRatio: "none", role: "img",
      "aria-label": c.title }, svg("line", { class: "base", x1: 0, x2: W, y1: H - 4, y2: H - 4 }), ...ticks, ...lines));
}

function niceCeil(v) {
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

function fmt(v) { return v >= 100 || Number.isInteger(v) ? String(Math.round(v)) : v.toFixed(1); }

// Countdowns and elapsed times move every second between events.
setInterval(() => {
  for (const e of document.querySelectorAll("[data-deadline]")) e.textContent = fmtSecs(parseFloat(e.dataset.deadline) - now());
  for (const e of document.querySelectorAll("[data-since]")) e.textContent = fmtSecs(now() - parseFloat(e.dataset.since));
}, 1000);

// ---- actions -------------------------------------------------------------------------
const enc = encodeURIComponent;

function ask(text, action) {
  state.pending = action;
  $("confirm-text").textContent = text;
  $("confirm").hidden = false;
  $("confirm-yes").focus();
}

function shift(route) {
  const split = {};
  for (const i of document.querySelectorAll('input[data-route="' + CSS.escape(route) + '"]')) {
    split[i.dataset.pool] = Math.max(0, Math.min(10000, parseInt(i.value, 10) || 0));
  }
  const desc = Object.entries(split).map(([p, w]) => p + "=" + w).join(" ");
  ask("Shift route " + route + " to " + desc + " now?",
    () => call("POST", "/api/v1/routes/" + enc(route) + "/split", { split }));
}

async function call(method, path, body) {
  notice("");
  let resp;
  try {
    // Every mutation says JSON, with or without a body: the API refuses the content types
    // a page of another origin could send.
    resp = await fetch(path, { method, headers: headers(method !== "GET" && method !== "HEAD"),
      body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) { return notice("The proxy is unreachable: " + e.message, "error"); }
  if (resp.status === 401) {
    showAuth("401 Unauthorized: the proxy refused " + (token() ? "this token" : "a call without a token") + ".");
    return notice("401 Unauthorized", "error");
  }
  let msg = method + " " + path + ": " + resp.status;
  try { const j = await resp.json(); if (j.message) msg += " — " + j.message; } catch (e) { /* no body */ }
  notice(msg, resp.ok ? "info" : "error");
}

function showAuth(why) {
  $("auth-why").textContent = why;
  $("auth").hidden = false;
  $("token").focus();
}

document.addEventListener("DOMContentLoaded", () => {
  $("confirm-yes").addEventListener("click", () => {
    const a = state.pending; state.pending = null; $("confirm").hidden = true; if (a) a();
  });
  $("confirm-no").addEventListener("click", () => { state.pending = null; $("confirm").hidden = true; });
  $("auth-form").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    $("auth").hidden = true;
    connect();
  });
  $("forget").addEventListener("click", () => { sessionStorage.removeItem(TOKEN_KEY); location.reload(); });
  connect();
});
