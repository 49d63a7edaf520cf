//! A real OAuth 2.1 authorization server for the tests: npm `oidc-provider` (pinned in
//! .tools/oidc by scripts/install-test-tools), run by tests/oauth/authorization_server.mjs on
//! loopback; see that file for its options.
use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use serde_json::Value;

/// A failure bound on the authorization server's start (Node loads oidc-provider).
const START_BOUND: Duration = Duration::from_secs(60);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// One authorization_server.mjs process; killed on drop.
pub struct AuthServer {
    child: Child,
    _stdin: ChildStdin,
    pub issuer: String,
    pub token_endpoint: String,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl AuthServer {
    pub fn start(args: &[&str]) -> AuthServer {
        let node = super::node22();
        let dir = tempfile::Builder::new().prefix("oauth-as-").tempdir().expect("tempdir");
        let stderr = dir.path().join("stderr.txt");
        let mut child = Command::new(node)
            .arg(repo().join("tests/oauth/authorization_server.mjs"))
            .args(["--oidc", &repo().join(".tools/oidc").display().to_string()])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("start the authorization server (node22)");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(START_BOUND).unwrap_or_default();
        let first: Value = serde_json::from_str(&line).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!(
                "the authorization server did not print its JSON line within {START_BOUND:?} (failure bound):\n{line}\n\
                 --- stderr ---\n{}\n(is .tools/oidc installed? run scripts/install-test-tools)",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            )
        });
        AuthServer {
            _stdin: child.stdin.take().expect("stdin"),
            child,
            issuer: first["issuer"].as_str().expect("issuer").to_string(),
            token_endpoint: first["token_endpoint"].as_str().expect("token_endpoint").to_string(),
            stderr,
            _dir: dir,
        }
    }

    pub fn port(&self) -> u16 {
        self.issuer.rsplit(':').next().and_then(|p| p.parse().ok()).expect("issuer port")
    }

    /// A client_credentials access token for `resource`, or the refusal's body.
    pub async fn token(&self, client: (&str, &str), resource: &str, scope: &str) -> String {
        let res = reqwest::Client::new()
            .post(&self.token_endpoint)
            .basic_auth(client.0, Some(client.1))
            .form(&[("grant_type", "client_credentials"), ("resource", resource), ("scope", scope)])
            .send()
            .await
            .expect("token request");
        let status = res.status();
        let body: Value = res.json().await.expect("token response JSON");
        assert_eq!(
            status,
            200,
            "token request for {resource} ({scope}) refused: {body}\n--- AS stderr ---\n{}",
            self.stderr_text()
        );
        body["access_token"].as_str().expect("access_token").to_string()
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for AuthServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
