//! A recording HTTP backend on a chosen 127.0.0.1 port: every request (method, path,
//! headers, body) is kept, the answer's status is set by the test, and `stop` closes the
//! listener and every open connection (so the port refuses again).

use std::{
    collections::HashSet,
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU16, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request, Response};
use hyper_util::rt::TokioIo;

/// One request as the backend saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Seen {
    /// A header as text ("" when absent).
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    }

    /// `Tidegate-Spool-Id` as a number.
    pub fn spool_id(&self) -> i64 {
        self.header("tidegate-spool-id").parse().unwrap_or(-1)
    }
}

/// What the recorder shares with its connections.
#[derive(Default)]
pub struct Shared {
    pub seen: Mutex<Vec<Seen>>,
    /// Status to answer (200 unless set).
    pub status: AtomicU16,
    /// Statuses for the next requests, before `status`.
    pub script: Mutex<std::collections::VecDeque<u16>>,
    /// Milliseconds to wait before answering.
    pub delay_ms: AtomicU64,
    /// Spool ids being answered right now; a second concurrent one is a violation.
    pub in_flight: Mutex<HashSet<i64>>,
    /// Ids that arrived while the same id was being answered.
    pub overlaps: Mutex<Vec<i64>>,
}

pub struct Recorder {
    pub addr: SocketAddr,
    pub shared: Arc<Shared>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Recorder {
    /// Listen on `addr` (port 0: any free port).
    pub async fn start(addr: SocketAddr) -> Recorder {
        let shared = Arc::new(Shared::default());
        shared.status.store(200, Ordering::SeqCst);
        let mut r = Recorder {
            addr,
            shared,
            task: None,
        };
        r.listen().await;
        r
    }

    /// Start listening again on the same address, keeping what was recorded.
    pub async fn listen(&mut self) {
        let l = tokio::net::TcpListener::bind(self.addr)
            .await
            .expect("bind recorder");
        self.addr = l.local_addr().expect("recorder addr");
        let shared = self.shared.clone();
        self.task = Some(tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((s, _)) = l.accept().await else { return };
                let shared = shared.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |req| answer(shared.clone(), req));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        }));
    }

    /// Close the listener and every connection.
    pub fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    /// Requests seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// Answer `status` to the next `n` requests, then as before.
    pub fn fail_next(&self, status: u16, n: usize) {
        self.shared
            .script
            .lock()
            .unwrap()
            .extend(std::iter::repeat_n(status, n));
    }

    /// Answer `status` to every request (after any scripted ones).
    pub fn answer(&self, status: u16) {
        self.shared.status.store(status, Ordering::SeqCst);
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Takes a spool id out of flight on drop.
struct Answering(Arc<Shared>, i64);

impl Drop for Answering {
    fn drop(&mut self) {
        if self.1 >= 0 {
            self.0.in_flight.lock().unwrap().remove(&self.1);
        }
    }
}

async fn answer(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let seen = Seen {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map_or("/".into(), |p| p.to_string()),
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    let id = seen.spool_id();
    // Recorded on arrival: the app has the request, whatever becomes of the answer.
    shared.seen.lock().unwrap().push(seen);
    if id >= 0 && !shared.in_flight.lock().unwrap().insert(id) {
        shared.overlaps.lock().unwrap().push(id);
    }
    // Out of flight when answered, or when the sender goes away mid-answer (hyper drops
    // this future then).
    let _answering = Answering(shared.clone(), id);
    let delay = shared.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let scripted = shared.script.lock().unwrap().pop_front();
    let status = scripted.unwrap_or_else(|| shared.status.load(Ordering::SeqCst));
    let resp = Response::builder()
        .status(status)
        .body(Full::new(Bytes::from_static(b"ok\n")))
        .unwrap();
    Ok(resp)
}
