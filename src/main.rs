//! tidegate binary: parse the CLI, set up logging, dispatch.

use std::process::ExitCode;

/// mimalloc: pingora allocates per request and per chunk; glibc malloc costs about a third
/// more CPU per proxied request here (scripts/compare). The `system-alloc` feature turns it
/// off, for heap profilers that watch malloc (valgrind's massif, heaptrack).
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod demo;

use clap::Parser;
use tidegate::{
    api::MaintenanceRequest,
    cli::{Cli, ClientOpts, Command, SpoolAction},
    client::{self, exit, ClientError},
};

/// mimalloc's eager commit makes every idle stream's buffers resident: about 180 kB per idle
/// SSE stream instead of about 60 kB (scripts/compare, 2,000 streams), at no measurable CPU
/// gain. It is decided when mimalloc reserves its first arena, before `main`, so `run`
/// re-executes itself once with the options in the environment (same PID). An operator's own
/// MIMALLOC_* settings win; if the exec fails, tidegate simply carries on.
fn tune_allocator() {
    use std::os::unix::process::CommandExt;
    const VAR: &str = "MIMALLOC_ARENA_EAGER_COMMIT";
    if std::env::var_os(VAR).is_some() || std::env::args_os().nth(1).is_none_or(|a| a != "run") {
        return;
    }
    if let Ok(exe) = std::env::current_exe() {
        let err = std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .env(VAR, "0")
            .env("MIMALLOC_EAGER_COMMIT", "0")
            .exec();
        eprintln!("tidegate: note: could not re-exec with allocator settings ({err}); continuing");
    }
}

fn main() -> ExitCode {
    tune_allocator();
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
                Ok(why) => {
                    tracing::debug!(reason = ?why, "exiting");
                    ExitCode::from(why.code())
                }
                Err(e) => {
                    eprintln!("tidegate: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check { config } => check(&config),
        Command::Backend { listen, name } => block_on(run_backend(listen, name)),
        Command::Demo {
            script,
            port,
            admin_port,
        } => block_on(async move {
            match demo::run::run(script, port, admin_port).await {
                Ok(code) => ExitCode::from(code),
                Err(e) => {
                    eprintln!("tidegate demo: {e}");
                    ExitCode::from(exit::ERROR)
                }
            }
        }),
        verb => block_on(client_verb(verb)),
    }
}

fn check(config: &std::path::Path) -> ExitCode {
    match tidegate::config::load(config) {
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

/// `tidegate backend`: the demo app, until SIGTERM or SIGINT.
async fn run_backend(listen: std::net::SocketAddr, name: String) -> ExitCode {
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("tidegate backend: cannot bind {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("backend {name} listening on {listen}");
    // A container stop (SIGTERM, also as PID 1 where nothing else would handle it)
    // or Ctrl-C ends the demo app at once, exit 0.
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("tidegate backend: cannot install signal handlers");
        return ExitCode::FAILURE;
    };
    tokio::select! {
        _ = demo::backend::Backend::new(&name).serve(listener) => {}
        _ = term.recv() => println!("backend {name}: SIGTERM, stopping"),
        _ = int.recv() => println!("backend {name}: SIGINT, stopping"),
    }
    ExitCode::SUCCESS
}

fn block_on(f: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(f),
        Err(e) => {
            eprintln!("tidegate: cannot start runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn client_verb(verb: Command) -> ExitCode {
    match run_verb(verb).await {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("tidegate: {e}");
            ExitCode::from(exit::ERROR)
        }
    }
}

fn fleet(c: &ClientOpts) -> Result<Vec<client::Admin>, ClientError> {
    client::fleet(&c.admin, c.token_file.as_deref())
}

/// `tidegate spool …`.
async fn spool(action: SpoolAction) -> Result<u8, ClientError> {
    let (verb, c) = match action {
        SpoolAction::List {
            route,
            state,
            limit,
            client,
        } => (
            client::SpoolVerb::List {
                route,
                state,
                limit,
            },
            client,
        ),
        SpoolAction::Retry {
            id, route, client, ..
        } => (client::SpoolVerb::Retry { id, route }, client),
        SpoolAction::Purge {
            id,
            route,
            state,
            client,
        } => (client::SpoolVerb::Purge { id, route, state }, client),
    };
    client::spool(&fleet(&c)?, verb, c.json).await
}

// Long: one arm per client verb, mapping its arguments.
async fn run_verb(verb: Command) -> Result<u8, ClientError> {
    match verb {
        Command::Status { client } => client::status(&fleet(&client)?, client.json).await,
        Command::Health { client } => client::health(&fleet(&client)?, client.json).await,
        Command::Deploy { mut args, client } => {
            args.json = client.json;
            client::deploy(&fleet(&client)?, args).await
        }
        Command::Rollback { route, client } => client::rollback(&fleet(&client)?, &route).await,
        Command::Drain { mut args, client } => {
            args.json = client.json;
            client::drain(&fleet(&client)?, args).await
        }
        Command::Undrain { args, client } => {
            client::undrain(&fleet(&client)?, &args, client.json).await
        }
        Command::Shift { args, client } => client::shift(&fleet(&client)?, args).await,
        Command::Reload { client } => client::reload(&fleet(&client)?, client.json).await,
        Command::Spool { action } => spool(action).await,
        Command::Maintenance {
            mode,
            routes,
            methods,
            retry_after,
            message,
            client,
        } => {
            let body = MaintenanceRequest {
                routes: (!routes.is_empty()).then_some(routes),
                methods: (!methods.is_empty()).then_some(methods),
                retry_after,
                message,
            };
            client::maintenance(&fleet(&client)?, mode == "on", body, client.json).await
        }
        Command::Run { .. }
        | Command::Check { .. }
        | Command::Backend { .. }
        | Command::Demo { .. } => Ok(exit::OK),
    }
}
