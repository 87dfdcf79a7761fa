//! The `tern` binary: command line, logging, configuration, signals. Nothing else.

use std::io::IsTerminal;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tern::auth::password;
use tern::config::LogFormat;
use tern::notify;
use tern::{Config, Server};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Tern, an MQTT 3.1.1 and 5.0 broker.
#[derive(Debug, Parser)]
#[command(name = "tern", version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
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
    /// Log line format (replaces `log.format`).
    #[arg(long = "log-format", value_name = "FORMAT")]
    log_format: Option<LogFormat>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Add or change a user (or delete one with -D) in a password file, in Mosquitto's format.
    /// Send the broker SIGHUP afterwards to apply the change.
    Passwd(PasswdArgs),
    /// Query and operate a running broker through its admin API (`[http] bind`).
    Ctl(tern::ctl::CtlArgs),
}

#[derive(Debug, clap::Args)]
struct PasswdArgs {
    /// Delete USER instead.
    #[arg(short = 'D', long = "delete")]
    delete: bool,
    /// Store a SCRAM-SHA-256 verifier instead of Mosquitto's $7$ hash: the user can then log in
    /// with MQTT 5 SCRAM-SHA-256 authentication as well as with a plain password.
    #[arg(long = "scram", conflicts_with = "delete")]
    scram: bool,
    /// The password file (created if missing; other lines are kept as they are).
    file: PathBuf,
    user: String,
    /// The password; read from standard input when omitted (prompted for twice on a terminal).
    #[arg(conflicts_with = "delete")]
    password: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Passwd(args)) => {
            return match passwd(args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("tern passwd: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Command::Ctl(args)) => {
            return match tern::ctl::run(args) {
                Ok(out) => {
                    print!("{out}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("tern ctl: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        None => {}
    }
    let mut config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("tern: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    config.override_listener(cli.bind, cli.port);
    if let Some(format) = cli.log_format {
        config.log.format = format;
    }
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
    match runtime.block_on(serve(config, cli.config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tern: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `config_file` is read again on SIGHUP for the bridges' settings.
async fn serve(config: Config, config_file: Option<PathBuf>) -> tern::Result<()> {
    // Handlers go in before the listeners are bound (and "listening on" is logged), so a
    // signal sent as soon as the broker is reachable already means a graceful shutdown.
    let signals = Signals::install();
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    let server = Server::bind(config).await?;
    if let Some(file) = config_file {
        let _ = server.broker().config_file.set(file);
    }
    let notifier = server.broker().notifier.clone();
    // Storage is open and every listener bound: ready for systemd (Type=notify).
    let addrs: Vec<String> = server.local_addrs().iter().map(ToString::to_string).collect();
    let listening = format!("accepting connections on {}", addrs.join(", "));
    notifier.send(&format!("READY=1\nSTATUS={listening}"));
    if notifier.is_active() {
        // `systemctl status tern` shows how many clients are connected, within STATUS_EVERY.
        let notifier = notifier.clone();
        tokio::spawn(async move {
            let mut shown = 0;
            let mut tick = tokio::time::interval(notify::STATUS_EVERY);
            loop {
                tick.tick().await;
                let connected = tern::metrics::get(&tern::metrics::METRICS.clients_connected);
                if connected != shown {
                    shown = connected;
                    notifier.send(&format!("STATUS={connected} client(s) connected; {listening}"));
                }
            }
        });
    }
    if let Some(every) = notifier.watchdog_interval() {
        let notifier = notifier.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                notifier.send("WATCHDOG=1");
            }
        });
    }
    match hangup {
        Ok(mut hangup) => {
            let broker = server.broker();
            tokio::spawn(async move {
                while hangup.recv().await.is_some() {
                    tracing::info!(
                        "SIGHUP received: reloading the password file, ACL, certificates and bridge settings"
                    );
                    tern::server::reload(&broker).await;
                }
            });
        }
        Err(e) => tracing::error!("cannot listen for SIGHUP ({e}); restart tern to apply file changes"),
    }
    let shutdown = server.shutdown_token();
    tokio::spawn(async move {
        signals.recv().await;
        notifier.send("STOPPING=1");
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

/// Level from RUST_LOG if set, else `-v`, else `log.level`. The filter is a list of
/// `target=level` directives and a default level (tracing-subscriber's `Targets`: what
/// `EnvFilter` adds, span and field filters, costs a regex engine in the binary).
fn init_logging(config: &Config, verbose: u8) -> Result<(), String> {
    let filter = match (std::env::var("RUST_LOG"), verbose) {
        (Ok(env), _) if !env.is_empty() => env.parse::<Targets>().map_err(|e| format!("RUST_LOG: {e}"))?,
        (_, 0) => level_filter(&config.log.level)?,
        (_, 1) => Targets::new().with_default(tracing::Level::DEBUG),
        _ => Targets::new().with_default(tracing::Level::TRACE),
    };
    // The builder's own level (INFO unless told) would cut below `filter`.
    let lines = tracing_subscriber::fmt().with_max_level(tracing::Level::TRACE).with_writer(|| LogOutput);
    match config.log.format {
        LogFormat::Text => lines.with_ansi(std::io::stderr().is_terminal()).finish().with(filter).init(),
        LogFormat::Json => lines.json().finish().with(filter).init(),
    }
    Ok(())
}

/// Standard error for log lines, dropping them when it cannot be written (a closed pipe, a
/// terminal that went away). tracing-subscriber reports a failed write with `eprintln!`, which
/// panics when stderr is gone: the task that logged (a client's connection) would die with it.
struct LogOutput;

impl std::io::Write for LogOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// Parses `log.level`. A bare word must be a level: tracing would otherwise read a typo such
/// as "verbose" as a module name and silently log nothing.
fn level_filter(level: &str) -> Result<Targets, String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let bare_word = !level.contains(['=', ',', '[']);
    if bare_word && !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
        return Err(format!("\"{level}\" is not one of {}", LEVELS.join(", ")));
    }
    level.parse::<Targets>().map_err(|e| e.to_string())
}

/// `tern passwd`: edits the file in place, atomically.
fn passwd(args: PasswdArgs) -> Result<(), String> {
    if args.delete {
        return match password::delete_user(&args.file, &args.user).map_err(|e| e.to_string())? {
            true => Ok(()),
            false => Err(format!("no user {:?} in {}", args.user, args.file.display())),
        };
    }
    let secret = match args.password {
        Some(secret) => secret,
        None => read_password()?,
    };
    if secret.is_empty() {
        return Err("empty password".into());
    }
    let entry = if args.scram {
        password::scram_verifier(secret.as_bytes())
    } else {
        password::hash_password(secret.as_bytes())
    };
    password::set_user(&args.file, &args.user, &entry).map_err(|e| e.to_string())
}

/// Twice without echo on a terminal; one line otherwise (scripts pipe it in).
fn read_password() -> Result<String, String> {
    if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ").map_err(|e| e.to_string())?;
        let again = rpassword::prompt_password("Reenter password: ").map_err(|e| e.to_string())?;
        if first != again {
            return Err("passwords do not match".into());
        }
        return Ok(first);
    }
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).map_err(|e| e.to_string())?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}
