//! systemd's service notification protocol (sd_notify(3)), for `Type=notify` units: READY=1
//! once storage is open and every listener is bound, RELOADING=1 / READY=1 around a reload,
//! STOPPING=1 at shutdown, STATUS= lines, and WATCHDOG=1 when the unit sets `WatchdogSec=`.
//! Without `NOTIFY_SOCKET` in the environment (not started by systemd) it does nothing.
//!
//! A datagram to a Unix socket, so a few lines of std rather than a crate.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// How often the connection count in STATUS= is brought up to date (when it changed).
pub const STATUS_EVERY: Duration = Duration::from_secs(2);

/// Where notifications go; `None` when the service manager did not ask for them.
#[derive(Debug)]
pub struct Notifier(Option<(UnixDatagram, SocketAddr)>);

impl Notifier {
    /// From `NOTIFY_SOCKET`: a path, or `@name` for an abstract socket. An address that cannot
    /// be used is logged once; the broker runs on without notifications.
    pub fn from_env() -> Notifier {
        let Some(target) = std::env::var_os("NOTIFY_SOCKET") else { return Notifier(None) };
        let target = target.to_string_lossy().into_owned();
        match Self::connect(&target) {
            Ok(socket) => Notifier(Some(socket)),
            Err(e) => {
                tracing::warn!(notify_socket = %target, "cannot use NOTIFY_SOCKET: {e}");
                Notifier(None)
            }
        }
    }

    fn connect(target: &str) -> std::io::Result<(UnixDatagram, SocketAddr)> {
        let addr = match target.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name.as_bytes())?
            }
            None => SocketAddr::from_pathname(target)?,
        };
        Ok((UnixDatagram::unbound()?, addr))
    }

    /// The service manager asked for notifications.
    pub fn is_active(&self) -> bool {
        self.0.is_some()
    }

    /// Sends `state` (newline-separated `KEY=value` assignments). A failure is logged, never
    /// fatal: the service manager may have gone away.
    pub fn send(&self, state: &str) {
        if let Some((socket, addr)) = &self.0 {
            if let Err(e) = socket.send_to_addr(state.as_bytes(), addr) {
                tracing::warn!("sd_notify {state:?} not sent: {e}");
            }
        }
    }

    /// How often to send WATCHDOG=1: half the `WatchdogSec=` the unit set (`WATCHDOG_USEC`),
    /// if it was set for this process (`WATCHDOG_PID`, when present, names us).
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.0.as_ref()?;
        if let Some(pid) = std::env::var_os("WATCHDOG_PID") {
            if pid.to_string_lossy().parse::<u32>().ok() != Some(std::process::id()) {
                return None;
            }
        }
        let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
        (usec > 0).then(|| Duration::from_micros(usec / 2))
    }
}

/// `RELOADING=1` with the time of the request on CLOCK_MONOTONIC, which systemd 253+ wants.
pub fn reloading() -> String {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime only writes the timespec it is given; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let usec =
        u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000 + u64::try_from(now.tv_nsec).unwrap_or(0) / 1_000;
    format!("RELOADING=1\nMONOTONIC_USEC={usec}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_a_path_socket_and_reads_the_watchdog_interval() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier(Some(Notifier::connect(path.to_str().unwrap()).unwrap()));
        notifier.send("READY=1\nSTATUS=up");
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=up");
        assert!(reloading().starts_with("RELOADING=1\nMONOTONIC_USEC="));
    }

    #[test]
    fn without_a_socket_nothing_is_sent_and_there_is_no_watchdog() {
        let notifier = Notifier(None);
        notifier.send("READY=1");
        assert_eq!(notifier.watchdog_interval(), None);
    }
}
