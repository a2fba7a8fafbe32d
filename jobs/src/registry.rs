//! The job registry: every job a quern binary can run, by name.
//!
//! A client plans a job (doing any planning work itself, such as TeraSort's key sampling)
//! and names it with a [`JobDescriptor`]: the job's registered name and its parameters,
//! encoded with rkyv. The coordinator forwards the descriptor's bytes, and every worker
//! rebuilds the same job from them with [`Registry::factory`]. Every process of a cluster
//! runs the same binary, so they share the same registry.
//!
//! quern's own jobs register themselves ([`Registry::builtin`]) through the same public
//! [`Registry::register`] a user's crate calls for its jobs:
//!
//! ```
//! use std::sync::Arc;
//! use quern_jobs::registry::Registry;
//! use quern_jobs::text::WordCount;
//!
//! #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
//! struct Params {
//!     min_count: u64,
//! }
//!
//! let mut registry = Registry::builtin();
//! registry.register("my_wc", |p: Params| {
//!     let _ = p.min_count; // a real job would keep its parameters
//!     Ok(Arc::new(WordCount) as Arc<dyn quern_runtime::Job>)
//! });
//! let descriptor = registry.descriptor("my_wc", &Params { min_count: 2 }).unwrap();
//! assert!(registry.build(&descriptor).is_ok());
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use quern_runtime::cluster::JobFactory;
use quern_runtime::{InputFile, InputFormat, Job};
use quern_shuffle::wire::{decode_msg, encode_msg};
use rkyv::rancor::BoxedError;

use crate::grep::Grep;
pub use crate::grep::GrepParams;
use crate::sort::Sort;
pub use crate::sort::SortParams;
use crate::stream::{Stream, StreamParams};
use crate::tera::{TeraGen, TeraSort, TeraValidate};
use crate::text::{Index, WordCount};

/// A built job, or why it cannot be built.
pub type BuildResult = Result<Arc<dyn Job>, String>;

/// A job's parameters: any rkyv-serialisable type (derive `rkyv::Archive`,
/// `rkyv::Serialize` and `rkyv::Deserialize`). Decoding validates the bytes (bytecheck)
/// first, so bytes from the network never panic.
pub trait Params: Sized {
    /// Serialises the parameters.
    fn encode(&self) -> Result<Vec<u8>, String>;
    /// Validates and deserialises parameters from untrusted bytes (any alignment).
    fn decode(bytes: &[u8]) -> Result<Self, String>;
}

impl<T> Params for T
where
    T: rkyv::Archive
        + for<'a> rkyv::Serialize<
            rkyv::api::high::HighSerializer<
                rkyv::util::AlignedVec<16>,
                rkyv::ser::allocator::ArenaHandle<'a>,
                BoxedError,
            >,
        >,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, BoxedError>>
        + rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<BoxedError>>,
{
    fn encode(&self) -> Result<Vec<u8>, String> {
        encode_msg(self)
            .map(|b| b.to_vec())
            .map_err(|e| e.to_string())
    }

    fn decode(bytes: &[u8]) -> Result<Self, String> {
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
        aligned.extend_from_slice(bytes);
        decode_msg(&aligned).map_err(|e| e.to_string())
    }
}

/// A job as it travels to the workers: its registered name and its encoded parameters.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct JobDescriptor {
    /// The name the job is registered under.
    pub name: String,
    /// Its parameters, encoded with [`Params::encode`].
    pub params: Vec<u8>,
}

impl JobDescriptor {
    /// Serialises the descriptor (the bytes of `JobSpec::job`).
    pub fn encode(&self) -> Result<Vec<u8>, String> {
        Params::encode(self)
    }

    /// Validates and deserialises a descriptor (from untrusted bytes: never panics).
    pub fn decode(bytes: &[u8]) -> Result<JobDescriptor, String> {
        <JobDescriptor as Params>::decode(bytes).map_err(|e| format!("invalid job descriptor: {e}"))
    }
}

type Builder = Arc<dyn Fn(&[u8]) -> BuildResult + Send + Sync>;
type Planner = Arc<dyn Fn(&[InputFile]) -> Result<Vec<u8>, String> + Send + Sync>;

/// Every job this binary can run, by name, and the job commands it adds to the command line.
#[derive(Clone, Default)]
pub struct Registry {
    jobs: BTreeMap<String, Builder>,
    commands: BTreeMap<String, (JobCommand, Planner)>,
}

/// How a registered job is run from the command line: `NAME INPUT... --output DIR [common
/// flags]` (see [`Registry::register_command`]).
#[derive(Debug, Clone)]
pub struct JobCommand {
    /// One line for `--help`.
    pub about: String,
    /// How the input files are cut into records.
    pub input: InputFormat,
    /// Reduce tasks unless `--reducers` says otherwise: `None` is one per core, `Some(0)` a
    /// map-only job.
    pub reducers: Option<u32>,
}

impl JobCommand {
    /// A command over `input` with the default number of reducers (one per core).
    pub fn new(about: &str, input: InputFormat) -> JobCommand {
        JobCommand {
            about: about.to_string(),
            input,
            reducers: None,
        }
    }

    /// With `reducers` reduce tasks unless `--reducers` is given (0: map-only).
    pub fn reducers(mut self, reducers: u32) -> JobCommand {
        self.reducers = Some(reducers);
        self
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("jobs", &self.jobs.keys())
            .field("commands", &self.commands.keys())
            .finish()
    }
}

/// The names quern's own jobs are registered under.
pub mod names {
    /// [`crate::tera::TeraGen`].
    pub const TERAGEN: &str = "teragen";
    /// [`crate::tera::TeraSort`].
    pub const TERASORT: &str = "terasort";
    /// [`crate::tera::TeraValidate`].
    pub const TERAVALIDATE: &str = "teravalidate";
    /// [`crate::grep::Grep`].
    pub const GREP: &str = "grep";
    /// [`crate::sort::Sort`].
    pub const SORT: &str = "sort";
    /// [`crate::text::WordCount`].
    pub const WC: &str = "wc";
    /// [`crate::text::Index`].
    pub const INDEX: &str = "index";
    /// [`crate::stream::Stream`].
    pub const STREAM: &str = "stream";
}

impl Registry {
    /// A registry without any job.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// quern's own jobs: teragen, terasort, teravalidate, grep, sort, wc, index and stream.
    pub fn builtin() -> Registry {
        let mut r = Registry::new();
        r.register(names::TERAGEN, |j: TeraGen| Ok(Arc::new(j) as Arc<dyn Job>))
            .register(names::TERASORT, |j: TeraSort| {
                Ok(Arc::new(j) as Arc<dyn Job>)
            })
            .register(names::TERAVALIDATE, |j: TeraValidate| {
                Ok(Arc::new(j) as Arc<dyn Job>)
            })
            .register(names::GREP, |p: GrepParams| {
                Ok(Arc::new(Grep::new(p)?) as Arc<dyn Job>)
            })
            .register(names::SORT, |p: SortParams| {
                Ok(Arc::new(Sort::new(p)?) as Arc<dyn Job>)
            })
            .register(names::WC, |j: WordCount| Ok(Arc::new(j) as Arc<dyn Job>))
            .register(names::INDEX, |j: Index| Ok(Arc::new(j) as Arc<dyn Job>))
            .register(names::STREAM, |p: StreamParams| {
                Ok(Arc::new(Stream::new(p)?) as Arc<dyn Job>)
            });
        r
    }

    /// Registers the job `name`, built from parameters of type `P` by `build`. A name
    /// registered again replaces the earlier entry (so a user's crate may override a
    /// built-in).
    pub fn register<P: Params + 'static>(
        &mut self,
        name: &str,
        build: impl Fn(P) -> BuildResult + Send + Sync + 'static,
    ) -> &mut Registry {
        let builder: Builder = Arc::new(move |bytes: &[u8]| build(P::decode(bytes)?));
        self.jobs.insert(name.to_string(), builder);
        self
    }

    /// Registers job `name` as [`Registry::register`] does, and adds the command `NAME
    /// INPUT... --output DIR [common flags]` to [`crate::cli::main`]'s command line. The
    /// client computes the job's parameters from the input files with `params` (e.g. to name
    /// them in the output); each worker rebuilds the job from them with `build`.
    pub fn register_command<P: Params + 'static>(
        &mut self,
        name: &str,
        command: JobCommand,
        params: impl Fn(&[InputFile]) -> P + Send + Sync + 'static,
        build: impl Fn(P) -> BuildResult + Send + Sync + 'static,
    ) -> &mut Registry {
        let planner: Planner = Arc::new(move |inputs: &[InputFile]| params(inputs).encode());
        self.commands.insert(name.to_string(), (command, planner));
        self.register(name, build)
    }

    /// The job commands, by name.
    pub fn commands(&self) -> impl Iterator<Item = (&str, &JobCommand)> {
        self.commands.iter().map(|(n, (c, _))| (n.as_str(), c))
    }

    /// The job command `name`, if one is registered.
    pub fn command(&self, name: &str) -> Option<&JobCommand> {
        self.commands.get(name).map(|(c, _)| c)
    }

    /// Names job command `name`'s job with the parameters its `params` function (see
    /// [`Registry::register_command`]) computes for `inputs`, the files it was given.
    pub fn command_descriptor(
        &self,
        name: &str,
        inputs: &[InputFile],
    ) -> Result<JobDescriptor, String> {
        let (_, params) = self.commands.get(name).ok_or_else(|| self.unknown(name))?;
        Ok(JobDescriptor {
            name: name.to_string(),
            params: params(inputs)?,
        })
    }

    /// The registered names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.jobs.keys().map(String::as_str)
    }

    /// Names job `name` with `params`, checking that it is registered.
    pub fn descriptor<P: Params>(&self, name: &str, params: &P) -> Result<JobDescriptor, String> {
        if !self.jobs.contains_key(name) {
            return Err(self.unknown(name));
        }
        Ok(JobDescriptor {
            name: name.to_string(),
            params: params.encode()?,
        })
    }

    /// Builds the job `descriptor` names.
    pub fn build(&self, descriptor: &JobDescriptor) -> BuildResult {
        let build = self
            .jobs
            .get(&descriptor.name)
            .ok_or_else(|| self.unknown(&descriptor.name))?;
        build(&descriptor.params).map_err(|e| format!("job {:?}: {e}", descriptor.name))
    }

    /// What workers build jobs with: decodes `JobSpec::job` and builds it.
    pub fn factory(self) -> JobFactory {
        Arc::new(move |bytes: &[u8]| self.build(&JobDescriptor::decode(bytes)?))
    }

    fn unknown(&self, name: &str) -> String {
        let exe = std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "this program".into());
        let known: Vec<&str> = self.names().collect();
        format!(
            "{exe} has no job named {name:?} (it has: {}); run every process of the cluster \
             from the binary that defines the job",
            known.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptors(r: &Registry) -> Vec<JobDescriptor> {
        vec![
            r.descriptor(
                names::TERAGEN,
                &TeraGen {
                    records: 5,
                    seed: 1 << 100,
                    ascii: true,
                },
            )
            .unwrap(),
            r.descriptor(
                names::TERASORT,
                &TeraSort {
                    cuts: vec![[1; 10], [2; 10]],
                },
            )
            .unwrap(),
            r.descriptor(
                names::GREP,
                &GrepParams {
                    pattern: "a+".into(),
                    mode: crate::grep::GrepMode::Count,
                    options: crate::grep::GrepOptions::default(),
                    names: vec!["x".into()],
                    first_nuls: vec![Some(3)],
                    line_numbers: true,
                },
            )
            .unwrap(),
            r.descriptor(
                names::SORT,
                &SortParams {
                    keys: vec![crate::sort::KeySpec::parse("2,2nr").unwrap()],
                    separator: Some(b':'),
                    numeric: false,
                    reverse: true,
                    unique: true,
                    cuts: vec![b"m".to_vec()],
                },
            )
            .unwrap(),
            r.descriptor(names::WC, &WordCount).unwrap(),
            r.descriptor(
                names::STREAM,
                &StreamParams {
                    mapper: "cat".into(),
                    combiner: Some("uniq".into()),
                    reducer: None,
                    map_only: false,
                    key_fields: 2,
                    separator: b"\t".to_vec(),
                    env: vec![("A".into(), "b".into())],
                    files: vec!["/bin/true".into()],
                    timeout_ms: 1000,
                },
            )
            .unwrap(),
        ]
    }

    #[test]
    fn descriptors_round_trip_and_garbage_is_an_error() {
        let r = Registry::builtin();
        for d in descriptors(&r) {
            let bytes = d.encode().unwrap();
            assert_eq!(JobDescriptor::decode(&bytes).unwrap(), d);
            assert!(r.build(&d).is_ok(), "{}", d.name);
            // Truncations never panic.
            for cut in 0..bytes.len() {
                let _ = JobDescriptor::decode(&bytes[..cut]);
            }
            // Nor do truncated parameters: they are an error naming the job.
            if d.params.is_empty() {
                continue; // WordCount has none
            }
            let short = JobDescriptor {
                params: d.params[..d.params.len() / 2].to_vec(),
                ..d.clone()
            };
            let err = r.build(&short).err().expect("truncated parameters");
            assert!(err.starts_with(&format!("job {:?}", d.name)), "{err}");
        }
        let bad = r
            .descriptor(
                names::GREP,
                &GrepParams {
                    pattern: "a(".into(),
                    mode: crate::grep::GrepMode::Lines,
                    options: crate::grep::GrepOptions::default(),
                    names: vec![],
                    first_nuls: vec![],
                    line_numbers: false,
                },
            )
            .unwrap();
        let err = r
            .build(&bad)
            .err()
            .expect("an invalid regex must not build");
        assert!(err.contains("invalid regex"), "{err}");
    }

    #[test]
    fn an_unknown_job_is_refused_naming_the_job_and_the_binary() {
        let r = Registry::builtin();
        let err = r.descriptor("reverse_links", &WordCount).unwrap_err();
        assert!(err.contains("\"reverse_links\""), "{err}");
        let exe = std::env::current_exe().unwrap();
        assert!(err.contains(&exe.display().to_string()), "{err}");
        assert!(err.contains("terasort"), "{err}");
        // A worker whose registry lacks the job fails it with the same message.
        let desc = JobDescriptor {
            name: "reverse_links".into(),
            params: vec![],
        };
        let factory = Registry::new().factory();
        let err = factory(&desc.encode().unwrap()).err().expect("unknown job");
        assert!(err.contains("no job named \"reverse_links\""), "{err}");
    }

    #[test]
    fn a_user_job_registers_through_the_same_api_and_can_replace_a_builtin() {
        let mut r = Registry::builtin();
        r.register(names::WC, |_: WordCount| Err("replaced".to_string()));
        let d = r.descriptor(names::WC, &WordCount).unwrap();
        assert_eq!(r.build(&d).err().as_deref(), Some("job \"wc\": replaced"));
        assert_eq!(
            r.names().collect::<Vec<_>>(),
            [
                "grep",
                "index",
                "sort",
                "stream",
                "teragen",
                "terasort",
                "teravalidate",
                "wc"
            ]
        );
    }
}
