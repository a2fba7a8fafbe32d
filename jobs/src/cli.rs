//! The `quern` command line: parses arguments, plans and builds the job, runs it, prints a
//! summary.
//!
//! Where a job runs: by default on an embedded local cluster (a coordinator and one worker
//! process per core, on loopback, with a fresh secret, torn down afterwards);
//! `--coordinator ADDR --secret-file F` submits to a running cluster instead; `--in-process`
//! uses a thread pool in this process; `--sequential` runs everything on one thread, the
//! reference every other mode must match byte for byte.
//!
//! Exit codes: 0 success; 1 the job ran but found a problem (grep: no line matched;
//! teravalidate: records out of order) or failed for a system reason; 2 bad usage or bad
//! input (missing file, malformed records, invalid regex, output already present) — in
//! which case nothing has been written.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use quern_runtime::cluster::{
    self,
    coordinator::CoordinatorConfig,
    launch::{Greeting, LocalCluster, MAX_COORDINATOR_RESTARTS},
    worker::WorkerConfig,
};
use quern_runtime::input::{expand_inputs_with, plan_row_splits, rows_input, Walk};
use quern_runtime::local::{default_memory, default_threads};
use quern_runtime::task::merge;
use quern_runtime::{
    plan, run_planned, Error, InputFile, InputFormat, JobReport, LocalConfig, Plan,
};
use quern_shuffle::wire::JobSpec;
use quern_shuffle::Secret;

use crate::gensort::RECORD_LEN;
use crate::grep::{Grep, GrepMode, GrepOptions, GrepParams};
use crate::progress::Progress;
use crate::registry::{names as job, JobDescriptor, Params, Registry};
use crate::sort::{KeySpec, Sort, SortParams};
use crate::stream::{Stream, StreamParams};
use crate::tera::{self, TeraGen, TeraSort, TeraValidate};
use crate::text::{Index, WordCount};

/// quern — a MapReduce job runner: sort, grep, word count and your own jobs.
#[derive(Debug, Parser)]
#[command(name = "quern", version = crate::machine::VERSION, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Options shared by every job.
#[derive(Debug, Args, Clone)]
pub struct RunArgs {
    /// Reduce tasks (default: one per core).
    #[arg(long, short = 'r')]
    reducers: Option<u32>,
    /// Input split size, e.g. 64MiB. K/M/G are powers of 1000, KiB/MiB/GiB of 1024.
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    split_size: u64,
    /// Memory of each worker (or of this process, with --in-process/--sequential), shared
    /// by its running tasks: sort buffers, fetched map output and merge buffers, e.g. 2GiB
    /// (default: a quarter of RAM).
    #[arg(long, value_parser = parse_size)]
    memory: Option<u64>,
    /// Segments a reducer merges at once; more are merged in passes on local disk.
    #[arg(long, default_value_t = quern_runtime::task::DEFAULT_MERGE_FACTOR, value_parser = parse_merge_factor)]
    merge_factor: usize,
    /// Run the whole job on one thread: the reference every other mode must match.
    #[arg(long, conflicts_with_all = ["in_process", "coordinator"])]
    sequential: bool,
    /// Run tasks on a thread pool in this process instead of a cluster.
    #[arg(long, conflicts_with = "coordinator")]
    in_process: bool,
    /// Task threads with --in-process (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Worker processes of the embedded local cluster (default: one per core).
    #[arg(long)]
    workers: Option<usize>,
    /// Submit to a running coordinator (HOST:PORT) instead of starting a local cluster.
    #[arg(long, requires = "secret_file", value_parser = parse_addr)]
    coordinator: Option<SocketAddr>,
    /// The cluster secret, with --coordinator.
    #[arg(long)]
    secret_file: Option<PathBuf>,
    /// Launch backup attempts for straggling tasks (LATE): on, off, or always (a backup of
    /// every task, to test a job's determinism).
    #[arg(long, default_value = "on", value_enum)]
    speculation: Speculation,
    /// Write map output (run files, merge passes, fetch spills) and the output's part files
    /// with direct I/O (O_DIRECT, past the page cache). Input is still read through it.
    #[arg(long)]
    direct_io: bool,
    /// Skip records that crash a map twice at the same place, and list them in the summary.
    #[arg(long)]
    skip_bad_records: bool,
    /// Continue the job journaled in the output directory (after the coordinator, or the
    /// job command with its local cluster, died) instead of refusing the existing output:
    /// committed tasks are not run again.
    #[arg(long, conflicts_with_all = ["sequential", "in_process"])]
    resume: bool,
    /// Write the job's report into DIR: report.json, one .hgrm per latency histogram, and
    /// report.html (task timeline, rates, percentile curves). Needs a cluster run.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["sequential", "in_process"])]
    report: Option<PathBuf>,
    /// Follow symbolic links met while walking input directories (links named as inputs
    /// are always followed; a link loop is an error).
    #[arg(long, short = 'L')]
    follow: bool,
    /// Print no progress bars and no summary on stderr.
    #[arg(long, short = 'q')]
    quiet: bool,
    /// Log what the cluster does, and the local cluster's process ids.
    #[arg(long, short = 'v')]
    verbose: bool,
}

mod bench;

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a benchmark as one command, validate its result and write its report.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Generate gensort-compatible records as P part files (map-only job).
    Teragen {
        /// Number of 100-byte records.
        #[arg(long)]
        records: u64,
        /// Output directory (part files + _SUCCESS).
        #[arg(long, short = 'o')]
        output: PathBuf,
        /// Part files (map tasks); their concatenation is gensort's single file (default: one per core).
        #[arg(long)]
        parts: Option<u64>,
        /// Generator seed; 0 reproduces gensort's sequence.
        #[arg(long, default_value_t = 0)]
        seed: u128,
        /// ASCII records (gensort -a), e.g. for comparing with `sort`.
        #[arg(long)]
        ascii: bool,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Sort 100-byte records by their 10-byte key (total order across part files).
    Terasort(JobCommandArgs),
    /// Check that a sorted directory is in order; count records and duplicate keys.
    Teravalidate {
        /// Directory (or files) to validate, in name order.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// Keep the validation report here (default: a scratch directory).
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Print lines matching a regular expression, in input order, as grep does (`-n`: with
    /// their line numbers). Directories are searched recursively. Exit status 0 if a line
    /// was selected, 1 if none was. `-q` prints nothing and only sets the exit status.
    // `-v` is grep's --invert-match here: the job's logging is `--verbose` only.
    #[command(mut_arg("verbose", |a| a.short(None)))]
    Grep {
        /// Pattern (Rust regex syntax; a literal string with -F).
        pattern: String,
        /// Input files or directories.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// Write part files here instead of printing.
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
        /// Print the number of selected lines per file.
        #[arg(long, short = 'c', conflicts_with = "files_with_matches")]
        count: bool,
        /// Print only the names of the files with a selected line.
        #[arg(long, short = 'l')]
        files_with_matches: bool,
        /// Ignore case (Unicode simple case folding, as grep in a UTF-8 locale).
        #[arg(long, short = 'i')]
        ignore_case: bool,
        /// Select the lines that do not match.
        #[arg(long, short = 'v')]
        invert_match: bool,
        /// Match whole words only (word characters: ASCII letters, digits and `_`).
        #[arg(long, short = 'w')]
        word_regexp: bool,
        /// The pattern is a literal string, not a regex.
        #[arg(long, short = 'F')]
        fixed_strings: bool,
        /// Accepted as grep accepts it: patterns are extended regexes already (Rust syntax).
        #[arg(long, short = 'E', conflicts_with = "fixed_strings")]
        extended_regexp: bool,
        /// Prefix each printed line with its 1-based line number in its file (after the
        /// file name when several files are searched). No effect with -c, -l or -q.
        #[arg(long, short = 'n')]
        line_number: bool,
        /// Print progress bars and the job summary on stderr (off for grep by default).
        #[arg(long)]
        stats: bool,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Sort lines as `LC_ALL=C sort` does, for its options -k, -t, -n, -r and -u:
    /// `cat DIR/part-*` is the sorted file. Other sort options are refused.
    // `-r` is sort's --reverse here: the number of reducers is `--reducers` only.
    #[command(mut_arg("reducers", |a| a.short(None)))]
    Sort {
        /// Input files or directories.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// Output directory (part files + _SUCCESS).
        #[arg(long, short = 'o')]
        output: PathBuf,
        /// Sort by fields F1 to F2 (1-based; without F2, to the end of the line), with the
        /// modifiers n and r (e.g. -k2,2nr). Repeatable: later keys break ties.
        #[arg(long = "key", short = 'k', value_name = "F1[,F2]")]
        keys: Vec<String>,
        /// Fields end at this byte, instead of at blank-to-non-blank transitions.
        #[arg(long = "field-separator", short = 't', value_name = "SEP")]
        separator: Option<std::ffi::OsString>,
        /// Compare as numbers: optional `-`, digits, optional `.` fraction (C locale).
        #[arg(long = "numeric-sort", short = 'n')]
        numeric: bool,
        /// Reverse the order (of keys without modifiers, and of the whole-line tie-break).
        #[arg(long, short = 'r')]
        reverse: bool,
        /// Print only the first line (in input order) of each run of equal keys.
        #[arg(long, short = 'u')]
        unique: bool,
        #[command(flatten)]
        unsupported: UnsupportedSortOptions,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Count words (maximal runs of Unicode letters, case-sensitive).
    Wc(JobCommandArgs),
    /// Build an inverted index: `word N doc1,doc2,...`.
    Index(JobCommandArgs),
    /// Run any executables as mapper, combiner and reducer, with Hadoop Streaming's
    /// contract: lines on stdin, `key<TAB>value` lines on stdout, `reporter:` lines on
    /// stderr. Commands run through `/bin/sh -c` in a fresh directory per process.
    Stream {
        /// Input files or directories.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// Output directory (part files + _SUCCESS).
        #[arg(long, short = 'o')]
        output: PathBuf,
        /// The mapper command: gets input lines, writes `key<TAB>value` lines.
        #[arg(long)]
        mapper: String,
        /// A combiner command, run on each spill's sorted map output.
        #[arg(long)]
        combiner: Option<String>,
        /// The reducer command: gets `key<TAB>value` lines sorted by key, writes the output.
        /// Default: the identity (the sorted lines); NONE: a map-only job.
        #[arg(long)]
        reducer: Option<String>,
        /// Map output keys are the fields before the N-th separator.
        #[arg(long, default_value_t = 1, value_name = "N")]
        key_fields: u32,
        /// The field separator of mapper and combiner output (`\t`: TAB).
        #[arg(long, default_value = "\\t", value_name = "SEP")]
        separator: String,
        /// Extra environment for every process, NAME=VALUE (repeatable).
        #[arg(long = "env", value_name = "NAME=VALUE", value_parser = parse_env)]
        env: Vec<(String, String)>,
        /// A file to link into every process's directory, e.g. the mapper's script
        /// (repeatable).
        #[arg(long = "file", value_name = "PATH")]
        files: Vec<PathBuf>,
        /// Kill a process that reads, writes and reports nothing for this long.
        #[arg(long, default_value = "10m", value_parser = parse_duration)]
        task_timeout: Duration,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Run a coordinator: schedules submitted jobs on the workers that join it.
    Coordinator {
        /// Address to listen on (UDP), e.g. 0.0.0.0:7070.
        #[arg(long, default_value = "127.0.0.1:7070")]
        listen: SocketAddr,
        /// The cluster secret file: from `quern secret FILE`, or any file of at least 32
        /// random bytes (e.g. base64 text).
        #[arg(long)]
        secret_file: PathBuf,
        /// A worker silent for this long is lost, e.g. 2s.
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        heartbeat_timeout: Duration,
        /// Continue the job recorded in this journal (OUTPUT/_journal) after a crash.
        #[arg(long)]
        resume: Option<PathBuf>,
        /// Address of the HTTP status page (read-only; port 0: any free port). Keep it on
        /// loopback unless the page should be reachable from other hosts.
        #[arg(long, default_value = "127.0.0.1:0")]
        status: SocketAddr,
        #[command(flatten)]
        daemon: DaemonArgs,
    },
    /// Run a worker: joins a coordinator, runs tasks, serves map output.
    Worker {
        /// The coordinator's address, HOST:PORT.
        #[arg(long, value_parser = parse_addr)]
        join: SocketAddr,
        /// The cluster secret file (as for `quern coordinator`).
        #[arg(long)]
        secret_file: PathBuf,
        /// Attempts run at once (default: one per core).
        #[arg(long)]
        slots: Option<u32>,
        /// Directory for intermediate map output (default: a fresh temporary directory).
        #[arg(long)]
        work_dir: Option<PathBuf>,
        /// Address for this worker's endpoint (port 0: any).
        #[arg(long, default_value = "0.0.0.0:0")]
        listen: SocketAddr,
        /// Fetch all map output over QUIC, even from this host.
        #[arg(long)]
        no_local_reads: bool,
        #[command(flatten)]
        daemon: DaemonArgs,
    },
    /// Print a saved job report (written with --report DIR) and re-render its files.
    Report {
        /// The report directory (holding report.json), or its report.json.
        dir: PathBuf,
        /// Only print the summary; do not rewrite report.html and the .hgrm files.
        #[arg(long)]
        no_render: bool,
    },
    /// Write a new random cluster secret to FILE (mode 0600).
    Secret {
        /// Where to write it.
        file: PathBuf,
    },
    /// Print a job journal (OUTPUT/_journal), one committed transition per line.
    Journal {
        /// The journal file.
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// teragen → terasort → teravalidate: sort SIZE of gensort records on the local cluster
    /// (or --coordinator's), check the output (order, count, checksum equal to teragen's)
    /// and write DIR/bench.json, DIR/bench.md and the sort's DIR/report.html.
    Terasort(bench::TerasortBench),
}

// The arguments of a job command that reads inputs and writes an output directory: most
// built-ins and every `Registry::register_command` job. (A plain comment: a doc comment
// would become each such command's `--help` text.)
#[derive(Debug, Args)]
struct JobCommandArgs {
    /// Input files or directories.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Output directory (part files + _SUCCESS).
    #[arg(long, short = 'o')]
    output: PathBuf,
    #[command(flatten)]
    run: RunArgs,
}

/// GNU sort options that `quern sort` does not implement: accepted by the parser only to be
/// refused by name.
#[derive(Debug, Args)]
struct UnsupportedSortOptions {
    #[arg(short = 'b', long = "ignore-leading-blanks", hide = true)]
    b: bool,
    #[arg(short = 'd', long = "dictionary-order", hide = true)]
    d: bool,
    #[arg(short = 'f', long = "ignore-case", hide = true)]
    f: bool,
    #[arg(short = 'g', long = "general-numeric-sort", hide = true)]
    g: bool,
    #[arg(long = "human-numeric-sort", hide = true)]
    h: bool,
    #[arg(short = 'i', long = "ignore-nonprinting", hide = true)]
    i: bool,
    #[arg(short = 'M', long = "month-sort", hide = true)]
    month: bool,
    #[arg(short = 'R', long = "random-sort", hide = true)]
    random: bool,
    #[arg(short = 'V', long = "version-sort", hide = true)]
    version: bool,
    #[arg(short = 's', long = "stable", hide = true)]
    s: bool,
    #[arg(short = 'z', long = "zero-terminated", hide = true)]
    z: bool,
    #[arg(short = 'c', long = "check", hide = true)]
    c: bool,
    #[arg(short = 'C', hide = true)]
    quiet_check: bool,
    #[arg(short = 'm', long = "merge", hide = true)]
    m: bool,
}

impl UnsupportedSortOptions {
    /// The first unsupported option given, as GNU sort spells it.
    fn first(&self) -> Option<&'static str> {
        [
            (self.b, "-b (--ignore-leading-blanks)"),
            (self.d, "-d (--dictionary-order)"),
            (self.f, "-f (--ignore-case)"),
            (self.g, "-g (--general-numeric-sort)"),
            (self.h, "-h (--human-numeric-sort)"),
            (self.i, "-i (--ignore-nonprinting)"),
            (self.month, "-M (--month-sort)"),
            (self.random, "-R (--random-sort)"),
            (self.version, "-V (--version-sort)"),
            (self.s, "-s (--stable)"),
            (self.z, "-z (--zero-terminated)"),
            (self.c, "-c (--check)"),
            (self.quiet_check, "-C"),
            (self.m, "-m (--merge)"),
        ]
        .into_iter()
        .find_map(|(given, name)| given.then_some(name))
    }
}

/// Options of long-running processes.
#[derive(Debug, Args, Clone)]
pub struct DaemonArgs {
    /// Exit when standard input closes (used by the embedded local cluster).
    #[arg(long, hide = true)]
    exit_with_parent: bool,
    /// Log what happens.
    #[arg(long, short = 'v')]
    verbose: bool,
}

fn parse_size(s: &str) -> Result<u64, String> {
    s.parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("expected a size such as 64MiB or 1G: {e}"))
        .and_then(|n| {
            if n == 0 {
                Err("size must be positive".into())
            } else {
                Ok(n)
            }
        })
}

fn parse_merge_factor(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (2..=65_536).contains(&n) => Ok(n),
        _ => Err(format!(
            "{s:?} is not a merge factor (a whole number from 2 to 65536)"
        )),
    }
}

/// `--speculation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Speculation {
    /// Back up stragglers (LATE).
    On,
    /// Never launch backups.
    Off,
    /// Back up every task, as soon as another worker has a free slot.
    Always,
}

/// Resolves `HOST:PORT` (a name or an IP address) to the first address it names.
fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    s.to_socket_addrs()
        .map_err(|e| format!("cannot resolve {s:?} (expected HOST:PORT): {e}"))?
        .next()
        .ok_or_else(|| format!("{s:?} resolves to no address"))
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        _ => Err(format!("expected NAME=VALUE, got {s:?}")),
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(
        s.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len()),
    );
    let value: f64 = num
        .parse()
        .map_err(|_| format!("expected a duration such as 2s or 500ms, got {s:?}"))?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "s" | "" => value,
        "m" => value * 60.0,
        _ => return Err(format!("unknown unit {unit:?} in {s:?} (use ms, s or m)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

/// What a command wants the process to do after the job.
enum Outcome {
    Ok,
    /// The job ran; the result is "no" (grep without matches, misordered records).
    Negative,
}

/// The whole `quern` command line, with the jobs of `registry`: the entry point of the
/// `quern` binary (`main(Registry::builtin())`) and of a user's binary that registers its
/// own jobs. The job commands of [`Registry::register_command`] join the built-in ones
/// (which win a clash of names). Every process of a cluster must run the same binary, so
/// that each worker knows every job it may be asked to run.
pub fn main(registry: Registry) -> ExitCode {
    main_from(registry, None)
}

/// [`main`] for a binary that is mostly one job: when the first argument names no command
/// (`BIN INPUT... --output DIR`), job command `default` runs. `BIN worker ...`, `BIN
/// coordinator ...` and the rest keep working, as the local cluster needs.
pub fn main_with_default(registry: Registry, default: &str) -> ExitCode {
    main_from(registry, Some(default))
}

fn main_from(registry: Registry, default: Option<&str>) -> ExitCode {
    no_transparent_huge_pages();
    let mut cli = Cli::command();
    let mut added = std::collections::BTreeSet::new();
    for (name, command) in registry.commands() {
        if cli.find_subcommand(name).is_none() {
            let sub = JobCommandArgs::augment_args(clap::Command::new(name.to_string()))
                .about(command.about.clone());
            cli = cli.subcommand(sub);
            added.insert(name);
        }
    }
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Some(default) = default {
        let first = args.get(1).and_then(|a| a.to_str());
        if !first.is_some_and(|f| f == "help" || cli.find_subcommand(f).is_some()) {
            args.insert(1.min(args.len()), default.into());
        }
    }
    let matches = match cli.try_get_matches_from(args) {
        Ok(m) => m,
        Err(e) => return usage_error(e),
    };
    let result = match matches.subcommand() {
        Some((name, sub)) if added.contains(name) => match JobCommandArgs::from_arg_matches(sub) {
            Ok(args) => run_job_command(&registry, name, args),
            Err(e) => return usage_error(e),
        },
        _ => match Cli::from_arg_matches(&matches) {
            Ok(cli) => run(cli.command, &registry),
            Err(e) => return usage_error(e),
        },
    };
    match result {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::Negative) => ExitCode::from(1),
        Err(Error::Interrupted) => {
            eprintln!("quern: interrupted");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("quern: error: {e}");
            ExitCode::from(if e.is_user_error() { 2 } else { 1 })
        }
    }
}

/// Prints a clap error (help and version go to stdout as usual) and gives the exit code.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    // One line, like every other error: clap's first paragraph (which names what is missing
    // or wrong) joined, without clap's own prefix.
    let text = e.to_string();
    let first: Vec<&str> = text
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let first = if first.is_empty() {
        "invalid arguments".to_string()
    } else {
        first.join(" ")
    };
    eprintln!("quern: error: {}", first.trim_start_matches("error: "));
    ExitCode::from(2)
}

/// Runs the job command `name` of `registry`.
fn run_job_command(
    registry: &Registry,
    name: &str,
    args: JobCommandArgs,
) -> Result<Outcome, Error> {
    let JobCommandArgs {
        inputs,
        output,
        run,
    } = args;
    init_logging(run.verbose);
    let command = registry
        .command(name)
        .ok_or_else(|| Error::Usage(format!("no job command {name:?}")))?;
    let reducers = run.reducers(command.reducers.unwrap_or(default_threads() as u32));
    let plan = plan(command.input, run.expand(&inputs)?, run.split_size)?;
    let job = Prepared {
        descriptor: registry
            .command_descriptor(name, &plan.inputs)
            .map_err(Error::Usage)?,
        plan,
        reducers,
    };
    let report = run.execute(registry, job, &output)?;
    summary(&run, name, &report)?;
    Ok(Outcome::Ok)
}

fn init_logging(verbose: bool) {
    let filter =
        std::env::var("QUERN_LOG").unwrap_or_else(|_| if verbose { "info" } else { "warn" }.into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .try_init();
}

/// Opts this process, and the processes it starts (the flag is inherited through fork and
/// exec: a local cluster's coordinator and workers, a streaming job's commands), out of
/// transparent huge pages, which mimalloc asks for on its arenas. The kernel zeroes a huge
/// page whole at first touch, and every map task's fresh sort buffer is touched first:
/// measured on a 2-core VM (with and without, in turn, 5-15 runs each, twice), without
/// them a 1 GB terasort takes 12-17% less time (2.24 s -> 1.97 s, 2.72 s -> 2.25 s),
/// `grep -c` of 1 GB 4-5% less, a one-line job 8-9% less, and word count of 1 GB the same.
fn no_transparent_huge_pages() {
    // Refused (a kernel before 3.15, a seccomp filter): run with them, as before.
    let _ = rustix::thread::disable_transparent_huge_pages(true);
}

/// Exits the process when standard input reaches end of file (the parent went away),
/// killing the attempts' child processes first.
fn exit_with_parent() {
    std::thread::spawn(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        quern_runtime::child::kill_all();
        std::process::exit(0);
    });
}

fn read_secret(path: &Path) -> Result<Secret, Error> {
    Secret::from_file(path).map_err(|e| Error::Usage(e.to_string()))
}

/// Prints the job summary (unless `-q`) and writes `--report DIR`.
fn summary(run: &RunArgs, name: &str, report: &JobReport) -> Result<(), Error> {
    if let Some(dir) = &run.report {
        let r = report.report.as_ref().ok_or_else(|| {
            Error::JobFailed("the job succeeded but its report is missing".into())
        })?;
        quern_runtime::report::write_dir(r, dir)?;
    }
    if run.quiet {
        return Ok(());
    }
    match &report.report {
        Some(r) => eprintln!("{}", r.summary()),
        // --sequential and --in-process measure no latencies.
        None => {
            eprintln!(
                "quern {name}: {}",
                quern_runtime::report::headline(
                    report.map_tasks as u64,
                    report.reduce_tasks as u64,
                    |c| report.counters.get(c),
                    u64::try_from(report.elapsed.as_micros()).unwrap_or(u64::MAX),
                )
            );
            if let Some(line) = quern_runtime::report::own_counters(report.counters.iter()) {
                eprintln!("quern {name}: {line}");
            }
        }
    }
    let (passes, spilled) = (
        report.counters.get(merge::MERGE_PASSES),
        report.counters.get(merge::SPILLED_BYTES),
    );
    if passes > 0 || spilled > 0 {
        eprintln!(
            "quern {name}: reduce: {passes} merge passes over {} bytes; {spilled} fetched bytes spilled to disk",
            report.counters.get(merge::MERGE_BYTES)
        );
    }
    if !report.skipped.is_empty() {
        let list: Vec<String> = report
            .skipped
            .iter()
            .map(|(f, o)| format!("{f} byte {o}"))
            .collect();
        eprintln!(
            "quern {name}: skipped {} bad records: {}",
            list.len(),
            list.join(", ")
        );
    }
    Ok(())
}

/// Where a job runs.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RunMode {
    /// Everything on one thread (`--sequential`): the reference.
    Sequential,
    /// A thread pool in this process (`--in-process`).
    InProcess { threads: usize },
    /// The embedded local cluster of `workers` worker processes (the default).
    LocalCluster { workers: usize },
    /// A running cluster (`--coordinator ADDR --secret-file FILE`).
    Remote { addr: SocketAddr, secret: PathBuf },
}

impl RunMode {
    fn describe(&self) -> String {
        match self {
            RunMode::Sequential => "with --sequential".to_string(),
            RunMode::InProcess { .. } => "with --in-process".to_string(),
            RunMode::LocalCluster { .. } => "on the embedded local cluster".to_string(),
            RunMode::Remote { addr, .. } => format!("on the cluster at {addr}"),
        }
    }
}

/// A planned job, ready to run in any mode.
struct Prepared {
    descriptor: JobDescriptor,
    plan: Plan,
    reducers: u32,
}

impl Prepared {
    /// Job `name` of `registry` with `params`.
    fn new<P: Params>(
        registry: &Registry,
        name: &str,
        params: &P,
        plan: Plan,
        reducers: u32,
    ) -> Result<Prepared, Error> {
        Ok(Prepared {
            descriptor: registry.descriptor(name, params).map_err(Error::Usage)?,
            plan,
            reducers,
        })
    }
}

impl RunArgs {
    fn reducers(&self, default: u32) -> u32 {
        self.reducers.unwrap_or(default)
    }

    /// Where the job runs, decided once from the flags; a flag that does not apply to the
    /// chosen mode is refused rather than ignored.
    fn mode(&self) -> Result<RunMode, Error> {
        let mode = if self.sequential {
            RunMode::Sequential
        } else if self.in_process {
            RunMode::InProcess {
                threads: self.threads.unwrap_or_else(default_threads).max(1),
            }
        } else if let Some(addr) = self.coordinator {
            let secret = self
                .secret_file
                .clone()
                .ok_or_else(|| Error::Usage("--coordinator needs --secret-file".to_string()))?;
            RunMode::Remote { addr, secret }
        } else {
            RunMode::LocalCluster {
                workers: self.workers.unwrap_or_else(default_threads).max(1),
            }
        };
        let refuse = |flag: &str, applies: &str| {
            Err(Error::Usage(format!(
                "{flag} applies only {applies}; this job runs {}",
                mode.describe()
            )))
        };
        if self.threads.is_some() && !matches!(mode, RunMode::InProcess { .. }) {
            return refuse("--threads", "with --in-process");
        }
        if self.workers.is_some() && !matches!(mode, RunMode::LocalCluster { .. }) {
            return refuse("--workers", "to the embedded local cluster");
        }
        if self.secret_file.is_some() && !matches!(mode, RunMode::Remote { .. }) {
            return refuse("--secret-file", "with --coordinator");
        }
        Ok(mode)
    }

    /// The reducers of a job whose reduce phase is fixed (`n`): `--reducers` is refused.
    fn fixed_reducers(&self, job: &str, n: u32, why: &str) -> Result<u32, Error> {
        match self.reducers {
            Some(_) => Err(Error::Usage(format!(
                "--reducers (-r) does not apply to {job}: {why}"
            ))),
            None => Ok(n),
        }
    }

    /// Reducers of a job that needs a reduce phase: `--reducers 0` is refused.
    fn reduce_tasks(&self, job: &str) -> Result<u32, Error> {
        match self.reducers(default_threads() as u32) {
            0 => Err(Error::Usage(format!(
                "{job} needs at least one reducer (--reducers 0 given)"
            ))),
            r => Ok(r),
        }
    }

    /// The input files named by `paths`, walked as the flags say.
    fn expand(&self, paths: &[PathBuf]) -> Result<Vec<InputFile>, Error> {
        expand_inputs_with(
            paths,
            Walk {
                follow: self.follow,
            },
        )
    }

    fn memory(&self) -> u64 {
        self.memory.unwrap_or_else(default_memory)
    }

    /// Runs `job` in the mode the flags ask for, writing to `output`.
    fn execute(
        &self,
        registry: &Registry,
        job: Prepared,
        output: &Path,
    ) -> Result<JobReport, Error> {
        let mode = self.mode()?;
        if let RunMode::Sequential | RunMode::InProcess { .. } = mode {
            let cfg = LocalConfig {
                threads: match mode {
                    RunMode::InProcess { threads } => threads,
                    _ => 1,
                },
                sequential: mode == RunMode::Sequential,
                reducers: job.reducers,
                split_size: self.split_size,
                memory: self.memory(),
                merge_factor: self.merge_factor,
                direct_io: self.direct_io,
            };
            let built = registry.build(&job.descriptor).map_err(Error::Usage)?;
            return run_planned(&*built, &job.plan, output, &cfg);
        }
        let output = std::path::absolute(output).map_err(|e| Error::io(output, e))?;
        // Workers run elsewhere and in another directory: they get absolute paths. Made
        // absolute, not canonical: the planner already opened every file, and resolving
        // each path's symlinks is a readlink per component (a third of the client's time
        // over a source tree of tens of thousands of files).
        let inputs: Vec<InputFile> = job
            .plan
            .inputs
            .into_iter()
            .map(|mut f| {
                if !f.path.as_os_str().is_empty() {
                    f.path = std::path::absolute(&f.path).map_err(|e| Error::io(&f.path, e))?;
                }
                Ok(f)
            })
            .collect::<Result<_, Error>>()?;
        let mut spec = JobSpec {
            job: job.descriptor.encode().map_err(Error::Usage)?,
            name: job.descriptor.name.clone(),
            inputs: cluster::inputs_to_msg(&inputs),
            splits: cluster::splits_to_msg(&job.plan.splits),
            reducers: job.reducers,
            output: output.display().to_string(),
            worker_memory: self.memory(),
            merge_factor: self.merge_factor as u32,
            speculation: self.speculation != Speculation::Off,
            backup_every_task: self.speculation == Speculation::Always,
            skip_bad_records: self.skip_bad_records,
            resume: self.resume,
            direct_io: self.direct_io,
        };
        let mut progress = Progress::new(&job.descriptor.name, self.quiet, self.verbose);
        let mut events = |e| progress.event(e);
        if let RunMode::Remote { addr, secret } = &mode {
            let (addr, secret) = (*addr, read_secret(secret)?);
            let report = cluster::client::submit(addr, &secret, spec, &mut events, &mut || true);
            progress.finish();
            return report;
        }
        let exe = std::env::current_exe().map_err(|e| Error::io("current executable", e))?;
        let RunMode::LocalCluster { workers } = mode else {
            unreachable!("every other mode returned above");
        };
        let mut local = LocalCluster::start(&exe, workers, 1)?;
        if self.verbose {
            eprintln!(
                "quern: local cluster at {}, pids {:?}",
                local.addr(),
                local.pids()
            );
        }
        let secret = read_secret(local.secret_file())?;
        // This command owns the cluster: when its coordinator dies, start another one and
        // resubmit the job, which it continues from the journal in the output directory.
        let report = loop {
            let addr = local.addr();
            let alive = &mut || local.coordinator_running();
            match cluster::client::submit(addr, &secret, spec.clone(), &mut events, alive) {
                Err(Error::CoordinatorLost(reason))
                    if local.coordinator_restarts() < MAX_COORDINATOR_RESTARTS =>
                {
                    eprintln!(
                        "quern: {reason}\nquern: restarting the local coordinator ({} of {}); \
                         it continues the job from {}",
                        local.coordinator_restarts() + 1,
                        MAX_COORDINATOR_RESTARTS,
                        output.join("_journal").display()
                    );
                    local.restart_coordinator()?;
                    spec.resume = true;
                }
                r => break r,
            }
        };
        progress.finish();
        report
    }
}

fn run(command: Command, registry: &Registry) -> Result<Outcome, Error> {
    match command {
        Command::Coordinator {
            listen,
            secret_file,
            heartbeat_timeout,
            resume,
            status,
            daemon,
        } => {
            init_logging(daemon.verbose);
            if daemon.exit_with_parent {
                exit_with_parent();
            }
            let secret = read_secret(&secret_file)?;
            if let Some(journal) = &resume {
                // Fail now, with a clear message, rather than after binding.
                std::fs::metadata(journal).map_err(|e| Error::io(journal, e))?;
            }
            cluster::coordinator::run(
                listen,
                &secret,
                CoordinatorConfig {
                    heartbeat_timeout,
                    status,
                },
                resume,
                |addr, status| {
                    let greeting = Greeting {
                        addr,
                        status_url: status.to_string(),
                    };
                    print!("{}", greeting.render());
                    let _ = std::io::stdout().flush();
                },
            )?;
            Ok(Outcome::Ok)
        }
        Command::Worker {
            join,
            secret_file,
            slots,
            work_dir,
            listen,
            no_local_reads,
            daemon,
        } => {
            init_logging(daemon.verbose);
            if daemon.exit_with_parent {
                exit_with_parent();
            }
            let secret = read_secret(&secret_file)?;
            let scratch;
            let work_dir = match work_dir {
                Some(dir) => dir,
                None => {
                    scratch = ScratchDir::new()?;
                    scratch.0.path().to_path_buf()
                }
            };
            let config = WorkerConfig {
                coordinator: join,
                slots: slots.unwrap_or(default_threads() as u32).max(1),
                work_dir,
                bind: listen,
                local_reads: !no_local_reads,
                join_timeout: Duration::from_secs(30),
                factory: registry.clone().factory(),
            };
            cluster::worker::run(config, &secret)?;
            Ok(Outcome::Ok)
        }
        Command::Report { dir, no_render } => {
            // Accept the report.json file itself too.
            let dir = match dir.file_name() {
                Some(name) if name == quern_runtime::report::REPORT_JSON && dir.is_file() => dir
                    .parent()
                    .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
                _ => dir,
            };
            let report = quern_runtime::report::load_dir(&dir)?;
            if !no_render {
                quern_runtime::report::write_dir(&report, &dir)?;
            }
            println!("{}", report.summary());
            Ok(Outcome::Ok)
        }
        Command::Bench(BenchCommand::Terasort(args)) => bench::terasort_bench(args, registry),
        Command::Journal { file } => {
            let (records, torn) = cluster::journal::read(&file)?;
            let mut stdout = std::io::stdout().lock();
            for record in &records {
                let _ = writeln!(stdout, "{}", describe(record));
            }
            if torn {
                let _ = writeln!(stdout, "(torn tail: a crash interrupted the last append)");
            }
            Ok(Outcome::Ok)
        }
        Command::Secret { file } => {
            Secret::generate()
                .and_then(|s| s.write_file(&file))
                .map_err(|e| Error::Usage(e.to_string()))?;
            Ok(Outcome::Ok)
        }
        Command::Teragen {
            records,
            output,
            parts,
            seed,
            ascii,
            run,
        } => {
            init_logging(run.verbose);
            let gen = TeraGen {
                records,
                seed,
                ascii,
            };
            let report = teragen(&run, registry, &gen, parts, &output)?;
            println!("Records: {}", report.counters.get(tera::RECORDS));
            println!("Checksum: {:x}", report.counters.get(tera::CHECKSUM));
            Ok(Outcome::Ok)
        }
        Command::Terasort(JobCommandArgs {
            inputs,
            output,
            run,
        }) => {
            init_logging(run.verbose);
            terasort(&run, registry, &inputs, &output)?;
            Ok(Outcome::Ok)
        }
        Command::Teravalidate {
            inputs,
            output,
            run,
        } => {
            init_logging(run.verbose);
            let v = teravalidate(&run, registry, &inputs, output)?;
            let mut stdout = std::io::stdout().lock();
            let _ = stdout.write_all(&v.problems);
            let _ = writeln!(stdout, "Records: {}", v.records);
            let _ = writeln!(stdout, "Duplicate keys: {}", v.duplicates);
            let _ = writeln!(stdout, "Checksum: {:x}", v.checksum);
            if v.in_order() {
                let _ = writeln!(stdout, "SUCCESS - all records are in order");
                Ok(Outcome::Ok)
            } else {
                let _ = writeln!(stdout, "ERROR - {} records out of order", v.misorders);
                Ok(Outcome::Negative)
            }
        }
        Command::Grep {
            pattern,
            inputs,
            output,
            count,
            files_with_matches,
            ignore_case,
            invert_match,
            word_regexp,
            fixed_strings,
            extended_regexp: _,
            line_number,
            stats,
            mut run,
        } => {
            init_logging(run.verbose);
            // grep's manners: -q is its quiet mode (exit status only), and no statistics
            // on stderr unless --stats.
            let mode = match (run.quiet, files_with_matches, count) {
                (true, _, _) => GrepMode::Quiet,
                (_, true, _) => GrepMode::Files,
                (_, _, true) => GrepMode::Count,
                _ => GrepMode::Lines,
            };
            run.quiet = run.quiet || !stats;
            let files = run.expand(&inputs)?;
            let mut params = GrepParams {
                pattern,
                mode,
                options: GrepOptions {
                    ignore_case,
                    invert: invert_match,
                    word: word_regexp,
                    fixed: fixed_strings,
                },
                names: names(&files),
                first_nuls: Vec::new(),
                line_numbers: line_number,
            };
            // An invalid regex fails before anything runs.
            Grep::new(params.clone()).map_err(Error::Usage)?;
            let plan = plan(InputFormat::Lines, files, run.split_size)?;
            if mode == GrepMode::Lines {
                // Where binary files stop printing (see grep.rs).
                params.first_nuls = crate::grep::first_nuls(&plan.inputs, &plan.splits)?;
            }
            let reducers = run.fixed_reducers(
                "grep",
                params.reducers(),
                "its output keeps input order (and directories are always searched recursively)",
            )?;
            let job = Prepared::new(registry, job::GREP, &params, plan, reducers)?;
            let printing = output.is_none() && mode != GrepMode::Quiet;
            let (report, _scratch) = run_to(&run, registry, job, output)?;
            summary(&run, "grep", &report)?;
            if printing {
                cat_parts(&report.parts, &mut std::io::stdout().lock())?;
            }
            // GNU grep's own words for a binary file with a selected line, on stderr.
            for (i, name) in params.names.iter().enumerate() {
                let counter = crate::grep::binary_counter(i as u32);
                if report.counters.get(&counter) > 0 {
                    eprintln!("grep: {name}: binary file matches");
                }
            }
            Ok(if report.counters.get(crate::grep::MATCHES) > 0 {
                Outcome::Ok
            } else {
                Outcome::Negative
            })
        }
        Command::Sort {
            inputs,
            output,
            keys,
            separator,
            numeric,
            reverse,
            unique,
            unsupported,
            run,
        } => {
            init_logging(run.verbose);
            if let Some(option) = unsupported.first() {
                return Err(Error::Usage(format!(
                    "sort option {option} is not supported; quern sort supports -k F1[,F2] \
                     (modifiers n, r), -t, -n, -r and -u"
                )));
            }
            let keys = keys
                .iter()
                .map(|k| KeySpec::parse(k))
                .collect::<Result<Vec<_>, _>>()
                .map_err(Error::Usage)?;
            let separator = match separator.as_ref().map(|s| s.as_encoded_bytes()) {
                None => None,
                Some([byte]) => Some(*byte),
                Some([]) => return Err(Error::Usage("-t: empty field separator".into())),
                Some(_) => {
                    return Err(Error::Usage(format!(
                        "-t {:?}: the field separator must be one byte",
                        separator.unwrap_or_default()
                    )))
                }
            };
            let reducers = run.reduce_tasks("sort")?;
            let plan = plan(InputFormat::Lines, run.expand(&inputs)?, run.split_size)?;
            let params = SortParams {
                keys,
                separator,
                numeric,
                reverse,
                unique,
                cuts: Vec::new(),
            };
            let params = Sort::sampled(params, &plan.inputs, &plan.splits, reducers, 100_000)?;
            let job = Prepared::new(registry, job::SORT, &params, plan, reducers)?;
            let report = run.execute(registry, job, &output)?;
            summary(&run, "sort", &report)?;
            Ok(Outcome::Ok)
        }
        Command::Wc(JobCommandArgs {
            inputs,
            output,
            run,
        }) => {
            init_logging(run.verbose);
            let reducers = run.reduce_tasks("wc")?;
            let plan = plan(InputFormat::Lines, run.expand(&inputs)?, run.split_size)?;
            let job = Prepared::new(registry, job::WC, &WordCount, plan, reducers)?;
            let report = run.execute(registry, job, &output)?;
            summary(&run, "wc", &report)?;
            Ok(Outcome::Ok)
        }
        Command::Stream {
            inputs,
            output,
            mapper,
            combiner,
            reducer,
            key_fields,
            separator,
            env,
            files,
            task_timeout,
            run,
        } => {
            init_logging(run.verbose);
            let map_only = reducer.as_deref() == Some("NONE");
            let reducers = match (map_only, run.reducers) {
                (true, Some(r)) if r > 0 => {
                    return Err(Error::Usage(format!(
                        "--reducer NONE is a map-only job, but --reducers {r} was given"
                    )))
                }
                (true, _) => 0,
                (false, _) => run.reducers(default_threads() as u32),
            };
            let files = files
                .iter()
                .map(|f| {
                    std::fs::canonicalize(f)
                        .map(|p| p.display().to_string())
                        .map_err(|e| Error::io(f, e))
                })
                .collect::<Result<Vec<_>, Error>>()?;
            let params = StreamParams {
                mapper,
                combiner,
                reducer: reducer.filter(|_| !map_only),
                map_only: reducers == 0,
                key_fields,
                separator: unescape(&separator).into_bytes(),
                env,
                files,
                timeout_ms: u64::try_from(task_timeout.as_millis()).unwrap_or(u64::MAX),
            };
            Stream::new(params.clone()).map_err(Error::Usage)?;
            let plan = plan(InputFormat::Lines, run.expand(&inputs)?, run.split_size)?;
            let job = Prepared::new(registry, job::STREAM, &params, plan, reducers)?;
            let report = run.execute(registry, job, &output)?;
            summary(&run, "stream", &report)?;
            Ok(Outcome::Ok)
        }
        Command::Index(JobCommandArgs {
            inputs,
            output,
            run,
        }) => {
            init_logging(run.verbose);
            let files = run.expand(&inputs)?;
            let reducers = run.reduce_tasks("index")?;
            let params = Index {
                names: names(&files),
            };
            let plan = plan(InputFormat::Lines, files, run.split_size)?;
            let job = Prepared::new(registry, job::INDEX, &params, plan, reducers)?;
            let report = run.execute(registry, job, &output)?;
            summary(&run, "index", &report)?;
            Ok(Outcome::Ok)
        }
    }
}

/// One line per journal record, e.g. `job 1 committed map 3 attempt 7 on 10.0.0.2:4000`.
fn describe(record: &quern_scheduler::journal::Record) -> String {
    use quern_scheduler::journal::Record;
    match record {
        Record::JobAccepted { job, spec } => {
            format!("job {job} accepted ({} bytes of spec)", spec.len())
        }
        Record::TaskCommitted {
            job,
            task,
            attempt,
            worker_addr,
            ..
        } => format!("job {job} committed {task} {attempt} on {worker_addr}"),
        Record::JobDone { job } => format!("job {job} done"),
        Record::JobFailed { job, reason } => format!("job {job} failed: {reason}"),
        Record::AttemptsReserved { job, below } => {
            format!("job {job} reserved attempts below {}", below.0)
        }
    }
}

/// `\t`, `\n` and `\\` as the characters they name (a TAB is awkward on a command line).
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match (c, chars.clone().next()) {
            ('\\', Some(n @ ('t' | 'n' | '\\'))) => {
                chars.next();
                out.push(match n {
                    't' => '\t',
                    'n' => '\n',
                    _ => '\\',
                });
            }
            _ => out.push(c),
        }
    }
    out
}

/// Runs teragen (`gen`) into `output` as `parts` part files (default: one per core) and
/// prints its summary.
fn teragen(
    run: &RunArgs,
    registry: &Registry,
    gen: &TeraGen,
    parts: Option<u64>,
    output: &Path,
) -> Result<JobReport, Error> {
    let parts = parts.unwrap_or(default_threads() as u64).max(1);
    let plan = Plan {
        inputs: vec![rows_input()],
        splits: plan_row_splits(gen.records, parts),
    };
    let reducers = run.fixed_reducers(
        "teragen",
        0,
        "it is map-only (--parts sets its output files)",
    )?;
    let job = Prepared::new(registry, job::TERAGEN, gen, plan, reducers)?;
    let report = run.execute(registry, job, output)?;
    summary(run, "teragen", &report)?;
    Ok(report)
}

/// Samples `inputs`, sorts them into `output` and prints the summary.
fn terasort(
    run: &RunArgs,
    registry: &Registry,
    inputs: &[PathBuf],
    output: &Path,
) -> Result<JobReport, Error> {
    let reducers = run.reduce_tasks("terasort")?;
    let plan = plan(
        InputFormat::Fixed(RECORD_LEN),
        run.expand(inputs)?,
        run.split_size,
    )?;
    let sort = TeraSort::sampled(&plan.inputs, &plan.splits, reducers, 100_000)?;
    let job = Prepared::new(registry, job::TERASORT, &sort, plan, reducers)?;
    let report = run.execute(registry, job, output)?;
    summary(run, "terasort", &report)?;
    Ok(report)
}

/// What teravalidate found.
#[derive(Debug)]
struct Validation {
    records: u128,
    duplicates: u128,
    misorders: u128,
    checksum: u128,
    /// The lines teravalidate's reducer wrote: one per problem found.
    problems: Vec<u8>,
}

impl Validation {
    fn in_order(&self) -> bool {
        self.misorders == 0 && self.problems.is_empty()
    }
}

/// Validates `inputs` (into `output`, or a scratch directory) and prints the summary.
fn teravalidate(
    run: &RunArgs,
    registry: &Registry,
    inputs: &[PathBuf],
    output: Option<PathBuf>,
) -> Result<Validation, Error> {
    let files = run.expand(inputs)?;
    let params = TeraValidate {
        names: names(&files),
    };
    let plan = plan(InputFormat::Fixed(RECORD_LEN), files, run.split_size)?;
    let reducers = run.fixed_reducers(
        "teravalidate",
        1,
        "one reducer checks the boundaries between splits",
    )?;
    let job = Prepared::new(registry, job::TERAVALIDATE, &params, plan, reducers)?;
    let (report, _scratch) = run_to(run, registry, job, output)?;
    summary(run, "teravalidate", &report)?;
    let mut problems = Vec::new();
    cat_parts(&report.parts, &mut problems)?;
    let c = &report.counters;
    Ok(Validation {
        records: c.get(tera::RECORDS),
        duplicates: c.get(tera::DUPLICATES),
        misorders: c.get(tera::MISORDERS),
        checksum: c.get(tera::CHECKSUM),
        problems,
    })
}

fn names(files: &[InputFile]) -> Vec<String> {
    files.iter().map(|f| f.name.clone()).collect()
}

/// Runs a job whose output is read back by this command: into `output` if given, else into
/// a scratch directory that lives as long as the returned guard.
fn run_to(
    run: &RunArgs,
    registry: &Registry,
    job: Prepared,
    output: Option<PathBuf>,
) -> Result<(JobReport, Option<ScratchDir>), Error> {
    match output {
        Some(dir) => Ok((run.execute(registry, job, &dir)?, None)),
        None => {
            let scratch = ScratchDir::new()?;
            Ok((
                run.execute(registry, job, &scratch.output())?,
                Some(scratch),
            ))
        }
    }
}

/// Copies the part files to `out`; returns the number of lines copied.
fn cat_parts(parts: &[PathBuf], out: &mut impl Write) -> Result<u64, Error> {
    let mut lines = 0;
    for part in parts {
        let bytes = std::fs::read(part).map_err(|e| Error::io(part, e))?;
        lines += bytes.iter().filter(|b| **b == b'\n').count() as u64;
        if let Err(e) = out.write_all(&bytes) {
            // A closed pipe (e.g. `| head`) is not an error of the job.
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                break;
            }
            return Err(Error::io("stdout", e));
        }
    }
    let _ = out.flush();
    Ok(lines)
}

/// A private directory for jobs whose result is printed, removed on drop.
struct ScratchDir(tempfile::TempDir);

impl ScratchDir {
    fn new() -> Result<Self, Error> {
        tempfile::Builder::new()
            .prefix("quern-")
            .tempdir()
            .map(ScratchDir)
            .map_err(|e| Error::io(std::env::temp_dir(), e))
    }

    fn output(&self) -> PathBuf {
        self.0.path().join("out")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quern_runtime::cluster::launch::{coordinator_args, worker_args};

    fn parse(args: Vec<std::ffi::OsString>) -> Command {
        let argv = std::iter::once("quern".into()).chain(args);
        Cli::try_parse_from(argv)
            .unwrap_or_else(|e| panic!("the local cluster's command line does not parse: {e}"))
            .command
    }

    #[test]
    fn quern_and_the_processes_it_starts_run_without_transparent_huge_pages() {
        no_transparent_huge_pages();
        assert_eq!(
            rustix::thread::transparent_huge_pages_are_disabled().ok(),
            Some(true)
        );
        // Inherited through fork and exec, as a local cluster's processes are started.
        let status = std::process::Command::new("cat")
            .arg("/proc/self/status")
            .output()
            .expect("cat");
        let status = String::from_utf8_lossy(&status.stdout);
        let line = status.lines().find(|l| l.starts_with("THP_enabled:"));
        assert_eq!(
            line.and_then(|l| l.split_whitespace().nth(1)),
            Some("0"),
            "{line:?}"
        );
    }

    /// The local cluster renders its daemons' command lines in `launch.rs`; this is the
    /// parser they must agree with.
    #[test]
    fn the_local_clusters_daemon_command_lines_parse() {
        let secret = Path::new("/run/secret");
        match parse(coordinator_args("127.0.0.1:0", secret)) {
            Command::Coordinator {
                listen,
                secret_file,
                daemon,
                resume: None,
                ..
            } => {
                assert_eq!(listen, "127.0.0.1:0".parse::<SocketAddr>().unwrap());
                assert_eq!(secret_file, secret);
                assert!(daemon.exit_with_parent);
            }
            other => panic!("not a coordinator: {other:?}"),
        }
        let addr: SocketAddr = "127.0.0.1:7070".parse().unwrap();
        let work = Path::new("/tmp/w 1");
        match parse(worker_args(addr, 3, secret, work)) {
            Command::Worker {
                join,
                secret_file,
                slots,
                work_dir,
                daemon,
                ..
            } => {
                assert_eq!(join, addr);
                assert_eq!(secret_file, secret);
                assert_eq!(slots, Some(3));
                assert_eq!(work_dir.as_deref(), Some(work));
                assert!(daemon.exit_with_parent);
            }
            other => panic!("not a worker: {other:?}"),
        }
    }
}
