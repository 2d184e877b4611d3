//! `spindle`: starts a role (all roles in one process by default) and wires it together.

mod config;
mod generator_config;
mod leave;
mod limits_config;
mod listeners;
mod ops;
mod process_metrics;
mod roles;

use std::process::ExitCode;

use clap::Parser;

use crate::config::{CertsCli, Cli, Command, Config};

/// mimalloc: the ingest path allocates and frees many short-lived buffers (protobuf decoding,
/// Arrow building, IPC); with glibc's allocator that was close to half of the CPU at saturation.
/// Built without transparent huge pages (the workspace's `no_thp`): a freshly touched huge page
/// costs zeroing 2 MiB, which took up to 40 % of a storage node's CPU.
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

/// `spindle certs DIR NAME...`: a node certificate from the cluster CA (made if missing).
fn certs(args: impl Iterator<Item = std::ffi::OsString>) -> ExitCode {
    let cli = CertsCli::parse_from(args);
    match spindle_tls::write_cluster_certs(&cli.dir, &cli.names) {
        Ok(files) => {
            if files.ca_created {
                println!("new cluster CA: {} (trust it: --internal-tls-ca-file)", files.ca.display());
                println!("its key: {} (keep it off the nodes; it signs new node certificates)", files.ca_key.display());
            }
            println!("node certificate: {} (--internal-tls-cert-file)", files.cert.display());
            println!("node key: {} (--internal-tls-key-file)", files.key.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("spindle certs: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Stack of every runtime thread.
const THREAD_STACK_BYTES: usize = 8 * 1024 * 1024;

fn main() -> ExitCode {
    // `certs` takes positional arguments the roles do not, so it is parsed on its own.
    if std::env::args_os().nth(1).is_some_and(|a| a == "certs") {
        return certs(std::env::args_os().skip(1));
    }
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SPINDLE_LOG")
                .unwrap_or_else(|_| "info,openraft=error,openraft::replication=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let role = cli.command.unwrap_or(Command::All);
    match role {
        Command::Keygen => return keygen(),
        // Only reached with options before `certs`.
        Command::Certs => return certs(std::iter::once("certs".into())),
        _ => {}
    }
    let config = match Config::resolve(role, &cli.options) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("spindle: {e:#}");
            return ExitCode::from(2);
        }
    };
    // Query planning recurses over expression trees (DataFusion's and TraceQL's); the parsers
    // bound a query's size, and 8 MiB per thread (Tokio's default is 2 MiB) keeps the largest
    // allowed query, compiled with array-aware comparisons, well inside the stack.
    let runtime =
        match tokio::runtime::Builder::new_multi_thread().thread_stack_size(THREAD_STACK_BYTES).enable_all().build() {
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
