//! Compiles `spindle/*.proto` with protox (pure Rust: no `protoc` needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=spindle");
    let fds = protox::compile(["spindle/storage.proto", "spindle/generator.proto"], ["."])?;
    tonic_prost_build::configure().build_client(true).build_server(true).bytes(".").compile_fds(fds)?;
    Ok(())
}
