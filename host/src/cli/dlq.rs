//! `sluice dlq replay`: reads dead-letter records from a file, a JetStream
//! stream or a Kafka topic, keeps those that match the filters, and sends the
//! original events back to their source (or to `--to`), through the same
//! sinks a pipeline uses, waiting until each is durably accepted. The
//! reading and sending are [`sluice::replay`]'s, shared with the admin API.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use sluice::replay::{read_all, Connection, Filter, Positioned, Sinks};
pub use sluice::replay::{Kind, Origin, To};
use sluice::sink::Receipt;

/// Receipts awaited at once: bounds the records in flight.
const WINDOW: usize = 1024;

pub struct Options {
    pub from: Origin,
    pub to: Option<To>,
    pub filter: Filter,
    pub dry_run: bool,
    pub nats: sluice::config::NatsServer,
    pub brokers: String,
}

pub fn replay(options: &Options) -> Result<std::process::ExitCode> {
    let runtime = super::tokio_runtime()?;
    let result = runtime.block_on(run(options));
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

/// What a replay did, for the closing line.
#[derive(Default)]
struct Tally {
    read: u64,
    replayed: u64,
    filtered: u64,
    not_dead_letters: u64,
}

async fn run(options: &Options) -> Result<std::process::ExitCode> {
    let to = options.to.clone().unwrap_or(To {
        kind: match options.from {
            Origin::File(_) => Kind::File,
            Origin::JetStream { .. } => Kind::JetStream,
            Origin::Kafka(_) => Kind::Kafka,
        },
        name: None,
    });
    sluice::nats::check_server(&options.nats).map_err(|(key, message)| anyhow::anyhow!("--nats-{}: {message}", key.replace('_', "-")))?;
    let connection = Connection { nats: options.nats.clone(), brokers: options.brokers.clone(), kafka_options: BTreeMap::new() };
    let (tx, mut records) = tokio::sync::mpsc::channel::<Positioned>(WINDOW);
    let (total, reader) = read_all(&options.from, &connection, tx).await?;
    let progress = ProgressBar::new(total);
    progress.set_style(
        ProgressStyle::with_template("{spinner} {pos}/{len} records [{bar:30}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let mut sinks = Sinks::new(connection);
    let mut tally = Tally::default();
    let mut receipts: Vec<Receipt> = Vec::new();
    while let Some(record) = records.recv().await {
        tally.read += 1;
        progress.inc(1);
        let Some((_, record)) = record.dead_letter() else {
            tally.not_dead_letters += 1;
            continue;
        };
        if !options.filter.matches(&record) {
            tally.filtered += 1;
            continue;
        }
        let name = to.destination(&record)?;
        if options.dry_run {
            let at = record.dead_lettered_at.map(sluice::time::rfc3339).unwrap_or_else(|| "?".into());
            progress.suspend(|| {
                println!(
                    "would replay {} (pipeline {}, {} at {}: {}) to {}:{}",
                    record.event_id, record.pipeline, record.reason, at, record.message, to.kind, name
                )
            });
            tally.replayed += 1;
            continue;
        }
        receipts.push(sinks.send(to.kind, &name, record).await?);
        tally.replayed += 1;
        if receipts.len() >= WINDOW {
            for receipt in receipts.drain(..) {
                receipt.wait().await.context("a replayed event was not accepted")?;
            }
        }
    }
    reader.await.context("the reader stopped")??;
    for receipt in receipts.drain(..) {
        receipt.wait().await.context("a replayed event was not accepted")?;
    }
    sinks.close().await?;
    progress.finish_and_clear();
    let verb = if options.dry_run { "would replay" } else { "replayed" };
    println!(
        "{verb} {} of {} records ({} filtered out, {} not dead-letter records)",
        tally.replayed, tally.read, tally.filtered, tally.not_dead_letters
    );
    Ok(std::process::ExitCode::SUCCESS)
}

/// `--since`/`--until` as clap parses them.
pub fn parse_time(text: &str) -> Result<SystemTime, String> {
    sluice::replay::parse_time(text, SystemTime::now())
}
