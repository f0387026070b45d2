//! Running sluice as a service: the OCI image built from scratch by
//! `scripts/image.sh`, the systemd install by `scripts/install.sh`, and the
//! `Type=notify` protocol the unit relies on.
//!
//! Containers cannot run on this machine (`podman run` fails on a crun
//! setrlimit error), so the image test does the next best thing: it mounts
//! the built image's root filesystem and runs a pipeline in it with
//! `chroot` as the image's user. Nothing from the machine is visible there,
//! so the image's libraries, user and directories are all it has.

#[allow(dead_code)]
mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use common::*;

/// Runs a command to completion; fails with its output when it fails.
fn output(command: &mut Command) -> Result<String> {
    let out = command.output().with_context(|| format!("starting {command:?}"))?;
    if !out.status.success() {
        bail!("{command:?} failed ({}):\n{}{}", out.status, String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn buildah(args: &[&str]) -> Result<String> {
    output(Command::new("buildah").args(args).env("STORAGE_DRIVER", "vfs"))
}

/// A working container of an image, mounted; removed on drop.
struct Mounted {
    container: String,
    root: PathBuf,
}

impl Mounted {
    fn new(image: &str) -> Result<Self> {
        let container = buildah(&["from", "--pull-never", image])?;
        let root = PathBuf::from(buildah(&["mount", &container])?);
        Ok(Self { container, root })
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = buildah(&["umount", &self.container]);
        let _ = buildah(&["rm", &self.container]);
    }
}

/// Every path in a tree, relative, sorted.
fn listing(root: &Path) -> Result<Vec<String>> {
    let mut paths = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() && !path.is_symlink() {
                stack.push(path.clone());
            }
            paths.push(format!("/{}", path.strip_prefix(root)?.display()));
        }
    }
    paths.sort();
    Ok(paths)
}

#[test]
fn the_image_is_from_scratch_runs_as_a_user_and_runs_a_pipeline() -> Result<()> {
    let tag = format!("localhost/sluice-test:{}", std::process::id());
    let built =
        output(Command::new("bash").arg(root().join("scripts/image.sh")).args(["--strip", "--tag", &tag, "--binary"]).arg(sluice_bin()))?;
    ensure!(built.ends_with(&tag), "image.sh printed {built:?}, not the tag");
    let result = check_image(&tag);
    let _ = buildah(&["rmi", "--force", &tag]);
    result
}

fn check_image(tag: &str) -> Result<()> {
    let config = buildah(&[
        "inspect",
        "--format",
        "{{.OCIv1.Config.User}}|{{.OCIv1.Config.Entrypoint}}|{{.OCIv1.Config.Cmd}}|{{.OCIv1.Config.ExposedPorts}}|{{.OCIv1.Config.WorkingDir}}",
        tag,
    ])?;
    assert_eq!(config, "65532:65532|[/usr/local/bin/sluice]|[run /etc/sluice/sluice.toml]|map[9090/tcp:{}]|/var/lib/sluice");

    let image = Mounted::new(tag)?;
    let files = listing(&image.root)?;
    // From scratch: the binary, the loader and libraries it links, CA roots,
    // the user's passwd/group entries, and empty directories. No shell.
    let allowed = |path: &str| {
        path.starts_with("/lib")
            || path.starts_with("/usr/lib")
            || [
                "/etc",
                "/etc/group",
                "/etc/passwd",
                "/etc/nsswitch.conf",
                "/etc/sluice",
                "/etc/ssl",
                "/etc/ssl/certs",
                "/etc/ssl/certs/ca-certificates.crt",
                "/tmp",
                "/usr",
                "/usr/local",
                "/usr/local/bin",
                "/usr/local/bin/sluice",
                "/var",
                "/var/lib",
                "/var/lib/sluice",
            ]
            .contains(&path)
    };
    let unexpected: Vec<_> = files.iter().filter(|path| !allowed(path)).collect();
    ensure!(unexpected.is_empty(), "files that a from-scratch image should not hold: {unexpected:?}");
    ensure!(files.iter().any(|p| p.contains("libc.so")), "no libc in the image: {files:?}");
    let passwd = std::fs::read_to_string(image.root.join("etc/passwd"))?;
    ensure!(passwd.contains("sluice:x:65532:65532:"), "{passwd}");
    let work = std::fs::metadata(image.root.join("var/lib/sluice"))?;
    ensure!(std::os::unix::fs::MetadataExt::uid(&work) == 65532, "/var/lib/sluice is not the user's");

    // A pipeline inside the image, as its user: events in, uppercased out.
    let etc = image.root.join("etc/sluice");
    std::fs::copy(plugin("uppercase"), etc.join("uppercase.wasm"))?;
    std::fs::write(
        etc.join("sluice.toml"),
        r#"[pipelines.shout]
source = { kind = "file", path = "/etc/sluice/events.jsonl" }
sink = { kind = "file", path = "/var/lib/sluice/out.jsonl" }
dead_letter = { kind = "file", path = "/var/lib/sluice/dlq.jsonl" }
[pipelines.shout.plugin]
path = "uppercase.wasm"
"#,
    )?;
    let events: String = (0..50).map(|i| format!("{}\n", event(&format!("order {i}")))).collect();
    std::fs::write(etc.join("events.jsonl"), events)?;
    let run = Command::new("/usr/sbin/chroot")
        .args(["--userspec=65532:65532"])
        .arg(&image.root)
        .args(["/usr/local/bin/sluice", "run", "/etc/sluice/sluice.toml"])
        .env_clear()
        .current_dir("/")
        .output()?;
    ensure!(run.status.success(), "sluice in the image failed ({}): {}", run.status, String::from_utf8_lossy(&run.stderr));
    let out = read_jsonl(&image.root.join("var/lib/sluice/out.jsonl"))?;
    let expected: Vec<String> = (0..50).map(|i| format!("ORDER {i}")).collect();
    assert_eq!(payloads(&out), expected);
    Ok(())
}

#[test]
fn install_stages_the_binary_unit_config_and_directories() -> Result<()> {
    let scratch = Scratch::new()?;
    let dest = scratch.path("dest");
    output(
        Command::new("bash")
            .arg(root().join("scripts/install.sh"))
            .arg("--binary")
            .arg(sluice_bin())
            .arg("--destdir")
            .arg(&dest)
            .arg("--no-user"),
    )?;
    let mode = |path: &str| -> Result<u32> { Ok(std::fs::metadata(dest.join(path))?.permissions().mode() & 0o7777) };
    assert_eq!(mode("usr/local/bin/sluice")?, 0o755);
    assert_eq!(mode("etc/sluice")?, 0o750);
    assert_eq!(mode("etc/sluice/sluice.toml")?, 0o640);
    assert_eq!(mode("var/lib/sluice")?, 0o750);
    ensure!(dest.join("usr/local/share/doc/sluice/operations.md").is_file());
    let unit = std::fs::read_to_string(dest.join("etc/systemd/system/sluice.service"))?;
    for line in [
        "Type=notify",
        "ExecStart=/usr/local/bin/sluice run /etc/sluice/sluice.toml",
        "User=sluice",
        "WatchdogSec=",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
    ] {
        ensure!(unit.lines().any(|l| l.starts_with(line)), "the unit has no `{line}` line");
    }

    // The installed config is valid once its plugin and token are in place.
    let etc = dest.join("etc/sluice");
    std::fs::create_dir_all(etc.join("plugins"))?;
    std::fs::copy(plugin("json_enricher"), etc.join("plugins/json_enricher.wasm"))?;
    let config = etc.join("sluice.toml");
    // The compiled-plugin cache goes to the scratch folder, not the machine's /var/lib.
    let text = std::fs::read_to_string(&config)?;
    ensure!(text.contains("cache_dir = \"/var/lib/sluice/cache\""), "the example config changed: {text}");
    std::fs::write(&config, text.replace("/var/lib/sluice/cache", &scratch.path("cache").display().to_string()))?;
    let check = |token: Option<&str>| -> Result<std::process::Output> {
        let mut command = Command::new(dest.join("usr/local/bin/sluice"));
        command.arg("check").arg(&config).env_remove("SLUICE_ADMIN_TOKEN");
        if let Some(token) = token {
            command.env("SLUICE_ADMIN_TOKEN", token);
        }
        Ok(command.output()?)
    };
    let missing = check(None)?;
    ensure!(!missing.status.success(), "check passed without the admin token");
    let stderr = String::from_utf8_lossy(&missing.stderr);
    ensure!(stderr.contains("SLUICE_ADMIN_TOKEN"), "the error does not name the variable: {stderr}");
    let fine = check(Some("s3cret-token-value"))?;
    ensure!(fine.status.success(), "check failed: {}", String::from_utf8_lossy(&fine.stderr));
    let printed = format!("{}{}", String::from_utf8_lossy(&fine.stdout), String::from_utf8_lossy(&fine.stderr));
    ensure!(!printed.contains("s3cret"), "check printed the token: {printed}");
    Ok(())
}

/// Every datagram received on a notify socket, collected by a thread that
/// reads all the time (the socket's queue holds only
/// `net.unix.max_dgram_qlen` datagrams, 10 by default: a reader that
/// pauses would make the sender wait).
struct Notifications {
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Notifications {
    fn listen(socket: UnixDatagram) -> Result<Self> {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = seen.clone();
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Ends when the test (holding the other Arc) is gone.
            while std::sync::Arc::strong_count(&sink) > 1 {
                if let Ok(n) = socket.recv(&mut buf) {
                    if let Ok(mut seen) = sink.lock() {
                        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                    }
                }
            }
        });
        Ok(Self { seen })
    }

    fn snapshot(&self) -> Vec<String> {
        self.seen.lock().map(|seen| seen.clone()).unwrap_or_default()
    }

    /// Waits until `until` holds for what arrived so far.
    fn wait(&self, within: Duration, until: impl Fn(&[String]) -> bool) -> Result<Vec<String>> {
        let deadline = Instant::now() + within;
        loop {
            let seen = self.snapshot();
            if until(&seen) {
                return Ok(seen);
            }
            ensure!(Instant::now() < deadline, "notifications so far: {seen:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn has(messages: &[String], line: &str) -> bool {
    messages.iter().any(|m| m.lines().any(|l| l == line))
}

#[test]
fn tells_systemd_ready_reloading_stopping_and_pings_the_watchdog() -> Result<()> {
    let scratch = Scratch::new()?;
    scratch.write_events("events.jsonl", &[event("a")])?;
    let config = format!(
        r#"{runtime}
[pipelines.tail]
source = {{ kind = "file", path = "events.jsonl", follow = true }}
sink = {{ kind = "file", path = "out.jsonl" }}
dead_letter = {{ kind = "file", path = "dlq.jsonl" }}
[pipelines.tail.plugin]
path = {plugin}
"#,
        runtime = runtime_table(),
        plugin = toml_path(&plugin("uppercase")),
    );
    scratch.write("sluice.toml", &config)?;
    let socket_path = scratch.path("notify.sock");
    let notifications = Notifications::listen(UnixDatagram::bind(&socket_path)?)?;
    // systemd sets WATCHDOG_PID to the service's pid: `exec` keeps the shell's.
    let mut command = Command::new("sh");
    command
        .args(["-c", "WATCHDOG_PID=$$ exec \"$0\" run sluice.toml"])
        .arg(sluice_bin())
        .current_dir(scratch.dir())
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "200000");
    let mut running = Running::spawn(command)?;

    let seen = notifications.wait(RUN_TIMEOUT, |seen| has(seen, "READY=1"))?;
    let first = seen.iter().find(|m| m.contains("READY=1")).cloned().unwrap_or_default();
    ensure!(first.contains("STATUS=1 pipelines started"), "{first}");
    // The pipeline is running by then: its first event comes out.
    running.wait_until("the first output", RUN_TIMEOUT, || scratch.count_lines("out.jsonl") == 1)?;

    let pings = |seen: &[String]| seen.iter().filter(|m| m.lines().any(|l| l == "WATCHDOG=1")).count();
    let before = pings(&notifications.snapshot());
    notifications.wait(Duration::from_secs(10), |seen| pings(seen) >= before + 2)?;

    let mark = notifications.snapshot().len();
    let hup = Command::new("kill").args(["-HUP", &running.pid().to_string()]).status()?;
    ensure!(hup.success());
    let seen = notifications.wait(RUN_TIMEOUT, |seen| {
        let after = &seen[mark.min(seen.len())..];
        let reloading = after.iter().position(|m| m.lines().any(|l| l == "RELOADING=1"));
        let ready = after.iter().rposition(|m| m.lines().any(|l| l == "READY=1"));
        matches!((reloading, ready), (Some(r), Some(d)) if d > r)
    })?;
    ensure!(
        seen[mark..].iter().any(|m| m.lines().any(|l| l.starts_with("MONOTONIC_USEC="))),
        "RELOADING=1 without MONOTONIC_USEC: {seen:?}"
    );

    running.terminate()?;
    if let Err(err) = notifications.wait(RUN_TIMEOUT, |seen| has(&seen[mark.min(seen.len())..], "STOPPING=1")) {
        let host = match running.wait(Duration::from_millis(200)) {
            Ok(finished) => format!("exited {:?}: {}", finished.code(), finished.stderr),
            Err(still) => format!("{still}"),
        };
        bail!("{err}\nthe host: {host}");
    }
    running.wait(RUN_TIMEOUT)?.ensure_success()?;
    Ok(())
}
