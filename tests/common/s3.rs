//! A real S3 server for the object storage tests: `s3s-fs` (crates.io, from the s3s
//! project), a separate process that speaks S3 over HTTP, checks SigV4 (headers and
//! presigned URLs, with their expiry), does multipart uploads and keeps a bucket as a
//! directory. `scripts/deps.sh --test` installs it into `tools/s3s-fs` (docs/storage.md
//! says why this one).
//!
//! Where it is: `KILN_TEST_S3_SERVER`, which `make test` sets, so that a missing server
//! fails the tests there; without the variable, `tools/s3s-fs/bin/s3s-fs`, and when that
//! is missing too, a plain `cargo nextest run` skips these tests and says why.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use tempfile::TempDir;

pub const S3_SERVER_ENV: &str = "KILN_TEST_S3_SERVER";
pub const S3_ACCESS_KEY: &str = "kiln-test-access-key";
pub const S3_SECRET_KEY: &str = "kiln-test-secret-key-never-logged";
pub const S3_BUCKET: &str = "kiln-test";

/// The `s3s-fs` binary, or why there is none. Panics when `KILN_TEST_S3_SERVER` names a
/// file that is not there: whoever set it wants these tests run.
pub fn server_binary() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os(S3_SERVER_ENV) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "{S3_SERVER_ENV} names {}, which is missing: run `scripts/deps.sh --test` (make test does) to install s3s-fs",
            path.display()
        );
        return Ok(path);
    }
    let default = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/s3s-fs/bin/s3s-fs");
    if default.is_file() {
        Ok(default)
    } else {
        Err(format!(
            "no S3 server: {} is missing and {S3_SERVER_ENV} is unset; `scripts/deps.sh --test` installs it \
             (make test does, and fails without it)",
            default.display()
        ))
    }
}

/// A running `s3s-fs` on `127.0.0.1`, with one bucket. Dropping it kills the process.
pub struct S3Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// The directory behind the server; the bucket is its subdirectory `S3_BUCKET`.
    pub dir: TempDir,
}

impl S3Server {
    /// Starts a server, or returns `None` after printing why these tests are skipped.
    pub fn start() -> Option<S3Server> {
        let binary = match server_binary() {
            Ok(binary) => binary,
            Err(why) => {
                eprintln!("SKIPPED: {why}");
                return None;
            }
        };
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join(S3_BUCKET)).expect("bucket directory");
        let mut child = Command::new(&binary)
            .args(["--host", "127.0.0.1", "--port", "0", "--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET_KEY])
            .arg(dir.path())
            // Its only announcement of the port it took is an info line.
            .env("RUST_LOG", "s3s_fs=info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("server is running at ").nth(1)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(rest.trim().to_owned());
                }
            }
        });
        let endpoint = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(endpoint) => endpoint,
            Err(_) => {
                let _ = child.kill();
                panic!("{} did not say where it listens", binary.display());
            }
        };
        Some(S3Server { child, endpoint, dir })
    }

    /// The files of the bucket, as keys, sorted (`s3s-fs` keeps its own bookkeeping in
    /// dot-files, which are left out).
    pub fn keys(&self) -> Vec<String> {
        let bucket = self.dir.path().join(S3_BUCKET);
        let mut keys = Vec::new();
        let mut stack = vec![bucket.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).expect("read bucket").flatten() {
                let path = entry.path();
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue;
                }
                if path.is_dir() {
                    stack.push(path);
                } else if let Ok(rel) = path.strip_prefix(&bucket) {
                    keys.push(rel.to_string_lossy().into_owned());
                }
            }
        }
        keys.sort();
        keys
    }

    /// Multipart uploads begun and neither completed nor aborted (`s3s-fs` keeps them
    /// as `.upload-…` and `.upload_id-…` files at its root).
    pub fn open_parts(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.path())
            .expect("read root")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with(".upload_id-") || name.starts_with(".upload-"))
            .collect()
    }

    /// The `[storage]` section for this server, with `extra` lines.
    pub fn storage_toml(&self, extra: &str) -> String {
        format!(
            "[storage]\ntype = \"s3\"\nbucket = \"{S3_BUCKET}\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\n\
             access_key_id = \"{S3_ACCESS_KEY}\"\nsecret_access_key = \"{S3_SECRET_KEY}\"\n{extra}\n",
            self.endpoint
        )
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
