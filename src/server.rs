//! Assemble and run the pingora server from a config file: one proxy service per listener,
//! plus background services for the admin API, reload control and shutdown.

use std::{
    net::TcpListener as StdTcpListener,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use async_trait::async_trait;
use pingora::{
    apps::HttpServerOptions,
    listeners::{tls::TlsSettings, L4BufferSettings, ListenerConfig},
    proxy::ProxyServiceBuilder,
    server::{configuration::Opt, RunArgs, Server, ShutdownWatch},
    services::background::{background_service, BackgroundService},
};

use crate::{
    config::{self, ConfigError},
    lifecycle::{Control, HealthChecker, ShutdownWatcher, Signals},
    proxy::Proxy,
    state::{backend::Registry, AppState},
};

/// Downstream socket buffers. pingora's default puts a 64 KiB read buffer (zero-filled) in
/// front of every client connection. On a plain listener, pingora parses request heads from
/// its own 4 KiB buffer and reads bodies into its own body buffer, so a socket read buffer
/// only adds a copy: none. rustls reads TLS records in small pieces, so a TLS listener keeps
/// one record's worth. The write side keeps pingora's one-MSS buffer, which coalesces a
/// response's head and first body bytes into one write.
const PLAIN_BUFFERS: L4BufferSettings = L4BufferSettings {
    read: Some(0),
    write: None,
};
const TLS_BUFFERS: L4BufferSettings = L4BufferSettings {
    read: Some(16 * 1024 + 512),
    write: None,
};

/// Why `tidegate run` could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("listener {name} ({addr}): cannot bind: {source}")]
    Bind {
        name: String,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("listener {name}: TLS setup failed: {message}")]
    Tls { name: String, message: String },
    #[error("--daemon needs server.pid_file (systemd follows the main PID through it)")]
    DaemonWithoutPidFile,
}

/// Options of `tidegate run`.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub config: PathBuf,
    /// Take the listening sockets from a running tidegate (graceful upgrade).
    pub upgrade: bool,
    /// Fork into the background, writing `server.pid_file`.
    pub daemon: bool,
}

/// Start tidegate and block until it exits. Returns only on a fast stop; idle exits and
/// grace-deadline exits end the process from the shutdown watcher.
pub fn run(opts: RunOptions) -> Result<(), StartError> {
    let registry = Arc::new(Registry::default());
    let loaded = config::load(&opts.config, &registry)?;
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    let cfg = loaded.config;
    if !opts.upgrade {
        // A plain bind fails against any holder, SO_REUSEPORT or not: a second tidegate on
        // the same admin port is a startup error, not a silent share.
        drop(bind("admin", cfg.admin.addr)?);
    }
    let admin_listener = bind_admin(cfg.admin.addr)?;
    if !opts.upgrade {
        // pingora binds inside its services and only logs a failure; check first so a port in
        // use is a clear startup error.
        for l in &cfg.listeners {
            drop(bind(&l.name, l.addr)?);
        }
    }
    let state = Arc::new(AppState::new(cfg, registry, absolute(&opts.config)));
    let cfg = state.config_full();
    state.apply_health(&cfg);
    state.registry.set_live();
    // Overrides from the state file apply before the first request is routed.
    let mut restored = state.restore();
    restored.extend(state.apply_declared(&cfg));

    let mut conf = pingora::server::configuration::ServerConf {
        threads: match cfg.server.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        },
        // Our watcher exits as soon as the proxy is idle; this is only the hard stop.
        grace_period_seconds: Some(cfg.shutdown.grace.map_or(u64::MAX / 4, |g| g.as_secs() + 1)),
        graceful_shutdown_timeout_seconds: Some(1),
        // Retries are bounded by each route's `retries` and hold deadline, not by pingora.
        max_retries: 10_000,
        upgrade_sock: cfg.server.upgrade_sock.to_string_lossy().into_owned(),
        ..Default::default()
    };
    if let Some(p) = &cfg.server.pid_file {
        conf.pid_file = p.to_string_lossy().into_owned();
    }
    if opts.daemon && cfg.server.pid_file.is_none() {
        return Err(StartError::DaemonWithoutPidFile);
    }
    conf.daemon = opts.daemon;
    let opt = Opt {
        upgrade: opts.upgrade,
        daemon: opts.daemon,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();
    let sconf = server.configuration.clone();

    for l in &cfg.listeners {
        let mut options = HttpServerOptions::default();
        options.h2c = l.h2c;
        let mut svc = ProxyServiceBuilder::new(&sconf, Proxy::new(state.clone()))
            .name(format!("listener {}", l.name))
            .server_options(options)
            .build();
        let addr = l.addr.to_string();
        match &l.tls {
            None => svc.add_listener(ListenerConfig::tcp(addr).l4_buffer(PLAIN_BUFFERS)),
            Some(t) => {
                let tls_err = |e: pingora::BError| StartError::Tls {
                    name: l.name.clone(),
                    message: e.to_string(),
                };
                let mut tls =
                    TlsSettings::intermediate(&t.cert.to_string_lossy(), &t.key.to_string_lossy())
                        .map_err(tls_err)?;
                tls.enable_h2();
                svc.add_listener(ListenerConfig::tcp(addr).tls(tls).l4_buffer(TLS_BUFFERS));
            }
        }
        server.add_service(svc);
    }
    server.add_service(background_service(
        "admin",
        AdminService {
            listener: Mutex::new(Some(admin_listener)),
            state: state.clone(),
        },
    ));
    server.add_service(background_service(
        "control",
        Control {
            state: state.clone(),
            restored: Mutex::new(restored),
        },
    ));
    server.add_service(background_service(
        "health",
        HealthChecker {
            state: state.clone(),
        },
    ));
    server.add_service(background_service(
        "shutdown",
        ShutdownWatcher {
            state: state.clone(),
        },
    ));
    tracing::info!(
        config = %opts.config.display(),
        listeners = ?cfg.listeners.iter().map(|l| l.addr.to_string()).collect::<Vec<_>>(),
        admin = %cfg.admin.addr,
        "tidegate starting"
    );
    server.run(RunArgs {
        shutdown_signal: Box::new(Signals { state }),
    });
    Ok(())
}

fn bind(name: &str, addr: std::net::SocketAddr) -> Result<StdTcpListener, StartError> {
    StdTcpListener::bind(addr).map_err(|source| StartError::Bind {
        name: name.to_string(),
        addr,
        source,
    })
}

/// The admin socket, with SO_REUSEPORT so a process started with `--upgrade` can bind it
/// while the old one still answers (each keeps its admin up until it exits).
fn bind_admin(addr: std::net::SocketAddr) -> Result<StdTcpListener, StartError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let err = |source| StartError::Bind {
        name: "admin".into(),
        addr,
        source,
    };
    let sock =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(err)?;
    sock.set_reuse_address(true).map_err(err)?;
    sock.set_reuse_port(true).map_err(err)?;
    sock.bind(&addr.into()).map_err(err)?;
    sock.listen(1024).map_err(err)?;
    Ok(sock.into())
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Runs the admin API on the listener bound at startup.
struct AdminService {
    listener: Mutex<Option<StdTcpListener>>,
    state: Arc<AppState>,
}

#[async_trait]
impl BackgroundService for AdminService {
    async fn start(&self, _shutdown: ShutdownWatch) {
        // Taken once; the service starts once per process.
        let Some(std_listener) = self.listener.lock().ok().and_then(|mut l| l.take()) else {
            return;
        };
        let listener = match std_listener
            .set_nonblocking(true)
            .and_then(|_| tokio::net::TcpListener::from_std(std_listener))
        {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "admin listener setup failed; exiting");
                std::process::exit(1);
            }
        };
        // Not stopped at shutdown: health, status and metrics stay up until the process exits.
        crate::admin::serve(listener, self.state.clone()).await;
    }
}
