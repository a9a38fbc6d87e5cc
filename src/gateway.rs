//! The core operations every API face calls: store a picture, submit a task, read it,
//! cancel it. Faces translate wire formats; the rules live here, once.

mod accounts;
mod channels;
mod usage;
mod webhooks;

pub use accounts::{BalanceChange, account_error};
pub use channels::Tested;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use chrono::Utc;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    access::{Caller, Principal, Role},
    channels::{ChannelSet, RouteError, Router, rehome},
    config::{Config, FileAccess, Secret},
    db::{Billing, Db, Enqueued, Finish, TaskFilter, Transition},
    error::{ApiError, ApiResult, Code},
    events::EventBus,
    input::{self, Upload},
    journal,
    metrics::Metrics,
    notify::Notifier,
    sealing::{LazySealer, Sealer},
    signed_urls::{Refusal, UrlSigner},
    storage::Storage,
    tasks::{Artifact, NewTask, Picture, Task, TaskEvent, TaskId, TaskKind, TaskStatus},
};

/// What a client sends as the task's input.
#[derive(Debug)]
pub enum Input {
    /// A new picture, received but not yet validated.
    Image { upload: Upload, filename: Option<String> },
    /// A picture stored earlier.
    Picture(Uuid),
    /// Only a prompt.
    Prompt,
}

/// A request for a task, as every face hands it over.
#[derive(Debug)]
pub struct Submission {
    pub input: Input,
    pub prompt: Option<String>,
    pub model: Option<String>,
    pub kind: Option<TaskKind>,
    pub params: Value,
    pub idempotency_key: Option<String>,
    /// The client's own provider key for this task (`X-Provider-Key`), where the
    /// channel allows it.
    pub client_key: Option<Secret>,
    /// Where the task's end is announced; default: the caller's token's.
    pub webhook_url: Option<String>,
}

impl Submission {
    pub fn new(input: Input) -> Self {
        Self {
            input,
            prompt: None,
            model: None,
            kind: None,
            params: json!({}),
            idempotency_key: None,
            client_key: None,
            webhook_url: None,
        }
    }
}

/// A submitted task; `replayed` when an Idempotency-Key returned an earlier one.
#[derive(Debug)]
pub struct Submitted {
    pub task: Task,
    pub replayed: bool,
    /// The queue position at admission, for a new task.
    pub position: Option<u32>,
}

/// An output to store and record.
pub struct NewOutput {
    /// File name, e.g. `model.glb` (checked with [`Artifact::valid_name`]).
    pub name: String,
    /// `model`, `preview`, `archive`, `image` …
    pub role: String,
    pub content_type: String,
    pub metadata: Value,
    pub body: OutputBody,
}

/// An output's bytes: in memory, or spooled to a file as they arrived.
pub enum OutputBody {
    Bytes(bytes::Bytes),
    Spooled(Upload),
}

/// What became of an output.
#[derive(Debug)]
pub enum Recorded {
    New(Artifact),
    /// Already recorded under this name, with the same bytes.
    Again(Artifact),
    /// Already recorded under this name, with other bytes; the first stays.
    Conflict(Artifact),
    /// The task ended before the output was recorded; the file was deleted.
    Ended,
}

/// The task status an output is recorded in.
#[derive(Clone, Copy)]
enum Stage {
    /// Made by the run: recorded with a `result` event.
    Running,
    /// Made after the task succeeded: recorded without an event.
    Succeeded,
}

/// The URLs of the files an event names, made ahead of its (synchronous) rendering.
#[derive(Debug, Default)]
pub struct FileUrls(std::collections::HashMap<String, String>);

impl FileUrls {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
}

/// Every string under a `key` field, at any depth.
fn collect_keys<'a>(value: &'a serde_json::Value, keys: &mut Vec<&'a str>) {
    match value {
        serde_json::Value::Object(map) => {
            if let Some(serde_json::Value::String(key)) = map.get("key") {
                keys.push(key);
            }
            map.values().for_each(|v| collect_keys(v, keys));
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_keys(v, keys)),
        _ => {}
    }
}

/// The core every face calls. Its parts are private: a face reads through methods that
/// take the [`Caller`], so who may see what is decided here and nowhere else. The
/// core's own background work (scheduler, callbacks, retention) reaches the parts
/// through the crate-private accessors.
pub struct Gateway {
    config: Arc<Config>,
    db: Db,
    storage: Storage,
    /// Tells this process and the others sharing the database what was committed.
    notifier: Arc<dyn Notifier>,
    /// This process among those sharing the database: the holder of its singletons.
    instance: String,
    channels: ChannelSet,
    metrics: Arc<Metrics>,
    /// Jobs running in this process, so ending a task stops its run at once.
    runs: Runs,
    /// The memory picture decodes may hold together (`upload.decode_memory`).
    decodes: DecodeBudget,
    public_url: url::Url,
    sealer: Arc<LazySealer>,
    /// Signs file URLs when `files.access = "signed"`.
    url_signer: Option<UrlSigner>,
    /// Sign-in attempts per address and username.
    signin: crate::accounts::SigninLimiter,
    /// Request rates per API token.
    rates: crate::ratelimit::TokenRates,
    /// Outbound webhooks of finished tasks, and the owners' signing secrets.
    deliveries: Arc<crate::deliveries::Deliveries>,
    secrets: Arc<webhooks::OwnerSecrets>,
    /// Conversions of 3D results into other formats made in this process.
    conversions: crate::outputs::Conversions,
}

/// The memory all picture decodes of this process may hold at once, whatever the number
/// of cores: a decode takes its estimated peak before it starts and gives it back when it
/// ends, so uploads arriving together wait for each other instead of multiplying.
#[derive(Clone)]
pub struct DecodeBudget {
    /// One permit per KiB.
    permits: Arc<tokio::sync::Semaphore>,
    total: u32,
}

impl DecodeBudget {
    pub fn new(bytes: u64) -> Self {
        keep_large_blocks_out_of_arenas();
        let total = u32::try_from(bytes / 1024).unwrap_or(u32::MAX).max(1);
        Self { permits: Arc::new(tokio::sync::Semaphore::new(total as usize)), total }
    }

    fn kib(&self, bytes: u64) -> u32 {
        u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX).clamp(1, self.total)
    }

    /// Waits until `bytes` of the budget are free and takes them. A request larger than
    /// the whole budget takes all of it rather than waiting forever.
    pub async fn reserve(&self, bytes: u64) -> ApiResult<tokio::sync::OwnedSemaphorePermit> {
        Arc::clone(&self.permits).acquire_many_owned(self.kib(bytes)).await.map_err(ApiError::internal)
    }

    /// Takes `bytes` of the budget if they are free now.
    pub fn try_reserve(&self, bytes: u64) -> Option<tokio::sync::OwnedSemaphorePermit> {
        Arc::clone(&self.permits).try_acquire_many_owned(self.kib(bytes)).ok()
    }

    /// The part of the budget not taken, in bytes.
    pub fn available(&self) -> u64 {
        self.permits.available_permits() as u64 * 1024
    }
}

/// What the header inspection left to do.
enum Decode {
    /// Decoded already (the budget was free).
    Done(ApiResult<input::ValidImage>),
    /// Waiting for the budget.
    Wait(input::Inspection),
}

/// Decodes an inspected picture while holding its part of the budget — held by the
/// decode itself, so a client that goes away mid-decode does not hand the memory back
/// before it is freed — and rewinds the file for storing. Blocking.
fn decode_held(
    upload: &Upload,
    inspection: &input::Inspection,
    _permit: tokio::sync::OwnedSemaphorePermit,
) -> ApiResult<input::ValidImage> {
    let valid = input::validate_inspected(std::io::BufReader::new(&upload.file), inspection)?;
    // Validation read the file; storing it reads it again from the start.
    std::io::Seek::rewind(&mut &upload.file).map_err(ApiError::internal)?;
    Ok(valid)
}

/// Keeps glibc's mmap threshold at its initial 128 KiB. glibc raises it (up to 32 MiB)
/// each time a large block is freed, and blocks under it are then kept, once freed, in the
/// arena of the thread that freed them. Decodes run on whichever blocking thread is free,
/// and JPEG decodes spawn IDCT threads of their own, so decodes taken one at a time from
/// the budget still left their pixels behind in a dozen arenas: 16 progressive JPEGs
/// budgeted at 128 MiB, decoded one after another, peaked at 440 MiB (308 with
/// `malloc_trim` after each; 162 with the threshold kept; see docs/benchmarks.md). With
/// it kept, a decode's buffers go back to the system when they are freed.
fn keep_large_blocks_out_of_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        // SAFETY: `mallopt` takes no pointer; it changes a tuning value of glibc's
        // allocator, which glibc allows at any time from any thread.
        ONCE.call_once(|| unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        });
    }
}

/// The cancellation tokens of the jobs running in this process.
#[derive(Default)]
pub struct Runs(Mutex<HashMap<TaskId, CancellationToken>>);

impl Runs {
    pub fn register(&self, id: TaskId) -> CancellationToken {
        let token = CancellationToken::new();
        if let Ok(mut runs) = self.0.lock() {
            runs.insert(id, token.clone());
        }
        token
    }

    pub fn unregister(&self, id: TaskId) {
        if let Ok(mut runs) = self.0.lock() {
            runs.remove(&id);
        }
    }

    /// Stops the local run of a task, if there is one.
    pub fn interrupt(&self, id: TaskId) {
        if let Ok(runs) = self.0.lock()
            && let Some(token) = runs.get(&id)
        {
            token.cancel();
        }
    }

    pub fn len(&self) -> usize {
        self.0.lock().map(|r| r.len()).unwrap_or(0)
    }

    /// The tasks whose jobs run here now.
    pub fn ids(&self) -> Vec<TaskId> {
        self.0.lock().map(|r| r.keys().copied().collect()).unwrap_or_default()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Gateway {
    pub fn new(
        config: Arc<Config>,
        db: Db,
        storage: Storage,
        channels: ChannelSet,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let public_url = config.public_url();
        let decodes = DecodeBudget::new(config.upload.decode_memory);
        let sealer = Arc::new(LazySealer::new(Arc::clone(&config)));
        let signin = crate::accounts::SigninLimiter::new(config.auth.signin_attempts);
        let secrets = Arc::new(webhooks::OwnerSecrets::new(db.clone(), Arc::clone(&sealer)));
        let deliveries = crate::deliveries::Deliveries::new(
            db.clone(),
            Arc::clone(&secrets) as Arc<dyn crate::deliveries::SecretSource>,
            crate::deliveries::DeliverySettings::from_config(&config.webhooks),
        )?;
        // Signed URLs need the key at once: every answer with a file URL signs it.
        let url_signer = match config.files.access {
            FileAccess::Public => None,
            FileAccess::Signed => {
                let loaded =
                    sealer.get().map_err(|e| anyhow::anyhow!("cannot load the sealing key to sign file URLs: {e}"))?;
                Some(UrlSigner::new(loaded, config.files.signed_ttl))
            }
        };
        let conversions = crate::outputs::Conversions::new(config.convert.clone(), Arc::clone(&metrics));
        Ok(Self {
            config,
            notifier: db.notifier(),
            instance: Uuid::now_v7().to_string(),
            db,
            storage,
            channels,
            metrics,
            runs: Runs::default(),
            decodes,
            public_url,
            sealer,
            url_signer,
            signin,
            rates: Default::default(),
            deliveries,
            secrets,
            conversions,
        })
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// This process among those sharing the database: the holder of its leases.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The conversions of 3D results made in this process (`?format=`).
    pub fn conversions(&self) -> &crate::outputs::Conversions {
        &self.conversions
    }

    pub fn decodes(&self) -> &DecodeBudget {
        &self.decodes
    }

    /// The channels and the models they serve, as they are now.
    pub fn router(&self) -> Arc<Router> {
        self.channels.current()
    }

    /// The live channel set, for the core's background work and the admin's changes.
    pub fn channels(&self) -> &ChannelSet {
        &self.channels
    }

    /// The database, for the core's background work (and tests); faces read through
    /// the methods that take a [`Caller`] — `tests/api/boundaries.rs` holds them to it.
    pub fn db(&self) -> &Db {
        &self.db
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    pub fn bus(&self) -> &Arc<EventBus> {
        self.notifier.bus()
    }

    pub fn notifier(&self) -> &Arc<dyn Notifier> {
        &self.notifier
    }

    /// Whether this process should do the singleton work `name` now: it takes or renews
    /// the lease for `ttl` (renew well within it); false when another process holds it,
    /// or when the database cannot say (the work waits for the next round).
    pub async fn singleton(&self, name: &str, ttl: std::time::Duration) -> bool {
        match self.db.hold_singleton(name, &self.instance, ttl, Utc::now()).await {
            Ok(held) => held,
            Err(err) => {
                tracing::warn!(singleton = name, error = %err, "cannot take a singleton's lease; skipping this round");
                false
            }
        }
    }

    /// The one place that tells every process what a transaction committed: its events,
    /// for their followers, and work for a channel's dispatcher. Call it after the
    /// commit, never before.
    pub fn committed(&self, events: &[TaskEvent], work: Option<&str>) {
        if !events.is_empty() {
            self.notifier.events(events);
        }
        if let Some(channel) = work {
            self.notifier.work(channel);
        }
    }

    pub fn runs(&self) -> &Runs {
        &self.runs
    }

    /// The sealing key, loaded (or made) the first time a secret is kept at rest.
    pub fn sealer(&self) -> ApiResult<&Sealer> {
        self.sealer.get().map_err(|_| ApiError::new(Code::Internal))
    }

    /// The URL handed out for a stored file: in a bucket served by redirect, a presigned
    /// URL (or the CDN's, with `storage.public_base_url`), whose expiry is its signature;
    /// otherwise kiln's own `/files/{key}`, signed when `files.access = "signed"`.
    pub async fn file_url(&self, key: &str) -> String {
        match self.storage.link(key).await {
            Ok(Some(url)) => url,
            Ok(None) => self.served_url(&format!("files/{key}")),
            // Kiln's own URL still works: it answers with a fresh redirect.
            Err(err) => {
                tracing::warn!(key, error = %err, "cannot presign a file URL; handing out kiln's own");
                self.served_url(&format!("files/{key}"))
            }
        }
    }

    /// [`Gateway::file_url`] for every `key` in a JSON payload (an event's data), for
    /// renderings that add `url`s next to keys without waiting.
    pub async fn file_urls(&self, data: &serde_json::Value) -> FileUrls {
        let mut keys = Vec::new();
        collect_keys(data, &mut keys);
        let mut urls = std::collections::HashMap::with_capacity(keys.len());
        for key in keys {
            if !urls.contains_key(key) {
                let url = self.file_url(key).await;
                urls.insert(key.to_owned(), url);
            }
        }
        FileUrls(urls)
    }

    /// Where `GET /files/{key}` sends the client instead of streaming the file: a fresh
    /// presigned (or CDN) URL with `storage.serve = "redirect"`.
    pub async fn file_redirect(&self, key: &str) -> ApiResult<Option<String>> {
        self.storage.redirect(key).await.map_err(ApiError::from)
    }

    /// The absolute URL of a path that serves a stored file (`files/…`, seed 002's
    /// `static/…`), signed when `files.access = "signed"`.
    pub fn served_url(&self, path: &str) -> String {
        let url = self.url(path);
        match &self.url_signer {
            None => url,
            Some(signer) => format!("{url}?{}", signer.query(path.trim_start_matches('/'), Utc::now().timestamp())),
        }
    }

    /// Whether a request for a served file may have it: always with public files; with
    /// signed ones, when its `expires` and `sig` are valid for the path.
    pub fn check_served(&self, path: &str, expires: Option<&str>, sig: Option<&str>) -> ApiResult<()> {
        let Some(signer) = &self.url_signer else { return Ok(()) };
        signer.verify(path.trim_start_matches('/'), expires, sig, Utc::now().timestamp()).map_err(|refusal| {
            let why = match refusal {
                Refusal::Missing => "This file URL is not signed; ask the API for the file's URL.",
                Refusal::Expired => "This file URL has expired; ask the API for a fresh one.",
                Refusal::BadSignature => "This file URL's signature does not match.",
            };
            ApiError::with_message(Code::FileUrlInvalid, why)
        })
    }

    /// An absolute URL for a path on this server.
    pub fn url(&self, path: &str) -> String {
        let base = self.public_url.as_str().trim_end_matches('/');
        format!("{base}/{}", path.trim_start_matches('/'))
    }

    /// Where uploads are spooled while they stream in.
    pub fn spool_dir(&self) -> std::path::PathBuf {
        self.config.server.data_dir.join("tmp")
    }

    /// Validates, stores and records a picture.
    pub async fn store_picture(&self, caller: &Caller, upload: Upload, filename: Option<String>) -> ApiResult<Picture> {
        let received = upload.len;
        let limits = self.config.upload.clone();
        // The header first: it refuses most bad pictures and tells what decoding costs.
        // When that much of the budget is free, the decode follows on the same blocking
        // thread; only a picture that must wait for the budget hops back to wait.
        let budget = self.decodes.clone();
        let (upload, first) = tokio::task::spawn_blocking(move || {
            let step =
                input::inspect(&mut std::io::BufReader::new(&upload.file), upload.len, &limits).map(|inspection| {
                    match budget.try_reserve(inspection.memory) {
                        Some(permit) => Decode::Done(decode_held(&upload, &inspection, permit)),
                        None => Decode::Wait(inspection),
                    }
                });
            (upload, step)
        })
        .await
        .map_err(ApiError::internal)?;
        let (upload, valid) = match first? {
            Decode::Done(valid) => (upload, valid),
            Decode::Wait(inspection) => {
                let permit = self.decodes.reserve(inspection.memory).await?;
                tokio::task::spawn_blocking(move || {
                    let valid = decode_held(&upload, &inspection, permit);
                    (upload, valid)
                })
                .await
                .map_err(ApiError::internal)?
            }
        };
        let valid = valid?;
        tracing::info!(
            bytes = received,
            format = input::format_name(valid.format),
            width = valid.original_width,
            height = valid.original_height,
            scaled = valid.scaled.is_some(),
            "picture received"
        );
        // Time-ordered, so pictures made in the same millisecond still list in order.
        let id = Uuid::now_v7();
        let key = format!("pictures/{id}.{}", valid.extension());
        let content_type = valid.content_type();
        let (size, sha256, body) = match valid.scaled {
            Some(bytes) => (bytes.len() as u64, hex::encode(Sha256::digest(&bytes)), journal::Body::Bytes(bytes)),
            None => (upload.len, upload.sha256, journal::Body::File(upload.file)),
        };
        journal::write(&self.db, &self.storage, &key, body, content_type).await?;
        let picture = Picture {
            id,
            key,
            content_type: content_type.to_owned(),
            format: input::format_name(valid.format).to_owned(),
            width: valid.width,
            height: valid.height,
            size,
            sha256,
            original_name: filename.map(|n| input::printable(&n, 255)).filter(|n| !n.is_empty()),
            created_at: Utc::now(),
            expired_at: None,
            owner_id: caller.owner(),
        };
        if let Err(err) = self.db.insert_picture(&picture).await {
            journal::abandon(&self.db, &self.storage, &picture.key).await;
            return Err(err.into());
        }
        Ok(picture)
    }

    /// Records a running task's progress and publishes its event; nothing when the task
    /// no longer runs.
    pub async fn record_progress(&self, id: TaskId, progress: u8, stage: &str) -> ApiResult<()> {
        if let Some(event) = self.db.record_progress(id, progress, stage).await? {
            self.committed(&[event], None);
        }
        Ok(())
    }

    /// Stores an output of a running task under its key ([`Artifact::key_for`]) and
    /// records it with its `result` event — whoever made it: an in-process provider or
    /// a push worker's callback.
    ///
    /// An output is recorded once per name. The same name again with the same bytes is
    /// [`Recorded::Again`] (a retried callback, a re-run that made the same file); with
    /// other bytes it is [`Recorded::Conflict`], and the first stays, file and record
    /// alike. A file stored while the task ended meanwhile is deleted again.
    pub async fn record_output(&self, task: &Task, output: NewOutput) -> ApiResult<Recorded> {
        self.record(task, output, Stage::Running).await
    }

    /// Stores and records an output made after the task succeeded (a conversion asked
    /// for later): like [`Gateway::record_output`], but it appends no event, since the
    /// task's log ended with its terminal event. [`Recorded::Ended`] when the task is no
    /// longer `succeeded`.
    pub async fn record_derived(&self, task: &Task, output: NewOutput) -> ApiResult<Recorded> {
        self.record(task, output, Stage::Succeeded).await
    }

    async fn record(&self, task: &Task, output: NewOutput, stage: Stage) -> ApiResult<Recorded> {
        if !Artifact::valid_name(&output.name) {
            return Err(ApiError::with_message(
                Code::InvalidRequest,
                "An output's name must be 1–128 characters of A–Z a–z 0–9 . - _, not starting with a dot.",
            ));
        }
        let (size, sha256, body) = match output.body {
            OutputBody::Bytes(bytes) => {
                (bytes.len() as u64, hex::encode(Sha256::digest(&bytes)), journal::Body::Bytes(bytes))
            }
            OutputBody::Spooled(upload) => (upload.len, upload.sha256, journal::Body::File(upload.file)),
        };
        let digest = sha256.clone();
        let same = move |existing: Artifact| {
            if existing.sha256 == digest { Recorded::Again(existing) } else { Recorded::Conflict(existing) }
        };
        if let Some(existing) = self.db.find_artifact(task.id, &output.name).await? {
            return Ok(same(existing));
        }
        let artifact = Artifact {
            id: Uuid::now_v7(),
            task_id: task.id,
            key: Artifact::key_for(task.id, task.kind, &output.name),
            name: output.name,
            role: output.role,
            content_type: output.content_type,
            size,
            sha256,
            metadata: output.metadata,
            created_at: Utc::now(),
            expired_at: None,
        };
        journal::write(&self.db, &self.storage, &artifact.key, body, &artifact.content_type).await?;
        let added = match stage {
            Stage::Running => self.db.add_artifact(&artifact, artifact.summary()).await.map(|event| {
                event.map(|event| {
                    self.committed(&[event], None);
                })
            }),
            Stage::Succeeded => self.db.add_derived_artifact(&artifact).await.map(|added| added.then_some(())),
        };
        match added {
            Ok(Some(())) => {
                tracing::info!(task_id = %task.id, name = %artifact.name, size, "output stored");
                Ok(Recorded::New(artifact))
            }
            // Ended meanwhile, or a concurrent report of the same name won.
            Ok(None) => {
                journal::abandon(&self.db, &self.storage, &artifact.key).await;
                match self.db.find_artifact(task.id, &artifact.name).await? {
                    Some(existing) => Ok(same(existing)),
                    None => Ok(Recorded::Ended),
                }
            }
            Err(err) => {
                journal::abandon(&self.db, &self.storage, &artifact.key).await;
                Err(err.into())
            }
        }
    }

    /// A stored picture the caller may see; another user's answers as if it did not exist.
    pub async fn picture(&self, caller: &Caller, id: Uuid) -> ApiResult<Picture> {
        self.db
            .get_picture(id)
            .await?
            .filter(|p| caller.may_access(p.owner_id))
            .ok_or_else(|| ApiError::new(Code::PictureNotFound))
    }

    /// A page of the pictures the caller may see, newest first, with their total.
    pub async fn pictures(&self, caller: &Caller, offset: u64, limit: u32) -> ApiResult<(Vec<Picture>, u64)> {
        Ok(self.db.list_pictures(caller.scope(), offset, limit).await?)
    }

    /// The picture a task was made from, while it is stored.
    pub async fn task_picture(&self, task: &Task) -> ApiResult<Option<Picture>> {
        let Some(id) = task.picture_id else { return Ok(None) };
        Ok(self.db.get_picture(id).await?.filter(|p| p.expired_at.is_none()))
    }

    /// The bytes of a stored file the caller reached through a record it may see.
    pub async fn read_file(&self, key: &str) -> ApiResult<bytes::Bytes> {
        self.storage.get(key).await.map_err(ApiError::from)
    }

    /// A file served under `/files/{key}`.
    pub async fn stored_file(&self, key: &str) -> ApiResult<crate::db::StoredFile> {
        self.db.find_file(key).await?.ok_or_else(|| ApiError::new(Code::FileNotFound))
    }

    /// A byte range of a stored file, streamed.
    pub async fn stream_file(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
    ) -> ApiResult<futures::stream::BoxStream<'static, std::io::Result<bytes::Bytes>>> {
        use futures::StreamExt;
        Ok(self.storage.stream(key, range).await?.boxed())
    }

    /// A task's events from after `after`, then live ones until it ends or `stop` fires.
    pub fn follow(
        &self,
        task: &Task,
        after: i64,
        stop: CancellationToken,
    ) -> impl futures::Stream<Item = Arc<crate::events::Published>> + Send + 'static + use<> {
        let poll = self.config.tasks.follow_poll_interval;
        crate::events::follow(self.db.clone(), Arc::clone(self.notifier.bus()), task.id, after, poll, stop)
    }

    /// Whether the database answers and the storage takes writes, for `/ready`.
    pub async fn check_stores(&self) -> (bool, bool) {
        let (db, storage) = tokio::join!(self.db.ping(), self.storage.check_writable());
        (db.is_ok(), storage.is_ok())
    }

    /// The metrics in the OpenMetrics text format, with the task counts read now.
    pub async fn render_metrics(&self) -> String {
        let counts = self.db.count_by_status().await.unwrap_or_default();
        let loads = self.db.channel_loads().await.unwrap_or_default();
        let channels: Vec<String> = self.router().channels().iter().map(|c| c.name.clone()).collect();
        self.metrics.render(&counts, &loads, &channels)
    }

    /// Queued and running tasks per channel.
    pub async fn channel_loads(&self) -> ApiResult<Vec<crate::db::ChannelLoad>> {
        Ok(self.db.channel_loads().await?)
    }

    /// Validates a submission, routes it to a channel and queues it.
    pub async fn submit(&self, caller: &Caller, sub: Submission) -> ApiResult<Submitted> {
        let takes_image = !matches!(sub.input, Input::Prompt);
        let kind = self.kind_of(&sub, takes_image)?;
        if !sub.params.is_object() {
            return Err(ApiError::with_message(Code::InvalidParams, "`params` must be a JSON object."));
        }
        let prompt = match &sub.prompt {
            Some(p) => Some(input::validate_prompt(p, self.config.upload.max_prompt_chars)?),
            None if !takes_image => return Err(ApiError::new(Code::MissingInput)),
            None => None,
        };
        let (model, mut channels) = self.router().candidates(sub.model.as_deref(), kind).map_err(route_error)?;
        if let Caller::User(Principal { token: Some(token), .. }) = caller
            && let Some(models) = &token.models
            && !models.contains(&model)
        {
            return Err(ApiError::with_message(
                Code::ModelNotAllowed,
                format!("This API token may not use `{model}`; it may use: {}.", models.join(", ")),
            ));
        }
        let billing = self.billing(caller, kind, &sub.params);
        let webhook_url = match sub.webhook_url.clone().or_else(|| match caller {
            Caller::User(Principal { token: Some(token), .. }) => token.webhook_url.clone(),
            _ => None,
        }) {
            Some(url) => {
                self.check_webhook_url(&url)?;
                Some(url)
            }
            None => None,
        };
        let client_secret = match &sub.client_key {
            None => None,
            Some(key) => {
                channels.retain(|c| c.client_keys);
                let Some(first) = channels.first() else { return Err(ApiError::new(Code::ClientKeyNotAllowed)) };
                first
                    .provider
                    .check_client_key(key.expose())
                    .map_err(|m| ApiError::with_message(Code::InvalidClientKey, m))?;
                Some(self.sealer()?.seal(key).map_err(|err| {
                    tracing::error!(error = format!("{err:#}"), "cannot seal a client key");
                    ApiError::new(Code::Internal)
                })?)
            }
        };
        // The best channel's verdict on the parameters is the client's answer; a
        // spill-over channel whose provider refuses them is skipped.
        crate::outputs::Asked::from_params(kind, &sub.params)
            .map_err(|m| ApiError::with_message(Code::InvalidParams, m))?;
        let provider_view = |channel: &crate::channels::Channel, params: &Value| {
            crate::outputs::provider_params(&channel.params_for(params), channel.provider.as_ref())
        };
        channels[0]
            .provider
            .check_params(kind, &provider_view(&channels[0], &sub.params))
            .map_err(|m| ApiError::with_message(Code::InvalidParams, m))?;
        let picture = match sub.input {
            Input::Image { upload, filename } => Some(self.store_picture(caller, upload, filename).await?),
            Input::Picture(id) => {
                let picture = self.picture(caller, id).await?;
                if picture.expired_at.is_some() {
                    return Err(ApiError::with_message(
                        Code::ArtifactExpired,
                        "This picture was deleted after the retention period.",
                    ));
                }
                Some(picture)
            }
            Input::Prompt => None,
        };
        let hash = sub.idempotency_key.as_ref().map(|_| {
            let canonical = json!({
                "kind": kind.as_str(), "model": model, "prompt": prompt,
                "picture": picture.as_ref().map(|p| &p.sha256), "params": sub.params,
            });
            hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
        });
        // Keys are the caller's own: another user's same key is another key.
        let scoped_key = sub.idempotency_key.as_deref().map(|key| match caller.owner() {
            Some(owner) => format!("{owner}:{key}"),
            None => key.to_owned(),
        });
        let idempotency = scoped_key.as_deref().zip(hash.as_deref());
        let mut waiting = 0;
        for (i, channel) in channels.iter().enumerate() {
            let params = channel.params_for(&sub.params);
            if i > 0 && channel.provider.check_params(kind, &provider_view(channel, &sub.params)).is_err() {
                continue;
            }
            let new = NewTask {
                id: TaskId::new(),
                kind,
                model: model.clone(),
                channel: channel.name.clone(),
                prompt: prompt.clone(),
                picture_id: picture.as_ref().map(|p| p.id),
                params,
                client_secret: client_secret.clone(),
                owner_id: caller.owner(),
                token_id: caller.token_id(),
                webhook_url: webhook_url.clone(),
            };
            match self.db.enqueue(&new, channel.capacity(), idempotency, &billing).await? {
                Enqueued::Created(task, event) => {
                    self.committed(std::slice::from_ref(&event), Some(&channel.name));
                    self.metrics.task_created(&channel.name);
                    tracing::info!(task_id = %task.id, model = %task.model, channel = %task.channel, "task queued");
                    // Routed before an edit took the channel away: the edit has moved its
                    // waiting tasks already, so this one is moved (or failed) as they were.
                    let now = self.channels.current();
                    if now.channel(&channel.name).is_none_or(|c| !Arc::ptr_eq(c, channel))
                        && let Err(err) =
                            rehome::rehome(&now, &self.db, self.notifier.as_ref(), &self.metrics, &channel.name).await
                    {
                        tracing::error!(task_id = %task.id, error = %err, "cannot move a task off a deleted channel");
                    }
                    let position = event.data["position"].as_u64().and_then(|p| u32::try_from(p).ok());
                    return Ok(Submitted { task, replayed: false, position });
                }
                Enqueued::Replayed(task) => return Ok(Submitted { task, replayed: true, position: None }),
                Enqueued::KeyConflict => return Err(ApiError::new(Code::IdempotencyKeyReused)),
                Enqueued::QueueFull { waiting: w } => waiting = w,
                Enqueued::InsufficientQuota { balance, price } => {
                    return Err(ApiError::with_message(
                        Code::InsufficientQuota,
                        format!("This task costs {price} credits; your balance is {balance}."),
                    )
                    .details(json!({ "balance": balance, "price": price })));
                }
                Enqueued::SpendCapReached { cap, spent, price } => {
                    return Err(ApiError::with_message(
                        Code::SpendCapReached,
                        format!("This task costs {price} credits; this token has spent {spent} of its cap of {cap}."),
                    )
                    .details(json!({ "cap": cap, "spent": spent, "price": price })));
                }
                Enqueued::TooManyActive { limit } => {
                    return Err(ApiError::with_message(
                        Code::TooManyActiveTasks,
                        format!("You may have {limit} tasks queued or running at once; wait for one to end."),
                    )
                    .retry_after(self.retry_after_seconds()));
                }
            }
        }
        self.metrics.queue_full(&channels[0].name);
        Err(ApiError::with_message(
            Code::QueueFull,
            format!("The queue for `{model}` is full ({waiting} waiting); retry later."),
        )
        .retry_after(self.retry_after_seconds()))
    }

    /// Who pays for a task and the limits its owner is held to: users pay the model's
    /// price; admins and anonymous callers (open mode) run free, and are recorded.
    fn billing(&self, caller: &Caller, kind: TaskKind, params: &Value) -> Billing {
        let Caller::User(principal) = caller else { return Billing::default() };
        let configured = Some(self.config.auth.max_active_per_user).filter(|&n| n > 0);
        let images = if kind == TaskKind::TextToImage {
            params.get("n").and_then(Value::as_u64).map_or(1, |n| u32::try_from(n).unwrap_or(u32::MAX))
        } else {
            0
        };
        Billing {
            payer: (principal.role == Role::User).then_some(principal.user_id),
            token: principal.token.as_ref().map(|t| t.id),
            images,
            max_active: principal.max_active.filter(|&n| n > 0).or(configured),
        }
    }

    fn kind_of(&self, sub: &Submission, takes_image: bool) -> ApiResult<TaskKind> {
        let model_kind = sub.model.as_deref().and_then(|m| self.channels.current().kind_of(m));
        let kind = match (sub.kind, takes_image) {
            (Some(kind), _) => kind,
            (None, true) => TaskKind::ImageTo3d,
            (None, false) => match model_kind {
                Some(kind) => kind,
                None if self.channels.current().default_model(TaskKind::TextTo3d).is_some() => TaskKind::TextTo3d,
                None => TaskKind::TextToImage,
            },
        };
        if kind.takes_image() != takes_image {
            let message = if takes_image {
                format!("{} tasks take a prompt, not a picture.", kind.as_str())
            } else {
                format!("{} tasks take a picture (field `image`).", kind.as_str())
            };
            return Err(ApiError::with_message(
                if takes_image { Code::ModelKindMismatch } else { Code::MissingInput },
                message,
            ));
        }
        Ok(kind)
    }

    /// A hint for clients refused because a queue is full.
    fn retry_after_seconds(&self) -> u64 {
        10
    }

    /// A task the caller may see; another user's answers as if it did not exist.
    pub async fn task(&self, caller: &Caller, id: TaskId) -> ApiResult<Task> {
        self.db
            .get_task(id)
            .await?
            .filter(|t| caller.may_access(t.owner_id))
            .ok_or_else(|| ApiError::new(Code::TaskNotFound))
    }

    /// A page of the tasks the caller may see, newest first.
    pub async fn tasks(&self, caller: &Caller, mut filter: TaskFilter) -> ApiResult<Vec<Task>> {
        filter.scope = caller.scope();
        Ok(self.db.list_tasks(&filter).await?)
    }

    /// The outputs of a task, to serve one as a file: stored files are reached by their
    /// URL, under `files.access`, whoever asks.
    pub async fn served_outputs(&self, id: TaskId) -> ApiResult<Vec<Artifact>> {
        Ok(self.db.list_artifacts(id).await?)
    }

    /// The outputs of a task the caller reached through [`Gateway::task`].
    pub async fn artifacts(&self, task: &Task) -> ApiResult<Vec<Artifact>> {
        Ok(self.db.list_artifacts(task.id).await?)
    }

    pub async fn queue_position(&self, task: &Task) -> ApiResult<Option<u32>> {
        if task.status != TaskStatus::Queued {
            return Ok(None);
        }
        Ok(self.db.queue_position(task.id).await?)
    }

    /// Ends a task with `finish` if its state allows it, publishes the events, and
    /// wakes the channel's dispatcher (a place may have freed up).
    pub async fn finish(&self, id: TaskId, finish: Finish) -> ApiResult<Transition> {
        let transition = self.db.finish(id, &finish, self.config.tasks.position_window).await?;
        if let Transition::Done(task, events) = &transition {
            // A place may have freed up on the task's channel.
            self.committed(events, Some(&task.channel));
            if task.webhook_url.is_some() {
                self.announce(task).await;
            }
            self.runs.interrupt(id);
            self.metrics.task_finished(task);
            match &finish {
                Finish::Failed { code, message } => {
                    tracing::warn!(task_id = %id, code = %code, message = %message, duration = ?task.generation_seconds(), "task failed")
                }
                _ => {
                    tracing::info!(task_id = %id, status = task.status.as_str(), duration = ?task.generation_seconds(), "task ended")
                }
            }
        }
        Ok(transition)
    }

    /// Cancels a queued or running task the caller may see.
    pub async fn cancel(&self, caller: &Caller, id: TaskId) -> ApiResult<Task> {
        self.task(caller, id).await?;
        match self.finish(id, Finish::Canceled).await? {
            Transition::Done(task, _) => Ok(task),
            Transition::Refused(_) => Err(ApiError::new(Code::TaskAlreadyFinished)),
            Transition::NotFound => Err(ApiError::new(Code::TaskNotFound)),
        }
    }
}

fn route_error(err: RouteError) -> ApiError {
    match err {
        RouteError::UnknownModel(model) => ApiError::with_message(
            Code::UnknownModel,
            format!("No model named `{model}`; GET /api/v1/catalog lists the models."),
        ),
        RouteError::KindMismatch { model, kind } => ApiError::with_message(
            Code::ModelKindMismatch,
            format!("The model `{model}` does not do {}.", kind.as_str()),
        ),
        RouteError::NoDefault(kind) => ApiError::with_message(
            Code::UnknownModel,
            format!("No model for {} is configured on this server.", kind.as_str()),
        ),
        RouteError::Unavailable(model) => ApiError::with_message(
            Code::ChannelUnavailable,
            format!("No provider for `{model}` is available right now; retry later."),
        )
        .retry_after(30),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::DecodeBudget;

    const KIB: u64 = 1024;

    #[tokio::test]
    async fn a_decode_waits_while_the_budget_is_taken_and_goes_on_when_it_is_given_back() {
        let budget = DecodeBudget::new(128 * KIB);
        let first = budget.reserve(100 * KIB).await.expect("free budget");
        assert_eq!(budget.available(), 28 * KIB);
        // Counted in whole KiB, rounded up.
        let small = budget.reserve(KIB + 1).await.expect("fits beside");
        assert_eq!(budget.available(), 26 * KIB);
        drop(small);

        let second = budget.reserve(64 * KIB);
        tokio::pin!(second);
        assert!(tokio::time::timeout(Duration::from_millis(100), &mut second).await.is_err(), "it waits");
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(5), second).await.expect("it goes on").expect("permit");
        assert_eq!(budget.available(), 64 * KIB);
        drop(second);

        // More than the whole budget takes all of it, rather than waiting forever.
        let all = budget.reserve(10 * 128 * KIB).await.expect("whole budget");
        assert_eq!(budget.available(), 0);
        drop(all);
        assert_eq!(budget.available(), 128 * KIB);
    }
}
