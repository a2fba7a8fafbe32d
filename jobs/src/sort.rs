//! `sort`: text lines in the order of `LC_ALL=C sort` with the same options, as a
//! MapReduce job with a sampled range partitioner (TeraSort's plan, over lines).
//!
//! The subset covered is GNU sort's `-k F1[,F2]` (fields, with per-key `n` and `r`), `-t`,
//! `-n`, `-r` and `-u`, with GNU's rules:
//!
//! - Fields: with `-t SEP` a field ends at the next SEP; without it a field starts where
//!   the previous one ended and holds its leading blanks (space and tab) and then non-blanks.
//!   A key without F2 runs to the end of the line; missing fields are empty keys, and a key
//!   whose end is before its start is empty.
//! - A key with modifiers of its own ignores the global `-n` and `-r`; a key without any
//!   takes them. With `-n` and no `-k`, the whole line is a numeric key.
//! - Keys that compare equal fall back to the whole line, bytewise (the last-resort
//!   comparison), reversed by the global `-r`. `-u` disables that fallback when there are
//!   keys, and prints the first line in input order of each run of equal keys.
//! - `-n` (C locale): leading blanks, an optional `-`, digits and an optional `.` fraction;
//!   no `+` and no thousands separator. Anything else is 0, and `-0` equals `0`.
//!
//! Encoding: the map turns each line into one byte string whose bytewise order is GNU's
//! order ([`SortOrder::encode`]): every key is encoded prefix-free (text: `0x00` escaped as
//! `0x00 0x01`, then the terminator `0x00 0x00`; numbers: sign class, digit count, digits),
//! and a reversed key is the complement of its encoding, so the concatenation compares key
//! by key. The last-resort line follows, raw when ascending (it is the last component), else
//! complemented prefix-free. The reducers see lines in key order, and the range partitioner
//! puts ascending key ranges in ascending partitions, so `cat part-*` is sorted.

use quern_runtime::input::ChunkData;
use quern_runtime::SplitInfo;
use quern_runtime::{InputFile, InputFormat, Job, MapContext, Record, ReduceContext, Split};

/// Counter: lines read.
pub const LINES: &str = "sort.lines";

/// One `-k` key, as given on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct KeySpec {
    /// First field (1-based).
    pub start: u64,
    /// Last field (1-based, inclusive); `None`: to the end of the line.
    pub end: Option<u64>,
    /// `n` modifier: compare as a number.
    pub numeric: bool,
    /// `r` modifier: reverse this key's order.
    pub reverse: bool,
}

impl KeySpec {
    /// Parses `F1[MODS][,F2[MODS]]` (GNU's `-k` syntax without `.C` positions). Errors name
    /// what is not supported.
    pub fn parse(spec: &str) -> Result<KeySpec, String> {
        let mut parts = spec.splitn(2, ',');
        let mut key = KeySpec {
            start: 0,
            end: None,
            numeric: false,
            reverse: false,
        };
        let first = parts.next().unwrap_or_default();
        key.start = key.position(spec, first)?;
        if let Some(second) = parts.next() {
            key.end = Some(key.position(spec, second)?);
        }
        Ok(key)
    }

    /// One position: a field number and modifiers (which apply to the whole key).
    fn position(&mut self, spec: &str, pos: &str) -> Result<u64, String> {
        let digits = pos.bytes().take_while(u8::is_ascii_digit).count();
        let (number, mods) = pos.split_at(digits);
        if number.is_empty() {
            return Err(format!(
                "-k {spec:?}: invalid field specification (expected F1[,F2])"
            ));
        }
        let field: u64 = number
            .parse()
            .map_err(|_| format!("-k {spec:?}: field number {number} is too large"))?;
        if field == 0 {
            return Err(format!(
                "-k {spec:?}: field number is zero (fields count from 1)"
            ));
        }
        for m in mods.chars() {
            match m {
                'n' => self.numeric = true,
                'r' => self.reverse = true,
                '.' => {
                    return Err(format!(
                        "-k {spec:?}: character positions (F.C) are not supported; \
                         keys are whole fields"
                    ))
                }
                'b' | 'd' | 'f' | 'g' | 'h' | 'i' | 'M' | 'R' | 'V' => {
                    return Err(format!(
                        "-k {spec:?}: key modifier '{m}' is not supported (supported: n, r)"
                    ))
                }
                _ => {
                    return Err(format!(
                        "-k {spec:?}: invalid key modifier '{m}' (supported: n, r)"
                    ))
                }
            }
        }
        Ok(field)
    }
}

/// A sort job's parameters, as sent to the workers.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct SortParams {
    /// The `-k` keys, in order.
    pub keys: Vec<KeySpec>,
    /// `-t`: the field separator (default: GNU's blank-to-non-blank fields).
    pub separator: Option<u8>,
    /// `-n`: numeric order for the keys without modifiers (or the whole line).
    pub numeric: bool,
    /// `-r`: reverse order for the keys without modifiers, and the last-resort comparison.
    pub reverse: bool,
    /// `-u`: one line (the first in input order) per run of equal keys.
    pub unique: bool,
    /// `R - 1` split points of the encoded keys: partition `p` holds `[cuts[p-1], cuts[p])`.
    pub cuts: Vec<Vec<u8>>,
}

/// A key after GNU's inheritance of the global options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key {
    start: u64,
    end: Option<u64>,
    numeric: bool,
    reverse: bool,
}

/// The order of a sort: its keys and the last-resort comparison, and how lines are encoded
/// into byte strings in that order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortOrder {
    keys: Vec<Key>,
    separator: Option<u8>,
    /// The whole-line comparison after the keys: `Some(reversed)`, or `None` under `-u` with
    /// keys.
    last_resort: Option<bool>,
    unique: bool,
}

// Numeric classes: negative < zero < positive.
const NEGATIVE: u8 = 1;
const ZERO: u8 = 2;
const POSITIVE: u8 = 3;

#[inline]
fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

impl SortOrder {
    /// The order GNU sort uses for these options.
    pub fn new(p: &SortParams) -> SortOrder {
        let mut keys: Vec<Key> = p
            .keys
            .iter()
            .map(|k| {
                let own = k.numeric || k.reverse;
                Key {
                    start: k.start,
                    end: k.end,
                    numeric: if own { k.numeric } else { p.numeric },
                    reverse: if own { k.reverse } else { p.reverse },
                }
            })
            .collect();
        if keys.is_empty() && p.numeric {
            // GNU: global options that change the comparison make the whole line a key.
            keys.push(Key {
                start: 1,
                end: None,
                numeric: true,
                reverse: p.reverse,
            });
        }
        let last_resort = if p.unique && !keys.is_empty() {
            None
        } else {
            Some(p.reverse)
        };
        SortOrder {
            keys,
            separator: p.separator,
            last_resort,
            unique: p.unique,
        }
    }

    /// Appends to `out` the encoding of `line`: bytewise order of encodings is GNU sort's
    /// order of lines, and equal encodings are lines GNU sort finds equal.
    pub fn encode(&self, line: &[u8], out: &mut Vec<u8>) {
        for key in &self.keys {
            let from = out.len();
            let text = self.field(line, key);
            if key.numeric {
                encode_number(text, out);
            } else {
                encode_text(text, out);
            }
            if key.reverse {
                complement(&mut out[from..]);
            }
        }
        match self.last_resort {
            None => {}
            Some(false) => out.extend_from_slice(line),
            Some(true) => {
                let from = out.len();
                encode_text(line, out);
                complement(&mut out[from..]);
            }
        }
    }

    /// The bytes of `key` in `line` (GNU's `begfield` and `limfield` without `.C`).
    fn field<'a>(&self, line: &'a [u8], key: &Key) -> &'a [u8] {
        let begin = self.skip_fields(line, key.start - 1, false);
        let end = match key.end {
            None => line.len(),
            Some(f) => self.skip_fields(line, f, true),
        };
        &line[begin..end.max(begin)]
    }

    /// The offset after `n` fields of `line`. A field's end (`at_end`) stops before the
    /// separator that ends it; a field's start is after it.
    fn skip_fields(&self, line: &[u8], mut n: u64, at_end: bool) -> usize {
        let lim = line.len();
        let mut ptr = 0;
        match self.separator {
            Some(sep) => {
                while ptr < lim && n > 0 {
                    n -= 1;
                    ptr += memchr::memchr(sep, &line[ptr..]).unwrap_or(lim - ptr);
                    if ptr < lim && (n > 0 || !at_end) {
                        ptr += 1;
                    }
                }
            }
            None => {
                while ptr < lim && n > 0 {
                    n -= 1;
                    while ptr < lim && is_blank(line[ptr]) {
                        ptr += 1;
                    }
                    while ptr < lim && !is_blank(line[ptr]) {
                        ptr += 1;
                    }
                }
            }
        }
        ptr
    }
}

/// Text, prefix-free and in bytewise order: `0x00` becomes `0x00 0x01`, and `0x00 0x00`
/// ends it (so a proper prefix sorts first).
fn encode_text(text: &[u8], out: &mut Vec<u8>) {
    let mut rest = text;
    while let Some(i) = memchr::memchr(0, rest) {
        out.extend_from_slice(&rest[..i]);
        out.extend_from_slice(&[0, 1]);
        rest = &rest[i + 1..];
    }
    out.extend_from_slice(rest);
    out.extend_from_slice(&[0, 0]);
}

/// A number as GNU sort `-n` reads it in the C locale, prefix-free and in numeric order:
/// its class (negative, zero, positive), then for a non-zero number the count of its integer
/// digits (8 bytes, big-endian), its digits without leading and trailing zeros, and `0x00`;
/// all but the class complemented for a negative number.
fn encode_number(text: &[u8], out: &mut Vec<u8>) {
    let digits = |from: usize| {
        from + text[from..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count()
    };
    let mut i = text.iter().take_while(|b| is_blank(**b)).count();
    let negative = text.get(i) == Some(&b'-');
    if negative {
        i += 1;
    }
    let int_end = digits(i);
    let mut int = &text[i..int_end];
    let mut frac: &[u8] = &[];
    if text.get(int_end) == Some(&b'.') {
        frac = &text[int_end + 1..digits(int_end + 1)];
    }
    while let [b'0', rest @ ..] = int {
        int = rest;
    }
    while let [rest @ .., b'0'] = frac {
        frac = rest;
    }
    if int.is_empty() && frac.is_empty() {
        out.push(ZERO);
        return;
    }
    out.push(if negative { NEGATIVE } else { POSITIVE });
    let from = out.len();
    out.extend_from_slice(&(int.len() as u64).to_be_bytes());
    out.extend_from_slice(int);
    out.extend_from_slice(frac);
    out.push(0);
    if negative {
        complement(&mut out[from..]);
    }
}

fn complement(bytes: &mut [u8]) {
    for b in bytes {
        *b = !*b;
    }
}

/// Sorts lines as GNU sort does (see the module documentation).
#[derive(Debug, Clone)]
pub struct Sort {
    order: SortOrder,
    cuts: Vec<Vec<u8>>,
}

impl Sort {
    /// The job for `p`.
    pub fn new(p: SortParams) -> Result<Sort, String> {
        if let Some(k) = p.keys.iter().find(|k| k.start == 0 || k.end == Some(0)) {
            return Err(format!("invalid key {k:?}: fields count from 1"));
        }
        Ok(Sort {
            order: SortOrder::new(&p),
            cuts: p.cuts,
        })
    }

    /// `p` with a range partitioner for `reducers` partitions, from a sample of up to
    /// `samples` lines taken evenly (by bytes) across all `splits`. Chunks between sample
    /// points are not read.
    pub fn sampled(
        mut p: SortParams,
        inputs: &[InputFile],
        splits: &[Split],
        reducers: u32,
        samples: usize,
    ) -> quern_runtime::Result<SortParams> {
        let order = SortOrder::new(&p);
        let total: u64 = splits.iter().map(Split::len).sum();
        let mut keys: Vec<Vec<u8>> = Vec::new();
        if total > 0 && reducers > 1 {
            let stride = (total / samples.max(1) as u64).max(1);
            let (mut base, mut next) = (0u64, 0u64);
            for chunk in splits.iter().flat_map(|s| &s.chunks) {
                let end = base + chunk.len;
                if next < end {
                    let input = &inputs[chunk.file as usize];
                    let data = ChunkData::open(input, chunk, InputFormat::Lines)?;
                    let bytes = data.bytes();
                    // The line holding byte `next`, then every `stride` bytes.
                    while next < end {
                        let at = (next - base) as usize;
                        let start = match at {
                            0 => 0,
                            _ => memchr::memrchr(b'\n', &bytes[..at]).map_or(0, |i| i + 1),
                        };
                        let stop =
                            memchr::memchr(b'\n', &bytes[at..]).map_or(bytes.len(), |i| at + i);
                        let mut key = Vec::new();
                        order.encode(&bytes[start..stop], &mut key);
                        keys.push(key);
                        next = (base + stop as u64 + 1).max(next + stride);
                    }
                }
                base = end;
            }
        }
        keys.sort_unstable();
        p.cuts = if keys.is_empty() {
            Vec::new()
        } else {
            (1..reducers as usize)
                .map(|i| keys[i * keys.len() / reducers as usize].clone())
                .collect()
        };
        Ok(p)
    }
}

impl Job for Sort {
    fn name(&self) -> &str {
        "sort"
    }

    fn input_format(&self) -> InputFormat {
        InputFormat::Lines
    }

    fn map(&self, record: &Record<'_>, ctx: &mut MapContext<'_>) {
        let info = SplitInfo {
            input: record.input,
            start: record.offset,
            len: record.data.len() as u64,
        };
        self.map_split(&info, &mut std::iter::once(*record), ctx);
    }

    /// Emits `(encoding, value)` per line. The value is what the reducer prints: under `-u`
    /// the line after its (file, offset), so that a key's values arrive in input order;
    /// else the line's length when the encoding ends with the raw line, or the line.
    fn map_split(
        &self,
        _split: &SplitInfo<'_>,
        records: &mut dyn Iterator<Item = Record<'_>>,
        ctx: &mut MapContext<'_>,
    ) {
        let (mut key, mut value) = (Vec::new(), Vec::new());
        let mut n = 0u64;
        for r in records {
            n += 1;
            key.clear();
            value.clear();
            self.order.encode(r.data, &mut key);
            if self.order.unique {
                value.extend_from_slice(&r.input.index.to_be_bytes());
                value.extend_from_slice(&r.offset.to_be_bytes());
                value.extend_from_slice(r.data);
            } else if self.order.last_resort == Some(false) {
                value.extend_from_slice(&(r.data.len() as u64).to_be_bytes());
            } else {
                value.extend_from_slice(r.data);
            }
            ctx.emit(&key, &value);
        }
        ctx.count(LINES, u128::from(n));
    }

    fn partition(&self, key: &[u8], reducers: u32) -> u32 {
        let p = self.cuts.partition_point(|cut| cut.as_slice() <= key) as u32;
        p.min(reducers.saturating_sub(1))
    }

    fn reduce(
        &self,
        key: &[u8],
        values: &mut dyn Iterator<Item = &[u8]>,
        ctx: &mut ReduceContext<'_>,
    ) {
        if self.order.unique {
            if let Some(first) = values.next() {
                ctx.write(first.get(12..).unwrap_or_default());
                ctx.write(b"\n");
            }
            return;
        }
        let raw_tail = self.order.last_resort == Some(false);
        for v in values {
            let line = if raw_tail {
                let len = v.try_into().map_or(0, u64::from_be_bytes) as usize;
                &key[key.len().saturating_sub(len)..]
            } else {
                v
            };
            ctx.write(line);
            ctx.write(b"\n");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::cmp::Ordering;

    fn params(
        keys: &[&str],
        sep: Option<u8>,
        numeric: bool,
        reverse: bool,
        unique: bool,
    ) -> SortParams {
        SortParams {
            keys: keys.iter().map(|k| KeySpec::parse(k).unwrap()).collect(),
            separator: sep,
            numeric,
            reverse,
            unique,
            cuts: Vec::new(),
        }
    }

    /// GNU's `numcompare` semantics, written independently: compare as exact decimals.
    fn number(text: &[u8]) -> (i8, Vec<u8>, Vec<u8>) {
        let s: Vec<u8> = text.iter().copied().skip_while(|b| is_blank(*b)).collect();
        let (neg, s) = match s.split_first() {
            Some((b'-', rest)) => (true, rest.to_vec()),
            _ => (false, s),
        };
        let int: Vec<u8> = s.iter().copied().take_while(u8::is_ascii_digit).collect();
        let rest = &s[int.len()..];
        let frac: Vec<u8> = match rest.split_first() {
            Some((b'.', f)) => f.iter().copied().take_while(u8::is_ascii_digit).collect(),
            _ => Vec::new(),
        };
        let int: Vec<u8> = int.into_iter().skip_while(|d| *d == b'0').collect();
        let mut frac = frac;
        while frac.last() == Some(&b'0') {
            frac.pop();
        }
        let sign = if int.is_empty() && frac.is_empty() {
            0
        } else if neg {
            -1
        } else {
            1
        };
        (sign, int, frac)
    }

    fn numcmp(a: &[u8], b: &[u8]) -> Ordering {
        let (sa, ia, fa) = number(a);
        let (sb, ib, fb) = number(b);
        let magnitude = || ia.len().cmp(&ib.len()).then(ia.cmp(&ib)).then(fa.cmp(&fb));
        match sa.cmp(&sb) {
            Ordering::Equal if sa > 0 => magnitude(),
            Ordering::Equal if sa < 0 => magnitude().reverse(),
            o => o,
        }
    }

    /// GNU sort's `compare`, written from its definition (not from the encoding).
    fn gnu_compare(order: &SortOrder, a: &[u8], b: &[u8]) -> Ordering {
        for key in &order.keys {
            let (ka, kb) = (order.field(a, key), order.field(b, key));
            let o = if key.numeric {
                numcmp(ka, kb)
            } else {
                ka.cmp(kb)
            };
            let o = if key.reverse { o.reverse() } else { o };
            if o != Ordering::Equal {
                return o;
            }
        }
        match order.last_resort {
            None => Ordering::Equal,
            Some(rev) => {
                let o = a.cmp(b);
                if rev {
                    o.reverse()
                } else {
                    o
                }
            }
        }
    }

    fn enc(order: &SortOrder, line: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        order.encode(line, &mut v);
        v
    }

    #[test]
    fn fields_follow_gnu_rules() {
        let o = SortOrder::new(&params(&["2,2"], None, false, false, false));
        let key = o.keys[0];
        assert_eq!(o.field(b"a  b c", &key), b"  b");
        assert_eq!(o.field(b" a\tb", &key), b"\tb");
        assert_eq!(o.field(b"a", &key), b"");
        let o = SortOrder::new(&params(&["2,3"], Some(b':'), false, false, false));
        let key = o.keys[0];
        assert_eq!(o.field(b"a:b:c:d", &key), b"b:c");
        assert_eq!(o.field(b"a:b", &key), b"b");
        assert_eq!(o.field(b"a", &key), b"");
        assert_eq!(o.field(b"a::", &key), b":");
        let o = SortOrder::new(&params(&["3,2"], Some(b':'), false, false, false));
        assert_eq!(o.field(b"a:b:c", &o.keys[0]), b"");
        let o = SortOrder::new(&params(&["2"], Some(b':'), false, false, false));
        assert_eq!(o.field(b"a:b:c", &o.keys[0]), b"b:c");
    }

    #[test]
    fn numbers_order_as_gnu_reads_them() {
        let o = SortOrder::new(&params(&[], None, true, false, true));
        let sorted: [&[u8]; 10] = [
            b"-10", b"-9.5", b"-1", b"-0.001", b"x", b"-0", b" 0.00", b"1.5", b"1.50x", b"10",
        ];
        for w in sorted.windows(2) {
            let (a, b) = (enc(&o, w[0]), enc(&o, w[1]));
            assert!(a <= b, "{:?} <= {:?}", w[0], w[1]);
        }
        assert_eq!(enc(&o, b"1.5"), enc(&o, b"01.50"));
        assert_eq!(enc(&o, b"-0"), enc(&o, b"abc"));
        assert_eq!(enc(&o, b"+5"), enc(&o, b""));
        assert_ne!(enc(&o, b"-.5"), enc(&o, b"0"));
    }

    #[test]
    fn unsupported_key_syntax_is_refused_by_name() {
        assert!(KeySpec::parse("2.3").unwrap_err().contains("F.C"));
        assert!(KeySpec::parse("2b").unwrap_err().contains("'b'"));
        assert!(KeySpec::parse("0").unwrap_err().contains("zero"));
        assert!(KeySpec::parse("x").is_err());
        assert_eq!(
            KeySpec::parse("2n,3r").unwrap(),
            KeySpec {
                start: 2,
                end: Some(3),
                numeric: true,
                reverse: true
            }
        );
    }

    fn line() -> impl Strategy<Value = Vec<u8>> {
        // Few distinct bytes, so that fields, ties and numbers are common.
        proptest::collection::vec(prop::sample::select(&b"  \t:-.0019ab\0\xff"[..]), 0..12)
    }

    fn option_sets() -> Vec<SortParams> {
        let mut v = Vec::new();
        for keys in [
            &[][..],
            &["2"],
            &["2,2"],
            &["2,2n"],
            &["1,1r", "3n"],
            &["2,2nr", "1,1"],
        ] {
            for sep in [None, Some(b':')] {
                for (numeric, reverse, unique) in [
                    (false, false, false),
                    (true, false, false),
                    (false, true, false),
                    (true, true, true),
                    (false, false, true),
                    (false, true, true),
                ] {
                    v.push(params(keys, sep, numeric, reverse, unique));
                }
            }
        }
        v
    }

    proptest! {
        #[test]
        fn encoded_order_is_gnu_order(a in line(), b in line()) {
            for p in option_sets() {
                let o = SortOrder::new(&p);
                let want = gnu_compare(&o, &a, &b);
                let got = enc(&o, &a).cmp(&enc(&o, &b));
                prop_assert_eq!(got, want, "{:?} vs {:?} with {:?}", a, b, p);
            }
        }

        #[test]
        fn reduce_prints_the_line_back(a in line()) {
            for p in option_sets() {
                let job = Sort::new(p).unwrap();
                let mut pairs = Vec::new();
                struct Collect<'a>(&'a mut Vec<(Vec<u8>, Vec<u8>)>);
                impl quern_runtime::Sink for Collect<'_> {
                    fn emit(&mut self, k: &[u8], v: &[u8]) {
                        self.0.push((k.to_vec(), v.to_vec()));
                    }
                }
                let input = InputFile { index: 3, path: "x".into(), name: "x".into(), size: 0 };
                let mut counters = quern_runtime::Counters::default();
                let mut sink = Collect(&mut pairs);
                let mut ctx = MapContext::new(&mut sink, &mut counters);
                job.map(&Record { data: &a, offset: 7, input: &input }, &mut ctx);
                let (k, v) = &pairs[0];
                let mut out = Vec::new();
                let mut rc = quern_runtime::Counters::default();
                job.reduce(k, &mut std::iter::once(&v[..]), &mut ReduceContext::new(&mut out, &mut rc));
                let mut want = a.clone();
                want.push(b'\n');
                prop_assert_eq!(out, want);
            }
        }
    }
}
