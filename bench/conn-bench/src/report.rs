//! The report: its data model (serialized as `report.json`), the Markdown
//! table printed on stdout and the SVG chart.

use crate::args::{Generator, Scenario};
use crate::load::{LoadKind, LoadSpec, RunResult};
use crate::stats::{median, ratio, Spread};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::Serialize;
use std::fmt::Write as _;

/// Everything conn-bench measured, in `report.json`'s shape.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Always "conn-bench", so the file identifies itself.
    pub tool: &'static str,
    /// fast, slow or mixed.
    pub scenario: Scenario,
    /// ab or wrk.
    pub generator: Generator,
    /// Rounds per server.
    pub rounds: u32,
    /// The servers' worker count as given (`--workers`).
    pub workers: u32,
    /// The servers' slow duration as given (`--slow-ms`).
    pub slow_ms: u64,
    /// wrk only: seconds per run.
    pub wrk_duration_s: Option<u64>,
    /// The generator processes of each run.
    pub loads: Vec<LoadSpec>,
    /// CPUs the servers were pinned to; None when not pinned.
    pub server_cpus: Option<Vec<usize>>,
    /// CPUs the generator was pinned to; None when not pinned.
    pub generator_cpus: Option<Vec<usize>>,
    /// Resolution of the CPU figures (`/proc` ticks per second).
    pub clock_ticks_per_second: u64,
    /// Caveats and skipped servers, also printed under the table.
    pub notes: Vec<String>,
    /// One entry per server, the reference (first) one first.
    pub servers: Vec<ServerReport>,
}

/// One server's figures.
#[derive(Debug, Clone, Serialize)]
pub struct ServerReport {
    /// Label given with `--server` (or `nginx`).
    pub name: String,
    /// Its command line.
    pub command: String,
    /// Port it listened on.
    pub port: u16,
    /// From exec to the first successful TCP connect.
    pub startup_ms: f64,
    /// Resident memory (KiB, whole process tree) after start, before load.
    pub idle_rss_kib: u64,
    /// Highest resident memory sampled (every 50 ms) during the rounds.
    pub peak_rss_kib: u64,
    /// Server CPU time (all threads and processes) over all rounds.
    pub cpu_us_total: f64,
    /// Completed requests over all rounds and loads.
    pub requests_total: u64,
    /// `cpu_us_total / requests_total`.
    pub cpu_us_per_request: f64,
    /// Per load (one, or fast and slow for `mixed`).
    pub loads: Vec<LoadReport>,
    /// Server-wide figures divided by the first server's.
    pub ratios: ServerRatios,
}

/// One load's figures for one server.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// Endpoint.
    pub kind: LoadKind,
    /// Requests per second over rounds.
    pub requests_per_s: Spread,
    /// Median over rounds of each round's percentile, in ms.
    pub p50_ms: f64,
    /// See `p50_ms`.
    pub p99_ms: f64,
    /// See `p50_ms`.
    pub p999_ms: f64,
    /// Completed requests, summed over rounds.
    pub completed: u64,
    /// Failed requests, summed over rounds.
    pub failed: u64,
    /// Non-2xx responses, summed over rounds.
    pub non_2xx: u64,
    /// Slow load: workers * 1000 / slow_ms.
    pub ideal_requests_per_s: Option<f64>,
    /// Slow load: median requests/s as a percentage of the ideal.
    pub percent_of_ideal: Option<f64>,
    /// Slow load: latency percentiles minus the slow duration, in ms.
    pub p50_over_slow_ms: Option<f64>,
    /// See `p50_over_slow_ms`.
    pub p99_over_slow_ms: Option<f64>,
    /// See `p50_over_slow_ms`.
    pub p999_over_slow_ms: Option<f64>,
    /// Each round's raw figures.
    pub rounds: Vec<RunResult>,
    /// This load's figures divided by the first server's same load.
    pub ratios: LoadRatios,
}

/// Ratios of server-wide figures to the first server (None: undefined).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ServerRatios {
    /// Startup time.
    pub startup_ms: Option<f64>,
    /// Idle RSS.
    pub idle_rss_kib: Option<f64>,
    /// Peak RSS.
    pub peak_rss_kib: Option<f64>,
    /// CPU per request.
    pub cpu_us_per_request: Option<f64>,
}

/// Ratios of a load's figures to the first server's same load.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LoadRatios {
    /// Median requests/s.
    pub requests_per_s_median: Option<f64>,
    /// Minimum requests/s.
    pub requests_per_s_min: Option<f64>,
    /// Maximum requests/s.
    pub requests_per_s_max: Option<f64>,
    /// Latency p50.
    pub p50_ms: Option<f64>,
    /// Latency p99.
    pub p99_ms: Option<f64>,
    /// Latency p99.9.
    pub p999_ms: Option<f64>,
    /// Failed requests.
    pub failed: Option<f64>,
    /// Non-2xx responses.
    pub non_2xx: Option<f64>,
}

impl LoadReport {
    /// Summarizes a load's rounds. `ideal` (requests/s) and `slow_ms` apply
    /// to the slow load only.
    pub fn from_rounds(
        kind: LoadKind,
        rounds: Vec<RunResult>,
        slow_ms: u64,
        ideal: f64,
    ) -> LoadReport {
        let pick = |f: fn(&RunResult) -> f64| {
            median(&rounds.iter().map(f).collect::<Vec<_>>()).unwrap_or(f64::NAN)
        };
        let rps: Vec<f64> = rounds.iter().map(|r| r.rps).collect();
        let requests_per_s = Spread::of(&rps).unwrap_or(Spread {
            median: 0.0,
            min: 0.0,
            max: 0.0,
        });
        let (p50, p99, p999) = (pick(|r| r.p50_ms), pick(|r| r.p99_ms), pick(|r| r.p999_ms));
        let slow = kind == LoadKind::Slow;
        let over = |p: f64| slow.then_some(p - slow_ms as f64);
        LoadReport {
            kind,
            requests_per_s,
            p50_ms: p50,
            p99_ms: p99,
            p999_ms: p999,
            completed: rounds.iter().map(|r| r.completed).sum(),
            failed: rounds.iter().map(|r| r.failed).sum(),
            non_2xx: rounds.iter().map(|r| r.non_2xx).sum(),
            ideal_requests_per_s: slow.then_some(ideal),
            percent_of_ideal: if slow {
                ratio(requests_per_s.median, ideal).map(|r| r * 100.0)
            } else {
                None
            },
            p50_over_slow_ms: over(p50),
            p99_over_slow_ms: over(p99),
            p999_over_slow_ms: over(p999),
            rounds,
            ratios: LoadRatios::default(),
        }
    }
}

/// Fills every server's `ratios` against the first server.
pub fn fill_ratios(servers: &mut [ServerReport]) {
    let Some(base) = servers.first().cloned() else {
        return;
    };
    for server in servers.iter_mut() {
        server.ratios = ServerRatios {
            startup_ms: ratio(server.startup_ms, base.startup_ms),
            idle_rss_kib: ratio(server.idle_rss_kib as f64, base.idle_rss_kib as f64),
            peak_rss_kib: ratio(server.peak_rss_kib as f64, base.peak_rss_kib as f64),
            cpu_us_per_request: ratio(server.cpu_us_per_request, base.cpu_us_per_request),
        };
        for load in server.loads.iter_mut() {
            let Some(b) = base.loads.iter().find(|l| l.kind == load.kind) else {
                continue;
            };
            load.ratios = LoadRatios {
                requests_per_s_median: ratio(load.requests_per_s.median, b.requests_per_s.median),
                requests_per_s_min: ratio(load.requests_per_s.min, b.requests_per_s.min),
                requests_per_s_max: ratio(load.requests_per_s.max, b.requests_per_s.max),
                p50_ms: ratio(load.p50_ms, b.p50_ms),
                p99_ms: ratio(load.p99_ms, b.p99_ms),
                p999_ms: ratio(load.p999_ms, b.p999_ms),
                failed: ratio(load.failed as f64, b.failed as f64),
                non_2xx: ratio(load.non_2xx as f64, b.non_2xx as f64),
            };
        }
    }
}

/// A number with precision fit for a table cell: integers for large
/// figures, two decimals for small ones (sub-millisecond latencies).
pub fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        "n/a".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// A cell: the value, then its ratio to the first server unless this is
/// the first server or the ratio is undefined.
fn cell(value: String, ratio: Option<f64>, first: bool) -> String {
    match ratio {
        Some(r) if !first => format!("{value} ({r:.2}×)"),
        _ => value,
    }
}

/// An axis tick: at most two decimals, trailing zeros dropped.
fn fmt_axis(v: f64) -> String {
    let text = format!("{v:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn mib(kib: u64) -> String {
    fmt_num(kib as f64 / 1024.0)
}

/// The Markdown report: a heading, the main table, the slow-load table when
/// there is a slow load, and the notes.
pub fn markdown(report: &Report) -> String {
    let mut md = String::new();
    let scenario = report.scenario.name();
    let generator = match report.generator {
        Generator::Ab => "ab",
        Generator::Wrk => "wrk",
    };
    let _ = writeln!(md, "## conn-bench: {scenario} scenario\n");
    let loads: Vec<String> = report
        .loads
        .iter()
        .map(|l| match report.wrk_duration_s {
            Some(d) => format!(
                "{} for {d} s at concurrency {}",
                l.kind.name(),
                l.concurrency
            ),
            None => format!(
                "{} × {} requests at concurrency {}",
                l.kind.name(),
                l.requests,
                l.concurrency
            ),
        })
        .collect();
    let _ = writeln!(
        md,
        "{generator}, {} round(s) per server (servers alternating), per run: {}.\n",
        report.rounds,
        loads.join(" + ")
    );
    if report.servers.is_empty() {
        let _ = writeln!(md, "No server was benchmarked.\n");
    } else {
        md +=
            "| server | load | req/s median | req/s min | req/s max | p50 ms | p99 ms | p99.9 ms \
               | failed | non-2xx | CPU µs/req | idle RSS MiB | peak RSS MiB | exec→listen ms |\n";
        md += "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n";
        for (i, s) in report.servers.iter().enumerate() {
            let first = i == 0;
            for l in &s.loads {
                let r = &l.ratios;
                let cells = [
                    s.name.clone(),
                    l.kind.name().to_string(),
                    cell(
                        fmt_num(l.requests_per_s.median),
                        r.requests_per_s_median,
                        first,
                    ),
                    cell(fmt_num(l.requests_per_s.min), r.requests_per_s_min, first),
                    cell(fmt_num(l.requests_per_s.max), r.requests_per_s_max, first),
                    cell(fmt_num(l.p50_ms), r.p50_ms, first),
                    cell(fmt_num(l.p99_ms), r.p99_ms, first),
                    cell(fmt_num(l.p999_ms), r.p999_ms, first),
                    cell(l.failed.to_string(), r.failed, first),
                    cell(l.non_2xx.to_string(), r.non_2xx, first),
                    cell(
                        fmt_num(s.cpu_us_per_request),
                        s.ratios.cpu_us_per_request,
                        first,
                    ),
                    cell(mib(s.idle_rss_kib), s.ratios.idle_rss_kib, first),
                    cell(mib(s.peak_rss_kib), s.ratios.peak_rss_kib, first),
                    cell(fmt_num(s.startup_ms), s.ratios.startup_ms, first),
                ];
                let _ = writeln!(md, "| {} |", cells.join(" | "));
            }
        }
        let _ = writeln!(
            md,
            "\nIn parentheses: ratio to the first server ({}). CPU and memory cover \
             all threads and processes of a server and all its loads.",
            report.servers[0].name
        );
    }

    let slow: Vec<(&ServerReport, &LoadReport)> = report
        .servers
        .iter()
        .flat_map(|s| {
            s.loads
                .iter()
                .filter(|l| l.kind == LoadKind::Slow)
                .map(move |l| (s, l))
        })
        .collect();
    if !slow.is_empty() {
        let _ = writeln!(
            md,
            "\nSlow load against the ideal of {} workers / {} ms, latency over the {} ms duration:\n",
            report.workers, report.slow_ms, report.slow_ms
        );
        md += "| server | ideal req/s | req/s median | % of ideal | p50 − D ms | p99 − D ms | p99.9 − D ms |\n";
        md += "| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n";
        for (s, l) in slow {
            let opt = |v: Option<f64>| v.map_or("n/a".to_string(), fmt_num);
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} |",
                s.name,
                opt(l.ideal_requests_per_s),
                fmt_num(l.requests_per_s.median),
                opt(l.percent_of_ideal),
                opt(l.p50_over_slow_ms),
                opt(l.p99_over_slow_ms),
                opt(l.p999_over_slow_ms)
            );
        }
    }
    if !report.notes.is_empty() {
        md += "\nNotes:\n";
        for note in &report.notes {
            let _ = writeln!(md, "- {note}");
        }
    }
    md
}

/// `report.json`: the report, pretty-printed.
pub fn json(report: &Report) -> String {
    // Serializing plain structs of numbers and strings cannot fail; NaN
    // becomes null.
    serde_json::to_string_pretty(report).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
        + "\n"
}

/// One colour per server, the same in every panel.
const PALETTE: [RGBColor; 6] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
];

/// One bar of a panel.
struct Bar {
    label: String,
    value: f64,
    /// Whisker (min, max), drawn when present.
    range: Option<(f64, f64)>,
    colour: RGBColor,
}

/// One bar chart of the SVG.
struct Panel {
    caption: String,
    bars: Vec<Bar>,
    /// A reference line (the slow load's ideal throughput).
    line: Option<f64>,
}

/// `report.svg`: per load a panel of requests/s per server (median bar,
/// min–max whisker; the slow load also shows its ideal), then a panel of
/// server CPU µs per request. Loads get separate panels because fast and
/// slow throughputs differ by orders of magnitude.
pub fn svg(report: &Report) -> Result<String, String> {
    let mut panels: Vec<Panel> = report
        .loads
        .iter()
        .map(|spec| Panel {
            caption: format!("{} requests/s (median, min–max)", spec.kind.name()),
            bars: Vec::new(),
            line: None,
        })
        .collect();
    let mut cpu = Panel {
        caption: "server CPU µs per request".into(),
        bars: Vec::new(),
        line: None,
    };
    for (i, s) in report.servers.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        for (panel, spec) in panels.iter_mut().zip(&report.loads) {
            let Some(l) = s.loads.iter().find(|l| l.kind == spec.kind) else {
                continue;
            };
            panel.line = panel.line.or(l.ideal_requests_per_s);
            panel.bars.push(Bar {
                label: s.name.clone(),
                value: l.requests_per_s.median,
                range: Some((l.requests_per_s.min, l.requests_per_s.max)),
                colour,
            });
        }
        cpu.bars.push(Bar {
            label: s.name.clone(),
            value: s.cpu_us_per_request,
            range: None,
            colour,
        });
    }
    panels.push(cpu);

    let mut out = String::new();
    {
        let width = 520 * panels.len() as u32;
        let root = SVGBackend::with_string(&mut out, (width, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let title = format!(
            "conn-bench: {} scenario, {} round(s)",
            report.scenario.name(),
            report.rounds
        );
        let root = root
            .titled(&title, ("sans-serif", 22))
            .map_err(|e| e.to_string())?;
        for (area, panel) in root.split_evenly((1, panels.len())).iter().zip(&panels) {
            draw_panel(area, panel)?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// Draws one bar panel. Bars sit in slots 1..=n of n+2, so there is air on
/// both sides and a lone bar is not a wall.
fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    panel: &Panel,
) -> Result<(), String> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let bars = &panel.bars;
    let top = bars
        .iter()
        .flat_map(|b| [b.value, b.range.map_or(0.0, |r| r.1)])
        .chain(panel.line)
        .filter(|v| v.is_finite())
        .fold(0.0_f64, f64::max);
    let top = if top > 0.0 { top * 1.15 } else { 1.0 };
    let n = bars.len();
    // plotters' integer ranges are inclusive: 0..n+1 gives n+2 slots.
    let slot_px = area.dim_in_pixel().0.saturating_sub(100) / (n as u32 + 2);
    let bar = |slot: &usize| slot.checked_sub(1).and_then(|i| bars.get(i));
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.caption, ("sans-serif", 16))
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(70)
        .build_cartesian_2d((0..n + 1).into_segmented(), 0.0..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        // Ask for more labels than slots so plotters skips none; the
        // formatter blanks everything but the bar centres.
        .x_labels(2 * n + 6)
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(slot) => bar(slot).map(|b| b.label.clone()).unwrap_or_default(),
            _ => String::new(),
        })
        .y_label_formatter(&|v| fmt_axis(*v))
        .draw()
        .map_err(err)?;
    chart
        .draw_series(
            Histogram::vertical(&chart)
                .margin(slot_px / 6)
                .style_func(|x, _| match x {
                    SegmentValue::Exact(slot) | SegmentValue::CenterOf(slot) => {
                        bar(slot).map_or(BLACK, |b| b.colour).filled()
                    }
                    SegmentValue::Last => BLACK.filled(),
                })
                .data(
                    bars.iter()
                        .enumerate()
                        .filter(|(_, b)| b.value.is_finite())
                        .map(|(i, b)| (i + 1, b.value)),
                ),
        )
        .map_err(err)?;
    chart
        .draw_series(bars.iter().enumerate().filter_map(|(i, b)| {
            let (lo, hi) = b.range?;
            Some(ErrorBar::new_vertical(
                SegmentValue::CenterOf(i + 1),
                lo,
                b.value,
                hi,
                BLACK.stroke_width(2),
                12,
            ))
        }))
        .map_err(err)?;
    // Each value inside its bar, half-way up: above the bar it would collide
    // with the whiskers, and in the axis label with its neighbours'.
    let inside = ("sans-serif", 14)
        .into_font()
        .color(&WHITE)
        .pos(Pos::new(HPos::Center, VPos::Center));
    chart
        .draw_series(
            bars.iter()
                .enumerate()
                .filter(|(_, b)| b.value.is_finite() && b.value > 0.0)
                .map(|(i, b)| {
                    Text::new(
                        fmt_num(b.value),
                        (SegmentValue::CenterOf(i + 1), b.value / 2.0),
                        inside.clone(),
                    )
                }),
        )
        .map_err(err)?;
    if let Some(y) = panel.line.filter(|y| y.is_finite()) {
        chart
            .draw_series(LineSeries::new(
                [(SegmentValue::Exact(0), y), (SegmentValue::Last, y)],
                RED.stroke_width(2),
            ))
            .map_err(err)?
            .label(format!("ideal {}", fmt_num(y)))
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED.stroke_width(2)));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(rps: f64, p50: f64) -> RunResult {
        RunResult {
            completed: 1000,
            failed: 0,
            non_2xx: 0,
            rps,
            p50_ms: p50,
            p99_ms: p50 * 2.0,
            p999_ms: p50 * 3.0,
        }
    }

    fn server(name: &str, rps: [f64; 3], cpu: f64, kinds: &[LoadKind]) -> ServerReport {
        ServerReport {
            name: name.into(),
            command: format!("{name} -p {{port}}"),
            port: 8080,
            startup_ms: 2.0,
            idle_rss_kib: 2048,
            peak_rss_kib: 4096,
            cpu_us_total: cpu * 3000.0,
            requests_total: 3000,
            cpu_us_per_request: cpu,
            loads: kinds
                .iter()
                .map(|&k| {
                    LoadReport::from_rounds(
                        k,
                        rps.iter().map(|&r| run(r, 0.5)).collect(),
                        30,
                        133.3,
                    )
                })
                .collect(),
            ratios: ServerRatios::default(),
        }
    }

    fn report(kinds: &[LoadKind]) -> Report {
        let mut servers = vec![
            server("conn-daemon", [100.0, 300.0, 200.0], 20.0, kinds),
            server("cpp", [50.0, 150.0, 100.0], 10.0, kinds),
        ];
        fill_ratios(&mut servers);
        Report {
            tool: "conn-bench",
            scenario: Scenario::Fast,
            generator: Generator::Ab,
            rounds: 3,
            workers: 4,
            slow_ms: 30,
            wrk_duration_s: None,
            loads: kinds
                .iter()
                .map(|&kind| LoadSpec {
                    kind,
                    requests: 1000,
                    concurrency: 10,
                })
                .collect(),
            server_cpus: Some(vec![0]),
            generator_cpus: Some(vec![1]),
            clock_ticks_per_second: 100,
            notes: vec!["a note".into()],
            servers,
        }
    }

    #[test]
    fn summarizes_rounds_and_ratios() {
        let r = report(&[LoadKind::Fast]);
        let load = &r.servers[1].loads[0];
        assert_eq!(
            load.requests_per_s,
            Spread {
                median: 100.0,
                min: 50.0,
                max: 150.0
            }
        );
        assert_eq!(load.completed, 3000);
        assert_eq!(load.p99_ms, 1.0);
        assert_eq!(load.ideal_requests_per_s, None);
        assert_eq!(load.ratios.requests_per_s_median, Some(0.5));
        assert_eq!(load.ratios.requests_per_s_max, Some(0.5));
        assert_eq!(load.ratios.p50_ms, Some(1.0));
        assert_eq!(load.ratios.failed, None); // 0 vs 0
        assert_eq!(r.servers[1].ratios.cpu_us_per_request, Some(0.5));
        assert_eq!(r.servers[0].ratios.peak_rss_kib, Some(1.0));
    }

    #[test]
    fn slow_load_against_ideal() {
        let l = LoadReport::from_rounds(LoadKind::Slow, vec![run(100.0, 31.0)], 30, 200.0);
        assert_eq!(l.percent_of_ideal, Some(50.0));
        assert_eq!(l.p50_over_slow_ms, Some(1.0));
        assert_eq!(l.p99_over_slow_ms, Some(32.0));
    }

    #[test]
    fn writes_markdown() {
        let md = markdown(&report(&[LoadKind::Fast, LoadKind::Slow]));
        assert!(md.contains("| server | load | req/s median"), "{md}");
        assert!(md.contains("| conn-daemon | fast | 200 | 100 | 300 | 0.50 | 1.00 | 1.50 | 0 | 0 | 20.0 | 2.00 | 4.00 | 2.00 |"), "{md}");
        assert!(
            md.contains("| cpp | fast | 100 (0.50×) | 50.0 (0.50×) |"),
            "{md}"
        );
        assert!(md.contains("| cpp | slow |"), "{md}");
        assert!(md.contains("% of ideal"), "{md}");
        assert!(md.contains("- a note"), "{md}");
        // Every row of the main table has the header's column count.
        let header_cols = md
            .lines()
            .find(|l| l.starts_with("| server | load"))
            .unwrap()
            .matches('|')
            .count();
        let rows: Vec<&str> = md
            .lines()
            .filter(|l| l.contains(" | fast | ") || l.contains(" | slow | "))
            .collect();
        assert_eq!(rows.len(), 4);
        for row in rows {
            assert_eq!(row.matches('|').count(), header_cols, "{row}");
        }
    }

    #[test]
    fn writes_json() {
        let text = json(&report(&[LoadKind::Fast]));
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["tool"], "conn-bench");
        assert_eq!(v["scenario"], "fast");
        assert_eq!(v["generator"], "ab");
        assert_eq!(v["servers"][1]["name"], "cpp");
        assert_eq!(v["servers"][1]["loads"][0]["kind"], "fast");
        assert_eq!(
            v["servers"][1]["loads"][0]["requests_per_s"]["median"],
            100.0
        );
        assert_eq!(
            v["servers"][1]["loads"][0]["ratios"]["requests_per_s_median"],
            0.5
        );
        assert!(v["servers"][1]["loads"][0]["ratios"]["failed"].is_null());
        assert_eq!(
            v["servers"][0]["loads"][0]["rounds"]
                .as_array()
                .unwrap()
                .len(),
            3
        );
    }

    #[test]
    fn writes_svg() {
        let svg = svg(&report(&[LoadKind::Fast, LoadKind::Slow])).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("fast requests/s"));
        assert!(svg.contains("slow requests/s"));
        // Names on the axis, values inside the bars.
        assert!(svg.contains(">\ncpp\n<"), "server name as an axis label");
        assert!(svg.contains(">\n100\n<"), "value drawn in its bar");
        assert!(svg.contains("ideal 133"));
        // An empty report still renders.
        let mut empty = report(&[LoadKind::Fast]);
        empty.servers.clear();
        assert!(svg_ok(&empty));
    }

    fn svg_ok(r: &Report) -> bool {
        svg(r).map(|s| s.starts_with("<svg")).unwrap_or(false)
    }

    #[test]
    fn formats_numbers() {
        assert_eq!(fmt_num(41234.4), "41234");
        assert_eq!(fmt_num(18.25), "18.2");
        assert_eq!(fmt_num(0.534), "0.53");
        assert_eq!(fmt_num(f64::NAN), "n/a");
        assert_eq!(fmt_axis(2000.0), "2000");
        assert_eq!(fmt_axis(2.50), "2.5");
        assert_eq!(fmt_axis(0.0), "0");
        assert_eq!(cell("5".into(), Some(0.5), false), "5 (0.50×)");
        assert_eq!(cell("5".into(), Some(0.5), true), "5");
        assert_eq!(cell("0".into(), None, false), "0");
    }
}
