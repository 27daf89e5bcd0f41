//! Compiles `proto/interop/v1/*.proto` with protox (pure Rust), so building
//! never needs a system `protoc`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time: a build script compiled for one checkout may be
    // reused by another that shares the target directory.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = [
        "interop/v1/envelope.proto",
        "interop/v1/keys.proto",
        "interop/v1/client.proto",
        "interop/v1/pipeline.proto",
        "interop/v1/state.proto",
    ];
    for file in &files {
        println!("cargo:rerun-if-changed={}", root.join(file).display());
    }
    let descriptors = protox::compile(files, [&root])?;
    prost_build::Config::new()
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
