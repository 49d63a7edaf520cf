//! Server processes pinned to a core, and what `/proc` says about them.
use std::{
    fs,
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

pub struct Server {
    pub name: String,
    child: Child,
}

impl Server {
    /// Starts `program args...` under `taskset -c <cpu>`, output to `log`.
    pub fn spawn(
        name: &str,
        cpu: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
        log: &Path,
    ) -> anyhow::Result<Server> {
        let out = fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = Command::new("taskset");
        cmd.arg("-c").arg(cpu).arg(program).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .with_context(|| format!("spawn {}", program.display()))?;
        Ok(Server { name: name.into(), child })
    }

    /// taskset execs the program, so the child's pid is the server's.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        rss_kib(self.pid())
    }

    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        cpu_seconds(self.pid())
    }

    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited: {status}", self.name);
        }
        Ok(())
    }

    pub fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SIGTERM first: the servers drain; then make sure.
            unsafe {
                libc::kill(self.child.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// A port free now (the OS picks it); the server binds it right after.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Waits until `addr` accepts TCP connections.
pub async fn wait_listening(server: &mut Server, addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        server.check_alive()?;
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{} did not listen on {addr}", server.name);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

pub fn threads(pid: u32) -> anyhow::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status.lines().find_map(|l| l.strip_prefix("Threads:")).and_then(|v| v.trim().parse().ok()).context("no Threads")
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// User plus system CPU time of every thread of `pid`.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')').context("malformed stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11).context("no utime")?.parse()?;
    let stime: f64 = fields.get(12).context("no stime")?.parse()?;
    Ok((utime + stime) / clock_ticks())
}

/// CPU time of this process (the load generator).
pub fn self_cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the struct we pass.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        tv(usage.ru_utime) + tv(usage.ru_stime)
    }
}

/// A scratch directory under the results folder, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(base: &Path, name: &str) -> anyhow::Result<Scratch> {
        let dir = base.join(name);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Per-core busy time (user + nice + system + irq + softirq: the kernel charges
/// interrupt time to the task it interrupted too), in seconds, from `/proc/stat`;
/// interrupt and steal time also apart.
#[derive(Debug, Clone, Default)]
pub struct CpuSample {
    pub busy: Vec<f64>,
    pub softirq: f64,
    pub steal: f64,
}

pub fn cpu_sample() -> CpuSample {
    let ticks = clock_ticks();
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let mut s = CpuSample::default();
    for line in stat.lines().filter(|l| l.starts_with("cpu") && !l.starts_with("cpu ")) {
        let f: Vec<f64> = line.split_whitespace().skip(1).map(|v| v.parse().unwrap_or(0.0)).collect();
        if f.len() < 8 {
            continue;
        }
        s.busy.push((f[0] + f[1] + f[2] + f[5] + f[6]) / ticks);
        s.softirq += (f[5] + f[6]) / ticks;
        s.steal += f[7] / ticks;
    }
    s
}

impl CpuSample {
    /// Cores busy per core between `self` (earlier) and `later`.
    pub fn cores_since(&self, later: &CpuSample, seconds: f64) -> Vec<f64> {
        self.busy.iter().zip(&later.busy).map(|(a, b)| (b - a) / seconds).collect()
    }
}

/// Waits until the machine is quiet (other work under `threshold` cores over
/// one second), at most `max_wait`. Returns the busy cores last seen.
pub async fn wait_quiet(threshold: f64, max_wait: Duration) -> f64 {
    let deadline = Instant::now() + max_wait;
    loop {
        let a = cpu_sample();
        let cpu_a = self_cpu_seconds();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let b = cpu_sample();
        let own = self_cpu_seconds() - cpu_a;
        let busy: f64 = a.cores_since(&b, 1.0).iter().sum::<f64>() - own;
        if busy < threshold || Instant::now() > deadline {
            return busy;
        }
    }
}
