//! Job descriptors: the serialisable form of a built-in job, shipped to every worker.
//!
//! A client builds a [`JobDescriptor`] (doing any planning work itself, such as TeraSort's
//! key sampling), the coordinator forwards its bytes, and each worker rebuilds the same job
//! with [`factory`]. User-written jobs plug in the same way with their own factory.

use std::sync::Arc;

use quern_runtime::cluster::JobFactory;
use quern_runtime::Job;
use rkyv::rancor::BoxedError;

use crate::grep::Grep;
use crate::tera::{TeraGen, TeraSort, TeraValidate};
use crate::text::{Index, WordCount};

/// Every built-in job with its parameters.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum JobDescriptor {
    /// gensort-compatible generator.
    TeraGen {
        /// Records.
        records: u64,
        /// Generator seed.
        seed: u128,
        /// ASCII records.
        ascii: bool,
    },
    /// Total-order sort with these cut points.
    TeraSort {
        /// `R - 1` cut points.
        cuts: Vec<[u8; 10]>,
    },
    /// Order/duplicate/checksum validation.
    TeraValidate {
        /// Input names.
        names: Vec<String>,
    },
    /// Regex search.
    Grep {
        /// Pattern.
        pattern: String,
        /// Count per file.
        count: bool,
        /// Input names.
        names: Vec<String>,
    },
    /// Word count.
    WordCount,
    /// Inverted index.
    Index {
        /// Input names.
        names: Vec<String>,
    },
}

impl JobDescriptor {
    /// Builds the job.
    pub fn build(&self) -> Result<Arc<dyn Job>, String> {
        Ok(match self.clone() {
            JobDescriptor::TeraGen {
                records,
                seed,
                ascii,
            } => Arc::new(TeraGen {
                records,
                seed,
                ascii,
            }),
            JobDescriptor::TeraSort { cuts } => Arc::new(TeraSort { cuts }),
            JobDescriptor::TeraValidate { names } => Arc::new(TeraValidate { names }),
            JobDescriptor::Grep {
                pattern,
                count,
                names,
            } => Arc::new(Grep::new(&pattern, count, names)?),
            JobDescriptor::WordCount => Arc::new(WordCount),
            JobDescriptor::Index { names } => Arc::new(Index { names }),
        })
    }

    /// Serialises the descriptor.
    pub fn encode(&self) -> Result<Vec<u8>, String> {
        rkyv::to_bytes::<BoxedError>(self)
            .map(|b| b.to_vec())
            .map_err(|e| e.to_string())
    }

    /// Validates and deserialises a descriptor (from untrusted bytes: never panics).
    pub fn decode(bytes: &[u8]) -> Result<JobDescriptor, String> {
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
        aligned.extend_from_slice(bytes);
        rkyv::from_bytes::<JobDescriptor, BoxedError>(&aligned)
            .map_err(|e| format!("invalid job descriptor: {e}"))
    }
}

/// The factory for built-in jobs.
pub fn factory() -> JobFactory {
    Arc::new(|bytes: &[u8]| JobDescriptor::decode(bytes)?.build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_round_trip_and_garbage_is_an_error() {
        let all = [
            JobDescriptor::TeraGen {
                records: 5,
                seed: 1 << 100,
                ascii: true,
            },
            JobDescriptor::TeraSort {
                cuts: vec![[1; 10], [2; 10]],
            },
            JobDescriptor::Grep {
                pattern: "a+".into(),
                count: true,
                names: vec!["x".into()],
            },
            JobDescriptor::WordCount,
        ];
        for d in all {
            let bytes = d.encode().unwrap();
            assert_eq!(JobDescriptor::decode(&bytes).unwrap(), d);
            assert!(d.build().is_ok());
            // Misaligned copies and truncations never panic.
            for cut in 0..bytes.len() {
                let _ = JobDescriptor::decode(&bytes[..cut]);
            }
        }
        let bad = JobDescriptor::Grep {
            pattern: "a(".into(),
            count: false,
            names: vec![],
        };
        let err = bad.build().err().expect("an invalid regex must not build");
        assert!(err.contains("invalid regex"), "{err}");
    }
}
