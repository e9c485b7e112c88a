//! Active health checks: every pool with a `health_check` has each backend probed on its
//! interval, over the pool's protocol and TLS (a `GET`, or gRPC's health service); `fall` consecutive failures make it unhealthy, `rise`
//! consecutive passes healthy again (a never-checked backend needs one pass). Health lives in
//! the backend's registry state, so it survives reloads. Changes wake held requests.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use pingora::{
    connectors::http::Connector, http::RequestHeader, protocols::http::client::HttpSession,
    upstreams::peer::HttpPeer,
};
use pingora::{server::ShutdownWatch, services::background::BackgroundService};

use crate::{
    config::spec::HealthCheck,
    state::{backend::BackendState, AppState},
};

/// Background service running the checks.
pub struct HealthChecker {
    pub state: Arc<AppState>,
}

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // Next due time per backend id; checks run on the current table each tick.
        let mut due: HashMap<Arc<str>, Instant> = HashMap::new();
        loop {
            self.tick(&mut due);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                // Checks stop with the listeners: nothing new is routed any more.
                _ = shutdown.changed() => return,
            }
        }
    }
}

impl HealthChecker {
    /// Start the checks that are due; forget backends no longer in the table.
    fn tick(&self, due: &mut HashMap<Arc<str>, Instant>) {
        let table = self.state.table_full();
        let now = Instant::now();
        for pool in table.pools.values() {
            let Some(hc) = &pool.spec.health_check else {
                continue;
            };
            for b in pool.backends.iter().filter(|b| b.addr.is_some()) {
                let next = due.entry(b.id.clone()).or_insert(now);
                if *next > now {
                    continue;
                }
                *next = now + hc.interval;
                let Some(addr) = b.addr else { continue };
                let mut peer = pool.spec.upstream.peer(addr, &b.spec.address, false);
                peer.options.connection_timeout = Some(hc.timeout);
                peer.options.read_timeout = Some(hc.timeout);
                let host = b.spec.address.clone();
                let (st, hc, state) = (b.state.clone(), hc.clone(), self.state.clone());
                tokio::spawn(async move { check(&state, &st, peer, &host, &hc).await });
            }
        }
        due.retain(|id, _| table.backends().any(|(_, b)| b.id == *id));
    }
}

/// One check and its consequences: health changes are logged and wake held requests.
async fn check(state: &AppState, st: &BackendState, peer: HttpPeer, host: &str, hc: &HealthCheck) {
    let ok = probe(peer, host, hc).await;
    if let Err(why) = &ok {
        tracing::debug!(backend = %st.id, why, "health check failed");
    }
    // A pass also ends a passive failure streak: requests held after failing to connect
    // here may try again.
    let recovered = ok.is_ok() && st.record_connect_ok();
    let changed = st.record_check(ok.is_ok(), hc.rise, hc.fall);
    if recovered && changed.is_none() {
        state.availability_changed();
    }
    if let Some(healthy) = changed {
        if healthy {
            tracing::info!(backend = %st.id, "backend healthy");
        } else {
            tracing::warn!(backend = %st.id, error = ?ok.err(), "backend unhealthy");
        }
        state.availability_changed();
    }
}

/// One probe over the pool's own protocol and TLS (pingora's connector, as proxied requests
/// use): `GET path` compared with `expected_status`, or gRPC's `Health/Check` answering
/// SERVING.
async fn probe(peer: HttpPeer, host: &str, hc: &HealthCheck) -> Result<(), String> {
    let work = async {
        let connector = connector();
        let (mut s, _) = connector
            .get_http_session(&peer)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        match &hc.grpc {
            None => http_check(&mut s, host, hc).await,
            Some(service) => grpc_check(&mut s, host, service).await,
        }
    };
    tokio::time::timeout(hc.timeout, work)
        .await
        .map_err(|_| "timed out".to_string())?
}

/// One connector for every check (its TLS roots are loaded once).
fn connector() -> &'static Connector {
    static C: std::sync::OnceLock<Connector> = std::sync::OnceLock::new();
    C.get_or_init(|| Connector::new(None))
}

async fn http_check(s: &mut HttpSession, host: &str, hc: &HealthCheck) -> Result<(), String> {
    let mut req =
        RequestHeader::build("GET", hc.path.as_bytes(), None).map_err(|e| e.to_string())?;
    req.insert_header(http::header::HOST, host)
        .map_err(|e| e.to_string())?;
    req.insert_header(http::header::USER_AGENT, "tidegate-health-check")
        .map_err(|e| e.to_string())?;
    if s.as_http1().is_some() {
        req.insert_header(http::header::CONNECTION, "close")
            .map_err(|e| e.to_string())?;
    }
    let code = exchange(s, req, None).await?.status.as_u16();
    if code == hc.expected_status {
        Ok(())
    } else {
        Err(format!("status {code}, expected {}", hc.expected_status))
    }
}

/// Send `req` (and `body`), and read the answer's header.
async fn exchange(
    s: &mut HttpSession,
    req: RequestHeader,
    body: Option<bytes::Bytes>,
) -> Result<pingora::http::ResponseHeader, String> {
    let w = |e: pingora::BError| format!("write: {e}");
    s.write_request_header(Box::new(req)).await.map_err(w)?;
    if let Some(b) = body {
        s.write_request_body(b, true).await.map_err(w)?;
    }
    s.finish_request_body().await.map_err(w)?;
    s.read_response_header()
        .await
        .map_err(|e| format!("read: {e}"))?;
    s.response_header()
        .cloned()
        .ok_or_else(|| "no response header".to_string())
}

/// The largest gRPC health answer read (a real one is a few bytes).
const MAX_HEALTH_ANSWER: usize = 64 * 1024;

/// `grpc.health.v1.Health/Check` for `service`: the answer must be OK and SERVING.
async fn grpc_check(s: &mut HttpSession, host: &str, service: &str) -> Result<(), String> {
    let e = |e: pingora::BError| e.to_string();
    let mut req = RequestHeader::build("POST", b"/grpc.health.v1.Health/Check", None).map_err(e)?;
    req.insert_header(http::header::HOST, host).map_err(e)?;
    req.insert_header(http::header::CONTENT_TYPE, "application/grpc")
        .map_err(e)?;
    req.insert_header(http::header::TE, "trailers").map_err(e)?;
    req.insert_header(http::header::USER_AGENT, "tidegate-health-check")
        .map_err(e)?;
    let head = exchange(s, req, Some(grpc_health::request(service)?)).await?;
    if head.status != 200 {
        return Err(format!("HTTP status {}", head.status.as_u16()));
    }
    let mut msg = Vec::new();
    while let Some(b) = s
        .read_response_body()
        .await
        .map_err(|e| format!("read: {e}"))?
    {
        msg.extend_from_slice(&b);
        if msg.len() > MAX_HEALTH_ANSWER {
            return Err("answer larger than 64 KiB".into());
        }
    }
    let trailers = match s {
        HttpSession::H2(h2) => h2.read_trailers().await.map_err(|e| format!("read: {e}"))?,
        _ => None,
    };
    let status = trailers
        .as_ref()
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| head.headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("missing");
    if status != "0" {
        return Err(format!("grpc-status {status}"));
    }
    grpc_health::serving(&msg)
}

/// The two messages of `grpc.health.v1.Health/Check`, in gRPC's framing: small enough to
/// write out (one string field in, one enum field out) rather than pull a protobuf
/// toolchain into the proxy.
mod grpc_health {
    use bytes::Bytes;

    /// `HealthCheckRequest { string service = 1; }`, length-prefixed, uncompressed.
    pub fn request(service: &str) -> Result<Bytes, String> {
        let n = service.len();
        if n > 127 {
            return Err("grpc_service is longer than 127 bytes".into());
        }
        let mut msg = Vec::with_capacity(2 + n);
        if n > 0 {
            msg.extend_from_slice(&[0x0a, n as u8]);
            msg.extend_from_slice(service.as_bytes());
        }
        let mut out = Vec::with_capacity(5 + msg.len());
        out.push(0);
        out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        out.extend_from_slice(&msg);
        Ok(Bytes::from(out))
    }

    /// `HealthCheckResponse { ServingStatus status = 1; }` must say SERVING (1).
    pub fn serving(framed: &[u8]) -> Result<(), String> {
        let Some((&flag, rest)) = framed.split_first() else {
            return Err("empty answer".into());
        };
        if flag != 0 || rest.len() < 4 {
            return Err("unexpected answer framing".into());
        }
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let msg = rest.get(4..4 + len).ok_or("truncated answer")?;
        // Field 1, varint: tag 0x08. Unknown fields before it are not expected here.
        let status = match msg {
            [0x08, v, ..] => *v,
            _ => 0,
        };
        match status {
            1 => Ok(()),
            2 => Err("NOT_SERVING".into()),
            3 => Err("SERVICE_UNKNOWN".into()),
            _ => Err("UNKNOWN".into()),
        }
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn frames_the_request_and_reads_the_status() {
            assert_eq!(&super::request("").unwrap()[..], &[0, 0, 0, 0, 0]);
            assert_eq!(
                &super::request("a.B").unwrap()[..],
                &[0, 0, 0, 0, 5, 0x0a, 3, b'a', b'.', b'B']
            );
            assert!(super::serving(&[0, 0, 0, 0, 2, 0x08, 1]).is_ok());
            assert_eq!(
                super::serving(&[0, 0, 0, 0, 2, 0x08, 2]).unwrap_err(),
                "NOT_SERVING"
            );
            assert!(super::serving(&[0, 0, 0, 0, 0]).is_err());
            assert!(super::serving(&[0, 0, 0, 0, 9, 0x08]).is_err());
        }
    }
}
