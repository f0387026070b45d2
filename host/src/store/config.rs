//! `[plugins.store]`: where the fleet's plugin versions are kept.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::{KafkaSasl, KafkaTls, NatsServer, Secret};

/// `[plugins.store]`. Set on every host of a fleet (and given to `sluice
/// plugin push` / `rollback` with `--config`): the hosts take their
/// pipelines' plugin versions from the store instead of their local files
/// (docs/operations.md, "Fleet distribution").
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// NATS server(s) with JetStream, comma-separated: the versions live in
    /// an object store bucket, the current version of each pipeline and the
    /// hosts' heartbeats in two KV buckets beside it. Give `nats` or
    /// `kafka`.
    #[serde(default)]
    pub nats: Option<String>,
    /// A Kafka cluster: the store is a compacted topic (and one for the
    /// versions' chunks beside it); see `KafkaStoreConfig`.
    #[serde(default)]
    pub kafka: Option<KafkaStoreConfig>,
    /// NATS: the object store bucket. Default `sluice-plugins`; the KV buckets
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

/// `kafka = { … }` of `[plugins.store]`: the cluster and topic of a Kafka
/// plugin store (`sluice::store::kafka`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaStoreConfig {
    /// Bootstrap servers, comma-separated `host:port`. Default `127.0.0.1:9092`.
    #[serde(default = "crate::kafka::default_brokers")]
    pub brokers: String,
    /// The store's topic (pointers, manifests, signatures, heartbeats).
    /// Default `sluice-plugins`; the versions' chunks go to
    /// `<topic>-chunks`. Both are created compacted (one partition) if
    /// missing; an existing one that is not compacted is refused.
    #[serde(default = "default_bucket")]
    pub topic: String,
    /// TLS to the brokers, as for a Kafka source.
    #[serde(default)]
    pub tls: Option<KafkaTls>,
    /// SASL authentication, as for a Kafka source.
    #[serde(default)]
    pub sasl: Option<KafkaSasl>,
    /// Extra librdkafka properties for every client of the store. Values
    /// are never printed.
    #[serde(default)]
    pub options: std::collections::BTreeMap<String, Secret>,
}

impl KafkaStoreConfig {
    /// The librdkafka properties of every client of the store: TLS, SASL
    /// and `options` (the same mapping as a Kafka source's).
    pub fn connection_options(&self) -> std::collections::BTreeMap<String, Secret> {
        crate::kafka::connection_options(self.tls.as_ref(), self.sasl.as_ref(), &self.options)
    }
}

/// Which broker a store lives on.
pub enum Backend<'a> {
    /// [`StoreConfig::nats_server`].
    Nats,
    Kafka(&'a KafkaStoreConfig),
}

impl StoreConfig {
    /// The server as the NATS connection code takes it (the same login and
    /// TLS rules as a NATS source).
    pub fn nats_server(&self) -> NatsServer {
        NatsServer {
            url: self.nats.clone().unwrap_or_default(),
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

    /// The broker the store is on (`kafka` when given, else `nats`).
    pub fn backend(&self) -> Backend<'_> {
        match &self.kafka {
            Some(kafka) => Backend::Kafka(kafka),
            None => Backend::Nats,
        }
    }

    /// Relative file paths, made relative to the config file's folder.
    pub fn resolve_paths(&mut self, base: &Path) {
        let kafka_tls = self.kafka.as_mut().and_then(|k| k.tls.as_mut());
        let kafka_paths = kafka_tls.into_iter().flat_map(|t| [&mut t.ca_file, &mut t.cert_file, &mut t.key_file]);
        let nats_paths = [&mut self.credentials, &mut self.tls_ca, &mut self.tls_cert, &mut self.tls_key];
        for path in nats_paths.into_iter().chain(kafka_paths).flatten() {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
    }

    /// The rules serde cannot check: `(key, message)`.
    pub fn validate(&self) -> Vec<(&'static str, String)> {
        let mut found = Vec::new();
        let Some(kafka) = &self.kafka else {
            if self.nats.is_none() {
                found.push((
                    "store",
                    "give `nats` (a NATS server with JetStream) or `kafka` (a Kafka cluster): where the store lives".into(),
                ));
                return found;
            }
            if let Err(e) = crate::nats::check_server(&self.nats_server()) {
                found.push(e);
            }
            self.check_bucket(&mut found);
            return found;
        };
        if self.nats.is_some() {
            found.push(("kafka", "give `nats` or `kafka`, not both: a fleet has one store".into()));
        }
        let nats_only = [
            ("token", self.token.is_some()),
            ("credentials", self.credentials.is_some()),
            ("user", self.user.is_some()),
            ("password", self.password.is_some()),
            ("nkey", self.nkey.is_some()),
            ("tls_ca", self.tls_ca.is_some()),
            ("tls_cert", self.tls_cert.is_some()),
            ("tls_key", self.tls_key.is_some()),
        ];
        if let Some((key, _)) = nats_only.iter().find(|(_, set)| *set) {
            found.push((key, format!("`{key}` is a NATS setting; a Kafka store takes `tls` and `sasl` in its `kafka` table")));
        }
        if self.bucket != default_bucket() {
            found.push(("bucket", "`bucket` is the NATS store's; a Kafka store takes `topic` in its `kafka` table".into()));
        }
        if let Err(m) = crate::config::validate::validate_brokers(&kafka.brokers) {
            found.push(("kafka.brokers", m));
        }
        if !crate::config::validate::valid_topic(&kafka.topic) || kafka.topic.len() > 249 - "-chunks".len() {
            found.push((
                "kafka.topic",
                format!(
                    "{:?} is not a valid Kafka topic name (with `-chunks` added): 1 to 242 characters of a-z, A-Z, 0-9, `.`, `_` and `-`",
                    kafka.topic
                ),
            ));
        }
        let mut security = Vec::new();
        crate::config::validate::validate_kafka_security(
            kafka.tls.as_ref(),
            kafka.sasl.as_ref(),
            [("options", &kafka.options)],
            &mut security,
        );
        found.extend(security.into_iter().map(|(key, message)| (kafka_key(key), message)));
        found
    }

    fn check_bucket(&self, found: &mut Vec<(&'static str, String)>) {
        if !crate::nats::valid_name(&self.bucket) || self.bucket.contains(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_')) {
            found.push(("bucket", format!("{:?} is not a bucket name: letters, digits, `-` and `_` only", self.bucket)));
        }
    }
}

/// A key of a Kafka `tls` / `sasl` rule, under `kafka`.
fn kafka_key(key: &str) -> &'static str {
    match key {
        "tls.cert_file" => "kafka.tls.cert_file",
        "tls.key_file" => "kafka.tls.key_file",
        "tls.key_password" => "kafka.tls.key_password",
        "sasl.username" => "kafka.sasl.username",
        "sasl.password" => "kafka.sasl.password",
        "options" => "kafka.options",
        _ => "kafka",
    }
}
