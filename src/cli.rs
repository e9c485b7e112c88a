//! Command line: `run`, `check`, the client verbs (`status`, `drain`, `undrain`, `shift`,
//! `reload`, `maintenance`), `demo` and `backend`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// tidegate: a reverse proxy that owns draining.
#[derive(Debug, Parser)]
#[command(name = "tidegate", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Options of every client verb.
#[derive(Debug, Args, Clone)]
pub struct ClientOpts {
    /// Admin API URL; repeat for a fleet of proxies (default $TIDEGATE_ADMIN, else
    /// http://127.0.0.1:9901).
    #[arg(long = "admin", value_name = "URL")]
    pub admin: Vec<String>,
    /// Read the bearer token from this file (default: $TIDEGATE_ADMIN_TOKEN).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// Verbs.
/// `tidegate spool …`.
#[derive(Debug, Subcommand)]
pub enum SpoolAction {
    /// Spooled items, oldest first, with each route's depth.
    List {
        #[arg(long)]
        route: Option<String>,
        /// `pending` or `dead`.
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Queue dead items again: one by id, or all (`--all`, optionally of `--route`).
    Retry {
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<i64>,
        #[arg(long)]
        all: bool,
        #[arg(long, requires = "all")]
        route: Option<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Delete one item by id, or every item in `--state` (dead unless told), optionally of
    /// `--route`.
    Purge {
        #[arg(conflicts_with_all = ["route", "state"])]
        id: Option<i64>,
        #[arg(long)]
        route: Option<String>,
        #[arg(long, default_value = "dead", value_parser = ["dead", "pending"])]
        state: String,
        #[command(flatten)]
        client: ClientOpts,
    },
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy.
    Run {
        /// Config file.
        #[arg(short, long, default_value = "/etc/tidegate/tidegate.yaml")]
        config: PathBuf,
        /// Take over the listening sockets of a running tidegate (send it SIGQUIT).
        #[arg(short, long)]
        upgrade: bool,
        /// Fork into the background and write `server.pid_file` (for systemd Type=forking,
        /// which follows the main PID across graceful upgrades).
        #[arg(short, long)]
        daemon: bool,
    },
    /// Validate a config file and exit 0, or print the error on one line and exit 1.
    Check {
        /// Config file.
        #[arg(short, long, default_value = "/etc/tidegate/tidegate.yaml")]
        config: PathBuf,
    },
    /// Deploy ROUTE to POOL: checkpoint, members (--backend), wait for an available backend,
    /// shift (at once or a ramp that rolls back on errors), drain the other pools and wait,
    /// then run --then. Exit 0 done, 1 rolled back or timed out, 2 error.
    Deploy {
        #[command(flatten)]
        args: crate::client::DeployArgs,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Put ROUTE back as it was before its last deploy (split, members) and undrain the old
    /// pools.
    Rollback {
        /// Route to roll back.
        route: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Exit 0 when every --admin answers /readyz with 200, 1 when one is not ready, 2 when
    /// one cannot be reached (a Docker HEALTHCHECK that needs no curl).
    Health {
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Routes, splits, pools and backends with in-flight counts, across every --admin.
    Status {
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Stop new traffic to POOL or POOL/BACKEND; with --wait, block until it is idle
    /// (exit 0 drained, 1 timed out, 2 error).
    Drain {
        #[command(flatten)]
        args: crate::client::DrainArgs,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Return POOL or POOL/BACKEND to active.
    Undrain {
        #[command(flatten)]
        args: crate::client::UndrainArgs,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Set a route's split (POOL=WEIGHT …), at once or in steps with automatic rollback.
    Shift {
        #[command(flatten)]
        args: crate::client::ShiftArgs,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Re-read the config file on every proxy and print what changed.
    Reload {
        #[command(flatten)]
        client: ClientOpts,
    },
    /// The durable spool: list items, queue dead ones again, delete.
    Spool {
        #[command(subcommand)]
        action: SpoolAction,
    },
    /// Enter or leave maintenance mode (matching requests get 503 + Retry-After).
    Maintenance {
        /// on | off
        #[arg(value_parser = ["on", "off"])]
        mode: String,
        /// Only these routes (repeatable).
        #[arg(long = "route")]
        routes: Vec<String>,
        /// Only these methods (repeatable), e.g. POST.
        #[arg(long = "method")]
        methods: Vec<String>,
        /// Retry-After to announce.
        #[arg(long)]
        retry_after: Option<String>,
        /// Message in the JSON body.
        #[arg(long)]
        message: Option<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Run blue and green demo apps with tidegate in front; --script walks a whole rollout.
    Demo {
        /// Walk a rollout by itself and exit 0.
        #[arg(long)]
        script: bool,
        /// Client port of the demo proxy (0 = any free port).
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Admin port of the demo proxy (0 = any free port).
        #[arg(long, default_value_t = 9901)]
        admin_port: u16,
    },
    /// Run a demo/test app instance (plain text, /slow, /events SSE, /ws echo).
    Backend {
        /// Address to listen on.
        #[arg(short, long, default_value = "127.0.0.1:3001")]
        listen: std::net::SocketAddr,
        /// Name it reports in responses.
        #[arg(short, long, default_value = "blue")]
        name: String,
    },
}
