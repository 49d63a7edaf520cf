//! The deployment references, `deploy/systemd/task-mcp.service` and
//! `deploy/kubernetes/task-mcp.yaml`, checked with the real tools and the real binary.
//!
//! systemd (no systemd runs as PID 1 on the machines this is developed on, so the unit is run the
//! way systemd would run it rather than by systemd):
//! - `systemd-analyze verify` on the unit (its ExecStart pointed at the test build) and
//!   `systemd-sysusers --root` on the user it runs as; `systemd-analyze security --offline=yes`
//!   holds the exposure level under a bound. Both come with the Debian package `systemd`, which
//!   every machine image of this project has; a machine without it fails saying so.
//! - Every flag and variable of the unit is one `task-mcp serve --help` lists; TimeoutStopSec
//!   exceeds the shutdown delay and grace; LimitNOFILE holds what --max-connections needs, by the
//!   rule the binary itself shows.
//! - The binary runs with exactly the unit's ExecStart arguments and Environment (paths moved into
//!   a temporary root, ports 0), its WorkingDirectory, UMask, LimitNOFILE, NoNewPrivileges, an
//!   empty capability bounding set and, when the tests run as root, an unprivileged user that
//!   reads the token file through its group: it must become ready, reload a rotated token file on
//!   the signal ExecReload sends, and exit 0 on KillSignal within TimeoutStopSec.
//! - The same run under `strace -f` shows the sandbox admits everything the server (and the git it
//!   runs for receipts) does: every system call is in SystemCallFilter, every socket in
//!   RestrictAddressFamilies, no memory is writable and executable (MemoryDenyWriteExecute), no
//!   namespace is made, nothing is written outside the state directory and /tmp (ProtectSystem=
//!   strict), nothing is looked for under the home directories (ProtectHome), and only the devices
//!   PrivateDevices leaves are opened.
//!
//! Kubernetes (no cluster here either):
//! - `kubernetes-validate --strict` (PyPI, installed by scripts/install-test-tools) validates
//!   every document against the schemas of the oldest and the newest Kubernetes it ships.
//! - Flags and variables against the binary, the user and entrypoint against deploy/Dockerfile,
//!   container ports against the listen flags, the Secret's key against the token file flag, the
//!   grace period against the shutdown delay and grace, and the Prometheus job in the comments
//!   against `promtool check config` and the job the alerts select.
//! - The pod's arguments run for real: the probes answered as the kubelet asks them (any Host),
//!   the commented gRPC probe answered SERVING, a Secret update made as the kubelet makes it (a
//!   symlink swap) served without a restart, and SIGTERM keeping the listeners serving with
//!   readiness failing for the delay, then exiting 0 within terminationGracePeriodSeconds; the
//!   Secret template applied unedited is refused at start.
mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use serde::Deserialize;
use serde_yaml::Value;

const UNIT: &str = "deploy/systemd/task-mcp.service";
const SYSUSERS: &str = "deploy/systemd/task-mcp.sysusers";
const MANIFEST: &str = "deploy/kubernetes/task-mcp.yaml";
/// systemd's PATH for system services (what `git` is found on).
const SYSTEMD_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The unprivileged user a test running as root gives the server (nobody/nogroup).
const UNPRIVILEGED: (u32, u32) = (65534, 65534);
/// Failure bounds (not speed checks).
const STARTUP_BOUND: Duration = Duration::from_secs(30);
const TOOL_BOUND: Duration = Duration::from_secs(120);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_task-mcp"))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// An external tool from .tools/bin or PATH; missing, the test fails saying how to install it.
fn tool(name: &str, install: &str) -> PathBuf {
    let mut dirs = vec![root().join(".tools/bin")];
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs.extend(["/usr/bin", "/bin", "/usr/sbin", "/sbin"].map(PathBuf::from));
    dirs.into_iter().map(|d| d.join(name)).find(|c| c.is_file()).unwrap_or_else(|| {
        panic!("`{name}` was not found in .tools/bin or on PATH: {install}, then rerun (these checks never skip)")
    })
}

const SYSTEMD_INSTALL: &str = "install the Debian package `systemd` (apt-get install -y systemd), which provides \
                               systemd-analyze and systemd-sysusers";

/// Runs a tool with a failure bound and returns (success, stdout, stderr); a hang is a failure.
fn run_tool(mut cmd: Command) -> (bool, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    cmd.env("SYSTEMD_COLORS", "0").env("SYSTEMD_PAGER", "");
    let run = common::run_bounded(cmd, TOOL_BOUND, dir.path());
    let status = run.status.unwrap_or_else(|| {
        panic!("{} did not finish within {TOOL_BOUND:?}\n{}\n{}", run.command, run.stdout, run.stderr)
    });
    eprintln!("$ {}\n[{status}]\n{}{}", run.command, run.stdout, run.stderr);
    (status.success(), run.stdout, run.stderr)
}

// ------------------------------------------------------------------ what the binary knows

/// One flag of `task-mcp serve --help`.
#[derive(Debug, Clone, Default)]
struct Flag {
    takes_value: bool,
    env: Option<String>,
    default: Option<String>,
}

/// The flags `task-mcp serve --help` lists, by long name (without `--`).
fn serve_flags() -> BTreeMap<String, Flag> {
    let out = Command::new(binary()).args(["serve", "--help"]).output().expect("run task-mcp serve --help");
    assert!(out.status.success(), "task-mcp serve --help failed: {out:?}");
    let help = String::from_utf8(out.stdout).expect("help is UTF-8");
    let mut flags = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in help.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let long = if (1..=8).contains(&indent) && trimmed.starts_with("--") {
            Some(trimmed)
        } else if (1..=8).contains(&indent) && trimmed.starts_with('-') && trimmed.get(2..4) == Some(", ") {
            trimmed.get(4..).filter(|rest| rest.starts_with("--"))
        } else {
            None
        };
        if let Some(long) = long {
            let name: String = long[2..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
            flags.insert(name.clone(), Flag { takes_value: long.contains('<'), ..Flag::default() });
            current = Some(name);
            continue;
        }
        let Some(name) = &current else { continue };
        let flag = flags.get_mut(name).expect("current flag");
        if let Some(rest) = trimmed.strip_prefix("[env: ") {
            flag.env = Some(rest.chars().take_while(|c| *c != '=' && *c != ']').collect());
        } else if let Some(rest) = trimmed.strip_prefix("[default: ") {
            flag.default = rest.strip_suffix(']').map(str::to_string);
        }
    }
    for expected in ["workspace", "grpc-listen", "http-listen", "auth-token-file", "shutdown-grace-seconds"] {
        assert!(flags.contains_key(expected), "could not read --{expected} from `task-mcp serve --help`:\n{help}");
    }
    flags
}

/// A command line's flags, checked against the binary's: `--name=value`, `--name value` or a
/// switch. Every problem found, not the first.
fn parse_flags(words: &[String], known: &BTreeMap<String, Flag>) -> Result<Vec<(String, Option<String>)>, Vec<String>> {
    let mut flags = Vec::new();
    let mut problems = Vec::new();
    let mut words = words.iter();
    while let Some(word) = words.next() {
        let Some(body) = word.strip_prefix("--") else {
            problems.push(format!("`{word}` is not a flag (serve takes no positional argument)"));
            continue;
        };
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (body, None),
        };
        let Some(flag) = known.get(name) else {
            problems.push(format!("--{name} is not a flag of `task-mcp serve` (see `task-mcp serve --help`)"));
            continue;
        };
        let value = match (flag.takes_value, inline) {
            (true, Some(v)) => Some(v),
            (true, None) => match words.next() {
                Some(v) => Some(v.clone()),
                None => {
                    problems.push(format!("--{name} needs a value"));
                    None
                }
            },
            (false, Some(_)) => {
                problems.push(format!("--{name} takes no value"));
                None
            }
            (false, None) => None,
        };
        flags.push((name.to_string(), value));
    }
    if problems.is_empty() { Ok(flags) } else { Err(problems) }
}

/// The `TASK_MCP_*` names among `names` that the binary reads from no flag.
fn unknown_env(names: impl IntoIterator<Item = String>) -> Vec<String> {
    task_mcp::config::unknown_variables(names)
}

/// What one invocation sets: its flags, then its environment, then the binary's defaults.
struct Settings<'a> {
    flags: Vec<(String, Option<String>)>,
    env: BTreeMap<String, String>,
    known: &'a BTreeMap<String, Flag>,
}

impl Settings<'_> {
    fn get(&self, name: &str) -> Option<String> {
        let flag = self.known.get(name).unwrap_or_else(|| panic!("--{name} is not a serve flag"));
        self.flags
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.clone())
            .or_else(|| flag.env.as_ref().and_then(|e| self.env.get(e).cloned()))
            .or_else(|| flag.default.clone())
    }

    fn seconds(&self, name: &str) -> u64 {
        let v = self.get(name).unwrap_or_else(|| panic!("--{name} has no value and no default"));
        v.parse().unwrap_or_else(|e| panic!("--{name}={v}: {e}"))
    }

    fn addr(&self, name: &str) -> SocketAddr {
        let v = self.get(name).unwrap_or_else(|| panic!("--{name} has no value and no default"));
        v.parse().unwrap_or_else(|e| panic!("--{name}={v} is not an address: {e}"))
    }
}

// ------------------------------------------------------------------ the systemd unit

/// A unit file: `(section, key, value)` in order, continuation lines joined.
struct Unit(Vec<(String, String, String)>);

impl Unit {
    fn parse(text: &str) -> Unit {
        let mut entries = Vec::new();
        let mut section = String::new();
        let mut pending = String::new();
        for line in text.lines() {
            let line = line.trim();
            if pending.is_empty() && (line.is_empty() || line.starts_with('#') || line.starts_with(';')) {
                continue;
            }
            if let Some(body) = line.strip_suffix('\\') {
                pending.push_str(body);
                pending.push(' ');
                continue;
            }
            pending.push_str(line);
            let logical = std::mem::take(&mut pending);
            if logical.starts_with('[') && logical.ends_with(']') {
                section = logical[1..logical.len() - 1].to_string();
            } else if let Some((key, value)) = logical.split_once('=') {
                entries.push((section.clone(), key.trim().to_string(), value.trim().to_string()));
            } else {
                panic!("{UNIT}: not `key=value`: {logical}");
            }
        }
        Unit(entries)
    }

    fn all(&self, section: &str, key: &str) -> Vec<&str> {
        self.0.iter().filter(|(s, k, _)| s == section && k == key).map(|(_, _, v)| v.as_str()).collect()
    }

    fn get(&self, section: &str, key: &str) -> Option<&str> {
        self.all(section, key).last().copied()
    }

    fn service(&self, key: &str) -> &str {
        self.get("Service", key).unwrap_or_else(|| panic!("{UNIT}: [Service] has no {key}="))
    }

    /// ExecStart's words (the unit uses no quoting; a quote or a `$` would need systemd's rules).
    fn exec_start(&self) -> Vec<String> {
        let line = self.service("ExecStart");
        assert!(
            !line.contains(['"', '\'', '$', '%']),
            "{UNIT}: ExecStart uses quoting, variables or specifiers, which this test does not expand: {line}"
        );
        let words: Vec<String> = line.split_whitespace().map(str::to_string).collect();
        assert!(
            !words[0].starts_with(['-', '@', '+', '!', ':', '|']),
            "{UNIT}: ExecStart prefix {:?} changes how systemd runs the server (`+` and `!` lift the sandbox)",
            &words[0][..1]
        );
        words
    }

    /// `Environment=` assignments, in order (the unit quotes none).
    fn environment(&self) -> Vec<(String, String)> {
        self.all("Service", "Environment")
            .into_iter()
            .flat_map(|line| line.split_whitespace().map(str::to_string).collect::<Vec<_>>())
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or_else(|| panic!("{UNIT}: Environment entry `{kv}`"));
                (k.to_string(), v.to_string())
            })
            .collect()
    }

    fn yes(&self, key: &str) -> bool {
        self.get("Service", key).is_some_and(|v| ["yes", "true", "1", "on"].contains(&v))
    }

    /// The serve flags of ExecStart, checked against the binary.
    fn settings<'a>(&self, known: &'a BTreeMap<String, Flag>) -> Settings<'a> {
        let words = self.exec_start();
        assert_eq!(words.get(1).map(String::as_str), Some("serve"), "{UNIT}: ExecStart must run `task-mcp serve`");
        let flags = parse_flags(&words[2..], known)
            .unwrap_or_else(|problems| panic!("{UNIT}: ExecStart:\n  {}", problems.join("\n  ")));
        Settings { flags, env: self.environment().into_iter().collect(), known }
    }
}

fn unit() -> Unit {
    Unit::parse(&read(UNIT))
}

/// A systemd time span in seconds (`30`, `30s`, `1min 30s`, `2m`, `500ms`, `infinity`).
fn timespan(value: &str) -> f64 {
    if value == "infinity" {
        return f64::INFINITY;
    }
    let mut total = 0.0;
    for part in value.split_whitespace() {
        let split = part.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(part.len());
        let number: f64 = part[..split].parse().unwrap_or_else(|e| panic!("time span {value:?}: {e}"));
        let unit = match &part[split..] {
            "" | "s" | "sec" | "second" | "seconds" => 1.0,
            "ms" | "msec" => 0.001,
            "m" | "min" | "minute" | "minutes" => 60.0,
            "h" | "hr" | "hour" | "hours" => 3600.0,
            other => panic!("time span {value:?}: unit {other:?} not handled here"),
        };
        total += number * unit;
    }
    total
}

/// `LimitNOFILE=` as (soft, hard).
fn nofile_limit(value: &str) -> (u64, u64) {
    let num = |s: &str| {
        if s == "infinity" { u64::MAX } else { s.parse().unwrap_or_else(|e| panic!("LimitNOFILE={value}: {e}")) }
    };
    match value.split_once(':') {
        Some((soft, hard)) => (num(soft), num(hard)),
        None => (num(value), num(value)),
    }
}

fn signal_number(name: &str) -> libc::c_int {
    match name.trim_start_matches('-').trim_start_matches("SIG") {
        "TERM" | "15" => libc::SIGTERM,
        "HUP" | "1" => libc::SIGHUP,
        "INT" | "2" => libc::SIGINT,
        "KILL" | "9" => libc::SIGKILL,
        "QUIT" | "3" => libc::SIGQUIT,
        other => panic!("signal {other} not handled here"),
    }
}

/// The unit with its ExecStart binary replaced by the test build, in `dir` (systemd-analyze
/// verify refuses a unit whose binary does not exist).
fn unit_for_analysis(dir: &Path) -> PathBuf {
    let text = read(UNIT);
    let installed = unit().exec_start()[0].clone();
    let path = dir.join("task-mcp.service");
    std::fs::write(&path, text.replace(&installed, &binary().display().to_string())).expect("write unit copy");
    path
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify_and_its_user_is_made_by_sysusers() {
    let analyze = tool("systemd-analyze", SYSTEMD_INSTALL);
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = unit_for_analysis(dir.path());
    let mut cmd = Command::new(&analyze);
    cmd.args(["verify", "--man=no"]).arg(&copy);
    let (ok, stdout, stderr) = run_tool(cmd);
    // verify exits 0 over some findings (an unknown key, a bad value it ignores): any output is one.
    assert!(
        ok && stdout.trim().is_empty() && stderr.trim().is_empty(),
        "systemd-analyze verify {UNIT} (ExecStart pointed at the test build) found problems:\n{stdout}{stderr}"
    );

    // The user the unit runs as is the one the sysusers file makes, with the state directory as its
    // home (git reads $HOME; ProtectHome hides /home).
    let sysusers = tool("systemd-sysusers", SYSTEMD_INSTALL);
    let image = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(image.path().join("etc")).expect("mkdir etc");
    let mut cmd = Command::new(&sysusers);
    cmd.arg(format!("--root={}", image.path().display())).arg(root().join(SYSUSERS));
    let (ok, stdout, stderr) = run_tool(cmd);
    assert!(ok, "systemd-sysusers refused {SYSUSERS}:\n{stdout}{stderr}");
    let passwd = std::fs::read_to_string(image.path().join("etc/passwd")).expect("sysusers wrote etc/passwd");
    let unit = unit();
    let user = unit.service("User");
    let entry = passwd
        .lines()
        .find(|l| l.split(':').next() == Some(user))
        .unwrap_or_else(|| panic!("{SYSUSERS} does not create User={user}:\n{passwd}"));
    let fields: Vec<&str> = entry.split(':').collect();
    let state = format!("/var/lib/{}", unit.service("StateDirectory"));
    assert_eq!(fields[5], state, "the home of {user} should be the StateDirectory: {entry}");
    assert_ne!(fields[2], "0", "{user} must not be root: {entry}");
    let group = std::fs::read_to_string(image.path().join("etc/group")).expect("sysusers wrote etc/group");
    let wanted = unit.get("Service", "Group").unwrap_or(user);
    assert!(group.lines().any(|l| l.split(':').next() == Some(wanted)), "no group {wanted}:\n{group}");
}

/// `systemd-analyze security` scores the unit's sandbox from 0 (locked down) to 10 (none).
const MAX_EXPOSURE: f64 = 1.5;

#[test]
fn systemd_unit_exposure_is_low() {
    let analyze = tool("systemd-analyze", SYSTEMD_INSTALL);
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = unit_for_analysis(dir.path());
    let mut cmd = Command::new(&analyze);
    cmd.args(["security", "--offline=yes", "--no-pager"]).arg(&copy);
    let (ok, stdout, stderr) = run_tool(cmd);
    assert!(ok, "systemd-analyze security --offline=yes failed (systemd 252 or later has --offline):\n{stderr}");
    let overall = stdout
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for ").map(|(_, rest)| rest.to_string()))
        .unwrap_or_else(|| panic!("no overall exposure level in:\n{stdout}"));
    let figure: f64 = overall
        .split_once(": ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the exposure from {overall:?}"));
    eprintln!("exposure: {figure}");
    assert!(
        figure <= MAX_EXPOSURE,
        "{UNIT}: exposure {figure} is above {MAX_EXPOSURE}; a hardening line was lost? The findings marked ✗:\n{}",
        stdout.lines().filter(|l| l.trim_start().starts_with('✗')).collect::<Vec<_>>().join("\n")
    );
    // The settings the sandbox relies on, by the tool's own reading of the file.
    let mut cmd = Command::new(&analyze);
    cmd.args(["security", "--offline=yes", "--json=short", "--no-pager"]).arg(&copy);
    let (_, json, _) = run_tool(cmd);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&json).expect("security --json=short is JSON");
    let set = |name: &str| rows.iter().any(|r| r["name"] == name && r["set"] == true);
    for name in [
        "NoNewPrivileges=",
        "ProtectSystem=",
        "ProtectHome=",
        "PrivateTmp=",
        "PrivateDevices=",
        "ProtectKernelTunables=",
        "ProtectKernelModules=",
        "ProtectControlGroups=",
        "MemoryDenyWriteExecute=",
        "LockPersonality=",
        "RestrictSUIDSGID=",
        "SystemCallArchitectures=",
        "SystemCallFilter=~@privileged",
        "CapabilityBoundingSet=~CAP_SYS_ADMIN",
        "RestrictAddressFamilies=~AF_PACKET",
        "RestrictAddressFamilies=~AF_NETLINK",
        "User=/DynamicUser=",
    ] {
        assert!(set(name), "{UNIT}: systemd-analyze security does not find {name} in force");
    }
}

/// Descriptors the server keeps back from its listeners, read from the binary: the default
/// `--max-connections` under a known open-file limit is half of what the reservation leaves.
fn reserved_descriptors() -> u64 {
    const LIMIT: u64 = 2048;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Launch::new(binary())
        .args([
            "serve".to_string(),
            format!("--workspace={}", dir.path().join("openspec").display()),
            "--grpc-listen=127.0.0.1:0".into(),
            "--http-listen=127.0.0.1:0".into(),
            "--metrics-listen=127.0.0.1:0".into(),
        ])
        .nofile((LIMIT, LIMIT))
        .start();
    let per_listener = server.max_connections();
    server.stop(libc::SIGTERM, Duration::from_secs(20));
    LIMIT - 2 * per_listener
}

#[test]
fn systemd_unit_agrees_with_the_binary() {
    let unit = unit();
    let known = serve_flags();
    let settings = unit.settings(&known);
    assert_eq!(unit.service("Type"), "exec", "the server does not speak sd_notify: Type=exec");
    assert!(unit.get("Service", "DynamicUser").is_none(), "a dynamic uid would change under the persistent workspace");
    let user = unit.service("User");
    assert!(!["root", "0"].contains(&user), "User=root");

    // Environment: every TASK_MCP_* is read by a flag (the binary would warn of the others).
    let env = unit.environment();
    let unknown = unknown_env(env.iter().map(|(k, _)| k.clone()));
    assert!(unknown.is_empty(), "{UNIT}: Environment= sets variables no flag reads: {unknown:?}");
    for (k, _) in &env {
        assert!(
            k.starts_with("TASK_MCP_") || k.starts_with("OTEL_") || k == "RUST_LOG",
            "{UNIT}: Environment={k}: not a variable the server reads"
        );
    }

    // The workspace is inside the StateDirectory, the only place ProtectSystem=strict leaves
    // writable (with ReadWritePaths=, none here).
    let state = format!("/var/lib/{}", unit.service("StateDirectory"));
    let workspace = settings.get("workspace").unwrap();
    assert!(workspace.starts_with(&format!("{state}/")), "--workspace={workspace} is not under {state}");
    assert!(unit.get("Service", "ReadWritePaths").is_none(), "ReadWritePaths= widens ProtectSystem=strict");
    assert_eq!(unit.service("ProtectSystem"), "strict");

    // Tokens: from a file, read directly (a LoadCredential= copy would never see a rotation).
    let token_file = settings.get("auth-token-file").expect("the unit must configure --auth-token-file");
    assert!(
        unit.get("Service", "LoadCredential").is_none() && !token_file.contains("CREDENTIALS_DIRECTORY"),
        "a credential is copied once at start: a rotated token file would need a restart"
    );
    assert!(token_file.starts_with("/etc/"), "--auth-token-file={token_file}: keep it under /etc (read-only)");
    // ExecReload sends SIGHUP to the main process, which reloads the file (only with a file:
    // without one SIGHUP stops the server).
    let reload: Vec<&str> = unit.service("ExecReload").split_whitespace().collect();
    assert!(
        reload.len() == 3
            && reload[0].ends_with("/kill")
            && signal_number(reload[1]) == libc::SIGHUP
            && reload[2] == "$MAINPID",
        "ExecReload must be `/bin/kill -HUP $MAINPID`, not {reload:?}"
    );

    // Stopping: KillSignal drains; systemd must not SIGKILL before the delay and the grace end.
    assert_eq!(signal_number(unit.get("Service", "KillSignal").unwrap_or("SIGTERM")), libc::SIGTERM);
    let delay = settings.seconds("shutdown-delay-seconds");
    let grace = settings.seconds("shutdown-grace-seconds");
    let timeout = timespan(unit.get("Service", "TimeoutStopSec").unwrap_or("90s"));
    assert!(
        timeout > (delay + grace) as f64,
        "{UNIT}: TimeoutStopSec={timeout}s must exceed --shutdown-delay-seconds ({delay}) + \
         --shutdown-grace-seconds ({grace}), or systemd kills a drain in progress"
    );
    assert_eq!(unit.service("Restart"), "on-failure");

    // Open files: each listener may hold --max-connections, and the server keeps some back. The
    // server raises its soft limit to the hard one, so the hard limit is what counts.
    let (_, hard) = nofile_limit(unit.service("LimitNOFILE"));
    let reserved = reserved_descriptors();
    let max_connections: u64 = settings
        .get("max-connections")
        .map(|v| v.parse().expect("--max-connections is a number"))
        .unwrap_or_else(|| (hard.saturating_sub(reserved) / 2).clamp(16, 32_768));
    let needed = 2 * max_connections + reserved;
    assert!(
        hard >= needed,
        "{UNIT}: LimitNOFILE={hard} is below what --max-connections={max_connections} needs: 2 listeners x \
         {max_connections} + {reserved} kept back = {needed}"
    );

    // No capabilities: every listener on an unprivileged port; the address families are allowed.
    let families: Vec<&str> =
        unit.all("Service", "RestrictAddressFamilies").iter().flat_map(|v| v.split_whitespace()).collect();
    for flag in ["grpc-listen", "http-listen", "metrics-listen"] {
        let Some(value) = settings.get(flag).filter(|v| v != "off") else { continue };
        let addr: SocketAddr = value.parse().unwrap_or_else(|e| panic!("--{flag}={value}: {e}"));
        if unit.get("Service", "CapabilityBoundingSet").is_some_and(str::is_empty) {
            assert!(addr.port() >= 1024, "--{flag}={addr}: a port below 1024 needs CAP_NET_BIND_SERVICE");
        }
        let family = if addr.is_ipv4() { "AF_INET" } else { "AF_INET6" };
        assert!(families.contains(&family), "--{flag}={addr} needs {family} in RestrictAddressFamilies");
    }
    // inotify needs no address family; git and the server need no other.
    assert!(families.iter().all(|f| ["AF_INET", "AF_INET6", "AF_UNIX"].contains(f)), "{families:?}");
}

// ------------------------------------------------------------------ running the binary

/// How to start the binary, as a service manager or the kubelet would.
struct Launch {
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    cwd: Option<PathBuf>,
    nofile: Option<(u64, u64)>,
    umask: Option<libc::mode_t>,
    no_new_privs: bool,
    drop_capabilities: bool,
    user: Option<(u32, u32)>,
    strace: Option<PathBuf>,
}

impl Launch {
    fn new(program: PathBuf) -> Launch {
        Launch {
            program,
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
            nofile: None,
            umask: None,
            no_new_privs: false,
            drop_capabilities: false,
            user: None,
            strace: None,
        }
    }

    fn args(mut self, args: impl IntoIterator<Item = String>) -> Launch {
        self.args.extend(args);
        self
    }

    fn nofile(mut self, limits: (u64, u64)) -> Launch {
        self.nofile = Some(limits);
        self
    }

    fn spawn(self) -> (Child, Logs, mpsc::Receiver<String>, Launch) {
        let mut cmd = match &self.strace {
            Some(out) => {
                let mut cmd = Command::new(tool("strace", "install the Debian package `strace`"));
                cmd.args(["-f", "-qq", "-y", "-s", "4096", "-o"]).arg(out).arg("--").arg(&self.program);
                cmd
            }
            None => Command::new(&self.program),
        };
        cmd.args(&self.args).env_clear().envs(self.env.iter().map(|(k, v)| (k, v)));
        if let Some(cwd) = &self.cwd {
            cmd.current_dir(cwd);
        }
        let (nofile, umask, no_new_privs, user) = (self.nofile, self.umask, self.no_new_privs, self.user);
        let last_cap: libc::c_ulong = if self.drop_capabilities {
            std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(40)
        } else {
            0
        };
        let drop_capabilities = self.drop_capabilities && is_root();
        // SAFETY: only async-signal-safe calls (setrlimit, umask, prctl, setgroups, setgid,
        // setuid) run between fork and exec, on values computed before the fork.
        unsafe {
            cmd.pre_exec(move || {
                let check = |rc: libc::c_int| if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) };
                if let Some((soft, hard)) = nofile {
                    check(libc::setrlimit(libc::RLIMIT_NOFILE, &libc::rlimit { rlim_cur: soft, rlim_max: hard }))?;
                }
                if let Some(mask) = umask {
                    libc::umask(mask);
                }
                if drop_capabilities {
                    for cap in 0..=last_cap {
                        check(libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0))?;
                    }
                }
                if let Some((uid, gid)) = user {
                    check(libc::setgroups(0, std::ptr::null()))?;
                    check(libc::setgid(gid))?;
                    check(libc::setuid(uid))?;
                }
                if no_new_privs {
                    check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
                }
                Ok(())
            });
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let logs = Logs::default();
        let (tx, rx) = mpsc::channel();
        drain(child.stdout.take().expect("stdout"), "", logs.clone(), tx.clone());
        drain(child.stderr.take().expect("stderr"), "[stderr] ", logs.clone(), tx);
        (child, logs, rx, self)
    }

    /// Starts it and waits for its "listening" line; panics with its output if it does not come.
    fn start(self) -> Running {
        let (mut child, logs, rx, launch) = self.spawn();
        let deadline = Instant::now() + STARTUP_BOUND;
        let addrs = loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    if let Some(found) = listening(&line) {
                        break found;
                    }
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("the server did not listen ({e}); args {:?}\n--- output ---\n{}", launch.args, logs.text());
                }
            }
        };
        let pid = if launch.strace.is_some() { traced_child(child.id()) } else { child.id() };
        Running { child, pid, logs, lines: rx, grpc: addrs.0, http: addrs.1, metrics: addrs.2 }
    }
}

/// The pid of the process strace started (its only child).
fn traced_child(strace: u32) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
            // pid (comm) state ppid ...: comm may hold spaces, so read after the last ')'.
            let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1));
            if ppid == Some(&strace.to_string()) {
                return pid;
            }
        }
        assert!(Instant::now() < deadline, "no child of strace ({strace}) found");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Shared capture of everything the process printed.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<String>>);

impl Logs {
    fn text(&self) -> String {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn drain(pipe: impl Read + Send + 'static, prefix: &'static str, logs: Logs, tx: mpsc::Sender<String>) {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            logs.0.lock().unwrap_or_else(|e| e.into_inner()).push_str(&format!("{prefix}{line}\n"));
            let _ = tx.send(line);
        }
    });
}

/// The addresses of the "listening" line.
fn listening(line: &str) -> Option<(SocketAddr, SocketAddr, Option<SocketAddr>)> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if v["message"] != "listening" {
        return None;
    }
    let addr = |k: &str| v[k].as_str().and_then(|s| s.parse::<SocketAddr>().ok());
    Some((addr("grpc_addr")?, addr("http_addr")?, addr("metrics_addr")))
}

/// A started server: killed on drop, its output printed when the test fails.
struct Running {
    child: Child,
    /// The server's pid (strace's child when traced).
    pid: u32,
    logs: Logs,
    lines: mpsc::Receiver<String>,
    grpc: SocketAddr,
    http: SocketAddr,
    metrics: Option<SocketAddr>,
}

impl Running {
    fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.pid).expect("pid");
        // SAFETY: kill(2) on the server we started and have not reaped.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill({pid}, {signal})");
    }

    /// Waits for a log line that satisfies `pred`; panics after `bound`.
    fn wait_line(&self, what: &str, bound: Duration, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + bound;
        loop {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                        && pred(&v)
                    {
                        return v;
                    }
                }
                Err(_) => panic!("no log line {what} within {bound:?}\n--- output ---\n{}", self.logs.text()),
            }
        }
    }

    fn wait_exit(&mut self, bound: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + bound;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` and waits up to `bound` for exit code 0.
    fn stop(&mut self, signal: libc::c_int, bound: Duration) -> Duration {
        let started = Instant::now();
        self.signal(signal);
        let status = self.wait_exit(bound);
        let elapsed = started.elapsed();
        assert!(
            status.is_some_and(|s| s.success()),
            "after signal {signal}: {status:?} after {elapsed:?} (bound {bound:?})\n--- output ---\n{}",
            self.logs.text()
        );
        elapsed
    }

    /// `listener_max_connections{listener="http"}` from /metrics.
    fn max_connections(&self) -> u64 {
        let metrics = self.metrics.expect("a metrics listener");
        let (status, body) = http(metrics, "GET", "/metrics", &[], None);
        assert_eq!(status, 200, "{body}");
        body.lines()
            .find(|l| l.starts_with("listener_max_connections{") && l.contains("listener=\"http\""))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .map(|v| v as u64)
            .unwrap_or_else(|| panic!("no listener_max_connections{{listener=\"http\"}} in /metrics:\n{body}"))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            if self.pid != self.child.id() {
                // SAFETY: kill(2) on the traced server; strace then exits with it.
                unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGKILL) };
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("\n--- task-mcp output ---\n{}\n--- end of task-mcp output ---", self.logs.text());
        }
    }
}

/// One HTTP/1.1 request on a new connection: (status, body). `Host` defaults to the address.
fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> (u16, String) {
    let addr = if addr.ip().is_unspecified() { SocketAddr::from(([127, 0, 0, 1], addr.port())) } else { addr };
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("connect {addr} for {method} {path}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    let mut request = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        request.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(body) = body {
        request.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    request.push_str(body.unwrap_or(""));
    stream.write_all(request.as_bytes()).expect("send request");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap_or_else(|e| panic!("read answer to {method} {path}: {e}"));
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no HTTP head in {text:?}"));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status code");
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(rest) } else { rest.into() };
    (status, body)
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    out
}

/// Polls `path` until it answers 200, for up to `bound`.
fn until_ok(addr: SocketAddr, path: &str, headers: &[(&str, &str)], bound: Duration) -> String {
    let deadline = Instant::now() + bound;
    loop {
        let (status, body) = http(addr, "GET", path, headers, None);
        if status == 200 {
            return body;
        }
        assert_ne!(status, 404, "GET {path}: the server serves no such path: {body}");
        assert!(Instant::now() < deadline, "GET {path} still answers {status} after {bound:?}: {body}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn random_token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The test build at `at` (a hard link, or a copy across file systems), where an unprivileged
/// user can run it whatever the permissions of the build folder.
fn install_binary(at: &Path) {
    std::fs::create_dir_all(at.parent().unwrap()).expect("mkdir bin");
    if std::fs::hard_link(binary(), at).is_err() {
        std::fs::copy(binary(), at).expect("copy the binary");
    }
}

fn chown(path: &Path, (uid, gid): (u32, u32)) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// Writes `text` as a new file and renames it over `path`, as the README says to rotate.
fn replace_file(path: &Path, text: &str, mode: u32, owner: Option<(u32, u32)>) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).expect("write new token file");
    chmod(&tmp, mode);
    if let Some(owner) = owner {
        chown(&tmp, owner);
    }
    std::fs::rename(&tmp, path).expect("rename token file into place");
}

// ------------------------------------------------------------------ the unit, run

/// The filesystem of a host the unit is installed on, under a temporary root: the binary at
/// ExecStart's path, the StateDirectory owned by the service user, the token file readable by
/// its group alone.
struct Host {
    dir: tempfile::TempDir,
    /// The identity the server runs as (the unit's User=, played by nobody when root).
    user: Option<(u32, u32)>,
}

impl Host {
    fn new(unit: &Unit) -> Host {
        let dir = tempfile::Builder::new().prefix("task-mcp-host-").tempdir().expect("tempdir");
        chmod(dir.path(), 0o755);
        let host = Host { dir, user: is_root().then_some(UNPRIVILEGED) };
        install_binary(&host.path(&unit.exec_start()[0]));
        let state = host.state(unit);
        std::fs::create_dir_all(&state).expect("mkdir state");
        let mode = u32::from_str_radix(unit.get("Service", "StateDirectoryMode").unwrap_or("0755"), 8).expect("mode");
        chmod(&state, mode);
        if let Some(user) = host.user {
            chown(&state, user);
        }
        host
    }

    /// A path of the host, inside the temporary root.
    fn path(&self, absolute: &str) -> PathBuf {
        self.dir.path().join(absolute.trim_start_matches('/'))
    }

    fn state(&self, unit: &Unit) -> PathBuf {
        self.path(&format!("/var/lib/{}", unit.service("StateDirectory")))
    }

    /// Writes the token file where the unit reads it: root:<service group>, 0640.
    fn write_tokens(&self, unit: &Unit, text: &str) -> PathBuf {
        let known = serve_flags();
        let path = self.path(&unit.settings(&known).get("auth-token-file").expect("a token file"));
        let dir = path.parent().unwrap();
        std::fs::create_dir_all(dir).expect("mkdir /etc/task-mcp");
        chmod(dir, 0o750);
        let owner = self.user.map(|(_, gid)| (0, gid));
        if let Some(owner) = owner {
            chown(dir, owner);
        }
        replace_file(&path, text, 0o640, owner);
        path
    }

    /// ExecStart and Environment as systemd would run them, paths moved under the root, ports 0.
    fn launch(&self, unit: &Unit) -> Launch {
        let words = unit.exec_start();
        let mapped = |value: &str| -> String {
            if value.starts_with('/') { self.path(value).display().to_string() } else { value.to_string() }
        };
        let args: Vec<String> = words[1..]
            .iter()
            .map(|w| match w.split_once('=') {
                Some((flag, value)) if flag.ends_with("-listen") && value != "off" => {
                    let addr: SocketAddr = value.parse().expect("listen address");
                    format!("{flag}={}", SocketAddr::new(addr.ip(), 0))
                }
                Some((flag, value)) if flag.starts_with("--") => format!("{flag}={}", mapped(value)),
                _ => w.clone(),
            })
            .collect();
        let state = self.state(unit);
        let user = unit.service("User");
        // What systemd puts in a system service's environment, then Environment=.
        let mut env = vec![
            ("PATH".to_string(), SYSTEMD_PATH.to_string()),
            ("HOME".to_string(), state.display().to_string()),
            ("USER".to_string(), user.to_string()),
            ("LOGNAME".to_string(), user.to_string()),
            ("STATE_DIRECTORY".to_string(), state.display().to_string()),
        ];
        env.extend(unit.environment());
        let umask = unit.get("Service", "UMask").map(|m| libc::mode_t::from_str_radix(m, 8).expect("UMask is octal"));
        let mut launch = Launch::new(self.path(&words[0])).args(args);
        launch.env = env;
        launch.cwd = Some(unit.get("Service", "WorkingDirectory").map_or(state, |d| self.path(d)));
        launch.umask = umask;
        launch.nofile = unit.get("Service", "LimitNOFILE").map(nofile_limit).map(|(soft, hard)| {
            // Raising the hard limit takes CAP_SYS_RESOURCE, which the machines this runs on may
            // withhold even from root: then the closest limit this process may set.
            let mut cur = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            // SAFETY: getrlimit writes the struct it is given.
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut cur) };
            let raise = libc::rlimit { rlim_cur: cur.rlim_max, rlim_max: hard.max(cur.rlim_max) };
            // SAFETY: a trial on this process's own limit, put back at once.
            let can_raise = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raise) } == 0;
            // SAFETY: as above.
            unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &cur) };
            if can_raise || hard <= cur.rlim_max {
                (soft, hard)
            } else {
                eprintln!("LimitNOFILE={hard} cannot be set here (hard limit {}): using that", cur.rlim_max);
                (soft.min(cur.rlim_max), cur.rlim_max)
            }
        });
        launch.no_new_privs = unit.yes("NoNewPrivileges");
        launch.drop_capabilities = unit.get("Service", "CapabilityBoundingSet").is_some_and(str::is_empty);
        launch.user = self.user;
        launch
    }

    /// Runs ExecReload (`/bin/kill -HUP $MAINPID`) for the server `pid`.
    fn exec_reload(&self, unit: &Unit, pid: u32) {
        let words: Vec<String> =
            unit.service("ExecReload").split_whitespace().map(|w| w.replace("$MAINPID", &pid.to_string())).collect();
        let status = Command::new(&words[0]).args(&words[1..]).status().expect("run ExecReload");
        assert!(status.success(), "ExecReload {words:?}: {status}");
    }
}

#[test]
fn systemd_unit_runs_reloads_its_tokens_and_stops_as_systemd_would_run_it() {
    let unit = unit();
    let known = serve_flags();
    let settings = unit.settings(&known);
    let host = Host::new(&unit);
    let (first, second) = (random_token(), random_token());
    let token_file = host.write_tokens(&unit, &format!("# principals\nops={first}\n"));
    let mut server = host.launch(&unit).start();

    // Ready, with the workspace made in the StateDirectory.
    let body = until_ok(server.http, "/health/ready", &[], Duration::from_secs(20));
    assert!(body.contains("\"status\":\"ok\""), "{body}");
    assert_eq!(http(server.http, "GET", "/health/live", &[], None).0, 200);
    let workspace = host.path(&settings.get("workspace").unwrap());
    assert!(workspace.join("changes").is_dir(), "no workspace at {}", workspace.display());
    if let Some(mask) = unit.get("Service", "UMask") {
        let mask = u32::from_str_radix(mask, 8).expect("UMask is octal");
        let mode = std::fs::metadata(workspace.join("changes")).expect("stat changes/").permissions().mode();
        assert_eq!(mode & mask & 0o777, 0, "UMask={mask:04o}, yet the server made changes/ with mode {mode:o}");
    }

    // The Host names the unit allows pass, others are refused; the token works.
    let auth = bearer(&first);
    let port = server.http.port();
    for allowed in ["task-mcp.example.com", "127.0.0.1", "localhost"] {
        let host_header = format!("{allowed}:{port}");
        let (status, body) = http(
            server.http,
            "GET",
            "/v1/tools",
            &[("Host", host_header.as_str()), ("Authorization", auth.as_str())],
            None,
        );
        assert_eq!(status, 200, "Host {allowed}: {body}");
    }
    let (status, _) =
        http(server.http, "GET", "/v1/tools", &[("Host", "elsewhere.example"), ("Authorization", auth.as_str())], None);
    assert_eq!(status, 403, "a Host the unit does not name must be refused");

    // The connection cap the unit sets is the one in force.
    let wanted: u64 = settings.get("max-connections").expect("--max-connections").parse().unwrap();
    assert_eq!(server.max_connections(), wanted);

    // Rotation: the new file renamed into place, then ExecReload.
    let owner = host.user.map(|(_, gid)| (0, gid));
    replace_file(&token_file, &format!("ops={second}\n"), 0o640, owner);
    host.exec_reload(&unit, server.pid);
    server.wait_line("\"auth tokens reloaded\" on SIGHUP", Duration::from_secs(10), |v| {
        v["message"] == "auth tokens reloaded" && v["trigger"] == "SIGHUP"
    });
    let new_auth = bearer(&second);
    assert_eq!(http(server.http, "GET", "/v1/tools", &[("Authorization", new_auth.as_str())], None).0, 200);
    assert_eq!(http(server.http, "GET", "/v1/tools", &[("Authorization", auth.as_str())], None).0, 401);

    // Nothing the unit sets is ignored, and the log is JSON lines (TASK_MCP_LOG_FORMAT).
    let logs = server.logs.text();
    assert!(!logs.contains("no flag reads this environment variable"), "{logs}");
    for line in logs.lines().filter(|l| !l.starts_with("[stderr]")) {
        assert!(serde_json::from_str::<serde_json::Value>(line).is_ok(), "not a JSON log line: {line}");
    }

    // KillSignal: a drain that ends, exit 0, well within TimeoutStopSec.
    let timeout = Duration::from_secs_f64(timespan(unit.service("TimeoutStopSec")));
    let took = server.stop(signal_number(unit.service("KillSignal")), timeout);
    let delay = Duration::from_secs(settings.seconds("shutdown-delay-seconds"));
    assert!(took >= delay, "stopped after {took:?}, before the shutdown delay {delay:?}");
    assert!(server.logs.text().contains("\"message\":\"stopped\""), "{}", server.logs.text());
}

// ------------------------------------------------------------------ the sandbox, traced

/// The system calls a `SystemCallFilter=` group (or name) stands for, groups expanded.
fn syscall_group(analyze: &Path, name: &str, into: &mut BTreeSet<String>) {
    if !name.starts_with('@') {
        into.insert(name.to_string());
        return;
    }
    let out = Command::new(analyze).args(["syscall-filter", "--no-pager", name]).output().expect("syscall-filter");
    assert!(out.status.success(), "systemd-analyze syscall-filter {name}: {out:?}");
    for line in String::from_utf8_lossy(&out.stdout).lines().skip(1) {
        let entry = line.trim();
        if entry.is_empty() || entry.starts_with('#') {
            continue;
        }
        syscall_group(analyze, entry, into);
    }
}

/// The calls the unit's SystemCallFilter= lines leave allowed (an allow list, then removals).
fn allowed_syscalls(unit: &Unit, analyze: &Path) -> BTreeSet<String> {
    let mut allowed = BTreeSet::new();
    let lines = unit.all("Service", "SystemCallFilter");
    assert!(lines.first().is_some_and(|l| !l.starts_with('~')), "SystemCallFilter= must start with an allow list");
    for line in lines {
        let (deny, list) = match line.strip_prefix('~') {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        let mut set = BTreeSet::new();
        for name in list.split_whitespace() {
            syscall_group(analyze, name, &mut set);
        }
        if deny {
            allowed.retain(|s| !set.contains(s));
        } else {
            allowed.extend(set);
        }
    }
    allowed
}

/// One line of `strace -f -y` output: the call's name and its argument text.
fn traced_call(line: &str) -> Option<(&str, &str)> {
    let rest = line.split_once(' ')?.1.trim_start();
    if let Some(resumed) = rest.strip_prefix("<... ") {
        let (name, args) = resumed.split_once(" resumed>")?;
        return Some((name, args));
    }
    let open = rest.find('(')?;
    let name = &rest[..open];
    name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_').then_some((name, &rest[open + 1..]))
}

/// The quoted strings of strace's argument text, each with the directory its `-y` decoration
/// names when a descriptor precedes it (`AT_FDCWD</dir>, "name"`).
fn quoted(args: &str) -> Vec<(Option<String>, String)> {
    let mut out = Vec::new();
    let bytes = args.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'"' {
            i += 1;
            continue;
        }
        let before = &args[..i];
        let dir = before.strip_suffix(">, ").and_then(|b| b.rfind('<').map(|at| b[at + 1..].to_string()));
        let mut s = String::new();
        i += 1;
        while i < bytes.len() && bytes[i] != b'"' {
            if bytes[i] == b'\\' && i + 1 < bytes.len() {
                s.push(bytes[i + 1] as char);
                i += 2;
            } else {
                s.push(bytes[i] as char);
                i += 1;
            }
        }
        i += 1;
        out.push((dir, s));
    }
    out
}

/// System calls that name a path in their arguments.
const PATH_CALLS: &[&str] = &[
    "open",
    "openat",
    "openat2",
    "creat",
    "stat",
    "lstat",
    "newfstatat",
    "statx",
    "access",
    "faccessat",
    "faccessat2",
    "readlink",
    "readlinkat",
    "execve",
    "execveat",
    "chdir",
    "mkdir",
    "mkdirat",
    "rename",
    "renameat",
    "renameat2",
    "unlink",
    "unlinkat",
    "rmdir",
    "link",
    "linkat",
    "symlink",
    "symlinkat",
    "chmod",
    "fchmodat",
    "truncate",
    "inotify_add_watch",
    "statfs",
    "utimensat",
    "getxattr",
    "lgetxattr",
];
/// Of those, the ones that create, change or remove what they name.
const WRITE_CALLS: &[&str] = &[
    "creat",
    "mkdir",
    "mkdirat",
    "rename",
    "renameat",
    "renameat2",
    "unlink",
    "unlinkat",
    "rmdir",
    "link",
    "linkat",
    "symlink",
    "symlinkat",
    "chmod",
    "fchmodat",
    "truncate",
    "utimensat",
];
/// The devices PrivateDevices= leaves (and /dev/fd, /dev/std*, which are the process's own).
const PRIVATE_DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
    "/dev/ptmx",
    "/dev/pts",
    "/dev/shm",
    "/dev/mqueue",
    "/dev/hugepages",
    "/dev/fd",
    "/dev/stdin",
    "/dev/stdout",
    "/dev/stderr",
    "/dev/log",
];

fn under(path: &str, dir: &str) -> bool {
    path == dir || path.starts_with(&format!("{}/", dir.trim_end_matches('/')))
}

#[test]
fn systemd_sandbox_admits_everything_the_server_and_its_git_do() {
    let analyze = tool("systemd-analyze", SYSTEMD_INSTALL);
    let git = tool("git", "install git (apt-get install -y git)");
    let unit = unit();
    let host = Host::new(&unit);
    let token = random_token();
    host.write_tokens(&unit, &format!("ops={token}\n"));
    // The state directory as a git work tree, as an operator may keep it, so that an archive's
    // receipt runs `git log` inside the sandbox.
    let state = host.state(&unit);
    let identity = ["-c", "safe.directory=*", "-c", "user.name=ops", "-c", "user.email=ops@example.com"];
    for args in [&["init", "-q", "."][..], &["commit", "-q", "--allow-empty", "-m", "start"]] {
        let out = Command::new(&git).args(identity).args(args).current_dir(&state).output().expect("git");
        assert!(out.status.success(), "git {args:?}: {out:?}");
    }
    if let Some(user) = host.user {
        let out = Command::new("chown").arg("-R").arg(format!("{}:{}", user.0, user.1)).arg(&state).output().unwrap();
        assert!(out.status.success(), "chown -R: {out:?}");
    }
    let trace = host.dir.path().join("strace.txt");
    std::fs::write(&trace, "").expect("create the trace file");
    if let Some(user) = host.user {
        chown(&trace, user);
    }
    // An OAuth issuer too, so that the sandbox must admit fetching its keys at start and checking
    // its tokens (the unit's comment shows the settings).
    let resource = "http://127.0.0.1:1/mcp";
    let issuer = common::oauth::AuthServer::start(&["--resource", resource, "--scopes", "changes:read changes:write"]);
    let mut launch = host.launch(&unit).args([
        format!("--oauth-issuer={}", issuer.issuer),
        format!("--oauth-resource={resource}"),
        "--oauth-scope=changes:read".to_string(),
    ]);
    launch.strace = Some(trace.clone());
    let mut server = launch.start();

    // A workload that touches what the server does in service: readiness (its probe file),
    // a call with an OAuth access token, a change opened and archived (git runs), a token
    // reload, a drain.
    until_ok(server.http, "/health/ready", &[], Duration::from_secs(30));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let access_token = rt.block_on(issuer.token(("task-mcp-test", "test-secret"), resource, "changes:read"));
    let oauth = bearer(&access_token);
    let (status, body) =
        http(server.http, "POST", "/v1/tools/change.list", &[("Authorization", oauth.as_str())], Some("{}"));
    assert_eq!(status, 200, "the OAuth token was refused inside the sandbox: {body}");
    let auth = bearer(&token);
    let headers = [("Authorization", auth.as_str())];
    let (status, body) = http(
        server.http,
        "POST",
        "/v1/tools/change.open",
        &headers,
        Some(r#"{"title":"Sandbox check","slug":"sandbox-check","owner":"ops"}"#),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = http(
        server.http,
        "POST",
        "/v1/tools/change.archive",
        &headers,
        Some(r#"{"slug":"sandbox-check","owner":"ops","tests":{"passed":1}}"#),
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"git\":true"), "the receipt should come from git run inside the sandbox: {body}");
    host.exec_reload(&unit, server.pid);
    server.wait_line("\"auth tokens reloaded\"", Duration::from_secs(20), |v| v["message"] == "auth tokens reloaded");
    server.stop(libc::SIGTERM, Duration::from_secs_f64(timespan(unit.service("TimeoutStopSec")) * 2.0));

    let text = std::fs::read_to_string(&trace).expect("read the strace output");
    let allowed = allowed_syscalls(&unit, &analyze);
    let families: BTreeSet<&str> =
        unit.all("Service", "RestrictAddressFamilies").into_iter().flat_map(str::split_whitespace).collect();
    let root = host.dir.path().display().to_string();
    // A path as the host sees it: inside the temporary root, the path it stands for.
    let on_host = |p: &str| -> String {
        if under(p, &root) { format!("/{}", p[root.len()..].trim_start_matches('/')) } else { p.to_string() }
    };
    let state_dir = format!("/var/lib/{}", unit.service("StateDirectory"));
    let cwd = unit.get("Service", "WorkingDirectory").unwrap_or(&state_dir).to_string();
    let writable = |p: &str| {
        under(p, &state_dir) || under(p, "/tmp") || under(p, "/var/tmp") || PRIVATE_DEVICES.iter().any(|d| under(p, d))
    };
    let mut problems = BTreeSet::new();
    let mut seen = BTreeSet::new();
    let mut programs = BTreeSet::new();
    for line in text.lines() {
        let Some((name, args)) = traced_call(line) else { continue };
        seen.insert(name.to_string());
        if !allowed.contains(name) {
            problems.insert(format!("SystemCallFilter does not allow {name}: {line}"));
        }
        if line.contains(" resumed>") {
            // The arguments were on the call's `<unfinished ...>` line.
            continue;
        }
        if matches!(name, "socket" | "socketpair") {
            let family = args.split([',', ')']).next().unwrap_or_default().trim();
            if !families.contains(family) {
                problems.insert(format!("RestrictAddressFamilies does not allow {family}: {line}"));
            }
        }
        let exec = args.contains("PROT_EXEC");
        if (matches!(name, "mmap" | "mmap2") && exec && args.contains("PROT_WRITE"))
            || (matches!(name, "mprotect" | "pkey_mprotect") && exec)
        {
            problems.insert(format!("MemoryDenyWriteExecute refuses {name}: {line}"));
        }
        if matches!(name, "clone" | "clone3" | "unshare" | "setns") && args.contains("CLONE_NEW") {
            problems.insert(format!("RestrictNamespaces refuses {name}: {line}"));
        }
        if !PATH_CALLS.contains(&name) {
            continue;
        }
        let paths = quoted(args);
        let paths: Vec<String> = match name {
            // Their only paths are the first (and for the two-path calls, the second) string.
            "rename" | "renameat" | "renameat2" | "link" | "linkat" | "symlink" | "symlinkat" => paths,
            _ => paths.into_iter().take(1).collect(),
        }
        .into_iter()
        .map(|(dir, p)| {
            let full = if p.starts_with('/') {
                p
            } else {
                format!("{}/{p}", dir.map(|d| on_host(&d)).unwrap_or_else(|| cwd.clone()))
            };
            on_host(&full)
        })
        .collect();
        let opens_for_writing = matches!(name, "open" | "openat" | "openat2")
            && (args.contains("O_WRONLY") || args.contains("O_RDWR") || args.contains("O_CREAT"));
        for path in &paths {
            if ["/home", "/root", "/run/user"].iter().any(|h| under(path, h)) {
                problems.insert(format!("ProtectHome hides {path}: {line}"));
            }
            if under(path, "/dev") && !PRIVATE_DEVICES.iter().any(|d| under(path, d)) {
                problems.insert(format!("PrivateDevices hides {path}: {line}"));
            }
            if (opens_for_writing || WRITE_CALLS.contains(&name)) && !writable(path) {
                problems.insert(format!("ProtectSystem=strict makes {path} read-only: {line}"));
            }
        }
        if name == "execve" && !line.contains("= -1 ") {
            programs.extend(paths.iter().cloned());
        }
    }
    eprintln!(
        "traced {} lines: {} distinct system calls ({}); programs run: {programs:?}",
        text.lines().count(),
        seen.len(),
        seen.iter().cloned().collect::<Vec<_>>().join(" ")
    );
    assert!(seen.contains("inotify_add_watch") && seen.contains("execve"), "the trace missed the workload: {seen:?}");
    assert!(problems.is_empty(), "{UNIT}'s sandbox would refuse what the server did:\n  {}", {
        let v: Vec<String> = problems.into_iter().take(40).collect();
        v.join("\n  ")
    });
}

// ------------------------------------------------------------------ Kubernetes

fn manifest() -> Vec<Value> {
    let text = read(MANIFEST);
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{MANIFEST} is not valid YAML: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn the<'a>(docs: &'a [Value], k: &str) -> &'a Value {
    let found = kind(docs, k);
    assert_eq!(found.len(), 1, "{MANIFEST}: expected one {k}, found {}", found.len());
    found[0]
}

fn named<'a>(docs: &'a [Value], k: &str, name: &str) -> &'a Value {
    kind(docs, k)
        .into_iter()
        .find(|d| d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{MANIFEST}: no {k} named {name}"))
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v:?}"))
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v:?}"))
}

fn seq(v: &Value) -> &Vec<Value> {
    static EMPTY: Vec<Value> = Vec::new();
    v.as_sequence().unwrap_or(&EMPTY)
}

/// The task-mcp container of the Deployment.
fn container(docs: &[Value]) -> &Value {
    let pod = &the(docs, "Deployment")["spec"]["template"]["spec"];
    seq(&pod["containers"])
        .iter()
        .find(|c| c["name"] == "task-mcp")
        .unwrap_or_else(|| panic!("{MANIFEST}: no container named task-mcp"))
}

/// The container's `env` as name -> value (only plain values are used).
fn container_env(c: &Value) -> BTreeMap<String, String> {
    seq(&c["env"])
        .iter()
        .map(|e| {
            let value = e["value"].as_str().unwrap_or_else(|| panic!("env {:?}: only `value` is used here", e["name"]));
            (s(&e["name"]).to_string(), value.to_string())
        })
        .collect()
}

fn container_settings<'a>(c: &Value, known: &'a BTreeMap<String, Flag>) -> Settings<'a> {
    let args: Vec<String> = seq(&c["args"]).iter().map(|a| s(a).to_string()).collect();
    assert_eq!(
        args.first().map(String::as_str),
        Some("serve"),
        "the image's entrypoint is task-mcp: args start with serve"
    );
    let flags = parse_flags(&args[1..], known)
        .unwrap_or_else(|problems| panic!("{MANIFEST}: container args:\n  {}", problems.join("\n  ")));
    Settings { flags, env: container_env(c), known }
}

fn container_port(c: &Value, name: &str) -> u16 {
    let port = seq(&c["ports"])
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("{MANIFEST}: no container port named {name}"));
    u16::try_from(n(&port["containerPort"])).expect("port")
}

/// A probe's port (a name or a number) as a number.
fn probe_port(c: &Value, port: &Value) -> u16 {
    match port.as_str() {
        Some(name) => container_port(c, name),
        None => u16::try_from(n(port)).expect("port"),
    }
}

/// A YAML block kept in the manifest as comments, introduced by `# <marker>:`.
fn commented_block(marker: &str) -> Value {
    let text = read(MANIFEST);
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim_start() == format!("# {marker}:"))
        .unwrap_or_else(|| panic!("{MANIFEST}: no commented block `# {marker}:`"));
    let column = lines[start].find('#').unwrap();
    let mut yaml = format!("{marker}:\n");
    for line in &lines[start + 1..] {
        match line.get(column..).and_then(|l| l.strip_prefix("# ")) {
            Some(body) if body.starts_with(' ') && line[..column].trim().is_empty() => {
                yaml.push_str(body);
                yaml.push('\n');
            }
            _ => break,
        }
    }
    let value: Value =
        serde_yaml::from_str(&yaml).unwrap_or_else(|e| panic!("`# {marker}:` is not YAML ({e}):\n{yaml}"));
    value[marker].clone()
}

/// The Dockerfile's runtime user id, entrypoint and exposed ports.
fn dockerfile() -> (u64, Vec<String>, Vec<u16>) {
    let text = read("deploy/Dockerfile");
    let runtime = text.rsplit_once("\nFROM ").map(|(_, r)| r).expect("a runtime stage");
    let uid = runtime
        .split_whitespace()
        .skip_while(|w| *w != "--uid")
        .nth(1)
        .and_then(|u| u.parse().ok())
        .expect("useradd --uid in the runtime stage");
    let line =
        |key: &str| runtime.lines().find(|l| l.starts_with(key)).unwrap_or_else(|| panic!("no {key}")).to_string();
    let entrypoint: Vec<String> = serde_json::from_str(line("ENTRYPOINT ").trim_start_matches("ENTRYPOINT ")).unwrap();
    let exposed = line("EXPOSE ").split_whitespace().skip(1).map(|p| p.parse().unwrap()).collect();
    (uid, entrypoint, exposed)
}

/// The variables the kubelet's service links would add for each Service (`enableServiceLinks`).
fn service_link_variables(docs: &[Value]) -> Vec<String> {
    let mut names = Vec::new();
    for service in kind(docs, "Service") {
        let prefix = s(&service["metadata"]["name"]).to_ascii_uppercase().replace('-', "_");
        names.extend([format!("{prefix}_SERVICE_HOST"), format!("{prefix}_SERVICE_PORT"), format!("{prefix}_PORT")]);
        for port in seq(&service["spec"]["ports"]) {
            let number = n(&port["port"]);
            if let Some(name) = port["name"].as_str() {
                names.push(format!("{prefix}_SERVICE_PORT_{}", name.to_ascii_uppercase().replace('-', "_")));
            }
            let base = format!("{prefix}_PORT_{number}_TCP");
            names.extend([format!("{base}_PROTO"), format!("{base}_PORT"), format!("{base}_ADDR"), base]);
        }
    }
    names
}

#[test]
fn kubernetes_manifest_passes_kubernetes_validate_strict() {
    let validate = tool("kubernetes-validate", "run scripts/install-test-tools (it installs PyPI kubernetes-validate)");
    // The oldest and the newest Kubernetes whose schemas the pinned kubernetes-validate ships.
    for version in ["1.25.0", "1.37.0"] {
        let mut cmd = Command::new(&validate);
        cmd.args(["--strict", "--kubernetes-version", version]).arg(root().join(MANIFEST));
        let (ok, stdout, stderr) = run_tool(cmd);
        let refusals: Vec<&str> =
            stdout.lines().chain(stderr.lines()).filter(|l| !l.contains(" passed for ")).collect();
        assert!(ok, "kubernetes-validate --strict -k {version} refused {MANIFEST}:\n{}", refusals.join("\n"));
        let passed = stdout.lines().filter(|l| l.contains(" passed for resource ")).count();
        assert_eq!(passed, manifest().len(), "every document must be validated:\n{stdout}{stderr}");
    }
}

#[test]
fn kubernetes_manifest_agrees_with_the_binary_and_the_image() {
    let docs = manifest();
    let known = serve_flags();
    for k in ["ServiceAccount", "Secret", "PersistentVolumeClaim", "Deployment", "Service"] {
        the(&docs, k);
    }
    let deployment = the(&docs, "Deployment");
    let spec = &deployment["spec"];
    assert_eq!(n(&spec["replicas"]), 1, "sessions live in the process and the workspace is one volume: one replica");
    assert_eq!(s(&spec["strategy"]["type"]), "Recreate", "a rolling update would run two pods on one workspace");
    let pod = &spec["template"]["spec"];
    let labels = &spec["template"]["metadata"]["labels"];
    for (k, v) in spec["selector"]["matchLabels"].as_mapping().expect("matchLabels") {
        assert_eq!(&labels[k], v, "the selector must match the pod's labels");
    }
    named(&docs, "ServiceAccount", s(&pod["serviceAccountName"]));
    assert_eq!(pod["automountServiceAccountToken"].as_bool(), Some(false), "the server never calls the API");

    // Service links add TASK_MCP_* variables (from the Service named task-mcp) to any pod in the
    // namespace where they are on: the server must know them for what they are, not warn at
    // every start that no flag reads them.
    let links = unknown_env(service_link_variables(&docs));
    assert!(links.is_empty(), "the server takes the service links' variables for misspelt flags: {links:?}");

    // Security: the image's user, numerically; nothing the server does needs more.
    let (uid, entrypoint, exposed) = dockerfile();
    let security = &pod["securityContext"];
    assert_eq!(security["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(n(&security["runAsUser"]), uid, "runAsUser must be deploy/Dockerfile's uid");
    assert_eq!(s(&security["seccompProfile"]["type"]), "RuntimeDefault");
    let c = container(&docs);
    let cs = &c["securityContext"];
    assert_eq!(cs["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(cs["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert!(seq(&cs["capabilities"]["drop"]).iter().any(|d| d == "ALL"), "drop ALL capabilities");
    assert!(c["command"].is_null(), "the image's entrypoint runs the server");
    assert_eq!(entrypoint, ["task-mcp"], "deploy/Dockerfile's ENTRYPOINT changed: the args assume `task-mcp`");
    for k in ["requests", "limits"] {
        for r in ["cpu", "memory"] {
            assert!(c["resources"][k][r].as_str().is_some(), "resources.{k}.{r} missing");
        }
    }

    // Flags and variables the binary reads.
    let settings = container_settings(c, &known);
    let env = container_env(c);
    let unknown = unknown_env(env.keys().cloned());
    assert!(unknown.is_empty(), "{MANIFEST}: env sets variables no flag reads: {unknown:?}");
    for k in env.keys() {
        assert!(k.starts_with("TASK_MCP_") || k.starts_with("OTEL_") || k == "RUST_LOG", "env {k}: not read");
    }

    // Ports: the listeners on every interface (the kubelet and the Service reach the pod's IP),
    // each on the named container port, exposed by the image and served by the Service.
    for (flag, port_name) in [("http-listen", "http"), ("grpc-listen", "grpc"), ("metrics-listen", "metrics")] {
        let addr = settings.addr(flag);
        assert!(addr.ip().is_unspecified(), "--{flag}={addr}: probes and the Service cannot reach a loopback address");
        assert_eq!(addr.port(), container_port(c, port_name), "--{flag} and the container port {port_name} differ");
        assert!(exposed.contains(&addr.port()), "deploy/Dockerfile does not EXPOSE {}", addr.port());
    }
    let service = named(&docs, "Service", "task-mcp");
    for (k, v) in service["spec"]["selector"].as_mapping().expect("selector") {
        assert_eq!(&labels[k], v, "the Service's selector must match the pod's labels");
    }
    for port in seq(&service["spec"]["ports"]) {
        let target = probe_port(c, &port["targetPort"]);
        assert!(seq(&c["ports"]).iter().any(|p| n(&p["containerPort"]) == u64::from(target)), "{port:?}");
    }

    // Probes: liveness and readiness where the server serves them, on the HTTP listener.
    let http_port = settings.addr("http-listen").port();
    for (probe, path) in
        [("startupProbe", "/health/live"), ("livenessProbe", "/health/live"), ("readinessProbe", "/health/ready")]
    {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe} should GET {path}");
        assert_eq!(probe_port(c, &get["port"]), http_port, "{probe} must probe the HTTP listener");
    }
    let grpc = commented_block("grpc-readiness-probe");
    assert_eq!(
        probe_port(c, &grpc["readinessProbe"]["grpc"]["port"]),
        settings.addr("grpc-listen").port(),
        "the commented gRPC readiness probe must probe the gRPC listener"
    );

    // Stopping: endpoints go before the listeners close; the kubelet's SIGKILL after both.
    let delay = settings.seconds("shutdown-delay-seconds");
    let grace = settings.seconds("shutdown-grace-seconds");
    let termination = n(&pod["terminationGracePeriodSeconds"]);
    assert!(
        termination > delay + grace,
        "terminationGracePeriodSeconds ({termination}) must exceed --shutdown-delay-seconds ({delay}) + \
         --shutdown-grace-seconds ({grace})"
    );
    let readiness = &c["readinessProbe"];
    let notice = n(&readiness["periodSeconds"]) * readiness["failureThreshold"].as_u64().unwrap_or(3);
    assert!(
        delay >= notice,
        "--shutdown-delay-seconds ({delay}) must outlast the readiness probe's notice ({notice}s)"
    );

    // Volumes: the token file is the Secret's key, mounted whole (a subPath is never updated).
    let mounts = seq(&c["volumeMounts"]);
    let volumes = seq(&pod["volumes"]);
    let mount_of = |path: &str| {
        mounts
            .iter()
            .filter(|m| under(path, s(&m["mountPath"])))
            .max_by_key(|m| s(&m["mountPath"]).len())
            .unwrap_or_else(|| panic!("{path} is on no volume (the root filesystem is read-only)"))
    };
    let volume_of = |mount: &Value| {
        volumes.iter().find(|v| v["name"] == mount["name"]).unwrap_or_else(|| panic!("no volume {:?}", mount["name"]))
    };
    let token_file = settings.get("auth-token-file").expect("--auth-token-file");
    let mount = mount_of(&token_file);
    assert!(mount["subPath"].is_null(), "the token Secret must not be mounted with subPath: it would never update");
    assert_eq!(mount["readOnly"].as_bool(), Some(true));
    let secret_name = s(&volume_of(mount)["secret"]["secretName"]);
    let key = token_file.strip_prefix(&format!("{}/", s(&mount["mountPath"]))).expect("a file in the mount");
    let secret = named(&docs, "Secret", secret_name);
    assert!(
        !secret["stringData"][key].is_null() || !secret["data"][key].is_null(),
        "--auth-token-file reads the key {key:?}, which Secret {secret_name} does not hold"
    );
    let mode = volume_of(mount)["secret"]["defaultMode"].as_u64().unwrap_or(0o644);
    assert_eq!(mode & 0o007, 0, "the token file must not be world-readable (defaultMode {mode:o})");
    let workspace = settings.get("workspace").unwrap();
    let claim = s(&volume_of(mount_of(&workspace))["persistentVolumeClaim"]["claimName"]);
    let pvc = named(&docs, "PersistentVolumeClaim", claim);
    assert!(seq(&pvc["spec"]["accessModes"]).iter().any(|m| m == "ReadWriteOnce"), "{pvc:?}");

    // Every document in one namespace.
    for doc in docs.iter().filter(|d| d["kind"] != "Namespace") {
        assert_eq!(doc["metadata"]["namespace"], deployment["metadata"]["namespace"], "{:?}", doc["metadata"]);
    }

    // The Prometheus job in the comments: valid, named as the alerts of monitoring/ select, on the
    // Service's metrics port.
    let scrape = commented_block("prometheus-scrape-config");
    let job = s(&seq(&scrape)[0]["job_name"]);
    let alerts = read("monitoring/prometheus/rules/service-alerts.yml");
    assert!(alerts.contains(&format!("job=\"{job}\"")), "the alerts do not select job=\"{job}\"");
    let keep = serde_yaml::to_string(&scrape).unwrap();
    assert!(keep.contains(&format!("{};metrics", s(&service["metadata"]["name"]))), "{keep}");
    assert!(seq(&service["spec"]["ports"]).iter().any(|p| p["name"] == "metrics"), "the Service has no metrics port");
    // Debian's Prometheus is built without Kubernetes discovery, so promtool checks the job with
    // a static target in its place: the job, its relabelling and every other field.
    let mut job = scrape.clone();
    let job_map = job.as_sequence_mut().and_then(|s| s.first_mut()).and_then(Value::as_mapping_mut).expect("a job");
    assert!(job_map.remove("kubernetes_sd_configs").is_some(), "the job should discover the Service's endpoints");
    let target: Value = serde_yaml::from_str("[{targets: ['127.0.0.1:9464']}]").unwrap();
    job_map.insert("static_configs".into(), target);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("prometheus.yml");
    let prometheus = serde_yaml::Mapping::from_iter([("scrape_configs".into(), job)]);
    std::fs::write(&config, serde_yaml::to_string(&prometheus).unwrap()).unwrap();
    let mut cmd = Command::new(tool("promtool", "run scripts/install-test-tools (Debian package prometheus)"));
    cmd.args(["check", "config"]).arg(&config);
    let (ok, stdout, stderr) = run_tool(cmd);
    assert!(ok, "promtool check config refused the scrape job in {MANIFEST}'s comments:\n{stdout}{stderr}");
}

/// The pod's files under a temporary root: the workspace volume, and the token Secret in the
/// kubelet's layout (`..data` a symlink to a timestamped folder, the key a symlink through it).
struct Pod {
    dir: tempfile::TempDir,
    user: Option<(u32, u32)>,
    secret_dir: PathBuf,
    key: String,
    generation: u32,
}

impl Pod {
    fn path(&self, absolute: &str) -> PathBuf {
        self.dir.path().join(absolute.trim_start_matches('/'))
    }

    fn new(docs: &[Value], settings: &Settings) -> Pod {
        let dir = tempfile::Builder::new().prefix("task-mcp-pod-").tempdir().expect("tempdir");
        chmod(dir.path(), 0o755);
        let c = container(docs);
        let pod = &the(docs, "Deployment")["spec"]["template"]["spec"];
        let user = is_root().then(|| {
            let sc = &pod["securityContext"];
            (n(&sc["runAsUser"]) as u32, n(&sc["fsGroup"]) as u32)
        });
        let token_file = settings.get("auth-token-file").unwrap();
        let mut secret_dir = None;
        for mount in seq(&c["volumeMounts"]) {
            let path = dir.path().join(s(&mount["mountPath"]).trim_start_matches('/'));
            std::fs::create_dir_all(&path).expect("mkdir mount");
            if under(&token_file, s(&mount["mountPath"])) {
                secret_dir = Some(path);
            } else if let Some((_, gid)) = user {
                // fsGroup: volumes group-owned and group-writable.
                chown(&path, (0, gid));
                chmod(&path, 0o2775);
            }
        }
        let secret_dir = secret_dir.expect("the token file's mount");
        let key = Path::new(&token_file).file_name().unwrap().to_string_lossy().into_owned();
        Pod { dir, user, secret_dir, key, generation: 0 }
    }

    /// Publishes the Secret's content as the kubelet does: a new timestamped folder, `..data`
    /// swapped to it by a rename, the old folder removed.
    fn publish_secret(&mut self, content: &str, mode: u32) {
        self.generation += 1;
        let folder = format!("..2026_01_01_00_00_0{}.{}", self.generation, std::process::id());
        let target = self.secret_dir.join(&folder);
        std::fs::create_dir(&target).expect("mkdir secret folder");
        let file = target.join(&self.key);
        std::fs::write(&file, content).expect("write secret");
        chmod(&file, mode);
        if let Some((_, gid)) = self.user {
            chown(&file, (0, gid));
        }
        let data = self.secret_dir.join("..data");
        let old = std::fs::read_link(&data).ok();
        let tmp = self.secret_dir.join("..data_tmp");
        std::os::unix::fs::symlink(&folder, &tmp).expect("symlink ..data_tmp");
        std::fs::rename(&tmp, &data).expect("swap ..data");
        let link = self.secret_dir.join(&self.key);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{}", self.key), &link).expect("symlink key");
        }
        if let Some(old) = old {
            std::fs::remove_dir_all(self.secret_dir.join(old)).expect("remove the old secret folder");
        }
    }

    /// The container's args and env, paths moved under the root, ports 0 (addresses kept).
    fn launch(&self, c: &Value) -> Launch {
        let args: Vec<String> = seq(&c["args"])
            .iter()
            .map(|a| {
                let a = s(a);
                match a.split_once('=') {
                    Some((flag, value)) if flag.ends_with("-listen") && value != "off" => {
                        let addr: SocketAddr = value.parse().expect("listen address");
                        format!("{flag}={}", SocketAddr::new(addr.ip(), 0))
                    }
                    Some((flag, value)) if value.starts_with('/') => format!("{flag}={}", self.path(value).display()),
                    _ => a.to_string(),
                }
            })
            .collect();
        let program = self.path("/usr/local/bin/task-mcp");
        install_binary(&program);
        let mut launch = Launch::new(program).args(args);
        launch.env =
            vec![("PATH".into(), SYSTEMD_PATH.into()), ("HOME".into(), self.path("/data").display().to_string())];
        launch.env.extend(container_env(c));
        launch.cwd = Some(self.dir.path().to_path_buf());
        launch.no_new_privs = c["securityContext"]["allowPrivilegeEscalation"].as_bool() == Some(false);
        launch.drop_capabilities = true;
        launch.user = self.user;
        launch
    }
}

#[test]
fn kubernetes_pod_answers_its_probes_follows_its_secret_and_drains() {
    let docs = manifest();
    let known = serve_flags();
    let c = container(&docs);
    let settings = container_settings(c, &known);
    let pod_spec = &the(&docs, "Deployment")["spec"]["template"]["spec"];
    let mut pod = Pod::new(&docs, &settings);
    let mode = the(&docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
        .as_sequence()
        .and_then(|v| v.iter().find_map(|v| v["secret"]["defaultMode"].as_u64()))
        .unwrap_or(0o644) as u32;
    let (first, second) = (random_token(), random_token());
    pod.publish_secret(&format!("ci={first}\n"), mode);
    let mut server = pod.launch(c).start();

    // The kubelet probes the pod's IP with its own Host and no token.
    let ip_host = |port: u16| format!("10.244.0.7:{port}");
    let http_port = container_port(c, "http");
    let kubelet = ip_host(http_port);
    let probe_headers = [("Host", kubelet.as_str()), ("User-Agent", "kube-probe/1.37")];
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        let path = s(&c[probe]["httpGet"]["path"]);
        let body = until_ok(server.http, path, &probe_headers, Duration::from_secs(20));
        eprintln!("{probe} GET {path}: 200 {body}");
    }
    // The commented gRPC alternative answers SERVING for the service it names.
    let grpc_probe = commented_block("grpc-readiness-probe");
    let service = grpc_probe["readinessProbe"]["grpc"]["service"].as_str().unwrap_or("").to_string();
    assert_eq!(grpc_health(server.grpc, &service), "SERVING", "gRPC health of {service:?}");

    // In-cluster clients, by the Service's names, with the Secret's token.
    let auth = bearer(&first);
    let cluster_host = format!("task-mcp.task-mcp.svc:{http_port}");
    let client = [("Host", cluster_host.as_str()), ("Authorization", auth.as_str())];
    let (status, body) = http(server.http, "GET", "/v1/tools", &client, None);
    assert_eq!(status, 200, "{body}");
    let (status, _) =
        http(server.http, "GET", "/v1/tools", &[("Host", kubelet.as_str()), ("Authorization", auth.as_str())], None);
    assert_eq!(status, 403, "a Host the pod's allowed hosts do not name must be refused");

    // The Secret updated: served from the next periodic check on, without a restart.
    pod.publish_secret(&format!("ci={second}\n"), mode);
    let every = Duration::from_secs(settings.seconds("auth-token-reload-seconds"));
    // (Asking with the new token before then would count as failed authentications, and the
    // address would soon be throttled: the reason to give a principal both tokens for a while.)
    server.wait_line("\"auth tokens reloaded\" after the Secret changed", every + Duration::from_secs(10), |v| {
        v["message"] == "auth tokens reloaded" && v["trigger"] == "changed"
    });
    let new_auth = bearer(&second);
    let new_client = [("Host", cluster_host.as_str()), ("Authorization", new_auth.as_str())];
    let (status, body) = http(server.http, "GET", "/v1/tools", &new_client, None);
    assert_eq!(status, 200, "the updated Secret's token: {body}");
    assert_eq!(http(server.http, "GET", "/v1/tools", &client, None).0, 401, "the old token must be gone");

    // SIGTERM: readiness fails at once, liveness holds, and new connections are still served
    // for the delay, while the endpoint is removed; then exit 0 before the kubelet's SIGKILL.
    let delay = Duration::from_secs(settings.seconds("shutdown-delay-seconds"));
    let termination = Duration::from_secs(n(&pod_spec["terminationGracePeriodSeconds"]));
    let started = Instant::now();
    server.signal(libc::SIGTERM);
    let deadline = started + Duration::from_secs(3);
    loop {
        let (status, body) = http(server.http, "GET", "/health/ready", &probe_headers, None);
        if status == 503 {
            assert!(body.contains("draining"), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "readiness still {status} after SIGTERM: {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
    while started.elapsed() + Duration::from_secs(2) < delay {
        assert_eq!(http(server.http, "GET", "/health/live", &probe_headers, None).0, 200, "liveness while draining");
        let (status, body) = http(server.http, "GET", "/v1/tools", &new_client, None);
        assert_eq!(status, 200, "a call routed during the delay must be served: {body}");
        std::thread::sleep(Duration::from_secs(1));
    }
    let status = server.wait_exit(termination.saturating_sub(started.elapsed()));
    let took = started.elapsed();
    assert!(
        status.is_some_and(|s| s.success()),
        "SIGTERM: {status:?} after {took:?}; terminationGracePeriodSeconds is {termination:?}"
    );
    assert!(took >= delay, "exited after {took:?}, before --shutdown-delay-seconds ({delay:?})");
    let logs = server.logs.text();
    assert!(!logs.contains("no flag reads this environment variable"), "{logs}");
}

/// `grpc.health.v1.Health/Check` for `service`, as the kubelet's gRPC probe asks it.
fn grpc_health(addr: SocketAddr, service: &str) -> String {
    let addr = if addr.ip().is_unspecified() { SocketAddr::from(([127, 0, 0, 1], addr.port())) } else { addr };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect_timeout(Duration::from_secs(10))
            .connect()
            .await
            .expect("connect to the gRPC listener");
        let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
        let request = tonic_health::pb::HealthCheckRequest { service: service.to_string() };
        let answer = tokio::time::timeout(Duration::from_secs(10), client.check(request))
            .await
            .expect("Health/Check within 10 s")
            .unwrap_or_else(|s| panic!("Health/Check {service:?}: {s:?}"));
        tonic_health::pb::health_check_response::ServingStatus::try_from(answer.into_inner().status)
            .map(|s| s.as_str_name().to_string())
            .unwrap_or_else(|_| "UNKNOWN".into())
    })
}

#[test]
fn kubernetes_secret_template_applied_unedited_is_refused_at_start() {
    let docs = manifest();
    let known = serve_flags();
    let c = container(&docs);
    let settings = container_settings(c, &known);
    let mut pod = Pod::new(&docs, &settings);
    let secret = kind(&docs, "Secret")[0];
    let template = s(&secret["stringData"][pod.key.as_str()]).to_string();
    let tokens: Vec<&str> = template.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    assert!(tokens.is_empty(), "the Secret template must hold no token anyone could read here: {tokens:?}");
    pod.publish_secret(&template, 0o440);
    let (mut child, logs, _rx, _) = pod.launch(c).spawn();
    let deadline = Instant::now() + STARTUP_BOUND;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server started with the unedited Secret template:\n{}", logs.text());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_millis(200));
    let text = logs.text();
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(text.contains("without authentication"), "the refusal should say why:\n{text}");
}

#[test]
fn readme_points_at_both_references() {
    let readme = read("README.md");
    for path in [UNIT, MANIFEST, "deploy/systemd/README.md"] {
        assert!(readme.contains(path), "README.md should point at {path}");
        assert!(root().join(path).is_file(), "{path} missing");
    }
}
