//! Test certificates, made fresh per test with rcgen: a CA, a server certificate for
//! localhost / 127.0.0.1 and client certificates, written as PEM files into a tempdir; and
//! TLS connections with tokio-rustls (ring provider).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::{Raw, WAIT};

/// A certificate authority with its files in `dir`.
pub struct Pki {
    pub dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
    /// `<dir>/<name>-ca.crt`
    pub ca_file: PathBuf,
}

/// A certificate and its key, as files.
pub struct Identity {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, format!("{name} test CA"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let ca_file = dir.path().join(format!("{name}-ca.crt"));
        std::fs::write(&ca_file, ca.pem()).unwrap();
        Pki { dir, ca, ca_file }
    }

    /// A server certificate for localhost and 127.0.0.1, files `<file_stem>.crt/.key`.
    pub fn server(&self, file_stem: &str) -> Identity {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        params.distinguished_name.push(DnType::CommonName, "localhost");
        self.issue(params, file_stem)
    }

    /// A client certificate with this Common Name (and, if given, a DNS Subject Alternative Name).
    pub fn client(&self, cn: &str, san_dns: Option<&str>) -> Identity {
        let mut params =
            CertificateParams::new(san_dns.map(str::to_string).into_iter().collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        self.issue(params, &format!("client-{cn}"))
    }

    fn issue(&self, params: CertificateParams, file_stem: &str) -> Identity {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let id = Identity {
            cert: self.dir.path().join(format!("{file_stem}.crt")),
            key: self.dir.path().join(format!("{file_stem}.key")),
        };
        std::fs::write(&id.cert, cert.pem()).unwrap();
        std::fs::write(&id.key, key.serialize_pem()).unwrap();
        id
    }

    /// The `[listener.tls]` table for a server identity (and this CA for client certificates
    /// when `mtls`), plus any extra lines.
    pub fn listener_tls(&self, server: &Identity, mtls: bool, extra: &str) -> String {
        let mut t = format!("[listener.tls]\ncert = {:?}\nkey = {:?}\n", server.cert, server.key);
        if mtls {
            t += &format!("client_ca = {:?}\n", self.ca_file);
        }
        t + extra
    }
}

/// A client TLS configuration trusting the CA in `ca_file`, presenting `identity` if given.
pub fn client_config(ca_file: &Path, identity: Option<&Identity>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        Some(id) => {
            let chain = CertificateDer::pem_file_iter(&id.cert).unwrap().map(Result::unwrap).collect();
            builder.with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(&id.key).unwrap()).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

/// TLS to `addr` as "localhost"; the handshake's error when it fails.
pub async fn tls_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(WAIT, tokio_rustls::TlsConnector::from(config).connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::other("TLS handshake timed out"))?
}

/// A [`Raw`] connection over TLS (panics if the handshake fails).
pub async fn tls_raw(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> Raw {
    let stream = tls_connect(addr, config).await.expect("TLS handshake");
    let local = stream.get_ref().0.local_addr().unwrap();
    Raw::over(stream, local)
}
