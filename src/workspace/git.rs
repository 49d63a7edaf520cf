//! What git says happened while a change was open. The server runs `git` with
//! fixed arguments only, in the workspace directory, with a time bound; it never
//! runs a command a client supplied.
use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use time::OffsetDateTime;

const TIMEOUT: Duration = Duration::from_secs(10);
const MAX_COMMITS: usize = 1000;
const MAX_FILES: usize = 5000;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GitActivity {
    /// Whether the workspace is inside a git work tree.
    pub repository: bool,
    /// `(sha, subject)`, newest first.
    pub commits: Vec<(String, String)>,
    pub files_touched: Vec<String>,
}

/// Commits and files since `since` (all history when unknown). Any git failure
/// yields what could be read; a receipt never fails because of git.
pub fn activity_since(dir: &Path, since: Option<OffsetDateTime>) -> GitActivity {
    let inside = run(dir, &["rev-parse", "--is-inside-work-tree"]).is_some_and(|o| o.trim() == "true");
    if !inside {
        return GitActivity::default();
    }
    let since_arg = since.map(|t| format!("--since=@{}", t.unix_timestamp()));
    let mut log_args = vec!["log", "--format=%H%x1f%s", "--no-color"];
    let max = format!("--max-count={MAX_COMMITS}");
    log_args.push(&max);
    if let Some(s) = &since_arg {
        log_args.push(s);
    }
    let commits = run(dir, &log_args)
        .map(|out| {
            out.lines()
                .filter_map(|l| l.split_once('\u{1f}'))
                .map(|(sha, subject)| (sha.to_string(), subject.to_string()))
                .collect()
        })
        .unwrap_or_default();
    let mut files_args = vec!["log", "--name-only", "--format=", "--no-color"];
    files_args.push(&max);
    if let Some(s) = &since_arg {
        files_args.push(s);
    }
    let mut files: Vec<String> = run(dir, &files_args)
        .map(|out| out.lines().filter(|l| !l.is_empty()).map(str::to_string).collect())
        .unwrap_or_default();
    files.sort();
    files.dedup();
    files.truncate(MAX_FILES);
    GitActivity { repository: true, commits, files_touched: files }
}

fn run(dir: &Path, args: &[&str]) -> Option<String> {
    let mut child = Command::new("git")
        .arg("-c")
        .arg("core.quotePath=false")
        .args(args)
        .current_dir(dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_OPTIONAL_LOCKS", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    // Read stdout on a thread so a chatty git cannot fill the pipe and stall
    // while we wait for it to exit.
    let mut stdout = child.stdout.take()?;
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut buf).map(|_| buf)
    });
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() < TIMEOUT => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                tracing::warn!(?args, "git timed out or failed; receipt without git data");
                return None;
            }
        }
    };
    let bytes = reader.join().ok()?.ok()?;
    status.success().then(|| String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_a_repository_there_is_no_activity() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(activity_since(dir.path(), None), GitActivity::default());
    }

    #[test]
    fn reads_commits_and_files_of_a_repository() {
        let dir = tempfile::tempdir().unwrap();
        let git = |args: &[&str]| {
            let ok = Command::new("git")
                .args(["-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"])
                .args(args)
                .current_dir(dir.path())
                .output()
                .unwrap()
                .status
                .success();
            assert!(ok, "git {args:?}");
        };
        git(&["init", "-q"]);
        std::fs::write(dir.path().join("a.txt"), "a").unwrap();
        git(&["add", "a.txt"]);
        git(&["commit", "-q", "-m", "first commit"]);
        let got = activity_since(dir.path(), Some(OffsetDateTime::now_utc() - time::Duration::hours(1)));
        assert!(got.repository);
        assert_eq!(got.commits.len(), 1);
        assert_eq!(got.commits[0].1, "first commit");
        assert_eq!(got.files_touched, vec!["a.txt".to_string()]);
    }
}
