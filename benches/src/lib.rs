//! quern's benchmarks.
//!
//! - Criterion micro-benchmarks of the hot paths live in `benches/` and run with
//!   `cargo bench -p quern-benches` (`-- --test` for a quick smoke run):
//!   `sort_blocks` measures block encode/decode, the map task's sort + spill, and the reduce
//!   task's merge, on TeraSort-like input (100-byte records, 10-byte random keys).
//! - Macro benchmarks of whole jobs against a peer measured in the same run are binaries:
//!   `terasort_vs_sort` times `quern terasort` against `LC_ALL=C sort --parallel` on the same
//!   gensort ASCII records and checks that both outputs are byte-identical.
//! - Scripts in `benches/scripts/` (bash; not tests, not CI): `scale.sh` (many small files,
//!   any fan-in, spilling reducers: wall time and peak anonymous memory), `os_straggler.sh`
//!   (a worker slowed by the OS, with and without speculation) and `fuzz.sh`.
//! - `bash benches/scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]` (default 60 s, every
//!   target) builds the cargo-fuzz targets of `fuzz/` (nightly toolchain and
//!   `cargo install cargo-fuzz`; AddressSanitizer, debug assertions, overflow checks) and runs
//!   them one after another, each from its committed seeds in `fuzz/seeds/TARGET` into a
//!   scratch corpus `fuzz/corpus/TARGET`. It prints each target's executions, executions per
//!   second and ok or CRASH, and exits 1 if any crashed; a crashing input lands in
//!   `fuzz/artifacts/TARGET/`. The seeds are real encodings, rewritten by
//!   `cargo run --manifest-path fuzz/Cargo.toml --example seeds`.
