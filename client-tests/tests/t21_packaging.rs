//! Area 21: the Debian package (packaging/build-deb) and its systemd unit.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use client_tests::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Starts a broker with its log piped and returns it with the port of its "listening on" line.
/// The log is read to the end (a closed pipe would fail its writes).
fn start_reading_port(cmd: &mut Command) -> (std::process::Child, u16) {
    let mut tern =
        cmd.stderr(std::process::Stdio::piped()).spawn().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let stderr = tern.stderr.take().unwrap();
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let port = line.split("listening on ").nth(1).and_then(|rest| rest.split_whitespace().next());
            if let Some(port) = port.and_then(|addr| addr.rsplit(':').next()?.parse::<u16>().ok()) {
                let _ = port_tx.send(port);
            }
        }
    });
    let port = port_rx.recv_timeout(Duration::from_secs(20)).expect("no 'listening on' within 20 s");
    (tern, port)
}

async fn publish_one(port: u16, client_id: &str) {
    let mut o = rumqttc::MqttOptions::new(client_id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(5));
    let mut c = Mqtt::connect(o).await;
    c.publish_wait("t", 1, false, "x").await;
}

fn build_deb(out: &Path) -> PathBuf {
    let printed = run(Command::new(repo().join("packaging/build-deb")).args([
        "--binary",
        tern_bin().to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]));
    PathBuf::from(printed.trim())
}

// The package holds the binary, the documented default config as a conffile and the unit; its
// control fields name it; what it installs starts and serves MQTT with the packaged config.
#[tokio::test]
async fn the_deb_installs_a_broker_that_runs_with_its_packaged_config() {
    let dir = tempfile::tempdir().unwrap();
    let deb = build_deb(dir.path());
    let fields = run(Command::new("dpkg-deb").arg("-f").arg(&deb).args(["Package", "Version", "Depends"]));
    assert!(fields.contains("Package: tern"), "{fields}");
    assert!(fields.contains("Version: 0.1.0"), "{fields}");
    // Versioned from the binary's symbol versions (and DT_RELR): never just "libc6".
    assert!(fields.contains("libc6 (>= 2.") && fields.contains("libstdc++6 (>= "), "{fields}");
    let contents = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
    for path in ["./usr/bin/tern", "./etc/tern/tern.toml", "./lib/systemd/system/tern.service"] {
        assert!(contents.contains(path), "{path} missing from\n{contents}");
    }
    let root = dir.path().join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    let control = dir.path().join("control");
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));
    assert_eq!(std::fs::read_to_string(control.join("conffiles")).unwrap().trim(), "/etc/tern/tern.toml");
    // The packaged binary with the packaged config, as the unit starts it (in a scratch
    // working directory, as StateDirectory gives it one).
    let work = dir.path().join("var-lib-tern");
    std::fs::create_dir(&work).unwrap();
    let (mut tern, port) = start_reading_port(
        Command::new(root.join("usr/bin/tern"))
            .args(["-c", root.join("etc/tern/tern.toml").to_str().unwrap(), "--bind", "127.0.0.1", "-p", "0"])
            .current_dir(&work),
    );
    publish_one(port, "packaged").await;
    tern.kill().unwrap();
    tern.wait().unwrap();
    assert!(work.join("tern-data").is_dir(), "data directory under the working directory");
}

// The unit is hardened: systemd's own assessment rates its exposure 2.0 or lower ("OK"; the
// scale runs to 10 for an unconfined service).
#[test]
fn the_systemd_unit_is_rated_ok_by_systemd_analyze_security() {
    let dir = tempfile::tempdir().unwrap();
    let deb = build_deb(dir.path());
    let root = dir.path().join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--threshold=20"])
        .arg(format!("--root={}", root.display()))
        .arg("tern.service")
        .output()
        .expect("systemd-analyze (Debian package systemd; .ci/prepare installs it)");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "exposure above 2.0:\n{report}");
    assert!(report.contains("Overall exposure level for tern.service"), "{report}");
}

// Debian's own package checker finds neither errors nor warnings (copyright, changelog, man
// page, maintainer scripts through deb-systemd-helper).
#[test]
fn lintian_reports_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let deb = build_deb(dir.path());
    let out = Command::new("lintian")
        .args(["--fail-on", "error,warning", "--allow-root"])
        .arg(&deb)
        .output()
        .expect("lintian (Debian package lintian; .ci/prepare installs it)");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && report.trim().is_empty(),
        "lintian:\n{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// A minimal root stands in for a container image: the binary and only the libraries `ldd`
// lists. Tern starts in it with its embedded defaults, serves a client and keeps its data
// inside that root.
#[tokio::test]
async fn the_binary_runs_in_a_root_holding_only_itself_and_its_libraries() {
    assert!(
        run(Command::new("id").arg("-u")).trim() == "0",
        "chroot needs root (CI runs as root; run this test as root)"
    );
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    std::fs::copy(tern_bin(), root.join("tern")).unwrap();
    let libraries = run(Command::new("ldd").arg(tern_bin()));
    // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" and "/lib64/ld-linux-x86-64.so.2 (0x…)";
    // the vDSO has no file.
    for path in libraries.split_whitespace().filter(|word| word.starts_with('/')) {
        let inside = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(inside.parent().unwrap()).unwrap();
        std::fs::copy(path, &inside).unwrap_or_else(|e| panic!("{path}: {e}"));
    }
    let files: Vec<_> = walk(&root);
    assert!(files.len() <= 8, "more than the binary and its libraries: {files:?}");
    let (mut tern, port) = start_reading_port(Command::new("chroot").arg(&root).args([
        "/tern",
        "--bind",
        "127.0.0.1",
        "-p",
        "0",
    ]));
    publish_one(port, "chrooted").await;
    tern.kill().unwrap();
    tern.wait().unwrap();
    assert!(root.join("tern-data").is_dir(), "data directory inside the root");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().map(Result::unwrap) {
        if entry.file_type().unwrap().is_dir() {
            files.extend(walk(&entry.path()));
        } else {
            files.push(entry.path());
        }
    }
    files
}
