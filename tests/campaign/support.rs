//! What both parts of the campaign use: a seeded random generator, the server's
//! configuration, a read-only look into its database, and the checks of error bodies.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::Value;
use sqlx::{
    SqlitePool,
    sqlite::{SqliteConnectOptions, SqlitePoolOptions},
};

/// SplitMix64: small, seedable, good enough to pick kill moments and requests. The seed
/// is printed, and `KILN_CAMPAIGN_SEED` replays its choices.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from + 1))
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// The campaign's seed: `KILN_CAMPAIGN_SEED`, else the clock.
pub fn seed() -> u64 {
    match std::env::var("KILN_CAMPAIGN_SEED") {
        Ok(text) => text.trim().parse().unwrap_or_else(|_| panic!("KILN_CAMPAIGN_SEED={text} is not a number")),
        Err(_) => {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
        }
    }
}

/// A whole-number setting from the environment, with a default.
pub fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(default)
}

/// A port that was free a moment ago, so that a restarted server listens where the
/// killed one did and clients keep one address (kiln's listener sets SO_REUSEADDR).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// A server directory: `kiln.toml`, `data/` (database, `files/`, `tmp/`) and the log.
pub struct ServerDir {
    pub root: tempfile::TempDir,
}

impl ServerDir {
    /// The built-in default channel (relief) on `port`; `tasks` is the `[tasks]` section.
    pub fn new(port: u16, tasks: &str) -> Self {
        Self::with_sections(port, tasks, "")
    }

    /// Like [`ServerDir::new`], with `sections` (whole TOML tables: `[auth]`,
    /// `[[channels]]` …) after `[tasks]`.
    pub fn with_sections(port: u16, tasks: &str, sections: &str) -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        let config = format!(
            "[server]\nbind = \"127.0.0.1:{port}\"\ndata_dir = \"{data}\"\nshutdown_grace = \"2s\"\n\n\
             [log]\ndir = \"\"\nlevel = \"warn\"\n\n[tasks]\n{tasks}\n\n{sections}\n",
            data = root.path().join("data").display(),
        );
        std::fs::write(root.path().join("kiln.toml"), config).expect("write kiln.toml");
        Self { root }
    }

    pub fn config(&self) -> PathBuf {
        self.root.path().join("kiln.toml")
    }

    pub fn log(&self) -> PathBuf {
        self.root.path().join("kiln.log")
    }

    pub fn data(&self) -> PathBuf {
        self.root.path().join("data")
    }

    /// The fs storage root (`storage.root` defaults to `{data_dir}/files`).
    pub fn files(&self) -> PathBuf {
        self.data().join("files")
    }

    /// Where uploads are spooled while they stream in.
    pub fn spool(&self) -> PathBuf {
        self.data().join("tmp")
    }

    /// The SQLite database, opened read-only (the server may be running: WAL lets both).
    pub async fn database(&self) -> SqlitePool {
        let options = SqliteConnectOptions::new().filename(self.data().join("kiln.db")).read_only(true);
        SqlitePoolOptions::new().max_connections(1).connect_with(options).await.expect("open kiln.db read-only")
    }
}

/// Every file under `root`, as storage keys (paths relative to `root`, `/`-separated).
pub fn walk(root: &Path) -> Vec<String> {
    fn visit(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                visit(root, &path, out);
            } else if let Ok(relative) = path.strip_prefix(root) {
                out.push(relative.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    let mut out = Vec::new();
    visit(root, root, &mut out);
    out.sort();
    out
}

/// Checks kiln's native error envelope, `{"error": {"code", "message"}, "request_id"}`,
/// with `request_id` equal to the `X-Request-Id` header.
pub fn check_envelope(content_type: Option<&str>, request_id: Option<&str>, body: &[u8]) -> Result<Value, String> {
    if !content_type.is_some_and(|t| t.starts_with("application/json")) {
        return Err(format!("content-type {content_type:?}, not JSON; body: {}", shown(body)));
    }
    let json: Value = serde_json::from_slice(body).map_err(|e| format!("body is not JSON ({e}): {}", shown(body)))?;
    let code = json["error"]["code"].as_str().unwrap_or_default();
    if code.is_empty() || !code.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
        return Err(format!("no snake_case error.code: {json}"));
    }
    if json["error"]["message"].as_str().is_none_or(str::is_empty) {
        return Err(format!("no error.message: {json}"));
    }
    match (json["request_id"].as_str(), request_id) {
        (Some(id), Some(header)) if id == header => Ok(json),
        (body_id, header) => Err(format!("request_id {body_id:?} is not the X-Request-Id header {header:?}: {json}")),
    }
}

/// Checks OpenAI's error envelope, `{"error": {"message", "type", "param", "code"}}`, of
/// the OpenAI-compatible face: nothing of kiln's native envelope beside it.
pub fn check_openai(content_type: Option<&str>, body: &[u8]) -> Result<Value, String> {
    if !content_type.is_some_and(|t| t.starts_with("application/json")) {
        return Err(format!("content-type {content_type:?}, not JSON; body: {}", shown(body)));
    }
    let json: Value = serde_json::from_slice(body).map_err(|e| format!("body is not JSON ({e}): {}", shown(body)))?;
    let error = &json["error"];
    for field in ["message", "type", "code"] {
        if error[field].as_str().is_none_or(str::is_empty) {
            return Err(format!("no error.{field}: {json}"));
        }
    }
    if !error.as_object().is_some_and(|e| e.contains_key("param")) || json.get("request_id").is_some() {
        return Err(format!("not OpenAI's envelope: {json}"));
    }
    Ok(json)
}

/// Checks seed 002's error shape, `{"success": false, "error": "…", "code": "…"}`.
pub fn check_seed002(content_type: Option<&str>, body: &[u8]) -> Result<Value, String> {
    if !content_type.is_some_and(|t| t.starts_with("application/json")) {
        return Err(format!("content-type {content_type:?}, not JSON; body: {}", shown(body)));
    }
    let json: Value = serde_json::from_slice(body).map_err(|e| format!("body is not JSON ({e}): {}", shown(body)))?;
    if json["success"] != Value::Bool(false) {
        return Err(format!("no \"success\": false: {json}"));
    }
    if json["error"].as_str().is_none_or(str::is_empty) || json["code"].as_str().is_none_or(str::is_empty) {
        return Err(format!("no error message and code strings: {json}"));
    }
    Ok(json)
}

/// A body for a failure message: text when it is text, cut short.
pub fn shown(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
    if body.len() > 300 { format!("{text}… ({} bytes)", body.len()) } else { text }
}
