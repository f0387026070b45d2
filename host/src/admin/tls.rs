//! HTTPS for the admin API: `[admin] tls_cert` and `tls_key` (PEM) as a
//! rustls server config. rustls (with the `ring` provider) is already in
//! the tree through async-nats.

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};

/// The server config for `cert` (a PEM chain, leaf first) and `key`.
/// `Err((key, message))` names the config key at fault; the message quotes
/// no byte of the key file.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, (&'static str, String)> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| ("tls_cert", format!("{}: {}", cert.display(), pem_error(&e))))?;
    if chain.is_empty() {
        return Err(("tls_cert", format!("{}: no PEM certificate (`-----BEGIN CERTIFICATE-----`) in it", cert.display())));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| ("tls_key", format!("{}: {}", key.display(), pem_error(&e))))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|builder| builder.with_no_client_auth().with_single_cert(chain, private))
        .map_err(|e| ("tls_key", format!("{} does not fit {}: {e}", key.display(), cert.display())))?;
    Ok(Arc::new(config))
}

/// A PEM reading error without quoting the file.
fn pem_error(error: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match error {
        Error::Io(e) => e.to_string(),
        Error::NoItemsFound => "no PEM item of the expected kind in it (a private key: `-----BEGIN PRIVATE KEY-----`)".into(),
        _ => "not a valid PEM file".into(),
    }
}
