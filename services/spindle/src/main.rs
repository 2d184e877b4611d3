//! `spindle`: starts a role (all roles in one process by default) and wires it together.

mod config;
mod generator_config;
mod leave;
mod limits_config;
mod ops;
mod process_metrics;
mod roles;

use std::process::ExitCode;

use clap::Parser;

use crate::config::{Cli, Command, Config};

/// mimalloc: the ingest path allocates and frees many short-lived buffers (protobuf decoding,
/// Arrow building, IPC); with glibc's allocator that was close to half of the CPU at saturation.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `spindle keygen`: a new API key, and its entry for the keys file.
fn keygen() -> ExitCode {
    match spindle_auth::new_key() {
        Ok(key) => {
            println!("API key (give it to the client; it is not stored anywhere): {key}\n");
            println!("Entry for the --api-keys-file (edit name, tenants and access):");
            println!(
                "keys:\n  - name: my-service\n    sha256: {}\n    tenants: [my-tenant]\n    access: [write, read]",
                spindle_auth::hash_key(&key)
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("spindle: {e}");
            ExitCode::FAILURE
        }
    }
}

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
    if role == Command::Keygen {
        return keygen();
    }
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
