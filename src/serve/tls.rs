//! TLS for [`super::serve`]: a certificate chain and its private key read
//! from PEM files into a rustls server configuration (TLS 1.2 and 1.3,
//! the ring provider's safe defaults, ALPN `http/1.1`). Each accepted
//! connection then completes its handshake within the header deadline
//! before HTTP starts; a failed handshake is counted in `/metrics`.

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::ServeError;

/// A loaded certificate and key, ready to accept connections with.
#[derive(Clone)]
pub struct TlsConfig {
    pub(super) server: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsConfig")
    }
}

impl TlsConfig {
    /// Read the certificate chain (`cert`, PEM, the server's certificate
    /// first) and its private key (`key`, PEM: PKCS#8, PKCS#1 or SEC1).
    ///
    /// # Errors
    ///
    /// [`ServeError::Tls`] naming the file when one cannot be read or holds
    /// no certificate or key, or when the key does not match the
    /// certificate.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, ServeError> {
        let bad = |path: &Path, m: String| ServeError::Tls(format!("{}: {m}", path.display()));
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .map_err(|e| bad(cert, format!("cannot read certificates: {e}")))?
            .collect::<Result<_, _>>()
            .map_err(|e| bad(cert, format!("not a PEM certificate chain: {e}")))?;
        if certs.is_empty() {
            return Err(bad(
                cert,
                "no certificate in it (expected -----BEGIN CERTIFICATE-----)".into(),
            ));
        }
        let private = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| bad(key, format!("no PEM private key in it (PKCS#8, PKCS#1 or SEC1): {e}")))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ServeError::Tls(format!("no usable TLS versions: {e}")))?
            .with_no_client_auth()
            .with_single_cert(certs, private)
            .map_err(|e| {
                ServeError::Tls(format!(
                    "{} and {}: the key does not fit the certificate: {e}",
                    cert.display(),
                    key.display()
                ))
            })?;
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsConfig {
            server: Arc::new(server),
        })
    }
}
