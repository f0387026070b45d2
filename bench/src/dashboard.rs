//! `sluice-bench dashboard`: every benchmark's sluice/native ratios in one
//! markdown table and one PNG plot, from the results the other benchmarks
//! left under `target/`: criterion's estimates (`target/criterion/{call,
//! pipeline}/{native,wasm}/…`) and the end-to-end runs' `target/bench/
//! {nats,kafka}.json`. `./dev bench` runs them all, then this.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// One comparison of sluice (or the WASM path) with its native baseline,
/// measured in the same run. Ratios above 1 mean sluice is faster
/// (throughput) or slower (latency).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ratio {
    /// Which benchmark: `criterion call`, `nats`, `kafka`…
    pub bench: String,
    /// The case within it: `core`, `at-least-once`, `100B_batch64`…
    pub case: String,
    /// sluice throughput / native throughput.
    pub throughput: f64,
    /// sluice p50 / native p50, where latency was measured.
    pub p50: Option<f64>,
    /// sluice p99 / native p99.
    pub p99: Option<f64>,
}

/// Writes an end-to-end benchmark's ratios next to its markdown report.
pub fn save(name: &str, ratios: &[Ratio]) -> Result<()> {
    let path = PathBuf::from("target/bench").join(format!("{name}.json"));
    std::fs::create_dir_all("target/bench")?;
    std::fs::write(&path, serde_json::to_vec_pretty(ratios)?).with_context(|| format!("writing {}", path.display()))
}

pub fn run(out_dir: &Path) -> Result<()> {
    let mut ratios = criterion_ratios(Path::new("target/criterion"))?;
    for name in ["nats", "kafka"] {
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
                ratios.push(Ratio { bench: format!("criterion {group}"), case, throughput: native / wasm, p50: None, p99: None });
            }
        }
    }
    Ok(ratios)
}

fn markdown(ratios: &[Ratio]) -> String {
    let mut out = String::from("# Benchmark dashboard: sluice vs native, same run\n\n");
    out.push_str("Throughput ratio: sluice / native (1.00 = as fast; the goal for brokers is ≥ 0.90). ");
    out.push_str("Latency ratio: sluice / native (1.00 = as fast; higher is slower).\n\n");
    out.push_str("| benchmark | case | throughput ratio | p50 ratio | p99 ratio |\n|---|---|---:|---:|---:|\n");
    let opt = |v: Option<f64>| v.map_or("–".to_owned(), |v| format!("{v:.2}"));
    for r in ratios {
        out.push_str(&format!("| {} | {} | {:.2} | {} | {} |\n", r.bench, r.case, r.throughput, opt(r.p50), opt(r.p99)));
    }
    out
}

/// A horizontal bar per comparison, with the 1.0 and 0.9 marks. Text needs
/// a TrueType font: DejaVu Sans from the system (Debian's fonts-dejavu).
fn plot(ratios: &[Ratio], path: &Path) -> Result<()> {
    use plotters::prelude::*;
    use plotters::style::{register_font, FontStyle};

    let font = ["/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/TTF/DejaVuSans.ttf"]
        .iter()
        .find_map(|p| std::fs::read(p).ok())
        .context("no DejaVuSans.ttf for the plot's text (apt-get install fonts-dejavu-core)")?;
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    register_font("sans-serif", FontStyle::Normal, font).map_err(|_| anyhow::anyhow!("the font did not load"))?;

    let height = 80 + 28 * ratios.len() as u32;
    let root = BitMapBackend::new(path, (1000, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let max = ratios.iter().map(|r| r.throughput).fold(1.2f64, f64::max) * 1.05;
    let labels: Vec<String> = ratios.iter().map(|r| format!("{} · {}", r.bench, r.case)).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption("throughput, sluice / native (same run)", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(330)
        .build_cartesian_2d(0f64..max, (0..ratios.len()).into_segmented())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(ratios.len())
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .x_desc("ratio")
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .draw_series(ratios.iter().enumerate().map(|(i, r)| {
            let color = if r.throughput >= 0.9 { GREEN.mix(0.7) } else { RED.mix(0.6) };
            Rectangle::new([(0.0, SegmentValue::Exact(i)), (r.throughput, SegmentValue::Exact(i + 1))], color.filled())
        }))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for (mark, style) in [(1.0, BLACK.stroke_width(2)), (0.9, BLUE.stroke_width(1))] {
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(mark, SegmentValue::Exact(0)), (mark, SegmentValue::Exact(ratios.len()))],
                style,
            )))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}
