//! The `quern` command line: parses arguments, builds the job, runs it, prints a summary.
//!
//! Exit codes: 0 success; 1 the job ran but found a problem (grep: no line matched;
//! teravalidate: records out of order) or failed for a system reason; 2 bad usage or bad
//! input (missing file, malformed records, invalid regex, output already present) — in
//! which case nothing has been written.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use quern_runtime::input::{plan_row_splits, rows_input};
use quern_runtime::local::{default_memory, default_threads};
use quern_runtime::{
    expand_inputs, plan, run_planned, Error, InputFormat, Job, JobReport, LocalConfig, Plan,
};

use crate::gensort::RECORD_LEN;
use crate::grep::Grep;
use crate::tera::{self, TeraGen, TeraSort, TeraValidate};
use crate::text::{Index, WordCount};

/// quern — a MapReduce job runner: sort, grep, word count and your own jobs.
#[derive(Debug, Parser)]
#[command(name = "quern", version, about, long_about = None)]
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
    /// Sort-buffer memory for all running tasks together, e.g. 2GiB (default: a quarter of RAM).
    #[arg(long, value_parser = parse_size)]
    memory: Option<u64>,
    /// Run the whole job on one thread: the reference every other mode must match.
    #[arg(long)]
    sequential: bool,
    /// Task threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Print no summary on stderr.
    #[arg(long, short = 'q')]
    quiet: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
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
    Terasort {
        /// Input files or directories.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// Output directory.
        #[arg(long, short = 'o')]
        output: PathBuf,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Check that a sorted directory is in order; count records and duplicate keys.
    Teravalidate {
        /// Directory (or files) to validate, in name order.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Print lines matching a regular expression, in input order.
    Grep {
        /// Pattern (Rust regex syntax).
        pattern: String,
        /// Input files or directories.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// Write part files here instead of printing.
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
        /// Print the number of matching lines per file.
        #[arg(long, short = 'c')]
        count: bool,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Count words (maximal runs of Unicode letters, case-sensitive).
    Wc {
        /// Input files or directories.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// Output directory.
        #[arg(long, short = 'o')]
        output: PathBuf,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Build an inverted index: `word N doc1,doc2,...`.
    Index {
        /// Input files or directories.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// Output directory.
        #[arg(long, short = 'o')]
        output: PathBuf,
        #[command(flatten)]
        run: RunArgs,
    },
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

impl RunArgs {
    /// Config of a job that needs a reduce phase: `--reducers 0` is refused.
    fn reduce_config(&self, job: &str) -> Result<LocalConfig, Error> {
        let cfg = self.config(default_threads() as u32);
        if cfg.reducers == 0 {
            return Err(Error::Usage(format!(
                "{job} needs at least one reducer (--reducers 0 given)"
            )));
        }
        Ok(cfg)
    }

    fn config(&self, default_reducers: u32) -> LocalConfig {
        let threads = self.threads.unwrap_or_else(default_threads).max(1);
        LocalConfig {
            threads,
            sequential: self.sequential,
            reducers: self.reducers.unwrap_or(default_reducers),
            split_size: self.split_size,
            memory: self.memory.unwrap_or_else(default_memory),
        }
    }
}

/// What a command wants the process to do after the job.
enum Outcome {
    Ok,
    /// The job ran; the result is "no" (grep without matches, misordered records).
    Negative,
}

/// Entry point of the `quern` binary.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                e.exit();
            }
            // One line, like every other error: clap's first line without its own prefix.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            eprintln!("quern: error: {}", first.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    match run(cli.command) {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::Negative) => ExitCode::from(1),
        Err(e) => {
            eprintln!("quern: error: {e}");
            ExitCode::from(if e.is_user_error() { 2 } else { 1 })
        }
    }
}

fn summary(run: &RunArgs, name: &str, report: &JobReport) {
    if run.quiet {
        return;
    }
    let c = &report.counters;
    let secs = report.elapsed.as_secs_f64();
    let bytes_in = c.get("map.input.bytes");
    eprintln!(
        "quern {name}: {} map tasks, {} reduce tasks, {} records in, {} bytes out, {:.2} s ({:.1} MB/s in)",
        report.map_tasks,
        report.reduce_tasks,
        c.get("map.input.records"),
        c.get("output.bytes"),
        secs,
        bytes_in as f64 / secs.max(1e-9) / 1e6,
    );
}

fn run(command: Command) -> Result<Outcome, Error> {
    match command {
        Command::Teragen {
            records,
            output,
            parts,
            seed,
            ascii,
            run,
        } => {
            let parts = parts.unwrap_or(default_threads() as u64).max(1);
            let mut cfg = run.config(0);
            cfg.reducers = 0;
            let job = TeraGen {
                records,
                seed,
                ascii,
            };
            let plan = Plan {
                inputs: vec![rows_input()],
                splits: plan_row_splits(records, parts),
            };
            let report = run_planned(&job, &plan, &output, &cfg)?;
            summary(&run, "teragen", &report);
            println!("Records: {}", report.counters.get(tera::RECORDS));
            println!("Checksum: {:x}", report.counters.get(tera::CHECKSUM));
            Ok(Outcome::Ok)
        }
        Command::Terasort {
            inputs,
            output,
            run,
        } => {
            let cfg = run.reduce_config("terasort")?;
            let plan = plan(
                InputFormat::Fixed(RECORD_LEN),
                expand_inputs(&inputs)?,
                cfg.split_size,
            )?;
            let job = TeraSort::sampled(&plan.inputs, &plan.splits, cfg.reducers, 100_000)?;
            let report = run_planned(&job, &plan, &output, &cfg)?;
            summary(&run, "terasort", &report);
            Ok(Outcome::Ok)
        }
        Command::Teravalidate { inputs, run } => {
            let mut cfg = run.config(1);
            cfg.reducers = 1;
            let files = expand_inputs(&inputs)?;
            let job = TeraValidate {
                names: files.iter().map(|f| f.name.clone()).collect(),
            };
            let plan = plan(job.input_format(), files, cfg.split_size)?;
            let scratch = ScratchDir::new()?;
            let report = run_planned(&job, &plan, &scratch.output(), &cfg)?;
            summary(&run, "teravalidate", &report);
            let c = &report.counters;
            let mut stdout = std::io::stdout().lock();
            let problems = cat_parts(&report.parts, &mut stdout)?;
            let misorders = c.get(tera::MISORDERS);
            let _ = writeln!(stdout, "Records: {}", c.get(tera::RECORDS));
            let _ = writeln!(stdout, "Duplicate keys: {}", c.get(tera::DUPLICATES));
            let _ = writeln!(stdout, "Checksum: {:x}", c.get(tera::CHECKSUM));
            if misorders > 0 || problems > 0 {
                let _ = writeln!(stdout, "ERROR - {misorders} records out of order");
                Ok(Outcome::Negative)
            } else {
                let _ = writeln!(stdout, "SUCCESS - all records are in order");
                Ok(Outcome::Ok)
            }
        }
        Command::Grep {
            pattern,
            inputs,
            output,
            count,
            run,
        } => {
            let files = expand_inputs(&inputs)?;
            let job = Grep::new(
                &pattern,
                count,
                files.iter().map(|f| f.name.clone()).collect(),
            )
            .map_err(Error::Usage)?;
            let mut cfg = run.config(1);
            cfg.reducers = u32::from(count);
            let plan = plan(job.input_format(), files, cfg.split_size)?;
            let scratch;
            let out_dir = match &output {
                Some(dir) => dir.clone(),
                None => {
                    scratch = ScratchDir::new()?;
                    scratch.output()
                }
            };
            let report = run_planned(&job, &plan, &out_dir, &cfg)?;
            summary(&run, "grep", &report);
            if output.is_none() {
                cat_parts(&report.parts, &mut std::io::stdout().lock())?;
            }
            Ok(if report.counters.get(crate::grep::MATCHES) > 0 {
                Outcome::Ok
            } else {
                Outcome::Negative
            })
        }
        Command::Wc {
            inputs,
            output,
            run,
        } => {
            let cfg = run.reduce_config("wc")?;
            let report =
                quern_runtime::run_job(&WordCount, expand_inputs(&inputs)?, &output, &cfg)?;
            summary(&run, "wc", &report);
            Ok(Outcome::Ok)
        }
        Command::Index {
            inputs,
            output,
            run,
        } => {
            let cfg = run.reduce_config("index")?;
            let files = expand_inputs(&inputs)?;
            let job = Index {
                names: files.iter().map(|f| f.name.clone()).collect(),
            };
            let report = quern_runtime::run_job(&job, files, &output, &cfg)?;
            summary(&run, "index", &report);
            Ok(Outcome::Ok)
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

/// A private output directory for jobs whose result is printed, removed on drop.
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
