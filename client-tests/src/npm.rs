//! Node.js programs the tests run: MQTT.js (a client) and Aedes (a broker, as a bridge's
//! upstream), installed from npm once per target directory.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

/// What [`install`] puts in place, in one `npm install`.
const PACKAGES: [&str; 2] = ["mqtt@5", "aedes@1"];

/// How long one `npm install` may take.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(60);

/// True when `program` is an executable file in a directory of `PATH`.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(program).is_file()))
}

/// True when node and npm are there; tests that need them say they are skipped otherwise.
pub fn available(test: &str) -> bool {
    let there = on_path("npm") && on_path("node");
    if !there {
        eprintln!("SKIPPED {test}: npm/node not on PATH");
    }
    there
}

/// Where the packages are installed, kept between runs: `<target>/client-tests-npm`.
fn npm_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")))
        .join("client-tests-npm")
}

/// Installs [`PACKAGES`] unless an earlier run did (a marker file names them) and returns the
/// `node_modules` directory (for `NODE_PATH`). Tests run in parallel processes: an exclusive
/// lock on a file beside the directory lets one install while the others wait (two
/// `npm install`s into one prefix leave it broken).
pub async fn install() -> PathBuf {
    let dir = npm_dir();
    let marker = dir.join(format!("{}.installed", PACKAGES.join("+")));
    let node_modules = dir.join("node_modules");
    if marker.is_file() {
        return node_modules;
    }
    std::fs::create_dir_all(&dir).unwrap();
    let lock_file = std::fs::File::create(dir.with_extension("lock")).unwrap();
    let _lock = tokio::task::spawn_blocking(move || {
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor this closure owns; released when the file is dropped.
        let locked = unsafe { libc::flock(lock_file.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(locked, 0, "lock {}: {}", "client-tests-npm.lock", std::io::Error::last_os_error());
        lock_file
    })
    .await
    .unwrap();
    if marker.is_file() {
        return node_modules;
    }
    let install = tokio::process::Command::new("npm")
        .args(["install", "--prefix"])
        .arg(&dir)
        .args(["--no-audit", "--no-fund", "--loglevel=error"])
        .args(PACKAGES)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(INSTALL_TIMEOUT, install)
        .await
        .unwrap_or_else(|_| panic!("npm install {PACKAGES:?} took more than {INSTALL_TIMEOUT:?}"))
        .expect("run npm");
    assert!(
        out.status.success(),
        "npm install {PACKAGES:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&marker, "").unwrap();
    node_modules
}
