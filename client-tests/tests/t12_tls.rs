//! Area 12: TLS and mTLS listeners (rustls, TLS 1.2/1.3). Each test makes its own CA and
//! certificates (client_tests::pki) and starts Tern with a `tls` listener on an ephemeral port.

use std::time::Duration;

use client_tests::pki::{client_config, tls_connect, tls_raw, Pki};
use client_tests::*;
use rumqttc::{TlsConfiguration, Transport};

fn tls_broker(pki: &Pki, mtls: bool, extra_tls: &str, extra: &str) -> Broker {
    let server = pki.server("server");
    let toml = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\ntransport = \"tls\"\n{}\n{extra}",
        pki.listener_tls(&server, mtls, extra_tls)
    );
    Broker::launch(Launch::config(&toml).args(&[]))
}

/// After a refused handshake (or a certificate refused after it, as TLS 1.3 allows), no
/// CONNACK ever arrives.
async fn expect_no_mqtt(
    pki_ca: &std::path::Path,
    addr: std::net::SocketAddr,
    id: Option<&client_tests::pki::Identity>,
) {
    let Ok(stream) = tls_connect(addr, client_config(pki_ca, id)).await else { return };
    let local = stream.get_ref().0.local_addr().unwrap();
    let mut raw = Raw::over(stream, local);
    raw.send_lenient(&pkt::Connect::new("refused").encode()).await;
    match raw.read(WAIT).await {
        ReadOutcome::Closed(_) => {}
        other => panic!("expected the TLS connection to be refused, got {other:?}"),
    }
}

#[tokio::test]
async fn rumqttc_over_tls_round_trip() {
    let pki = Pki::new("rt");
    let b = tls_broker(&pki, false, "", "");
    let mut o = opts(&b, "tls-client");
    o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(client_config(&pki.ca_file, None))));
    let mut c = Mqtt::connect(o).await;
    assert_eq!(c.subscribe("tls/t", 1).await, vec![1]);
    c.publish("tls/t", 1, false, "over tls").await;
    let m = c.recv().await;
    assert_eq!(&m.payload[..], b"over tls");
    assert!(b.logs().contains("transport=Tls"), "listener logged as TLS: {}", b.logs());
}

#[tokio::test]
async fn mosquitto_clients_with_cafile_exchange_qos2_over_tls() {
    let pki = Pki::new("mosq");
    let b = tls_broker(&pki, false, "", "");
    let port = b.port().to_string();
    let ca = pki.ca_file.to_str().unwrap().to_string();
    let common = ["-h", "localhost", "-p", &port, "--cafile", &ca, "-q", "2"];
    let sub = tokio::process::Command::new("mosquitto_sub")
        .args(common)
        .args(["-t", "tls/mosq", "-C", "1", "-W", "10", "-i", "mosq-sub"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("mosquitto_sub");
    assert!(b.wait_log("client_id=mosq-sub", WAIT).await, "subscriber connected: {}", b.logs());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = tokio::process::Command::new("mosquitto_pub")
        .args(common)
        .args(["-t", "tls/mosq", "-m", "secured", "-i", "mosq-pub"])
        .status()
        .await
        .expect("mosquitto_pub");
    assert!(status.success(), "mosquitto_pub over TLS");
    let out = tokio::time::timeout(Duration::from_secs(15), sub.wait_with_output()).await.unwrap().unwrap();
    assert!(out.status.success(), "mosquitto_sub exit");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "secured");
}

#[tokio::test]
async fn plain_tcp_to_a_tls_listener_is_closed_without_harm() {
    let pki = Pki::new("plain");
    let b = tls_broker(&pki, false, "", "");
    let mut raw = Raw::connect(b.addr()).await;
    raw.send_lenient(&pkt::Connect::new("plaintext").encode()).await;
    // The broker answers with a TLS alert at most (never a CONNACK), then closes.
    let mut answer = Vec::new();
    let read =
        tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read_to_end(&mut raw.stream, &mut answer)).await;
    assert!(read.is_ok(), "connection still open after {WAIT:?}");
    assert_ne!(answer.first(), Some(&0x20), "no CONNACK over plain TCP: {answer:02x?}");
    // The listener keeps serving TLS clients.
    let (ok, _) = tls_raw(b.addr(), client_config(&pki.ca_file, None))
        .await
        .handshake_over(&pkt::Connect::new("after"))
        .await;
    ok.disconnect().await;
}

#[tokio::test]
async fn mtls_accepts_a_signed_client_and_refuses_none_or_foreign() {
    let pki = Pki::new("mtls");
    let b = tls_broker(&pki, true, "", "");
    let good = pki.client("device-1", None);
    let (raw, _) = tls_raw(b.addr(), client_config(&pki.ca_file, Some(&good)))
        .await
        .handshake_over(&pkt::Connect::new("with-cert"))
        .await;
    raw.disconnect().await;

    expect_no_mqtt(&pki.ca_file, b.addr(), None).await;
    let foreign = Pki::new("foreign");
    let stranger = foreign.client("device-1", None);
    expect_no_mqtt(&pki.ca_file, b.addr(), Some(&stranger)).await;
    assert!(b.wait_log("TLS handshake failed", WAIT).await, "refusals logged: {}", b.logs());
}

#[tokio::test]
async fn username_from_certificate_cn_drives_the_acl() {
    let pki = Pki::new("cn");
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("acl");
    std::fs::write(&acl, "user device-7\ntopic readwrite devices/7/#\n").unwrap();
    let extra = format!("[auth]\nacl_file = {acl:?}\n");
    let b = tls_broker(&pki, true, "username_from_certificate = \"cn\"\n", &extra);
    let id = pki.client("device-7", Some("d7.example"));
    // The CONNECT carries another user name: the certificate wins, and no password is needed.
    let connect = pkt::Connect::new("dev7").credentials("someone-else", None);
    let (mut raw, _) =
        tls_raw(b.addr(), client_config(&pki.ca_file, Some(&id))).await.handshake_over(&connect).await;
    assert_eq!(raw.subscribe(1, &[("devices/7/cmd", 1), ("devices/8/cmd", 1)]).await, vec![1, 0x80]);
    raw.disconnect().await;
}

#[tokio::test]
async fn sighup_reloads_certificates_and_keeps_open_connections() {
    let pki = Pki::new("old");
    let server = pki.server("server");
    let toml = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\ntransport = \"tls\"\n{}",
        pki.listener_tls(&server, false, "")
    );
    let b = Broker::launch(Launch::config(&toml).args(&[]));
    let (mut before, _) = tls_raw(b.addr(), client_config(&pki.ca_file, None))
        .await
        .handshake_over(&pkt::Connect::new("before"))
        .await;

    // A new CA signs a new server certificate, written over the configured files.
    let next = Pki::new("new");
    let renewed = next.server("server");
    std::fs::copy(&renewed.cert, &server.cert).unwrap();
    std::fs::copy(&renewed.key, &server.key).unwrap();
    b.sighup();
    assert!(b.wait_log("reloaded TLS certificates", WAIT).await, "reload logged: {}", b.logs());

    // New connections get the new certificate: the old CA no longer verifies it.
    assert!(tls_connect(b.addr(), client_config(&pki.ca_file, None)).await.is_err(), "old CA must fail");
    let (mut after, _) = tls_raw(b.addr(), client_config(&next.ca_file, None))
        .await
        .handshake_over(&pkt::Connect::new("after"))
        .await;
    // The connection made before the reload still works.
    assert_eq!(before.subscribe(1, &[("reload/t", 0)]).await, vec![0]);
    after.send(&pkt::publish("reload/t", 0, false, false, 0, b"x")).await;
    assert_eq!(before.recv_publish().await.payload, b"x");
    after.disconnect().await;
    before.disconnect().await;
}

// certs/gen-dev-certs.sh (the development PKI the README points to) makes files Tern serves
// TLS and mTLS with, and that a client with the client certificate gets through.
#[tokio::test]
async fn dev_certificate_script_output_serves_mtls() {
    let dir = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../certs/gen-dev-certs.sh");
    let made =
        std::process::Command::new("bash").arg(script).arg(dir.path()).status().expect("run the script");
    assert!(made.success(), "gen-dev-certs.sh failed");
    let file = |name: &str| dir.path().join(name);
    let toml = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\ntransport = \"tls\"\n[listener.tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\n",
        file("server.pem"),
        file("server.key"),
        file("ca.pem")
    );
    let b = Broker::launch(Launch::config(&toml).args(&[]));
    let client = client_tests::pki::Identity { cert: file("client.pem"), key: file("client.key") };
    let (raw, _) = tls_raw(b.addr(), client_config(&file("ca.pem"), Some(&client)))
        .await
        .handshake_over(&pkt::Connect::new("dev-client"))
        .await;
    raw.disconnect().await;
    expect_no_mqtt(&file("ca.pem"), b.addr(), None).await;
}
