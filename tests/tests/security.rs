//! Secured brokers and a secured admin API, against the real binary: a
//! nats-server with a password, with mutual TLS and with NKeys (a pipeline
//! consumes and publishes through each; a wrong password or CA fails with
//! an error naming the pipeline and the server, and no secret), and the
//! admin API over HTTPS with `sluice status`. Certificates are made here
//! with `openssl`.

#[allow(dead_code)]
mod common;
#[path = "common/nats.rs"]
#[allow(dead_code)]
mod fixture;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use futures::StreamExt;

use common::*;
use fixture::*;

const WITHIN: Duration = Duration::from_secs(60);

/// Runs `openssl args…` in `dir`.
fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let output = Command::new("openssl").args(args).current_dir(dir).output().context("running openssl")?;
    ensure!(output.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    Ok(())
}

/// A certificate authority and certificates it signs (P-256 keys).
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self { dir: dir.to_path_buf() })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// `<name>.pem` and `<name>.key`: a self-signed CA.
    fn ca(&self, name: &str) -> Result<PathBuf> {
        let (pem, key, subject) = (format!("{name}.pem"), format!("{name}.key"), format!("/CN={name}"));
        openssl(
            &self.dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-keyout",
                &key,
                "-out",
                &pem,
                "-subj",
                &subject,
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        )?;
        Ok(self.path(&pem))
    }

    /// `<name>.pem` and `<name>.key`, signed by CA `ca`, for 127.0.0.1;
    /// `usage` is `serverAuth` or `clientAuth`.
    fn leaf(&self, ca: &str, name: &str, usage: &str) -> Result<(PathBuf, PathBuf)> {
        let (pem, key, csr, ext) = (format!("{name}.pem"), format!("{name}.key"), format!("{name}.csr"), format!("{name}.ext"));
        std::fs::write(
            self.path(&ext),
            format!("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage={usage}\nkeyUsage=critical,digitalSignature\nbasicConstraints=CA:FALSE\n"),
        )?;
        openssl(
            &self.dir,
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={name}"),
            ],
        )?;
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &format!("{ca}.pem"),
                "-CAkey",
                &format!("{ca}.key"),
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &pem,
                "-extfile",
                &ext,
            ],
        )?;
        Ok((self.path(&pem), self.path(&key)))
    }
}

/// Source nats `in.<tag>` → uppercase → sink jetstream `out.<tag>` (a
/// stream created for it), on one secured server; `login` is the keys
/// (inline TOML) both use.
fn secured_pipeline(name: &str, url: &str, tag: &str, login: &str) -> String {
    broker_pipeline(
        name,
        "uppercase",
        [
            &format!(r#"{{ kind = "nats", url = "{url}", subject = "in.{tag}"{login} }}"#),
            &format!(r#"{{ kind = "jetstream", url = "{url}", subject = "out.{tag}", stream = "OUT_{tag}"{login} }}"#),
            r#"{ kind = "file", path = "dlq.jsonl" }"#,
        ],
        "",
        "5s",
    )
}

/// Starts `config` (with `env`), publishes `n` messages on `in.<tag>` once
/// sluice subscribes, and checks they come back uppercased on `out.<tag>`;
/// stops the host and returns what it printed.
async fn round_trip(server: &NatsServer, client: &async_nats::Client, config: &str, env: &[(&str, &str)], tag: &str) -> Result<Finished> {
    let scratch = Scratch::new()?;
    scratch.write("sluice.toml", config)?;
    let mut command = scratch.sluice(&["run", "sluice.toml"]);
    command.envs(env.iter().copied());
    let mut outputs = client.subscribe(format!("out.{tag}")).await?;
    client.flush().await?;
    let mut host = Running::spawn(command)?;
    let subject = format!("in.{tag}");
    host.wait_until("sluice to subscribe", WITHIN, || server.subscribers(&subject).unwrap_or(0) == 1)?;
    let n = 50;
    for i in 0..n {
        client.publish(subject.clone(), format!("word {i}").into()).await?;
    }
    client.flush().await?;
    let mut got = Vec::new();
    while got.len() < n {
        let message = tokio::time::timeout(WITHIN, outputs.next())
            .await
            .with_context(|| format!("{} of {n} outputs arrived", got.len()))?
            .context("subscription ended")?;
        got.push(String::from_utf8_lossy(&message.payload).into_owned());
    }
    assert_eq!(got, (0..n).map(|i| format!("WORD {i}")).collect::<Vec<_>>());
    host.terminate()?;
    let finished = host.wait(WITHIN)?;
    finished.ensure_success()?;
    Ok(finished)
}

/// Runs `config` expecting its pipeline to fail at connect: returns what
/// sluice printed. It waits for the process to exit (a failed pipeline
/// ends the run), at most `WITHIN`, then stops it.
fn failing_run(config: &str, env: &[(&str, &str)]) -> Result<String> {
    let scratch = Scratch::new()?;
    scratch.write("sluice.toml", config)?;
    let mut command = scratch.sluice(&["run", "sluice.toml"]);
    command.envs(env.iter().copied());
    let mut host = Running::spawn(command)?;
    let deadline = Instant::now() + WITHIN;
    while host.is_running()? && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if host.is_running()? {
        host.terminate()?;
    }
    let finished = host.wait(WITHIN)?;
    Ok(format!("{}{}", finished.stdout, finished.stderr))
}

/// The line of `log` that reports the pipeline's failure: it names the
/// pipeline and the server.
fn connect_failure<'a>(log: &'a str, pipeline: &str, port: u16) -> Result<&'a str> {
    let server = format!("127.0.0.1:{port}");
    log.lines()
        .find(|l| l.starts_with(&format!("pipeline `{pipeline}` failed: ")) && l.contains(&server))
        .with_context(|| format!("no failure line naming pipeline {pipeline} and server {server} in:\n{log}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_login_works_from_the_url_and_from_keys_and_a_wrong_one_is_named_without_it() -> Result<()> {
    let password = "pa$s:w@rd-7f3a";
    let server = NatsServer::start_with(&["--user".into(), "orders-svc".into(), "--pass".into(), password.into()])?;
    let client = async_nats::ConnectOptions::with_user_and_password("orders-svc".into(), password.into())
        .connect(server.url())
        .await
        .context("the test client's login")?;
    // In the URL (percent-encoded, as in any URL), as other NATS clients take it.
    let encoded = "pa%24s%3Aw%40rd-7f3a";
    let url = format!("nats://orders-svc:{encoded}@127.0.0.1:{}", server.port);
    let finished = round_trip(&server, &client, &secured_pipeline("by_url", &url, "a", ""), &[], "a").await?;
    ensure!(!finished.stderr.contains(encoded) && !finished.stderr.contains(password), "{}", finished.stderr);
    // As keys, the password from the environment.
    let login = r#", user = "orders-svc", password = "${NATS_PASSWORD}""#;
    let config = secured_pipeline("by_keys", &server.url(), "b", login);
    round_trip(&server, &client, &config, &[("NATS_PASSWORD", password)], "b").await?;

    // A wrong password: the pipeline and the server are named, the
    // password is not printed, in either way of giving it.
    let wrong = "wr0ng-Secret-9c1";
    let log = failing_run(&config, &[("NATS_PASSWORD", wrong)])?;
    let line = connect_failure(&log, "by_keys", server.port)?;
    ensure!(line.contains("the server refused the login (authorization violation"), "{line}");
    ensure!(!log.contains(wrong), "the wrong password was printed:\n{log}");
    let log = failing_run(&secured_pipeline("by_url", &format!("nats://orders-svc:{wrong}@127.0.0.1:{}", server.port), "a", ""), &[])?;
    let line = connect_failure(&log, "by_url", server.port)?;
    ensure!(line.contains("the server refused the login (authorization violation") && line.contains("nats://***@127.0.0.1"), "{line}");
    ensure!(!log.contains(wrong) && !log.contains("orders-svc"), "the login was printed:\n{log}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_with_a_custom_ca_works_and_a_wrong_ca_is_named() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = Pki::new(dir.path())?;
    let ca = pki.ca("ca")?;
    let (server_cert, server_key) = pki.leaf("ca", "server", "serverAuth")?;
    let (client_cert, client_key) = pki.leaf("ca", "client", "clientAuth")?;
    let other_ca = pki.ca("other-ca")?;
    let arg = |p: &Path| p.display().to_string();
    let server = NatsServer::start_with(&[
        "--tls".into(),
        "--tlscert".into(),
        arg(&server_cert),
        "--tlskey".into(),
        arg(&server_key),
        "--tlscacert".into(),
        arg(&ca),
        "--tlsverify".into(),
    ])?;
    let client = async_nats::ConnectOptions::new()
        .add_root_certificates(ca.clone())
        .add_client_certificate(client_cert.clone(), client_key.clone())
        .require_tls(true)
        .connect(server.url())
        .await
        .context("the test client over mTLS")?;
    let login = |ca: &Path| {
        format!(r#", tls_ca = {}, tls_cert = {}, tls_key = {}"#, toml_path(ca), toml_path(&client_cert), toml_path(&client_key))
    };
    round_trip(&server, &client, &secured_pipeline("mtls", &server.url(), "t", &login(&ca)), &[], "t").await?;

    // A CA that did not sign the server's certificate.
    let log = failing_run(&secured_pipeline("mtls", &server.url(), "t", &login(&other_ca)), &[])?;
    let line = connect_failure(&log, "mtls", server.port)?;
    ensure!(line.contains("TLS handshake failed: invalid peer certificate: UnknownIssuer") && line.contains("tls_ca"), "{line}");
    // No client certificate: the server refuses the handshake.
    let no_client_cert = format!(r#", tls_ca = {}"#, toml_path(&ca));
    let log = failing_run(&secured_pipeline("mtls", &server.url(), "t", &no_client_cert), &[])?;
    let line = connect_failure(&log, "mtls", server.port)?;
    ensure!(line.contains("TLS handshake failed: received fatal alert: BadCertificate") && line.contains("tls_cert"), "{line}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_nkey_seed_from_the_environment_logs_in_and_is_never_printed() -> Result<()> {
    let user = nkeys::KeyPair::new_user();
    let seed = user.seed()?;
    let dir = tempfile::tempdir()?;
    let conf = dir.path().join("nkeys.conf");
    std::fs::write(&conf, format!("authorization {{ users = [ {{ nkey: {} }} ] }}\n", user.public_key()))?;
    let server = NatsServer::start_with(&["-c".into(), conf.display().to_string()])?;
    let client = async_nats::ConnectOptions::with_nkey(seed.clone()).connect(server.url()).await.context("the test client's NKey")?;
    let config = secured_pipeline("nkey", &server.url(), "n", r#", nkey = "${NATS_NKEY_SEED}""#);
    let finished = round_trip(&server, &client, &config, &[("NATS_NKEY_SEED", &seed)], "n").await?;
    ensure!(!finished.stderr.contains(&seed) && !finished.stdout.contains(&seed));
    // Another user's seed: refused by the server, and not printed.
    let stranger = nkeys::KeyPair::new_user().seed()?;
    let log = failing_run(&config, &[("NATS_NKEY_SEED", &stranger)])?;
    let line = connect_failure(&log, "nkey", server.port)?;
    ensure!(line.contains("the server refused the login (authorization violation"), "{line}");
    ensure!(!log.contains(&stranger), "the seed was printed:\n{log}");
    Ok(())
}

/// `[admin]` with a certificate from a test CA: `sluice status` reaches it
/// over HTTPS with `--ca-file` and the read token, and not without either;
/// plain HTTP to the port gets no HTTP answer and leaves the server serving;
/// a missing certificate file is a config error naming the key.
#[test]
fn the_admin_api_over_https_with_a_test_ca_and_the_read_token() -> Result<()> {
    use std::io::{Read, Write};
    let scratch = Scratch::new()?;
    let pki = Pki::new(&scratch.path("pki"))?;
    let ca = pki.ca("ca")?;
    pki.leaf("ca", "admin", "serverAuth")?;
    scratch.write("events.jsonl", "")?;
    let config = format!(
        r#"{runtime}
[admin]
listen = "{ANY_PORT}"
read_token = "${{READ_TOKEN}}"
tls_cert = "pki/admin.pem"
tls_key = "pki/admin.key"

[pipelines.ops]
source = {{ kind = "file", path = "events.jsonl", follow = true }}
sink = {{ kind = "file", path = "out.jsonl" }}
dead_letter = {{ kind = "file", path = "dlq.jsonl" }}

[pipelines.ops.plugin]
path = {plugin}
"#,
        runtime = runtime_table(),
        plugin = toml_path(&plugin("uppercase")),
    );
    scratch.write("sluice.toml", &config)?;
    let read_token = "r-token-5d1e";
    let mut command = scratch.sluice(&["run", "sluice.toml"]);
    command.env("READ_TOKEN", read_token);
    let mut host = Running::spawn(command)?;
    let port = host.admin_port()?;
    let status = |ca: Option<&Path>, token: Option<&str>| -> Result<Finished> {
        let mut command = scratch.sluice(&["status", "--admin", &format!("https://127.0.0.1:{port}"), "--interval", "10ms"]);
        command.env_remove("SLUICE_ADMIN_CA").env_remove("SLUICE_ADMIN_READ_TOKEN");
        if let Some(ca) = ca {
            command.arg("--ca-file").arg(ca);
        }
        if let Some(token) = token {
            command.env("SLUICE_ADMIN_READ_TOKEN", token);
        }
        Running::spawn(command)?.wait(WITHIN)
    };
    host.wait_until("the admin API over HTTPS", WITHIN, || status(Some(&ca), Some(read_token)).is_ok_and(|f| f.status.success()))?;
    let table = status(Some(&ca), Some(read_token))?;
    ensure!(table.stdout.lines().any(|l| l.starts_with("ops ")), "{}", table.stdout);

    // A CA that did not sign it: refused, and said so.
    let other = pki.ca("other-ca")?;
    let untrusted = status(Some(&other), Some(read_token))?;
    untrusted.ensure_failure()?;
    ensure!(untrusted.stderr.contains("cannot reach the admin API at https://127.0.0.1"), "{}", untrusted.stderr);
    // The read token is required over HTTPS too.
    let anonymous = status(Some(&ca), None)?;
    anonymous.ensure_failure()?;
    ensure!(anonymous.stderr.contains("requires a token"), "{}", anonymous.stderr);

    // Plain HTTP to the HTTPS port: closed without an HTTP answer.
    let mut plain = std::net::TcpStream::connect(("127.0.0.1", port))?;
    plain.set_read_timeout(Some(WITHIN))?;
    plain.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    ensure!(!answer.starts_with(b"HTTP/"), "plain HTTP was answered: {}", String::from_utf8_lossy(&answer));
    status(Some(&ca), Some(read_token))?.ensure_success()?;
    host.terminate()?;
    host.wait(WITHIN)?.ensure_success()?;

    // A certificate file that is not there: `sluice check` names the key and
    // the file.
    scratch.write("bad.toml", config.replace("pki/admin.pem", "pki/missing.pem"))?;
    let mut command = scratch.sluice(&["check", "bad.toml"]);
    command.env("READ_TOKEN", read_token);
    let check = Running::spawn(command)?.wait(WITHIN)?;
    check.ensure_failure()?;
    let output = format!("{}{}", check.stdout, check.stderr);
    ensure!(output.contains("[admin] key `tls_cert`") && output.contains("missing.pem: No such file"), "{output}");
    // A key that is not the certificate's.
    scratch.write("mismatch.toml", config.replace("pki/admin.key", "pki/ca.key"))?;
    let mut command = scratch.sluice(&["check", "mismatch.toml"]);
    command.env("READ_TOKEN", read_token);
    let check = Running::spawn(command)?.wait(WITHIN)?;
    check.ensure_failure()?;
    let output = format!("{}{}", check.stdout, check.stderr);
    ensure!(output.contains("[admin] key `tls_key`"), "{output}");
    ensure!(!output.contains(read_token), "{output}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_login_works_from_a_key_and_from_the_url() -> Result<()> {
    let token = "t0ken-8b2f";
    let server = NatsServer::start_with(&["--auth".into(), token.into()])?;
    let client = async_nats::ConnectOptions::with_token(token.into()).connect(server.url()).await.context("the test client's token")?;
    let config = secured_pipeline("by_token", &server.url(), "k", r#", token = "${NATS_TOKEN}""#);
    let finished = round_trip(&server, &client, &config, &[("NATS_TOKEN", token)], "k").await?;
    ensure!(!finished.stderr.contains(token));
    let url = format!("nats://{token}@127.0.0.1:{}", server.port);
    let finished = round_trip(&server, &client, &secured_pipeline("token_url", &url, "u", ""), &[], "u").await?;
    ensure!(!finished.stderr.contains(token));
    Ok(())
}

/// Every NATS connection goes through the same login and TLS: a JetStream
/// source, sink and dead letter on a server that wants both a password and
/// a client certificate, and `sluice dlq replay` sending the dead letters
/// back with the login in `--nats-url` and the `--nats-tls-*` flags.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_and_their_replay_use_the_login_and_mutual_tls() -> Result<()> {
    let scratch = Scratch::new()?;
    let pki = Pki::new(&scratch.path("pki"))?;
    let ca = pki.ca("ca")?;
    let (server_cert, server_key) = pki.leaf("ca", "server", "serverAuth")?;
    let (client_cert, client_key) = pki.leaf("ca", "client", "clientAuth")?;
    let password = "dlq-pass-31c9";
    let arg = |p: &Path| p.display().to_string();
    let server = NatsServer::start_with(&[
        "--user".into(),
        "replayer".into(),
        "--pass".into(),
        password.into(),
        "--tls".into(),
        "--tlscert".into(),
        arg(&server_cert),
        "--tlskey".into(),
        arg(&server_key),
        "--tlscacert".into(),
        arg(&ca),
        "--tlsverify".into(),
    ])?;
    let client = async_nats::ConnectOptions::with_user_and_password("replayer".into(), password.into())
        .add_root_certificates(ca.clone())
        .add_client_certificate(client_cert.clone(), client_key.clone())
        .require_tls(true)
        .connect(server.url())
        .await
        .context("the test client")?;
    for (stream, subject) in [("IN", "in.orders"), ("OUT", "out.orders"), ("DLQ", "dlq.orders")] {
        create_stream(&client, stream, &[subject]).await?;
    }
    let login = format!(
        r#"url = "{}", user = "replayer", password = "${{NATS_PASSWORD}}", tls_ca = "pki/ca.pem", tls_cert = "pki/client.pem", tls_key = "pki/client.key""#,
        server.url()
    );
    let config = format!(
        r#"{runtime}
[pipelines.orders]
source = {{ kind = "jetstream", {login}, stream = "IN", consumer = "sluice" }}
sink = {{ kind = "jetstream", {login}, subject = "out.orders" }}
dead_letter = {{ kind = "jetstream", {login}, subject = "dlq.orders" }}
plugin = {{ path = {plugin} }}
"#,
        runtime = runtime_table(),
        plugin = toml_path(&plugin("chaos")),
    );
    scratch.write("sluice.toml", config)?;
    let mut command = scratch.sluice(&["run", "sluice.toml"]);
    command.env("NATS_PASSWORD", password);
    let host = Running::spawn(command)?;
    let js = async_nats::jetstream::new(client.clone());
    for payload in ["ok:a", "reject:r1", "ok:b"] {
        js.publish("in.orders", payload.into()).await?.await?;
    }
    let deadline = Instant::now() + WITHIN;
    while !(stream_len(&client, "DLQ").await? == 1 && stream_len(&client, "OUT").await? == 2) {
        ensure!(Instant::now() < deadline, "timed out waiting for the outputs and the dead letter");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    host.terminate()?;
    host.wait(WITHIN)?.ensure_success()?;

    let url = format!("nats://replayer:{password}@127.0.0.1:{}", server.port);
    let replay = scratch.run(&[
        "dlq",
        "replay",
        "--from",
        "jetstream:DLQ",
        "--nats-url",
        &url,
        "--nats-tls-ca",
        "pki/ca.pem",
        "--nats-tls-cert",
        "pki/client.pem",
        "--nats-tls-key",
        "pki/client.key",
    ])?;
    replay.ensure_success()?;
    ensure!(replay.stdout.contains("replayed 1 of 1 records"), "{}", replay.stdout);
    let input = read_stream(&client, "IN").await?;
    ensure!(input.len() == 4 && input[3].payload == "reject:r1", "{input:?}");
    // Without the client certificate the server refuses; nothing of the
    // login is printed.
    let refused = scratch.run(&["dlq", "replay", "--from", "jetstream:DLQ", "--nats-url", &url, "--nats-tls-ca", "pki/ca.pem"])?;
    refused.ensure_failure()?;
    ensure!(refused.stderr.contains("cannot connect to NATS at nats://***@127.0.0.1"), "{}", refused.stderr);
    ensure!(!refused.stderr.contains(password) && !refused.stdout.contains(password), "{}", refused.stderr);
    // `--help` does not show the value of `NATS_URL` (clap shows env values
    // by default).
    let mut command = scratch.sluice(&["dlq", "replay", "--help"]);
    command.env("NATS_URL", &url);
    let help = Running::spawn(command)?.wait(WITHIN)?;
    help.ensure_success()?;
    ensure!(help.stdout.contains("[env: NATS_URL]") && !help.stdout.contains(password), "{}", help.stdout);
    Ok(())
}

/// A signed NATS JWT (`ed25519-nkey`): `issuer` signs claims about
/// `subject`, `nats` being the typed part.
fn nats_jwt(issuer: &nkeys::KeyPair, subject: &str, nats: serde_json::Value) -> Result<String> {
    use base64::Engine;
    use sha2::Digest;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let mut claims = serde_json::json!({
        "iat": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs(),
        "iss": issuer.public_key(),
        "name": subject.get(..8).unwrap_or(subject),
        "sub": subject,
        "nats": nats,
    });
    claims["jti"] = hex::encode_upper(sha2::Sha256::digest(claims.to_string().as_bytes())).into();
    let signed = format!("{}.{}", b64(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#), b64(claims.to_string().as_bytes()));
    let signature = issuer.sign(signed.as_bytes())?;
    Ok(format!("{signed}.{}", b64(&signature)))
}

/// Decentralised auth: an operator, an account preloaded into the server,
/// and a user whose JWT and seed are in a `.creds` file; a pipeline logs in
/// with `credentials`, and a user the account did not sign is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_creds_file_logs_in_with_a_user_jwt() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    let operator_jwt = nats_jwt(&operator, &operator.public_key(), serde_json::json!({ "type": "operator", "version": 2 }))?;
    let unlimited = serde_json::json!({ "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": true, "conn": -1, "leaf": -1 });
    let account_jwt =
        nats_jwt(&operator, &account.public_key(), serde_json::json!({ "type": "account", "version": 2, "limits": unlimited }))?;
    let creds = |signer: &nkeys::KeyPair, name: &str| -> Result<PathBuf> {
        let user = nkeys::KeyPair::new_user();
        let claims = serde_json::json!({ "type": "user", "version": 2, "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1, "issuer_account": account.public_key() });
        let jwt = nats_jwt(signer, &user.public_key(), claims)?;
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!("-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n-----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n", user.seed()?),
        )?;
        Ok(path)
    };
    let good = creds(&account, "sluice.creds")?;
    let stranger = creds(&nkeys::KeyPair::new_account(), "stranger.creds")?;
    std::fs::write(dir.path().join("operator.jwt"), &operator_jwt)?;
    let conf = dir.path().join("operator.conf");
    // JetStream (the fixture turns it on) needs a system account.
    let system = nkeys::KeyPair::new_account();
    let system_jwt =
        nats_jwt(&operator, &system.public_key(), serde_json::json!({ "type": "account", "version": 2, "limits": unlimited }))?;
    std::fs::write(
        &conf,
        format!(
            "operator: \"{}\"\nsystem_account: {sys}\nresolver: MEMORY\nresolver_preload: {{\n  {}: \"{account_jwt}\"\n  {sys}: \"{system_jwt}\"\n}}\n",
            dir.path().join("operator.jwt").display(),
            account.public_key(),
            sys = system.public_key(),
        ),
    )?;
    let server = NatsServer::start_with(&["-c".into(), conf.display().to_string()])?;
    let client = async_nats::ConnectOptions::with_credentials_file(good.clone())
        .await?
        .connect(server.url())
        .await
        .context("the test client's creds")?;
    let config = |creds: &Path| {
        let login = format!(r#", credentials = {}"#, toml_path(creds));
        broker_pipeline(
            "creds",
            "uppercase",
            [
                &format!(r#"{{ kind = "nats", url = "{}", subject = "in.c"{login} }}"#, server.url()),
                &format!(r#"{{ kind = "nats", url = "{}", subject = "out.c"{login} }}"#, server.url()),
                r#"{ kind = "file", path = "dlq.jsonl" }"#,
            ],
            "",
            "5s",
        )
    };
    round_trip(&server, &client, &config(&good), &[], "c").await?;
    let log = failing_run(&config(&stranger), &[])?;
    let line = connect_failure(&log, "creds", server.port)?;
    ensure!(line.contains("the server refused the login"), "{line}");
    Ok(())
}
