//! `report.html`: one self-contained page (inline CSS and SVG, no scripts, no fonts, no
//! network) with three plots and the report's tables.
//!
//! - `#timeline`: one row per worker slot, one box per attempt, coloured by phase and
//!   outcome; the x axis is seconds since job start. Attempts of one worker are packed into
//!   lanes first-fit, at least as many lanes as the worker has slots, so idle slots show as
//!   gaps and overlapping attempts never overlap on screen.
//! - `#rates`: input, shuffle and output MB/s over time (the MapReduce paper's Figure 3),
//!   on the timeline's x scale and left margin, so phases line up vertically.
//! - `#percentiles`: latency by percentile for every duration histogram, on the usual
//!   `1/(1-p)` log axis.
//!
//! The plots are drawn with plotters' SVG backend in pixel space where layout matters
//! (lanes, labels), in data space elsewhere. A plot that fails to draw becomes a one-line
//! error in the page; nothing here panics on an empty or odd report (zero wall time, no
//! attempts, empty histograms): every range is widened to be non-empty and finite first.
//! All text taken from the report is escaped.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::text::{
    escape_html as esc, human_bytes, human_mb_per_s, human_us, human_value, COUNTER_INPUT_BYTES,
    COUNTER_OUTPUT_BYTES,
};
use super::{dir, AttemptRecord, Outcome, PhaseName, Report, REPORT_VERSION};

/// Width of every plot, px.
const WIDTH: u32 = 1200;
/// Width of the timeline's and rate plots' left label area, px (shared so their x axes align).
const LABEL_AREA: u32 = 190;
/// Right margin of the timeline and rate plots, px.
const RIGHT_MARGIN: u32 = 24;

/// Map attempts (Paul Tol's "bright" blue).
const MAP: RGBColor = RGBColor(0x44, 0x77, 0xaa);
/// Reduce attempts (Tol green).
const REDUCE: RGBColor = RGBColor(0x22, 0x88, 0x33);
/// Outline of failed attempts.
const FAILED: RGBColor = RGBColor(0xdd, 0x22, 0x22);
/// Attempts lost with their worker.
const LOST: RGBColor = RGBColor(0x55, 0x55, 0x55);
/// Attempts still running at the end.
const RUNNING: RGBColor = RGBColor(0xcc, 0xbb, 0x44);
/// Background of every other worker's lanes.
const BAND: RGBColor = RGBColor(0xf1, 0xf3, 0xf6);
/// Grid and separator lines.
const RULE: RGBColor = RGBColor(0xc8, 0xcc, 0xd2);
/// Text.
const INK: RGBColor = RGBColor(0x22, 0x22, 0x22);
/// Line colours of the percentile plot (Tol bright, then darker variants).
const PALETTE: [RGBColor; 8] = [
    RGBColor(0x44, 0x77, 0xaa),
    RGBColor(0xee, 0x66, 0x77),
    RGBColor(0x22, 0x88, 0x33),
    RGBColor(0xaa, 0x33, 0x77),
    RGBColor(0xcc, 0xbb, 0x44),
    RGBColor(0x66, 0xcc, 0xee),
    RGBColor(0x33, 0x22, 0x88),
    RGBColor(0x99, 0x99, 0x33),
];

/// A plot as SVG text, or why it could not be drawn.
type Plot = std::result::Result<String, String>;

/// The report as a self-contained HTML page (see the module doc).
pub fn render_html(report: &Report) -> String {
    let job = esc(&report.job);
    let x_end = time_axis_end(report);
    let mut page = String::with_capacity(64 * 1024);
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>quern report: {job}</title>\n<style>{CSS}</style>\n</head>\n<body>\n\
         <h1>quern report: {job}</h1>\n<p class=\"sub\">started {} &middot; {} &middot; {} workers &middot; {} map / {} reduce tasks</p>\n",
        esc(&utc(report.started_unix_ms)),
        esc(&human_us(report.wall_us)),
        report.workers.len(),
        report.map_tasks,
        report.reduce_tasks,
    );
    summary_section(&mut page, report);

    page.push_str("<figure id=\"timeline\">\n<figcaption>Task timeline: one row per worker slot, one box per attempt.</figcaption>\n");
    push_plot(&mut page, timeline_svg(report, x_end));
    page.push_str(LEGEND);
    page.push_str("</figure>\n");

    let buckets = match report.rates.bucket_us {
        0 => "no samples".to_owned(),
        us => format!("{} buckets", esc(&human_us(us))),
    };
    let _ = write!(
        page,
        "<figure id=\"rates\">\n<figcaption>Data rates in MB/s, summed over workers, losing attempts included ({buckets}).</figcaption>\n"
    );
    push_plot(&mut page, rates_svg(report, x_end));
    page.push_str("</figure>\n");

    page.push_str("<figure id=\"percentiles\">\n<figcaption>Latency by percentile, every duration histogram with two samples or more (log scales; the right edge is the maximum).</figcaption>\n");
    push_plot(&mut page, percentiles_svg(report));
    page.push_str("</figure>\n");

    histograms_section(&mut page, report);
    counters_section(&mut page, report);
    workers_section(&mut page, report);
    attempts_section(&mut page, report);
    let _ = write!(
        page,
        "<footer>quern report version {REPORT_VERSION}. Times are seconds since the job started unless marked.</footer>\n</body>\n</html>\n"
    );
    page
}

const CSS: &str = "
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, 'Segoe UI', sans-serif; color: #222; margin: 24px auto; max-width: 1240px; padding: 0 16px; }
h1 { font-size: 22px; margin: 0 0 2px; }
h2 { font-size: 17px; margin: 28px 0 8px; border-bottom: 1px solid #dde; padding-bottom: 3px; }
.sub { color: #555; margin: 0 0 16px; }
figure { margin: 24px 0; }
figcaption { font-weight: 600; margin-bottom: 6px; }
figure svg { display: block; max-width: 100%; height: auto; border: 1px solid #e3e5e8; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; margin: 4px 0 8px; }
th, td { padding: 3px 10px; border-bottom: 1px solid #eceef1; text-align: right; white-space: nowrap; }
th { background: #f5f6f8; font-weight: 600; }
td.l, th.l { text-align: left; }
tr.failed td { color: #b00; }
tr.lost td, tr.cancelled td { color: #777; }
pre { background: #f5f6f8; padding: 10px 12px; overflow-x: auto; font-size: 12.5px; }
.legend { display: flex; flex-wrap: wrap; gap: 6px 18px; margin-top: 6px; font-size: 13px; }
.sw { display: inline-block; width: 22px; height: 11px; vertical-align: -1px; margin-right: 5px; box-sizing: border-box; }
.plot-error { color: #b00; }
footer { color: #777; margin: 32px 0 8px; font-size: 12px; }
";

const LEGEND: &str = "<div class=\"legend\">\
<span><span class=\"sw\" style=\"background:#4477aa\"></span>map, committed</span>\
<span><span class=\"sw\" style=\"background:#228833\"></span>reduce, committed</span>\
<span><span class=\"sw\" style=\"background:rgba(68,119,170,.3);border:1px solid #4477aa\"></span>cancelled (another attempt won)</span>\
<span><span class=\"sw\" style=\"background:rgba(68,119,170,.3);border:2px solid #dd2222\"></span>failed</span>\
<span><span class=\"sw\" style=\"background:repeating-linear-gradient(135deg,#555 0 1px,#eee 1px 5px);border:1px solid #555\"></span>lost with its worker</span>\
<span><span class=\"sw\" style=\"background:rgba(204,187,68,.5);border:1px solid #ccbb44\"></span>still running</span>\
<span>&#9650; speculative backup</span>\
<span>&#9474; phase end</span>\
</div>\n";

/// Appends `plot`, or its error.
fn push_plot(page: &mut String, plot: Plot) {
    match plot {
        Ok(svg) => {
            page.push_str(&svg);
            page.push('\n');
        }
        Err(e) => {
            let _ = writeln!(
                page,
                "<p class=\"plot-error\">could not draw this plot: {}</p>",
                esc(&e)
            );
        }
    }
}

fn draw_err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// End of the shared time axis, seconds: the latest thing the report knows of, at least 10 ms.
fn time_axis_end(report: &Report) -> f64 {
    let attempts = report.attempts.iter().map(|a| a.end_us.max(a.start_us));
    let phases = report.phases.iter().map(|p| p.end_us);
    let rates = &report.rates;
    let buckets = [rates.input.len(), rates.shuffle.len(), rates.output.len()]
        .into_iter()
        .max()
        .unwrap_or(0);
    let rates_end = rates.bucket_us.saturating_mul(buckets as u64);
    let end_us = attempts
        .chain(phases)
        .chain([report.wall_us, rates_end])
        .max()
        .unwrap_or(0)
        .max(10_000);
    end_us as f64 / 1e6
}

/// Attempts packed into lanes, grouped by worker.
struct Lanes {
    /// Workers in display order (top to bottom).
    groups: Vec<LaneGroup>,
    /// Global lane of each attempt, indexed like `Report::attempts`.
    of_attempt: Vec<usize>,
    /// Lanes in all.
    count: usize,
}

/// The lanes of one worker.
struct LaneGroup {
    /// What the row is labelled with.
    label: String,
    /// Its first global lane.
    first: usize,
    /// Its lanes.
    lanes: usize,
}

impl Lanes {
    /// Most idle slots shown per worker.
    const MAX_IDLE_SLOTS: usize = 64;

    fn of(report: &Report) -> Self {
        let mut ids: Vec<u32> = report.workers.iter().map(|w| w.id).collect();
        let mut strays: Vec<u32> = report
            .attempts
            .iter()
            .map(|a| a.worker)
            .filter(|id| !ids.contains(id))
            .collect();
        strays.sort_unstable();
        strays.dedup();
        ids.extend(strays);

        let mut groups = Vec::with_capacity(ids.len());
        let mut of_attempt = vec![0; report.attempts.len()];
        let mut count = 0;
        for id in ids {
            let worker = report.workers.iter().find(|w| w.id == id);
            let slots = worker
                .map_or(1, |w| w.slots as usize)
                .clamp(1, Self::MAX_IDLE_SLOTS);
            let mut mine: Vec<(usize, &AttemptRecord)> = report
                .attempts
                .iter()
                .enumerate()
                .filter(|(_, a)| a.worker == id)
                .collect();
            mine.sort_by_key(|(i, a)| (a.start_us, a.end_us, *i));
            // First fit: the first lane free by the attempt's start.
            let mut lane_free_at = vec![0u64; slots];
            for (i, a) in mine {
                let lane = match lane_free_at.iter().position(|&free| free <= a.start_us) {
                    Some(lane) => lane,
                    None => {
                        lane_free_at.push(0);
                        lane_free_at.len() - 1
                    }
                };
                lane_free_at[lane] = a.end_us.max(a.start_us);
                of_attempt[i] = count + lane;
            }
            let label = match worker {
                Some(w) if !w.addr.is_empty() => format!("w{id}  {}", w.addr),
                _ => format!("w{id}"),
            };
            groups.push(LaneGroup {
                label,
                first: count,
                lanes: lane_free_at.len(),
            });
            count += lane_free_at.len();
        }
        Lanes {
            groups,
            of_attempt,
            count,
        }
    }
}

/// The task timeline.
fn timeline_svg(report: &Report, x_end: f64) -> Plot {
    let lanes = Lanes::of(report);
    let rows = lanes.count.max(1);
    let lane_px: i32 = if rows <= 40 {
        22
    } else {
        (880 / rows as i32).max(3)
    };
    let height = rows as u32 * lane_px as u32 + 24 + 50;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let mut chart = ChartBuilder::on(&root)
            .margin_top(24)
            .margin_bottom(6)
            .margin_left(8)
            .margin_right(RIGHT_MARGIN)
            .x_label_area_size(44)
            .y_label_area_size(LABEL_AREA)
            .build_cartesian_2d(0.0..x_end, 0.0..rows as f64)
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(0)
            .x_labels(14)
            .x_label_formatter(&|s| seconds_label(*s))
            .x_desc("seconds since job start")
            .light_line_style(WHITE)
            .bold_line_style(RULE.mix(0.6))
            .axis_desc_style(font(13.0))
            .label_style(font(12.0))
            .draw()
            .map_err(draw_err)?;

        let (px_x, px_y) = chart.plotting_area().get_pixel_range();
        let (left, right, top) = (px_x.start, px_x.end, px_y.start);
        // Pixel row of lane boundary `lane` (0 = top).
        let row = |lane: usize| top + lane as i32 * lane_px;
        let col = |us: u64| chart.backend_coord(&(us as f64 / 1e6, 0.0)).0;
        let bottom = row(rows);

        let label_style = text_style(12.0, &INK, HPos::Right, VPos::Center);
        for (g, group) in lanes.groups.iter().enumerate() {
            let (y0, y1) = (row(group.first), row(group.first + group.lanes));
            if g % 2 == 1 {
                root.draw(&Rectangle::new(
                    [(left + 1, y0), (right, y1)],
                    BAND.filled(),
                ))
                .map_err(draw_err)?;
            }
            if g > 0 {
                root.draw(&PathElement::new(vec![(left - 4, y0), (right, y0)], RULE))
                    .map_err(draw_err)?;
            }
            if y1 - y0 >= 11 {
                let text = Text::new(
                    group.label.clone(),
                    (left - 8, (y0 + y1) / 2),
                    label_style.clone(),
                );
                root.draw(&text).map_err(draw_err)?;
            }
        }

        let pad = (lane_px / 7).max(1);
        let task_style = text_style(10.5, &WHITE, HPos::Center, VPos::Center);
        for (a, &lane) in report.attempts.iter().zip(&lanes.of_attempt) {
            let (x0, x1) = (col(a.start_us), col(a.end_us.max(a.start_us)));
            // A 2 px gap between back-to-back attempts of one lane; at least 2 px wide.
            let x1 = if x1 - x0 > 6 { x1 - 2 } else { x1.max(x0 + 2) };
            let (y0, y1) = (row(lane) + pad, row(lane + 1) - pad);
            let phase = match a.phase {
                PhaseName::Map => MAP,
                PhaseName::Reduce => REDUCE,
            };
            let corners = [(x0, y0), (x1, y1)];
            let (fill, outline): (RGBAColor, Option<ShapeStyle>) = match a.outcome {
                Outcome::Committed => (phase.to_rgba(), None),
                Outcome::Cancelled => (phase.mix(0.3), Some(phase.stroke_width(1))),
                Outcome::Failed => (phase.mix(0.3), Some(FAILED.stroke_width(2))),
                Outcome::Lost => (LOST.mix(0.08), Some(LOST.stroke_width(1))),
                Outcome::Running => (RUNNING.mix(0.5), Some(RUNNING.stroke_width(1))),
            };
            root.draw(&Rectangle::new(corners, fill.filled()))
                .map_err(draw_err)?;
            if a.outcome == Outcome::Lost {
                for (from, to) in hatch(corners, 5) {
                    root.draw(&PathElement::new(vec![from, to], LOST.mix(0.7)))
                        .map_err(draw_err)?;
                }
            }
            if let Some(outline) = outline {
                root.draw(&Rectangle::new(corners, outline))
                    .map_err(draw_err)?;
            }
            let name = format!(
                "{}{}",
                if a.phase == PhaseName::Map { 'm' } else { 'r' },
                a.task
            );
            if lane_px >= 16 && x1 - x0 >= 7 * name.len() as i32 + 6 {
                let ink: &'static RGBColor = if a.outcome == Outcome::Committed {
                    &WHITE
                } else {
                    &INK
                };
                let text = Text::new(
                    name,
                    ((x0 + x1) / 2, (y0 + y1) / 2),
                    task_style.clone().color(ink),
                );
                root.draw(&text).map_err(draw_err)?;
            }
            if a.backup {
                // A black triangle on the attempt's top-left corner, pointing up.
                let size = (lane_px / 4).clamp(2, 5);
                let marker = TriangleMarker::new((x0 + size, y0), size, BLACK.filled());
                root.draw(&marker).map_err(draw_err)?;
            }
        }

        for (i, p) in report.phases.iter().enumerate() {
            let x = col(p.end_us);
            root.draw(&PathElement::new(
                vec![(x, top - 8), (x, bottom)],
                RGBColor(0x55, 0x55, 0x55),
            ))
            .map_err(draw_err)?;
            let what = match p.phase {
                PhaseName::Map => "map",
                PhaseName::Reduce => "reduce",
            };
            let label = format!("{what} phase end {}", human_us(p.end_us));
            // Right of the line, or left of it near the right edge; alternate heights.
            let (anchor_x, h) = if x > right - 150 {
                (x - 4, HPos::Right)
            } else {
                (x + 4, HPos::Left)
            };
            let y = top - 22 + 11 * (i as i32 % 2);
            let style = text_style(11.0, &RGBColor(0x44, 0x44, 0x44), h, VPos::Top);
            root.draw(&Text::new(label, (anchor_x, y), style))
                .map_err(draw_err)?;
        }
        if report.attempts.is_empty() {
            no_data(&root, (left + right) / 2, (top + bottom) / 2)?;
        }
        root.present().map_err(draw_err)?;
    }
    Ok(svg)
}

/// 45° hatch lines clipped to the pixel rectangle `corners`, `step` px apart.
fn hatch(corners: [(i32, i32); 2], step: i32) -> Vec<((i32, i32), (i32, i32))> {
    let [(x0, y0), (x1, y1)] = corners;
    let (w, h) = (x1 - x0, y1 - y0);
    if w <= 0 || h <= 0 {
        return Vec::new();
    }
    // Lines s + t = k, with s = x - x0 in 0..=w and t = y1 - y in 0..=h.
    (1..)
        .map(|i| i * step)
        .take_while(|&k| k < w + h)
        .map(|k| {
            let (s_lo, s_hi) = ((k - h).max(0), k.min(w));
            ((x0 + s_lo, y1 - (k - s_lo)), (x0 + s_hi, y1 - (k - s_hi)))
        })
        .collect()
}

/// "no data" in the middle of a plot.
fn no_data(root: &DrawingArea<SVGBackend<'_>, Shift>, x: i32, y: i32) -> Result<(), String> {
    let style = text_style(
        14.0,
        &RGBColor(0x88, 0x88, 0x88),
        HPos::Center,
        VPos::Center,
    );
    root.draw(&Text::new("no data", (x, y), style))
        .map_err(draw_err)
}

/// The three stacked rate plots.
fn rates_svg(report: &Report, x_end: f64) -> Plot {
    let rates = &report.rates;
    let series: [(&str, &[u64], RGBColor); 3] = [
        ("input", &rates.input, MAP),
        ("shuffle", &rates.shuffle, PALETTE[3]),
        ("output", &rates.output, REDUCE),
    ];
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, 3 * 160)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        for (area, (name, buckets, color)) in root.split_evenly((3, 1)).iter().zip(series) {
            // MB/s of a bucket = bytes / bucket µs; drawn as steps.
            let points: Vec<(f64, f64)> = if rates.bucket_us == 0 {
                Vec::new()
            } else {
                let width = rates.bucket_us as f64 / 1e6;
                buckets
                    .iter()
                    .enumerate()
                    .flat_map(|(i, &bytes)| {
                        let mb_s = bytes as f64 / rates.bucket_us as f64;
                        [(i as f64 * width, mb_s), ((i + 1) as f64 * width, mb_s)]
                    })
                    .collect()
            };
            let peak = points.iter().map(|p| p.1).fold(0.0, f64::max);
            let y_end = if peak > 0.0 { peak * 1.2 } else { 1.0 };
            let mut chart = ChartBuilder::on(area)
                .margin_top(10)
                .margin_bottom(4)
                .margin_left(8)
                .margin_right(RIGHT_MARGIN)
                .x_label_area_size(26)
                .y_label_area_size(LABEL_AREA)
                .build_cartesian_2d(0.0..x_end, 0.0..y_end)
                .map_err(draw_err)?;
            chart
                .configure_mesh()
                .x_labels(14)
                .y_labels(4)
                .x_label_formatter(&|s| seconds_label(*s))
                .y_label_formatter(&|v| trim_zeros(&format!("{v:.1}")))
                .light_line_style(WHITE)
                .bold_line_style(RULE.mix(0.6))
                .label_style(font(12.0))
                .draw()
                .map_err(draw_err)?;
            if let Some(&(x0, _)) = points.first() {
                let area_series = AreaSeries::new(
                    std::iter::once((x0, 0.0)).chain(points.iter().copied()),
                    0.0,
                    color.mix(0.3),
                )
                .border_style(color.stroke_width(2));
                chart.draw_series(area_series).map_err(draw_err)?;
            }
            // The series' name in the label area, like the timeline's worker names.
            let (px_x, px_y) = chart.plotting_area().get_pixel_range();
            let mid = (px_y.start + px_y.end) / 2;
            let title = text_style(14.0, &INK, HPos::Right, VPos::Bottom);
            root.draw(&Text::new(name.to_owned(), (px_x.start - 56, mid), title))
                .map_err(draw_err)?;
            let unit = text_style(12.0, &RGBColor(0x66, 0x66, 0x66), HPos::Right, VPos::Top);
            root.draw(&Text::new("MB/s", (px_x.start - 56, mid + 3), unit))
                .map_err(draw_err)?;
            let total: u128 = buckets.iter().map(|&b| u128::from(b)).sum();
            let note = if points.is_empty() {
                "no data".to_owned()
            } else {
                format!(
                    "{} in all, peak {}",
                    human_bytes(total),
                    human_mb_per_s(peak)
                )
            };
            let style = text_style(12.0, &INK, HPos::Right, VPos::Top);
            root.draw(&Text::new(note, (px_x.end - 6, px_y.start + 3), style))
                .map_err(draw_err)?;
        }
        root.present().map_err(draw_err)?;
    }
    Ok(svg)
}

/// One duration histogram's percentile curve: `(log10(1/(1-p)), ms)` points.
struct Curve {
    name: String,
    points: Vec<(f64, f64)>,
}

/// Width of the percentile plot's legend, right of the plot, px.
const CURVE_LEGEND: u32 = 200;

/// The percentile plot of every duration histogram with two samples or more.
fn percentiles_svg(report: &Report) -> Plot {
    let decoded: Vec<(String, Histogram<u64>)> = report
        .histograms
        .iter()
        .filter(|n| n.is_duration() && n.percentiles.count > 1)
        .filter_map(|n| n.histogram().ok().map(|h| (n.name.clone(), h)))
        .filter(|(_, h)| h.len() > 1)
        .collect();
    // Decades of the x axis: enough for the biggest histogram's resolution, 4 (99.99%) at least.
    let most = decoded.iter().map(|(_, h)| h.len()).max().unwrap_or(1);
    let decades = ((most as f64).log10().ceil() as i32).clamp(4, 6);
    let x_end = f64::from(decades);
    let curves: Vec<Curve> = decoded
        .iter()
        .map(|(name, h)| Curve {
            name: name.clone(),
            points: percentile_points(h, x_end),
        })
        .collect();
    let ys = curves.iter().flat_map(|c| c.points.iter().map(|p| p.1));
    let (lo, hi) = ys.fold((f64::INFINITY, 0.0f64), |(lo, hi), y| {
        (lo.min(y), hi.max(y))
    });
    let (y_lo, y_hi) = if lo.is_finite() && hi > 0.0 {
        (lo.max(1e-3) / 1.5, hi * 1.5)
    } else {
        (1e-1, 1e3)
    };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, 440)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(12)
            .margin_right(CURVE_LEGEND)
            .x_label_area_size(44)
            .y_label_area_size(84)
            .build_cartesian_2d(0.0..x_end, (y_lo..y_hi).log_scale())
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .x_labels(decades as usize + 1)
            .x_label_formatter(&|x| percentile_label(*x))
            .y_label_formatter(&|ms| trim_zeros(&human_us((ms * 1e3).round() as u64)))
            .x_desc("percentile")
            .y_desc("latency")
            .light_line_style(RULE.mix(0.2))
            .bold_line_style(RULE.mix(0.7))
            .axis_desc_style(font(13.0))
            .label_style(font(12.0))
            .draw()
            .map_err(draw_err)?;
        let (px_x, px_y) = chart.plotting_area().get_pixel_range();
        let legend_x = px_x.end + 20;
        for (i, curve) in curves.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            chart
                .draw_series(LineSeries::new(
                    curve.points.iter().copied(),
                    color.stroke_width(2),
                ))
                .map_err(draw_err)?;
            let y = px_y.start + 8 + 20 * i as i32;
            root.draw(&PathElement::new(
                vec![(legend_x, y), (legend_x + 22, y)],
                color.stroke_width(3),
            ))
            .map_err(draw_err)?;
            let label = text_style(12.0, &INK, HPos::Left, VPos::Center);
            root.draw(&Text::new(curve.name.clone(), (legend_x + 30, y), label))
                .map_err(draw_err)?;
        }
        if curves.is_empty() {
            no_data(
                &root,
                (px_x.start + px_x.end) / 2,
                (px_y.start + px_y.end) / 2,
            )?;
        }
        root.present().map_err(draw_err)?;
    }
    Ok(svg)
}

/// `h`'s percentile ticks as `(log10(1/(1-q)), ms)`, the maximum at `x_end`.
fn percentile_points(h: &Histogram<u64>, x_end: f64) -> Vec<(f64, f64)> {
    let mut points: Vec<(f64, f64)> = Vec::new();
    for v in h.iter_quantiles(super::hgrm::TICKS_PER_HALF_DISTANCE) {
        let q = v.quantile_iterated_to();
        let x = if q < 1.0 {
            (-(1.0 - q).log10()).min(x_end)
        } else {
            x_end
        };
        let ms = v.value_iterated_to().max(1) as f64 / 1e3;
        points.push((x, ms));
    }
    if let Some(&(x, ms)) = points.last() {
        if x < x_end {
            points.push((x_end, ms));
        }
    }
    points
}

/// `x` decades of `1/(1-p)` as a percentile: 0 → `0%`, 2 → `99%`, 4 → `99.99%`.
fn percentile_label(x: f64) -> String {
    if (x - x.round()).abs() > 1e-6 || x < -1e-6 {
        return String::new();
    }
    match x.round() as usize {
        0 => "0%".into(),
        1 => "90%".into(),
        2 => "99%".into(),
        d => format!("99.{}%", "9".repeat(d - 2)),
    }
}

/// A tick label of seconds: no trailing zeros (`0`, `2.5`, `120`).
fn seconds_label(s: f64) -> String {
    trim_zeros(&format!("{s:.6}"))
}

/// `1.00s` → `1s`, `12.50` → `12.5`, `120` → `120`: trailing zeros of a fraction dropped,
/// whatever unit follows.
fn trim_zeros(text: &str) -> String {
    let digits_end = text
        .rfind(|c: char| c.is_ascii_digit())
        .map_or(0, |i| i + 1);
    let (number, unit) = text.split_at(digits_end);
    if !number.contains('.') {
        return text.to_owned();
    }
    let number = number.trim_end_matches('0').trim_end_matches('.');
    format!("{number}{unit}")
}

/// The sans-serif font at `px` CSS pixels (plotters' SVG backend divides sizes by 1.24).
fn font(px: f64) -> FontDesc<'static> {
    FontDesc::new(FontFamily::SansSerif, px * 1.24, FontStyle::Normal)
}

/// [`font`] in `color`, anchored at `(h, v)`.
fn text_style(px: f64, color: &'static RGBColor, h: HPos, v: VPos) -> TextStyle<'static> {
    TextStyle::from(font(px)).color(color).pos(Pos::new(h, v))
}

fn summary_section(page: &mut String, r: &Report) {
    let phase_end = |phase: PhaseName| {
        r.phases
            .iter()
            .find(|p| p.phase == phase)
            .map_or_else(|| "&ndash;".to_owned(), |p| esc(&human_us(p.end_us)))
    };
    let count = |outcome: Outcome| r.attempts.iter().filter(|a| a.outcome == outcome).count();
    let backups = r.attempts.iter().filter(|a| a.backup).count();
    let backups_won = r
        .attempts
        .iter()
        .filter(|a| a.backup && a.outcome == Outcome::Committed)
        .count();
    let input = r.counter(COUNTER_INPUT_BYTES);
    let output = r.counter(COUNTER_OUTPUT_BYTES);
    let rows: [(&str, String); 11] = [
        ("job", esc(&r.job)),
        ("started", esc(&utc(r.started_unix_ms))),
        (
            "wall time",
            format!(
                "{} ({:.3} s)",
                esc(&human_us(r.wall_us)),
                r.wall_us as f64 / 1e6
            ),
        ),
        (
            "map tasks / reduce tasks",
            format!("{} / {}", r.map_tasks, r.reduce_tasks),
        ),
        (
            "workers / slots",
            format!(
                "{} / {}",
                r.workers.len(),
                r.workers.iter().map(|w| u64::from(w.slots)).sum::<u64>()
            ),
        ),
        ("input", format!("{} ({input} bytes)", human_bytes(input))),
        (
            "output",
            format!("{} ({output} bytes)", human_bytes(output)),
        ),
        ("input throughput", human_mb_per_s(r.input_mb_per_s())),
        (
            "map phase end / reduce phase end",
            format!(
                "{} / {}",
                phase_end(PhaseName::Map),
                phase_end(PhaseName::Reduce)
            ),
        ),
        (
            "attempts: committed / failed / lost / cancelled",
            format!(
                "{} / {} / {} / {}",
                count(Outcome::Committed),
                count(Outcome::Failed),
                count(Outcome::Lost),
                count(Outcome::Cancelled)
            ),
        ),
        (
            "backups launched / won",
            format!("{backups} / {backups_won}"),
        ),
    ];
    page.push_str("<h2 id=\"summary\">Summary</h2>\n<table>\n");
    for (k, v) in rows {
        let _ = writeln!(
            page,
            "<tr><th class=\"l\">{k}</th><td class=\"l\">{v}</td></tr>"
        );
    }
    let _ = write!(page, "</table>\n<pre>{}</pre>\n", esc(&r.summary()));
}

fn histograms_section(page: &mut String, r: &Report) {
    page.push_str("<h2 id=\"histograms\">Histograms</h2>\n<table>\n<tr><th class=\"l\">histogram</th><th class=\"l\">unit</th><th>count</th><th>min</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th><th class=\"l\">file</th></tr>\n");
    for h in &r.histograms {
        let p = &h.percentiles;
        let cell = |v: u64| {
            if p.count == 0 {
                "&ndash;".to_owned()
            } else {
                esc(&human_value(v, &h.unit))
            }
        };
        let file = format!("{}.hgrm", dir::file_stem(&h.name));
        let _ = writeln!(
            page,
            "<tr><td class=\"l\">{}</td><td class=\"l\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"l\"><a href=\"{}\">{}</a></td></tr>",
            esc(&h.name),
            esc(&h.unit),
            p.count,
            cell(p.min),
            cell(p.p50),
            cell(p.p90),
            cell(p.p99),
            cell(p.p999),
            cell(p.max),
            esc(&file),
            esc(&file),
        );
    }
    page.push_str("</table>\n");
}

fn counters_section(page: &mut String, r: &Report) {
    page.push_str("<h2 id=\"counters\">Counters</h2>\n<table>\n<tr><th class=\"l\">counter</th><th>value</th><th></th></tr>\n");
    for (name, &value) in &r.counters {
        let human = if name.ends_with("bytes") {
            human_bytes(value)
        } else {
            String::new()
        };
        let _ = writeln!(
            page,
            "<tr><td class=\"l\">{}</td><td>{}</td><td>{}</td></tr>",
            esc(name),
            grouped(value),
            esc(&human)
        );
    }
    page.push_str("</table>\n");
}

fn workers_section(page: &mut String, r: &Report) {
    page.push_str("<h2 id=\"workers\">Workers</h2>\n<table>\n<tr><th>id</th><th class=\"l\">address</th><th>pid</th><th>slots</th><th>attempts</th><th>busy</th></tr>\n");
    for w in &r.workers {
        let mine = r.attempts.iter().filter(|a| a.worker == w.id);
        let busy: u64 = mine
            .clone()
            .map(|a| a.end_us.saturating_sub(a.start_us))
            .sum();
        let _ = writeln!(
            page,
            "<tr><td>{}</td><td class=\"l\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            w.id,
            esc(&w.addr),
            w.pid,
            w.slots,
            mine.count(),
            esc(&human_us(busy)),
        );
    }
    page.push_str("</table>\n");
}

fn attempts_section(page: &mut String, r: &Report) {
    let open = if r.attempts.len() <= 500 { " open" } else { "" };
    let _ = write!(
        page,
        "<h2 id=\"attempts\">Attempts</h2>\n<details{open}><summary>{} attempts</summary>\n<table>\n\
         <tr><th>attempt</th><th class=\"l\">phase</th><th>task</th><th>worker</th><th>start s</th><th>end s</th><th>duration</th><th class=\"l\">outcome</th><th class=\"l\">backup</th></tr>\n",
        r.attempts.len()
    );
    for a in &r.attempts {
        let outcome = match a.outcome {
            Outcome::Committed => "committed",
            Outcome::Failed => "failed",
            Outcome::Cancelled => "cancelled",
            Outcome::Lost => "lost",
            Outcome::Running => "running",
        };
        let phase = match a.phase {
            PhaseName::Map => "map",
            PhaseName::Reduce => "reduce",
        };
        let _ = writeln!(
            page,
            "<tr class=\"{outcome}\"><td>{}</td><td class=\"l\">{phase}</td><td>{}</td><td>{}</td><td>{:.3}</td><td>{:.3}</td><td>{}</td><td class=\"l\">{outcome}</td><td class=\"l\">{}</td></tr>",
            a.attempt,
            a.task,
            a.worker,
            a.start_us as f64 / 1e6,
            a.end_us as f64 / 1e6,
            esc(&human_us(a.end_us.saturating_sub(a.start_us))),
            if a.backup { "backup" } else { "" },
        );
    }
    page.push_str("</table>\n</details>\n");
}

/// `n` with thin spaces between groups of three digits.
fn grouped(n: u128) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() * 2);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push_str("&#8201;");
        }
        out.push(c);
    }
    out
}

/// Milliseconds since the Unix epoch as `YYYY-MM-DD HH:MM:SS.mmm UTC`.
fn utc(unix_ms: u64) -> String {
    let (days, ms) = (unix_ms / 86_400_000, unix_ms % 86_400_000);
    // Howard Hinnant's civil_from_days, for days since 1970-01-01 (never negative here).
    let z = days as i64 + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:03} UTC",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1_000 % 60,
        ms % 1_000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        assert_eq!(
            esc("<a href=\"x\">&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00.000 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00.000 UTC");
        assert_eq!(utc(1_767_225_599_999), "2025-12-31 23:59:59.999 UTC");
    }

    #[test]
    fn labels() {
        assert_eq!(percentile_label(0.0), "0%");
        assert_eq!(percentile_label(1.0), "90%");
        assert_eq!(percentile_label(2.0), "99%");
        assert_eq!(percentile_label(4.0), "99.99%");
        assert_eq!(percentile_label(2.5), "");
        assert_eq!(seconds_label(2.5), "2.5");
        assert_eq!(seconds_label(10.0), "10");
        assert_eq!(seconds_label(0.0), "0");
        assert_eq!(trim_zeros("1.00s"), "1s");
        assert_eq!(trim_zeros("10.0ms"), "10ms");
        assert_eq!(trim_zeros("1.50ms"), "1.5ms");
        assert_eq!(trim_zeros("812µs"), "812µs");
        assert_eq!(trim_zeros("100"), "100");
        assert_eq!(grouped(1234567), "1&#8201;234&#8201;567");
        assert_eq!(grouped(999), "999");
    }

    #[test]
    fn hatch_stays_inside() {
        let lines = hatch([(10, 20), (40, 30)], 5);
        assert!(!lines.is_empty());
        for ((ax, ay), (bx, by)) in lines {
            for (x, y) in [(ax, ay), (bx, by)] {
                assert!(
                    (10..=40).contains(&x) && (20..=30).contains(&y),
                    "({x}, {y})"
                );
            }
        }
        assert!(hatch([(0, 0), (0, 5)], 5).is_empty());
    }
}
