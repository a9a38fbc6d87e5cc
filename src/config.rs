//! Typed configuration in layers: compiled defaults < `kiln.toml` < `KILN_…` environment
//! variables (nested keys joined by `__`) < command-line overrides.
//!
//! Loading never stops at the first mistake: every bad key is collected and reported at
//! once, each with the key that holds it and where its value came from, so an operator
//! fixes a file in one pass instead of one restart per typo.

mod secret;
mod validate;

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, time::Duration};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use serde::{Deserialize, Serialize};

pub use secret::Secret;
pub use validate::{ConfigErrors, check_channel, parse_time_of_day as validate_time_of_day};

/// The whole effective configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub upload: UploadConfig,
    pub database: DatabaseConfig,
    pub storage: StorageConfig,
    pub tasks: TasksConfig,
    pub retention: RetentionConfig,
    pub webhooks: WebhooksConfig,
    pub log: LogConfig,
    pub auth: AuthConfig,
    /// The first admin, made at start-up when no admin exists yet
    /// (`KILN_ADMIN__USERNAME`, `KILN_ADMIN__PASSWORD`).
    pub admin: AdminConfig,
    pub files: FilesConfig,
    /// Converting 3D results into other formats (docs/formats.md).
    pub convert: ConvertConfig,
    /// Provider instances. The embedded default is one channel, the `relief` CPU engine
    /// ([`ChannelConfig::relief`]). A `channels` list in a file or the environment
    /// replaces that default as a whole; it is not added to it.
    pub channels: Vec<ChannelConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address and port to listen on.
    pub bind: SocketAddr,
    /// Base URL clients use to reach this server; links and file URLs are built from it.
    /// Empty: derived from `bind`.
    pub public_url: Option<url::Url>,
    /// Origins allowed by CORS. Empty: same-origin only. `["*"]`: any origin.
    pub cors_origins: Vec<String>,
    /// Directory for the embedded defaults (SQLite file, local storage).
    pub data_dir: PathBuf,
    /// How long in-flight requests and tasks get to finish after SIGTERM/SIGINT.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// How long a client may take to send a request's headers, counted from the
    /// connection's start or from the first byte of a later request.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// How long a keep-alive connection may wait for its next request.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How long a request body may go without a byte arriving; a slow upload that keeps
    /// making progress is never cut.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// Open connections at most; one more is answered 503 and closed. Lowered at start-up
    /// to what the process's open-file limit allows.
    pub max_connections: u32,
    /// Connections the kernel may queue before kiln accepts them (the `listen` backlog;
    /// the kernel caps it at `net.core.somaxconn`).
    pub listen_backlog: u32,
    /// Base64 of 32 bytes that seal secrets kept at rest (a client's own provider key
    /// while its task runs). Empty: `{data_dir}/sealing.key`, made on first use. Give
    /// every replica sharing a database the same key.
    pub sealing_key: Option<Secret>,
    /// Reverse proxies (addresses or CIDR ranges) whose `X-Forwarded-For` is believed:
    /// a request from one of them is taken to come from the address it names, for the
    /// sign-in limits and the audit log. Empty: the connection's own address, always.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UploadConfig {
    /// Largest accepted image file, in bytes.
    pub max_bytes: u64,
    /// Accepted image formats, detected from the bytes.
    pub formats: Vec<ImageFormatName>,
    /// Largest accepted width × height, checked from the header before decoding.
    pub max_pixels: u64,
    /// Inputs whose longest side exceeds this are scaled down to it.
    pub max_side: u32,
    /// Longest accepted prompt, in characters.
    pub max_prompt_chars: usize,
    /// Memory, in bytes, that all picture decodes of this process may hold together:
    /// each decode takes its estimated peak from this budget first, and waits while the
    /// budget is taken, so concurrent uploads queue instead of multiplying.
    pub decode_memory: u64,
    /// Most memory, in bytes, one picture's decode may need (estimated from its header);
    /// a picture that would need more is refused before decoding. At most `decode_memory`.
    pub max_decode_memory: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormatName {
    Jpeg,
    Png,
    Webp,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite://path` (the default, under `data_dir`). Empty: `{data_dir}/kiln.db`.
    pub url: Option<Secret>,
    /// Connections in the pool.
    pub max_connections: u32,
}

/// Where stored files live (docs/storage.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, tag = "type", rename_all = "lowercase")]
pub enum StorageConfig {
    /// Local directory. Empty `root`: `{data_dir}/files`.
    Fs {
        #[serde(default)]
        root: Option<PathBuf>,
    },
    /// A bucket of any S3-compatible server (AWS, MinIO, Garage, Ceph).
    S3(ObjectStorageConfig),
    /// A Tencent COS bucket, through COS's S3 interface: `bucket` is `name-APPID`, the
    /// endpoint defaults to the region's, and addressing is always virtual-host.
    Cos(ObjectStorageConfig),
}

/// An object storage bucket (`type = "s3"` or `"cos"`). Every key has a default so that
/// a missing one is reported by name, with the others, by the validation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ObjectStorageConfig {
    /// The bucket; for COS `name-APPID`, e.g. `examplebucket-1250000000`.
    pub bucket: String,
    /// The server's URL without the bucket. Empty: AWS's regional endpoint for `s3`,
    /// `https://cos.{region}.myqcloud.com` for `cos`.
    pub endpoint: Option<url::Url>,
    /// The signing region. Empty: `us-east-1` for `s3`; required for `cos`.
    pub region: Option<String>,
    /// The access key id (COS: the SecretId).
    pub access_key_id: Option<String>,
    /// The secret key (COS: the SecretKey).
    pub secret_access_key: Option<Secret>,
    /// A temporary credential's session token (STS).
    pub session_token: Option<Secret>,
    /// A prefix for every key kiln writes, e.g. `kiln/`.
    pub root: Option<String>,
    /// Address the bucket as `bucket.endpoint` rather than `endpoint/bucket`. Always on
    /// for COS, whose buckets made since 2024 refuse path style.
    pub virtual_host_style: Option<bool>,
    /// How long a presigned URL works.
    #[serde(with = "humantime_serde")]
    pub presign_ttl: Duration,
    /// A CDN or custom domain that serves the bucket: file URLs become this URL and the
    /// object's key instead of presigned ones.
    pub public_base_url: Option<url::Url>,
    /// How `/files/{key}` answers, and which URLs kiln hands out.
    pub serve: ServeMode,
}

/// How kiln hands out files kept in object storage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServeMode {
    /// File URLs point at the bucket (presigned, or `public_base_url`); `/files/{key}`
    /// answers 302 to such a URL. The bytes never pass through kiln.
    #[default]
    Redirect,
    /// File URLs are kiln's own `/files/{key}` (signed when `files.access = "signed"`),
    /// and kiln streams the bytes from the bucket, with `Range` and `ETag`.
    Proxy,
}

/// SigV4 presigned URLs live at most a week.
pub const MAX_PRESIGN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TasksConfig {
    /// How long a task may run before it fails with `generation_timeout`. Time spent
    /// waiting in the queue does not count.
    #[serde(with = "humantime_serde")]
    pub deadline: Duration,
    /// How long a claim on a running task lasts without a heartbeat before another
    /// dispatcher may take it over.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// How often dispatchers look for work when no wake-up arrives.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How long an event stream waits without hearing of its task before it re-reads the
    /// task's log: what a lost notification costs at most.
    #[serde(with = "humantime_serde")]
    pub follow_poll_interval: Duration,
    /// Queue positions are re-announced to the first this many waiting tasks of a channel.
    pub position_window: u32,
    /// Positions are re-announced at most this often per channel: when tasks start faster
    /// than that, waiting clients get the newest position instead of every step.
    #[serde(with = "humantime_serde")]
    pub position_interval: Duration,
    /// The model used when a request names none, per task kind.
    pub default_models: BTreeMap<String, String>,
}

/// Ceilings for converting a 3D result into another format (`?format=`): how many run at
/// once, the memory and time each may take, and the largest input and output.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConvertConfig {
    /// Conversions at once in this process; each takes one core.
    pub concurrency: u32,
    /// Bytes all conversions of this process may hold together, by their estimate made
    /// before they start; a conversion waits while the budget is taken.
    pub memory: u64,
    /// Most bytes one conversion is estimated to need; a model needing more is refused
    /// with `model_too_large`. At most `memory`.
    pub max_memory: u64,
    /// One conversion's time ceiling; over it, `model_too_large`.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// How long `?format=` waits for a conversion before answering 202.
    #[serde(with = "humantime_serde")]
    pub wait: Duration,
    /// Conversions waiting for a place in this process beyond `concurrency`; one more is
    /// refused with 503 `converter_busy`.
    pub max_waiting: u32,
    /// Largest GLB converted, in bytes.
    pub max_input: u64,
    /// Most triangles of a model converted, counting every node that shows a mesh.
    pub max_triangles: u64,
    /// Longest texture side read, in pixels.
    pub max_texture_side: u32,
    /// Largest file written, in bytes.
    pub max_output: u64,
    /// Most triangles written into a USDZ file; a larger model is simplified to this
    /// first (AR on phones slows down past it).
    pub usdz_max_triangles: u64,
    /// Longest texture side in a USDZ file; larger textures are scaled down.
    pub usdz_texture_side: u32,
    /// Make each 3D result's preview picture and compressed GLB (and its core GLB when
    /// the model needs extensions) when the task finishes, before it is `succeeded`.
    /// Off: only what `params.formats` and `params.max_triangles` ask for.
    pub on_finish: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    pub enabled: bool,
    /// Stored inputs and outputs older than this are deleted.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Local time of day (HH:MM) at which the daily cleanup runs.
    pub run_at: String,
}

/// Who may use the API, and the limits every user shares.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `open`: callers without credentials may use the API (one person on a trusted
    /// network); `tokens`: every API call needs an API token or a page session.
    pub mode: AuthMode,
    /// How long a console sign-in lasts.
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
    /// Sign-in attempts per minute for one address and username.
    pub signin_attempts: u32,
    /// Tasks one user may have queued and running at once (0: no limit); a user's own
    /// setting wins.
    pub max_active_per_user: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    Open,
    Tokens,
}

/// The first admin's credentials; used only while the database has no admin.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub username: Option<String>,
    pub password: Option<Secret>,
}

/// How stored files are handed out.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilesConfig {
    /// `public`: a file's URL works for anyone who has it; `signed`: URLs carry an
    /// expiry and an HMAC, and a URL without a valid one is refused.
    pub access: FileAccess,
    /// How long a signed URL works.
    #[serde(with = "humantime_serde")]
    pub signed_ttl: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileAccess {
    Public,
    Signed,
}

/// Outbound webhooks: notifications of finished tasks ([`crate::deliveries`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// Allow destinations in loopback, private, link-local, shared (CGNAT) and
    /// unique-local ranges. The cloud metadata address stays refused.
    pub allow_private: bool,
    /// How long a delivery is retried after its task ended.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// How long one attempt may take: connection, request and answer.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// How long a finished delivery (delivered or given up) and its attempts are kept
    /// for its owner to see; at least `max_age`.
    #[serde(with = "humantime_serde")]
    pub keep: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter, e.g. `info` or `kiln=debug,sqlx=warn`.
    pub level: String,
    /// Console format.
    pub format: LogFormat,
    /// Directory for the daily-rotated log file. Empty string: no file.
    pub dir: PathBuf,
    /// How many daily files are kept.
    pub keep_files: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// One configured provider instance. Also the body of the admin's channel routes,
/// hence its schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    /// Unique name, used in logs, metrics and the catalog.
    pub name: String,
    /// Provider type, e.g. `relief`.
    #[serde(rename = "type")]
    pub provider: String,
    /// Models this channel serves.
    pub models: Vec<ModelConfig>,
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Tasks run at once on this channel.
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: u32,
    /// Tasks allowed to wait; one more is refused with 503 and `Retry-After`.
    #[serde(default = "default_max_queue")]
    pub max_queue: u32,
    /// Higher wins when several channels serve one model.
    #[serde(default)]
    pub priority: i32,
    /// Among channels of equal priority, each takes new tasks in proportion to its
    /// weight (0: only when the others are full or cooling down).
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// How long a task may run on this channel; default `tasks.deadline`. A cloud 3D
    /// model can take minutes, an image seconds.
    #[serde(default, with = "humantime_serde")]
    #[schema(value_type = Option<String>, example = "10m")]
    pub deadline: Option<Duration>,
    /// Parameters filled in when a request leaves them out.
    #[serde(default, deserialize_with = "json_map")]
    #[schema(value_type = Object)]
    pub defaults: JsonMap,
    /// Parameters forced whatever the request says.
    #[serde(default, deserialize_with = "json_map")]
    #[schema(value_type = Object)]
    pub overrides: JsonMap,
    /// Whether a client may send its own provider key for a request
    /// (`X-Provider-Key`), used for that task only.
    #[serde(default)]
    pub client_keys: bool,
    /// The circuit breaker: after `failures` submissions in a row that the upstream did
    /// not take, the channel gets no new tasks for `cooldown`.
    #[serde(default)]
    pub breaker: BreakerConfig,
    /// The channel's credential: the shared signing secret of push workers, an API key
    /// of a cloud provider. Masked wherever the configuration is printed.
    #[serde(default)]
    #[schema(value_type = Option<String>, format = Password)]
    pub secret: Option<Secret>,
    /// Provider-specific settings, as JSON: the file's TOML tables are read into it, and
    /// a channel stored in the database keeps them as JSON, so no provider depends on
    /// the format a channel came from.
    #[serde(default, deserialize_with = "json_map")]
    #[schema(value_type = Object)]
    pub options: JsonMap,
}

/// A channel's `options`, `defaults` and `overrides`: a JSON object.
pub type JsonMap = serde_json::Map<String, serde_json::Value>;

/// The key under which the `toml` crate hands a date or time to a type that is not its
/// own `Datetime` (as a one-key table).
const TOML_DATETIME: &str = "$__toml_private_datetime";

/// Reads a JSON object from any format. TOML's dates and times have no JSON type; they
/// arrive as the `toml` crate's one-key wrapper and are kept as their text (RFC 3339).
fn json_map<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<JsonMap, D::Error> {
    fn plain(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                if map.len() == 1
                    && let Some(serde_json::Value::String(text)) = map.get(TOML_DATETIME)
                {
                    *value = serde_json::Value::String(text.clone());
                    return;
                }
                map.values_mut().for_each(plain);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(plain),
            _ => {}
        }
    }
    let mut map = JsonMap::deserialize(deserializer)?;
    map.values_mut().for_each(plain);
    Ok(map)
}

fn default_weight() -> u32 {
    1
}

/// When a channel whose submissions keep failing is rested.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Failures in a row that open the breaker; 0 turns it off.
    pub failures: u32,
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String, example = "30s")]
    pub cooldown: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self { failures: 3, cooldown: Duration::from_secs(30) }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The name clients ask for.
    pub name: String,
    /// `image_to_3d`, `text_to_3d` or `text_to_image`.
    pub kind: String,
    /// The provider's own name for the model. Empty: same as `name`.
    #[serde(default)]
    pub upstream: Option<String>,
    /// One line for the catalog.
    #[serde(default)]
    pub description: Option<String>,
}

impl ChannelConfig {
    /// The embedded default channel: the in-process `relief` engine serving the model
    /// `relief` for `image_to_3d`, so a server started without configuration can turn a
    /// picture into a model.
    ///
    /// A relief run keeps one core busy for its whole length, and nothing else, so the
    /// channel runs as many at once as the machine has cores (counted at start-up); more
    /// would only make each slower. The queue holds 32 more: at a second or less per
    /// run, that is a wait of seconds, not minutes.
    pub fn relief() -> Self {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        Self {
            name: "relief".to_owned(),
            provider: "relief".to_owned(),
            models: vec![ModelConfig {
                name: "relief".to_owned(),
                kind: "image_to_3d".to_owned(),
                upstream: None,
                description: None,
            }],
            enabled: true,
            max_concurrency: u32::try_from(cores).unwrap_or(u32::MAX).max(1),
            max_queue: RELIEF_MAX_QUEUE,
            priority: 0,
            weight: default_weight(),
            deadline: None,
            defaults: JsonMap::new(),
            overrides: JsonMap::new(),
            client_keys: false,
            breaker: BreakerConfig::default(),
            secret: None,
            options: JsonMap::new(),
        }
    }
}

/// Tasks the default relief channel lets wait.
const RELIEF_MAX_QUEUE: u32 = 32;

fn default_true() -> bool {
    true
}
fn default_max_concurrency() -> u32 {
    1
}
fn default_max_queue() -> u32 {
    5
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig::default(),
            upload: UploadConfig::default(),
            database: DatabaseConfig::default(),
            storage: StorageConfig::Fs { root: None },
            tasks: TasksConfig::default(),
            retention: RetentionConfig::default(),
            webhooks: WebhooksConfig::default(),
            log: LogConfig::default(),
            auth: AuthConfig::default(),
            admin: AdminConfig::default(),
            files: FilesConfig::default(),
            convert: ConvertConfig::default(),
            channels: vec![ChannelConfig::relief()],
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_url: None,
            cors_origins: Vec::new(),
            data_dir: PathBuf::from("./data"),
            shutdown_grace: Duration::from_secs(30),
            header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            listen_backlog: 1024,
            sealing_key: None,
            trusted_proxies: Vec::new(),
        }
    }
}

/// The default decode budget, and the default cap for one picture: it keeps 16 worst-case
/// uploads under 256 MiB of resident memory, holds every PNG and baseline JPEG that
/// `max_pixels` allows, and a 12-megapixel progressive photo (see docs/configuration.md).
const DECODE_MEMORY: u64 = 160 * 1024 * 1024;

impl Default for UploadConfig {
    fn default() -> Self {
        Self {
            max_bytes: 10 * 1024 * 1024,
            formats: vec![ImageFormatName::Jpeg, ImageFormatName::Png, ImageFormatName::Webp],
            max_pixels: 40_000_000,
            max_side: 2048,
            max_prompt_chars: 1024,
            decode_memory: DECODE_MEMORY,
            max_decode_memory: DECODE_MEMORY,
        }
    }
}

impl Default for ObjectStorageConfig {
    fn default() -> Self {
        Self {
            bucket: String::new(),
            endpoint: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            root: None,
            virtual_host_style: None,
            presign_ttl: Duration::from_secs(3600),
            public_base_url: None,
            serve: ServeMode::default(),
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self { url: None, max_connections: 8 }
    }
}

impl Default for TasksConfig {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(180),
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            follow_poll_interval: Duration::from_secs(10),
            position_window: 100,
            position_interval: Duration::from_millis(200),
            default_models: BTreeMap::new(),
        }
    }
}

impl Default for ConvertConfig {
    fn default() -> Self {
        const MIB: u64 = 1024 * 1024;
        Self {
            concurrency: 1,
            memory: 1024 * MIB,
            max_memory: 768 * MIB,
            timeout: Duration::from_secs(120),
            wait: Duration::from_secs(20),
            max_waiting: 8,
            max_input: 256 * MIB,
            max_triangles: 5_000_000,
            max_texture_side: 8192,
            max_output: 1024 * MIB,
            usdz_max_triangles: 250_000,
            usdz_texture_side: 2048,
            on_finish: true,
        }
    }
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self { enabled: true, max_age: Duration::from_secs(48 * 3600), run_at: "03:00".to_owned() }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            mode: AuthMode::Open,
            session_ttl: Duration::from_secs(7 * 24 * 3600),
            signin_attempts: 5,
            max_active_per_user: 0,
        }
    }
}

impl Default for FilesConfig {
    fn default() -> Self {
        Self { access: FileAccess::Public, signed_ttl: Duration::from_secs(3600) }
    }
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            allow_private: false,
            max_age: Duration::from_secs(24 * 3600),
            timeout: Duration::from_secs(10),
            keep: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { level: "info".to_owned(), format: LogFormat::Text, dir: PathBuf::from("./logs"), keep_files: 7 }
    }
}

/// Command-line values that win over every other layer.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub bind: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
}

/// Whether an environment variable is a configuration key. Every key lives in a section
/// (`KILN_SERVER__BIND`), so a `KILN_` variable without `__` is something else —
/// `KILN_CONFIG`, `KILN_LOG`, `KILN_SERVER` (the `generate` client's server),
/// `KILN_WORKER_SECRET` — and must not stop the server from starting. A misspelt key
/// inside a section is still reported.
pub fn is_config_variable(name: &str) -> bool {
    name.strip_prefix("KILN_").is_some_and(|rest| rest.contains("__"))
}

/// Where the configuration file is looked for.
pub fn config_path(flag: Option<PathBuf>) -> Option<PathBuf> {
    flag.or_else(|| std::env::var_os("KILN_CONFIG").map(PathBuf::from)).or_else(|| {
        let default = PathBuf::from("kiln.toml");
        default.exists().then_some(default)
    })
}

impl Config {
    /// Loads the layers and validates the result, reporting every problem at once.
    pub fn load(file: Option<&std::path::Path>, overrides: &Overrides) -> Result<Self, ConfigErrors> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::load_from(file, env, overrides)
    }

    /// Like [`Config::load`], with the environment given explicitly (for tests).
    pub fn load_from(
        file: Option<&std::path::Path>,
        env: Vec<(String, String)>,
        overrides: &Overrides,
    ) -> Result<Self, ConfigErrors> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        let mut problems = ConfigErrors::default();
        if let Some(path) = file {
            match std::fs::read_to_string(path) {
                Ok(text) => figment = figment.merge(Toml::string(&text)),
                Err(err) => problems.push("--config", format!("cannot read {}: {err}", path.display())),
            }
        }
        let env_map: BTreeMap<String, String> = env.into_iter().filter(|(k, _)| is_config_variable(k)).collect();
        let env_for_figment = env_map.clone();
        figment = figment.merge(
            Env::prefixed("KILN_")
                .filter(move |key| env_for_figment.contains_key(&format!("KILN_{}", key.as_str().to_uppercase())))
                .split("__")
                .map(|key| key.as_str().to_lowercase().into()),
        );
        if let Some(bind) = overrides.bind {
            figment = figment.merge(Serialized::default("server.bind", bind));
        }
        if let Some(dir) = &overrides.data_dir {
            figment = figment.merge(Serialized::default("server.data_dir", dir));
        }
        validate::extract(figment, &env_map, problems)
    }

    /// The base URL used to build absolute links.
    pub fn public_url(&self) -> url::Url {
        match &self.server.public_url {
            Some(url) => url.clone(),
            None => {
                let host = match self.server.bind.ip() {
                    ip if ip.is_unspecified() => "127.0.0.1".to_owned(),
                    std::net::IpAddr::V6(ip) => format!("[{ip}]"),
                    ip => ip.to_string(),
                };
                url::Url::parse(&format!("http://{host}:{}/", self.server.bind.port()))
                    .unwrap_or_else(|_| url::Url::parse("http://127.0.0.1:8080/").expect("static URL parses"))
            }
        }
    }

    /// The database URL, defaulting to a SQLite file under the data directory.
    pub fn database_url(&self) -> String {
        match &self.database.url {
            Some(url) => url.expose().to_owned(),
            None => format!("sqlite://{}", self.server.data_dir.join("kiln.db").display()),
        }
    }

    /// The local storage root, when storage is local.
    pub fn storage_root(&self) -> Option<PathBuf> {
        match &self.storage {
            StorageConfig::Fs { root } => Some(root.clone().unwrap_or_else(|| self.server.data_dir.join("files"))),
            StorageConfig::S3(_) | StorageConfig::Cos(_) => None,
        }
    }

    /// The effective configuration as TOML with every secret masked.
    pub fn to_masked_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|err| format!("# cannot render configuration: {err}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(file: Option<&str>) -> Config {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kiln.toml");
        if let Some(text) = file {
            std::fs::write(&path, text).expect("write config");
        }
        Config::load_from(file.map(|_| path.as_path()), Vec::new(), &Overrides::default()).expect("valid config")
    }

    #[test]
    fn the_default_is_one_relief_channel() {
        let config = load(None);
        assert_eq!(config.channels.len(), 1);
        let relief = &config.channels[0];
        assert_eq!((relief.name.as_str(), relief.provider.as_str()), ("relief", "relief"));
        assert_eq!(relief.models[0].name, "relief");
        assert_eq!(relief.models[0].kind, "image_to_3d");
        assert!(relief.max_concurrency >= 1);
        assert_eq!(relief.max_queue, RELIEF_MAX_QUEUE);
    }

    #[test]
    fn the_decode_budget_must_hold_the_per_picture_cap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kiln.toml");
        std::fs::write(&path, "[upload]\ndecode_memory = 33554432\nmax_decode_memory = 67108864\n").expect("write");
        let err = Config::load_from(Some(&path), Vec::new(), &Overrides::default()).expect_err("cap over budget");
        assert!(err.to_string().contains("upload.max_decode_memory"), "{err}");
        std::fs::write(&path, "[upload]\ndecode_memory = 1024\nmax_decode_memory = 1024\n").expect("write");
        let err = Config::load_from(Some(&path), Vec::new(), &Overrides::default()).expect_err("tiny budget");
        assert!(err.to_string().contains("upload.decode_memory"), "{err}");
        let config = load(Some("[upload]\ndecode_memory = 268435456\nmax_decode_memory = 100000000\n"));
        assert_eq!((config.upload.decode_memory, config.upload.max_decode_memory), (268435456, 100000000));
    }

    #[test]
    fn webhooks_default_to_public_destinations_for_a_day() {
        let config = load(None);
        assert!(!config.webhooks.allow_private);
        assert_eq!(config.webhooks.max_age, Duration::from_secs(24 * 3600));
        assert_eq!(config.webhooks.timeout, Duration::from_secs(10));
        let config = load(Some("[webhooks]\nallow_private = true\nmax_age = \"2h\"\ntimeout = \"3s\"\n"));
        assert!(config.webhooks.allow_private);
        assert_eq!(
            (config.webhooks.max_age, config.webhooks.timeout),
            (Duration::from_secs(7200), Duration::from_secs(3))
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kiln.toml");
        std::fs::write(&path, "[webhooks]\nmax_age = \"0s\"\ntimeout = \"10m\"\n").expect("write");
        let err = Config::load_from(Some(&path), Vec::new(), &Overrides::default()).expect_err("out of range");
        assert!(err.to_string().contains("webhooks.max_age"), "{err}");
        assert!(err.to_string().contains("webhooks.timeout"), "{err}");
        std::fs::write(&path, "[webhooks]\nmax_age = \"2d\"\nkeep = \"1d\"\n").expect("write");
        let err = Config::load_from(Some(&path), Vec::new(), &Overrides::default()).expect_err("keep < max_age");
        assert!(err.to_string().contains("webhooks.keep"), "{err}");
        assert_eq!(load(None).webhooks.keep, Duration::from_secs(30 * 24 * 3600));
    }

    #[test]
    fn channel_options_from_toml_are_json_values() {
        let config = load(Some(
            "[[channels]]\nname = \"c\"\ntype = \"echo\"\nmodels = [{ name = \"m\", kind = \"image_to_3d\" }]\n\
             defaults = { steps = 3 }\n\
             [channels.options]\nbig = 9007199254740993\nnegative = -7\nratio = 0.25\nflag = true\n\
             at = 2026-03-01T10:00:00Z\nday = 2026-03-01\nlist = [1, \"two\"]\n\
             nested = { url = \"http://x\", slots = 2 }\n",
        ));
        let options = serde_json::Value::Object(config.channels[0].options.clone());
        assert_eq!(
            options,
            serde_json::json!({
                // Integers stay integers, exactly (beyond f64's 2^53 too).
                "big": 9007199254740993_i64, "negative": -7, "ratio": 0.25, "flag": true,
                // TOML's dates and times have no JSON type: they become their text.
                "at": "2026-03-01T10:00:00Z", "day": "2026-03-01",
                "list": [1, "two"], "nested": { "url": "http://x", "slots": 2 },
            })
        );
        assert!(options["big"].is_i64() && options["ratio"].is_f64());
        assert_eq!(serde_json::Value::Object(config.channels[0].defaults.clone()), serde_json::json!({ "steps": 3 }));
    }

    #[test]
    fn a_channel_goes_to_json_and_back_without_its_secret() {
        let text = "name = \"t\"\ntype = \"tripo\"\nsecret = \"tsk_0123456789abcdef\"\ndeadline = \"5m\"\n\
                    models = [{ name = \"m\", kind = \"text_to_3d\", upstream = \"v3\" }]\n\
                    breaker = { failures = 5, cooldown = \"1m\" }\n[options]\nregion = \"cn\"\npoll_interval = \"2s\"\n";
        let channel: ChannelConfig = toml::from_str(text).expect("channel");
        let json = serde_json::to_string(&channel).expect("to json");
        assert!(!json.contains("tsk_0123456789abcdef"), "the secret never leaves in the clear: {json}");
        let back: ChannelConfig = serde_json::from_str(&json).expect("from json");
        let without_secret = ChannelConfig { secret: None, ..channel.clone() };
        assert_eq!(ChannelConfig { secret: None, ..back }, without_secret, "all else survives the round trip");
        assert_eq!(without_secret.deadline, Some(Duration::from_secs(300)));
        assert_eq!(without_secret.breaker, BreakerConfig { failures: 5, cooldown: Duration::from_secs(60) });
    }

    #[test]
    fn a_channels_rules_report_under_the_keys_the_caller_gives() {
        let channel: ChannelConfig = toml::from_str(
            "name = \" \"\ntype = \"x\"\nmax_concurrency = 0\nmodels = [{ name = \"m\", kind = \"video\" }]\n",
        )
        .expect("channel");
        let mut bare = ConfigErrors::default();
        check_channel(&channel, &|field| field.to_owned(), &mut bare);
        let keys: Vec<&str> = bare.problems().iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["name", "max_concurrency", "models[0].kind"]);
        let mut prefixed = ConfigErrors::default();
        check_channel(&channel, &|field| format!("channels[3].{field}"), &mut prefixed);
        assert_eq!(prefixed.problems()[2].0, "channels[3].models[0].kind");
    }

    #[test]
    fn channel_and_model_names_are_single_words_of_any_script_and_models_are_listed_once() {
        let problems = |name: &str, models: &str| {
            let channel: ChannelConfig =
                toml::from_str(&format!("name = {name:?}\ntype = \"x\"\nmodels = [{models}]\n")).expect("channel");
            let mut found = ConfigErrors::default();
            check_channel(&channel, &|field| field.to_owned(), &mut found);
            found.problems().iter().map(|(k, _)| k.clone()).collect::<Vec<_>>()
        };
        let model = |name: &str| format!("{{ name = {name:?}, kind = \"text_to_image\" }}");
        assert!(problems("魔搭-qwen_2.5", &model("Qwen/Image")).contains(&"models[0].name".to_owned()), "a slash");
        assert!(problems("魔搭-qwen_2.5", &model("qwen-image")).is_empty());
        for bad in ["", "bad name", "a/b", "tab\there", "100%", &"x".repeat(65)] {
            assert_eq!(problems(bad, &model("m")), ["name"], "{bad:?}");
        }
        assert_eq!(problems("c", &format!("{}, {}", model(""), model("m"))), ["models[0].name"]);
        assert_eq!(problems("c", &format!("{}, {}", model("m"), model("m"))), ["models[1].name"], "listed twice");
    }

    fn problems_of(text: &str) -> Vec<(String, String)> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kiln.toml");
        std::fs::write(&path, text).expect("write");
        let err = Config::load_from(Some(&path), Vec::new(), &Overrides::default()).expect_err("invalid");
        err.problems().to_vec()
    }

    #[test]
    fn object_storage_is_checked_key_by_key() {
        let keys = |problems: Vec<(String, String)>| problems.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        assert_eq!(
            keys(problems_of("[storage]\ntype = \"s3\"\n")),
            ["storage.bucket", "storage.access_key_id", "storage.secret_access_key"]
        );
        let problems = problems_of(
            "[storage]\ntype = \"cos\"\nbucket = \"examplebucket\"\naccess_key_id = \"AKID\"\n\
             secret_access_key = \"sk\"\nvirtual_host_style = false\npresign_ttl = \"8d\"\n\
             endpoint = \"ftp://cos.example.com\"\npublic_base_url = \"https://cdn.example.com/?v=1\"\n",
        );
        assert!(problems[0].1.contains("name-APPID"), "{problems:?}");
        assert_eq!(
            keys(problems),
            [
                "storage.bucket",
                "storage.region",
                "storage.endpoint",
                "storage.virtual_host_style",
                "storage.presign_ttl",
                "storage.public_base_url"
            ]
        );
        let bad_region = problems_of(
            "[storage]\ntype = \"cos\"\nbucket = \"examplebucket-1250000000\"\nregion = \"Guangzhou\"\n\
             access_key_id = \"AKID\"\nsecret_access_key = \"sk\"\n",
        );
        assert_eq!(keys(bad_region), ["storage.region"]);
        let s3 = problems_of(
            "[storage]\ntype = \"s3\"\nbucket = \"My_Bucket\"\naccess_key_id = \"a\"\nsecret_access_key = \"b\"\n",
        );
        assert_eq!(keys(s3), ["storage.bucket"]);
        let config = load(Some(
            "[storage]\ntype = \"s3\"\nbucket = \"kiln\"\nendpoint = \"http://127.0.0.1:9000\"\n\
             access_key_id = \"a\"\nsecret_access_key = \"b\"\n",
        ));
        let StorageConfig::S3(bucket) = &config.storage else { panic!("s3: {:?}", config.storage) };
        assert_eq!((bucket.serve, bucket.presign_ttl), (ServeMode::Redirect, Duration::from_secs(3600)));
        assert_eq!(config.storage_root(), None);
    }

    #[test]
    fn object_storage_credentials_print_masked() {
        let config = load(Some(
            "[storage]\ntype = \"cos\"\nbucket = \"examplebucket-1250000000\"\nregion = \"ap-guangzhou\"\n\
             access_key_id = \"AKIDexample\"\nsecret_access_key = \"the-secret-key-value\"\n\
             session_token = \"the-session-token-value\"\nserve = \"proxy\"\npresign_ttl = \"10m\"\n",
        ));
        let StorageConfig::Cos(bucket) = &config.storage else { panic!("cos: {:?}", config.storage) };
        assert_eq!(bucket.secret_access_key.as_ref().map(Secret::expose), Some("the-secret-key-value"));
        assert_eq!((bucket.serve, bucket.presign_ttl), (ServeMode::Proxy, Duration::from_secs(600)));
        for printed in [config.to_masked_toml(), format!("{config:?}")] {
            assert!(printed.contains("AKIDexample"), "{printed}");
            assert!(!printed.contains("the-secret-key-value") && !printed.contains("the-session-token-value"));
        }
    }

    #[test]
    fn configured_channels_replace_the_default_rather_than_adding_to_it() {
        // figment's `merge` replaces arrays (only `admerge` would append).
        let config = load(Some(
            "[[channels]]\nname = \"other\"\ntype = \"echo\"\nmodels = [{ name = \"m\", kind = \"image_to_3d\" }]\n",
        ));
        let names: Vec<&str> = config.channels.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["other"]);
        assert!(load(Some("channels = []\n")).channels.is_empty());
        // A file that does not mention channels keeps the default.
        assert_eq!(load(Some("[server]\nbind = \"127.0.0.1:0\"\n")).channels.len(), 1);
    }
}
