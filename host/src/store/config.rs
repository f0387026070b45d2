//! `[plugins.store]`: where the fleet's plugin versions are kept.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::{NatsServer, Secret};

/// `[plugins.store]`. Set on every host of a fleet (and given to `sluice
/// plugin push` / `rollback` with `--config`): the hosts take their
/// pipelines' plugin versions from the store instead of their local files
/// (docs/operations.md, "Fleet distribution").
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// NATS server(s) with JetStream, comma-separated: the versions live in
    /// an object store bucket, the current version of each pipeline and the
    /// hosts' heartbeats in two KV buckets beside it.
    pub nats: String,
    /// The object store bucket. Default `sluice-plugins`; the KV buckets
    /// are `<bucket>-current` and `<bucket>-hosts`. All three are created
    /// if missing.
    #[serde(default = "default_bucket")]
    pub bucket: String,
    /// Authentication token; keep it in the environment: `token = "${NATS_TOKEN}"`.
    #[serde(default)]
    pub token: Option<Secret>,
    /// A `.creds` file (JWT and NKey seed), for decentralised auth.
    #[serde(default)]
    pub credentials: Option<PathBuf>,
    /// User name for user/password authentication (with `password`).
    #[serde(default)]
    pub user: Option<Secret>,
    /// Password for `user`; keep it in the environment.
    #[serde(default)]
    pub password: Option<Secret>,
    /// An NKey user seed (`SU…`); keep it in the environment.
    #[serde(default)]
    pub nkey: Option<Secret>,
    /// PEM file of the certificate authority the server's certificate must
    /// chain to. Implies TLS.
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate (mTLS), with `tls_key`. Implies TLS.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
}

fn default_bucket() -> String {
    "sluice-plugins".into()
}

impl StoreConfig {
    /// The server as the NATS connection code takes it (the same login and
    /// TLS rules as a NATS source).
    pub fn nats_server(&self) -> NatsServer {
        NatsServer {
            url: self.nats.clone(),
            token: self.token.clone(),
            credentials: self.credentials.clone(),
            user: self.user.clone(),
            password: self.password.clone(),
            nkey: self.nkey.clone(),
            tls_ca: self.tls_ca.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
        }
    }

    /// Relative file paths, made relative to the config file's folder.
    pub fn resolve_paths(&mut self, base: &Path) {
        for path in [&mut self.credentials, &mut self.tls_ca, &mut self.tls_cert, &mut self.tls_key].into_iter().flatten() {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
    }

    /// The rules serde cannot check: `(key, message)`.
    pub fn validate(&self) -> Vec<(&'static str, String)> {
        let mut found = Vec::new();
        if let Err(e) = crate::nats::check_server(&self.nats_server()) {
            found.push(e);
        }
        if !crate::nats::valid_name(&self.bucket) || self.bucket.contains(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_')) {
            found.push(("bucket", format!("{:?} is not a bucket name: letters, digits, `-` and `_` only", self.bucket)));
        }
        found
    }
}
