//! Assemble and run the pingora server from a config file: one proxy service per listener,
//! plus background services for the admin API, reload control, health checks, drains and
//! shutdown. [`run`] returns why the process should end; only `main` exits.

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
    server::{
        configuration::{Opt, ServerConf},
        RunArgs, Server, ShutdownWatch,
    },
    services::background::{background_service, BackgroundService},
};

use crate::{
    admin,
    config::{self, ConfigError},
    metrics::Metrics,
    proxy::Proxy,
    services::{
        access_log,
        control::Control,
        drains::{self, DrainService},
        health::HealthChecker,
        history::HistorySampler,
        persist, reload,
        resolver::Resolver,
        shutdown::ShutdownWatcher,
        signals::Signals,
        spool::{Spool, SpoolService},
        upgrade::{self, Sink},
    },
    state::{AppState, ExitReason},
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
    #[error("cannot daemonize: {0}")]
    Daemon(String),
    #[error("cannot start the server thread: {0}")]
    Thread(String),
    #[error("{0}")]
    Upgrade(#[from] upgrade::UpgradeSockError),
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

/// Start tidegate and block until it should end; returns why (`main` exits with its code).
// Long: the start order is the point (hand-off before binding, confirm after start).
pub fn run(opts: RunOptions) -> Result<ExitReason, StartError> {
    let bytes = std::fs::read(&opts.config).map_err(|source| ConfigError::Read {
        file: opts.config.clone(),
        source,
    })?;
    let loaded = config::load_bytes(&bytes, &|k| std::env::var(k).ok())?;
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    let spec = loaded.spec;
    if opts.daemon && spec.server.pid_file.is_none() {
        return Err(StartError::DaemonWithoutPidFile);
    }
    if !opts.upgrade {
        ports_are_free(&spec)?;
    }
    let sock = spec.server.upgrade_sock.clone();
    upgrade::prepare(&sock, is_default_dir(&sock, spec.state_file.as_deref()))?;
    if opts.daemon {
        daemonize(spec.server.pid_file.as_deref())?;
    }
    let confirm = if opts.upgrade {
        // The running tidegate's sockets, checked, before this process binds anything (its
        // admin socket shares the port: bound now, it would take probes it cannot answer
        // yet). pingora's bootstrap picks them up from the inner socket.
        let addrs: Vec<std::net::SocketAddr> = spec.listeners.iter().map(|l| l.addr).collect();
        Some(upgrade::receive(
            &sock,
            &upgrade::side_path(&sock, "in"),
            &addrs,
        )?)
    } else {
        None
    };
    let admin_listener = bind_admin(spec.admin.addr)?;
    let state = Arc::new(AppState::new(
        spec,
        absolute(&opts.config),
        reload::hash(&bytes),
    ));
    access_log::start(&state).map_err(|e| StartError::Thread(e.to_string()))?;
    // Overrides from the state file and the file's declared drains apply before the first
    // request is routed.
    let saved = persist::restore(&state);
    drains::resume(&state, saved);
    drains::follow_file(&state, &state.table());
    let (server, relay) = build_server(&opts, &state, admin_listener)?;
    let table = state.table_full();
    tracing::info!(
        config = %opts.config.display(),
        listeners = ?table.spec.listeners.iter().map(|l| l.addr.to_string()).collect::<Vec<_>>(),
        admin = %table.spec.admin.addr,
        "tidegate starting"
    );
    spawn_pingora(server, &state, sock)?;
    // Every step that can fail is behind: the running tidegate may stop now.
    if let Some(c) = confirm {
        c.started();
    }
    let reason = state.process.wait_exit();
    let _ = std::fs::remove_file(&relay.path);
    access_log::flush(&state, std::time::Duration::from_secs(2));
    Ok(reason)
}

/// pingora's loop sleeps through its whole grace period after SIGTERM; it runs on its own
/// thread so `run` can return as soon as the shutdown service says the proxy is idle.
fn spawn_pingora(server: Server, state: &Arc<AppState>, sock: PathBuf) -> Result<(), StartError> {
    let st = state.clone();
    std::thread::Builder::new()
        .name("pingora".into())
        .spawn(move || {
            server.run(RunArgs {
                shutdown_signal: Box::new(Signals {
                    state: st.clone(),
                    upgrade_sock: sock,
                }),
            });
            st.process.request_exit(ExitReason::Stopped);
        })
        .map(drop)
        .map_err(|e| StartError::Thread(e.to_string()))
}

/// A plain bind fails against any holder, SO_REUSEPORT or not: a second tidegate on the same
/// admin port is a startup error, not a silent share. pingora binds inside its services and
/// only logs a failure; checking first makes a port in use a clear startup error.
fn ports_are_free(spec: &crate::config::Spec) -> Result<(), StartError> {
    drop(bind("admin", spec.admin.addr)?);
    for l in &spec.listeners {
        drop(bind(&l.name, l.addr)?);
    }
    Ok(())
}

/// Whether the upgrade socket is in one of tidegate's own default directories (created 0700).
fn is_default_dir(sock: &Path, state_file: Option<&Path>) -> bool {
    sock.parent() == Some(crate::config::file::per_user_upgrade_dir().as_path())
        || sock == crate::config::file::default_upgrade_sock(state_file)
}

fn pingora_conf(spec: &crate::config::Spec, opts: &RunOptions) -> ServerConf {
    let mut conf = ServerConf {
        threads: match spec.server.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        },
        // The shutdown service ends the process as soon as it is idle; this is only the hard
        // stop.
        grace_period_seconds: Some(
            spec.shutdown
                .grace
                .map_or(u64::MAX / 4, |g| g.as_secs() + 1),
        ),
        graceful_shutdown_timeout_seconds: Some(1),
        // Retries are bounded by each route's `retries`, hold deadline and attempt limit.
        max_retries: 10_000,
        upgrade_sock: spec.server.upgrade_sock.to_string_lossy().into_owned(),
        ..Default::default()
    };
    if let Some(p) = &spec.server.pid_file {
        conf.pid_file = p.to_string_lossy().into_owned();
    }
    // tidegate daemonizes itself (before any thread exists); pingora must not fork again.
    conf.daemon = false;
    let _ = opts;
    conf
}

fn build_server(
    opts: &RunOptions,
    state: &Arc<AppState>,
    admin_listener: StdTcpListener,
) -> Result<(Server, Sink), StartError> {
    let spec = state.table().spec.clone();
    let opt = Opt {
        upgrade: opts.upgrade,
        ..Default::default()
    };
    // pingora's bootstrap receives on a private socket of this process's own, fed by
    // tidegate's receiver (`run`) once it has checked the sender and every descriptor.
    let real = spec.server.upgrade_sock.clone();
    let inner = upgrade::side_path(&real, "in");
    let mut boot = pingora_conf(&spec, opts);
    boot.upgrade_sock = inner.to_string_lossy().into_owned();
    let mut server = Server::new_with_opt_and_conf(opt, boot);
    server.bootstrap();
    // From now on pingora's own hand-off (after tidegate's, at SIGQUIT) goes to a sink.
    let relay = Sink::start(&real)
        .map_err(|e| StartError::Upgrade(upgrade::UpgradeSockError::relay(&real, &e)))?;
    let mut conf = pingora_conf(&spec, opts);
    conf.upgrade_sock = relay.path.to_string_lossy().into_owned();
    server.configuration = Arc::new(conf);
    let sconf = server.configuration.clone();
    let spool = Spool::new(state.clone());
    let certs = crate::services::certs::load_all(&spec)
        .map_err(|(name, message)| StartError::Tls { name, message })?;
    state.certs.set(certs);
    for l in &spec.listeners {
        let mut options = HttpServerOptions::default();
        options.h2c = l.h2c;
        let proxy = Proxy::new(state.clone(), spool.clone()).on(crate::proxy::Edge::of(l));
        let mut svc = ProxyServiceBuilder::new(&sconf, proxy)
            .name(format!("listener {}", l.name))
            .server_options(options)
            .build();
        add_listener(&mut svc, l, state)?;
        server.add_service(svc);
    }
    add_background(&mut server, state, admin_listener, spool);
    Ok((server, relay))
}

/// A listener's socket on its service: plain, or TLS with the live certificate resolver
/// (and the TLS-ALPN-01 responder before the handshake when ACME asks for it).
fn add_listener(
    svc: &mut pingora::services::listening::Service<pingora::proxy::HttpProxy<Proxy>>,
    l: &crate::config::spec::Listener,
    state: &Arc<AppState>,
) -> Result<(), StartError> {
    let addr = l.addr.to_string();
    let Some(t) = &l.tls else {
        svc.add_listener(ListenerConfig::tcp(addr).l4_buffer(PLAIN_BUFFERS));
        return Ok(());
    };
    let tls_err = |message: String| StartError::Tls {
        name: l.name.clone(),
        message,
    };
    let certs = state.certs.of(&l.name).cloned();
    let certs = certs.ok_or_else(|| tls_err("certificates not loaded".into()))?;
    // The paths are unused: the resolver answers every handshake.
    let mut tls = TlsSettings::intermediate("", "").map_err(|e| tls_err(e.to_string()))?;
    tls.set_cert_resolver(Arc::new(crate::state::certs::Resolver(certs)));
    tls.enable_h2();
    svc.add_listener(ListenerConfig::tcp(addr).tls(tls).l4_buffer(TLS_BUFFERS));
    let alpn01 = t.acme.as_ref().map(|a| a.challenge);
    if alpn01 == Some(config::spec::AcmeChallenge::TlsAlpn01) {
        let responder = crate::services::acme::alpn::AlpnResponder {
            state: state.clone(),
        };
        svc.endpoints().set_pre_tls_callback(Arc::new(responder));
    }
    Ok(())
}

/// The background services: admin API, control, health checks, drains, resolver, spool and
/// the shutdown watcher.
fn add_background(
    server: &mut Server,
    state: &Arc<AppState>,
    admin_listener: StdTcpListener,
    spool: Arc<Spool>,
) {
    let ctx = admin::Ctx::new(state.clone(), Arc::new(Metrics::new(state)), spool.clone());
    server.add_service(background_service(
        "admin",
        AdminService {
            listener: Mutex::new(Some(admin_listener)),
            ctx,
        },
    ));
    let st = || state.clone();
    server.add_service(background_service("control", Control { state: st() }));
    server.add_service(background_service("health", HealthChecker { state: st() }));
    server.add_service(background_service("drains", DrainService { state: st() }));
    server.add_service(background_service("resolver", Resolver { state: st() }));
    server.add_service(background_service(
        "certificates",
        crate::services::certs::CertWatcher { state: st() },
    ));
    server.add_service(background_service(
        "acme",
        crate::services::acme::AcmeService { state: st() },
    ));
    server.add_service(background_service(
        "history",
        HistorySampler { state: st() },
    ));
    server.add_service(background_service("spool", SpoolService { spool }));
    server.add_service(background_service(
        "fleet",
        crate::services::fleet::FleetService { state: st() },
    ));
    server.add_service(background_service(
        "shutdown",
        ShutdownWatcher { state: st() },
    ));
}

/// Fork into the background (the parent exits 0), start a new session, write the pid file.
/// Called before any thread is started.
fn daemonize(pid_file: Option<&Path>) -> Result<(), StartError> {
    // SAFETY: fork(2) with no other thread running (nothing has spawned one yet); the child
    // only continues this single-threaded program.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(StartError::Daemon(
            std::io::Error::last_os_error().to_string(),
        ));
    }
    if pid > 0 {
        // The parent's job is done; its exit status tells systemd the fork worked.
        // SAFETY: _exit(2) ends the parent at once, without running the child's destructors.
        unsafe { libc::_exit(0) };
    }
    // SAFETY: setsid(2) in the fresh child detaches it from the terminal's session.
    unsafe { libc::setsid() };
    if let Some(p) = pid_file {
        std::fs::write(p, format!("{}\n", std::process::id()))
            .map_err(|e| StartError::Daemon(format!("pid file {}: {e}", p.display())))?;
    }
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
    ctx: admin::Ctx,
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
                self.ctx
                    .state
                    .process
                    .request_exit(ExitReason::Failed(format!("admin listener: {e}")));
                return;
            }
        };
        // Not stopped at shutdown: health, status and metrics stay up until the process exits.
        admin::serve(listener, self.ctx.clone()).await;
    }
}
