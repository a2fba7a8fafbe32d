//! `quern sort` against GNU sort (`LC_ALL=C sort`, the peer): `cat part-*` must be
//! byte-identical to sort's output for the same options, over several input files, small
//! splits and several reducers.

use std::path::{Path, PathBuf};
use std::process::Command;

use quern_tests::{assert_committed, concat_parts, p, parts, run, Rng};

/// Fields that exercise GNU's rules: numbers of every shape sort -n reads (and some it reads
/// as 0), words that tie, blanks inside fields, empty fields, `\r`, separators.
const WORDS: &[&str] = &[
    "a", "b", "apple", "Apple", "zed", "a b", "", "x", "10", "9", "-0", "0", "0.0", "1.5", "1.50",
    "01.5", "-1.5", "-2.25", "-10", ".5", "-.5", "+3", "1e3", "-", "abc", "7\r", "1,000",
    "3.14.15", "  42", "\t-7",
];

fn field(rng: &mut Rng) -> &'static str {
    WORDS[rng.range(0, WORDS.len() as u64) as usize]
}

/// `files` files of `lines` generated lines each, every file ending with a newline; many
/// lines repeat an earlier line or its first field, so keys tie often.
fn generate(dir: &Path, files: usize, lines: usize, seed: u64) -> Vec<PathBuf> {
    let mut rng = Rng(seed);
    let mut all: Vec<String> = Vec::new();
    let mut paths = Vec::new();
    for f in 0..files {
        let mut text = String::new();
        for _ in 0..lines {
            let line = match rng.range(0, 20) {
                0 => String::new(),
                1 if !all.is_empty() => all[rng.range(0, all.len() as u64) as usize].clone(),
                2 if !all.is_empty() => {
                    // Same first field as an earlier line, different rest.
                    let earlier = &all[rng.range(0, all.len() as u64) as usize];
                    let first = earlier.split([' ', ':']).next().unwrap_or("");
                    format!("{first} {}", field(&mut rng))
                }
                3 => format!("  {}", field(&mut rng)),
                _ => {
                    let n = rng.range(1, 5);
                    let mut line = String::new();
                    for i in 0..n {
                        if i > 0 {
                            line.push_str([" ", "  ", "\t", ":", " :"][rng.range(0, 5) as usize]);
                        }
                        line.push_str(field(&mut rng));
                    }
                    line
                }
            };
            text.push_str(&line);
            text.push('\n');
            all.push(line);
        }
        let path = dir.join(format!("in-{f}.txt"));
        std::fs::write(&path, text).expect("write input");
        paths.push(path);
    }
    paths
}

/// GNU sort's output for `flags` on the concatenation of `files`.
fn gnu_sort(flags: &[&str], files: &[PathBuf], dir: &Path) -> Vec<u8> {
    let cat: Vec<u8> = files
        .iter()
        .flat_map(|f| std::fs::read(f).expect("read input"))
        .collect();
    let all = dir.join("all.txt");
    std::fs::write(&all, cat).expect("write concatenation");
    let out = Command::new("sort")
        .args(flags)
        .arg(&all)
        .env("LC_ALL", "C")
        .output()
        .expect("GNU sort runs");
    assert!(out.status.success(), "sort {flags:?} failed");
    out.stdout
}

/// Runs `quern sort FLAGS FILES -o OUT MODE...` and returns `cat OUT/part-*`.
fn quern_sort(flags: &[&str], files: &[PathBuf], out: &Path, mode: &[&str]) -> Vec<u8> {
    let mut args: Vec<String> = vec!["sort".into(), "-q".into()];
    args.extend(flags.iter().map(|f| f.to_string()));
    args.extend(files.iter().map(|f| p(f)));
    args.extend([
        "-o".to_string(),
        p(out),
        "--split-size".into(),
        "8KiB".into(),
    ]);
    args.extend(mode.iter().map(|m| m.to_string()));
    run(&args).ok();
    assert_committed(out, 1);
    concat_parts(out)
}

fn first_difference(ours: &[u8], gnu: &[u8]) -> String {
    let (a, b) = (
        ours.split(|b| *b == b'\n').collect::<Vec<_>>(),
        gnu.split(|b| *b == b'\n').collect::<Vec<_>>(),
    );
    let i = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    format!(
        "line {}: ours {:?}, GNU sort {:?}",
        i + 1,
        a.get(i).map(|l| String::from_utf8_lossy(l)),
        b.get(i).map(|l| String::from_utf8_lossy(l))
    )
}

fn check(flags: &[&str], files: &[PathBuf], dir: &Path, mode: &[&str], name: &str) {
    let out = dir.join(name);
    let ours = quern_sort(flags, files, &out, mode);
    let gnu = gnu_sort(flags, files, dir);
    assert!(
        ours == gnu,
        "quern sort {} {}: {} bytes, GNU sort {} bytes; {}",
        flags.join(" "),
        mode.join(" "),
        ours.len(),
        gnu.len(),
        first_difference(&ours, &gnu)
    );
}

#[test]
fn sort_options_match_gnu_sort() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = generate(dir.path(), 3, 1500, 7);
    let cases: &[&[&str]] = &[
        &[],
        &["-k2"],
        &["-k2,2"],
        &["-k2,2n"],
        &["-t", ":", "-k2,2"],
        &["-t", ":", "-k2n", "-r"],
        &["-n"],
        &["-n", "-r"],
        &["-r"],
        &["-u"],
        &["-u", "-r"],
        &["-u", "-n"],
        &["-k2,2", "-u"],
        &["-k1,1n", "-u", "-r"],
        &["-k2,2nr", "-k1,1"],
        &["-k3,2", "-k1,1r"],
        &["-t", " ", "-k2,3", "-u"],
    ];
    for (i, flags) in cases.iter().enumerate() {
        let mode = ["--in-process", "--threads", "2", "--reducers", "3"];
        check(flags, &files, dir.path(), &mode, &format!("out-{i}"));
    }
}

#[test]
fn sort_ranges_partitions_and_runs_sequentially_and_on_the_local_cluster() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = generate(dir.path(), 3, 2000, 11);
    check(
        &["-k2,2nr", "-k1,1"],
        &files,
        dir.path(),
        &["--workers", "2", "--reducers", "4"],
        "cluster",
    );
    // The sampled cuts spread the lines: more than one partition holds some.
    let non_empty = parts(&dir.path().join("cluster"))
        .values()
        .filter(|b| !b.is_empty())
        .count();
    assert!(non_empty >= 2, "{non_empty} non-empty parts of 4");
    check(&["-u", "-k2"], &files, dir.path(), &["--sequential"], "seq");
    check(
        &["-n"],
        &files,
        dir.path(),
        &["--sequential", "--reducers", "1"],
        "seq1",
    );
}

#[test]
fn sort_adds_the_missing_final_newline_and_sorts_empty_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    let e = dir.path().join("e");
    std::fs::write(&a, "b\nc").expect("write");
    std::fs::write(&b, "a\n\n").expect("write");
    std::fs::write(&e, "").expect("write");
    let out = dir.path().join("out");
    let got = quern_sort(&[], &[a, e, b], &out, &["--in-process"]);
    assert_eq!(got, b"\na\nb\nc\n");
}

#[test]
fn unsupported_sort_options_are_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in");
    std::fs::write(&input, "b\na\n").expect("write");
    let out = p(&dir.path().join("out"));
    let cases: [(&[&str], &str); 7] = [
        (&["-b"], "-b"),
        (&["-f"], "-f (--ignore-case)"),
        (&["-s"], "-s"),
        (&["-k2.3"], "F.C"),
        (&["-k2b"], "modifier 'b'"),
        (&["-k0"], "zero"),
        (&["-t", "ab"], "one byte"),
    ];
    for (flags, needle) in cases {
        let mut args: Vec<String> = vec!["sort".into(), "--sequential".into()];
        args.extend(flags.iter().map(|f| f.to_string()));
        args.extend([p(&input), "-o".into(), out.clone()]);
        let o = run(&args);
        let line = o.user_error();
        assert!(line.contains(needle), "sort {flags:?}: {line}");
        assert!(!Path::new(&out).exists(), "nothing is written");
    }
}
