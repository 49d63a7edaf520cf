//! gRPC client stubs for the load generator, from the service contract in `../proto`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../proto");
    let mut compiler = protox::Compiler::new(["../proto"])?;
    compiler.include_imports(true);
    compiler.open_files(["taskmcp/v1/options.proto", "taskmcp/v1/changes.proto"])?;
    tonic_prost_build::configure().build_server(false).compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
