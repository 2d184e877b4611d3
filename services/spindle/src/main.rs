//! `spindle`: starts a role (all roles in one process by default) and wires it together.

mod config;
mod generator_config;
mod leave;
mod ops;
mod roles;

use std::process::ExitCode;

use clap::Parser;

use crate::config::{Cli, Command, Config};

/// mimalloc: the ingest path allocates and frees many short-lived buffers (protobuf decoding,
/// Arrow building, IPC); with glibc's allocator that was close to half of the CPU at saturation.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SPINDLE_LOG")
                .unwrap_or_else(|_| "info,openraft=error,openraft::replication=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let role = cli.command.unwrap_or(Command::All);
    let config = match Config::resolve(role, &cli.options) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("spindle: {e:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("spindle: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result =
        if config.leave { runtime.block_on(leave::run(config)) } else { runtime.block_on(roles::run(role, config)) };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("spindle: {e:#}");
            ExitCode::FAILURE
        }
    }
}
