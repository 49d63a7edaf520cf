//! Compiles `proto/` with protox (pure Rust, so a fresh machine needs no `protoc`)
//! and keeps the encoded descriptor set for reflection and for the gateway, which
//! reads tool names, docs and schemas from it.
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let protos =
        ["proto/taskmcp/v1/options.proto", "proto/taskmcp/v1/changes.proto", "proto/taskmcp/v1/resources.proto"];
    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler.include_source_info(true).include_imports(true);
    compiler.open_files(protos)?;
    // The encoded set keeps custom options (`taskmcp.v1.tool`), which a
    // prost_types round trip would drop.
    std::fs::write(out_dir.join("taskmcp_descriptor.bin"), compiler.encode_file_descriptor_set())?;
    tonic_prost_build::configure().compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
