//! The `quern` binary.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    quern_jobs::cli::main(quern_jobs::registry::Registry::builtin())
}
