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
            eprintln!("tern: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> tern::Result<()> {
    // Handlers go in before the listeners are bound (and "listening on" is logged), so a
    // signal sent as soon as the broker is reachable already means a graceful shutdown.
    let signals = Signals::install();
    let server = Server::bind(config).await?;
    let shutdown = server.shutdown_token();
    tokio::spawn(async move {
        signals.recv().await;
        shutdown.cancel();
    });
    server.run().await;
    Ok(())
}

/// SIGINT and SIGTERM, listened for from the moment `install` returns.
struct Signals(Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>);

impl Signals {
    fn install() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(term), Ok(int)) => Signals(Some((term, int))),
            _ => {
                tracing::error!("cannot install signal handlers; stop tern with SIGKILL");
                Signals(None)
            }
        }
    }

    /// Resolves on the first SIGINT or SIGTERM.
    async fn recv(self) {
        let Some((mut term, mut int)) = self.0 else { return std::future::pending().await };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    }
}

/// Level from RUST_LOG if set, else `-v`, else `log.level`.
fn init_logging(config: &Config, verbose: u8) -> Result<(), String> {
    let filter = match (std::env::var("RUST_LOG"), verbose) {
        (Ok(env), _) if !env.is_empty() => EnvFilter::try_new(env).map_err(|e| e.to_string())?,
        (_, 0) => level_filter(&config.log.level)?,
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

/// Parses `log.level`. A bare word must be a level: tracing would otherwise read a typo such
/// as "verbose" as a module name and silently log nothing.
fn level_filter(level: &str) -> Result<EnvFilter, String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let bare_word = !level.contains(['=', ',', '[']);
    if bare_word && !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
        return Err(format!("\"{level}\" is not one of {}", LEVELS.join(", ")));
    }
    EnvFilter::try_new(level).map_err(|e| e.to_string())
}
