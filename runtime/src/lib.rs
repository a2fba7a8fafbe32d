//! quern's execution engine: everything a task does on one machine.
//!
//! - [`job`]: the `Job` trait users implement, and the contexts `map`/`reduce` see.
//! - [`input`]: input expansion, split planning at record boundaries, in-place record reading
//!   from memory maps.
//! - [`map`]: partition + sort + combine + spill of map output as runs of rkyv blocks.
//! - [`reduce`]: k-way merge of validated in-place blocks, grouping, `reduce`.
//! - [`output`]: the output directory's commit protocol (attempt file → link → rename).
//! - [`io`]: the one module that knows about io_uring.
//! - [`local`]: a job on a local thread pool, or sequentially on one thread.
//! - [`child`]: child processes of attempts (streaming jobs), fed and drained with poll(2).
//! - [`cluster`]: the distributed runtime — coordinator, workers, client, local cluster.
//!
//! Invariant: the runtime knows nothing about specific jobs; `jobs/` knows nothing about
//! files, threads or I/O backends.

pub mod child;
pub mod cluster;
mod error;
pub mod input;
pub mod io;
pub mod job;
pub mod local;
pub mod map;
pub mod output;
pub mod reduce;
pub mod report;
pub mod task;

pub use error::{Error, Result};
pub use input::{expand_inputs, Split};
pub use job::{
    for_each_distinct, hash_partition, AttemptInfo, Counters, InputFile, InputFormat, Job,
    MapContext, Record, ReduceContext, Sink, SplitInfo, TaskControl,
};
pub use local::{plan, run_job, run_planned, JobReport, LocalConfig, Plan};
pub use reduce::KeyGroups;
