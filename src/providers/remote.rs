//! Cloud providers — submit and poll (Tripo, ModelScope) or one synchronous call (any
//! OpenAI-compatible image API) — behind one adapter. A provider module implements the
//! small [`RemoteApi`] (build a request, read an answer); this module makes it durable
//! and cheap:
//!
//! - **Submitted once.** The submission is marked in flight before it is sent, and the
//!   upstream id is recorded with a `processing` event before polling starts. A task run
//!   again after a crash resumes polling that id with the key that created it; one whose
//!   submission was in flight fails `upstream_outcome_unknown` rather than paying twice.
//! - **Polled together.** One loop per channel polls every running job, batched where the
//!   upstream allows, backing off per job, within the channel's request budget.
//! - **Results kept.** Output URLs are downloaded at once, without the key, streamed to a
//!   spool file under a size limit and a stall timeout, checked, and stored; an expired
//!   URL is refreshed by polling once more.
//!
//! The HTTP layer ([`http`]) decides what may be retried.

pub mod http;

use std::{
    collections::HashMap,
    io::{BufReader, Read, Seek, SeekFrom},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::{
    sync::{Notify, mpsc},
    time::Instant,
};

use self::http::{Fault, Http, HttpSettings};
use super::{
    ChannelRuntime, Job, JobContext, Outcome, Output, Provider, ProviderError, Upstream,
    form::{Field, FieldType},
};
use crate::{
    config::{ChannelConfig, JsonMap, Secret},
    input::{self, SpoolError, Upload},
    tasks::TaskKind,
};

/// What a cloud API adaptor implements: how to submit a job, read jobs' states, and
/// (where the API can) cancel one. Errors are already mapped to kiln's codes.
#[async_trait]
pub trait RemoteApi: Send + Sync + 'static {
    /// One line for the catalog.
    fn describe(&self) -> String;

    /// Checks a task's parameters before it is queued; the message is for the client.
    fn check_params(&self, kind: TaskKind, params: &Value) -> Result<(), String>;

    /// Whether a client's own key has this provider's shape (`tsk_…` for Tripo).
    fn check_key(&self, _key: &str) -> Result<(), String> {
        Ok(())
    }

    /// Sends the job: the upstream's id for it, or — for a synchronous API — its
    /// results.
    async fn submit(&self, call: &Call<'_>, job: &Job) -> Result<Submission, Failure>;

    /// Reads the states of jobs created with `call`'s key (at most
    /// [`RemoteApi::batch_size`]); a job missing from the answer is unknown upstream.
    async fn poll(&self, call: &Call<'_>, ids: &[String]) -> Result<HashMap<String, JobState>, Failure>;

    /// How many jobs one poll may ask about.
    fn batch_size(&self) -> usize {
        1
    }

    /// Asks the upstream to stop a job; best effort.
    async fn cancel(&self, _call: &Call<'_>, _id: &str) {}

    /// Whether the upstream takes work with this key (a balance check, say).
    async fn health(&self, _call: &Call<'_>) -> Result<(), String> {
        Ok(())
    }

    /// The admin console's connection test: a real, cheap call with this key, and one
    /// line on what came back ([`Provider::test_connection`]).
    async fn test_connection(&self, call: &Call<'_>) -> Result<String, String> {
        self.health(call).await.map(|()| "The provider answered.".to_owned())
    }
}

/// One upstream request's context: the channel's HTTP layer, the API key, and when the
/// task's deadline falls.
pub struct Call<'a> {
    pub http: &'a Http,
    pub key: &'a str,
    pub until: Option<Instant>,
}

impl Call<'_> {
    /// `Authorization: Bearer <key>` on a request.
    pub fn bearer(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        request.bearer_auth(self.key)
    }
}

/// What a submission achieved.
#[derive(Debug)]
pub enum Submission {
    /// The upstream took the job under this id; poll it. `request_id` is the
    /// upstream's trace id of the create, for the logs and metadata.
    Accepted { id: String, request_id: Option<String> },
    /// A synchronous API answered with the results.
    Done(Finished),
}

/// A job's state upstream.
#[derive(Debug)]
pub enum JobState {
    Pending { progress: Option<u8>, stage: &'static str },
    Succeeded(Finished),
    Failed(ProviderError),
}

/// A finished job's files and what the upstream said about it.
#[derive(Debug, Default)]
pub struct Finished {
    pub files: Vec<RemoteFile>,
    pub metadata: Value,
}

/// A file to fetch and keep.
#[derive(Debug, Clone)]
pub struct RemoteFile {
    /// Its name in kiln, e.g. `model.glb`; an image's extension is set from its bytes.
    pub name: String,
    /// `model`, `preview`, `image` …
    pub role: String,
    pub source: Source,
    pub check: Check,
}

#[derive(Debug, Clone)]
pub enum Source {
    /// A (presigned) URL, fetched without credentials.
    Url(String),
    /// Bytes the answer carried (`b64_json`).
    Inline(Bytes),
}

/// What a downloaded file must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// A binary glTF whose header length is the file's length.
    Glb,
    /// A PNG, JPEG or WebP whose header decodes.
    Image,
}

/// Why an upstream request failed, by what it means for the job.
#[derive(Debug)]
pub enum Failure {
    /// The upstream provably did not take it (unreachable, 429, 503 before acceptance).
    NotTaken(ProviderError),
    /// It may have been taken; the answer was lost (timeout or reset after sending).
    Unknown(String),
    /// The upstream answered no: a bad key, no credits, bad parameters, a policy.
    Refused(ProviderError),
}

impl Failure {
    /// A transport failure of a request, by whether it can have been taken.
    pub fn from_fault(fault: Fault) -> Self {
        match fault {
            Fault::NotSent(detail) => Failure::NotTaken(
                ProviderError::new("upstream_unavailable", "The provider could not be reached.")
                    .with_cause(anyhow::anyhow!(detail)),
            ),
            Fault::Lost(detail) => Failure::Unknown(detail),
            Fault::Deadline => Failure::Refused(ProviderError::new(
                "generation_timeout",
                "The task's deadline passed while waiting on the provider.",
            )),
        }
    }

    /// Adds the internal detail of an answer (status, upstream code, trace id): logged
    /// with the failure, never shown.
    pub fn with_cause(self, detail: anyhow::Error) -> Self {
        match self {
            Failure::NotTaken(err) => Failure::NotTaken(err.with_cause(detail)),
            Failure::Refused(err) => Failure::Refused(err.with_cause(detail)),
            Failure::Unknown(text) => Failure::Unknown(format!("{text}: {detail}")),
        }
    }

    fn into_error(self) -> ProviderError {
        match self {
            Failure::NotTaken(err) | Failure::Refused(err) => err,
            Failure::Unknown(detail) => outcome_unknown().with_cause(anyhow::anyhow!(detail)),
        }
    }
}

fn outcome_unknown() -> ProviderError {
    ProviderError::new(
        "upstream_outcome_unknown",
        "The provider's answer to the submission was lost, so it may have started (and billed) the job; \
         it was not submitted again. Check the provider's console before retrying.",
    )
}

impl ProviderError {
    /// Adds the internal cause (logged, never shown).
    pub fn with_cause(mut self, cause: anyhow::Error) -> Self {
        self.cause = Some(cause);
        self
    }
}

/// Settings every cloud channel shares, read from its `options` before the provider
/// reads its own.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RemoteOptions {
    /// The first pause between polls of a job; it grows ×1.5 with jitter …
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// … up to this.
    #[serde(with = "humantime_serde")]
    pub poll_max_interval: Option<Duration>,
    /// Upstream API requests per minute for the channel, whatever the load.
    pub requests_per_minute: u32,
    /// A whole API request.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// A whole download.
    #[serde(with = "humantime_serde")]
    pub download_timeout: Duration,
    /// The largest output file kept.
    pub max_download_bytes: u64,
    /// How often the upstream's health (a balance check, say) is probed; while it
    /// fails, the channel takes no new tasks and the catalog says it is unavailable.
    /// `0s` turns probing off.
    #[serde(with = "humantime_serde")]
    pub health_interval: Duration,
}

impl Default for RemoteOptions {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(1),
            poll_max_interval: None,
            requests_per_minute: 300,
            request_timeout: Duration::from_secs(60),
            download_timeout: Duration::from_secs(300),
            max_download_bytes: 512 * 1024 * 1024,
            health_interval: Duration::from_secs(60),
        }
    }
}

const REMOTE_KEYS: [&str; 7] = [
    "health_interval",
    "poll_interval",
    "poll_max_interval",
    "requests_per_minute",
    "request_timeout",
    "download_timeout",
    "max_download_bytes",
];

impl RemoteOptions {
    /// The shared settings as form fields, with these defaults (a provider may change
    /// some).
    pub fn fields(&self) -> Vec<Field> {
        use FieldType as T;
        let duration = |d: Duration| json!(humantime::format_duration(d).to_string());
        vec![
            Field::new(
                "poll_interval",
                T::Duration,
                duration(self.poll_interval),
                "The first pause between polls of a job; it grows to poll_max_interval.",
            ),
            Field::new(
                "poll_max_interval",
                T::Duration,
                self.poll_max_interval.map_or(Value::Null, duration),
                "The longest pause between polls (the pauses grow from poll_interval up to it).",
            ),
            Field::new(
                "requests_per_minute",
                T::Integer,
                json!(self.requests_per_minute),
                "Upstream API requests per minute for the channel, whatever the load.",
            ),
            Field::new("request_timeout", T::Duration, duration(self.request_timeout), "A whole API request."),
            Field::new(
                "download_timeout",
                T::Duration,
                duration(self.download_timeout),
                "A whole download of an output.",
            ),
            Field::new(
                "max_download_bytes",
                T::Integer,
                json!(self.max_download_bytes),
                "The largest output file kept.",
            ),
            Field::new(
                "health_interval",
                T::Duration,
                duration(self.health_interval),
                "How often the upstream's health is probed; 0s turns it off.",
            ),
        ]
    }

    /// Takes the shared settings out of a channel's options, leaving the provider's own.
    pub fn take(options: &mut JsonMap) -> anyhow::Result<Self> {
        let mut mine = JsonMap::new();
        for key in REMOTE_KEYS {
            if let Some(value) = options.remove(key) {
                mine.insert(key.to_owned(), value);
            }
        }
        Ok(serde_json::from_value(Value::Object(mine))?)
    }
}

/// A channel's API keys (its `secret`, comma-separated), used in turn. A job is
/// placed on the key that created it: cloud jobs can only be read with that key.
struct Keys {
    keys: Vec<Key>,
    turn: AtomicUsize,
}

struct Key {
    secret: Secret,
    /// What a task records as its placement: never the key itself.
    fingerprint: String,
}

impl Key {
    /// One of the channel's keys.
    fn new(secret: &str) -> Self {
        Self::named("key", secret)
    }

    /// A client's own key, for one task.
    fn client(secret: &str) -> Self {
        Self::named("client", secret)
    }

    fn named(kind: &str, secret: &str) -> Self {
        let digest = hex::encode(Sha256::digest(secret.as_bytes()));
        Self { secret: Secret::new(secret), fingerprint: format!("{kind}-{}", &digest[..12]) }
    }
}

impl Keys {
    fn parse(secret: Option<&Secret>) -> anyhow::Result<Self> {
        let keys: Vec<Key> = secret
            .map(|s| s.expose().split(',').map(str::trim).filter(|k| !k.is_empty()).map(Key::new).collect())
            .unwrap_or_default();
        if keys.is_empty() {
            anyhow::bail!("a cloud channel needs `secret`, its API key (several separated by commas)");
        }
        Ok(Self { keys, turn: AtomicUsize::new(0) })
    }

    fn next(&self) -> &Key {
        let i = self.turn.fetch_add(1, Ordering::Relaxed) % self.keys.len();
        &self.keys[i]
    }

    fn find(&self, fingerprint: &str) -> Option<&Key> {
        self.keys.iter().find(|k| k.fingerprint == fingerprint)
    }
}

/// A cloud channel: the adaptor, its keys, its HTTP layer and its poller.
pub struct RemoteProvider<A: RemoteApi> {
    api: Arc<A>,
    keys: Keys,
    http: Http,
    options: RemoteOptions,
    poller: Arc<Poller<A>>,
    runtime: OnceLock<Arc<dyn ChannelRuntime>>,
}

impl<A: RemoteApi> RemoteProvider<A> {
    /// Builds a cloud channel's provider around its adaptor, with the channel's keys
    /// (`secret`) and the shared settings taken from its options.
    pub fn new(api: A, channel: &ChannelConfig, options: RemoteOptions) -> anyhow::Result<Self> {
        let keys = Keys::parse(channel.secret.as_ref())?;
        let http = Http::new(HttpSettings {
            request_timeout: options.request_timeout,
            requests_per_minute: options.requests_per_minute,
            ..HttpSettings::default()
        })?;
        let api = Arc::new(api);
        // Where one request answers for many jobs, polling every job often costs no
        // more, so the ceiling is low; one request per job backs off further.
        let default_cap = if api.batch_size() > 1 { Duration::from_secs(2) } else { Duration::from_secs(10) };
        let cap = options.poll_max_interval.unwrap_or(default_cap).max(options.poll_interval);
        let poller = Arc::new(Poller {
            api: Arc::clone(&api),
            http: http.clone(),
            first: options.poll_interval,
            cap,
            jobs: Mutex::new(HashMap::new()),
            wake: Notify::new(),
        });
        Ok(Self { api, keys, http, options, poller, runtime: OnceLock::new() })
    }

    fn until(job: &Job) -> Option<Instant> {
        let left = (job.deadline? - chrono::Utc::now()).to_std().unwrap_or_default();
        Some(Instant::now() + left)
    }

    async fn submit(
        &self,
        job: &Job,
        key: &Key,
        ctx: &JobContext,
    ) -> Result<Result<(String, Option<String>), Finished>, ProviderError> {
        let call = Call { http: &self.http, key: key.secret.expose(), until: Self::until(job) };
        ctx.submitting(true).await.map_err(ProviderError::internal)?;
        let submitted = self.api.submit(&call, job).await;
        let runtime = self.runtime.get();
        match submitted {
            Ok(Submission::Accepted { id, request_id }) => {
                if let Some(rt) = runtime {
                    rt.submission(true);
                }
                ctx.submitted(&id, Some(&key.fingerprint)).await.map_err(ProviderError::internal)?;
                tracing::info!(task_id = %job.task_id, upstream_id = %id, request_id = ?request_id, "submitted upstream");
                Ok(Ok((id, request_id)))
            }
            Ok(Submission::Done(finished)) => {
                if let Some(rt) = runtime {
                    rt.submission(true);
                }
                Ok(Err(finished))
            }
            Err(failure) => {
                if let Failure::NotTaken(_) | Failure::Refused(_) = failure {
                    // Provably not started: a later run may submit again.
                    let _ = ctx.submitting(false).await;
                }
                if let (Failure::NotTaken(_), Some(rt)) = (&failure, runtime) {
                    rt.submission(false);
                }
                Err(failure.into_error())
            }
        }
    }

    /// Waits on the poller for the job to end, reporting its progress.
    async fn follow(&self, job: &Job, id: &str, key: &Key, ctx: &JobContext) -> Result<Finished, ProviderError> {
        let mut states = self.poller.watch(id, key);
        let mut last = None;
        loop {
            let state = tokio::select! {
                state = states.recv() => state,
                _ = ctx.cancelled().cancelled() => {
                    let call = Call { http: &self.http, key: key.secret.expose(), until: None };
                    let _ = tokio::time::timeout(Duration::from_secs(5), self.api.cancel(&call, id)).await;
                    return Err(ProviderError::new("canceled", "The task was canceled."));
                }
            };
            match state {
                Some(JobState::Pending { progress, stage }) => {
                    let now = (progress.unwrap_or(0).min(99), stage);
                    if last != Some(now) {
                        last = Some(now);
                        if let Err(err) = ctx.progress(now.0, stage).await {
                            tracing::warn!(task_id = %job.task_id, error = format!("{err:#}"), "cannot record progress");
                        }
                    }
                }
                Some(JobState::Succeeded(finished)) => return Ok(finished),
                Some(JobState::Failed(err)) => return Err(err),
                None => return Err(ProviderError::internal(anyhow::anyhow!("the channel's poller stopped"))),
            }
        }
    }

    /// Downloads, checks and stores each file; an expired URL is refreshed by polling
    /// the job once more.
    async fn keep(
        &self,
        job: &Job,
        files: &[RemoteFile],
        upstream: Option<(&str, &Key)>,
        ctx: &JobContext,
    ) -> Result<usize, ProviderError> {
        let mut kept = 0;
        for file in files {
            let output = match self.fetch(file, ctx).await {
                Ok(output) => output,
                Err(Fetch::Expired) => {
                    let fresh = match upstream {
                        Some((id, key)) => self.refresh(id, key, file).await,
                        None => None,
                    };
                    match fresh {
                        Some(fresh) => self.fetch(&fresh, ctx).await.map_err(Fetch::into_error)?,
                        None => return Err(Fetch::Expired.into_error()),
                    }
                }
                Err(err) => return Err(err.into_error()),
            };
            ctx.output(output).await.map_err(ProviderError::internal)?;
            kept += 1;
            tracing::info!(task_id = %job.task_id, name = %file.name, "upstream output stored");
        }
        Ok(kept)
    }

    async fn refresh(&self, id: &str, key: &Key, file: &RemoteFile) -> Option<RemoteFile> {
        let call = Call { http: &self.http, key: key.secret.expose(), until: None };
        let mut states = self.api.poll(&call, &[id.to_owned()]).await.ok()?;
        match states.remove(id)? {
            JobState::Succeeded(finished) => finished.files.into_iter().find(|f| f.name == file.name),
            _ => None,
        }
    }

    async fn fetch(&self, file: &RemoteFile, ctx: &JobContext) -> Result<Output, Fetch> {
        let max = self.options.max_download_bytes;
        let (upload, content_type) = match &file.source {
            Source::Inline(bytes) => {
                if bytes.len() as u64 > max {
                    return Err(Fetch::TooLarge(max));
                }
                (ctx.spool_bytes(bytes).await.map_err(Fetch::spool)?, None)
            }
            Source::Url(url) => {
                match tokio::time::timeout(self.options.download_timeout, self.download(url, max, ctx)).await {
                    Ok(result) => result?,
                    Err(_) => return Err(Fetch::Failed("the download took too long".into())),
                }
            }
        };
        let checked = check_file(upload, file.check).await?;
        let name = match checked.extension {
            Some(ext) => format!("{}.{ext}", file.name.rsplit_once('.').map_or(file.name.as_str(), |(stem, _)| stem)),
            None => file.name.clone(),
        };
        Ok(Output {
            name,
            role: file.role.clone(),
            content_type: checked.content_type.or(content_type).unwrap_or_else(|| "application/octet-stream".into()),
            file: checked.upload,
            metadata: json!({}),
        })
    }

    async fn download(&self, url: &str, max: u64, ctx: &JobContext) -> Result<(Upload, Option<String>), Fetch> {
        let response = self.http.download(url).await.map_err(|f| Fetch::Failed(f.to_string()))?;
        let status = response.status();
        if matches!(status.as_u16(), 401 | 403 | 404 | 410) {
            return Err(Fetch::Expired);
        }
        if !status.is_success() {
            return Err(Fetch::Failed(format!("the file host answered {status}")));
        }
        let declared = response.content_length();
        if declared.is_some_and(|n| n > max) {
            return Err(Fetch::TooLarge(max));
        }
        let content_type =
            response.headers().get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let mut spool = ctx.spooler(max).await.map_err(Fetch::spool)?;
        let mut body = response.bytes_stream();
        loop {
            let chunk = match tokio::time::timeout(STALL, body.next()).await {
                Ok(Some(Ok(chunk))) => chunk,
                Ok(Some(Err(err))) => return Err(Fetch::Failed(format!("the download broke off: {err}"))),
                Ok(None) => break,
                Err(_) => return Err(Fetch::Failed("the download stalled".into())),
            };
            spool.write(&chunk).await.map_err(Fetch::spool)?;
        }
        let upload = spool.finish().await.map_err(Fetch::spool)?;
        if let Some(declared) = declared
            && declared != upload.len
        {
            return Err(Fetch::Failed(format!("got {} of {declared} bytes", upload.len)));
        }
        Ok((upload, content_type))
    }
}

/// The longest pause between two chunks of a download.
const STALL: Duration = Duration::from_secs(30);

/// Why a file could not be kept.
#[derive(Debug)]
enum Fetch {
    /// The URL no longer works (401/403/404/410): presigned URLs expire.
    Expired,
    Failed(String),
    TooLarge(u64),
    Bad(String),
}

impl Fetch {
    fn spool(err: SpoolError) -> Self {
        match err {
            SpoolError::TooLarge(max) => Fetch::TooLarge(max),
            SpoolError::Io(err) => Fetch::Failed(format!("cannot spool the download: {err}")),
        }
    }

    fn into_error(self) -> ProviderError {
        match self {
            Fetch::Expired => {
                ProviderError::new("download_failed", "The provider's result link expired and could not be renewed.")
            }
            Fetch::Failed(detail) => {
                ProviderError::new("download_failed", "The provider's result could not be downloaded.")
                    .with_cause(anyhow::anyhow!(detail))
            }
            Fetch::TooLarge(max) => ProviderError::new(
                "bad_output",
                format!("The provider's result is larger than the limit of {max} bytes."),
            ),
            Fetch::Bad(detail) => {
                ProviderError::new("bad_output", format!("The provider's result is not usable: {detail}."))
            }
        }
    }
}

struct Checked {
    upload: Upload,
    extension: Option<&'static str>,
    content_type: Option<String>,
}

/// Reads a downloaded file's header: a GLB must say its own length, an image must be a
/// PNG, JPEG or WebP whose header decodes.
async fn check_file(upload: Upload, check: Check) -> Result<Checked, Fetch> {
    tokio::task::spawn_blocking(move || {
        let Upload { file, len, sha256 } = upload;
        let mut reader = BufReader::new(file);
        let checked = match check {
            Check::Glb => {
                let mut header = [0u8; 12];
                reader.read_exact(&mut header).map_err(|_| Fetch::Bad("too short for a GLB".into()))?;
                let word = |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
                if &header[..4] != b"glTF" {
                    return Err(Fetch::Bad("not a binary glTF file".into()));
                }
                if word(4) != 2 {
                    return Err(Fetch::Bad(format!("glTF version {} (2 expected)", word(4))));
                }
                if u64::from(word(8)) != len {
                    return Err(Fetch::Bad(format!("the GLB says {} bytes but has {len}", word(8))));
                }
                (None, Some("model/gltf-binary".to_owned()))
            }
            Check::Image => {
                let image = image::ImageReader::new(&mut reader)
                    .with_guessed_format()
                    .map_err(|e| Fetch::Bad(format!("unreadable image: {e}")))?;
                let Some(format) = image.format().and_then(input::accepted_format) else {
                    return Err(Fetch::Bad("not a PNG, JPEG or WebP image".into()));
                };
                image.into_dimensions().map_err(|e| Fetch::Bad(format!("the image's header does not decode: {e}")))?;
                (Some(input::extension(format)), Some(input::content_type(format).to_owned()))
            }
        };
        let mut file = reader.into_inner();
        file.seek(SeekFrom::Start(0)).map_err(|e| Fetch::Failed(e.to_string()))?;
        Ok(Checked { upload: Upload { file, len, sha256 }, extension: checked.0, content_type: checked.1 })
    })
    .await
    .map_err(|e| Fetch::Failed(e.to_string()))?
}

#[async_trait]
impl<A: RemoteApi> Provider for RemoteProvider<A> {
    fn describe(&self) -> String {
        self.api.describe()
    }

    fn check_params(&self, kind: TaskKind, params: &Value) -> Result<(), String> {
        self.api.check_params(kind, params)
    }

    fn is_cloud(&self) -> bool {
        true
    }

    fn check_client_key(&self, key: &str) -> Result<(), String> {
        self.api.check_key(key)
    }

    fn start(&self, runtime: Arc<dyn ChannelRuntime>) {
        if self.runtime.set(Arc::clone(&runtime)).is_err() {
            return;
        }
        Arc::clone(&self.poller).start(runtime.shutdown());
        if self.options.health_interval.is_zero() {
            return;
        }
        let (api, http, key, every) =
            (Arc::clone(&self.api), self.http.clone(), self.keys.keys[0].secret.clone(), self.options.health_interval);
        tokio::spawn(async move {
            let stop = runtime.shutdown();
            let mut healthy = true;
            loop {
                let call = Call { http: &http, key: key.expose(), until: None };
                let verdict = tokio::select! {
                    verdict = api.health(&call) => verdict,
                    _ = stop.cancelled() => return,
                };
                match (&verdict, healthy) {
                    (Err(why), true) => tracing::warn!(why, "the provider cannot take work; its channel rests"),
                    (Ok(()), false) => tracing::info!("the provider takes work again"),
                    _ => {}
                }
                healthy = verdict.is_ok();
                runtime.set_available(healthy);
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.cancelled() => return,
                }
            }
        });
    }

    async fn health(&self) -> Result<(), String> {
        let call = Call { http: &self.http, key: self.keys.keys[0].secret.expose(), until: None };
        self.api.health(&call).await
    }

    /// With the channel's first key, whatever the health probes say.
    async fn test_connection(&self) -> Result<String, String> {
        let call = Call { http: &self.http, key: self.keys.keys[0].secret.expose(), until: None };
        self.api.test_connection(&call).await
    }

    async fn run(&self, job: Job, ctx: JobContext) -> Result<Outcome, ProviderError> {
        // A client's own key is used for its task only, and named apart from the
        // channel's keys so a resumed job finds it again.
        let client = job.client_key.as_ref().map(|k| Key::client(k.expose()));
        let (id, key, request_id) = match &job.upstream {
            Upstream::Unknown => return Err(outcome_unknown()),
            Upstream::Submitted { id, placement } => {
                let own = client.as_ref().filter(|k| placement.as_deref() == Some(k.fingerprint.as_str()));
                let key = own.or_else(|| placement.as_deref().and_then(|p| self.keys.find(p))).ok_or_else(|| {
                    ProviderError::new(
                        "upstream_key_missing",
                        "The API key that created this job upstream is no longer configured, so the job cannot be read.",
                    )
                })?;
                tracing::info!(task_id = %job.task_id, upstream_id = %id, "resuming an upstream job");
                (id.clone(), key, None)
            }
            Upstream::None => {
                let key = client.as_ref().unwrap_or_else(|| self.keys.next());
                match self.submit(&job, key, &ctx).await? {
                    Ok((id, request_id)) => (id, key, request_id),
                    Err(finished) => {
                        let kept = self.keep(&job, &finished.files, None, &ctx).await?;
                        return Ok(Outcome::Completed { metadata: metadata(finished.metadata, None, None, kept) });
                    }
                }
            }
        };
        let finished = self.follow(&job, &id, key, &ctx).await?;
        let kept = self.keep(&job, &finished.files, Some((&id, key)), &ctx).await?;
        Ok(Outcome::Completed { metadata: metadata(finished.metadata, Some(&id), request_id, kept) })
    }
}

fn metadata(upstream: Value, id: Option<&str>, request_id: Option<String>, files: usize) -> Value {
    let mut meta = json!({ "files": files });
    if let Some(id) = id {
        meta["upstream_task_id"] = json!(id);
    }
    if let Some(request_id) = request_id {
        meta["upstream_request_id"] = json!(request_id);
    }
    if let (Some(meta), Value::Object(upstream)) = (meta.as_object_mut(), upstream) {
        meta.extend(upstream);
    }
    meta
}

/// One loop per channel that polls every job its tasks wait on: due jobs of one key go
/// out together (filled up with that key's other jobs where the API answers for many at
/// once), each job backing off from `first` to `cap` with jitter, every request within
/// the channel's budget.
struct Poller<A: RemoteApi> {
    api: Arc<A>,
    http: Http,
    first: Duration,
    cap: Duration,
    jobs: Mutex<HashMap<String, Watched>>,
    wake: Notify,
}

struct Watched {
    key: Secret,
    fingerprint: String,
    tx: mpsc::UnboundedSender<JobState>,
    next: Instant,
    pause: Duration,
}

/// Unregisters a job when its follower goes away (ended, canceled, aborted).
struct WatchGuard<A: RemoteApi> {
    poller: Arc<Poller<A>>,
    id: String,
    rx: mpsc::UnboundedReceiver<JobState>,
}

impl<A: RemoteApi> WatchGuard<A> {
    async fn recv(&mut self) -> Option<JobState> {
        self.rx.recv().await
    }
}

impl<A: RemoteApi> Drop for WatchGuard<A> {
    fn drop(&mut self) {
        if let Ok(mut jobs) = self.poller.jobs.lock() {
            jobs.remove(&self.id);
        }
    }
}

impl<A: RemoteApi> Poller<A> {
    fn watch(self: &Arc<Self>, id: &str, key: &Key) -> WatchGuard<A> {
        let (tx, rx) = mpsc::unbounded_channel();
        let watched = Watched {
            key: key.secret.clone(),
            fingerprint: key.fingerprint.clone(),
            tx,
            next: Instant::now() + self.first,
            pause: self.first,
        };
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.insert(id.to_owned(), watched);
        }
        self.wake.notify_one();
        WatchGuard { poller: Arc::clone(self), id: id.to_owned(), rx }
    }

    /// Runs the loop until `stop`; called once, from the provider's `start`.
    fn start(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        tokio::spawn(async move {
            loop {
                let next = self.jobs.lock().ok().and_then(|jobs| jobs.values().map(|w| w.next).min());
                let sleep = next.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
                tokio::select! {
                    _ = tokio::time::sleep_until(sleep) => {}
                    _ = self.wake.notified() => continue,
                    _ = stop.cancelled() => return,
                }
                for (key, ids) in self.due() {
                    self.poll(&key, ids).await;
                }
            }
        });
    }

    /// The requests to make now: per key, the due jobs, in batches, with the key's
    /// other jobs riding along to fill a batch.
    fn due(&self) -> Vec<(Secret, Vec<String>)> {
        let Ok(jobs) = self.jobs.lock() else { return Vec::new() };
        let now = Instant::now();
        let batch = self.api.batch_size().max(1);
        let mut by_key: HashMap<&str, (Secret, Vec<String>, Vec<String>)> = HashMap::new();
        for (id, watched) in jobs.iter() {
            let entry = by_key
                .entry(watched.fingerprint.as_str())
                .or_insert_with(|| (watched.key.clone(), Vec::new(), Vec::new()));
            if watched.next <= now { entry.1.push(id.clone()) } else { entry.2.push(id.clone()) }
        }
        let mut requests = Vec::new();
        for (_, (key, due, mut idle)) in by_key {
            if due.is_empty() {
                continue;
            }
            let mut chunks: Vec<Vec<String>> = due.chunks(batch).map(<[String]>::to_vec).collect();
            if let Some(last) = chunks.last_mut() {
                idle.sort_by_key(|id| jobs.get(id).map(|w| w.next));
                let room = batch - last.len();
                last.extend(idle.into_iter().take(room));
            }
            requests.extend(chunks.into_iter().map(|ids| (key.clone(), ids)));
        }
        requests
    }

    async fn poll(&self, key: &Secret, ids: Vec<String>) {
        let call = Call { http: &self.http, key: key.expose(), until: None };
        let answer = self.api.poll(&call, &ids).await;
        let Ok(mut jobs) = self.jobs.lock() else { return };
        let now = Instant::now();
        match answer {
            Ok(mut states) => {
                for id in &ids {
                    let Some(watched) = jobs.get_mut(id) else { continue };
                    let state = states.remove(id).unwrap_or_else(|| {
                        JobState::Failed(ProviderError::new(
                            "upstream_job_lost",
                            "The provider no longer knows this job.",
                        ))
                    });
                    let done = !matches!(state, JobState::Pending { .. });
                    let _ = watched.tx.send(state);
                    if done {
                        // Its follower removes it; never poll it again meanwhile.
                        watched.next = now + Duration::from_secs(3600);
                    } else {
                        watched.pause = grow(watched.pause, self.cap);
                        watched.next = now + jitter(watched.pause);
                    }
                }
            }
            // The key no longer reads these jobs (revoked, out of credit): they cannot end
            // well; say so now rather than at the deadline.
            Err(Failure::Refused(err)) => {
                let cause = err.cause.as_ref().map(|c| format!("{c:#}"));
                tracing::warn!(jobs = ids.len(), code = %err.code, cause, "the provider refused a poll; its jobs fail");
                for id in &ids {
                    if let Some(watched) = jobs.get_mut(id) {
                        let _ = watched.tx.send(JobState::Failed(ProviderError::new(&err.code, &err.message)));
                        watched.next = now + Duration::from_secs(3600);
                    }
                }
            }
            Err(failure) => {
                let pause = match &failure {
                    Failure::NotTaken(_) => self.cap,
                    _ => self.first,
                };
                tracing::warn!(jobs = ids.len(), failure = ?failure, "cannot poll the provider; trying again");
                for id in &ids {
                    if let Some(watched) = jobs.get_mut(id) {
                        watched.pause = grow(watched.pause.max(pause), self.cap);
                        watched.next = now + jitter(watched.pause);
                    }
                }
            }
        }
    }
}

fn grow(pause: Duration, cap: Duration) -> Duration {
    pause.mul_f64(1.5).min(cap)
}

/// ±20 %, so jobs started together spread out.
fn jitter(pause: Duration) -> Duration {
    pause.mul_f64(0.8 + fastrand::f64() * 0.4)
}
