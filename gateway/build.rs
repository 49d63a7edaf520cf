//! Compiles the service contract from `../proto`: typed clients for the fixed
//! resource RPCs, and the descriptor set from which every tool is derived.
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../proto");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let mut compiler = protox::Compiler::new(["../proto"])?;
    compiler.include_source_info(true).include_imports(true);
    compiler.open_files(["taskmcp/v1/options.proto", "taskmcp/v1/changes.proto", "taskmcp/v1/resources.proto"])?;
    std::fs::write(out_dir.join("taskmcp_descriptor.bin"), compiler.encode_file_descriptor_set())?;
    tonic_prost_build::configure().build_server(false).compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
