//! What the three fakes share: routes, faults and outcomes, the call log and the fault
//! queues, the task timeline, signed download URLs and the plumbing that applies a fault
//! to a request.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use axum::{
    body::Body,
    http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header},
};
use bytes::Bytes;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::server::Reply;

/// A family of requests; faults are queued and calls counted per route.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    /// Task creation: Tripo's `/v3/generation/*`, ModelScope's and OpenAI's
    /// `POST /v1/images/generations`.
    Create,
    /// Tripo's `POST /v3/files`.
    Upload,
    /// One task: Tripo's `GET /v3/tasks/{id}`, ModelScope's `GET /v1/tasks/{id}`.
    Get,
    /// Tripo's `POST /v3/tasks/list`.
    List,
    /// Tripo's `GET /v3/account/balance`.
    Balance,
    /// `GET /v1/models` (ModelScope, OpenAI).
    Models,
    /// `GET /dl/{token}`: a result file, on the fake's "storage host" (no auth).
    Download,
    /// Anything else (unknown paths, wrong methods).
    Other,
}

/// Something to go wrong with one request. Queued per [`Route`], consumed one per
/// request in FIFO order (`push_fault`). Faults that make no sense on a route (a
/// download fault on a create) are consumed and ignored.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// The provider's error envelope with this HTTP status and business `code` (Tripo's
    /// `code`; ModelScope ignores it; OpenAI derives `type`/`code` from the status),
    /// plus `Retry-After` when given. Nothing is created. On ModelScope a 429 also gets
    /// the four `modelscope-ratelimit-*` headers.
    Status { http: u16, code: i64, message: String, retry_after: Option<u64> },
    /// This exact answer (status, `Content-Type`, body). Nothing is created.
    Raw { http: u16, content_type: String, body: String },
    /// 502 with an HTML page, as a reverse proxy answers. Nothing is created.
    NonJson502,
    /// 200 `application/json` whose body is not JSON. Nothing is created.
    BadJson,
    /// The request is handled at once (a create registers its task), the answer is
    /// sent after this delay: a client with a shorter timeout gives up on a task that
    /// exists.
    Delay(Duration),
    /// The connection is reset before anything is registered.
    ResetBeforeAccept,
    /// The request is handled (a create registers its task, which counts as created),
    /// then the connection is reset without an answer.
    ResetAfterAccept,
    /// The request is handled, the answer's `Content-Length` is the full length but only
    /// half the body is sent before the connection closes. Meant for downloads; works on
    /// any route.
    Truncated,
    /// Download only: a body of this many bytes (the real file, then zeros), with a
    /// matching `Content-Length`.
    Oversized(u64),
    /// Download only: like `Oversized` but chunked, without `Content-Length`.
    OversizedChunked(u64),
    /// Download only: 200 with the usual `Content-Type` but a body that is not the file
    /// (an HTML page).
    WrongBody,
    /// On the route that hands out result URLs (Tripo's Get/List, ModelScope's Get,
    /// OpenAI's Create): the URLs in this answer are already expired; the next answer
    /// hands out fresh ones.
    ExpiredUrls,
}

impl Fault {
    /// `Fault::Status` without `Retry-After`.
    pub fn status(http: u16, code: i64, message: &str) -> Fault {
        Fault::Status { http, code, message: message.to_owned(), retry_after: None }
    }

    /// `Fault::Status` with `Retry-After: secs`.
    pub fn retry_after(http: u16, code: i64, message: &str, secs: u64) -> Fault {
        Fault::Status { http, code, message: message.to_owned(), retry_after: Some(secs) }
    }
}

/// How a task ends. Set per fake (`default_outcome`), for the next tasks
/// (`push_outcome`) or per task (`set_outcome`).
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Tripo `success` with `model_url` and `rendered_image_url`; ModelScope `SUCCEED`
    /// with one image.
    Success,
    /// Tripo `failed` with `error_code`/`error_message` (e.g. 2008 content policy, 2018);
    /// ModelScope `FAILED` with `errors.message` (and `errors.code` when `code` ≠ 0).
    Failed { code: i64, message: String },
    /// Tripo `cancelled`; ModelScope `FAILED` with the message "task cancelled".
    Cancelled,
    /// Success without results: Tripo `success` with `output: {}`, ModelScope `SUCCEED`
    /// with `output_images: []`.
    EmptyOutput,
    /// Never ends by itself (running, progress stops at 99) until `complete` is called,
    /// which ends it as `Success`.
    Stuck,
}

impl Outcome {
    /// `Outcome::Failed`.
    pub fn failed(code: i64, message: &str) -> Outcome {
        Outcome::Failed { code, message: message.to_owned() }
    }
}

/// One request the fake received, whatever happened to it.
#[derive(Clone, Debug)]
pub struct Call {
    pub method: String,
    /// The path, without the query string.
    pub path: String,
    pub route: Route,
    /// Whether an `Authorization` header was sent (downloads must never carry one).
    pub had_authorization: bool,
    /// The bearer token, when `Authorization: Bearer …` was sent.
    pub bearer: Option<String>,
    /// The `X-Request-ID` header, when sent.
    pub request_id: Option<String>,
    pub at: Instant,
}

/// A create the fake accepted (a task now exists upstream, or for OpenAI, images were
/// generated): the request as received.
#[derive(Clone, Debug)]
pub struct CreateRecord {
    /// The upstream task id (OpenAI: an id of the request).
    pub task_id: String,
    /// The bearer token that created it.
    pub key: String,
    /// The endpoint, e.g. `/v3/generation/text-to-model`.
    pub path: String,
    /// The JSON body as received.
    pub body: Value,
    /// The `X-Request-ID` header, when sent.
    pub request_id: Option<String>,
    pub at: Instant,
}

/// The call log, the counters, the accepted creates and the fault queues of one fake.
pub(crate) struct Recorder {
    /// Whether calls and creates are kept (counters are kept either way).
    keep: bool,
    log: Mutex<Log>,
    faults: Mutex<HashMap<Route, VecDeque<Fault>>>,
}

#[derive(Default)]
struct Log {
    calls: Vec<Call>,
    creates: Vec<CreateRecord>,
    by_route: HashMap<Route, usize>,
    by_path: HashMap<String, usize>,
    downloads_with_authorization: usize,
    creates_by_key: HashMap<String, usize>,
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Recorder {
    pub fn new(keep: bool) -> Recorder {
        Recorder { keep, log: Mutex::default(), faults: Mutex::default() }
    }

    /// Logs the request and takes the next fault queued for its route.
    pub fn begin(&self, request: &Request<Body>, route: Route) -> Option<Fault> {
        let headers = request.headers();
        let path = request.uri().path();
        let had_authorization = headers.contains_key(header::AUTHORIZATION);
        {
            let mut log = lock(&self.log);
            *log.by_route.entry(route).or_default() += 1;
            match log.by_path.get_mut(path) {
                Some(n) => *n += 1,
                None => {
                    log.by_path.insert(path.to_owned(), 1);
                }
            }
            if route == Route::Download && had_authorization {
                log.downloads_with_authorization += 1;
            }
            if self.keep {
                log.calls.push(Call {
                    method: request.method().to_string(),
                    path: path.to_owned(),
                    route,
                    had_authorization,
                    bearer: bearer(headers),
                    request_id: header_str(headers, "x-request-id"),
                    at: Instant::now(),
                });
            }
        }
        lock(&self.faults).get_mut(&route).and_then(VecDeque::pop_front)
    }

    pub fn push_fault(&self, route: Route, fault: Fault) {
        lock(&self.faults).entry(route).or_default().push_back(fault);
    }

    pub fn pending_faults(&self, route: Route) -> usize {
        lock(&self.faults).get(&route).map_or(0, VecDeque::len)
    }

    pub fn clear_faults(&self) {
        lock(&self.faults).clear();
    }

    pub fn record_create(&self, record: CreateRecord) {
        let mut log = lock(&self.log);
        *log.creates_by_key.entry(record.key.clone()).or_default() += 1;
        if self.keep {
            log.creates.push(record);
        }
    }

    pub fn calls(&self) -> Vec<Call> {
        lock(&self.log).calls.clone()
    }

    pub fn count(&self, route: Route) -> usize {
        lock(&self.log).by_route.get(&route).copied().unwrap_or(0)
    }

    pub fn count_path(&self, path: &str) -> usize {
        lock(&self.log).by_path.get(path).copied().unwrap_or(0)
    }

    pub fn downloads_with_authorization(&self) -> usize {
        lock(&self.log).downloads_with_authorization
    }

    pub fn creates(&self) -> Vec<CreateRecord> {
        lock(&self.log).creates.clone()
    }

    pub fn creates_by_key(&self, key: &str) -> usize {
        lock(&self.log).creates_by_key.get(key).copied().unwrap_or(0)
    }

    pub fn creates_for_prompt(&self, prompt: &str) -> usize {
        lock(&self.log).creates.iter().filter(|c| c.body.get("prompt").and_then(Value::as_str) == Some(prompt)).count()
    }

    pub fn reset_log(&self) {
        *lock(&self.log) = Log::default();
    }
}

/// The inherent methods every fake has, delegating to its `Recorder` at `self.inner.rec`
/// (`Route`, `Fault`, `Call` and `CreateRecord` must be in scope where it is used).
macro_rules! recorder_methods {
    () => {
        /// `http://127.0.0.1:PORT`, without a trailing slash.
        pub fn base_url(&self) -> String {
            format!("http://{}", self.server.addr)
        }

        /// The address the fake listens on.
        pub fn addr(&self) -> std::net::SocketAddr {
            self.server.addr
        }

        /// Queues a fault for the next request on `route` (FIFO, one per request).
        pub fn push_fault(&self, route: Route, fault: Fault) {
            self.inner.rec.push_fault(route, fault)
        }

        /// How many faults are still queued for `route`.
        pub fn pending_faults(&self, route: Route) -> usize {
            self.inner.rec.pending_faults(route)
        }

        /// Drops every queued fault.
        pub fn clear_faults(&self) {
            self.inner.rec.clear_faults()
        }

        /// Every request received so far, in order (empty when `record` is off).
        pub fn calls(&self) -> Vec<Call> {
            self.inner.rec.calls()
        }

        /// How many requests `route` received (faulted, refused and reset ones included).
        pub fn count(&self, route: Route) -> usize {
            self.inner.rec.count(route)
        }

        /// How many requests this exact path received (e.g. one create endpoint).
        pub fn count_path(&self, path: &str) -> usize {
            self.inner.rec.count_path(path)
        }

        /// How many downloads carried an `Authorization` header (should be 0).
        pub fn downloads_with_authorization(&self) -> usize {
            self.inner.rec.downloads_with_authorization()
        }

        /// The creates the fake accepted, in order, with their bodies (empty when `record`
        /// is off).
        pub fn creates(&self) -> Vec<CreateRecord> {
            self.inner.rec.creates()
        }

        /// How many accepted creates this key made.
        pub fn creates_by_key(&self, key: &str) -> usize {
            self.inner.rec.creates_by_key(key)
        }

        /// How many accepted creates had this `prompt` in their body (needs `record`).
        pub fn creates_for_prompt(&self, prompt: &str) -> usize {
            self.inner.rec.creates_for_prompt(prompt)
        }

        /// Forgets the call log, the counters and the accepted creates (tasks and faults
        /// stay).
        pub fn reset_log(&self) {
            self.inner.rec.reset_log()
        }
    };
}
pub(crate) use recorder_methods;

/// A task's timeline: queued for a while, running for a while, then terminal; or ended
/// early by `complete`, or held running while stuck.
#[derive(Clone, Debug)]
pub(crate) struct Clock {
    pub start: Instant,
    pub queued_for: Duration,
    pub run_for: Duration,
    /// When it ends (or ended); `None` while stuck.
    end: Option<Instant>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Phase {
    Queued,
    /// Running, with a progress from 1 to 99.
    Running(u8),
    /// Terminal since this instant.
    Done(Instant),
}

impl Clock {
    pub fn new(queued_for: Duration, run_for: Duration, stuck: bool) -> Clock {
        let start = Instant::now();
        Clock { start, queued_for, run_for, end: (!stuck).then_some(start + queued_for + run_for) }
    }

    pub fn phase(&self, now: Instant) -> Phase {
        if let Some(end) = self.end
            && end <= now
        {
            return Phase::Done(end);
        }
        let elapsed = now.saturating_duration_since(self.start);
        if elapsed < self.queued_for {
            return Phase::Queued;
        }
        let running = elapsed - self.queued_for;
        let span = self.run_for.as_millis().max(1);
        let progress = 1 + running.as_millis().saturating_mul(98) / span;
        Phase::Running(progress.min(99) as u8)
    }

    fn done(&self, now: Instant) -> bool {
        matches!(self.phase(now), Phase::Done(_))
    }

    /// Ends the task now, unless it has already ended.
    pub fn complete(&mut self, now: Instant) {
        if !self.done(now) {
            self.end = Some(now);
        }
    }

    /// Holds the task running (unless it has already ended), or lets it end on its own
    /// schedule again: at its planned time, or now if that has passed.
    pub fn set_stuck(&mut self, stuck: bool, now: Instant) {
        if self.done(now) {
            return;
        }
        self.end = if stuck { None } else { Some((self.start + self.queued_for + self.run_for).max(now)) };
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Signs and checks the fake's download URLs, S3-style: `/dl/{token}?expires=<unix
/// ms>&signature=<hex>`, the signature a SHA-256 over a per-fake secret, the token and
/// the expiry.
pub(crate) struct Signer {
    secret: String,
    pub ttl: Duration,
}

impl Signer {
    pub fn new(ttl: Duration) -> Signer {
        Signer { secret: uuid::Uuid::new_v4().to_string(), ttl }
    }

    fn signature(&self, token: &str, expires: u64) -> String {
        let mut hasher = Sha256::new();
        hasher.update(self.secret.as_bytes());
        hasher.update(b"\n");
        hasher.update(token.as_bytes());
        hasher.update(b"\n");
        hasher.update(expires.to_string().as_bytes());
        hex::encode(hasher.finalize())
    }

    /// A URL for `token`, valid for the TTL, or already expired.
    pub fn url(&self, base: &str, token: &str, expired: bool) -> String {
        let now = unix_ms();
        let expires = if expired { now.saturating_sub(1_000) } else { now + self.ttl.as_millis() as u64 };
        format!("{base}/dl/{token}?expires={expires}&signature={}", self.signature(token, expires))
    }

    /// Whether the query string signs `token` and has not expired; else the storage
    /// host's 403.
    pub fn check(&self, token: &str, query: Option<&str>) -> Result<(), Box<Response<Body>>> {
        let mut expires = None;
        let mut signature = None;
        for pair in query.unwrap_or("").split('&') {
            match pair.split_once('=') {
                Some(("expires", v)) => expires = v.parse::<u64>().ok(),
                Some(("signature", v)) => signature = Some(v),
                _ => {}
            }
        }
        let (Some(expires), Some(signature)) = (expires, signature) else {
            return Err(Box::new(s3_error(
                403,
                "AccessDenied",
                "Query-string authentication requires the signature and expires parameters",
            )));
        };
        if signature != self.signature(token, expires) {
            return Err(Box::new(s3_error(
                403,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided.",
            )));
        }
        if unix_ms() > expires {
            return Err(Box::new(s3_error(403, "AccessDenied", "Request has expired")));
        }
        Ok(())
    }
}

/// An S3-style XML error, as a storage host answers.
pub(crate) fn s3_error(http: u16, code: &str, message: &str) -> Response<Body> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message><RequestId>{}</RequestId></Error>",
        uuid::Uuid::new_v4().simple()
    );
    respond(http, "application/xml", Bytes::from(body))
}

/// A response with this status, content type and body.
pub(crate) fn respond(http: u16, content_type: &str, body: impl Into<Body>) -> Response<Body> {
    let mut response = Response::new(body.into());
    *response.status_mut() = StatusCode::from_u16(http).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(value) = HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}

/// A JSON response.
pub(crate) fn json(http: u16, value: &Value) -> Response<Body> {
    respond(http, "application/json", Bytes::from(value.to_string()))
}

/// Adds a header (ignored when the value is not a valid header value).
pub(crate) fn set_header(response: &mut Response<Body>, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers_mut().insert(name, value);
    }
}

pub(crate) fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// The token of `Authorization: Bearer <token>`, if that is what was sent.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_owned())
}

/// The request body, at most `limit` bytes.
pub(crate) async fn read_body(body: Body, limit: usize) -> Result<Bytes, String> {
    axum::body::to_bytes(body, limit).await.map_err(|e| format!("cannot read the body: {e}"))
}

/// A 502 from a reverse proxy in front of the provider.
pub(crate) fn proxy_502() -> Response<Body> {
    respond(
        502,
        "text/html",
        "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n",
    )
}

/// A 200 that claims JSON and is not.
pub(crate) fn bad_json() -> Response<Body> {
    respond(200, "application/json", "{\"code\": 0, \"data\": {\"task_id\": \"3f2a<<<garbage>>>")
}

/// Applies `fault` around `handle`: faults that replace the answer answer at once (with
/// `status` formatting a `Fault::Status` in the provider's envelope); the others let
/// `handle` run (it receives the fault, for those that change its answer) and then
/// delay, reset or cut the answer.
pub(crate) async fn with_fault<F, Fut>(
    fault: Option<Fault>,
    status: impl FnOnce(u16, i64, &str, Option<u64>) -> Response<Body>,
    handle: F,
) -> Reply
where
    F: FnOnce(Option<Fault>) -> Fut,
    Fut: Future<Output = Response<Body>>,
{
    match fault {
        Some(Fault::Status { http, code, message, retry_after }) => {
            let mut response = status(http, code, &message, retry_after);
            if let Some(secs) = retry_after {
                set_header(&mut response, "retry-after", &secs.to_string());
            }
            Reply::Answer(response)
        }
        Some(Fault::Raw { http, content_type, body }) => Reply::Answer(respond(http, &content_type, body)),
        Some(Fault::NonJson502) => Reply::Answer(proxy_502()),
        Some(Fault::BadJson) => Reply::Answer(bad_json()),
        Some(Fault::ResetBeforeAccept) => Reply::Reset,
        fault => {
            let response = handle(fault.clone()).await;
            match fault {
                Some(Fault::Delay(delay)) => {
                    tokio::time::sleep(delay).await;
                    Reply::Answer(response)
                }
                Some(Fault::ResetAfterAccept) => Reply::Reset,
                Some(Fault::Truncated) => Reply::Answer(truncate(response).await),
                _ => Reply::Answer(response),
            }
        }
    }
}

/// The same response, announcing its full length but sending half of it, then closing.
async fn truncate(response: Response<Body>) -> Response<Body> {
    let (mut parts, body) = response.into_parts();
    let full = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
    let half = full.slice(..full.len() / 2);
    parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(full.len().max(1)));
    let stream = futures::stream::unfold(0u8, move |step| {
        let half = half.clone();
        async move {
            match step {
                0 => Some((Ok::<Bytes, std::io::Error>(half), 1)),
                // A pause lets hyper flush what was sent before the connection dies.
                1 => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Some((Err(std::io::Error::other("fake upstream: truncated body")), 2))
                }
                _ => None,
            }
        }
    });
    Response::from_parts(parts, Body::from_stream(stream))
}

/// A download's answer: the file, or what `fault` makes of it (`Oversized`,
/// `OversizedChunked`, `WrongBody`; `Truncated` is applied later by `with_fault`).
pub(crate) fn download(file: Bytes, content_type: &str, fault: Option<&Fault>) -> Response<Body> {
    let mut response = match fault {
        Some(Fault::Oversized(n) | Fault::OversizedChunked(n)) => {
            let chunked = matches!(fault, Some(Fault::OversizedChunked(_)));
            let mut response = respond(200, content_type, padded_stream(file, *n));
            if !chunked {
                response.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(*n));
            }
            response
        }
        Some(Fault::WrongBody) => respond(
            200,
            content_type,
            "<!DOCTYPE html><html><head><title>Access portal</title></head><body>Please sign in.</body></html>",
        ),
        _ => respond(200, content_type, file),
    };
    set_header(&mut response, "x-amz-request-id", &uuid::Uuid::new_v4().simple().to_string());
    response
}

/// `file`, then zeros, `total` bytes in all, in chunks of 64 KiB (never held in memory).
fn padded_stream(file: Bytes, total: u64) -> Body {
    const CHUNK: u64 = 64 * 1024;
    let zeros = Bytes::from(vec![0u8; CHUNK as usize]);
    let stream = futures::stream::unfold(0u64, move |sent| {
        let file = file.clone();
        let zeros = zeros.clone();
        async move {
            if sent >= total {
                return None;
            }
            let chunk = if sent < file.len() as u64 {
                file.slice(sent as usize..file.len().min((sent + CHUNK).min(total) as usize))
            } else {
                zeros.slice(..(total - sent).min(CHUNK) as usize)
            };
            let next = sent + chunk.len() as u64;
            Some((Ok::<Bytes, std::io::Error>(chunk), next))
        }
    });
    Body::from_stream(stream)
}

/// `"WxH"` → `(W, H)`.
pub(crate) fn parse_size(size: &str) -> Option<(u32, u32)> {
    let (w, h) = size.split_once('x')?;
    Some((w.trim().parse().ok()?, h.trim().parse().ok()?))
}
