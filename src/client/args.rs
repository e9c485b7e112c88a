//! The client verbs' arguments, parsed by clap straight into these (no copying field by
//! field in `main`); the ramp flags are declared once ([`RampOpts`]) for `shift` and
//! `deploy`.

use std::time::Duration;

use crate::config::duration::HumanDuration;

fn parse_duration(s: &str) -> Result<Duration, String> {
    HumanDuration::parse(s).map(|d| d.0)
}

/// Arguments of `drain` (parsed by clap straight into this).
#[derive(Clone, Debug, clap::Args)]
pub struct DrainArgs {
    /// POOL or POOL/BACKEND.
    #[arg(required_unless_present = "node", conflicts_with = "node")]
    pub target: Option<String>,
    /// Drain every backend on this host, in every pool (node maintenance).
    #[arg(long, value_name = "HOST")]
    pub node: Option<String>,
    /// With --node: deadlines now (requests ended, streams ended politely at once) instead
    /// of each pool's.
    #[arg(long, requires = "node")]
    pub hard: bool,
    /// Wait until every proxy reports it drained.
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this long (exit 1).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub timeout: Duration,
    /// With a control_store: never drained while a proxy of the fleet is lost (its heartbeat
    /// older than the TTL; it may still hold work it cannot report). Without it a lost proxy
    /// is listed with a warning and not counted.
    #[arg(long, requires = "wait")]
    pub strict: bool,
    /// Deadline for plain requests (default: the pool's `drain.requests_deadline`).
    #[arg(long)]
    pub requests_deadline: Option<String>,
    /// Deadline for SSE and WebSocket streams (default: the pool's).
    #[arg(long)]
    pub streams_deadline: Option<String>,
    /// Set from the client options.
    #[arg(skip)]
    pub json: bool,
}

/// Arguments of `undrain`.
#[derive(Clone, Debug, clap::Args)]
pub struct UndrainArgs {
    /// POOL or POOL/BACKEND.
    #[arg(required_unless_present = "node", conflicts_with = "node")]
    pub target: Option<String>,
    /// Every backend on this host, in every pool.
    #[arg(long, value_name = "HOST")]
    pub node: Option<String>,
}

/// How a split moves: at once, or a ramp with automatic rollback (`shift`, `deploy`).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct RampOpts {
    /// Ramp over this long instead of shifting at once.
    #[arg(long, value_parser = parse_duration)]
    pub over: Option<Duration>,
    /// Length of one step (default: a tenth of --over).
    #[arg(long, value_parser = parse_duration)]
    pub step: Option<Duration>,
    /// Roll back when the pools gaining weight exceed this error rate (0.05 = 5 %) in a step.
    #[arg(long)]
    pub max_error_rate: Option<f64>,
    /// Requests a step must see before the error rate counts.
    #[arg(long, default_value_t = 20)]
    pub min_requests: u64,
}

/// Arguments of `shift`.
#[derive(Clone, Debug, clap::Args)]
pub struct ShiftArgs {
    /// Route name.
    pub route: String,
    /// POOL=WEIGHT pairs (0..=10000); pools not named keep their weight.
    #[arg(required = true)]
    pub weights: Vec<String>,
    #[command(flatten)]
    pub ramp: RampOpts,
}

/// Arguments of `deploy`.
#[derive(Clone, Debug, clap::Args)]
pub struct DeployArgs {
    /// Route to deploy.
    pub route: String,
    /// Pool that gets all the traffic.
    #[arg(long)]
    pub to: String,
    /// Set the pool's members first (repeatable; HOST:PORT or IP:PORT).
    #[arg(long = "backend", value_name = "ADDR")]
    pub backends: Vec<String>,
    /// How long the pool may take to have an available backend.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub health_timeout: Duration,
    #[command(flatten)]
    pub ramp: RampOpts,
    /// Give up waiting for the old pools to drain after this long (0 = wait forever).
    #[arg(long, default_value = "0", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// With a control_store: the old pools are not drained while a proxy of the fleet is
    /// lost (as `drain --wait --strict`); `--then` runs only once every proxy has reported.
    #[arg(long)]
    pub strict: bool,
    /// Run this (sh -c) once the old pools are drained; they are in
    /// $TIDEGATE_DRAINED_POOLS.
    #[arg(long)]
    pub then: Option<String>,
    /// Before shifting, run this (sh -c) against POOL through the route's force_pool:
    /// $TIDEGATE_FORCE_HEADER (or $TIDEGATE_FORCE_COOKIE) pins a request to it. A failure
    /// stops the deploy with nothing shifted.
    #[arg(long)]
    pub smoke: Option<String>,
    /// Kill the smoke command after this long (a failure).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub smoke_timeout: Duration,
    /// Set from the client options.
    #[arg(skip)]
    pub json: bool,
}

impl DeployArgs {
    /// How long to wait for the old pools to drain (`None`: forever).
    pub fn drain_wait(&self) -> Option<Duration> {
        (!self.drain_timeout.is_zero()).then_some(self.drain_timeout)
    }
}
