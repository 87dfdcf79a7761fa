//! `tern ctl`: the admin API (`admin.rs`) from the command line. It reads `[http] bind` and
//! `token_file` from the broker's configuration file, so an operator types no address or
//! token; it prints tables, or the API's JSON with `--json`.

mod client;
mod table;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde_json::Value;

use crate::Config;
use client::{percent_encode, ApiClient};

/// The packaged unit's configuration, used when `-c` is not given and it exists.
const PACKAGED_CONFIG: &str = "/etc/tern/tern.toml";

/// Why a `tern ctl` command failed; each message says what to check.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The configuration could not be read.
    #[error("configuration: {0}")]
    Config(String),
    /// `[http] bind` is not set: the API is off.
    #[error("the admin API is off: set [http] bind in {0} (and restart tern)")]
    ApiOff(String),
    /// `[http] bind` has port 0: the port the broker got is not in the file.
    #[error(
        "[http] bind in {0} has port 0, so the API's port is not known: give it a fixed port, or pass --addr"
    )]
    EphemeralPort(String),
    #[error("cannot read the token file {path}: {reason}")]
    Token { path: PathBuf, reason: String },
    /// Nothing answered at the address.
    #[error(
        "cannot reach http://{addr} ({source}): is tern running, and is [http] bind set to this address?"
    )]
    Unreachable { addr: SocketAddr, source: std::io::Error },
    #[error("unexpected answer from the admin API: {0}")]
    BadAnswer(String),
    /// The API refused the request.
    #[error("{status}: {message}")]
    Api { status: u16, message: String },
}

/// `tern ctl`'s own flags.
#[derive(Debug, Args)]
pub struct CtlArgs {
    /// The broker's configuration file, for `[http] bind` and `token_file` (default:
    /// /etc/tern/tern.toml if it exists, else the built-in defaults and TERN__ variables).
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
    /// The API's address (HOST:PORT), instead of the configuration's `[http] bind`.
    #[arg(long = "addr", value_name = "ADDR")]
    addr: Option<SocketAddr>,
    /// Print the API's JSON answer instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Debug, Subcommand)]
enum CtlCommand {
    /// Version, uptime, clients, sessions, subscriptions, retained and queued messages.
    Stats,
    /// Sessions (connected clients and persistent sessions whose clients are away).
    #[command(subcommand)]
    Clients(ClientsCommand),
    /// Subscriptions.
    #[command(subcommand)]
    Subs(SubsCommand),
    /// Retained messages.
    #[command(subcommand)]
    Retained(RetainedCommand),
    /// Publish a message as the broker (not under $SYS/).
    Publish {
        topic: String,
        /// The payload, as text (empty when omitted).
        #[arg(default_value = "")]
        payload: String,
        #[arg(short = 'q', long = "qos", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
        qos: u8,
        #[arg(short = 'r', long = "retain")]
        retain: bool,
    },
    /// Re-read the password file, ACL and certificates (as SIGHUP does).
    Reload,
}

#[derive(Debug, Subcommand)]
enum ClientsCommand {
    /// List sessions, sorted by client id.
    Ls {
        /// Only connected clients.
        #[arg(long, conflicts_with = "disconnected")]
        connected: bool,
        /// Only persistent sessions whose clients are away.
        #[arg(long)]
        disconnected: bool,
        /// Only clients that authenticated as USER.
        #[arg(long, value_name = "USER")]
        user: Option<String>,
        /// Only client ids starting with PREFIX.
        #[arg(long, value_name = "PREFIX")]
        prefix: Option<String>,
        #[arg(long, default_value_t = 0)]
        offset: usize,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// One session: connection, queue, in-flight messages, subscriptions.
    Show { client_id: String },
    /// Disconnect a client (MQTT 5: DISCONNECT 0x98).
    Kick {
        client_id: String,
        /// End its session as well (also for a session whose client is away).
        #[arg(long)]
        discard: bool,
    },
}

#[derive(Debug, Subcommand)]
enum SubsCommand {
    /// List subscriptions whose filter FILTER matches (all when omitted).
    Ls {
        filter: Option<String>,
        #[arg(long = "client-id", value_name = "ID")]
        client_id: Option<String>,
        #[arg(long, default_value_t = 0)]
        offset: usize,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

#[derive(Debug, Subcommand)]
enum RetainedCommand {
    /// List retained messages whose topic FILTER matches (default '#').
    Ls {
        #[arg(default_value = "#")]
        filter: String,
        #[arg(long, default_value_t = 0)]
        offset: usize,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Delete the retained messages whose topic FILTER matches.
    Rm { filter: String },
}

/// Runs one command; returns what to print.
pub fn run(args: CtlArgs) -> Result<String, CtlError> {
    let api = connect(args.config.as_deref(), args.addr)?;
    let (method, path, body) = request_of(&args.command);
    let answer = api.request(method, &path, body.as_deref())?;
    let value: Value = serde_json::from_str(&answer.body)
        .map_err(|e| CtlError::BadAnswer(format!("{} (status {})", e, answer.status)))?;
    if !(200..300).contains(&answer.status) {
        let message = value.get("error").and_then(Value::as_str).unwrap_or("(no error message)");
        let hint = if answer.status == 401 { " (is [http] token_file the broker's?)" } else { "" };
        return Err(CtlError::Api { status: answer.status, message: format!("{message}{hint}") });
    }
    if args.json {
        return Ok(answer.body);
    }
    Ok(render(&args.command, &value))
}

/// The API client the configuration describes.
fn connect(config: Option<&Path>, addr: Option<SocketAddr>) -> Result<ApiClient, CtlError> {
    let file = config.map(Path::to_path_buf).or_else(|| {
        let packaged = PathBuf::from(PACKAGED_CONFIG);
        packaged.exists().then_some(packaged)
    });
    let named = file.as_ref().map_or("the configuration".to_owned(), |f| f.display().to_string());
    let loaded = Config::load(file.as_deref()).map_err(|e| CtlError::Config(e.to_string()))?;
    let addr = match (addr, loaded.http.bind) {
        (Some(addr), _) => addr,
        (None, None) => return Err(CtlError::ApiOff(named)),
        (None, Some(bind)) if bind.port() == 0 => return Err(CtlError::EphemeralPort(named)),
        (None, Some(bind)) => reachable(bind),
    };
    let token = match &loaded.http.token_file {
        None => None,
        Some(path) => {
            let token = std::fs::read_to_string(path)
                .map_err(|e| CtlError::Token { path: path.clone(), reason: e.to_string() })?;
            Some(token.trim().to_owned())
        }
    };
    Ok(ApiClient { addr, token })
}

/// A bind address to connect to: "all interfaces" is reached on loopback.
fn reachable(bind: SocketAddr) -> SocketAddr {
    match bind.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), bind.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), bind.port()),
        _ => bind,
    }
}

/// Method, path with query, and body of a command's request.
fn request_of(command: &CtlCommand) -> (&'static str, String, Option<String>) {
    let page = |offset: &usize, limit: &usize| format!("offset={offset}&limit={limit}");
    match command {
        CtlCommand::Stats => ("GET", "/api/v1/summary".into(), None),
        CtlCommand::Clients(ClientsCommand::Ls { connected, disconnected, user, prefix, offset, limit }) => {
            let mut query = page(offset, limit);
            if *connected || *disconnected {
                query.push_str(&format!("&connected={connected}"));
            }
            for (name, value) in [("user", user), ("prefix", prefix)] {
                if let Some(value) = value {
                    query.push_str(&format!("&{name}={}", percent_encode(value)));
                }
            }
            ("GET", format!("/api/v1/clients?{query}"), None)
        }
        CtlCommand::Clients(ClientsCommand::Show { client_id }) => {
            ("GET", format!("/api/v1/clients/{}", percent_encode(client_id)), None)
        }
        CtlCommand::Clients(ClientsCommand::Kick { client_id, discard }) => {
            ("DELETE", format!("/api/v1/clients/{}?discard={discard}", percent_encode(client_id)), None)
        }
        CtlCommand::Subs(SubsCommand::Ls { filter, client_id, offset, limit }) => {
            let mut query = page(offset, limit);
            for (name, value) in [("filter", filter), ("client_id", client_id)] {
                if let Some(value) = value {
                    query.push_str(&format!("&{name}={}", percent_encode(value)));
                }
            }
            ("GET", format!("/api/v1/subscriptions?{query}"), None)
        }
        CtlCommand::Retained(RetainedCommand::Ls { filter, offset, limit }) => {
            let query = format!("filter={}&{}", percent_encode(filter), page(offset, limit));
            ("GET", format!("/api/v1/retained?{query}"), None)
        }
        CtlCommand::Retained(RetainedCommand::Rm { filter }) => {
            ("DELETE", format!("/api/v1/retained?filter={}", percent_encode(filter)), None)
        }
        CtlCommand::Publish { topic, payload, qos, retain } => {
            let body =
                serde_json::json!({ "topic": topic, "payload": payload, "qos": qos, "retain": retain });
            ("POST", "/api/v1/publish".into(), Some(body.to_string()))
        }
        CtlCommand::Reload => ("POST", "/api/v1/reload".into(), None),
    }
}

/// A JSON value as a table cell: strings bare, null as '-'.
fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Bool(true) => "yes".into(),
        Value::Bool(false) => "no".into(),
        other => other.to_string(),
    }
}

/// The rows of a listing: `fields` of each element of `value[list]`.
fn rows(value: &Value, list: &str, fields: &[&str]) -> Vec<Vec<String>> {
    let items = value.get(list).and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    items.iter().map(|item| fields.iter().map(|f| cell(&item[*f])).collect()).collect()
}

/// "showing N of TOTAL" under a listing that left some out.
fn paging_note(value: &Value, list: &str) -> String {
    let shown = value.get(list).and_then(Value::as_array).map_or(0, Vec::len) as u64;
    let total = value["total"].as_u64().unwrap_or(shown);
    let offset = value["offset"].as_u64().unwrap_or(0);
    if shown == total {
        return String::new();
    }
    format!("({shown} shown of {total}, from offset {offset}; see --offset and --limit)\n")
}

/// Key-value lines, keys aligned.
fn pairs(value: &Value, keys: &[&str]) -> String {
    let rows: Vec<Vec<String>> = keys.iter().map(|k| vec![format!("{k}:"), cell(&value[*k])]).collect();
    // The header row of `table::render` is dropped: pairs have none.
    table::render(&["", ""], &rows).lines().skip(1).map(|line| format!("{line}\n")).collect()
}

/// The readable form of a successful answer.
fn render(command: &CtlCommand, value: &Value) -> String {
    const SUBSCRIPTION: [&str; 5] = ["filter", "client_id", "qos", "no_local", "retain_as_published"];
    const SUBSCRIPTION_HEAD: [&str; 5] = ["FILTER", "CLIENT ID", "QOS", "NO LOCAL", "RETAIN AS PUBLISHED"];
    match command {
        CtlCommand::Stats => pairs(
            value,
            &[
                "version",
                "uptime_seconds",
                "clients_connected",
                "clients_maximum",
                "sessions_disconnected",
                "subscriptions",
                "retained_messages",
                "queued_messages",
                "queued_bytes",
                "inflight_messages",
            ],
        ),
        CtlCommand::Clients(ClientsCommand::Ls { .. }) => {
            let fields = ["client_id", "connected", "user", "persistent", "queued", "dropped"];
            let head = ["CLIENT ID", "CONNECTED", "USER", "PERSISTENT", "QUEUED", "DROPPED"];
            table::render(&head, &rows(value, "clients", &fields)) + &paging_note(value, "clients")
        }
        CtlCommand::Clients(ClientsCommand::Show { .. }) => {
            let mut out = pairs(
                value,
                &[
                    "client_id",
                    "connected",
                    "user",
                    "persistent",
                    "inflight",
                    "queued",
                    "queued_bytes",
                    "dropped",
                ],
            );
            match value.get("connection").filter(|c| !c.is_null()) {
                Some(connection) => {
                    out.push_str("connection:\n");
                    // The API gives Unix seconds (for scripts); people read a UTC time.
                    let mut connection = connection.clone();
                    if let Some(secs) = connection["connected_since"].as_u64() {
                        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
                        connection["connected_since"] = Value::from(crate::clock::rfc3339_utc_ms(at));
                    }
                    let lines = pairs(
                        &connection,
                        &["protocol", "peer", "listener", "keep_alive", "connected_since"],
                    );
                    out.extend(lines.lines().map(|line| format!("  {line}\n")));
                }
                None => out.push_str("connection: none since the broker started\n"),
            }
            // The client is named above: its subscriptions with their options.
            let own = ["filter", "qos", "no_local", "retain_as_published"];
            let head = ["FILTER", "QOS", "NO LOCAL", "RETAIN AS PUBLISHED"];
            out + "\n" + &table::render(&head, &rows(value, "subscriptions", &own))
        }
        CtlCommand::Clients(ClientsCommand::Kick { client_id, discard }) => {
            let discarded = if *discard { " and discarded its session" } else { "" };
            format!("disconnected {client_id}{discarded}\n")
        }
        CtlCommand::Subs(_) => {
            table::render(&SUBSCRIPTION_HEAD, &rows(value, "subscriptions", &SUBSCRIPTION))
                + &paging_note(value, "subscriptions")
        }
        CtlCommand::Retained(RetainedCommand::Ls { .. }) => {
            let mut listed = rows(value, "messages", &["topic", "qos", "payload_bytes", "payload"]);
            for row in &mut listed {
                if row[3] == "-" {
                    row[3] = "(binary)".into();
                } else if row[3].chars().count() > 40 {
                    row[3] = row[3].chars().take(39).collect::<String>() + "…";
                }
            }
            table::render(&["TOPIC", "QOS", "BYTES", "PAYLOAD"], &listed) + &paging_note(value, "messages")
        }
        CtlCommand::Retained(RetainedCommand::Rm { .. }) => {
            format!("deleted {} retained message(s)\n", cell(&value["deleted"]))
        }
        CtlCommand::Publish { topic, .. } => format!(
            "published to {topic}: matched {} session(s), queued for {}, dropped for {}\n",
            cell(&value["matched"]),
            cell(&value["queued"]),
            cell(&value["dropped"])
        ),
        CtlCommand::Reload => "reloaded the password file, ACL and certificates\n".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_encode_filters_and_ids() {
        let (method, path, _) =
            request_of(&CtlCommand::Retained(RetainedCommand::Rm { filter: "a/+/#".into() }));
        assert_eq!((method, path.as_str()), ("DELETE", "/api/v1/retained?filter=a%2F%2B%2F%23"));
        let kick = CtlCommand::Clients(ClientsCommand::Kick { client_id: "a/b c".into(), discard: true });
        assert_eq!(request_of(&kick).1, "/api/v1/clients/a%2Fb%20c?discard=true");
    }

    #[test]
    fn unspecified_bind_addresses_are_reached_on_loopback() {
        assert_eq!(reachable("0.0.0.0:8080".parse().unwrap()), "127.0.0.1:8080".parse().unwrap());
        assert_eq!(reachable("[::]:8080".parse().unwrap()), "[::1]:8080".parse().unwrap());
        assert_eq!(reachable("10.1.2.3:80".parse().unwrap()), "10.1.2.3:80".parse().unwrap());
    }

    #[test]
    fn listings_render_as_tables_with_a_paging_note() {
        let value: Value = serde_json::from_str(
            r#"{"total":2,"offset":0,"clients":[{"client_id":"c1","connected":true,"user":null,"persistent":false,"queued":0,"dropped":0}]}"#,
        )
        .unwrap();
        let ls = ClientsCommand::Ls {
            connected: false,
            disconnected: false,
            user: None,
            prefix: None,
            offset: 0,
            limit: 1,
        };
        let out = render(&CtlCommand::Clients(ls), &value);
        assert!(
            out.starts_with(
                "CLIENT ID  CONNECTED  USER  PERSISTENT  QUEUED  DROPPED\nc1         yes        -     no"
            ),
            "{out}"
        );
        assert!(out.contains("1 shown of 2"), "{out}");
    }
}
