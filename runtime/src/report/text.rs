//! Human-readable numbers and the end-of-job summary ([`Report::summary`]).
//!
//! Durations keep three significant digits and pick their unit (`812µs`, `12.3ms`, `1.52s`);
//! rates are decimal MB/s (10^6 bytes, like `dd` and most storage benchmarks); byte counts in
//! the summary's first line stay exact, so scripts can parse them.

use std::fmt::Write as _;

use super::{NamedHistogram, Report};

/// Counter of map input bytes.
pub const COUNTER_INPUT_BYTES: &str = "map.input.bytes";
/// Counter of output bytes.
pub const COUNTER_OUTPUT_BYTES: &str = "output.bytes";

/// The groups (the part of a counter's name before the first `.`) of the engine's own
/// counters; the summary lists every other counter as the job's own.
pub const ENGINE_COUNTER_GROUPS: [&str; 7] = [
    "attempts", "backups", "map", "output", "reduce", "shuffle", "workers",
];

/// The summary line of a job's own counters, those outside [`ENGINE_COUNTER_GROUPS`]
/// (`counters: bad.lines 2, grep.matches 7`), or `None` if it has none.
pub fn own_counters<'a>(counters: impl Iterator<Item = (&'a str, u128)>) -> Option<String> {
    let own: Vec<String> = counters
        .filter(|(name, _)| {
            let group = name.split('.').next().unwrap_or(name);
            !ENGINE_COUNTER_GROUPS.contains(&group)
        })
        .map(|(name, n)| format!("{name} {n}"))
        .collect();
    (!own.is_empty()).then(|| format!("counters: {}", own.join(", ")))
}

impl Report {
    /// Counter `name`, 0 when absent.
    pub fn counter(&self, name: &str) -> u128 {
        self.counters.get(name).copied().unwrap_or(0)
    }

    /// Map input bytes per second of wall time, in MB/s (0 for a job that took no time).
    pub fn input_mb_per_s(&self) -> f64 {
        mb_per_s(self.counter(COUNTER_INPUT_BYTES), self.wall_us)
    }

    /// The summary printed on stderr at the end of every job: totals, attempts and backups,
    /// the job's own counters (`counters: bad.lines 2, ...`, if it has any), then one row of
    /// percentiles per non-empty histogram. Every line starts with
    /// `quern JOB: `; there is no trailing newline.
    ///
    /// ```text
    /// quern wc: 8 map tasks, 2 reduce tasks, 2000000 records in, 52000 bytes out, 12.35 s (81.0 MB/s in)
    /// quern wc: attempts: 9 map, 2 reduce, 1 failed, 0 lost; backups: 1 launched, 1 won
    /// quern wc: histogram         unit    count     p50     p90     p99   p99.9     max
    /// quern wc: map_attempt       us          8   1.52s   2.01s   2.40s   2.40s   2.40s
    /// ```
    pub fn summary(&self) -> String {
        let prefix = format!("quern {}: ", self.job);
        let mut lines = vec![headline(
            u64::from(self.map_tasks),
            u64::from(self.reduce_tasks),
            |name| self.counter(name),
            self.wall_us,
        )];
        if self.counter("attempts.map") > 0 {
            lines.push(format!(
                "attempts: {} map, {} reduce, {} failed, {} lost; backups: {} launched, {} won",
                self.counter("attempts.map"),
                self.counter("attempts.reduce"),
                self.counter("attempts.failed"),
                self.counter("attempts.lost"),
                self.counter("backups.launched"),
                self.counter("backups.won"),
            ));
        }
        if let Some(line) = own_counters(self.counters.iter().map(|(n, v)| (n.as_str(), *v))) {
            lines.push(line);
        }
        for w in &self.workers {
            if let Some(fault) = &w.work_dir_fault {
                lines.push(format!(
                    "worker {} ({}): work dir failed: {fault}; it was given no map tasks until it had room",
                    w.id, w.addr
                ));
            }
        }
        let rows: Vec<[String; 8]> = self
            .histograms
            .iter()
            .filter(|h| h.percentiles.count > 0)
            .map(|h| {
                let p = &h.percentiles;
                [
                    h.name.clone(),
                    h.unit.clone(),
                    p.count.to_string(),
                    human_value(p.p50, &h.unit),
                    human_value(p.p90, &h.unit),
                    human_value(p.p99, &h.unit),
                    human_value(p.p999, &h.unit),
                    human_value(p.max, &h.unit),
                ]
            })
            .collect();
        if !rows.is_empty() {
            let header = [
                "histogram",
                "unit",
                "count",
                "p50",
                "p90",
                "p99",
                "p99.9",
                "max",
            ]
            .map(String::from);
            let mut widths = header.clone().map(|h| h.chars().count());
            for row in &rows {
                for (w, cell) in widths.iter_mut().zip(row) {
                    *w = (*w).max(cell.chars().count());
                }
            }
            for row in std::iter::once(&header).chain(&rows) {
                let mut line = String::new();
                for (i, (cell, &w)) in row.iter().zip(&widths).enumerate() {
                    let pad = " ".repeat(w - cell.chars().count());
                    // Name and unit left-aligned, numbers right-aligned; two spaces between.
                    let _ = match i {
                        0 | 1 => write!(line, "{cell}{pad}  "),
                        _ => write!(line, "{pad}{cell}  "),
                    };
                }
                lines.push(line.trim_end().to_owned());
            }
        }
        lines
            .iter()
            .map(|l| format!("{prefix}{l}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The summary's first line, after its `quern JOB: ` prefix (scripts and tests parse it):
/// tasks, records in, bytes out, wall time and input throughput, from the job's counters.
/// Also printed for `--sequential` and `--in-process` runs, which have no [`Report`].
pub fn headline(
    map_tasks: u64,
    reduce_tasks: u64,
    counter: impl Fn(&str) -> u128,
    wall_us: u64,
) -> String {
    format!(
        "{map_tasks} map tasks, {reduce_tasks} reduce tasks, {} records in, {} bytes out, {:.2} s ({:.1} MB/s in)",
        counter("map.input.records"),
        counter(COUNTER_OUTPUT_BYTES),
        wall_us as f64 / 1e6,
        mb_per_s(counter(COUNTER_INPUT_BYTES), wall_us),
    )
}

/// `bytes` per `wall_us` in MB/s (0 for no time).
fn mb_per_s(bytes: u128, wall_us: u64) -> f64 {
    if wall_us == 0 {
        return 0.0;
    }
    bytes as f64 / wall_us as f64
}

impl NamedHistogram {
    /// True when the values are durations in microseconds.
    pub fn is_duration(&self) -> bool {
        is_micros(&self.unit)
    }
}

/// A value of a histogram with `unit`, for humans: durations (`us`/`µs`) with [`human_us`],
/// `KiB/s` as MB/s, anything else as `VALUE UNIT`.
pub fn human_value(value: u64, unit: &str) -> String {
    if is_micros(unit) {
        human_us(value)
    } else if unit == "KiB/s" {
        human_mb_per_s(value as f64 * 1024.0 / 1e6)
    } else if unit.is_empty() {
        value.to_string()
    } else {
        format!("{value} {unit}")
    }
}

/// Microseconds with three significant digits and a fitting unit: `0µs`, `812µs`,
/// `1.23ms`, `12.3ms`, `123ms`, `1.52s`, `15.2s`, `152s`, `1234s`.
pub fn human_us(us: u64) -> String {
    if us < 1_000 {
        return format!("{us}µs");
    }
    let ms = us as f64 / 1e3;
    if ms < 999.5 {
        return format!("{}ms", three_digits(ms));
    }
    format!("{}s", three_digits(us as f64 / 1e6))
}

/// A rate in MB/s with three significant digits (`0.52 MB/s`, `812 MB/s`, `1204 MB/s`).
pub fn human_mb_per_s(mb_per_s: f64) -> String {
    format!("{} MB/s", three_digits(mb_per_s))
}

/// A byte count in decimal units with three significant digits (`812 B`, `1.52 GB`).
pub fn human_bytes(bytes: u128) -> String {
    const UNITS: [&str; 6] = ["kB", "MB", "GB", "TB", "PB", "EB"];
    if bytes < 1_000 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1e3;
    let mut unit = 0;
    // Switch up before rounding would print "1000": 999.6 kB is shown as 1.00 MB.
    while value >= 999.5 && unit + 1 < UNITS.len() {
        value /= 1e3;
        unit += 1;
    }
    format!("{} {}", three_digits(value), UNITS[unit])
}

/// `x` with three significant digits, never in exponent form, at least the integer part.
fn three_digits(x: f64) -> String {
    let decimals = if x < 9.995 {
        2
    } else if x < 99.95 {
        1
    } else {
        0
    };
    format!("{x:.decimals$}")
}

fn is_micros(unit: &str) -> bool {
    matches!(unit, "us" | "µs")
}

/// `s` escaped for HTML text and attribute values.
pub(crate) fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(human_us(0), "0µs");
        assert_eq!(human_us(812), "812µs");
        assert_eq!(human_us(999), "999µs");
        assert_eq!(human_us(1_234), "1.23ms");
        assert_eq!(human_us(12_345), "12.3ms");
        assert_eq!(human_us(123_456), "123ms");
        assert_eq!(human_us(999_499), "999ms");
        assert_eq!(human_us(999_999), "1.00s");
        assert_eq!(human_us(1_520_000), "1.52s");
        assert_eq!(human_us(15_200_000), "15.2s");
        assert_eq!(human_us(1_234_000_000), "1234s");
    }

    #[test]
    fn rates_and_bytes() {
        assert_eq!(human_value(100_000, "KiB/s"), "102 MB/s");
        assert_eq!(human_value(512, "KiB/s"), "0.52 MB/s");
        assert_eq!(human_value(7, "widgets"), "7 widgets");
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1_000), "1.00 kB");
        assert_eq!(human_bytes(999_600), "1.00 MB");
        assert_eq!(human_bytes(1_520_000_000), "1.52 GB");
    }
}
