//! The web console (`GET /ui`): served from the binary by the admin
//! server, with the right content types and security headers, needing no
//! token itself while the data behind it still does, and referring only to
//! its own origin. (The page itself is driven in a real browser by
//! `scripts/browser.sh test`.)

#[allow(dead_code)]
mod common;

use std::time::Duration;

use anyhow::{ensure, Context, Result};

use common::*;

const WITHIN: Duration = Duration::from_secs(60);

/// Response headers: names lower-cased, values trimmed.
type Headers = Vec<(String, String)>;

/// One request; the status, the response headers and the body.
fn get(port: u16, path: &str) -> Result<(u16, Headers, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).context("connecting to the admin API")?;
    stream.set_read_timeout(Some(WITHIN))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8(response).context("the answer is UTF-8")?;
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP header end")?;
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).context("no status")?;
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    Ok((status, headers, body.to_owned()))
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

/// The quoted strings of a script or page that look like addresses: those
/// starting with `/`, a scheme, or `//`.
fn addresses(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for quote in ['"', '\'', '`'] {
        for (i, piece) in text.split(quote).enumerate() {
            let looks_like_address = piece.starts_with('/') || piece.contains("://") || piece.starts_with("//");
            // Odd pieces are inside quotes; skip regex literals and comments.
            if i % 2 == 1 && looks_like_address && !piece.contains('\n') && piece.len() < 200 {
                found.push(piece.to_owned());
            }
        }
    }
    found
}

#[test]
fn the_console_is_served_from_the_binary_with_its_headers_and_needs_no_token() -> Result<()> {
    let scratch = Scratch::new()?;
    scratch.write("events.jsonl", "")?;
    let config = format!(
        r#"{runtime}
[admin]
listen = "{ANY_PORT}"
token = "write-secret"
read_token = "read-secret"

[pipelines.orders]
source = {{ kind = "file", path = "events.jsonl", follow = true }}
sink = {{ kind = "file", path = "out.jsonl" }}
dead_letter = {{ kind = "file", path = "dlq.jsonl" }}
plugin = {{ path = {plugin} }}
"#,
        runtime = runtime_table(),
        plugin = toml_path(&plugin("passthrough")),
    );
    scratch.write("sluice.toml", config)?;
    let mut host = Running::spawn(scratch.sluice(&["run", "sluice.toml"]))?;
    let port = host.admin_port()?;
    host.wait_until("the admin API", WITHIN, || get(port, "/healthz").is_ok_and(|(status, _, _)| status == 200))?;

    let (status, headers, page) = get(port, "/ui")?;
    ensure!(status == 200, "GET /ui answered {status}: {page}");
    for (path, content_type, body) in [
        ("/ui", "text/html", page.clone()),
        ("/ui/app.js", "text/javascript", String::new()),
        ("/ui/dead-letters.js", "text/javascript", String::new()),
        ("/ui/app.css", "text/css", String::new()),
        ("/ui/icon.svg", "image/svg+xml", String::new()),
    ] {
        let (status, headers, served) = if body.is_empty() { get(port, path)? } else { (status, headers.clone(), body) };
        ensure!(status == 200, "GET {path} without a token answered {status}");
        let served_type = header(&headers, "content-type").unwrap_or_default();
        ensure!(served_type.starts_with(content_type) && served_type.contains("utf-8"), "{path} is served as {served_type:?}");
        let csp = header(&headers, "content-security-policy").unwrap_or_default();
        ensure!(csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"), "{path}: CSP {csp:?}");
        ensure!(header(&headers, "x-content-type-options") == Some("nosniff"), "{path}: {headers:?}");
        ensure!(!served.is_empty(), "{path} is empty");
    }
    // The page holds no data; the data behind it still needs the token.
    let (status, _, _) = get(port, "/pipelines")?;
    ensure!(status == 401, "GET /pipelines without a token answered {status}");
    host.wait_until("the pipeline listed with the read token", WITHIN, || {
        http_request(port, "GET", "/pipelines", Some("read-secret"), b"")
            .is_ok_and(|(status, body)| status == 200 && body.contains("\"orders\""))
    })?;

    // Same origin only: the page loads its script and style from /ui/, the
    // script asks only paths of this host, and nothing runs or styles inline
    // (the CSP would refuse it).
    let (_, _, script) = get(port, "/ui/app.js")?;
    let (_, _, dead_letters) = get(port, "/ui/dead-letters.js")?;
    let (_, _, style) = get(port, "/ui/app.css")?;
    ensure!(page.contains(r#"<script type="module" src="/ui/app.js"></script>"#) && page.contains(r#"href="/ui/app.css""#), "{page}");
    ensure!(!page.contains("style=") && page.matches("<script").count() == 1, "inline script or style in the page");
    ensure!(
        addresses(&script).iter().any(|a| a == "/pipelines") && addresses(&page).iter().any(|a| a == "/ui/app.js"),
        "the scan finds addresses"
    );
    for address in addresses(&page).into_iter().chain(addresses(&script)).chain(addresses(&dead_letters)) {
        let same_origin = address.starts_with('/') && !address.starts_with("//");
        // The SVG namespace is a name, not something fetched.
        ensure!(same_origin || address == "http://www.w3.org/2000/svg", "the console refers to {address:?}, not a path of this host");
    }
    ensure!(!style.contains("url(") && !style.contains("@import"), "the style sheet fetches nothing");
    // app.js imports its one module from this host; that module imports nothing.
    let imports: Vec<&str> = script.lines().filter(|line| line.trim_start().starts_with("import")).collect();
    ensure!(imports == [r#"import { setupDeadLetters } from "/ui/dead-letters.js";"#], "the script's imports: {imports:?}");
    let module_imports = dead_letters.lines().any(|line| line.trim_start().starts_with("import")) || dead_letters.contains("import(");
    ensure!(!script.contains("import(") && !module_imports, "no other module is loaded");
    ensure!(!script.contains("new EventSource"), "the script taps with fetch (to send the token)");
    for path in
        ["`/pipelines/${encodeURIComponent(name)}/dead-letters?${params}`", "`/pipelines/${encodeURIComponent(name)}/dead-letters/replay`"]
    {
        ensure!(dead_letters.contains(path), "the dead-letters module reads {path}");
    }
    for path in ["\"/pipelines\"", "`/pipelines/${encodeURIComponent(name)}/tap?${params}`", "\"/metrics\""] {
        ensure!(script.contains(path), "the script reads {path}");
    }
    // The admin address alone opens it.
    for path in ["/", "/ui/"] {
        let (status, headers, _) = get(port, path)?;
        ensure!(status == 308 && header(&headers, "location") == Some("/ui"), "GET {path}: {status} {headers:?}");
    }
    // What it does not serve.
    let (status, _, _) = get(port, "/ui/other.js")?;
    ensure!(status == 404, "GET /ui/other.js answered {status}");

    host.terminate()?;
    host.wait(WITHIN)?.ensure_success()?;
    Ok(())
}
