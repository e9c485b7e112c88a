//! Headless Chromium (Debian's `chromium` package) driven over the DevTools protocol: a
//! fresh profile in a temp dir, one page, commands sent over its WebSocket. Killed on drop.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::{connect_async, tungstenite::Message};

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    ws: Socket,
    next: u64,
}

impl Browser {
    /// Start Chromium headless with a blank page of `width`×`height`.
    pub async fn start(width: u32, height: u32) -> Browser {
        Self::start_with(width, height, &[]).await
    }

    /// [`Browser::start`] with more command-line switches.
    pub async fn start_with(width: u32, height: u32, extra: &[&str]) -> Browser {
        let profile = tempfile::tempdir().expect("profile dir");
        let child = Command::new("chromium")
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--remote-debugging-port=0",
                "--remote-allow-origins=*",
                &format!("--window-size={width},{height}"),
            ])
            .args(extra)
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromium not installed (apt-get install chromium)");
        // Chromium writes its DevTools port to the profile once it listens.
        let port_file = profile.path().join("DevToolsActivePort");
        let port: u16 = super::wait_for("chromium DevTools port", Duration::from_secs(30), || {
            let f = port_file.clone();
            async move {
                std::fs::read_to_string(f)
                    .ok()?
                    .lines()
                    .next()?
                    .parse()
                    .ok()
            }
        })
        .await;
        let list = super::wait_for("a page target", Duration::from_secs(10), || async move {
            let r = super::get(&format!("http://127.0.0.1:{port}/json/list"))
                .await
                .ok()?;
            let v: Value = serde_json::from_str(&r.body).ok()?;
            v.as_array()?.iter().find(|t| t["type"] == "page")?["webSocketDebuggerUrl"]
                .as_str()
                .map(str::to_owned)
        })
        .await;
        let (ws, _) = connect_async(list.as_str())
            .await
            .expect("devtools websocket");
        let mut b = Browser {
            child,
            _profile: profile,
            ws,
            next: 0,
        };
        b.call("Page.enable", json!({})).await;
        b.call("Runtime.enable", json!({})).await;
        b
    }

    /// One command; its result (events in between are skipped).
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        match self.try_call(method, params).await {
            Ok(v) => v,
            Err(e) => panic!("{method}: {e}"),
        }
    }

    /// [`Browser::call`], with the protocol's error as `Err` (e.g. the page navigated
    /// while an evaluation ran).
    pub async fn try_call(&mut self, method: &str, params: Value) -> Result<Value, String> {
        self.next += 1;
        let id = self.next;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws
            .send(Message::text(msg))
            .await
            .expect("devtools send");
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let m = tokio::time::timeout(left, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method}"))
                .expect("devtools closed")
                .expect("devtools read");
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(&t).expect("devtools json");
            if v["id"] == id {
                if let Some(e) = v.get("error") {
                    return Err(e.to_string());
                }
                return Ok(v["result"].clone());
            }
        }
    }

    pub async fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url})).await;
    }

    /// Evaluate `expr` in the page; its value.
    pub async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        if let Some(e) = r.get("exceptionDetails") {
            panic!("page threw on {expr}: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Poll `expr` until it is `true`, up to `limit` (an exception counts as not yet: the
    /// page may still be loading).
    pub async fn wait_true(&mut self, what: &str, expr: &str, limit: Duration) {
        let end = Instant::now() + limit;
        let guarded =
            format!("(() => {{ try {{ return ({expr}); }} catch (e) {{ return false; }} }})()");
        loop {
            // A navigation under way answers with a protocol error: not yet.
            let r = self
                .try_call(
                    "Runtime.evaluate",
                    json!({"expression": guarded, "returnByValue": true, "awaitPromise": true}),
                )
                .await;
            if r.is_ok_and(|r| r["result"]["value"] == json!(true)) {
                return;
            }
            if Instant::now() > end {
                let body = self.eval("document.body.innerText").await;
                panic!("timed out after {limit:?} waiting for {what}; page text:\n{body}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A PNG of the page as it is, `width` wide.
    pub async fn screenshot(&mut self, width: u32, height: u32) -> Vec<u8> {
        use base64::Engine;
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600}),
        )
        .await;
        // Two animation frames: the new width is laid out and painted.
        self.eval(
            "new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(true))))",
        )
        .await;
        let r = self
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().expect("screenshot data"))
            .expect("base64")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
