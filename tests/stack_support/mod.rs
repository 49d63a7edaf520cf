//! `scripts/stack-up` and `scripts/stack-down` driven from a test: a stack of its own (its own
//! `STACK_DIR` and free loopback ports, so a developer's running stack is never touched), the
//! PIDs and logs it records, and a `stack-down` whatever the test did. Shared by `local_stack`
//! and `alert_path`.
#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    net::TcpListener,
    path::PathBuf,
    process::{Command, Output},
};

/// What `stack-up` may start, by the names of its PID and log files.
pub const COMPONENTS: &[&str] = &["otel-collector", "alertmanager", "task-mcp", "prometheus"];

const PORT_VARS: &[&str] = &[
    "STACK_HTTP_PORT",
    "STACK_GRPC_PORT",
    "STACK_METRICS_PORT",
    "STACK_PROMETHEUS_PORT",
    "STACK_ALERTMANAGER_PORT",
    "STACK_OTLP_GRPC_PORT",
    "STACK_OTLP_HTTP_PORT",
    "STACK_COLLECTOR_EXPORTER_PORT",
    "STACK_COLLECTOR_SELF_PORT",
    "STACK_COLLECTOR_HEALTH_PORT",
    "STACK_COLLECTOR_PPROF_PORT",
    "STACK_COLLECTOR_ZPAGES_PORT",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port()
}

/// Runs `scripts/<script>` with the stack's environment, and nothing of the caller's that would
/// change what the stack means (the server's flags, `OTEL_*`, other `STACK_*` settings).
fn run_script(env: &BTreeMap<&'static str, String>, script: &str) -> Output {
    let mut cmd = Command::new(root().join("scripts").join(script));
    for (key, _) in std::env::vars().filter(|(k, _)| {
        k.starts_with("TASK_MCP_")
            || k.starts_with("OTEL_")
            || (k.starts_with("STACK_") && !env.contains_key(k.as_str()))
    }) {
        cmd.env_remove(key);
    }
    cmd.envs(env).current_dir(root()).output().unwrap_or_else(|e| panic!("run {script}: {e}"))
}

pub struct Stack {
    dir: tempfile::TempDir,
    env: BTreeMap<&'static str, String>,
}

impl Stack {
    /// A stack in a fresh temporary directory named `prefix…`, scraping every second, with the
    /// test's build of the server; `settings` add to or override those `STACK_*` variables.
    pub fn new(prefix: &str, settings: &[(&'static str, &str)]) -> Stack {
        let dir = tempfile::Builder::new().prefix(prefix).tempdir().expect("tempdir");
        let mut env: BTreeMap<&'static str, String> = PORT_VARS.iter().map(|k| (*k, free_port().to_string())).collect();
        env.insert("STACK_DIR", dir.path().display().to_string());
        env.insert("STACK_SCRAPE_INTERVAL", "1s".into());
        env.insert("TASK_MCP_BIN", env!("CARGO_BIN_EXE_task-mcp").into());
        for (key, value) in settings {
            env.insert(key, value.to_string());
        }
        Stack { dir, env }
    }

    pub fn port(&self, key: &str) -> u16 {
        self.env[key].parse().expect("port")
    }

    pub fn run(&self, script: &str) -> Output {
        run_script(&self.env, script)
    }

    /// `run` on a blocking thread, so the test's own servers keep being served meanwhile.
    pub async fn run_async(&self, script: &'static str) -> Output {
        let env = self.env.clone();
        tokio::task::spawn_blocking(move || run_script(&env, script)).await.expect("script task")
    }

    /// A path inside the stack's directory.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The recorded PID of each running component.
    pub fn pids(&self) -> BTreeMap<String, u32> {
        COMPONENTS
            .iter()
            .filter_map(|name| {
                let text = std::fs::read_to_string(self.path(&format!("pids/{name}.pid"))).ok()?;
                Some((name.to_string(), text.trim().parse().ok()?))
            })
            .collect()
    }

    /// The last lines of every component's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut all = String::new();
        for name in COMPONENTS {
            if let Ok(text) = std::fs::read_to_string(self.path(&format!("logs/{name}.log"))) {
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                all.push_str(&format!("--- {name} (last lines) ---\n"));
                for line in tail.into_iter().rev() {
                    all.push_str(line);
                    all.push('\n');
                }
            }
        }
        all
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // Never leave processes behind, whatever the test did.
        let out = self.run("stack-down");
        if std::thread::panicking() {
            eprintln!("stack-down: {}\n{}", text(&out), self.logs());
        }
    }
}

/// A script's exit status and output, for failure messages.
pub fn text(out: &Output) -> String {
    format!(
        "exit {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The process has ended (exited but not reaped yet counts as ended).
pub fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
    }
}
