//! The floor tidegate stands on: a minimal pingora 0.9 proxy with pingora's defaults, no
//! routing table, no tracking, no headers added, no statistics. `scripts/compare` runs it
//! beside tidegate, nginx and HAProxy, so the table shows how much of tidegate's cost is
//! tidegate's own and how much is pingora's.
//!
//!   bare_pingora LISTEN APP_UPSTREAM EVENTS_UPSTREAM
//!
//! Requests under `/events` go to EVENTS_UPSTREAM, everything else to APP_UPSTREAM; one worker
//! thread, mimalloc (as tidegate).

use std::net::SocketAddr;

use async_trait::async_trait;
use pingora::{
    prelude::*,
    proxy::{http_proxy_service, ProxyHttp, Session},
    server::{configuration::ServerConf, Server},
};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare {
    app: SocketAddr,
    events: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let to = if session.req_header().uri.path().starts_with("/events") {
            self.events
        } else {
            self.app
        };
        Ok(Box::new(HttpPeer::new(to, false, String::new())))
    }
}

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, app, events] = args.as_slice() else {
        return Err("usage: bare_pingora LISTEN APP_UPSTREAM EVENTS_UPSTREAM".into());
    };
    let addr = |s: &str| s.parse::<SocketAddr>().map_err(|e| format!("{s}: {e}"));
    let proxy = Bare {
        app: addr(app)?,
        events: addr(events)?,
    };
    let conf = ServerConf {
        threads: 1,
        ..Default::default()
    };
    let mut server =
        Server::new_with_opt_and_conf(None::<pingora::server::configuration::Opt>, conf);
    server.bootstrap();
    let mut svc = http_proxy_service(&server.configuration, proxy);
    svc.add_tcp(listen);
    server.add_service(svc);
    server.run_forever()
}
