//! A small app instance to put behind tidegate: real HTTP/1.1 over TCP.
//!
//! | path | answer |
//! |---|---|
//! | `/slow?ms=N` | waits N ms, then 200 |
//! | `/events?interval_ms=N&count=K` | SSE, one event every N ms, K events (0 = forever) |
//! | `/events/push` | SSE fed by [`Backend::push`] (tests control exactly when events leave) |
//! | `/ws` | WebSocket echo |
//! | `/status/N` | answers with status N |
//! | `/readyz` | 200, or 503 after [`Backend::set_ready`]`(false)` (health checks) |
//! | `/headers` | the request headers as JSON |
//! | `/upload` | reads the request body, answers `received N bytes` |
//! | `/bytes?n=N` | streams N bytes in 64 KiB chunks |
//! | anything else | `200 hello from NAME` |
//!
//! Every response carries `x-backend: NAME`; requests are counted in [`Backend::hits`].

use std::{
    convert::Infallible,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::{
    body::Frame, body::Incoming, server::conn::http1, service::service_fn, Request, Response,
};
use hyper_util::rt::TokioIo;
use tokio::sync::broadcast;
use tokio_tungstenite::{tungstenite::protocol::Role, WebSocketStream};

type Body = BoxBody<Bytes, Infallible>;

/// A demo/test app instance.
#[derive(Debug)]
pub struct Backend {
    pub name: String,
    hits: AtomicU64,
    sse_open: AtomicU64,
    readyz_hits: AtomicU64,
    ready: std::sync::atomic::AtomicBool,
    failing: std::sync::atomic::AtomicBool,
    push_tx: broadcast::Sender<String>,
}

// Some methods are used only by the integration tests, which include this file by path.
#[allow(dead_code)]
impl Backend {
    /// A backend reporting `name`.
    pub fn new(name: &str) -> Arc<Self> {
        Arc::new(Self {
            name: name.to_string(),
            hits: AtomicU64::new(0),
            sse_open: AtomicU64::new(0),
            readyz_hits: AtomicU64::new(0),
            ready: std::sync::atomic::AtomicBool::new(true),
            failing: std::sync::atomic::AtomicBool::new(false),
            push_tx: broadcast::channel(1024).0,
        })
    }

    /// Requests received so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Make `/readyz` answer 200 (true) or 503 (false).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Make plain requests (the catch-all route) answer 500 (a bad release).
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::Relaxed);
    }

    /// `/readyz` requests so far (health checks).
    pub fn readyz_hits(&self) -> u64 {
        self.readyz_hits.load(Ordering::Relaxed)
    }

    /// Open SSE responses right now.
    pub fn sse_open(&self) -> u64 {
        self.sse_open.load(Ordering::Relaxed)
    }

    /// Send one event to every `/events/push` stream; returns how many streams got it.
    pub fn push(&self, data: &str) -> usize {
        self.push_tx.send(data.to_string()).unwrap_or(0)
    }

    /// Serve until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: tokio::net::TcpListener) {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let me = self.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let me = me.clone();
                    async move { Ok::<_, Infallible>(me.handle(req).await) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        if path == "/readyz" {
            // Health checks are not app traffic: counted apart.
            self.readyz_hits.fetch_add(1, Ordering::Relaxed);
            let ok = self.ready.load(Ordering::Relaxed);
            return self.text(
                if ok { 200 } else { 503 },
                format!("{}\n", if ok { "ready" } else { "not ready" }),
            );
        }
        self.hits.fetch_add(1, Ordering::Relaxed);
        let q = |k: &str| query(req.uri().query(), k);
        match path.as_str() {
            "/slow" => {
                tokio::time::sleep(Duration::from_millis(q("ms").unwrap_or(1000))).await;
                self.text(200, format!("slow hello from {}\n", self.name))
            }
            "/events" => {
                self.sse_ticking(q("interval_ms").unwrap_or(1000), q("count").unwrap_or(0))
            }
            "/events/push" => self.sse_push(),
            "/ws" => self.websocket(req),
            "/headers" => {
                let h: serde_json::Map<_, _> = req
                    .headers()
                    .iter()
                    .map(|(k, v)| (k.to_string(), serde_json::json!(v.to_str().unwrap_or(""))))
                    .collect();
                self.text(200, serde_json::Value::Object(h).to_string())
            }
            "/upload" => {
                let mut n = 0usize;
                let mut body = req.into_body();
                while let Some(Ok(f)) = body.frame().await {
                    n += f.data_ref().map_or(0, |d| d.len());
                }
                self.text(200, format!("received {n} bytes"))
            }
            "/bytes" => self.bytes(q("n").unwrap_or(0)),
            p if p.starts_with("/status/") => {
                let code = p[8..].parse().unwrap_or(500);
                self.text(code, format!("status {code} from {}\n", self.name))
            }
            _ => {
                // Drain any request body so uploads work.
                let _ = req.into_body().collect().await;
                if self.failing.load(Ordering::Relaxed) {
                    return self.text(500, format!("{} is broken\n", self.name));
                }
                self.text(200, format!("hello from {}\n", self.name))
            }
        }
    }

    fn text(&self, status: u16, body: String) -> Response<Body> {
        Response::builder()
            .status(status)
            .header("content-type", "text/plain")
            .header("x-backend", &self.name)
            .body(Full::new(Bytes::from(body)).boxed())
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
    }

    fn sse(&self, rx: tokio::sync::mpsc::Receiver<Bytes>) -> Response<Body> {
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
        });
        Response::builder()
            .header("content-type", "text/event-stream")
            .header("cache-control", "no-cache")
            .header("x-backend", &self.name)
            .body(BodyExt::boxed(StreamBody::new(stream)))
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
    }

    fn bytes(&self, n: u64) -> Response<Body> {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut left = n;
            while left > 0 {
                let len = left.min(64 * 1024);
                if tx
                    .send(Bytes::from(vec![b'x'; len as usize]))
                    .await
                    .is_err()
                {
                    return;
                }
                left -= len;
            }
        });
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
        });
        Response::builder()
            .header("content-type", "application/octet-stream")
            .header("x-backend", &self.name)
            .body(BodyExt::boxed(StreamBody::new(stream)))
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
    }

    fn sse_ticking(self: &Arc<Self>, interval_ms: u64, count: u64) -> Response<Body> {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let me = self.clone();
        tokio::spawn(async move {
            let _open = SseOpen::new(&me);
            let mut k = 0u64;
            while count == 0 || k < count {
                k += 1;
                let ev = format!("id: {k}\ndata: {} {k}\n\n", me.name);
                if tx.send(Bytes::from(ev)).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(interval_ms)).await;
            }
        });
        self.sse(rx)
    }

    fn sse_push(self: &Arc<Self>) -> Response<Body> {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let mut sub = self.push_tx.subscribe();
        let me = self.clone();
        tokio::spawn(async move {
            let _open = SseOpen::new(&me);
            // A comment line first so the client sees headers and a byte at once.
            if tx.send(Bytes::from_static(b": open\n\n")).await.is_err() {
                return;
            }
            loop {
                tokio::select! {
                    msg = sub.recv() => match msg {
                        Ok(data) => {
                            if data == "__end__" { return; }
                            if tx.send(Bytes::from(format!("data: {data}\n\n"))).await.is_err() { return; }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(_) => return,
                    },
                    _ = tx.closed() => return,
                }
            }
        });
        self.sse(rx)
    }

    fn websocket(self: &Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let key = req.headers().get("sec-websocket-key").cloned();
        let is_ws = req
            .headers()
            .get("upgrade")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
        let (true, Some(key)) = (is_ws, key) else {
            return self.text(400, "websocket upgrade expected\n".into());
        };
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        tokio::spawn(async move {
            let Ok(upgraded) = hyper::upgrade::on(req).await else {
                return;
            };
            let mut ws =
                WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
            while let Some(Ok(msg)) = ws.next().await {
                if msg.is_text() || msg.is_binary() {
                    if ws.send(msg).await.is_err() {
                        break;
                    }
                } else if msg.is_close() {
                    let _ = ws.flush().await;
                    break;
                }
            }
        });
        Response::builder()
            .status(101)
            .header("upgrade", "websocket")
            .header("connection", "Upgrade")
            .header("sec-websocket-accept", accept)
            .header("x-backend", &self.name)
            .body(Full::new(Bytes::new()).boxed())
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
    }
}

/// Counts an open SSE response for the lifetime of its producer task.
struct SseOpen(Arc<Backend>);

impl SseOpen {
    fn new(b: &Arc<Backend>) -> Self {
        b.sse_open.fetch_add(1, Ordering::Relaxed);
        Self(b.clone())
    }
}

impl Drop for SseOpen {
    fn drop(&mut self) {
        self.0.sse_open.fetch_sub(1, Ordering::Relaxed);
    }
}

fn query(q: Option<&str>, key: &str) -> Option<u64> {
    q?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.parse().ok()).flatten()
    })
}
