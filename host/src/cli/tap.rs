//! `sluice tap`: a running pipeline's live events on the terminal, from its
//! admin API's tap (`GET /pipelines/{name}/tap`, server-sent events), until
//! interrupted or the pipeline stops.

use std::io::{BufRead, BufReader, Write};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use serde_json::Value;

/// How each event is printed.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum TapFormat {
    /// One JSON object per line (what the admin API sends).
    Json,
    /// One readable line per event: time, point, event id, then the payload.
    Pretty,
}

pub struct Options {
    pub admin: String,
    pub pipeline: String,
    pub inputs: bool,
    pub outputs: bool,
    pub dead_letters: bool,
    pub sample: Option<u64>,
    pub rate: Option<f64>,
    pub format: TapFormat,
    pub token: Option<String>,
    pub ca_file: Option<std::path::PathBuf>,
}

pub fn tap(options: &Options) -> Result<ExitCode> {
    let base = if options.admin.contains("://") { options.admin.clone() } else { format!("http://{}", options.admin) };
    // No overall timeout: the stream lasts as long as the tap (the server
    // sends a keep-alive comment every 15 s and ends it when the pipeline
    // or the host stops).
    let agent = super::status::agent(options.ca_file.as_deref(), None)?;
    let url = format!("{base}/pipelines/{}/tap", options.pipeline);
    let mut request = agent.get(&url).header("Accept", "text/event-stream");
    for (flag, name) in [(options.inputs, "inputs"), (options.outputs, "outputs"), (options.dead_letters, "dead_letters")] {
        if flag {
            request = request.query(name, "true");
        }
    }
    if let Some(sample) = options.sample {
        request = request.query("sample", sample.to_string());
    }
    if let Some(rate) = options.rate {
        request = request.query("rate", rate.to_string());
    }
    if let Some(token) = &options.token {
        request = request.header("Authorization", format!("Bearer {token}"));
    }
    let response = match request.config().http_status_as_error(false).build().call() {
        Ok(response) => response,
        Err(err) => {
            return Err(err).with_context(|| {
                format!(
                "cannot reach the admin API at {base}; is `sluice run` running with an [admin] section, and is this its `listen` address?"
            )
            })
        }
    };
    let status = response.status().as_u16();
    if status != 200 {
        let mut body = response.into_body();
        let text = body.read_to_string().unwrap_or_default();
        match status {
            401 => bail!("{url} requires a token: set SLUICE_ADMIN_READ_TOKEN to the host's `admin.read_token` (or `admin.token`)"),
            _ => bail!("{url} answered {status}: {}", text.trim()),
        }
    }
    eprintln!("tapping `{}` at {base} (Ctrl-C to stop)", options.pipeline);
    let reader = BufReader::new(response.into_body().into_reader());
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut kind = String::new();
    let mut data = String::new();
    for line in reader.lines() {
        let line = line.context("the tap's stream broke (the host went away?)")?;
        if let Some(value) = line.strip_prefix("event:") {
            kind = value.trim().to_owned();
        } else if let Some(value) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(value.strip_prefix(' ').unwrap_or(value));
        } else if line.is_empty() && !data.is_empty() {
            let event = std::mem::take(&mut data);
            match kind.as_str() {
                "dropped" => {
                    let missed = serde_json::from_str::<Value>(&event).ok().and_then(|v| v["dropped"].as_u64()).unwrap_or(0);
                    eprintln!("… {missed} event(s) not shown: this tap read too slowly (use --sample or --rate)");
                }
                "end" => {
                    let reason =
                        serde_json::from_str::<Value>(&event).ok().and_then(|v| v["reason"].as_str().map(str::to_owned)).unwrap_or(event);
                    eprintln!("tap ended: {reason}");
                    return Ok(ExitCode::SUCCESS);
                }
                _ => {
                    let line = match options.format {
                        TapFormat::Json => event,
                        TapFormat::Pretty => pretty(&event),
                    };
                    // A closed stdout (`| head`) ends the tap quietly.
                    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                        return Ok(ExitCode::SUCCESS);
                    }
                }
            }
            kind.clear();
        }
    }
    eprintln!("tap ended: the host closed the stream");
    Ok(ExitCode::SUCCESS)
}

/// `12:00:01.123 output  orders.jsonl:4 → enriched (v 1a2b3c4d5e6f) {"id":…}`
fn pretty(json: &str) -> String {
    let Ok(seen) = serde_json::from_str::<Value>(json) else {
        return json.to_owned();
    };
    let time = seen["at"].as_str().and_then(|at| at.get(11..23)).unwrap_or("");
    let point = seen["point"].as_str().unwrap_or("?");
    let mut line = format!("{time} {point:<11} {}", seen["event"].as_str().unwrap_or("?"));
    if seen["reply"].as_bool() == Some(true) {
        line.push_str(" → reply");
    } else if let Some(destination) = seen["destination"].as_str() {
        line.push_str(&format!(" → {destination}"));
    }
    if let Some(version) = seen["version"].as_str() {
        line.push_str(&format!(" (v {version})"));
    }
    if let Some(reason) = seen["reason"].as_str() {
        line.push_str(&format!(" [{reason} after {} attempt(s): {}]", seen["attempts"], seen["message"].as_str().unwrap_or("")));
    }
    let payload = &seen["payload"];
    let body =
        payload["text"].as_str().map(str::to_owned).or_else(|| payload["hex"].as_str().map(|hex| format!("0x{hex}"))).unwrap_or_default();
    line.push(' ');
    line.push_str(&body.replace('\n', "\\n"));
    if payload["truncated"].as_bool() == Some(true) {
        line.push_str(&format!("… ({} bytes)", payload["bytes"]));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::pretty;

    #[test]
    fn a_pretty_line_reads_left_to_right() {
        let dead = r#"{"point":"dead-letter","at":"2026-12-06T10:01:02.345Z","event":"f:3","version":"1a2b","reason":"rejected","message":"no user","attempts":1,"headers":[],"payload":{"text":"{}","bytes":2}}"#;
        assert_eq!(pretty(dead), "10:01:02.345 dead-letter f:3 (v 1a2b) [rejected after 1 attempt(s): no user] {}");
        let out = r#"{"point":"output","at":"2026-12-06T10:01:02.345Z","event":"f:3","destination":"d","headers":[],"payload":{"hex":"ff00","bytes":2000,"truncated":true}}"#;
        assert_eq!(pretty(out), "10:01:02.345 output      f:3 → d 0xff00… (2000 bytes)");
    }
}
