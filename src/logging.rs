//! Logging: `tracing` to stderr, pingora's `log` records bridged in (tracing-subscriber's
//! `tracing-log` feature installs the bridge). Filter with `TIDEGATE_LOG` (e.g. `debug`,
//! `tidegate=debug,pingora=info`); default `info` for tidegate and `warn` for pingora's
//! internals (`error` for pingora-proxy, whose per-attempt "Fail to proxy" lines repeat what
//! tidegate logs itself with the backend id). The audit trail (`tidegate::audit`) is always on.

use tracing_subscriber::EnvFilter;

/// Install the global subscriber once.
pub fn init() {
    let filter = EnvFilter::try_from_env("TIDEGATE_LOG").unwrap_or_else(|_| {
        EnvFilter::new("info,pingora=warn,pingora_core=warn,pingora_proxy=error")
    });
    // The audit trail is not a verbosity level: it stays on whatever TIDEGATE_LOG says.
    let filter = match "tidegate::audit=info".parse() {
        Ok(d) => filter.add_directive(d),
        Err(_) => filter,
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
