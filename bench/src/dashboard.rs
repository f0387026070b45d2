//! `sluice-bench dashboard`: every benchmark's sluice/native ratios in one
//! markdown table and one PNG plot, from the results the other benchmarks
//! left under `target/`: criterion's estimates (`target/criterion/{call,
//! pipeline}/{native,wasm}/…`) and the end-to-end runs' `target/bench/
//! {nats,kafka,start,memory}.json`. `./dev bench` runs them all, then this.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// One comparison of sluice (or the WASM path) with its native baseline,
/// measured in the same run. Ratios above 1 mean sluice is faster
/// (throughput) or slower (latency, start time, memory).
///
/// Every field but `bench` and `case` is optional in the JSON, so files
/// written before a field existed still read.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ratio {
    /// Which benchmark: `criterion call`, `nats`, `kafka`, `start`, `memory`…
    pub bench: String,
    /// The case within it: `core`, `at-least-once`, `100B_batch64`…
    pub case: String,
    /// sluice throughput / native throughput, where throughput was measured.
    #[serde(default)]
    pub throughput: Option<f64>,
    /// sluice p50 / native p50, where latency was measured.
    #[serde(default)]
    pub p50: Option<f64>,
    /// sluice p99 / native p99.
    #[serde(default)]
    pub p99: Option<f64>,
    /// sluice / native of a cost where less is better and no latency
    /// percentile applies: time to the first event, resident memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<f64>,
    /// Sluice's own figure behind `cost`, as the table shows it
    /// (`12.3 ms`, `17.2 MiB`): the goals of issue 20 are absolute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub figure: Option<String>,
    /// The goal the figure is held to, and whether this run met it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goal: Option<Goal>,
}

/// An absolute goal (`< 50 ms`) and this run's verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Goal {
    pub text: String,
    pub met: bool,
}

impl Goal {
    /// `figure < limit`, stated as `< {limit}{unit}`.
    pub fn below(figure: f64, limit: f64, unit: &str) -> Self {
        Self { text: format!("< {limit} {unit}"), met: figure < limit }
    }
}

/// Latency ratios at or under this are within issue 20's goal (p50 and p99
/// within 1.3× of native).
pub const LATENCY_GOAL: f64 = 1.3;
/// Throughput ratios at or over this meet the broker goal.
pub const THROUGHPUT_GOAL: f64 = 0.9;

/// The end-to-end results `dashboard` gathers, by file stem under
/// `target/bench/`.
const RESULTS: [&str; 4] = ["nats", "kafka", "start", "memory"];

/// Writes an end-to-end benchmark's ratios next to its markdown report.
pub fn save(name: &str, ratios: &[Ratio]) -> Result<()> {
    let path = PathBuf::from("target/bench").join(format!("{name}.json"));
    std::fs::create_dir_all("target/bench")?;
    std::fs::write(&path, serde_json::to_vec_pretty(ratios)?).with_context(|| format!("writing {}", path.display()))
}

pub fn run(out_dir: &Path) -> Result<()> {
    let mut ratios = criterion_ratios(Path::new("target/criterion"))?;
    for name in RESULTS {
        let path = PathBuf::from("target/bench").join(format!("{name}.json"));
        match std::fs::read(&path) {
            Ok(bytes) => {
                ratios.extend(serde_json::from_slice::<Vec<Ratio>>(&bytes).with_context(|| format!("reading {}", path.display()))?)
            }
            Err(_) => eprintln!("no {} (run `sluice-bench {name}` first); left out", path.display()),
        }
    }
    anyhow::ensure!(!ratios.is_empty(), "no benchmark results under target/: run `./dev bench` (or the benchmarks one by one) first");
    std::fs::create_dir_all(out_dir)?;
    let table = markdown(&ratios);
    print!("{table}");
    let md = out_dir.join("dashboard.md");
    std::fs::write(&md, &table)?;
    let png = out_dir.join("dashboard.png");
    match plot(&ratios, &png) {
        Ok(()) => eprintln!("dashboard written to {} and {}", md.display(), png.display()),
        Err(e) => eprintln!("dashboard written to {}; no plot: {e:#}", md.display()),
    }
    Ok(())
}

/// Criterion's `native` and `wasm` functions of each group, paired by case:
/// the ratio of their mean times is the throughput ratio.
fn criterion_ratios(root: &Path) -> Result<Vec<Ratio>> {
    let mut ratios = Vec::new();
    for group in ["call", "pipeline"] {
        let wasm_dir = root.join(group).join("wasm");
        let Ok(cases) = std::fs::read_dir(&wasm_dir) else { continue };
        let mut names: Vec<String> = cases.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        for case in names {
            let mean = |kind: &str| -> Option<f64> {
                let path = root.join(group).join(kind).join(&case).join("new/estimates.json");
                let value: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
                value["mean"]["point_estimate"].as_f64()
            };
            if let (Some(native), Some(wasm)) = (mean("native"), mean("wasm")) {
                ratios.push(Ratio { bench: format!("criterion {group}"), case, throughput: Some(native / wasm), ..Ratio::default() });
            }
        }
    }
    Ok(ratios)
}

fn markdown(ratios: &[Ratio]) -> String {
    let mut out = String::from("# Benchmark dashboard: sluice vs native, same run\n\n");
    out.push_str("Throughput ratio: sluice / native (1.00 = as fast; the goal for brokers is ≥ 0.90). ");
    out.push_str("Latency ratio: sluice / native (1.00 = as fast; higher is slower; the goal is ≤ 1.30). ");
    out.push_str("Cost ratio: sluice / native of the time to the first event or of resident memory (higher is more); ");
    out.push_str("the goals there are absolute, on sluice's own figure.\n\n");
    out.push_str("| benchmark | case | throughput ratio | p50 ratio | p99 ratio | cost ratio | sluice | goal |\n");
    out.push_str("|---|---|---:|---:|---:|---:|---:|---|\n");
    let opt = |v: Option<f64>| v.map_or("–".to_owned(), |v| format!("{v:.2}"));
    for r in ratios {
        let goal = r.goal.as_ref().map_or("–".to_owned(), |g| format!("{}: {}", g.text, if g.met { "met" } else { "**not met**" }));
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.bench,
            r.case,
            opt(r.throughput),
            opt(r.p50),
            opt(r.p99),
            opt(r.cost),
            r.figure.as_deref().unwrap_or("–"),
            goal
        ));
    }
    out
}

/// One bar of the plot: a ratio, what it is, and whether it meets its goal.
#[derive(Debug, Clone, PartialEq)]
struct Bar {
    label: String,
    value: f64,
    good: bool,
}

/// Every ratio of every comparison as a bar: throughput (good at ≥ 0.9),
/// p50 and p99 (good at ≤ 1.3), cost (good when its absolute goal is met,
/// or, without one, at ≤ 1.3).
fn bars(ratios: &[Ratio]) -> Vec<Bar> {
    let mut bars = Vec::new();
    for r in ratios {
        let name = format!("{} · {}", r.bench, r.case);
        let mut push = |what: &str, value: Option<f64>, good: &dyn Fn(f64) -> bool| {
            if let Some(value) = value.filter(|v| v.is_finite() && *v > 0.0) {
                bars.push(Bar { label: format!("{name} · {what}"), value, good: good(value) });
            }
        };
        push("throughput", r.throughput, &|v| v >= THROUGHPUT_GOAL);
        push("p50", r.p50, &|v| v <= LATENCY_GOAL);
        push("p99", r.p99, &|v| v <= LATENCY_GOAL);
        let goal = r.goal.as_ref().map(|g| g.met);
        push("cost", r.cost, &|v| goal.unwrap_or(v <= LATENCY_GOAL));
    }
    bars
}

/// A horizontal bar per ratio (throughput, p50, p99, cost) on a log scale,
/// so a 0.3 throughput ratio and a 300× cold start both show; marks at 0.9,
/// 1.0 and 1.3. Text needs a TrueType font: DejaVu Sans from the system
/// (Debian's fonts-dejavu).
fn plot(ratios: &[Ratio], path: &Path) -> Result<()> {
    use plotters::prelude::*;
    use plotters::style::{register_font, FontStyle};

    let bars = bars(ratios);
    anyhow::ensure!(!bars.is_empty(), "no ratio to plot");
    let font = ["/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/TTF/DejaVuSans.ttf"]
        .iter()
        .find_map(|p| std::fs::read(p).ok())
        .context("no DejaVuSans.ttf for the plot's text (apt-get install fonts-dejavu-core)")?;
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    register_font("sans-serif", FontStyle::Normal, font).map_err(|_| anyhow::anyhow!("the font did not load"))?;

    let height = 80 + 22 * bars.len() as u32;
    let root = BitMapBackend::new(path, (1100, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (min, max) = bars.iter().fold((0.5f64, 2.0f64), |(lo, hi), b| (lo.min(b.value), hi.max(b.value)));
    let range = (min / 1.5)..(max * 1.5);
    let mut chart = ChartBuilder::on(&root)
        .caption("sluice / native, same run (log scale; green meets its goal)", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(430)
        .build_cartesian_2d(range.clone().log_scale(), (0..bars.len()).into_segmented())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(bars.len())
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => bars.get(*i).map(|b| b.label.clone()).unwrap_or_default(),
            _ => String::new(),
        })
        .x_desc("ratio")
        .label_style(("sans-serif", 12))
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, b)| {
            let color = if b.good { GREEN.mix(0.7) } else { RED.mix(0.6) };
            Rectangle::new([(range.start, SegmentValue::Exact(i)), (b.value, SegmentValue::Exact(i + 1))], color.filled())
        }))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, b)| {
            Text::new(format!("{:.2}", b.value), (b.value * 1.03, SegmentValue::CenterOf(i)), ("sans-serif", 11).into_font())
        }))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for (mark, style) in [(1.0, BLACK.stroke_width(2)), (THROUGHPUT_GOAL, BLUE.stroke_width(1)), (LATENCY_GOAL, BLUE.stroke_width(1))] {
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(mark, SegmentValue::Exact(0)), (mark, SegmentValue::Exact(bars.len()))],
                style,
            )))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A results file written before `cost`, `figure` and `goal` existed
    /// (and with `throughput` as a plain number) still reads.
    #[test]
    fn old_results_still_read() -> Result<()> {
        let old = r#"[{"bench":"nats","case":"core","throughput":0.54,"p50":1.2,"p99":null}]"#;
        let ratios: Vec<Ratio> = serde_json::from_str(old)?;
        assert_eq!(
            ratios,
            vec![Ratio { bench: "nats".into(), case: "core".into(), throughput: Some(0.54), p50: Some(1.2), ..Ratio::default() }]
        );
        Ok(())
    }

    /// A start or memory row round-trips, goal and figure included, and
    /// leaves out what it does not have.
    #[test]
    fn cost_rows_round_trip() -> Result<()> {
        let row = Ratio {
            bench: "start".into(),
            case: "rust, warm cache".into(),
            cost: Some(7.5),
            figure: Some("31.0 ms".into()),
            goal: Some(Goal::below(31.0, 50.0, "ms")),
            ..Ratio::default()
        };
        let json = serde_json::to_string(&row)?;
        assert!(!json.contains("\"figure\":null"), "{json}");
        let back: Ratio = serde_json::from_str(&json)?;
        assert_eq!(back, row);
        assert_eq!(back.goal.as_ref().map(|g| (g.text.as_str(), g.met)), Some(("< 50 ms", true)));
        Ok(())
    }

    #[test]
    fn every_ratio_is_a_bar_judged_by_its_own_goal() {
        let ratios = [
            Ratio { bench: "nats".into(), case: "core".into(), throughput: Some(0.5), p50: Some(1.2), p99: Some(1.4), ..Ratio::default() },
            Ratio {
                bench: "memory".into(),
                case: "idle, 1 pipeline".into(),
                cost: Some(3.0),
                goal: Some(Goal { text: "< 20 MiB".into(), met: true }),
                ..Ratio::default()
            },
            Ratio { bench: "start".into(), case: "python, cold cache".into(), cost: Some(400.0), ..Ratio::default() },
        ];
        let judged: Vec<(String, bool)> = bars(&ratios).into_iter().map(|b| (b.label, b.good)).collect();
        assert_eq!(
            judged,
            vec![
                ("nats · core · throughput".to_owned(), false),
                ("nats · core · p50".to_owned(), true),
                ("nats · core · p99".to_owned(), false),
                ("memory · idle, 1 pipeline · cost".to_owned(), true),
                ("start · python, cold cache · cost".to_owned(), false),
            ]
        );
    }

    #[test]
    fn the_table_states_goals_and_figures() {
        let ratios = [Ratio {
            bench: "memory".into(),
            case: "per extra idle pipeline".into(),
            figure: Some("2.40 MiB".into()),
            goal: Some(Goal::below(2.4, 2.0, "MiB")),
            ..Ratio::default()
        }];
        let table = markdown(&ratios);
        assert!(table.contains("| memory | per extra idle pipeline | – | – | – | – | 2.40 MiB | < 2 MiB: **not met** |"), "{table}");
    }
}
