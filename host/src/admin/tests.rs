//! The admin server's limits, against a real server on `127.0.0.1:0` and
//! raw HTTP/1.1 (so a test controls exactly what is sent, and when).

use std::sync::atomic::Ordering as AtomicOrdering;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;

const TOKEN: &str = "write-token";
const READ_TOKEN: &str = "read-token";

fn limits() -> Limits {
    Limits {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        token: Some(TOKEN.into()),
        read_token: Some(READ_TOKEN.into()),
        max_upload: 1024,
        max_connections: 64,
        header_timeout: Duration::from_millis(300),
        body_timeout: Duration::from_secs(5),
        tls: None,
    }
}

struct Server {
    addr: SocketAddr,
    counters: Arc<AdminCounters>,
    stop: CancellationToken,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn start(limits: Limits) -> std::io::Result<Server> {
    let counters = Arc::new(AdminCounters::default());
    let stop = CancellationToken::new();
    let registry: Registry = Arc::default();
    let addr = serve_counting(limits, registry, Health::default(), counters.clone(), stop.clone()).await?;
    Ok(Server { addr, counters, stop })
}

/// Sends `head` (request line and headers, without the blank line) and
/// `body`, and returns the response, read until the server closes
/// (connections serve one request), within 5 s.
async fn exchange(addr: SocketAddr, head: &str, body: &[u8]) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(format!("{head}\r\nHost: test\r\n\r\n").as_bytes()).await?;
    stream.write_all(body).await?;
    let mut response = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response)).await;
    match read {
        Ok(Ok(_)) => Ok(String::from_utf8_lossy(&response).into_owned()),
        // A reset after the answer (the server closing with the rest of
        // the body unread) still leaves the answer read.
        Ok(Err(_)) if !response.is_empty() => Ok(String::from_utf8_lossy(&response).into_owned()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer within 5 s")),
    }
}

fn status(response: &str) -> &str {
    response.split(' ').nth(1).unwrap_or("")
}

#[tokio::test]
async fn an_upload_without_a_token_is_refused_before_its_body_is_read() -> std::io::Result<()> {
    let server = start(limits()).await?;
    let started = Instant::now();
    // 250 MB declared, a few bytes sent: the answer cannot wait for the rest.
    let head = "PUT /pipelines/orders/plugin HTTP/1.1\r\nContent-Length: 250000000";
    let response = exchange(server.addr, head, b"\0asm").await?;
    assert_eq!(status(&response), "401", "{response}");
    assert!(started.elapsed() < Duration::from_secs(2), "answered after {:?}", started.elapsed());
    // A wrong token is refused the same way.
    let head = format!("PUT /pipelines/orders/plugin HTTP/1.1\r\nAuthorization: Bearer {TOKEN}x\r\nContent-Length: 250000000");
    assert_eq!(status(&exchange(server.addr, &head, b"\0asm").await?), "401");
    // The read token does not allow changes.
    let head = format!("POST /pipelines/orders/pause HTTP/1.1\r\nAuthorization: Bearer {READ_TOKEN}");
    assert_eq!(status(&exchange(server.addr, &head, b"").await?), "401");
    assert_eq!(server.counters.auth_failures.load(AtomicOrdering::Relaxed), 3);
    Ok(())
}

#[tokio::test]
async fn bodies_over_the_route_limit_are_refused_with_413() -> std::io::Result<()> {
    let server = start(limits()).await?;
    let auth = format!("Authorization: Bearer {TOKEN}");
    let head = format!("PUT /pipelines/orders/plugin HTTP/1.1\r\n{auth}\r\nContent-Length: 2048");
    let response = exchange(server.addr, &head, b"").await?;
    assert_eq!(status(&response), "413", "{response}");
    assert!(response.contains("over `admin.max_upload` (1024 bytes)"), "{response}");
    // Routes that take no body refuse one over 64 KiB.
    let head = format!("POST /pipelines/orders/pause HTTP/1.1\r\n{auth}\r\nContent-Length: 100000");
    assert_eq!(status(&exchange(server.addr, &head, b"").await?), "413");
    // Within the limit, the request reaches its handler (no such pipeline).
    let head = format!("PUT /pipelines/orders/plugin HTTP/1.1\r\n{auth}\r\nContent-Length: 4");
    assert_eq!(status(&exchange(server.addr, &head, b"\0asm").await?), "404");
    Ok(())
}

#[tokio::test]
async fn the_bearer_scheme_is_matched_without_regard_to_case() -> std::io::Result<()> {
    let server = start(limits()).await?;
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let head = format!("POST /pipelines/orders/pause HTTP/1.1\r\nAuthorization: {scheme} {TOKEN}");
        // Authorized: the pipeline is looked up (and is not there).
        assert_eq!(status(&exchange(server.addr, &head, b"").await?), "404", "{scheme}");
    }
    let head = format!("POST /pipelines/orders/pause HTTP/1.1\r\nAuthorization: Basic {TOKEN}");
    assert_eq!(status(&exchange(server.addr, &head, b"").await?), "401");
    Ok(())
}

#[tokio::test]
async fn the_read_token_opens_reads_and_failures_are_counted_in_metrics() -> std::io::Result<()> {
    let server = start(limits()).await?;
    assert_eq!(status(&exchange(server.addr, "GET /pipelines HTTP/1.1", b"").await?), "401");
    assert_eq!(status(&exchange(server.addr, "GET /metrics HTTP/1.1", b"").await?), "401");
    for token in [READ_TOKEN, TOKEN] {
        let head = format!("GET /pipelines HTTP/1.1\r\nAuthorization: Bearer {token}");
        assert_eq!(status(&exchange(server.addr, &head, b"").await?), "200");
    }
    // Probes need no token.
    assert_eq!(status(&exchange(server.addr, "GET /healthz HTTP/1.1", b"").await?), "200");
    let head = format!("GET /metrics HTTP/1.1\r\nAuthorization: Bearer {READ_TOKEN}");
    let metrics = exchange(server.addr, &head, b"").await?;
    assert!(metrics.contains("sluice_admin_auth_failures_total 2"), "{metrics}");
    Ok(())
}

#[tokio::test]
async fn without_a_read_token_reads_stay_open() -> std::io::Result<()> {
    let server = start(Limits { read_token: None, ..limits() }).await?;
    assert_eq!(status(&exchange(server.addr, "GET /pipelines HTTP/1.1", b"").await?), "200");
    assert_eq!(status(&exchange(server.addr, "POST /pipelines/x/pause HTTP/1.1", b"").await?), "401");
    Ok(())
}

/// Reads from `stream` until the server closes it; `None` if it is still
/// open after `wait`.
async fn closed_within(stream: &mut TcpStream, wait: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(wait.saturating_sub(started.elapsed()), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

#[tokio::test]
async fn slow_headers_are_cut_off_and_connections_are_capped() -> std::io::Result<()> {
    let server = start(Limits { max_connections: 2, ..limits() }).await?;
    // Two connections that never finish their headers hold both slots...
    let mut idle = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(server.addr).await?;
        stream.write_all(b"GET /healthz HTTP/1.1\r\n").await?;
        idle.push(stream);
    }
    // ...so a third is closed at once, without an answer. No wait needed
    // (nor wanted: a long one lets the header timeout free the slots): the
    // server accepts in connection order, and takes a slot for each of the
    // first two before it accepts the third.
    let mut third = TcpStream::connect(server.addr).await?;
    assert!(closed_within(&mut third, Duration::from_secs(2)).await.is_some(), "a connection over the cap stayed open");
    assert_eq!(server.counters.connections_refused.load(AtomicOrdering::Relaxed), 1);
    // The header timeout (300 ms here) closes the idle ones.
    for stream in &mut idle {
        let closed = closed_within(stream, Duration::from_secs(3)).await;
        assert!(closed.is_some(), "a connection that never sent its headers stayed open");
    }
    // And the slots are free again.
    assert_eq!(status(&exchange(server.addr, "GET /healthz HTTP/1.1", b"").await?), "200");
    Ok(())
}

#[test]
fn tokens_compare_as_digests() {
    assert!(digests_equal(&sha256(b"secret"), &sha256(b"secret")));
    assert!(!digests_equal(&sha256(b"secret"), &sha256(b"secreT")));
    assert!(!digests_equal(&sha256(b"secret"), &sha256(b"secret-longer")));
    assert!(!digests_equal(&sha256(b""), &sha256(b"x")));
}

/// With `tls_cert`/`tls_key`: a client that opens a connection and never
/// starts the handshake is closed at the header timeout (300 ms here), and
/// plain HTTP gets no HTTP answer. The certificate is made by `openssl`.
#[tokio::test]
async fn over_tls_a_stalled_handshake_is_cut_off_and_plain_http_gets_no_answer() -> std::io::Result<()> {
    let dir = tempfile::tempdir()?;
    let made = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-keyout", "key.pem", "-out", "cert.pem", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"])
        .current_dir(dir.path())
        .output()?;
    if !made.status.success() {
        return Err(std::io::Error::other(String::from_utf8_lossy(&made.stderr).into_owned()));
    }
    let tls = Some((dir.path().join("cert.pem"), dir.path().join("key.pem")));
    let server = start(Limits { tls, max_connections: 1, ..limits() }).await?;
    let mut stalled = TcpStream::connect(server.addr).await?;
    let closed = closed_within(&mut stalled, Duration::from_secs(3)).await;
    assert!(closed.is_some(), "a connection that never started the TLS handshake stayed open");
    // Its slot (the only one) is free again; plain HTTP is closed unanswered.
    let answer = exchange(server.addr, "GET /healthz HTTP/1.1", b"").await.unwrap_or_default();
    assert!(!answer.starts_with("HTTP/"), "plain HTTP was answered: {answer}");
    assert_eq!(server.counters.connections_refused.load(AtomicOrdering::Relaxed), 0);
    // A key that does not exist is named with its key.
    let missing = start(Limits { tls: Some((dir.path().join("cert.pem"), dir.path().join("nope.pem"))), ..limits() }).await;
    let message = missing.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(message.starts_with("admin.tls_key: ") && message.contains("nope.pem"), "{message}");
    Ok(())
}
