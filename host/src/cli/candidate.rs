//! `sluice plugin candidate`, `promote` and `abort`: a rollout by hand,
//! through a running host's admin API (`/pipelines/NAME/candidate`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// Where the admin API is and how to reach it.
pub struct Admin {
    /// The admin API's address, e.g. `127.0.0.1:9090`.
    pub admin: String,
    /// `[admin] token` (`SLUICE_ADMIN_TOKEN`): every call here changes
    /// something.
    pub token: Option<String>,
    pub ca_file: Option<PathBuf>,
}

/// How to try the candidate; unset fields are the config's `rollout`.
pub struct Trial {
    pub mode: Option<String>,
    pub sample: Option<f64>,
    pub canary: Option<f64>,
    pub signature: Option<PathBuf>,
}

/// Uploads `plugin` as PIPELINE's candidate and prints what the host says.
pub fn candidate(admin: &Admin, pipeline: &str, plugin: &Path, trial: &Trial) -> Result<ExitCode> {
    let wasm = std::fs::read(plugin).with_context(|| format!("cannot read {}", plugin.display()))?;
    let mut query = vec![format!("sha256={}", sluice::runtime::digest_of(&wasm))];
    if let Some(mode) = &trial.mode {
        query.push(format!("mode={mode}"));
    }
    if let Some(sample) = trial.sample {
        query.push(format!("sample={sample}"));
    }
    if let Some(canary) = trial.canary {
        query.push(format!("canary={canary}"));
    }
    let signature = match &trial.signature {
        Some(path) => Some(std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?),
        None => {
            let beside = PathBuf::from(format!("{}.sig", plugin.display()));
            std::fs::read_to_string(&beside).ok()
        }
    };
    let path = format!("/pipelines/{pipeline}/candidate?{}", query.join("&"));
    let body = call(admin, "POST", &path, Some(wasm), signature.as_deref().map(str::trim))?;
    let candidate = &body["candidate"];
    println!(
        "pipeline {pipeline}: trying {} in {} mode beside the current version",
        candidate["digest"].as_str().unwrap_or("?"),
        candidate["mode"].as_str().unwrap_or("?")
    );
    Ok(ExitCode::SUCCESS)
}

/// Makes PIPELINE's candidate its current version.
pub fn promote(admin: &Admin, pipeline: &str) -> Result<ExitCode> {
    let body = call(admin, "POST", &format!("/pipelines/{pipeline}/candidate/promote"), None, None)?;
    println!("pipeline {pipeline}: {} is current", body["current"]["digest"].as_str().unwrap_or("?"));
    Ok(ExitCode::SUCCESS)
}

/// Stops trying PIPELINE's candidate.
pub fn abort(admin: &Admin, pipeline: &str) -> Result<ExitCode> {
    let body = call(admin, "DELETE", &format!("/pipelines/{pipeline}/candidate"), None, None)?;
    println!("pipeline {pipeline}: candidate {} aborted", body["aborted"]["digest"].as_str().unwrap_or("?"));
    Ok(ExitCode::SUCCESS)
}

fn call(admin: &Admin, method: &str, path: &str, body: Option<Vec<u8>>, signature: Option<&str>) -> Result<Value> {
    let base = if admin.admin.contains("://") { admin.admin.clone() } else { format!("http://{}", admin.admin) };
    let agent = super::status::agent(admin.ca_file.as_deref(), Some(std::time::Duration::from_secs(120)))?;
    let url = format!("{base}{path}");
    let token = admin.token.as_deref().context("set SLUICE_ADMIN_TOKEN to the host's `admin.token`: this changes what it runs")?;
    let auth = format!("Bearer {token}");
    let answer = match (method, body) {
        ("DELETE", _) => agent.delete(&url).header("Authorization", &auth).config().http_status_as_error(false).build().call(),
        (_, Some(bytes)) => {
            let mut request = agent.post(&url).header("Authorization", &auth).config().http_status_as_error(false).build();
            if let Some(signature) = signature {
                request = request.header("Sluice-Signature", signature);
            }
            request.send(&bytes[..])
        }
        (_, None) => agent.post(&url).header("Authorization", &auth).config().http_status_as_error(false).build().send_empty(),
    };
    let mut response = answer.with_context(|| format!("cannot reach the admin API at {url}"))?;
    let status = response.status();
    let body: Value = response.body_mut().read_json().unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("{method} {url}: {status}: {}", body["error"].as_str().unwrap_or("(no error message)"));
    }
    Ok(body)
}
