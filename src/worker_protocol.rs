//! The messages of kiln's worker protocol (`docs/worker-protocol.md`), shared by both of
//! its sides in this crate: the `worker` provider and the callback face (kiln's side),
//! `kiln worker` (a worker), and `kiln worker-check` (which plays kiln against any
//! worker).
//!
//! Bodies are built here as bytes because they are signed: the signature covers the
//! exact bytes sent, which a streaming multipart writer would never show us.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

/// The protocol version described by `docs/worker-protocol.md`.
pub const VERSION: u32 = 1;

pub const DISPATCH_PATH: &str = "generate3d";
pub const HEALTH_PATH: &str = "health";
pub const PROGRESS_PATH: &str = "progress";
pub const STATUS_PATH: &str = "status";
pub const RESULT_PATH: &str = "result";

/// kiln's own callback base, relative to its public URL.
pub const CALLBACK_BASE: &str = "api/v1/worker-callbacks";

/// `POST {callback_url}/progress`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProgressReport {
    pub task_id: String,
    /// 0–100.
    pub progress: f64,
    /// A short snake_case stage name, e.g. `sampling`.
    #[serde(default)]
    pub stage: Option<String>,
}

/// `POST {callback_url}/status`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    pub task_id: String,
    /// `completed` or `failed`.
    pub status: String,
    /// With `failed`: what went wrong, in a sentence for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// With `completed`: what the worker wants kept with the result (the settings it
    /// really used, say, when it had to lower them); kiln keeps it as the task's
    /// `metadata.provider.worker` in the result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

/// The answer to an accepted dispatch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Accepted {
    pub status: String,
    pub task_id: String,
}

/// `GET {worker}/health`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    #[serde(default)]
    pub models_loaded: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Why the worker is not ready (with a 503): what to fix, for the person reading it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What the worker's warm-up measured, when it ran one (seconds, peak VRAM …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup: Option<serde_json::Value>,
}

/// Whether a result file name is acceptable (it becomes part of a storage key).
pub fn valid_file_name(name: &str) -> bool {
    crate::tasks::Artifact::valid_name(name)
}

/// A `multipart/form-data` body held as bytes, so it can be signed before it is sent.
#[derive(Debug)]
pub struct Form {
    boundary: String,
    body: BytesMut,
}

impl Default for Form {
    fn default() -> Self {
        Self::new()
    }
}

impl Form {
    pub fn new() -> Self {
        Self { boundary: format!("kiln-{}", uuid::Uuid::new_v4().simple()), body: BytesMut::new() }
    }

    /// Adds a text field. Names are ours (ASCII, no quotes).
    pub fn text(mut self, name: &str, value: &str) -> Self {
        self.head(name, None, None);
        self.body.put_slice(value.as_bytes());
        self.body.put_slice(b"\r\n");
        self
    }

    /// Adds a file field.
    pub fn file(mut self, name: &str, file_name: &str, content_type: &str, bytes: &[u8]) -> Self {
        self.head(name, Some(file_name), Some(content_type));
        self.body.put_slice(bytes);
        self.body.put_slice(b"\r\n");
        self
    }

    fn head(&mut self, name: &str, file_name: Option<&str>, content_type: Option<&str>) {
        self.body.put_slice(format!("--{}\r\n", self.boundary).as_bytes());
        let mut disposition = format!("Content-Disposition: form-data; name=\"{name}\"");
        if let Some(file_name) = file_name {
            // Quotes and line breaks cannot be escaped portably: leave them out.
            let safe: String = file_name.chars().filter(|c| !matches!(c, '"' | '\r' | '\n' | '\\')).collect();
            disposition.push_str(&format!("; filename=\"{safe}\""));
        }
        self.body.put_slice(disposition.as_bytes());
        self.body.put_slice(b"\r\n");
        if let Some(content_type) = content_type {
            self.body.put_slice(format!("Content-Type: {content_type}\r\n").as_bytes());
        }
        self.body.put_slice(b"\r\n");
    }

    /// The `Content-Type` header value and the finished body.
    pub fn finish(mut self) -> (String, Bytes) {
        self.body.put_slice(format!("--{}--\r\n", self.boundary).as_bytes());
        (format!("multipart/form-data; boundary={}", self.boundary), self.body.freeze())
    }
}

#[cfg(test)]
mod tests {
    use futures::stream;

    use super::*;

    #[tokio::test]
    async fn forms_read_back_with_a_multipart_parser() {
        let image = vec![0u8, 1, 2, 255, 13, 10, 45, 45];
        let (content_type, body) = Form::new()
            .file("image", "in\"put.png", "image/png", &image)
            .text("task_id", "abc")
            .text("params", "{\"a\":1}")
            .finish();
        let boundary = multer::parse_boundary(&content_type).expect("boundary");
        let mut parts = multer::Multipart::new(stream::iter([Ok::<_, std::io::Error>(body)]), boundary);
        let field = parts.next_field().await.expect("read").expect("image");
        assert_eq!((field.name(), field.file_name()), (Some("image"), Some("input.png")));
        assert_eq!(field.bytes().await.expect("bytes").as_ref(), image.as_slice());
        let field = parts.next_field().await.expect("read").expect("task_id");
        assert_eq!(field.text().await.expect("text"), "abc");
        let field = parts.next_field().await.expect("read").expect("params");
        assert_eq!(field.text().await.expect("text"), "{\"a\":1}");
        assert!(parts.next_field().await.expect("read").is_none());
    }

    #[test]
    fn file_names_that_could_escape_a_key_are_refused() {
        for good in ["model.glb", "output3d.zip", "pixel_images.png", "a-b_c.1"] {
            assert!(valid_file_name(good), "{good}");
        }
        for bad in ["", ".hidden", "../x", "a/b", "a b", "é.png", &"x".repeat(129)] {
            assert!(!valid_file_name(bad), "{bad}");
        }
    }
}
