//! The one test harness: starts the real `task-mcp` binary on random loopback
//! ports, waits for its machine-readable "listening" log line, and hands out
//! connected gRPC clients. Logs (stdout and stderr) are captured the whole time
//! and printed when a test panics, so a failure always shows what the server said.
//!
//! Every test file does `mod common;` and uses the part it needs.
#![allow(dead_code)]

pub mod mcp;
pub mod oauth;

use std::{
    collections::BTreeMap,
    fmt,
    io::{BufRead, BufReader, Read},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, mpsc},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use task_mcp::pb::{changes_client::ChangesClient, resources_client::ResourcesClient};
use tonic::{
    Code, Request, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Channel, Endpoint},
};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
use tonic_types::{ErrorInfo, StatusExt};

/// How long the server may take to print its "listening" line.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// Failure bound for one RPC or one awaited stream message in tests. Never an
/// assertion about speed: it only turns a hang into a readable failure.
pub const RPC_BOUND: Duration = Duration::from_secs(10);

pub type Changes = ChangesClient<InterceptedService<Channel, Auth>>;
pub type Resources = ResourcesClient<InterceptedService<Channel, Auth>>;
pub type Health = HealthClient<Channel>;

/// Adds `authorization: Bearer <token>` to every call when it holds a token.
#[derive(Clone, Default)]
pub struct Auth(Option<MetadataValue<Ascii>>);

impl Auth {
    pub fn none() -> Self {
        Auth(None)
    }

    pub fn bearer(token: &str) -> Self {
        Auth(Some(bearer_value(token)))
    }
}

impl Interceptor for Auth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

fn bearer_value(token: &str) -> MetadataValue<Ascii> {
    format!("Bearer {token}").parse().expect("token is valid ASCII metadata")
}

/// Wraps a message in a request that carries `authorization: Bearer <token>`.
pub fn with_bearer<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("authorization", bearer_value(token));
    request
}

/// Shared, append-only capture of everything the server printed.
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<String>>);

impl Logs {
    fn push(&self, stream: &str, line: &str) {
        let mut logs = self.0.lock().unwrap_or_else(|e| e.into_inner());
        logs.push_str(stream);
        logs.push_str(line);
        logs.push('\n');
    }

    pub fn text(&self) -> String {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl fmt::Display for Logs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.text();
        if text.is_empty() { f.write_str("(the server printed nothing)") } else { f.write_str(&text) }
    }
}

/// How to start a server. `Server::builder()` gives a tempdir workspace,
/// loopback ports picked by the OS and a rate limit high enough not to matter.
pub struct ServerBuilder {
    workspace: Option<PathBuf>,
    grpc_listen: String,
    http_listen: String,
    rate_limit: Option<(u32, u32)>,
    auth_token: Option<String>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    nofile: Option<(u64, u64)>,
    wrapper: Vec<String>,
}

/// The server exited (or never said it was listening) before it was ready.
#[derive(Debug)]
pub struct StartFailure {
    /// Exit status if the process ended.
    pub status: Option<ExitStatus>,
    pub logs: String,
    pub why: String,
}

impl ServerBuilder {
    /// Uses `dir` as the workspace instead of a fresh tempdir.
    pub fn workspace(mut self, dir: impl Into<PathBuf>) -> Self {
        self.workspace = Some(dir.into());
        self
    }

    /// The `--grpc-listen` address; `127.0.0.1:0` by default.
    pub fn grpc_listen(mut self, addr: &str) -> Self {
        self.grpc_listen = addr.to_string();
        self
    }

    /// The `--http-listen` address; `127.0.0.1:0` by default.
    pub fn http_listen(mut self, addr: &str) -> Self {
        self.http_listen = addr.to_string();
        self
    }

    /// `--rate-limit-per-second` and `--rate-limit-burst`; 10000/10000 by default.
    pub fn rate_limit(mut self, per_second: u32, burst: u32) -> Self {
        self.rate_limit = Some((per_second, burst));
        self
    }

    /// Passes `--auth-token <token>` and makes `changes()`/`resources()` send it.
    /// (For the `NAME=TOKEN` form, the clients send the part after `=`.)
    pub fn auth_token(mut self, token: &str) -> Self {
        self.auth_token = Some(token.to_string());
        self
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Starts the server with this open-file limit (`RLIMIT_NOFILE`, soft and hard).
    pub fn nofile(self, limit: u64) -> Self {
        self.nofile_limits(limit, limit)
    }

    /// Starts the server with these soft and hard open-file limits.
    pub fn nofile_limits(mut self, soft: u64, hard: u64) -> Self {
        self.nofile = Some((soft, hard));
        self
    }

    /// Runs the binary through `command` (a program and its arguments; the binary and its own
    /// arguments follow them), e.g. `unshare --mount` to give the server a mount namespace of
    /// its own. The wrapper must `exec` the binary, so that the process spawned (its pid, the
    /// signals, the kill on drop) is the server.
    pub fn wrapped_in<I, S>(mut self, command: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.wrapper = command.into_iter().map(Into::into).collect();
        self
    }

    /// Starts the server and waits for it to listen; panics with its logs if it cannot.
    pub fn start(self) -> Server {
        match self.try_start() {
            Ok(server) => server,
            Err(failure) => panic!(
                "task-mcp did not start: {}\nexit status: {:?}\n--- server logs ---\n{}\n--- end of server logs ---",
                failure.why, failure.status, failure.logs
            ),
        }
    }

    /// Starts the server; `Err` when it exits or stays silent past the startup timeout.
    pub fn try_start(self) -> Result<Server, StartFailure> {
        let (tempdir, workspace) = match self.workspace {
            Some(dir) => (None, dir),
            None => {
                let dir = tempfile::Builder::new().prefix("task-mcp-test-").tempdir().expect("create tempdir");
                let path = dir.path().join("openspec");
                (Some(dir), path)
            }
        };
        let binary = env!("CARGO_BIN_EXE_task-mcp");
        let mut cmd = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(binary);
                cmd
            }
            None => Command::new(binary),
        };
        cmd.arg("serve")
            .arg("--workspace")
            .arg(&workspace)
            .args(["--grpc-listen", &self.grpc_listen])
            .args(["--http-listen", &self.http_listen])
            .args(["--metrics-listen", "127.0.0.1:0"]);
        if let Some((per_second, burst)) = self.rate_limit {
            cmd.args(["--rate-limit-per-second", &per_second.to_string()]);
            cmd.args(["--rate-limit-burst", &burst.to_string()]);
        }
        if let Some(token) = &self.auth_token {
            cmd.args(["--auth-token", token]);
        }
        cmd.args(&self.args);
        // The environment equivalents of the flags must not leak in from the
        // developer's shell and change what a test means; nor may a Collector
        // configured there (OTEL_*) receive the tests' telemetry.
        for (key, _) in std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v))) {
            if key.starts_with("TASK_MCP_") || key.starts_with("OTEL_") {
                cmd.env_remove(&key);
            }
        }
        for (key, value) in &self.env {
            cmd.env(key, value);
        }
        if let Some((soft, hard)) = self.nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: only setrlimit, async-signal-safe, runs between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let rlimit = libc::rlimit { rlim_cur: soft, rlim_max: hard };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let command_line = format!("{cmd:?}");
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {command_line}: {e}"));

        let logs = Logs::default();
        let (tx, rx) = mpsc::channel::<String>();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let readers = vec![drain(stdout, "", logs.clone(), tx.clone()), drain(stderr, "[stderr] ", logs.clone(), tx)];

        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let listening = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(found) = parse_listening(&line) {
                        break Ok(found);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    break Err(format!(
                        "no \"listening\" log line within {STARTUP_TIMEOUT:?} (command: {command_line})"
                    ));
                }
                // Both pipes closed: the process has exited.
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    break Err(format!("the process exited before listening (command: {command_line})"));
                }
            }
        };
        match listening {
            Ok(found) => Ok(Server {
                child: Some(child),
                readers,
                logs,
                grpc_addr: found.grpc_addr,
                http_addr: found.http_addr,
                metrics_addr: found.metrics_addr,
                workspace,
                auth_token: self.auth_token.map(|t| t.split_once('=').map_or(t.clone(), |(_, v)| v.to_string())),
                _tempdir: tempdir,
            }),
            Err(why) => {
                let status = stop_child(&mut child, Duration::from_secs(5));
                for reader in readers {
                    let _ = reader.join();
                }
                Err(StartFailure { status, logs: logs.text(), why })
            }
        }
    }
}

/// Reads one pipe line by line into `logs` and forwards each line to `tx` until
/// the pipe closes (the receiver may be gone; the draining goes on regardless).
fn drain(
    pipe: impl Read + Send + 'static,
    prefix: &'static str,
    logs: Logs,
    tx: mpsc::Sender<String>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf);
                    let line = line.trim_end_matches(['\n', '\r']);
                    logs.push(prefix, line);
                    let _ = tx.send(line.to_string());
                }
            }
        }
    })
}

struct Listening {
    grpc_addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
}

/// Finds a JSON log line whose `message` is "listening" (top level, or under
/// `fields` as tracing-subscriber nests it) and reads its addresses.
fn parse_listening(line: &str) -> Option<Listening> {
    let value: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
    let field = |name: &str| value.get(name).or_else(|| value.get("fields").and_then(|f| f.get(name)));
    if field("message")?.as_str()? != "listening" {
        return None;
    }
    let addr = |name: &str| field(name).and_then(|v| v.as_str()).and_then(|s| s.parse::<SocketAddr>().ok());
    Some(Listening { grpc_addr: addr("grpc_addr")?, http_addr: addr("http_addr"), metrics_addr: addr("metrics_addr") })
}

/// Kills the child if it still runs and reaps it. Returns its exit status.
fn stop_child(child: &mut Child, bound: Duration) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    let _ = child.kill();
    wait_for_exit(child, bound)
}

fn wait_for_exit(child: &mut Child, bound: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + bound;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => return None,
        }
    }
}

/// A running `task-mcp serve`. Killed on drop; its logs are printed if the test panicked.
pub struct Server {
    child: Option<Child>,
    readers: Vec<JoinHandle<()>>,
    logs: Logs,
    pub grpc_addr: SocketAddr,
    pub http_addr: Option<SocketAddr>,
    pub metrics_addr: Option<SocketAddr>,
    /// The `--workspace` directory (the openspec dir itself).
    pub workspace: PathBuf,
    auth_token: Option<String>,
    _tempdir: Option<tempfile::TempDir>,
}

impl Server {
    pub fn builder() -> ServerBuilder {
        ServerBuilder {
            workspace: None,
            grpc_listen: "127.0.0.1:0".to_string(),
            http_listen: "127.0.0.1:0".to_string(),
            rate_limit: Some((10_000, 10_000)),
            auth_token: None,
            args: Vec::new(),
            env: Vec::new(),
            nofile: None,
            wrapper: Vec::new(),
        }
    }

    /// A server with every default: tempdir workspace, loopback, no auth.
    pub fn start() -> Server {
        Server::builder().start()
    }

    /// Everything the server printed so far.
    pub fn logs(&self) -> String {
        self.logs.text()
    }

    /// The gRPC address as a URI, e.g. `http://127.0.0.1:40123`.
    pub fn endpoint(&self) -> String {
        let port = self.grpc_addr.port();
        // A server bound to 0.0.0.0 is reached over loopback.
        let ip = if self.grpc_addr.ip().is_unspecified() {
            "127.0.0.1".to_string()
        } else {
            self.grpc_addr.ip().to_string()
        };
        format!("http://{ip}:{port}")
    }

    /// `host:port` as grpcurl wants it.
    pub fn grpcurl_addr(&self) -> String {
        self.endpoint().trim_start_matches("http://").to_string()
    }

    /// The gateway's base URL, e.g. `http://127.0.0.1:40124` (from `http_addr`
    /// in the "listening" line); panics with the logs when the server gave none.
    pub fn http_base(&self) -> String {
        let Some(addr) = self.http_addr else {
            panic!("the \"listening\" log line has no http_addr\n--- server logs ---\n{}", self.logs)
        };
        let ip = if addr.ip().is_unspecified() { "127.0.0.1".to_string() } else { addr.ip().to_string() };
        format!("http://{ip}:{}", addr.port())
    }

    /// The MCP Streamable HTTP endpoint, `<http_base>/mcp`.
    pub fn mcp_url(&self) -> String {
        format!("{}/mcp", self.http_base())
    }

    /// A new, connected HTTP/2 connection to the server.
    pub async fn channel(&self) -> Channel {
        let endpoint = Endpoint::from_shared(self.endpoint()).expect("valid endpoint").connect_timeout(RPC_BOUND);
        match endpoint.connect().await {
            Ok(channel) => channel,
            Err(e) => panic!("connect to {}: {e:?}\n--- server logs ---\n{}", self.endpoint(), self.logs),
        }
    }

    /// The auth the default clients send: the server's token, if it has one.
    pub fn default_auth(&self) -> Auth {
        self.auth_token.as_deref().map_or_else(Auth::none, Auth::bearer)
    }

    pub async fn changes(&self) -> Changes {
        self.changes_with(self.default_auth()).await
    }

    pub async fn changes_with(&self, auth: Auth) -> Changes {
        ChangesClient::with_interceptor(self.channel().await, auth)
    }

    pub async fn resources(&self) -> Resources {
        self.resources_with(self.default_auth()).await
    }

    pub async fn resources_with(&self, auth: Auth) -> Resources {
        ResourcesClient::with_interceptor(self.channel().await, auth)
    }

    /// `grpc.health.v1.Health`, which needs no token.
    pub async fn health(&self) -> Health {
        HealthClient::new(self.channel().await)
    }

    /// Asserts the server answers `Health/Check` (overall, service "") with SERVING.
    pub async fn assert_serving(&self) {
        let mut health = self.health().await;
        let response = bounded("Health/Check", health.check(HealthCheckRequest { service: String::new() }))
            .await
            .unwrap_or_else(|s| panic!("Health/Check failed: {s:?}\n--- server logs ---\n{}", self.logs));
        assert_eq!(
            response.into_inner().status,
            ServingStatus::Serving as i32,
            "health is not SERVING\n--- server logs ---\n{}",
            self.logs
        );
    }

    /// The process id, e.g. to signal it.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server still owned").id()
    }

    /// Sends SIGTERM (graceful shutdown).
    pub fn sigterm(&self) {
        self.signal(libc::SIGTERM);
    }

    pub fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.pid()).expect("pid fits pid_t");
        // SAFETY: kill(2) with the pid of our own child process, which we have not reaped yet.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal}) failed: {}", std::io::Error::last_os_error());
    }

    /// Waits up to `bound` for the process to exit. `None` if it still runs.
    pub fn wait_exit(&mut self, bound: Duration) -> Option<ExitStatus> {
        let status = wait_for_exit(self.child.as_mut().expect("server still owned"), bound);
        if status.is_some() {
            // The pipes close with the process: collect the last log lines.
            for reader in self.readers.drain(..) {
                let _ = reader.join();
            }
        }
        status
    }

    /// Kills the process now (SIGKILL) and reaps it.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|child| stop_child(child, Duration::from_secs(10)))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            stop_child(child, Duration::from_secs(10));
        }
        if std::thread::panicking() {
            eprintln!(
                "\n--- task-mcp logs (grpc {}, workspace {}) ---\n{}\n--- end of task-mcp logs ---",
                self.grpc_addr,
                self.workspace.display(),
                self.logs
            );
        }
    }
}

/// A running `task-mcp gateway --upstream URL` (the split deployment's front
/// tier) on a random loopback port. Killed on drop; its logs are printed if
/// the test panicked.
pub struct Gateway {
    child: Child,
    logs: Logs,
    pub http_addr: SocketAddr,
}

impl Gateway {
    /// Starts a gateway in front of `upstream` with `args` added and `env` set.
    pub fn start(upstream: &str, args: &[&str], env: &[(&str, &str)]) -> Gateway {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_task-mcp"));
        cmd.args(["gateway", "--upstream", upstream, "--http-listen", "127.0.0.1:0"]).args(args);
        for (key, _) in std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v))) {
            if key.starts_with("TASK_MCP_") || key.starts_with("OTEL_") {
                cmd.env_remove(&key);
            }
        }
        cmd.envs(env.iter().copied());
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let command_line = format!("{cmd:?}");
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {command_line}: {e}"));
        let logs = Logs::default();
        let (tx, rx) = mpsc::channel::<String>();
        drain(child.stdout.take().expect("piped stdout"), "", logs.clone(), tx.clone());
        drain(child.stderr.take().expect("piped stderr"), "[stderr] ", logs.clone(), tx);
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let http_addr = loop {
            let line = match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => line,
                Err(e) => {
                    stop_child(&mut child, Duration::from_secs(5));
                    panic!("the gateway did not listen ({e}; command: {command_line})\n{}", logs.text());
                }
            };
            let listening = serde_json::from_str::<serde_json::Value>(&line)
                .ok()
                .filter(|v| v["message"] == "listening")
                .and_then(|v| v["http_addr"].as_str()?.parse::<SocketAddr>().ok());
            if let Some(addr) = listening {
                break addr;
            }
        };
        Gateway { child, logs, http_addr }
    }

    pub fn logs(&self) -> String {
        self.logs.text()
    }

    /// The MCP Streamable HTTP endpoint.
    pub fn mcp_url(&self) -> String {
        format!("http://{}/mcp", self.http_addr)
    }

    /// Sends `signal` to the gateway process.
    pub fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) with the pid of our own child process, which we have not reaped yet.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal}) failed: {}", std::io::Error::last_os_error());
    }

    /// Waits up to `bound` for the process to exit. `None` if it still runs.
    pub fn wait_exit(&mut self, bound: Duration) -> Option<ExitStatus> {
        wait_for_exit(&mut self.child, bound)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        stop_child(&mut self.child, Duration::from_secs(10));
        if std::thread::panicking() {
            eprintln!("\n--- task-mcp gateway logs ---\n{}\n--- end of gateway logs ---", self.logs);
        }
    }
}

// ------------------------------------------------------------------ external tools

/// The grpcurl on PATH (or in the repository's .tools/bin); a missing grpcurl
/// fails the test: these checks must not be skipped silently.
pub fn grpcurl() -> PathBuf {
    let in_repo = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/bin/grpcurl");
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("grpcurl"))
        .find(|p| p.is_file());
    on_path.or_else(|| in_repo.is_file().then_some(in_repo)).unwrap_or_else(|| {
        panic!(
            "grpcurl not found on PATH or in .tools/bin: run scripts/install-test-tools (scripts/test does it for you)"
        )
    })
}

/// What an external tool run by [`run_bounded`] did.
pub struct ToolRun {
    pub command: String,
    /// `None` when it outlived its bound and was killed.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

/// `.tools/bin/node22`, checked to run; a missing one fails with the fix.
pub fn node22() -> PathBuf {
    let node = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/bin/node22");
    let runs = Command::new(&node)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        runs,
        "{} is missing or does not run: run scripts/install-test-tools (scripts/test does it for you); \
         it installs Node 22 from npm into .tools/node",
        node.display()
    );
    node
}

/// Runs `cmd` (stdin closed, stdout and stderr to files in `dir`, read back at
/// the end) and kills it after `bound`: a failure bound that turns a hang into
/// a report, not a speed check.
pub fn run_bounded(mut cmd: Command, bound: Duration, dir: &Path) -> ToolRun {
    let (stdout_path, stderr_path) = (dir.join("stdout.txt"), dir.join("stderr.txt"));
    cmd.stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).expect("create stdout file"))
        .stderr(std::fs::File::create(&stderr_path).expect("create stderr file"));
    let command = format!("{cmd:?}");
    let started = Instant::now();
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {command}: {e}"));
    let status = loop {
        match child.try_wait().unwrap_or_else(|e| panic!("wait for {command}: {e}")) {
            Some(status) => break Some(status),
            None if started.elapsed() > bound => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    ToolRun { command, status, stdout: read(&stdout_path), stderr: read(&stderr_path), elapsed: started.elapsed() }
}

/// The JSON summary a client check script (tests/python, tests/typescript)
/// prints: it must have finished, exited 0 and reported `"ok": true`; any
/// other outcome fails with everything the script said.
pub fn client_summary(what: &str, run: &ToolRun, bound: Duration) -> serde_json::Value {
    let ToolRun { command, status, stdout, stderr, elapsed } = run;
    eprintln!("$ {command}\n[{status:?} after {elapsed:?}]");
    let Some(status) = status else {
        panic!(
            "the {what} did not finish within {bound:?} (failure bound, not a speed check); killed it\
             \n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
        );
    };
    assert!(status.success(), "the {what} failed ({status})\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}");
    // Exit 0 must come with a summary that says every step passed.
    let summary: serde_json::Value = serde_json::from_str(stdout)
        .unwrap_or_else(|e| panic!("the script exited 0 but its summary is not JSON ({e}):\n{stdout}\n{stderr}"));
    assert_eq!(summary["ok"], true, "{stdout}");
    eprintln!("{stdout}");
    summary
}

// ------------------------------------------------------------------ awaiting

/// Awaits `fut` with the [`RPC_BOUND`] failure bound; panics naming `what` on a hang.
pub async fn bounded<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(RPC_BOUND, fut).await {
        Ok(out) => out,
        Err(_) => {
            panic!("{what}: no answer within {RPC_BOUND:?} (failure bound, not a speed check)")
        }
    }
}

/// Unwraps a tonic result, panicking with the full status on error.
pub fn ok<T>(what: &str, result: Result<tonic::Response<T>, Status>) -> T {
    match result {
        Ok(response) => response.into_inner(),
        Err(status) => panic!("{what} failed: {}", describe(&status)),
    }
}

/// Unwraps a tonic error, panicking if the call succeeded.
pub fn err<T: fmt::Debug>(what: &str, result: Result<tonic::Response<T>, Status>) -> Status {
    match result {
        Ok(response) => panic!("{what} should have failed but answered {:?}", response.into_inner()),
        Err(status) => status,
    }
}

/// A status with its decoded ErrorInfo, for failure messages.
pub fn describe(status: &Status) -> String {
    let info = status.get_details_error_info();
    format!("code={:?} message={:?} error_info={:?}", status.code(), status.message(), info)
}

/// Asserts code and `ErrorInfo.reason`, and returns the ErrorInfo.
pub fn assert_error(status: &Status, code: Code, reason: &str) -> ErrorInfo {
    assert_eq!(status.code(), code, "wrong code: {}", describe(status));
    let info = status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("status has no ErrorInfo detail: {}", describe(status)));
    assert_eq!(info.reason, reason, "wrong reason: {}", describe(status));
    info
}

// ------------------------------------------------------------------ workspace trees

/// One entry of a directory snapshot.
#[derive(Clone, PartialEq, Eq)]
pub enum Entry {
    Dir,
    File(Vec<u8>),
    Symlink(PathBuf),
    Other,
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Entry::Dir => f.write_str("dir"),
            Entry::File(bytes) => {
                write!(f, "file({} bytes: {:?})", bytes.len(), String::from_utf8_lossy(&bytes[..bytes.len().min(200)]))
            }
            Entry::Symlink(target) => write!(f, "symlink -> {}", target.display()),
            Entry::Other => f.write_str("other"),
        }
    }
}

/// Every path under `root` (relative, symlinks not followed) with its content.
pub type Tree = BTreeMap<PathBuf, Entry>;

pub fn snapshot(root: &Path) -> Tree {
    fn walk(root: &Path, dir: &Path, tree: &mut Tree) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries {
            let entry = entry.expect("read_dir entry");
            let path = entry.path();
            let rel = path.strip_prefix(root).expect("under root").to_path_buf();
            let meta = std::fs::symlink_metadata(&path).expect("lstat");
            let kind = meta.file_type();
            if kind.is_symlink() {
                tree.insert(rel, Entry::Symlink(std::fs::read_link(&path).expect("readlink")));
            } else if kind.is_dir() {
                tree.insert(rel, Entry::Dir);
                walk(root, &path, tree);
            } else if kind.is_file() {
                tree.insert(rel, Entry::File(std::fs::read(&path).expect("read file")));
            } else {
                tree.insert(rel, Entry::Other);
            }
        }
    }
    let mut tree = Tree::new();
    walk(root, root, &mut tree);
    tree
}

/// Asserts two snapshots are identical, listing every path that differs.
pub fn assert_same_tree(before: &Tree, after: &Tree, context: &str) {
    if before == after {
        return;
    }
    let mut diff = String::new();
    for (path, entry) in before {
        match after.get(path) {
            None => diff.push_str(&format!("  removed: {}\n", path.display())),
            Some(other) if other != entry => {
                diff.push_str(&format!("  changed: {}\n    before: {entry:?}\n    after:  {other:?}\n", path.display()))
            }
            Some(_) => {}
        }
    }
    for (path, entry) in after {
        if !before.contains_key(path) {
            diff.push_str(&format!("  added:   {} ({entry:?})\n", path.display()));
        }
    }
    panic!("{context}: the workspace changed\n{diff}");
}

/// Every path under `root` whose file name satisfies `pred` (symlinks not followed).
pub fn find_files(root: &Path, pred: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    snapshot(root).into_keys().filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(&pred)).collect()
}

/// Today's date in UTC as `YYYY-MM-DD`, as the archive folder names it.
pub fn utc_today() -> String {
    let today = time::OffsetDateTime::now_utc().date();
    format!("{:04}-{:02}-{:02}", today.year(), u8::from(today.month()), today.day())
}
