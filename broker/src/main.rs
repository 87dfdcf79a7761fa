//! The `tern` binary: command line, logging, configuration, signals. Nothing else.

use std::io::IsTerminal;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tern::{Config, Server};
use tracing_subscriber::EnvFilter;

/// Tern, an MQTT 3.1.1 broker.
#[derive(Debug, Parser)]
#[command(name = "tern", version, about)]
struct Cli {
    /// Configuration file (TOML), layered over the built-in defaults.
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Listen on this port only (replaces the configured listeners).
    #[arg(short = 'p', long = "port", value_name = "PORT")]
    port: Option<u16>,
    /// Listen on this address only (replaces the configured listeners).
    #[arg(long = "bind", value_name = "ADDR")]
    bind: Option<IpAddr>,
    /// Verbose logging: -v for debug, -vv for trace.
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count)]
    verbose: u8,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("tern: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    config.override_listener(cli.bind, cli.port);
    if let Err(e) = init_logging(&config, cli.verbose) {
        eprintln!("tern: configuration error: invalid value for `log.level`: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("tern: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("tern: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> tern::Result<()> {
    let server = Server::bind(config).await?;
    let shutdown = server.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        shutdown.cancel();
    });
    server.run().await;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut term, mut int) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(term), Ok(int)) => (term, int),
        _ => {
            tracing::error!("cannot install signal handlers; stop tern with SIGKILL");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

/// Level from RUST_LOG if set, else `-v`, else `log.level`.
fn init_logging(config: &Config, verbose: u8) -> Result<(), tracing_subscriber::filter::ParseError> {
    let filter = match (std::env::var("RUST_LOG"), verbose) {
        (Ok(env), _) if !env.is_empty() => EnvFilter::try_new(env)?,
        (_, 0) => EnvFilter::try_new(&config.log.level)?,
        (_, 1) => EnvFilter::new("debug"),
        _ => EnvFilter::new("trace"),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    Ok(())
}
