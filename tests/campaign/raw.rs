//! HTTP/1.1 by hand over TCP, for requests an HTTP client would refuse to send or would
//! correct: broken framing, duplicate or lying `Content-Length`, control bytes and
//! non-ASCII in headers, undecodable paths.

use std::time::Duration;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// How long any answer may take: past it, the server hangs.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(15);

/// A request's bytes, built up head first.
pub struct RawRequest {
    head: Vec<u8>,
    body: Vec<u8>,
    content_length: bool,
    /// Shut the sending side after the request (the server sees the end of input).
    pub half_close: bool,
}

impl RawRequest {
    /// `METHOD target HTTP/1.1` with `Host` and `Connection: close`; a `Content-Length`
    /// matching the body is added unless [`RawRequest::no_length`] is called.
    pub fn new(method: &str, target: impl AsRef<[u8]>) -> Self {
        let mut head = Vec::new();
        head.extend_from_slice(method.as_bytes());
        head.push(b' ');
        head.extend_from_slice(target.as_ref());
        head.extend_from_slice(b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
        Self { head, body: Vec::new(), content_length: true, half_close: false }
    }

    pub fn get(target: impl AsRef<[u8]>) -> Self {
        Self::new("GET", target)
    }

    pub fn post(target: impl AsRef<[u8]>) -> Self {
        Self::new("POST", target)
    }

    /// A header line, bytes as given (no checks: that is the point).
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.head.extend_from_slice(name.as_bytes());
        self.head.extend_from_slice(b": ");
        self.head.extend_from_slice(value.as_ref());
        self.head.extend_from_slice(b"\r\n");
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    pub fn json(self, body: impl Into<Vec<u8>>) -> Self {
        self.header("Content-Type", "application/json").body(body)
    }

    pub fn multipart(self, form: Multipart) -> Self {
        let content_type = format!("multipart/form-data; boundary={}", form.boundary);
        self.header("Content-Type", content_type).body(form.finish())
    }

    /// No `Content-Length` is added (the request sets its own, or none).
    pub fn no_length(mut self) -> Self {
        self.content_length = false;
        self
    }

    pub fn half_closed(mut self) -> Self {
        self.half_close = true;
        self
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut out = self.head.clone();
        if self.content_length {
            out.extend_from_slice(format!("Content-Length: {}\r\n", self.body.len()).as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

/// A `multipart/form-data` body, part by part.
pub struct Multipart {
    pub boundary: String,
    body: Vec<u8>,
    terminated: bool,
}

impl Multipart {
    pub fn new() -> Self {
        Self::with_boundary("kiln-campaign-boundary")
    }

    pub fn with_boundary(boundary: &str) -> Self {
        Self { boundary: boundary.to_owned(), body: Vec::new(), terminated: true }
    }

    /// A part with raw header bytes (for broken `Content-Disposition` lines).
    pub fn raw_part(mut self, headers: &[u8], data: &[u8]) -> Self {
        self.body.extend_from_slice(format!("--{}\r\n", self.boundary).as_bytes());
        self.body.extend_from_slice(headers);
        self.body.extend_from_slice(b"\r\n\r\n");
        self.body.extend_from_slice(data);
        self.body.extend_from_slice(b"\r\n");
        self
    }

    pub fn file(self, name: &str, data: &[u8]) -> Self {
        let headers = format!(
            "Content-Disposition: form-data; name=\"{name}\"; filename=\"picture\"\r\nContent-Type: application/octet-stream"
        );
        self.raw_part(headers.as_bytes(), data)
    }

    pub fn text(self, name: &str, value: impl AsRef<[u8]>) -> Self {
        let headers = format!("Content-Disposition: form-data; name=\"{name}\"");
        self.raw_part(headers.as_bytes(), value.as_ref())
    }

    /// Leaves out the closing boundary.
    pub fn unterminated(mut self) -> Self {
        self.terminated = false;
        self
    }

    pub fn finish(mut self) -> Vec<u8> {
        if self.terminated {
            self.body.extend_from_slice(format!("--{}--\r\n", self.boundary).as_bytes());
        }
        self.body
    }
}

/// A response as read off the wire.
#[derive(Debug)]
pub struct RawAnswer {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl RawAnswer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).and_then(|(_, v)| std::str::from_utf8(v).ok())
    }
}

/// Sends the request and reads the answer to the end of the connection
/// (`Connection: close`), within [`ANSWER_WITHIN`]. Sending and reading run at once, so
/// an answer given before the whole body was taken is still read.
pub async fn exchange(addr: &str, request: &RawRequest) -> Result<RawAnswer, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| format!("cannot connect: {e}"))?;
    let (mut reader, mut writer) = stream.into_split();
    let bytes = request.bytes();
    let half_close = request.half_close;
    let sender = tokio::spawn(async move {
        // The server may answer and close before taking everything: not an error here.
        let _ = writer.write_all(&bytes).await;
        if half_close {
            let _ = writer.shutdown().await;
        }
        // Dropping the write half would shut it: keep it until the answer is read.
        writer
    });
    let read = async {
        let mut received = Vec::new();
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            match reader.read(&mut buffer).await {
                Ok(0) => break,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
                // A reset after the answer (unread request bytes) still leaves the answer.
                Err(err) if has_head(&received) => {
                    let _ = err;
                    break;
                }
                Err(err) => return Err(format!("connection failed before an answer: {err}")),
            }
        }
        Ok(received)
    };
    let received = tokio::time::timeout(ANSWER_WITHIN, read)
        .await
        .map_err(|_| format!("no complete answer within {ANSWER_WITHIN:?}"))??;
    sender.abort();
    parse(&received)
}

fn has_head(bytes: &[u8]) -> bool {
    bytes.windows(4).any(|w| w == b"\r\n\r\n")
}

fn parse(bytes: &[u8]) -> Result<RawAnswer, String> {
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no answer (connection closed after {} bytes)", bytes.len()))?;
    let head = String::from_utf8_lossy(&bytes[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, Vec<u8>)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().as_bytes().to_vec()))
        .collect();
    let rest = &bytes[end + 4..];
    let chunked =
        headers.iter().any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case(b"chunked"));
    let body = if chunked { dechunk(rest)? } else { rest.to_vec() };
    Ok(RawAnswer { status, headers, body })
}

fn dechunk(mut bytes: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = bytes.windows(2).position(|w| w == b"\r\n").ok_or("chunk size line cut short")?;
        let size_text = String::from_utf8_lossy(&bytes[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        bytes = &bytes[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if bytes.len() < size + 2 {
            return Err("chunked body cut short".into());
        }
        out.extend_from_slice(&bytes[..size]);
        bytes = &bytes[size + 2..];
    }
}
