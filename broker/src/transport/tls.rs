//! TLS for `tls` and `wss` listeners: rustls with the ring provider, TLS 1.2 and 1.3 only.
//!
//! The certificate chain, key and client CA are read once into a `rustls::ServerConfig` and
//! read again only on `reload` (SIGHUP): a handshake clones an `Arc`, it never touches the
//! files. With `client_ca` set, clients must present a certificate that CA signed (mTLS); the
//! verified certificate can also name the MQTT user (`username_from_certificate`).

use std::path::Path;
use std::sync::{Arc, RwLock};

use bytestring::ByteString;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use x509_parser::extensions::GeneralName;

use crate::config::{CertificateIdentity, TlsConfig};

/// A TLS setting that cannot be used; the message names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} from {path}: {detail}")]
    File { what: &'static str, path: String, detail: String },
    #[error("{path} holds no certificate")]
    NoCertificate { path: String },
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client CA {path}: {detail}")]
    ClientCa { path: String, detail: String },
}

/// One listener's TLS settings, reloadable.
#[derive(Debug)]
pub struct TlsContext {
    settings: TlsConfig,
    current: RwLock<Arc<ServerConfig>>,
}

impl TlsContext {
    pub fn load(settings: &TlsConfig) -> Result<TlsContext, TlsError> {
        let config = server_config(settings)?;
        Ok(TlsContext { settings: settings.clone(), current: RwLock::new(Arc::new(config)) })
    }

    /// Reads the files again; new handshakes use them, open connections keep theirs. On an
    /// error the previous settings stay in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = server_config(&self.settings)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
        Ok(())
    }

    /// Runs the server handshake on `stream` (the caller bounds it in time).
    pub async fn accept<S>(&self, stream: S) -> std::io::Result<TlsStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let config = self.current.read().unwrap_or_else(|e| e.into_inner()).clone();
        TlsAcceptor::from(config).accept(stream).await
    }

    /// The user name the verified client certificate gives, per `username_from_certificate`.
    pub fn certificate_user<S>(&self, stream: &TlsStream<S>) -> Option<ByteString> {
        let source = self.settings.username_from_certificate;
        if source == CertificateIdentity::None {
            return None;
        }
        let leaf = stream.get_ref().1.peer_certificates()?.first()?;
        identity(leaf, source)
    }
}

fn server_config(settings: &TlsConfig) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])?;
    let builder = match &settings.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(ca, "client CA certificates")? {
                roots.add(cert).map_err(|e| client_ca_error(ca, e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| client_ca_error(ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let key = PrivateKeyDer::from_pem_file(&settings.key)
        .map_err(|e| file_error("a private key", &settings.key, e))?;
    Ok(builder.with_single_cert(certificates(&settings.cert, "certificates")?, key)?)
}

/// The client side of a bridge's TLS: the upstream's certificate must chain to `ca` (and
/// carry the name the connection asks for); a client certificate is presented if configured.
pub fn client_config(settings: &crate::config::bridge::BridgeTls) -> Result<rustls::ClientConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for cert in certificates(&settings.ca, "CA certificates")? {
        roots.add(cert)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])?
        .with_root_certificates(roots);
    Ok(match (&settings.cert, &settings.key) {
        (Some(cert), Some(key)) => {
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| file_error("a private key", key, e))?;
            builder.with_client_auth_cert(certificates(cert, "certificates")?, key)?
        }
        _ => builder.with_no_client_auth(),
    })
}

fn certificates(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| file_error(what, path, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: path.display().to_string() });
    }
    Ok(certs)
}

fn file_error(what: &'static str, path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::File { what, path: path.display().to_string(), detail: e.to_string() }
}

fn client_ca_error(path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::ClientCa { path: path.display().to_string(), detail: e.to_string() }
}

/// The subject's Common Name, or the first DNS name (else e-mail address) of the Subject
/// Alternative Name.
fn identity(der: &CertificateDer<'_>, source: CertificateIdentity) -> Option<ByteString> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let name = match source {
        CertificateIdentity::None => return None,
        CertificateIdentity::Cn => cert.subject().iter_common_name().next()?.as_str().ok()?.to_owned(),
        CertificateIdentity::San => {
            let san = cert.subject_alternative_name().ok()??;
            let names = &san.value.general_names;
            let dns = names.iter().find_map(|n| match n {
                GeneralName::DNSName(s) => Some(*s),
                _ => None,
            });
            let email = || {
                names.iter().find_map(|n| match n {
                    GeneralName::RFC822Name(s) => Some(*s),
                    _ => None,
                })
            };
            dns.or_else(email)?.to_owned()
        }
    };
    Some(ByteString::from(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate(cn: &str, san: Vec<rcgen::SanType>) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        params.subject_alt_names = san;
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn identity_comes_from_the_common_name_or_the_alternative_name() {
        let dns = certificate("device-7", vec![rcgen::SanType::DnsName("d7.example".try_into().unwrap())]);
        assert_eq!(identity(&dns, CertificateIdentity::Cn).as_deref(), Some("device-7"));
        assert_eq!(identity(&dns, CertificateIdentity::San).as_deref(), Some("d7.example"));
        let mail = certificate("x", vec![rcgen::SanType::Rfc822Name("ops@example.org".try_into().unwrap())]);
        assert_eq!(identity(&mail, CertificateIdentity::San).as_deref(), Some("ops@example.org"));
        let none = certificate("only-cn", vec![]);
        assert_eq!(identity(&none, CertificateIdentity::San), None);
        assert_eq!(identity(&none, CertificateIdentity::None), None);
    }

    #[test]
    fn missing_or_empty_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let settings = TlsConfig {
            cert: empty.clone(),
            key: dir.path().join("missing.key"),
            client_ca: None,
            username_from_certificate: CertificateIdentity::None,
        };
        let err = TlsContext::load(&settings).unwrap_err().to_string();
        assert!(err.contains("missing.key"), "{err}");
        let key = rcgen::KeyPair::generate().unwrap();
        let key_path = dir.path().join("server.key");
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        let err = TlsContext::load(&TlsConfig { key: key_path, ..settings }).unwrap_err().to_string();
        assert!(err.contains("empty.pem") && err.contains("no certificate"), "{err}");
    }
}
