//! An experiment, not a product: the request loop of `bare_pingora` written directly on
//! pingora-core's sessions and connector, without pingora-proxy. Same listener, runtime,
//! HTTP/1 parser and upstream pool; what goes is pingora-proxy's machinery around them (the
//! two task channels and the `try_join!` of two halves per request, the hook calls, the
//! header clone and sanitising, the large per-request future). `scripts/compare --only
//! lean,pingora,nginx` measures what that machinery costs, to decide whether tidegate should
//! own its request loop.
//!
//!   lean_loop LISTEN APP_UPSTREAM EVENTS_UPSTREAM
//!
//! As `bare_pingora`: requests under `/events` go to EVENTS_UPSTREAM, everything else to
//! APP_UPSTREAM. Only what the comparison sends is handled: HTTP/1.1 requests without a body,
//! responses of any framing, streamed chunk by chunk. Anything else closes the connection.
//! One worker thread, mimalloc, and no socket read buffer (as tidegate's plain listeners).

use std::{net::SocketAddr, sync::Arc};

use async_trait::async_trait;
use pingora::{
    apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream},
    connectors::http::Connector,
    listeners::{L4BufferSettings, ListenerConfig},
    prelude::*,
    protocols::http::ServerSession,
    server::{configuration::ServerConf, Server, ShutdownWatch},
    services::listening::Service,
};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Lean {
    app: HttpPeer,
    events: HttpPeer,
    connector: Connector,
}

impl Lean {
    /// One request; `None` when the connection cannot be kept.
    async fn proxy(&self, down: &mut ServerSession) -> Option<()> {
        if !down.read_request().await.ok()? || !down.is_body_empty() {
            return None;
        }
        let peer = if down.req_header().uri.path().starts_with("/events") {
            &self.events
        } else {
            &self.app
        };
        let (mut up, _reused) = self.connector.get_http_session(peer).await.ok()?;
        up.write_request_header(Box::new(down.req_header().clone()))
            .await
            .ok()?;
        up.finish_request_body().await.ok()?;
        up.read_response_header().await.ok()?;
        let resp = up.response_header()?.clone();
        down.write_response_header(Box::new(resp)).await.ok()?;
        while !up.response_done() {
            match up.read_response_body().await.ok()? {
                Some(chunk) => down.write_response_body(chunk, false).await.ok()?,
                None => break,
            }
        }
        self.connector.release_http_session(up, peer, None).await;
        Some(())
    }
}

#[async_trait]
impl HttpServerApp for Lean {
    async fn process_new_http(
        self: &Arc<Self>,
        mut down: ServerSession,
        _shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        self.proxy(&mut down).await?;
        let settings = HttpPersistentSettings::for_session(&down);
        let reusable = down.finish().await.ok()??;
        Some(ReusedHttpStream::from_reusable_stream(reusable, settings))
    }
}

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, app, events] = args.as_slice() else {
        return Err("usage: lean_loop LISTEN APP_UPSTREAM EVENTS_UPSTREAM".into());
    };
    let peer = |s: &str| {
        let addr: SocketAddr = s.parse().map_err(|e| format!("{s}: {e}"))?;
        Ok::<_, String>(HttpPeer::new(addr, false, String::new()))
    };
    let conf = ServerConf {
        threads: 1,
        ..Default::default()
    };
    let mut server =
        Server::new_with_opt_and_conf(None::<pingora::server::configuration::Opt>, conf);
    server.bootstrap();
    let app = Lean {
        app: peer(app)?,
        events: peer(events)?,
        connector: Connector::new(None),
    };
    let mut svc = Service::new("lean".into(), app);
    // As tidegate's plain listeners: no socket read buffer (pingora parses from its own).
    svc.add_listener(
        ListenerConfig::tcp(listen.clone()).l4_buffer(L4BufferSettings {
            read: Some(0),
            write: None,
        }),
    );
    server.add_service(svc);
    server.run_forever()
}
