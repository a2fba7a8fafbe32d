//! quern's built-in jobs and the `quern` command line.
//!
//! - [`gensort`]: the Sort Benchmark's record generator (gensort-compatible).
//! - [`tera`]: TeraGen, TeraSort (sampled range partitioner), TeraValidate.
//! - [`grep`]: regex search in input order, and `-c` counts.
//! - [`sort`]: GNU sort's order of text lines (`-k`, `-t`, `-n`, `-r`, `-u`), range-partitioned.
//! - [`text`]: word count and inverted index over Unicode words.
//! - [`registry`]: every job a binary can run, by name; the descriptors that name a job and
//!   its parameters for the workers.
//! - [`progress`]: progress bars on a terminal.
//! - [`machine`]: the machine, quern's version and commit, and the filesystems of a
//!   benchmark's data, as benchmark reports describe them.
//! - [`cli`]: the whole command line as a library ([`cli::main`] with a registry): argument
//!   parsing, job setup, execution modes, summaries and exit codes.
//!
//! Jobs only implement [`quern_runtime::Job`]; they know nothing of files, threads or I/O.

pub mod cli;
pub mod gensort;
pub mod grep;
pub mod machine;
pub mod progress;
pub mod registry;
pub mod sort;
pub mod stream;
pub mod tera;
pub mod text;
