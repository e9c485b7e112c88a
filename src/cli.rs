//! Command line: `tidegate run | check | backend`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// tidegate: a reverse proxy that owns draining.
#[derive(Debug, Parser)]
#[command(name = "tidegate", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Verbs.
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
