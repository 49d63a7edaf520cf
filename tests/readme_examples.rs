//! The README must not lie: its grpcurl examples run, as written, against a
//! fresh server (only the address is swapped for the test server's), and every
//! flag and environment variable of its configuration table exists.
mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use common::Server;

const README_ADDR: &str = "127.0.0.1:50051";
const MARKER: &str = "<!-- readme-grpcurl";

fn readme() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The `grpcurl ...` lines of the first ```sh block after the marker comment.
fn grpcurl_examples(readme: &str) -> Vec<String> {
    let start =
        readme.find(MARKER).unwrap_or_else(|| panic!("README has no `{MARKER}` marker before its grpcurl examples"));
    let rest = &readme[start..];
    let block = rest.find("```sh").expect("a ```sh block after the marker");
    let body = &rest[block + "```sh".len()..];
    let end = body.find("```").expect("the ```sh block is closed");
    body[..end].lines().map(str::trim).filter(|l| l.starts_with("grpcurl ")).map(str::to_string).collect()
}

/// PATH with the repository's .tools/bin first, as scripts/test sets it.
fn path_with_tools() -> String {
    let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/bin");
    let mut dirs: Vec<PathBuf> = vec![tools];
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    std::env::join_paths(dirs).expect("PATH joins").into_string().expect("PATH is UTF-8")
}

fn have_grpcurl(path: &str) -> bool {
    std::env::split_paths(path).any(|d| d.join("grpcurl").is_file())
}

#[test]
fn readme_grpcurl_examples_work_when_pasted() {
    let readme = readme();
    let examples = grpcurl_examples(&readme);
    assert!(examples.len() >= 5, "expected the README's grpcurl examples, found {examples:?}");
    assert!(
        examples.iter().all(|e| e.contains(README_ADDR)),
        "every example targets the documented default address {README_ADDR}"
    );
    let path = path_with_tools();
    assert!(have_grpcurl(&path), "grpcurl not found on PATH or in .tools/bin: run scripts/install-test-tools");

    let server = Server::start();
    let addr = server.grpcurl_addr();
    for example in &examples {
        let line = example.replace(README_ADDR, &addr);
        // Run through a shell exactly as a person pasting it would.
        let out = Command::new("bash").arg("-c").arg(&line).env("PATH", &path).output().expect("run bash");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!("$ {example}\n{stdout}{stderr}");
        assert!(out.status.success(), "README example failed ({:?}):\n$ {example}\n{stdout}{stderr}", out.status);
        assert!(!stdout.trim().is_empty(), "README example printed nothing:\n$ {example}");
    }
}

#[test]
fn readme_configuration_table_matches_serve_help() {
    let readme = readme();
    let out = Command::new(env!("CARGO_BIN_EXE_task-mcp"))
        .args(["serve", "--help"])
        .output()
        .expect("run task-mcp serve --help");
    assert!(out.status.success(), "serve --help failed: {out:?}");
    let help = String::from_utf8_lossy(&out.stdout);

    let table: Vec<&str> = readme.lines().filter(|l| l.starts_with("| `--")).collect();
    assert!(table.len() >= 8, "the README's configuration table has a row per flag: {table:?}");
    for row in table {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let flag = cells[1].trim_matches('`').split_whitespace().next().expect("a flag in the first column");
        assert!(help.contains(flag), "README documents {flag}, which `task-mcp serve --help` does not know:\n{help}");
        let env = cells[2].trim_matches('`');
        let env = env.split('`').next().unwrap_or(env).trim();
        if env.starts_with("TASK_MCP_") {
            assert!(help.contains(env), "README says {flag} reads {env}; --help does not mention it:\n{help}");
        }
    }
    // And the other way round: every flag `serve` accepts is documented.
    let documented: Vec<String> = readme
        .lines()
        .filter(|l| l.starts_with("| `--"))
        .filter_map(|l| l.split('|').nth(1))
        .filter_map(|c| c.trim().trim_matches('`').split_whitespace().next().map(str::to_string))
        .collect();
    for flag in help.split_whitespace().filter(|w| w.starts_with("--")) {
        let flag = flag.trim_end_matches(',').split('=').next().unwrap_or(flag);
        if flag == "--help" || flag == "--version" {
            continue;
        }
        assert!(documented.iter().any(|d| d == flag), "`serve --help` lists {flag}, the README's table does not");
    }
}
