//! What the integration-test crates share (`tests/api`, `tests/campaign`): the picture
//! fixtures, the real `kiln` binary as a child process, fake upstream providers
//! (`fakes`, which benchmarks include on their own) and a real S3 server (`s3`).
//!
//! Each crate includes this file with `#[path = "../common/mod.rs"] mod common;` and
//! uses a different part of it.
#![allow(dead_code)]

pub mod fakes;
pub mod postgres;
pub mod s3;

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures/images");

pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(FIXTURES).join(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

pub const KILN: &str = env!("CARGO_BIN_EXE_kiln");

/// How long `kiln serve` may take to say where it listens (migrations, a busy machine).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// `kiln serve --config …`, the real binary, in a child process. Its stderr (the log)
/// is appended to `log`. Dropping it kills the process (SIGKILL), so a failing test
/// leaves no server behind.
pub struct KilnProcess {
    child: Child,
    /// `http://127.0.0.1:PORT`, without a trailing slash, as the server printed it.
    pub base: String,
    pub log: PathBuf,
}

impl KilnProcess {
    /// Starts the server and waits until it prints `kiln is running at …`, which it does
    /// once start-up (migrations, lease release) is done and the listener is bound.
    pub fn start(config: &Path, log: &Path) -> Self {
        Self::start_with_env(config, log, &[])
    }

    /// [`KilnProcess::start`] with variables added to the child's environment (the
    /// first admin's `KILN_ADMIN__*`, set as a container would set them).
    pub fn start_with_env(config: &Path, log: &Path, env: &[(&str, &str)]) -> Self {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", log.display()));
        let mut child = Command::new(KILN)
            .arg("serve")
            .arg("--config")
            .arg(config)
            .env_remove("KILN_CONFIG")
            .env_remove("KILN_LOG")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {KILN}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        // Reads the announcement, then keeps draining so the child never blocks on a
        // full pipe; ends when the child does.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("kiln is running at ").nth(1)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(rest.trim().trim_end_matches('/').to_owned());
                }
            }
        });
        let mut process = Self { child, base: String::new(), log: log.to_owned() };
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(base) => process.base = base,
            Err(_) => {
                let status = process.child.try_wait().ok().flatten();
                panic!(
                    "kiln did not announce its address within {START_TIMEOUT:?} (exit: {status:?}); log:\n{}",
                    log_tail(log, 40)
                );
            }
        }
        process
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running (it has not crashed).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn sigkill(mut self) {
        self.kill_now();
    }

    /// SIGTERM, as an operator stops kiln, and wait until it has shut down; panics
    /// (after SIGKILL) when it does not end within a minute or ends with a failure.
    pub fn stop(mut self) {
        let sent = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("run kill");
        assert!(sent.success(), "kill -TERM {} failed", self.child.id());
        for _ in 0..600 {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "kiln ended with {status}; log:\n{}", log_tail(&self.log, 40));
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.kill_now();
        panic!("kiln did not stop within a minute of SIGTERM; log:\n{}", log_tail(&self.log, 40));
    }

    /// SIGTERM, as an orchestrator stops a process, then waits up to `within` for it to
    /// exit: its exit status, or `None` when it was still running (it is then killed).
    pub fn sigterm(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let pid = libc::pid_t::try_from(self.child.id()).expect("a pid fits pid_t");
        // SAFETY: `kill` only sends a signal; the pid is our own child, not yet reaped.
        let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(sent, 0, "cannot send SIGTERM to {pid}");
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill_now();
        None
    }

    fn kill_now(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for KilnProcess {
    fn drop(&mut self) {
        self.kill_now();
    }
}

/// The last `lines` lines of a log file, for failure messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
