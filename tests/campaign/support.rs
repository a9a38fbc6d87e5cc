//! What the parts of the campaign share: the server's directory and configuration, and
//! the checks of error bodies.

use std::{net::TcpListener, path::PathBuf};

use serde_json::Value;

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
        let root = tempfile::tempdir().expect("tempdir");
        let config = format!(
            "[server]\nbind = \"127.0.0.1:{port}\"\ndata_dir = \"{data}\"\nshutdown_grace = \"2s\"\n\n\
             [log]\ndir = \"\"\nlevel = \"warn\"\n\n[tasks]\n{tasks}\n",
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
