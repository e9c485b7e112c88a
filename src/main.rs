//! tidegate binary: parse the CLI, set up logging, dispatch.

use std::process::ExitCode;

use clap::Parser;
use tidegate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    tidegate::logging::init();
    match cli.command {
        Command::Run {
            config,
            upgrade,
            daemon,
        } => {
            let opts = tidegate::server::RunOptions {
                config,
                upgrade,
                daemon,
            };
            match tidegate::server::run(opts) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("tidegate: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check { config } => {
            let registry = tidegate::state::backend::Registry::default();
            match tidegate::config::load(&config, &registry) {
                Ok(l) => {
                    for w in &l.warnings {
                        eprintln!("warning: {w}");
                    }
                    println!("{}: ok", config.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{}: {e}", config.display());
                    ExitCode::FAILURE
                }
            }
        }
        Command::Backend { listen, name } => {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("tidegate: cannot start runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::bind(listen).await {
                    Ok(l) => l,
                    Err(e) => {
                        eprintln!("tidegate backend: cannot bind {listen}: {e}");
                        return ExitCode::FAILURE;
                    }
                };
                println!("backend {name} listening on {listen}");
                let backend = tidegate::demo::backend::Backend::new(&name);
                backend.serve(listener).await;
                ExitCode::SUCCESS
            })
        }
    }
}
