//! The arguments of `drain` and `undrain`, parsed by clap straight into these (no copying
//! field by field in `main`).

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
