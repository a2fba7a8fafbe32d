//! Macro benchmark: quern against the tools its users would pick instead, on their own work,
//! timed side by side in one run.
//!
//! ```text
//! cargo build --release -p quern-jobs -p quern-benches
//! target/release/peers [--size 1GB] [--sort-size 1GB,4GB] [--runs 3] [--only sort,wc,...]
//!                      [--install] [--dir D] [--results benches/results] [--tree DIR]...
//! ```
//!
//! Work (`--only`; default all): `sort` (gensort ASCII records: `quern terasort` vs
//! `LC_ALL=C sort`, DuckDB, Polars, Spark local mode and `cp` of the input as the floor),
//! `wc` (a Zipf text corpus: `quern wc` vs Polars, DuckDB and mawk, `[A-Za-z]+` tokens),
//! `grep` (`quern grep -c` vs `rg -c` and `grep -c`, a literal and a regex), `tree` (grep
//! over a real source tree of tens of thousands of files vs `rg -c`), `small` (`quern wc`
//! of 1 MB end to end, the local cluster's start included), `stream` (`quern stream` word
//! count with mawk as mapper, combiner and reducer vs the built-in `quern wc`), `shuffle`
//! (`shuffle_net`: bytes/s of the shuffle's QUIC transport between two processes on
//! loopback vs plain TCP with the same framing).
//!
//! The data is generated deterministically under `--dir` and kept for the next run: records
//! by `quern teragen --ascii`, the text by this program (a vocabulary of a million words of
//! letters, drawn with Zipf's law, exponent 1; the program counts the words as it writes
//! them, which is the independent reference every word count is checked against). The
//! tools run in alternation, `--runs` times each, on a warm page cache; every output is
//! checked (sorts against GNU sort's output, line by line; word counts against the
//! generator's; grep counts against GNU grep's). A peer that is missing is skipped with a
//! note in the results (`--install` pip-installs the Python ones first). The table and the
//! JSON (with every run, the peak `RssAnon` of each tool's whole process tree, the machine
//! and the versions) go to `--results`; the exit status is 1 if any check failed.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use clap::{Parser, ValueEnum};
use quern_benches::{measure, median, parts, run, Measured};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

#[derive(Parser, Debug)]
#[command(about = "quern against GNU sort, DuckDB, Polars, Spark, ripgrep, grep and mawk")]
struct Args {
    /// Size of the word count and grep corpus.
    #[arg(long, default_value = "1GB", value_parser = parse_size)]
    size: u64,
    /// Sizes of the sort inputs (default: --size).
    #[arg(long, value_delimiter = ',', value_parser = parse_size)]
    sort_size: Vec<u64>,
    /// Size of the streaming word count's input.
    #[arg(long, default_value = "256MB", value_parser = parse_size)]
    stream_size: u64,
    /// Bytes sent by the shuffle transport measurement.
    #[arg(long, default_value = "4GB", value_parser = parse_size)]
    shuffle_size: u64,
    /// Timed runs of each tool.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The work to measure (default: all).
    #[arg(long, value_delimiter = ',')]
    only: Vec<Work>,
    /// Where the data is generated and kept.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Where the table and JSON go.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/results"))]
    results: PathBuf,
    /// Source trees for `tree` (default: /root/.pyenv/versions, or ~/.cargo/registry/src).
    #[arg(long)]
    tree: Vec<PathBuf>,
    /// pip-install the Python peers that are missing (duckdb, polars, pyspark).
    #[arg(long)]
    install: bool,
    /// The quern binary (default: beside this one).
    #[arg(long)]
    quern: Option<PathBuf>,
    /// Skip Spark even if installed (its start-up takes seconds per run).
    #[arg(long)]
    no_spark: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Work {
    Sort,
    Wc,
    Grep,
    Tree,
    Small,
    Stream,
    Shuffle,
}

fn parse_size(s: &str) -> Result<u64, String> {
    s.parse::<bytesize::ByteSize>().map(|b| b.as_u64())
}

/// A command that runs one tool once, writing to `out`.
type Make<'a> = Box<dyn Fn(&Path) -> Command + 'a>;
/// Checks one tool's output (its `out` path and its stdout file).
type Check<'a> = Box<dyn Fn(&Path, &Path) -> Result<(), String> + 'a>;

struct Tool<'a> {
    name: String,
    make: Make<'a>,
    check: Check<'a>,
    /// The floor (`cp`), not a peer: left out of "fastest peer".
    floor: bool,
}

/// What one tool measured.
struct Timing {
    name: String,
    runs: Vec<Measured>,
    check: Result<(), String>,
    floor: bool,
}

impl Timing {
    fn median(&self) -> Option<f64> {
        (!self.runs.is_empty()).then(|| median(self.runs.iter().map(|m| m.secs).collect()))
    }
    fn min(&self) -> f64 {
        self.runs
            .iter()
            .map(|m| m.secs)
            .fold(f64::INFINITY, f64::min)
    }
    fn max(&self) -> f64 {
        self.runs.iter().map(|m| m.secs).fold(0.0, f64::max)
    }
    fn peak(&self) -> u64 {
        self.runs.iter().map(|m| m.peak_anon).max().unwrap_or(0)
    }
}

struct Workload {
    kind: Work,
    title: String,
    input: String,
    bytes: u64,
    timings: Vec<Timing>,
}

impl Workload {
    fn get(&self, name: &str) -> Option<&Timing> {
        self.timings.iter().find(|t| t.name == name)
    }
    /// The fastest median among the peers (not quern, not the floor).
    fn fastest_peer(&self) -> Option<(&str, f64)> {
        self.timings
            .iter()
            .filter(|t| !t.floor && !t.name.starts_with("quern") && t.check.is_ok())
            .filter_map(|t| t.median().map(|m| (t.name.as_str(), m)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
    }
}

/// Times `tools` in alternation, `runs` times each, checking each one's first output.
fn time_all(dir: &Path, runs: usize, tools: &[Tool<'_>]) -> Vec<Timing> {
    let mut timings: Vec<Timing> = tools
        .iter()
        .map(|t| Timing {
            name: t.name.clone(),
            runs: Vec::new(),
            check: Ok(()),
            floor: t.floor,
        })
        .collect();
    for round in 0..runs {
        for (tool, timing) in tools.iter().zip(&mut timings) {
            if timing.check.is_err() {
                continue;
            }
            let slug: String = tool
                .name
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                .collect();
            let out = dir.join(format!("out-{slug}"));
            let log = dir.join(format!("log-{slug}"));
            remove(&out);
            let result = measure(&mut (tool.make)(&out), &log).and_then(|m| {
                if round == 0 {
                    (tool.check)(&out, &log)?;
                }
                Ok(m)
            });
            match result {
                Ok(m) => {
                    eprintln!("  {:<34} {:8.3} s", tool.name, m.secs);
                    timing.runs.push(m);
                }
                Err(e) => {
                    eprintln!("  {:<34} FAILED: {e}", tool.name);
                    timing.check = Err(e);
                }
            }
            remove(&out);
        }
    }
    timings
}

fn remove(path: &Path) {
    if path.is_dir() {
        let _ = std::fs::remove_dir_all(path);
    } else {
        let _ = std::fs::remove_file(path);
    }
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{}: {e}", path.display())
}

// ---------------------------------------------------------------------------------------
// Data

/// Records of `quern teragen --ascii` totalling `bytes` (kept under `dir`).
fn records(quern: &Path, dir: &Path, bytes: u64) -> Result<PathBuf, String> {
    let out = dir.join(format!("teragen-ascii-{bytes}"));
    if out.join("_SUCCESS").exists() {
        return Ok(out);
    }
    remove(&out);
    eprintln!("generating {bytes} bytes of gensort ASCII records");
    run(Command::new(quern)
        .args(["teragen", "--ascii", "-q", "--records"])
        .arg((bytes / 100).to_string())
        .arg("--output")
        .arg(&out))?;
    Ok(out)
}

/// A Zipf text corpus of about `bytes` bytes and its word counts, kept under `dir`.
struct Corpus {
    text: PathBuf,
    counts: HashMap<String, u64>,
    /// A word about the 500th most frequent, for the literal grep.
    literal: String,
}

const VOCABULARY: usize = 1_000_000;

fn vocabulary(rng: &mut rand::rngs::StdRng) -> Vec<String> {
    const SYLLABLES: [&str; 40] = [
        "a", "an", "ar", "be", "ca", "co", "de", "di", "el", "en", "er", "fa", "ga", "ha", "in",
        "is", "ka", "la", "le", "li", "lo", "ma", "me", "mi", "mo", "na", "ne", "no", "on", "or",
        "pa", "ra", "re", "ri", "ro", "sa", "se", "ta", "te", "to",
    ];
    const SUFFIXES: [&str; 6] = ["ing", "ed", "s", "ly", "tion", "er"];
    let mut seen = std::collections::HashSet::with_capacity(VOCABULARY);
    let mut words = Vec::with_capacity(VOCABULARY);
    while words.len() < VOCABULARY {
        let mut w = String::new();
        for _ in 0..rng.gen_range(1..=4) {
            w.push_str(SYLLABLES[rng.gen_range(0..SYLLABLES.len())]);
        }
        // An eighth of the words end in -ing, an eighth in -ed, a sixth in other suffixes.
        match rng.gen_range(0..24) {
            r @ 0..=5 => w.push_str(SUFFIXES[r / 3]),
            r @ 6..=9 => w.push_str(SUFFIXES[r - 4]),
            _ => {}
        }
        if seen.insert(w.clone()) {
            words.push(w);
        }
    }
    words
}

fn corpus(dir: &Path, bytes: u64) -> Result<Corpus, String> {
    let text = dir.join(format!("zipf-{bytes}.txt"));
    let counts_file = dir.join(format!("zipf-{bytes}.counts"));
    let mut rng = rand::rngs::StdRng::seed_from_u64(2004);
    let words = vocabulary(&mut rng);
    let literal = words[499].clone();
    if counts_file.exists() && text.exists() {
        let mut counts = HashMap::new();
        let f = std::fs::File::open(&counts_file).map_err(io_err(&counts_file))?;
        for line in BufReader::new(f).lines() {
            let line = line.map_err(io_err(&counts_file))?;
            if let Some((w, n)) = line.split_once(' ') {
                counts.insert(w.to_string(), n.parse().map_err(|e| format!("{e}"))?);
            }
        }
        return Ok(Corpus {
            text,
            counts,
            literal,
        });
    }
    eprintln!("generating a {bytes}-byte Zipf text corpus");
    let zipf = rand_distr::Zipf::new(VOCABULARY as u64, 1.0).map_err(|e| format!("{e:?}"))?;
    let mut n = vec![0u64; VOCABULARY];
    let tmp = text.with_extension("tmp");
    let f = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
    let mut out = BufWriter::with_capacity(1 << 20, f);
    let mut written = 0u64;
    let mut line = Vec::with_capacity(256);
    while written < bytes {
        line.clear();
        for i in 0..rng.gen_range(6..=14) {
            let rank = (rng.sample(zipf) as usize).clamp(1, VOCABULARY) - 1;
            if i > 0 {
                line.push(b' ');
            }
            line.extend_from_slice(words[rank].as_bytes());
            n[rank] += 1;
        }
        line.push(b'\n');
        out.write_all(&line).map_err(io_err(&tmp))?;
        written += line.len() as u64;
    }
    out.flush().map_err(io_err(&tmp))?;
    drop(out);
    let mut counts = HashMap::new();
    let mut c = BufWriter::new(std::fs::File::create(&counts_file).map_err(io_err(&counts_file))?);
    for (w, &k) in words.iter().zip(&n) {
        if k > 0 {
            writeln!(c, "{w} {k}").map_err(io_err(&counts_file))?;
            counts.insert(w.clone(), k);
        }
    }
    c.flush().map_err(io_err(&counts_file))?;
    std::fs::rename(&tmp, &text).map_err(io_err(&text))?;
    Ok(Corpus {
        text,
        counts,
        literal,
    })
}

// ---------------------------------------------------------------------------------------
// Checks

/// The files of an output: the `part-*` files of a directory, or the file itself.
fn output_files(out: &Path) -> Result<Vec<PathBuf>, String> {
    if out.is_dir() {
        parts(out)
    } else {
        Ok(vec![out.to_path_buf()])
    }
}

/// Lines of `files` in order, without `\n` or `\r\n`.
fn lines_of(files: &[PathBuf]) -> impl Iterator<Item = Result<Vec<u8>, String>> + '_ {
    files.iter().flat_map(|f| {
        let reader = std::fs::File::open(f)
            .map(|file| BufReader::with_capacity(1 << 20, file))
            .map_err(io_err(f));
        let lines: Box<dyn Iterator<Item = Result<Vec<u8>, String>>> = match reader {
            Ok(r) => Box::new(r.split(b'\n').map(move |l| {
                l.map(|mut l| {
                    if l.last() == Some(&b'\r') {
                        l.pop();
                    }
                    l
                })
                .map_err(io_err(f))
            })),
            Err(e) => Box::new(std::iter::once(Err(e))),
        };
        lines
    })
}

/// The lines of `out` equal those of `reference` (line endings aside).
fn same_lines(out: &Path, reference: &Path) -> Result<(), String> {
    let got = output_files(out)?;
    let want = output_files(reference)?;
    let mut a = lines_of(&got);
    let mut b = lines_of(&want);
    let mut n = 0u64;
    loop {
        match (a.next().transpose()?, b.next().transpose()?) {
            (None, None) => return Ok(()),
            (x, y) if x == y => n += 1,
            (x, y) => {
                let show = |l: Option<Vec<u8>>| {
                    l.map_or("end of output".into(), |l| {
                        String::from_utf8_lossy(&l).into_owned()
                    })
                };
                return Err(format!(
                    "line {}: {:?}, expected {:?} (as {})",
                    n + 1,
                    show(x),
                    show(y),
                    reference.display()
                ));
            }
        }
    }
}

/// Word counts of `out` (lines `word<sep>count`, any of space, tab or comma) equal `want`.
fn same_counts(out: &Path, want: &HashMap<String, u64>) -> Result<(), String> {
    let mut got: HashMap<String, u64> = HashMap::with_capacity(want.len());
    for line in lines_of(&output_files(out)?) {
        let line = String::from_utf8(line?).map_err(|e| e.to_string())?;
        if line.is_empty() {
            continue;
        }
        let (w, n) = line
            .rsplit_once([' ', '\t', ','])
            .ok_or_else(|| format!("line without a count: {line:?}"))?;
        let n: u64 = n.trim().parse().map_err(|e| format!("{line:?}: {e}"))?;
        *got.entry(w.to_string()).or_default() += n;
    }
    if got.len() != want.len() {
        return Err(format!(
            "{} distinct words, expected {}",
            got.len(),
            want.len()
        ));
    }
    for (w, n) in want {
        if got.get(w) != Some(n) {
            return Err(format!("{w:?}: {:?}, expected {n}", got.get(w)));
        }
    }
    Ok(())
}

/// Sum of the counts of a `grep -c` output (`N`, or `FILE:N` lines).
fn total_count(stdout: &Path) -> Result<(u64, usize), String> {
    let text = std::fs::read_to_string(stdout).map_err(io_err(stdout))?;
    let mut total = 0;
    let mut files = 0;
    for line in text.lines() {
        let n = line.rsplit_once(':').map_or(line, |(_, n)| n);
        total += n
            .trim()
            .parse::<u64>()
            .map_err(|e| format!("{line:?}: {e}"))?;
        files += 1;
    }
    Ok((total, files))
}

// ---------------------------------------------------------------------------------------
// Peers

struct Peers {
    versions: Vec<(String, Option<String>)>,
    notes: Vec<String>,
}

impl Peers {
    fn has(&self, name: &str) -> bool {
        self.versions.iter().any(|(n, v)| n == name && v.is_some())
    }

    fn find(args: &Args) -> Peers {
        let mut peers = Peers {
            versions: Vec::new(),
            notes: Vec::new(),
        };
        let first_line = |cmd: &mut Command| {
            cmd.output().ok().filter(|o| o.status.success()).map(|o| {
                let text = if o.stdout.is_empty() {
                    o.stderr
                } else {
                    o.stdout
                };
                String::from_utf8_lossy(&text)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_string()
            })
        };
        for (name, cmd) in [
            ("GNU sort", vec!["sort", "--version"]),
            ("GNU grep", vec!["grep", "--version"]),
            ("ripgrep", vec!["rg", "--version"]),
            ("mawk", vec!["mawk", "-W", "version"]),
            ("java", vec!["java", "-version"]),
        ] {
            let v = first_line(Command::new(cmd[0]).args(&cmd[1..]));
            if v.is_none() {
                peers.notes.push(format!(
                    "{name} skipped: `{}` not found (apt-get install {})",
                    cmd[0],
                    match cmd[0] {
                        "rg" => "ripgrep",
                        "java" => "openjdk-17-jre-headless",
                        other => other,
                    }
                ));
            }
            peers.versions.push((name.to_string(), v));
        }
        for module in ["duckdb", "polars", "pyspark"] {
            if module == "pyspark" && args.no_spark {
                peers.notes.push("Spark skipped: --no-spark".into());
                peers.versions.push((module.into(), None));
                continue;
            }
            let version = || {
                first_line(Command::new("python3").args([
                    "-c",
                    &format!("import {module}; print({module}.__version__)"),
                ]))
            };
            let mut v = version();
            if v.is_none() && args.install {
                eprintln!("pip install {module}");
                let _ = Command::new("python3")
                    .args(["-m", "pip", "install", "-q", module])
                    .status();
                v = version();
            }
            if v.is_none() {
                peers.notes.push(format!(
                    "{module} skipped: not importable by python3 (pip install {module}, or \
                     run with --install)"
                ));
            }
            peers.versions.push((module.into(), v));
        }
        if peers.has("pyspark") && !peers.has("java") {
            peers.notes.push("Spark skipped: no java".into());
            for (name, v) in &mut peers.versions {
                if name == "pyspark" {
                    *v = None;
                }
            }
        }
        peers
    }
}

fn python(script: &str, args: &[&Path]) -> Command {
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(script).args(args);
    cmd
}

/// One-column CSV reading of text lines: no header, no quoting, a separator never seen.
const DUCKDB_LINES: &str = "read_csv(?, columns={'line': 'VARCHAR'}, header=false, \
    delim='\\x01', quote='', escape='', auto_detect=false)";

/// A DuckDB script: `COPY (query) TO argv[2]`, the query reading `argv[1]` (with `/part-*`
/// when `parts`) as one-column lines, the output unquoted with `sep` between columns.
fn duckdb(query: &str, parts: bool, sep: &str) -> String {
    let input = if parts {
        "sys.argv[1] + '/part-*'"
    } else {
        "sys.argv[1]"
    };
    format!(
        "import duckdb, sys\n\
         q = \"{query}\".replace('LINES', \"{DUCKDB_LINES}\".replace('?', repr({input})))\n\
         duckdb.connect().execute(f\"COPY ({{q}}) TO '{{sys.argv[2]}}' (HEADER false, QUOTE '', DELIMITER '{sep}')\")\n"
    )
}

fn duckdb_sort() -> String {
    duckdb("SELECT line FROM LINES ORDER BY line", true, "\\x01")
}

fn duckdb_wc() -> String {
    duckdb(
        "SELECT w, count(*) FROM (SELECT unnest(regexp_extract_all(line, '[A-Za-z]+')) AS w FROM LINES) GROUP BY w",
        false,
        " ",
    )
}

const POLARS_SCAN: &str = "pl.scan_csv(sys.argv[1], has_header=False, separator='\\x01', \
    quote_char=None, schema={'line': pl.String})";

fn polars_sort() -> String {
    format!(
        "import polars as pl, sys\n\
         {POLARS_SCAN}.sort('line').sink_csv(sys.argv[2], include_header=False, quote_style='never')\n"
    )
    .replace("sys.argv[1]", "sys.argv[1] + '/part-*'")
}

fn polars_wc() -> String {
    format!(
        "import polars as pl, sys\n\
         ({POLARS_SCAN}.select(pl.col('line').str.extract_all('[A-Za-z]+').explode().alias('w'))\n\
          .drop_nulls().group_by('w').len().collect()\n\
          .write_csv(sys.argv[2], include_header=False, separator=' '))\n"
    )
}

const SPARK_SORT: &str = "import sys\n\
from pyspark.sql import SparkSession\n\
s = (SparkSession.builder.master('local[*]').config('spark.driver.memory', '12g')\n\
     .config('spark.ui.enabled', 'false').getOrCreate())\n\
s.sparkContext.setLogLevel('ERROR')\n\
s.read.text(sys.argv[1] + '/part-*').sort('value').write.text(sys.argv[2])\n";

const AWK_WC: &str = "{ for (i = 1; i <= NF; i++) c[$i]++ } END { for (w in c) print w, c[w] }";

// ---------------------------------------------------------------------------------------
// Work

struct Bench<'a> {
    args: &'a Args,
    quern: PathBuf,
    dir: PathBuf,
    peers: Peers,
    cores: usize,
}

impl Bench<'_> {
    fn quern(&self) -> Command {
        Command::new(&self.quern)
    }

    /// Adds a tool for each installed Python peer of `scripts` (module, name, script): the
    /// script run with `input` and the output path.
    fn python_tools<'a>(
        &self,
        tools: &mut Vec<Tool<'a>>,
        scripts: &'a [(&str, &str, String)],
        input: &'a Path,
        check: &'a (dyn Fn(&Path, &Path) -> Result<(), String> + 'a),
    ) {
        for (module, name, script) in scripts {
            if self.peers.has(module) {
                tools.push(Tool {
                    name: name.to_string(),
                    make: Box::new(move |out| python(script, &[input, out])),
                    check: Box::new(check),
                    floor: false,
                });
            }
        }
    }

    fn sort(&self, bytes: u64) -> Result<Workload, String> {
        let input = records(&self.quern, &self.dir, bytes)?;
        let inputs = parts(&input)?;
        let reference = self.dir.join(format!("sorted-{bytes}.txt"));
        if !reference.exists() {
            eprintln!("sorting with GNU sort for the reference output");
            let tmp = reference.with_extension("tmp");
            run(Command::new("sort")
                .env("LC_ALL", "C")
                .arg(format!("--parallel={}", self.cores))
                .args(["-S", "50%", "-o"])
                .arg(&tmp)
                .args(&inputs))?;
            std::fs::rename(&tmp, &reference).map_err(io_err(&reference))?;
        }
        let scripts = [
            ("duckdb", "DuckDB", duckdb_sort()),
            ("polars", "Polars", polars_sort()),
            ("pyspark", "Spark local mode", SPARK_SORT.to_string()),
        ];
        let check: &dyn Fn(&Path, &Path) -> Result<(), String> =
            &|out: &Path, _: &Path| same_lines(out, &reference);
        let mut tools: Vec<Tool<'_>> = vec![Tool {
            name: "quern terasort".into(),
            make: Box::new(|out| {
                let mut c = self.quern();
                c.args(["terasort", "-q"])
                    .arg(&input)
                    .arg("--output")
                    .arg(out);
                c
            }),
            check: Box::new(check),
            floor: false,
        }];
        tools.push(Tool {
            name: format!("LC_ALL=C sort --parallel={} -S 50%", self.cores),
            make: Box::new(|out| {
                let mut c = Command::new("sort");
                c.env("LC_ALL", "C")
                    .arg(format!("--parallel={}", self.cores))
                    .args(["-S", "50%", "-o"])
                    .arg(out)
                    .args(&inputs);
                c
            }),
            check: Box::new(check),
            floor: false,
        });
        self.python_tools(&mut tools, &scripts, &input, check);
        tools.push(Tool {
            name: "cp -r (the floor)".into(),
            make: Box::new(|out| {
                let mut c = Command::new("cp");
                c.arg("-r").arg(&input).arg(out);
                c
            }),
            check: Box::new(|_, _| Ok(())),
            floor: true,
        });
        Ok(Workload {
            kind: Work::Sort,
            title: format!("sort {}", human(bytes)),
            input: format!("{} gensort ASCII records", bytes / 100),
            bytes,
            timings: time_all(&self.dir, self.args.runs, &tools),
        })
    }

    fn wc(&self, corpus: &Corpus, bytes: u64) -> Result<Workload, String> {
        let text = &corpus.text;
        let scripts = [
            ("polars", "Polars", polars_wc()),
            ("duckdb", "DuckDB", duckdb_wc()),
        ];
        let check = |out: &Path, _: &Path| same_counts(out, &corpus.counts);
        let mut tools: Vec<Tool<'_>> = vec![Tool {
            name: "quern wc".into(),
            make: Box::new(|out| self.wc_command(text, out)),
            check: Box::new(check),
            floor: false,
        }];
        self.python_tools(&mut tools, &scripts, text, &check);
        if self.peers.has("mawk") {
            tools.push(Tool {
                name: "mawk".into(),
                make: Box::new(|out| {
                    let mut c = Command::new("sh");
                    c.arg("-c")
                        .arg(format!("mawk '{AWK_WC}' \"$1\" > \"$2\""))
                        .arg("sh")
                        .arg(text)
                        .arg(out);
                    c
                }),
                check: Box::new(check),
                floor: false,
            });
        }
        Ok(Workload {
            kind: Work::Wc,
            title: format!("word count {}", human(bytes)),
            input: format!(
                "Zipf text (exponent 1, {VOCABULARY} words), {} distinct",
                corpus.counts.len()
            ),
            bytes,
            timings: time_all(&self.dir, self.args.runs, &tools),
        })
    }

    /// `quern grep -c`, `rg -c` and `grep -c` of `pattern` (a literal with `fixed`), every
    /// count equal to GNU grep's.
    fn grep(
        &self,
        kind: Work,
        title: String,
        input: String,
        paths: &[PathBuf],
        pattern: &str,
        fixed: bool,
    ) -> Result<Workload, String> {
        let bytes = paths.iter().map(|p| du(p)).sum();
        // GNU grep's count, as it is (a file with a NUL byte is binary: NULs end lines too,
        // which quern's grep does as well) and with `-a` (every file is text, as rg --text).
        let reference = |text: bool| {
            let log = self
                .dir
                .join(format!("grep-reference{}", if text { "-a" } else { "" }));
            let _ = measure(&mut gnu_grep(fixed, text, pattern, paths), &log);
            total_count(&log)
        };
        let (want, files) = reference(false)?;
        // rg skips files with a NUL when it walks a directory: there it searches with
        // --text, and only there does its count need the `-a` reference.
        let rg_text = self.peers.has("ripgrep") && paths.iter().any(|p| p.is_dir());
        let want_text = if rg_text { reference(true)?.0 } else { want };
        let against = |want: u64, grep: &'static str| {
            move |_: &Path, stdout: &Path| {
                let (got, _) = total_count(stdout)?;
                if got == want {
                    Ok(())
                } else {
                    Err(format!("{got} matching lines, {grep} counts {want}"))
                }
            }
        };
        let check = against(want, "GNU grep");
        let fixed_flag: &[&str] = if fixed { &["-F"] } else { &[] };
        let mut tools = vec![Tool {
            name: "quern grep -c".into(),
            make: Box::new(|_| {
                let mut c = self.quern();
                c.args(["grep", "-c"])
                    .args(fixed_flag)
                    .arg(pattern)
                    .args(paths);
                c
            }),
            check: Box::new(check),
            floor: false,
        }];
        if self.peers.has("ripgrep") {
            tools.push(Tool {
                name: "rg -c".into(),
                make: Box::new(|_| {
                    let mut c = Command::new("rg");
                    // rg skips what .gitignore and hidden names exclude: search what quern
                    // searches instead.
                    c.args(["-c", "--no-ignore", "--hidden", "--no-messages"])
                        .args(["-g", "!_*", "-g", "!.*"]);
                    if rg_text {
                        c.arg("--text");
                    }
                    c.args(fixed_flag).arg("-e").arg(pattern).args(paths);
                    c
                }),
                check: Box::new(against(want_text, "GNU grep -a")),
                floor: false,
            });
        }
        tools.push(Tool {
            name: format!("grep -c {}", if fixed { "-F" } else { "-E" }),
            make: Box::new(|_| gnu_grep(fixed, false, pattern, paths)),
            check: Box::new(check),
            floor: false,
        });
        let timings = time_all(&self.dir, self.args.runs, &tools);
        Ok(Workload {
            kind,
            title,
            input: format!("{input}, {files} files, pattern `{pattern}`, {want} matching lines"),
            bytes,
            timings,
        })
    }

    fn small(&self) -> Result<Workload, String> {
        let corpus = corpus(&self.dir, 1_000_000)?;
        let text = &corpus.text;
        let tools = vec![Tool {
            name: "quern wc (local cluster)".into(),
            make: Box::new(|out| self.wc_command(text, out)),
            check: Box::new(|out, _| same_counts(out, &corpus.counts)),
            floor: false,
        }];
        Ok(Workload {
            kind: Work::Small,
            title: "word count 1 MB, end to end".into(),
            input: "Zipf text; the local cluster's start-up and shutdown included".into(),
            bytes: 1_000_000,
            timings: time_all(&self.dir, self.args.runs.max(5), &tools),
        })
    }

    /// `quern wc` of `text` into `out`.
    fn wc_command(&self, text: &Path, out: &Path) -> Command {
        let mut c = self.quern();
        c.args(["wc", "-q"]).arg(text).arg("--output").arg(out);
        c
    }

    /// `quern stream` over `text` into `out`.
    fn stream(
        &self,
        text: &Path,
        out: &Path,
        mapper: &str,
        combiner: Option<&str>,
        reducer: &str,
    ) -> Command {
        let mut c = self.quern();
        c.args(["stream", "-q"])
            .arg(text)
            .arg("--output")
            .arg(out)
            .args(["--mapper", mapper, "--reducer", reducer]);
        if let Some(combiner) = combiner {
            c.args(["--combiner", combiner]);
        }
        c
    }

    /// The shuffle transport: `shuffle_net` (beside this program) sending `--shuffle-size`
    /// bytes in 64 MiB segments from one process to another over QUIC, and over TCP.
    fn shuffle(&self) -> Result<Workload, String> {
        let program = std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name("shuffle_net");
        if !program.exists() {
            return Err(format!(
                "{} not found: build it with `cargo build --release -p quern-benches`",
                program.display()
            ));
        }
        const SEGMENT: u64 = 64 << 20;
        let bytes = self.args.shuffle_size;
        // shuffle_net sends whole segments only.
        let sent = (bytes / SEGMENT).max(1) * SEGMENT;
        let want = format!("received {sent} bytes");
        let check = |_: &Path, stdout: &Path| {
            let text = std::fs::read_to_string(stdout).map_err(io_err(stdout))?;
            if text.lines().any(|l| l.starts_with(&want)) {
                Ok(())
            } else {
                Err(format!("the receiver did not say `{want}`: {text}"))
            }
        };
        let tool = |name: &str, transport: &'static str| Tool {
            name: name.into(),
            make: Box::new({
                let program = program.clone();
                move |_| {
                    let mut c = Command::new(&program);
                    c.args(["--transport", transport, "--total"])
                        .arg(bytes.to_string())
                        .arg("--segment")
                        .arg(SEGMENT.to_string());
                    c
                }
            }),
            check: Box::new(check),
            floor: false,
        };
        let tools = vec![
            tool("quern shuffle: QUIC (quinn, TLS 1.3)", "quic"),
            tool("TCP (one connection, same framing)", "tcp"),
        ];
        Ok(Workload {
            kind: Work::Shuffle,
            title: format!("shuffle transport {}", human(sent)),
            input: "64 MiB segments from one process to another on loopback, one stream; \
                    process start and connection set-up included"
                .into(),
            bytes: sent,
            timings: time_all(&self.dir, self.args.runs, &tools),
        })
    }

    fn streaming(&self) -> Result<Workload, String> {
        let bytes = self.args.stream_size;
        let corpus = corpus(&self.dir, bytes)?;
        let text = &corpus.text;
        let check = |out: &Path, _: &Path| same_counts(out, &corpus.counts);
        let mapper = "mawk '{ for (i = 1; i <= NF; i++) print $i \"\\t1\" }'";
        let sum = |sep: &str| {
            format!(
                "mawk -F'\\t' '{{ c[$1] += $2 }} END {{ for (w in c) print w \"{sep}\" c[w] }}'"
            )
        };
        let (combiner, reducer) = (sum("\\t"), sum(" "));
        let in_mapper =
            "mawk '{ for (i = 1; i <= NF; i++) c[$i]++ } END { for (w in c) print w \"\\t\" c[w] }'";
        let tools = vec![
            Tool {
                name: "quern wc (built in)".into(),
                make: Box::new(|out| self.wc_command(text, out)),
                check: Box::new(check),
                floor: false,
            },
            Tool {
                name: "quern stream, mawk mapper + combiner".into(),
                make: Box::new(|out| self.stream(text, out, mapper, Some(&combiner), &reducer)),
                check: Box::new(check),
                floor: false,
            },
            Tool {
                name: "quern stream, in-mapper mawk".into(),
                make: Box::new(|out| self.stream(text, out, in_mapper, None, &reducer)),
                check: Box::new(check),
                floor: false,
            },
        ];
        Ok(Workload {
            kind: Work::Stream,
            title: format!("streaming word count {}", human(bytes)),
            input: "Zipf text; mawk as mapper (one `word\\t1` line per word, or counts per \
                    task), combiner and reducer"
                .into(),
            bytes,
            timings: time_all(&self.dir, self.args.runs, &tools),
        })
    }
}

/// Bytes under `path` (a file, or a directory walked without following links).
fn du(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return if meta.is_file() { meta.len() } else { 0 };
    }
    std::fs::read_dir(path)
        .map(|d| d.flatten().map(|e| du(&e.path())).sum())
        .unwrap_or(0)
}

fn human(bytes: u64) -> String {
    let (n, unit) = if bytes >= 1_000_000_000 {
        (bytes as f64 / 1e9, "GB")
    } else {
        (bytes as f64 / 1e6, "MB")
    };
    let n = format!("{n:.2}");
    format!("{} {unit}", n.trim_end_matches('0').trim_end_matches('.'))
}

// ---------------------------------------------------------------------------------------
// Report

struct Target {
    what: String,
    value: String,
    met: Option<bool>,
}

/// `quern`'s median against `against`'s: met when the ratio is at most `max`.
fn ratio_target(
    w: &Workload,
    quern: &str,
    what: &str,
    against: Option<(&str, f64)>,
    max: f64,
) -> Target {
    let what = format!("{}: {what}", w.title);
    let (Some(q), Some((peer, p))) = (w.get(quern).and_then(Timing::median), against) else {
        return Target {
            what,
            value: "not measured".into(),
            met: None,
        };
    };
    let ratio = q / p;
    Target {
        what,
        value: format!("{q:.2} s vs {peer} {p:.2} s: {ratio:.2}x"),
        met: Some(ratio <= max),
    }
}

fn targets(work: &[Workload]) -> Vec<Target> {
    let mut t = Vec::new();
    let median_of = |w: &Workload, name: &str| {
        w.timings
            .iter()
            .find(|t| t.name.starts_with(name))
            .and_then(|t| t.median().map(|m| (t.name.clone(), m)))
    };
    for w in work {
        match w.kind {
            Work::Sort => {
                let fastest = w.fastest_peer();
                t.push(ratio_target(
                    w,
                    "quern terasort",
                    "≤ 1/3 of the fastest peer",
                    fastest,
                    1.0 / 3.0,
                ));
                let cp = median_of(w, "cp");
                let cp = cp.as_ref().map(|(n, m)| (n.as_str(), *m));
                t.push(ratio_target(w, "quern terasort", "≤ 3× cp", cp, 3.0));
                if let Some(q) = w.get("quern terasort").filter(|_| w.bytes >= 4_000_000_000) {
                    t.push(Target {
                        what: format!("{}: peak RssAnon ≤ 1 GiB", w.title),
                        value: format!("{:.0} MiB", q.peak() as f64 / (1 << 20) as f64),
                        met: Some(q.peak() <= 1 << 30),
                    });
                }
            }
            Work::Wc => {
                let polars = median_of(w, "Polars");
                let polars = polars.as_ref().map(|(n, m)| (n.as_str(), *m));
                t.push(ratio_target(
                    w,
                    "quern wc",
                    "≤ 1/3 of Polars",
                    polars,
                    1.0 / 3.0,
                ));
            }
            Work::Grep | Work::Tree => {
                let max = if w.kind == Work::Tree { 1.5 } else { 0.8 };
                let rg = median_of(w, "rg");
                let rg = rg.as_ref().map(|(n, m)| (n.as_str(), *m));
                t.push(ratio_target(
                    w,
                    "quern grep -c",
                    &format!("≤ {max}× ripgrep"),
                    rg,
                    max,
                ));
            }
            Work::Small => {
                if let Some((_, m)) = median_of(w, "quern wc") {
                    t.push(Target {
                        what: format!("{}: < 0.15 s", w.title),
                        value: format!("{m:.3} s"),
                        met: Some(m < 0.15),
                    });
                }
            }
            Work::Shuffle => {
                if let (Some((_, q)), Some((_, tcp))) =
                    (median_of(w, "quern shuffle"), median_of(w, "TCP"))
                {
                    t.push(Target {
                        what: format!("{}: QUIC against TCP (no target)", w.title),
                        value: format!(
                            "QUIC {:.2} GB/s, TCP {:.2} GB/s: {:.2}x TCP's time",
                            w.bytes as f64 / 1e9 / q,
                            w.bytes as f64 / 1e9 / tcp,
                            q / tcp
                        ),
                        met: None,
                    });
                }
            }
            Work::Stream => {
                if let (Some((_, q)), Some((_, s))) = (
                    median_of(w, "quern wc"),
                    median_of(w, "quern stream, mawk mapper"),
                ) {
                    t.push(Target {
                        what: format!("{}: overhead of streaming (no target)", w.title),
                        value: format!("stream / built-in = {:.2}x", s / q),
                        met: None,
                    });
                }
            }
        }
    }
    t
}

/// GNU grep counting the lines of `paths` that match `pattern`, over the files quern
/// searches: a directory walk skips names that start with `_` or `.` (job markers such as
/// `_SUCCESS`, and hidden files — which also skips Python's `__init__.py` and
/// `__pycache__`). `grep --exclude-dir` cannot say that (its globs also match the named
/// directory's own path, e.g. `/root/.pyenv/...`), so `find` lists the files.
/// With `text`, binary files are searched as text (`-a`).
fn gnu_grep(fixed: bool, text: bool, pattern: &str, paths: &[PathBuf]) -> Command {
    let mut c = Command::new("sh");
    c.env("LC_ALL", "C")
        .env("PATTERN", pattern)
        .env("SYNTAX", if fixed { "-F" } else { "-E" })
        .env("TEXT", if text { "-a" } else { "" })
        .arg("-c")
        .arg(
            // A batch of files none of which matches is not an error (grep's 1), a
            // failure to read one is (grep's 2).
            r#"find "$@" \( -name '_*' -o -name '.*' \) -prune -o -type f -print0 |
               xargs -0 sh -c 'grep -c -H $TEXT "$SYNTAX" -e "$PATTERN" "$@"; [ $? -le 1 ]' sh"#,
        )
        .arg("sh")
        .args(paths);
    c
}

fn machine() -> Vec<(String, String)> {
    quern_jobs::machine::Machine::read().lines()
}

fn render(args: &Args, machine: &[(String, String)], peers: &Peers, work: &[Workload]) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# quern and its peers, side by side\n");
    let command: Vec<String> = std::env::args().collect();
    let _ = writeln!(
        md,
        "`{}` — {} runs of each tool, in alternation, warm page cache; median (min–max), \
         peak RssAnon of the tool's whole process tree; ratio = tool / quern (above 1: \
         quern is faster).\n",
        command.join(" "),
        args.runs
    );
    for (k, v) in machine {
        let _ = writeln!(md, "- {k}: {v}");
    }
    for (name, v) in &peers.versions {
        let _ = writeln!(md, "- {name}: {}", v.as_deref().unwrap_or("not found"));
    }
    for note in &peers.notes {
        let _ = writeln!(md, "- **{note}**");
    }
    for w in work {
        let _ = writeln!(md, "\n## {}\n\n{}\n", w.title, w.input);
        let _ = writeln!(
            md,
            "| tool | median s | min–max s | GB/s | ratio | peak RssAnon MiB | check |\n|---|---:|---:|---:|---:|---:|---|"
        );
        let quern = w
            .timings
            .iter()
            .find(|t| t.name.starts_with("quern"))
            .and_then(Timing::median);
        for t in &w.timings {
            let check = match &t.check {
                Ok(()) => "ok".to_string(),
                Err(e) => format!("**FAILED**: {}", e.lines().next().unwrap_or("")),
            };
            match t.median() {
                Some(m) => {
                    let _ = writeln!(
                        md,
                        "| {} | {m:.3} | {:.3}–{:.3} | {:.2} | {} | {:.0} | {check} |",
                        t.name,
                        t.min(),
                        t.max(),
                        w.bytes as f64 / 1e9 / m,
                        quern.map_or("–".into(), |q| format!("{:.2}", m / q)),
                        t.peak() as f64 / (1 << 20) as f64,
                    );
                }
                None => {
                    let _ = writeln!(md, "| {} | – | – | – | – | – | {check} |", t.name);
                }
            }
        }
    }
    let _ = writeln!(
        md,
        "\n## Targets\n\n| target | measured | status |\n|---|---|---|"
    );
    for t in targets(work) {
        let status = match t.met {
            Some(true) => "met",
            Some(false) => "**not met**",
            None => "–",
        };
        let _ = writeln!(md, "| {} | {} | {status} |", t.what, t.value);
    }
    md
}

fn to_json(machine: &[(String, String)], peers: &Peers, work: &[Workload]) -> Value {
    json!({
        "command": std::env::args().collect::<Vec<_>>(),
        "machine": machine.iter().cloned().collect::<HashMap<_, _>>(),
        "peers": peers.versions.iter().cloned().collect::<HashMap<_, _>>(),
        "notes": peers.notes,
        "work": work.iter().map(|w| json!({
            "title": w.title,
            "input": w.input,
            "bytes": w.bytes,
            "tools": w.timings.iter().map(|t| json!({
                "name": t.name,
                "seconds": t.runs.iter().map(|m| m.secs).collect::<Vec<_>>(),
                "median": t.median(),
                "peak_anon_bytes": t.peak(),
                "check": match &t.check { Ok(()) => "ok".to_string(), Err(e) => e.clone() },
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "targets": targets(work).iter().map(|t| json!({
            "target": t.what, "measured": t.value, "met": t.met,
        })).collect::<Vec<_>>(),
    })
}

fn bench() -> Result<bool, String> {
    let args = Args::parse();
    let quern = match &args.quern {
        Some(q) => q.clone(),
        None => std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name("quern"),
    };
    if !quern.exists() {
        return Err(format!(
            "{} not found: build it with `cargo build --release -p quern-jobs`",
            quern.display()
        ));
    }
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("quern-peers"));
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    std::fs::create_dir_all(&args.results).map_err(io_err(&args.results))?;
    let wants = |w: Work| args.only.is_empty() || args.only.contains(&w);
    let peers = Peers::find(&args);
    for note in &peers.notes {
        eprintln!("note: {note}");
    }
    let bench = Bench {
        args: &args,
        quern,
        dir: dir.clone(),
        peers,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let mut work = Vec::new();
    if wants(Work::Sort) {
        let sizes = if args.sort_size.is_empty() {
            vec![args.size]
        } else {
            args.sort_size.clone()
        };
        for bytes in sizes {
            eprintln!("== sort {}", human(bytes));
            work.push(bench.sort(bytes)?);
        }
    }
    if wants(Work::Wc) || wants(Work::Grep) {
        let corpus = corpus(&dir, args.size)?;
        if wants(Work::Wc) {
            eprintln!("== word count {}", human(args.size));
            work.push(bench.wc(&corpus, args.size)?);
        }
        if wants(Work::Grep) {
            let text = [corpus.text.clone()];
            for (pattern, fixed, kind) in [
                (corpus.literal.as_str(), true, "literal"),
                ("[a-z]+ing [a-z]+ed", false, "regex"),
            ] {
                eprintln!("== grep {kind} {}", human(args.size));
                work.push(bench.grep(
                    Work::Grep,
                    format!("grep {kind} {}", human(args.size)),
                    "Zipf text".into(),
                    &text,
                    pattern,
                    fixed,
                )?);
            }
        }
    }
    if wants(Work::Tree) {
        let mut trees = args.tree.clone();
        if trees.is_empty() {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default();
            trees = [
                PathBuf::from("/root/.pyenv/versions"),
                home.join(".cargo/registry/src"),
            ]
            .into_iter()
            .filter(|p| p.is_dir())
            .take(1)
            .collect();
        }
        if !trees.is_empty() {
            eprintln!("== grep a source tree");
            let names: Vec<String> = trees.iter().map(|t| t.display().to_string()).collect();
            work.push(bench.grep(
                Work::Tree,
                "grep a source tree".into(),
                names.join(" + "),
                &trees,
                "(import|return) [a-z_]+",
                false,
            )?);
        }
    }
    if wants(Work::Small) {
        eprintln!("== word count 1 MB");
        work.push(bench.small()?);
    }
    if wants(Work::Stream) {
        eprintln!("== streaming word count");
        work.push(bench.streaming()?);
    }
    if wants(Work::Shuffle) {
        eprintln!("== shuffle transport");
        work.push(bench.shuffle()?);
    }
    let machine = machine();
    let md = render(&args, &machine, &bench.peers, &work);
    let json = to_json(&machine, &bench.peers, &work);
    let md_path = args.results.join("peers.md");
    let json_path = args.results.join("peers.json");
    std::fs::write(&md_path, &md).map_err(io_err(&md_path))?;
    let text = serde_json::to_string_pretty(&json).map_err(|e| e.to_string())?;
    std::fs::write(&json_path, text + "\n").map_err(io_err(&json_path))?;
    println!("{md}");
    eprintln!("wrote {} and {}", md_path.display(), json_path.display());
    Ok(work
        .iter()
        .all(|w| w.timings.iter().all(|t| t.check.is_ok())))
}

fn main() -> ExitCode {
    match bench() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("peers: a check failed (see the table)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("peers: {e}");
            ExitCode::FAILURE
        }
    }
}
