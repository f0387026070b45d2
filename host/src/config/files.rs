//! Files and subjects shared between pipelines in ways that cannot work,
//! judged on canonical paths (an absolute path, `..` or a symlink spell
//! the same file differently):
//!
//! - rules of the config alone ([`rules`], checked by every load): a
//!   pipeline writing into the file it reads, a checkpoint that is a
//!   source or sink file or another pipeline's checkpoint, one sink file
//!   with two formats, pipelines feeding each other in a cycle through
//!   files, NATS subjects or Kafka topics;
//! - the state of the machine ([`environment`], checked by `sluice check`):
//!   a source file that does not exist, a sink or checkpoint folder that
//!   cannot be written.
//!
//! Every problem is returned, not the first only.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Component, Path, PathBuf};

use super::error::Problem as Violation;
use super::model::{Config, PipelineConfig, SinkConfig, SourceConfig};
use crate::sink::kafka::KafkaSinkConfig;
use crate::sink::lines::FileSinkConfig;
use crate::sink::lines::RecordFormat;
use crate::sink::nats::{JetStreamSinkConfig, NatsSinkConfig};
use crate::source::jetstream::JetStreamSourceConfig;
use crate::source::kafka::KafkaSourceConfig;
use crate::source::lines::FileSourceConfig;
use crate::source::nats::NatsSourceConfig;

/// `path` with symlinks resolved and `.`/`..` removed, even when it (or
/// its folder) does not exist yet: the longest existing ancestor is
/// canonicalized and the rest appended, normalized by hand.
pub fn canonical(path: &Path) -> PathBuf {
    let parts: Vec<Component<'_>> = path.components().collect();
    for existing in (0..=parts.len()).rev() {
        let prefix: PathBuf = if existing == 0 { PathBuf::from(".") } else { parts[..existing].iter().collect() };
        let Ok(mut out) = prefix.canonicalize() else { continue };
        for part in &parts[existing..] {
            match part {
                Component::ParentDir => {
                    out.pop();
                }
                Component::CurDir => {}
                other => out.push(other.as_os_str()),
            }
        }
        return out;
    }
    path.to_path_buf()
}

/// The sinks of a pipeline with their keys: the default, the routes, the
/// dead letter.
fn sinks(p: &PipelineConfig) -> impl Iterator<Item = (String, &SinkConfig)> {
    std::iter::once(("sink".to_owned(), &p.sink))
        .chain(p.routes.iter().map(|(route, sink)| (format!("routes.{route}"), sink)))
        .chain(p.dead_letter.iter().map(|sink| ("dead_letter".to_owned(), sink)))
}

/// Every broken rule of the config itself, in pipeline order.
pub fn rules(config: &Config) -> Vec<Violation> {
    let mut problems = Vec::new();
    let mut checkpoints: HashMap<PathBuf, &String> = HashMap::new();
    let mut sink_files: HashMap<PathBuf, (&String, RecordFormat, bool)> = HashMap::new();
    // Every source and sink file, canonical, for the checkpoint rule.
    let mut data_files: HashMap<PathBuf, String> = HashMap::new();
    for (name, p) in &config.pipelines {
        if let SourceConfig::File(FileSourceConfig { path, .. }) = &p.source {
            data_files.entry(canonical(path)).or_insert_with(|| format!("the source of pipeline `{name}`"));
        }
        for (key, sink) in sinks(p) {
            if let SinkConfig::File(FileSinkConfig { path, .. }) = sink {
                data_files.entry(canonical(path)).or_insert_with(|| format!("`{key}` of pipeline `{name}`"));
            }
        }
    }
    for (name, p) in &config.pipelines {
        let mut problem = |key: String, message: String| problems.push(Violation::in_pipeline(name, key, message));
        let source = match &p.source {
            SourceConfig::File(FileSourceConfig { path, .. }) => Some(canonical(path)),
            _ => None,
        };
        for (key, sink) in sinks(p) {
            let SinkConfig::File(FileSinkConfig { path, format, fsync }) = sink else { continue };
            let real = canonical(path);
            if source.as_ref() == Some(&real) {
                problem(format!("{key}.path"), format!("{} is also this pipeline's source: it would read its own output", path.display()));
            }
            match sink_files.get(&real) {
                Some((other, other_format, other_fsync)) if (*other_format, *other_fsync) != (*format, *fsync) => problem(
                    format!("{key}.path"),
                    format!(
                        "{} is also a sink of pipeline `{other}` with a different `format` or `fsync`; a file is opened once, so use the same settings or another file",
                        path.display()
                    ),
                ),
                Some(_) => {}
                None => {
                    sink_files.insert(real, (name, *format, *fsync));
                }
            }
        }
        if let SourceConfig::File(FileSourceConfig { checkpoint: Some(checkpoint), .. }) = &p.source {
            let real = canonical(checkpoint);
            if let Some(what) = data_files.get(&real) {
                problem(
                    "source.checkpoint".into(),
                    format!(
                        "{} is also {what}: the checkpoint would overwrite it (or it the checkpoint); give the checkpoint its own file",
                        checkpoint.display()
                    ),
                );
            } else if let Some(other) = checkpoints.insert(real, name) {
                problem(
                    "source.checkpoint".into(),
                    format!("{} is also the checkpoint of pipeline `{other}`; each source needs its own", checkpoint.display()),
                );
            }
        }
    }
    problems.extend(cycles(config));
    problems
}

/// Where a pipeline's outputs can reach another pipeline's input.
#[derive(Debug, PartialEq, Eq)]
enum Feed {
    File(PathBuf),
    /// A NATS subject on a server (the URL as written).
    Subject(String, String),
    /// A Kafka topic on a cluster (the brokers as written).
    Topic(String, String),
}

impl std::fmt::Display for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Feed::File(path) => write!(f, "file {}", path.display()),
            Feed::Subject(_, subject) => write!(f, "subject `{subject}`"),
            Feed::Topic(_, topic) => write!(f, "topic `{topic}`"),
        }
    }
}

/// What the default sink and the routes write to, with the key that says
/// where (not the dead letter: replaying dead letters into a source is a
/// deliberate, manual loop).
fn outputs(p: &PipelineConfig) -> Vec<(String, Feed)> {
    std::iter::once(("sink".to_owned(), &p.sink))
        .chain(p.routes.iter().map(|(route, sink)| (format!("routes.{route}"), sink)))
        .filter_map(|(key, sink)| match sink {
            SinkConfig::File(FileSinkConfig { path, .. }) => Some((format!("{key}.path"), Feed::File(canonical(path)))),
            SinkConfig::Nats(NatsSinkConfig { url, subject: Some(subject), .. })
            | SinkConfig::Jetstream(JetStreamSinkConfig { url, subject: Some(subject), .. }) => {
                Some((format!("{key}.subject"), Feed::Subject(url.trim().to_owned(), subject.clone())))
            }
            SinkConfig::Kafka(KafkaSinkConfig { brokers, topic: Some(topic), .. }) => {
                Some((format!("{key}.topic"), Feed::Topic(brokers.trim().to_owned(), topic.clone())))
            }
            _ => None,
        })
        .collect()
}

/// Whether `source` reads what `feed` writes.
fn reads(source: &SourceConfig, feed: &Feed) -> bool {
    match (source, feed) {
        (SourceConfig::File(FileSourceConfig { path, .. }), Feed::File(out)) => canonical(path) == *out,
        (SourceConfig::Nats(NatsSourceConfig { url, subject, .. }), Feed::Subject(server, out)) => {
            url.trim() == server && subject_matches(subject, out)
        }
        (SourceConfig::Jetstream(JetStreamSourceConfig { url, subjects, filter_subjects, .. }), Feed::Subject(server, out)) => {
            let patterns = if filter_subjects.is_empty() { subjects } else { filter_subjects };
            url.trim() == server && patterns.iter().any(|pattern| subject_matches(pattern, out))
        }
        (SourceConfig::Kafka(KafkaSourceConfig { brokers, topics, .. }), Feed::Topic(cluster, out)) => {
            brokers.trim() == cluster && topics.contains(out)
        }
        _ => false,
    }
}

/// NATS subject matching: `*` is one token, a final `>` one or more.
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut tokens = subject.split('.');
    for part in pattern.split('.') {
        match (part, tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (literal, Some(token)) if literal == token => {}
            _ => return false,
        }
    }
    tokens.next().is_none()
}

/// Pipelines that feed each other in a circle: each event would go round
/// for ever (a file pipeline writing into its own source is reported by
/// the file rule above instead).
fn cycles(config: &Config) -> Vec<Violation> {
    let names: Vec<&String> = config.pipelines.keys().collect();
    // Edges: from → (to, what connects them, the key in `from`).
    let mut edges: BTreeMap<usize, Vec<(usize, String, String)>> = BTreeMap::new();
    for (i, from) in names.iter().enumerate() {
        for (key, feed) in outputs(&config.pipelines[*from]) {
            for (j, to) in names.iter().enumerate() {
                if i == j && matches!(feed, Feed::File(_)) {
                    continue;
                }
                if reads(&config.pipelines[*to].source, &feed) {
                    edges.entry(i).or_default().push((j, feed.to_string(), key.clone()));
                }
            }
        }
    }
    // Each elementary cycle once, from its smallest member (few pipelines:
    // a depth-first search from each is cheap).
    let mut found: BTreeSet<Vec<usize>> = BTreeSet::new();
    let mut problems = Vec::new();
    for start in 0..names.len() {
        let mut stack = vec![(start, vec![start], Vec::<String>::new(), None::<String>)];
        while let Some((at, path, via, first_key)) = stack.pop() {
            for (next, feed, key) in edges.get(&at).into_iter().flatten() {
                let first_key = first_key.clone().unwrap_or_else(|| key.clone());
                if *next == start {
                    if found.insert(path.clone()) {
                        let mut route = String::new();
                        for (k, node) in path.iter().enumerate() {
                            route.push_str(&format!("`{}` → ({}) ", names[*node], via.get(k).map_or(feed.as_str(), String::as_str)));
                        }
                        route.push_str(&format!("`{}`", names[start]));
                        problems.push(Violation::in_pipeline(
                            names[start],
                            first_key,
                            format!("pipelines feed each other in a cycle, so every event would go round for ever: {route}"),
                        ));
                    }
                } else if *next > start && !path.contains(next) {
                    let mut path = path.clone();
                    path.push(*next);
                    let mut via = via.clone();
                    via.push(feed.clone());
                    stack.push((*next, path, via, Some(first_key)));
                }
            }
        }
    }
    problems
}

/// Problems with the machine rather than the config: a source file that
/// does not exist, a folder a sink or checkpoint cannot write to.
pub fn environment(config: &Config) -> Vec<Violation> {
    let mut problems = Vec::new();
    for (name, p) in &config.pipelines {
        let mut problem = |key: String, message: String| problems.push(Violation::in_pipeline(name, key, message));
        if let SourceConfig::File(FileSourceConfig { path, checkpoint, .. }) = &p.source {
            if !path.exists() {
                problem("source.path".into(), format!("{} does not exist", path.display()));
            }
            if let Some(checkpoint) = checkpoint {
                if let Err(why) = writable(checkpoint) {
                    problem("source.checkpoint".into(), why);
                }
            }
        }
        for (key, sink) in sinks(p) {
            if let SinkConfig::File(FileSinkConfig { path, .. }) = sink {
                if let Err(why) = writable(path) {
                    problem(format!("{key}.path"), why);
                }
            }
        }
        // Kafka TLS files: librdkafka would refuse them at start.
        let source_tls = match &p.source {
            SourceConfig::Kafka(KafkaSourceConfig { tls: Some(tls), .. }) => Some(("source".to_owned(), tls)),
            _ => None,
        };
        let sink_tls = sinks(p).filter_map(|(key, sink)| match sink {
            SinkConfig::Kafka(KafkaSinkConfig { tls: Some(tls), .. }) => Some((key, tls)),
            _ => None,
        });
        for (key, tls) in source_tls.into_iter().chain(sink_tls) {
            for (field, path) in [("ca_file", &tls.ca_file), ("cert_file", &tls.cert_file), ("key_file", &tls.key_file)] {
                if let Some(path) = path.as_ref().filter(|path| !access(path, libc::R_OK)) {
                    problem(format!("{key}.tls.{field}"), format!("{} does not exist or cannot be read by this user", path.display()));
                }
            }
        }
    }
    problems
}

/// Whether `file` can be written (or created, with its missing folders).
fn writable(file: &Path) -> Result<(), String> {
    if file.exists() {
        return if access(file, libc::W_OK) { Ok(()) } else { Err(format!("{} cannot be written by this user", file.display())) };
    }
    let mut folder = file.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
    while !folder.exists() {
        if !folder.pop() || folder.as_os_str().is_empty() {
            folder = PathBuf::from(".");
            break;
        }
    }
    if !folder.is_dir() {
        return Err(format!("{} cannot be created: {} is not a folder", file.display(), folder.display()));
    }
    if access(&folder, libc::W_OK | libc::X_OK) {
        Ok(())
    } else {
        Err(format!("{} cannot be created: the folder {} is not writable by this user", file.display(), folder.display()))
    }
}

fn access(path: &Path, mode: libc::c_int) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else { return false };
    // SAFETY: a valid NUL-terminated path; access(2) only reads it.
    unsafe { libc::access(c_path.as_ptr(), mode) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kafka TLS files that are missing are reported by `sluice check`, each
    /// at its key, relative paths taken from the config's folder.
    #[test]
    fn missing_kafka_tls_files_are_reported() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("ca.pem"), "")?;
        let text = r#"
[pipelines.a]
source = { kind = "kafka", group = "g", topics = ["in"], tls = { ca_file = "ca.pem" } }
sink = { kind = "kafka", topic = "out", tls = { ca_file = "ca.pem", cert_file = "client.pem", key_file = "client.key" } }
dead_letter = { kind = "kafka", topic = "dlq", tls = { ca_file = "nope.pem" } }
plugin = { path = "p.wasm" }
"#;
        let config = crate::config::parse(text, &dir.path().join("c.toml"), |_| None)?;
        let keys: Vec<String> = environment(&config).into_iter().map(|p| p.key).collect();
        assert_eq!(keys, ["sink.tls.cert_file", "sink.tls.key_file", "dead_letter.tls.ca_file"]);
        Ok(())
    }

    /// `sluice check`'s machine checks, all reported: a missing source file,
    /// a sink under a path that cannot be a folder. (A folder without write
    /// permission is refused the same way by access(2); not testable as root.)
    #[test]
    fn missing_sources_and_unwritable_sinks_are_all_reported() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("plain-file"), "")?;
        let text = r#"
[pipelines.a]
source = { kind = "file", path = "missing.jsonl" }
sink = { kind = "file", path = "plain-file/out.jsonl" }
dead_letter = { kind = "file", path = "new/folder/dlq.jsonl" }
plugin = { path = "p.wasm" }
"#;
        let config = crate::config::parse(text, &dir.path().join("c.toml"), |_| None)?;
        let found: Vec<String> = environment(&config).iter().map(|p| format!("{}: {}", p.key, p.message)).collect();
        let shown = found.join("\n");
        assert_eq!(found.len(), 2, "{shown}");
        assert!(found[0].starts_with("source.path: ") && found[0].ends_with("missing.jsonl does not exist"), "{shown}");
        assert!(found[1].starts_with("sink.path: ") && found[1].contains("plain-file is not a folder"), "{shown}");
        Ok(())
    }

    #[test]
    fn subjects_match_like_nats() {
        assert!(subject_matches("orders.*", "orders.new"));
        assert!(subject_matches("orders.>", "orders.new.eu"));
        assert!(!subject_matches("orders.>", "orders"));
        assert!(!subject_matches("orders.*", "orders.new.eu"));
        assert!(subject_matches("a.b", "a.b"));
        assert!(!subject_matches("a.b", "a.c"));
    }

    #[test]
    fn canonical_paths_see_through_dots_and_symlinks() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let real = dir.path().join("data");
        std::fs::create_dir(&real)?;
        std::os::unix::fs::symlink(&real, dir.path().join("link"))?;
        let a = canonical(&dir.path().join("data/events.jsonl"));
        assert_eq!(canonical(&dir.path().join("link/../data/./events.jsonl")), a);
        assert_eq!(canonical(&dir.path().join("link/events.jsonl")), a);
        // Not existing yet, below a folder that does not exist either.
        assert_eq!(canonical(&dir.path().join("link/new/../out")), canonical(&dir.path().join("data/out")));
        Ok(())
    }
}
