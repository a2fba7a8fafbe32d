//! Each job's output checked against an independent computation in the test.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use quern_tests::{assert_committed, book, books, concat_parts, lines, map_tasks, p, parts, run};
use unicode_general_category::{get_general_category, GeneralCategory};

const RECORD: usize = 100;
const KEY: usize = 10;

// ---------------------------------------------------------------- words

/// The spec's letter: Unicode general category L* (Lu, Ll, Lt, Lm, Lo).
fn is_letter(c: char) -> bool {
    use GeneralCategory::*;
    matches!(
        get_general_category(c),
        UppercaseLetter | LowercaseLetter | TitlecaseLetter | ModifierLetter | OtherLetter
    )
}

/// Words of `bytes`: maximal runs of letters; invalid UTF-8 separates words.
fn words(bytes: &[u8]) -> Vec<String> {
    // Lossy decoding turns invalid sequences into U+FFFD, which is not a letter.
    let text = String::from_utf8_lossy(bytes);
    text.split(|c: char| !is_letter(c))
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

fn count_words(files: &[PathBuf]) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for f in files {
        for w in words(&std::fs::read(f).expect("read book")) {
            *counts.entry(w).or_insert(0) += 1;
        }
    }
    counts
}

/// Parses quern's `-r N` line output: checks each part's lines are strictly increasing by
/// their first field (bytewise) and that no key appears in two parts; returns key → rest.
fn parse_keyed_parts(out: &Path) -> BTreeMap<String, String> {
    let mut all = BTreeMap::new();
    for (name, bytes) in parts(out) {
        let text = String::from_utf8(bytes).unwrap_or_else(|e| panic!("{name} is not UTF-8: {e}"));
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "{name} does not end with a newline"
        );
        let mut prev: Option<String> = None;
        for line in text.lines() {
            let (key, rest) = line
                .split_once(' ')
                .unwrap_or_else(|| panic!("{name}: malformed line {line:?}"));
            if let Some(prev) = &prev {
                assert!(
                    prev.as_bytes() < key.as_bytes(),
                    "{name}: {key:?} follows {prev:?}: lines not sorted bytewise by key"
                );
            }
            prev = Some(key.to_string());
            if let Some(old) = all.insert(key.to_string(), rest.to_string()) {
                panic!("{key:?} appears in two parts ({old:?} and {rest:?} in {name})");
            }
        }
    }
    all
}

fn wc(inputs: &[PathBuf], out: &Path, reducers: u32) -> BTreeMap<String, u64> {
    let mut args = vec![
        "wc".to_string(),
        "-q".into(),
        "-r".into(),
        reducers.to_string(),
        "-o".into(),
        p(out),
    ];
    args.extend(inputs.iter().map(|f| p(f)));
    run(&args).ok();
    assert_committed(out, reducers as usize);
    parse_keyed_parts(out)
        .into_iter()
        .map(|(w, n)| (w, n.parse().unwrap_or_else(|e| panic!("count {n:?}: {e}"))))
        .collect()
}

fn assert_same_counts(got: &BTreeMap<String, u64>, want: &BTreeMap<String, u64>) {
    let mut diffs = Vec::new();
    for (w, n) in want {
        if got.get(w) != Some(n) {
            diffs.push(format!("{w:?}: expected {n}, quern {:?}", got.get(w)));
        }
    }
    for (w, n) in got {
        if !want.contains_key(w) {
            diffs.push(format!("{w:?}: quern counts {n}, not a word"));
        }
    }
    assert!(
        diffs.is_empty(),
        "{} differences, first ones:\n{}",
        diffs.len(),
        diffs[..diffs.len().min(20)].join("\n")
    );
}

#[test]
fn wc_equals_independent_count_on_all_books() {
    let dir = tempfile::tempdir().expect("tempdir");
    let books = books();
    let got = wc(&books, &dir.path().join("out"), 3);
    let want = count_words(&books);
    assert!(
        want.len() > 10_000,
        "corpus too small? {} distinct words",
        want.len()
    );
    assert_same_counts(&got, &want);
}

#[test]
fn wc_words_are_unicode_letter_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("unicode.txt");
    let mut text: Vec<u8> = Vec::new();
    // Lt (ǅ), Lm (ʰ), Lo (中文) are letters; Nl (Ⅻ), Mn (U+0301, U+0345), digits and
    // punctuation separate words, although char::is_alphabetic accepts Ⅻ and U+0345.
    text.extend("naïve café—Straße ǅemal ʰa 中文 Ⅻ x\u{301}y e\u{345}f 42nd it's\n".as_bytes());
    text.extend(b"word\r\nCase case CASE\n\n");
    // Invalid UTF-8 separates; the last line has no newline and ends in a truncated sequence.
    text.extend(b"a\xffb caf\xc3");
    std::fs::write(&input, &text).expect("write");
    let got = wc(std::slice::from_ref(&input), &dir.path().join("out"), 2);
    let want: BTreeMap<String, u64> = [
        ("naïve", 1),
        ("café", 1),
        ("Straße", 1),
        ("ǅemal", 1),
        ("ʰa", 1),
        ("中文", 1),
        ("x", 1),
        ("y", 1),
        ("e", 1),
        ("f", 1),
        ("nd", 1),
        ("it", 1),
        ("s", 1),
        ("word", 1),
        ("Case", 1),
        ("case", 1),
        ("CASE", 1),
        ("a", 1),
        ("b", 1),
        ("caf", 1),
    ]
    .into_iter()
    .map(|(w, n)| (w.to_string(), n))
    .collect();
    assert_eq!(
        count_words(&[input]),
        want,
        "the test's own word splitter disagrees with the spec"
    );
    assert_same_counts(&got, &want);
}

#[test]
fn index_equals_independent_computation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inputs = vec![
        book("pg-being_ernest.txt"),
        book("pg-metamorphosis.txt"),
        book("pg-frankenstein.txt"),
    ];
    let out = dir.path().join("out");
    let mut args = vec![
        "index".to_string(),
        "-q".into(),
        "-r".into(),
        "3".into(),
        "--split-size".into(),
        "64KiB".into(),
    ];
    args.extend(["-o".to_string(), p(&out)]);
    args.extend(inputs.iter().map(|f| p(f)));
    run(&args).ok();
    assert_committed(&out, 3);

    let mut want: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &inputs {
        for w in words(&std::fs::read(f).expect("read")) {
            want.entry(w).or_default().insert(p(f));
        }
    }
    let got = parse_keyed_parts(&out);
    let mut got_sets: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (word, rest) in &got {
        let (n, docs) = rest
            .split_once(' ')
            .unwrap_or_else(|| panic!("{word}: malformed {rest:?}"));
        let n: usize = n
            .parse()
            .unwrap_or_else(|e| panic!("{word}: count {n:?}: {e}"));
        let docs: Vec<&str> = docs.split(',').collect();
        assert_eq!(
            n,
            docs.len(),
            "{word}: N is not the number of documents in {rest:?}"
        );
        assert!(
            docs.windows(2).all(|w| w[0] < w[1]),
            "{word}: documents not sorted/unique: {docs:?}"
        );
        got_sets.insert(word.clone(), docs.iter().map(|d| d.to_string()).collect());
    }
    assert_eq!(got_sets.len(), want.len(), "number of distinct words");
    for (w, docs) in &want {
        assert_eq!(got_sets.get(w), Some(docs), "documents of {w:?}");
    }
    // Some words are shared by all three books, some by exactly one.
    assert!(got_sets.values().any(|d| d.len() == 3) && got_sets.values().any(|d| d.len() == 1));
}

// ---------------------------------------------------------------- tera

fn teragen(out: &Path, records: u64, parts: u64, ascii: bool) -> String {
    let mut args = vec![
        "teragen".to_string(),
        "--records".into(),
        records.to_string(),
        "--parts".into(),
        parts.to_string(),
        "-q".into(),
        "-o".into(),
        p(out),
    ];
    if ascii {
        args.push("--ascii".into());
    }
    let o = run(&args);
    o.ok();
    assert_committed(out, 1);
    let stdout = o.stdout_str();
    assert!(
        stdout.contains(&format!("Records: {records}\n")),
        "teragen stdout: {stdout}"
    );
    checksum_line(&stdout)
}

fn checksum_line(stdout: &str) -> String {
    stdout
        .lines()
        .find(|l| l.starts_with("Checksum: "))
        .unwrap_or_else(|| panic!("no Checksum line in {stdout:?}"))
        .to_string()
}

fn records(bytes: &[u8]) -> Vec<&[u8]> {
    assert_eq!(bytes.len() % RECORD, 0, "not whole records");
    bytes.chunks(RECORD).collect()
}

fn terasort_roundtrip(ascii: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let n = 6_000;
    let gen = dir.path().join("gen");
    let gen_sum = teragen(&gen, n, 3, ascii);
    assert_eq!(parts(&gen).len(), 3);

    let sorted = dir.path().join("sorted");
    run([
        "terasort",
        &p(&gen),
        "-r",
        "3",
        "--split-size",
        "64KiB",
        "-q",
        "-o",
        &p(&sorted),
    ])
    .ok();
    assert_committed(&sorted, 3);

    for split in ["64MiB", "1000"] {
        let v = run(["teravalidate", &p(&sorted), "-q", "--split-size", split]);
        v.ok();
        let out = v.stdout_str();
        assert!(out.contains("SUCCESS"), "teravalidate: {out}");
        assert!(
            out.contains(&format!("Records: {n}\n")),
            "teravalidate: {out}"
        );
        assert_eq!(
            checksum_line(&out),
            gen_sum,
            "teravalidate checksum differs from teragen's"
        );
    }

    let input = concat_parts(&gen);
    let output = concat_parts(&sorted);
    let (mut want, got) = (records(&input), records(&output));
    assert_eq!(got.len(), n as usize);
    for (i, pair) in got.windows(2).enumerate() {
        assert!(
            pair[0][..KEY] <= pair[1][..KEY],
            "record {} is out of order",
            i + 1
        );
    }
    let mut got_sorted = got.clone();
    got_sorted.sort_unstable();
    want.sort_unstable();
    assert!(
        got_sorted == want,
        "terasort output is not a permutation of its input"
    );
    if ascii {
        assert!(
            output.iter().all(|b| b.is_ascii()),
            "ascii records must stay ASCII"
        );
    }
}

#[test]
fn terasort_sorts_a_permutation_and_validates_binary() {
    terasort_roundtrip(false);
}

#[test]
fn terasort_sorts_a_permutation_and_validates_ascii() {
    terasort_roundtrip(true);
}

#[test]
fn teragen_output_does_not_depend_on_parts() {
    let dir = tempfile::tempdir().expect("tempdir");
    for ascii in [false, true] {
        let one = dir.path().join(format!("one-{ascii}"));
        let four = dir.path().join(format!("four-{ascii}"));
        let sum1 = teragen(&one, 5_000, 1, ascii);
        let sum4 = teragen(&four, 5_000, 4, ascii);
        assert_eq!(parts(&one).len(), 1);
        assert_eq!(parts(&four).len(), 4);
        assert!(
            concat_parts(&one) == concat_parts(&four),
            "--parts 1 and --parts 4 differ (ascii={ascii})"
        );
        assert_eq!(sum1, sum4);
    }
    // A different seed gives different records.
    let seeded = dir.path().join("seeded");
    run([
        "teragen",
        "--records",
        "5000",
        "--parts",
        "1",
        "--seed",
        "7",
        "-q",
        "-o",
        &p(&seeded),
    ])
    .ok();
    assert!(concat_parts(&seeded) != concat_parts(&dir.path().join("one-false")));
}

/// `--parts P` is documented as the number of part files.
#[test]
fn teragen_writes_the_requested_number_of_parts() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (records, want) in [(10u64, 6u64), (100, 7), (1_000, 3)] {
        let out = dir.path().join(format!("gen-{records}-{want}"));
        teragen(&out, records, want, false);
        assert_eq!(
            parts(&out).len() as u64,
            want,
            "teragen --records {records} --parts {want} wrote {:?}",
            parts(&out).keys().collect::<Vec<_>>()
        );
    }
}

#[test]
fn teravalidate_rejects_unsorted_teragen_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gen = dir.path().join("gen");
    let sum = teragen(&gen, 2_000, 2, false);
    let v = run(["teravalidate", &p(&gen), "-q"]);
    v.expect_code(1);
    let out = v.stdout_str();
    assert!(
        out.contains("out of order") && out.contains("ERROR"),
        "{out}"
    );
    assert!(
        out.contains("part-00000: byte "),
        "the report names the file: {out}"
    );
    assert!(!out.contains("SUCCESS"), "{out}");
    assert_eq!(checksum_line(&out), sum);
}

fn sorted_records(dir: &Path, n: u64) -> Vec<Vec<u8>> {
    let gen = dir.join("gen");
    teragen(&gen, n, 1, false);
    let mut recs: Vec<Vec<u8>> = records(&concat_parts(&gen))
        .into_iter()
        .map(<[u8]>::to_vec)
        .collect();
    recs.sort();
    recs
}

/// One swapped pair inside a file, found whether or not it straddles a split boundary;
/// and files each sorted but in the wrong order.
#[test]
fn teravalidate_finds_single_misorder_and_misordered_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut recs = sorted_records(dir.path(), 100);
    recs.swap(10, 11);
    let bad = dir.path().join("bad");
    std::fs::create_dir(&bad).expect("mkdir");
    std::fs::write(bad.join("data"), recs.concat()).expect("write");
    for split in ["64MiB", "1100", "500"] {
        let v = run(["teravalidate", &p(&bad), "-q", "--split-size", split]);
        v.expect_code(1);
        let out = v.stdout_str();
        assert!(
            out.contains("data: byte 1100: key out of order"),
            "--split-size {split}: {out}"
        );
        assert!(
            out.contains("ERROR - 1 records out of order"),
            "--split-size {split}: {out}"
        );
    }

    recs.swap(10, 11);
    let swapped = dir.path().join("swapped");
    std::fs::create_dir(&swapped).expect("mkdir");
    std::fs::write(swapped.join("a"), recs[50..].concat()).expect("write");
    std::fs::write(swapped.join("b"), recs[..50].concat()).expect("write");
    let v = run(["teravalidate", &p(&swapped), "-q"]);
    v.expect_code(1);
    let out = v.stdout_str();
    assert!(out.contains("b: byte 0: key out of order"), "{out}");
}

#[test]
fn teravalidate_counts_duplicate_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut recs = sorted_records(dir.path(), 100);
    let dup = recs[40].clone();
    recs.insert(40, dup.clone());
    let mut other = dup.clone();
    other[KEY..].fill(b'z'); // same key, different value, still in key order
    recs.insert(42, other);
    let file = dir.path().join("dups");
    std::fs::write(&file, recs.concat()).expect("write");
    for split in ["64MiB", "4100"] {
        let v = run(["teravalidate", &p(&file), "-q", "--split-size", split]);
        v.ok();
        let out = v.stdout_str();
        assert!(
            out.contains("Duplicate keys: 2\n") && out.contains("Records: 102\n"),
            "--split-size {split}: {out}"
        );
    }
}

// ---------------------------------------------------------------- grep

fn grep_lines(pattern: &str, files: &[PathBuf]) -> (Vec<u8>, Vec<u64>) {
    let re = regex::bytes::Regex::new(pattern).expect("regex");
    let mut out = Vec::new();
    let mut counts = Vec::new();
    for f in files {
        let text = std::fs::read(f).expect("read");
        let mut n = 0;
        for line in lines(&text).filter(|l| re.is_match(l)) {
            n += 1;
            if files.len() > 1 {
                out.extend(p(f).as_bytes());
                out.push(b':');
            }
            out.extend(line);
            out.push(b'\n');
        }
        counts.push(n);
    }
    (out, counts)
}

fn grep_args(flags: &[&str], pattern: &str, files: &[PathBuf]) -> Vec<String> {
    let mut args = vec!["grep".to_string(), "--split-size".into(), "64KiB".into()];
    args.extend(flags.iter().map(|f| f.to_string()));
    args.push(pattern.to_string());
    args.extend(files.iter().map(|f| p(f)));
    args
}

fn check_grep(pattern: &str, files: &[PathBuf]) {
    let (want, counts) = grep_lines(pattern, files);
    let total: u64 = counts.iter().sum();
    let o = run(grep_args(&[], pattern, files));
    o.expect_code(if total > 0 { 0 } else { 1 });
    assert!(
        o.stdout == want,
        "grep {pattern:?}: {} bytes of output, expected {} bytes",
        o.stdout.len(),
        want.len()
    );

    let c = run(grep_args(&["-c"], pattern, files));
    c.expect_code(if total > 0 { 0 } else { 1 });
    let want_counts: String = if files.len() == 1 {
        format!("{}\n", counts[0])
    } else {
        files
            .iter()
            .zip(&counts)
            .map(|(f, n)| format!("{}:{n}\n", p(f)))
            .collect()
    };
    assert_eq!(c.stdout_str(), want_counts, "grep -c {pattern:?}");
}

#[test]
fn grep_one_file_equals_line_filter() {
    let grimm = vec![book("pg-grimm.txt")];
    check_grep(r"(?i)\bwolf\b", &grimm);
    check_grep("^$", &grimm);
    check_grep(r"[0-9]{3,}", &grimm);
}

#[test]
fn grep_several_files_equals_line_filter_with_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let none = dir.path().join("no-match.txt");
    std::fs::write(&none, "nothing to see\nhere\n").expect("write");
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "").expect("write");
    let files = vec![
        book("pg-metamorphosis.txt"),
        none,
        book("pg-sherlock_holmes.txt"),
        empty,
        book("pg-being_ernest.txt"),
    ];
    check_grep("Gregor|Holmes|Algernon", &files);
    check_grep(r"(?i)^\s*chapter", &files);
}

#[test]
fn grep_last_line_without_newline_and_directory_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().join("d");
    std::fs::create_dir(&d).expect("mkdir");
    std::fs::write(d.join("b"), "foo\nbar\nbar foo").expect("write");
    std::fs::write(d.join("a"), "xfoo\n").expect("write");
    std::fs::write(d.join("_SUCCESS"), "foo\n").expect("write");
    let o = run(["grep", "foo", &p(&d)]);
    o.ok();
    let (a, b) = (p(&d.join("a")), p(&d.join("b")));
    assert_eq!(o.stdout_str(), format!("{a}:xfoo\n{b}:foo\n{b}:bar foo\n"));

    let one = run(["grep", "foo$", &p(&d.join("b"))]);
    one.ok();
    assert_eq!(one.stdout_str(), "foo\nbar foo\n");
}

/// grep's options mean what they mean to GNU grep (`LC_ALL=C grep`, the peer): the same
/// stdout and exit status, on one file and on several (names prefixed), with small splits
/// so that every file spans several map tasks.
#[test]
fn grep_options_match_gnu_grep() {
    let files = [
        book("pg-metamorphosis.txt"),
        book("pg-being_ernest.txt"),
        book("pg-frankenstein.txt"),
    ];
    let cases: [&[&str]; 16] = [
        &["-c", "-E", "^The [a-z]+"],
        &["-c", "^$"],
        &["-c", "-i", "-E", "[a-z]+ing [a-z]+ed$"],
        &["-i", "gregor"],
        &["-n", "-w", "-i", "the"],
        &["-v", "e"],
        &["-c", "-v", "the"],
        &["-w", "the"],
        &["-w", "-i", "-c", "the"],
        &["-F", "a.b"],
        &["-F", "-c", "(I"],
        &["-l", "Gregor"],
        &["-l", "-i", "-v", "."],
        &["-c", "monster"],
        &["-q", "Gregor"],
        &["-q", "zzqqxx"],
    ];
    for flags in cases {
        for names in [&files[..1], &files[..]] {
            let paths: Vec<String> = names.iter().map(|f| p(f)).collect();
            let mut args = vec!["grep".to_string(), "--split-size".into(), "32KiB".into()];
            args.extend(flags.iter().map(|f| f.to_string()));
            args.extend(paths.iter().cloned());
            let ours = run(&args);
            let gnu = std::process::Command::new("grep")
                .args(flags)
                .args(&paths)
                .env("LC_ALL", "C")
                .output()
                .expect("GNU grep runs");
            let what = format!("grep {} on {} files", flags.join(" "), names.len());
            assert_eq!(
                ours.code,
                gnu.status.code().unwrap_or(-1),
                "{what}: exit status\n{}",
                ours.stderr
            );
            assert!(
                ours.stdout == gnu.stdout,
                "{what}: {} bytes of stdout, GNU grep printed {}",
                ours.stdout.len(),
                gnu.stdout.len()
            );
            assert!(
                ours.stderr.is_empty(),
                "{what}: no statistics without --stats: {}",
                ours.stderr
            );
        }
    }
}

#[test]
fn grep_without_match_exits_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let books = vec![book("pg-metamorphosis.txt"), book("pg-being_ernest.txt")];
    let o = run(grep_args(&[], "zzqqxx", &books));
    o.expect_code(1);
    assert!(o.stdout.is_empty());
    assert!(
        o.stderr.is_empty(),
        "no error message for a mere non-match: {}",
        o.stderr
    );

    let c = run(grep_args(&["-c"], "zzqqxx", &books));
    c.expect_code(1);
    let want: String = books.iter().map(|b| format!("{}:0\n", p(b))).collect();
    assert_eq!(c.stdout_str(), want);

    let out = dir.path().join("out");
    let mut args = grep_args(&[], "zzqqxx", &books);
    args.extend(["-o".to_string(), p(&out)]);
    run(&args).expect_code(1);
    assert_committed(&out, 1);
    assert!(concat_parts(&out).is_empty());
}

// ---------------------------------------------------------------- many small files

/// A source-tree-like directory of `n` small files in nested directories (a few lines of
/// the books each; every 97th file empty, every 50th without a final newline), plus what a
/// walk must skip: hidden files and directories, `_` names, and a symlink to a directory.
/// Returns the root and the files a walk must find, in walk (path) order.
fn small_file_tree(dir: &Path, n: usize) -> (PathBuf, Vec<PathBuf>) {
    let corpus: Vec<u8> = books()
        .iter()
        .flat_map(|b| std::fs::read(b).expect("read book"))
        .collect();
    let all_lines: Vec<&[u8]> = lines(&corpus).collect();
    let root = dir.join("tree");
    let mut files = Vec::with_capacity(n);
    for i in 0..n {
        let path = root.join(format!("d{:02}/e{}/f{i:05}.txt", i / 1000, i % 10));
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        let mut text = Vec::new();
        if i % 97 != 0 {
            let first = (i * 37) % all_lines.len();
            let count = 1 + i % 7;
            for line in all_lines.iter().cycle().skip(first).take(count) {
                text.extend_from_slice(line);
                text.push(b'\n');
            }
            if i % 50 == 0 {
                text.pop();
            }
        }
        std::fs::write(&path, &text).expect("write file");
        files.push(path);
    }
    let decoy = b"the wolf and the king\n";
    std::fs::create_dir_all(root.join(".git")).expect("mkdir");
    std::fs::write(root.join(".git/config"), decoy).expect("write");
    std::fs::write(root.join("d00/.hidden.txt"), decoy).expect("write");
    std::fs::write(root.join("d00/_notes.txt"), decoy).expect("write");
    std::os::unix::fs::symlink(root.join("d01"), root.join("d00/link")).expect("symlink");
    files.sort();
    (root, files)
}

/// 20,000 small files: a few dozen map tasks (about total size / split size, not one per
/// file), and grep, grep -c, wc and index give what an independent computation over the
/// files gives — each line and count still named by its own file.
#[test]
fn many_small_files_are_packed_into_splits_and_keep_their_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (root, files) = small_file_tree(dir.path(), 20_000);
    let total: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).expect("stat").len())
        .sum();
    let split: u64 = 256 << 10;
    let pattern = r"(?i)\b(wolf|king|the end)\b";
    let (want, counts) = grep_lines(pattern, &files);
    let want_counts: String = files
        .iter()
        .zip(&counts)
        .map(|(f, n)| format!("{}:{n}\n", p(f)))
        .collect();
    for mode in [None, Some("--sequential")] {
        let args = |count: bool| {
            let mut a = vec![
                "grep".to_string(),
                "--stats".into(),
                "--split-size".into(),
                split.to_string(),
            ];
            a.extend(count.then(|| "-c".to_string()));
            a.extend([pattern.to_string(), p(&root)]);
            a.extend(mode.map(str::to_string));
            a
        };
        let o = run(args(false));
        o.ok();
        assert!(
            o.stdout == want,
            "grep over the tree ({mode:?}): {} bytes, expected {}",
            o.stdout.len(),
            want.len()
        );
        let maps = map_tasks(&o.stderr).expect("summary");
        let packed = total.div_ceil(split) as usize;
        assert!(
            (packed.saturating_sub(1)..=packed + 1).contains(&maps),
            "{maps} map tasks for {total} bytes in {} files with {split}-byte splits",
            files.len()
        );
        let c = run(args(true));
        c.ok();
        assert_eq!(
            c.stdout_str(),
            want_counts,
            "grep -c over the tree ({mode:?})"
        );
    }

    let counted = wc(std::slice::from_ref(&root), &dir.path().join("wc"), 2);
    assert_same_counts(&counted, &count_words(&files));

    let index = |mode: Option<&str>| {
        let out = dir
            .path()
            .join(format!("index-{}", mode.unwrap_or("cluster")));
        let mut a = vec![
            "index".to_string(),
            "-q".into(),
            "-r".into(),
            "2".into(),
            "-o".into(),
            p(&out),
            p(&root),
        ];
        a.extend(mode.map(str::to_string));
        run(&a).ok();
        parts(&out)
    };
    let reference = index(Some("--sequential"));
    assert_eq!(
        index(None),
        reference,
        "index over the tree: cluster vs --sequential"
    );
    let words: BTreeSet<String> = reference
        .values()
        .flat_map(|b| {
            String::from_utf8_lossy(b)
                .lines()
                .map(|l| l.split(' ').next().unwrap_or("").to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        words,
        counted.keys().cloned().collect::<BTreeSet<_>>(),
        "index words vs wc words"
    );
}

// ---------------------------------------------------------------- grep on binary files

/// Files that GNU grep 3.8 treats as text or binary (a NUL byte, in the C locale): text, a
/// NUL near the start, a NUL after the first match (in the first 96 KiB block), a NUL past
/// several blocks with matches after it, and one whose lines after the NUL never match.
fn binary_corpus(dir: &Path) -> Vec<PathBuf> {
    let mut rng = quern_tests::Rng(5);
    let mut text_lines = |n: usize| -> Vec<u8> {
        let words = ["foo", "bar", "baz", "foobar", "FOO", "x", ""];
        let mut out = Vec::new();
        for i in 0..n {
            let a = words[rng.range(0, words.len() as u64) as usize];
            let b = words[rng.range(0, words.len() as u64) as usize];
            out.extend(format!("{a} {i} {b}\n").as_bytes());
        }
        out
    };
    let text = text_lines(2000);
    let mut nul_start = b"head\0er\nbar\0foo\n".to_vec();
    nul_start.extend(text_lines(50));
    let mut after_match = b"zero\nfoo one\ntwo\n".to_vec();
    after_match.extend(b"three\0bar\n");
    after_match.extend(text_lines(40));
    let mut late = text_lines(25_000); // ~330 KB: the NUL lands in the fourth block
    let at = late.len() * 4 / 5;
    let at = at
        + late[at..]
            .iter()
            .position(|b| *b == b'\n')
            .expect("a line end")
        + 1;
    late.splice(at..at, b"bin\0ary foo\0\0bar\n".iter().copied());
    let mut late_quiet = text_lines(16_000);
    late_quiet.extend(b"\0\n");
    late_quiet.extend("nothing selected here\n".repeat(100).as_bytes());
    let files = [
        ("text.txt", text),
        ("nul-start.bin", nul_start),
        ("nul-after-match.bin", after_match),
        ("nul-late.bin", late),
        ("nul-late-quiet.bin", late_quiet),
    ];
    files
        .into_iter()
        .map(|(name, bytes)| {
            let path = dir.join(name);
            std::fs::write(&path, bytes).expect("write");
            path
        })
        .collect()
}

/// quern grep prints what GNU grep 3.8 prints for binary files (stdout, stderr and exit
/// status), each file alone (in-process) and all together (on the local cluster), with small
/// splits (files spread over many
/// chunks: the client finds their first NUL) and with the default (each file one chunk:
/// its map decides).
#[test]
fn grep_binary_files_match_gnu_grep() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = binary_corpus(dir.path());
    let cases: [&[&str]; 15] = [
        &["foo"],
        &["^bar"],
        &["-v", "foo"],
        &["-n", "foo"],
        &["-n", "-v", "foo"],
        &["-i", "-w", "foo"],
        &["-c", "^bar"],
        &["-c", "-v", "x"],
        &["-l", "^bar"],
        &["-q", "^bar"],
        &["nothing"],
        &["-c", "nothing"],
        // Searched a block at a time, NULs ending lines (`ChunkRegex::nul_ends`).
        &["-c", "foo"],
        &["-c", "-i", "-w", "foo"],
        &["-l", "ba[rz]"],
    ];
    let sets: Vec<&[PathBuf]> = (0..files.len())
        .map(|i| &files[i..=i])
        .chain(std::iter::once(&files[..]))
        .collect();
    for split in ["16KiB", "64MiB"] {
        for flags in cases {
            for set in &sets {
                let paths: Vec<String> = set.iter().map(|f| p(f)).collect();
                let mut args = vec!["grep".to_string(), "--split-size".into(), split.into()];
                if set.len() == 1 {
                    // The local cluster (the default) runs the set of all files.
                    args.push("--in-process".into());
                }
                args.extend(flags.iter().map(|f| f.to_string()));
                args.extend(paths.iter().cloned());
                let ours = run(&args);
                let gnu = std::process::Command::new("grep")
                    .args(flags)
                    .args(&paths)
                    .env("LC_ALL", "C")
                    .output()
                    .expect("GNU grep runs");
                let what = format!(
                    "grep {} on {} (--split-size {split})",
                    flags.join(" "),
                    paths.join(" ")
                );
                assert_eq!(
                    ours.code,
                    gnu.status.code().unwrap_or(-1),
                    "{what}: exit status"
                );
                assert!(
                    ours.stdout == gnu.stdout,
                    "{what}: {} bytes of stdout, GNU grep printed {}",
                    ours.stdout.len(),
                    gnu.stdout.len()
                );
                assert_eq!(
                    ours.stderr,
                    String::from_utf8_lossy(&gnu.stderr),
                    "{what}: stderr"
                );
            }
        }
    }
}

// ---------------------------------------------------------------- grep -n

/// Text files for `grep -n`: two files of ~100 KB (so 16 KiB splits cut each into several
/// chunks), one of CRLF lines and one mixing CRLF and LF lines that ends without a newline,
/// a file of a few long lines (longer than a split), an empty file, and a two-line file
/// without a final newline.
fn numbered_corpus(dir: &Path) -> Vec<PathBuf> {
    let mut rng = quern_tests::Rng(11);
    let words = [
        "foo", "bar", "Foo", "FOOBAR", "a.b", "foo_bar", "x", "", "\r",
    ];
    let mut text = |n: usize, crlf: &dyn Fn(usize) -> bool| -> Vec<u8> {
        let mut out = Vec::new();
        for i in 0..n {
            let a = words[rng.range(0, words.len() as u64) as usize];
            let b = words[rng.range(0, words.len() as u64) as usize];
            let line = if a.is_empty() {
                b.to_string()
            } else {
                format!("{a} {b}")
            };
            out.extend(line.as_bytes());
            out.extend(if crlf(i) { &b"\r\n"[..] } else { b"\n" });
        }
        out
    };
    let crlf = text(9_000, &|_| true);
    let mut mixed = text(8_000, &|i| i % 3 == 0);
    mixed.extend(b"foo at the end, without a newline");
    let mut long = Vec::new();
    for i in 0..6 {
        long.extend(
            format!("{i} foo ")
                .repeat(if i % 2 == 0 { 5_000 } else { 3 })
                .as_bytes(),
        );
        long.extend(b"\n");
    }
    let files = [
        ("crlf.txt", crlf),
        ("empty.txt", Vec::new()),
        ("mixed.txt", mixed),
        ("long.txt", long),
        ("short.txt", b"bar\nfoo bar".to_vec()),
    ];
    files
        .into_iter()
        .map(|(name, bytes)| {
            let path = dir.join(name);
            std::fs::write(&path, bytes).expect("write");
            path
        })
        .collect()
}

/// Runs GNU grep (`LC_ALL=C`, the peer) with `flags` on `paths`.
fn gnu_grep(flags: &[&str], paths: &[String]) -> std::process::Output {
    std::process::Command::new("grep")
        .args(flags)
        .args(paths)
        .env("LC_ALL", "C")
        .output()
        .expect("GNU grep runs")
}

/// `quern grep -n` prints what GNU grep 3.8 `-n` prints (stdout, stderr and exit status),
/// alone and with -v, -i, -w and -F, and changes nothing with -c, -l and -q: on all the files
/// and on each one alone, in-process and on the local cluster, with files spread over many
/// splits and with one chunk per file; and its part files concatenate to grep's stdout.
#[test]
fn grep_line_numbers_match_gnu_grep() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = numbered_corpus(dir.path());
    let cases: [&[&str]; 12] = [
        &["-n", "foo"],
        &["--line-number", "bar$"],
        &["-n", "-v", "foo"],
        &["-n", "-i", "foo"],
        &["-n", "-w", "foo"],
        &["-n", "-i", "-w", "-v", "bar"],
        &["-n", "-F", "a.b"],
        &["-n", "^$"],
        &["-n", "-c", "foo"],
        &["-n", "-l", "-v", "foo"],
        &["-n", "-q", "bar"],
        &["-n", "zzqqxx"],
    ];
    let all: Vec<String> = files.iter().map(|f| p(f)).collect();
    // (paths, split size, mode flag): each file alone in-process, all files in every mode.
    let mut runs: Vec<(Vec<String>, &str, Option<&str>)> = all
        .iter()
        .map(|f| (vec![f.clone()], "16KiB", Some("--in-process")))
        .collect();
    runs.push((all.clone(), "16KiB", Some("--in-process")));
    runs.push((all.clone(), "16KiB", None)); // the local cluster
    runs.push((all[2..3].to_vec(), "16KiB", None));
    runs.push((all.clone(), "64MiB", Some("--sequential")));
    for flags in cases {
        let mut numbered_lines = 0;
        for (paths, split, mode) in &runs {
            let mut args = vec!["grep".to_string(), "--split-size".into(), split.to_string()];
            args.extend(mode.map(String::from));
            args.extend(flags.iter().map(|f| f.to_string()));
            args.extend(paths.iter().cloned());
            let ours = run(&args);
            let gnu = gnu_grep(flags, paths);
            let what = format!(
                "grep {} on {} files ({} --split-size {split})",
                flags.join(" "),
                paths.len(),
                mode.unwrap_or("local cluster")
            );
            assert_eq!(
                ours.code,
                gnu.status.code().unwrap_or(-1),
                "{what}: exit status\n{}",
                ours.stderr
            );
            assert!(
                ours.stdout == gnu.stdout,
                "{what}: {} bytes of stdout, GNU grep printed {}\n{}",
                ours.stdout.len(),
                gnu.stdout.len(),
                first_difference(&ours.stdout, &gnu.stdout)
            );
            assert_eq!(ours.stderr, String::from_utf8_lossy(&gnu.stderr), "{what}");
            numbered_lines += gnu.stdout.iter().filter(|b| **b == b'\n').count();
        }
        if !["-c", "-l", "-q", "zzqqxx"]
            .iter()
            .any(|f| flags.contains(f))
        {
            assert!(numbered_lines > 0, "grep {flags:?} selects lines");
        }
    }

    // Written to a directory: one part (the reducer's), which is grep's stdout.
    let out = dir.path().join("out");
    let mut args = vec!["grep", "--split-size", "16KiB", "-n", "-i", "foo", "-o"];
    let out_arg = p(&out);
    args.push(&out_arg);
    args.extend(all.iter().map(String::as_str));
    run(&args).ok();
    assert_committed(&out, 1);
    let gnu = gnu_grep(&["-n", "-i", "foo"], &all);
    assert!(gnu.stdout.len() > 100_000, "a large output");
    assert!(
        concat_parts(&out) == gnu.stdout,
        "part files of grep -n -i foo"
    );
}

/// Where two outputs first differ, for assertion messages.
fn first_difference(ours: &[u8], theirs: &[u8]) -> String {
    let (a, b) = (lines(ours), lines(theirs));
    match a.zip(b).enumerate().find(|(_, (x, y))| x != y) {
        Some((i, (x, y))) => format!(
            "line {}: ours {:?}, GNU grep's {:?}",
            i + 1,
            String::from_utf8_lossy(x),
            String::from_utf8_lossy(y)
        ),
        None => "one is a prefix of the other".into(),
    }
}
