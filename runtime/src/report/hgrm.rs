//! HdrHistogram's percentile-distribution text (`.hgrm`), byte for byte as Java's
//! `AbstractHistogram.outputPercentileDistribution(out, 5, 1.0)` prints it, so the files load
//! in the usual HdrHistogram plotters and diff cleanly against other tools' output.
//!
//! ```text
//!        Value     Percentile TotalCount 1/(1-Percentile)
//!
//!      812.000 0.000000000000          1           1.00
//!     1503.000 0.100000000000        301           1.11
//! ...
//!    95231.000 1.000000000000       3000
//! #[Mean    =     9876.543, StdDeviation   =     4321.000]
//! #[Max     =    95231.000, Total count    =         3000]
//! #[Buckets =           17, SubBuckets     =         2048]
//! ```
//!
//! Rows come from the percentile iterator with 5 ticks per half distance to 100%; values are
//! in the histogram's raw unit (output scaling ratio 1). Numbers are formatted like Java's
//! `Formatter`: the shortest decimal that round-trips, rounded half-up to the precision.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

use crate::{Error, Result};

/// Percentile ticks per half distance to 100%, as in Java's examples and `HistogramLogProcessor`.
pub const TICKS_PER_HALF_DISTANCE: u32 = 5;

/// `h`'s percentile distribution in the `.hgrm` text format (see the module doc).
pub fn percentile_distribution(h: &Histogram<u64>) -> String {
    let digits = usize::from(h.sigfig());
    let mut out = String::new();
    // `write!` to a String cannot fail; the results are ignored below for that reason.
    let _ = write!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    if !h.is_empty() {
        let mut total = 0u64;
        for v in h.iter_quantiles(TICKS_PER_HALF_DISTANCE) {
            total = total.saturating_add(v.count_since_last_iteration());
            let value = java_fixed(v.value_iterated_to() as f64, digits);
            let q = v.quantile_iterated_to();
            let level = java_fixed(q, 12);
            #[allow(clippy::float_cmp)] // Java compares the level to exactly 100.0 too.
            if q != 1.0 {
                let inverse = java_fixed(1.0 / (1.0 - q), 2);
                let _ = writeln!(out, "{value:>12} {level:>2} {total:>10} {inverse:>14}");
            } else {
                let _ = writeln!(out, "{value:>12} {level:>2} {total:>10}");
            }
        }
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:>12}, StdDeviation   = {:>12}]",
        java_fixed(h.mean(), digits),
        java_fixed(h.stdev(), digits)
    );
    let _ = writeln!(
        out,
        "#[Max     = {:>12}, Total count    = {:>12}]",
        java_fixed(h.max() as f64, digits),
        h.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        h.buckets(),
        sub_bucket_count(h.sigfig())
    );
    out
}

/// Parses `.hgrm` text back into `(value, percentile, total count)` rows (percentile as a
/// fraction, 0..=1). The header and `#[` footer lines are checked for presence and skipped.
pub fn parse_hgrm(text: &str) -> Result<Vec<(f64, f64, u64)>> {
    let bad = |line: usize, why: String| Error::Report(format!("hgrm line {line}: {why}"));
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));
    match lines.by_ref().find(|(_, l)| !l.trim().is_empty()) {
        Some((_, l))
            if l.split_whitespace().eq([
                "Value",
                "Percentile",
                "TotalCount",
                "1/(1-Percentile)",
            ]) => {}
        Some((n, l)) => return Err(bad(n, format!("expected the header, found {l:?}"))),
        None => return Err(Error::Report("hgrm: empty".into())),
    }
    let mut rows = Vec::new();
    let mut footer = false;
    for (n, line) in lines {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with("#[") {
            footer = true;
            continue;
        }
        if footer {
            return Err(bad(n, "row after the footer".into()));
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if !(3..=4).contains(&fields.len()) {
            return Err(bad(
                n,
                format!("expected 3 or 4 fields, found {}", fields.len()),
            ));
        }
        let value: f64 = fields[0]
            .parse()
            .map_err(|e| bad(n, format!("value {:?}: {e}", fields[0])))?;
        let percentile: f64 = fields[1]
            .parse()
            .map_err(|e| bad(n, format!("percentile {:?}: {e}", fields[1])))?;
        let count: u64 = fields[2]
            .parse()
            .map_err(|e| bad(n, format!("total count {:?}: {e}", fields[2])))?;
        if !(0.0..=1.0).contains(&percentile) {
            return Err(bad(n, format!("percentile {percentile} is outside 0..=1")));
        }
        rows.push((value, percentile, count));
    }
    if !footer {
        return Err(Error::Report(
            "hgrm: no `#[` footer (truncated file?)".into(),
        ));
    }
    Ok(rows)
}

/// Java's `subBucketCount` for a precision: `2^ceil(log2(2 * 10^sigfig))`.
fn sub_bucket_count(sigfig: u8) -> u64 {
    let largest_single_unit = 2 * 10u64.pow(u32::from(sigfig));
    1 << (u64::BITS - (largest_single_unit - 1).leading_zeros())
}

/// `x` as Java's `String.format("%.{decimals}f", x)`: the shortest round-tripping decimal,
/// rounded half-up (Rust's `{:.N}` rounds the exact binary value half-to-even instead, so
/// `0.125` would print `0.12` where Java prints `0.13`).
pub(crate) fn java_fixed(x: f64, decimals: usize) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    // Rust's `Display` for f64 is the shortest round-tripping decimal, never in exponent form.
    let shortest = format!("{}", x.abs());
    let (int, frac) = shortest.split_once('.').unwrap_or((&shortest, ""));
    let mut digits: Vec<u8> = int
        .bytes()
        .chain(frac.bytes().chain(std::iter::repeat(b'0')).take(decimals))
        .collect();
    if frac.as_bytes().get(decimals).is_some_and(|&d| d >= b'5') {
        // Half-up: add one unit in the last kept place, carrying leftwards.
        let mut i = digits.len();
        loop {
            if i == 0 {
                digits.insert(0, b'1');
                break;
            }
            i -= 1;
            if digits[i] == b'9' {
                digits[i] = b'0';
            } else {
                digits[i] += 1;
                break;
            }
        }
    }
    let int_len = digits.len() - decimals;
    let mut out = String::with_capacity(digits.len() + 2);
    if x.is_sign_negative() {
        out.push('-');
    }
    out.extend(digits[..int_len].iter().map(|&d| char::from(d)));
    if decimals > 0 {
        out.push('.');
        out.extend(digits[int_len..].iter().map(|&d| char::from(d)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::new_histogram;

    #[test]
    fn java_rounding() {
        assert_eq!(java_fixed(0.125, 2), "0.13");
        assert_eq!(java_fixed(1.005, 2), "1.01");
        assert_eq!(java_fixed(9.9996, 3), "10.000");
        assert_eq!(java_fixed(999.5, 0), "1000");
        assert_eq!(java_fixed(812.0, 3), "812.000");
        assert_eq!(java_fixed(0.1, 12), "0.100000000000");
        assert_eq!(java_fixed(1.0 / 0.9, 2), "1.11");
        assert_eq!(java_fixed(-2.5, 1), "-2.5");
        assert_eq!(java_fixed(1e21, 1), "1000000000000000000000.0");
        assert_eq!(java_fixed(3e-7, 3), "0.000");
    }

    #[test]
    fn sub_buckets_match_java() {
        assert_eq!(sub_bucket_count(3), 2048);
        assert_eq!(sub_bucket_count(2), 256);
        assert_eq!(sub_bucket_count(1), 32);
        assert_eq!(sub_bucket_count(0), 2);
        assert_eq!(sub_bucket_count(5), 262_144);
    }

    /// The layout of Java's output for 1..=10000, one sample each, 3 significant figures.
    #[test]
    fn matches_java_layout() {
        let mut h = new_histogram();
        for v in 1..=10_000u64 {
            h.record(v).unwrap();
        }
        let text = percentile_distribution(&h);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "       Value     Percentile TotalCount 1/(1-Percentile)"
        );
        assert_eq!(lines[1], "");
        assert_eq!(
            lines[2],
            "       1.000 0.000000000000          1           1.00"
        );
        assert_eq!(
            lines[3],
            "    1000.000 0.100000000000       1000           1.11"
        );
        assert!(
            lines.contains(&"    5003.000 0.500000000000       5003           2.00"),
            "{text}"
        );
        // Java rounds the shortest decimal half-up: 0.9998291015625 prints ...563, not ...562.
        assert!(
            lines.contains(&"    9999.000 0.999829101563       9999        5851.43"),
            "{text}"
        );
        let last_row = lines[lines.len() - 4];
        assert_eq!(last_row, "   10007.000 1.000000000000      10000");
        assert_eq!(
            lines[lines.len() - 3],
            "#[Mean    =     5000.898, StdDeviation   =     2886.893]"
        );
        assert_eq!(
            lines[lines.len() - 2],
            "#[Max     =    10007.000, Total count    =        10000]"
        );
        assert_eq!(
            lines[lines.len() - 1],
            "#[Buckets =            4, SubBuckets     =         2048]"
        );
    }

    #[test]
    fn parses_back() {
        let mut h = new_histogram();
        for v in 1..=3_000u64 {
            h.record(v * v).unwrap();
        }
        let rows = parse_hgrm(&percentile_distribution(&h)).unwrap();
        assert!(rows
            .windows(2)
            .all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1 && w[0].2 <= w[1].2));
        let median = rows.iter().find(|r| r.1 >= 0.5).unwrap();
        assert_eq!(median.0 as u64, h.value_at_quantile(0.5));
        let last = rows.last().unwrap();
        assert_eq!((last.0 as u64, last.1, last.2), (h.max(), 1.0, 3_000));
    }

    #[test]
    fn empty_histogram_has_header_and_footer_only() {
        let text = percentile_distribution(&new_histogram());
        assert!(
            text.contains("#[Max     =        0.000, Total count    =            0]"),
            "{text}"
        );
        assert_eq!(parse_hgrm(&text).unwrap(), vec![]);
    }

    #[test]
    fn rejects_malformed() {
        assert!(parse_hgrm("").is_err());
        assert!(parse_hgrm("nope\n").is_err());
        let good = percentile_distribution(&new_histogram());
        let truncated = good.lines().take(2).collect::<Vec<_>>().join("\n");
        assert!(parse_hgrm(&truncated).is_err());
        let bad_row = good.replacen("\n\n", "\n\n   1.000 x 3 1.00\n", 1);
        let err = parse_hgrm(&bad_row).unwrap_err().to_string();
        assert!(err.contains("line 3"), "{err}");
    }
}
