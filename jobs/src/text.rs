//! Word-based jobs: word count and an inverted index.
//!
//! A word is a maximal run of Unicode letters (general category L: Lu, Ll, Lt, Lm, Lo);
//! everything else separates words, and words are case-sensitive. Bytes that are not valid
//! UTF-8 are separators.

use quern_runtime::{for_each_distinct, InputFormat, Job, MapContext, Record, ReduceContext};
use unicode_general_category::{get_general_category, GeneralCategory as G};

/// True for Unicode letters (general category L*).
#[inline]
pub fn is_letter(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_alphabetic();
    }
    matches!(
        get_general_category(c),
        G::UppercaseLetter
            | G::LowercaseLetter
            | G::TitlecaseLetter
            | G::ModifierLetter
            | G::OtherLetter
    )
}

/// Calls `f` with each word of `line`, in order.
pub fn for_each_word(line: &[u8], mut f: impl FnMut(&[u8])) {
    if line.is_ascii() {
        // The common case, byte by byte: ASCII letters are the only ASCII word characters.
        let mut start = None;
        for (i, &b) in line.iter().enumerate() {
            match (b.is_ascii_alphabetic(), start) {
                (true, None) => start = Some(i),
                (false, Some(s)) => {
                    f(&line[s..i]);
                    start = None;
                }
                _ => {}
            }
        }
        if let Some(s) = start {
            f(&line[s..]);
        }
        return;
    }
    for chunk in line.utf8_chunks() {
        let s = chunk.valid();
        let mut start = None;
        for (i, c) in s.char_indices() {
            match (is_letter(c), start) {
                (true, None) => start = Some(i),
                (false, Some(b)) => {
                    f(&s.as_bytes()[b..i]);
                    start = None;
                }
                _ => {}
            }
        }
        if let Some(b) = start {
            f(&s.as_bytes()[b..]);
        }
    }
}

fn sum_u64(values: &mut dyn Iterator<Item = &[u8]>) -> u64 {
    values
        .map(|v| u64::from_le_bytes(v.try_into().unwrap_or_default()))
        .sum()
}

/// Word count: `word count` per distinct word.
#[derive(Debug, Clone, Default, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct WordCount;

impl Job for WordCount {
    fn name(&self) -> &str {
        "wc"
    }

    fn input_format(&self) -> InputFormat {
        InputFormat::Lines
    }

    fn map(&self, record: &Record<'_>, ctx: &mut MapContext<'_>) {
        for_each_word(record.data, |w| ctx.emit(w, &1u64.to_le_bytes()));
    }

    fn has_combiner(&self) -> bool {
        true
    }

    fn combine(
        &self,
        _key: &[u8],
        values: &mut dyn Iterator<Item = &[u8]>,
        emit: &mut dyn FnMut(&[u8]),
    ) {
        emit(&sum_u64(values).to_le_bytes());
    }

    fn folds_values(&self) -> bool {
        true
    }

    fn fold_value(&self, _key: &[u8], acc: &mut [u8], value: &[u8]) -> bool {
        let (Ok(a), Ok(v)) = (<&mut [u8; 8]>::try_from(acc), <&[u8; 8]>::try_from(value)) else {
            return false;
        };
        *a = (u64::from_le_bytes(*a) + u64::from_le_bytes(*v)).to_le_bytes();
        true
    }

    fn reduce(
        &self,
        key: &[u8],
        values: &mut dyn Iterator<Item = &[u8]>,
        ctx: &mut ReduceContext<'_>,
    ) {
        let n = sum_u64(values);
        ctx.write(key);
        ctx.write(b" ");
        ctx.write(n.to_string().as_bytes());
        ctx.write(b"\n");
    }
}

/// Inverted index: `word N doc1,doc2,...` with the documents sorted by name.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Index {
    /// Display names of the input files, by index.
    pub names: Vec<String>,
}

impl Job for Index {
    fn name(&self) -> &str {
        "index"
    }

    fn input_format(&self) -> InputFormat {
        InputFormat::Lines
    }

    fn map(&self, record: &Record<'_>, ctx: &mut MapContext<'_>) {
        let doc = record.input.index.to_be_bytes();
        for_each_word(record.data, |w| ctx.emit(w, &doc));
    }

    fn has_combiner(&self) -> bool {
        true
    }

    /// Values arrive sorted, so duplicates are adjacent.
    fn combine(
        &self,
        _key: &[u8],
        values: &mut dyn Iterator<Item = &[u8]>,
        emit: &mut dyn FnMut(&[u8]),
    ) {
        for_each_distinct(values, emit);
    }

    fn reduce(
        &self,
        key: &[u8],
        values: &mut dyn Iterator<Item = &[u8]>,
        ctx: &mut ReduceContext<'_>,
    ) {
        let mut docs: Vec<&str> = values
            .filter_map(|v| v.try_into().ok().map(u32::from_be_bytes))
            .filter_map(|i| self.names.get(i as usize).map(String::as_str))
            .collect();
        docs.sort_unstable();
        docs.dedup();
        ctx.write(key);
        ctx.write(format!(" {} ", docs.len()).as_bytes());
        ctx.write(docs.join(",").as_bytes());
        ctx.write(b"\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &[u8]) -> Vec<String> {
        let mut v = Vec::new();
        for_each_word(s, |w| v.push(String::from_utf8(w.to_vec()).unwrap()));
        v
    }

    #[test]
    fn words_are_runs_of_letters() {
        assert_eq!(
            words(b"Hello, world! it's 42nd"),
            ["Hello", "world", "it", "s", "nd"]
        );
        assert_eq!(
            words("naïve café—Straße".as_bytes()),
            ["naïve", "café", "Straße"]
        );
        assert_eq!(words(b"a\xffb"), ["a", "b"]);
        assert!(words(b" 123 -- ").is_empty());
    }
}
