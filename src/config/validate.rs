//! Turns the merged layers into a [`Config`], collecting every problem instead of
//! stopping at the first: a bad key is reported, set aside, and extraction retried.

use std::{collections::BTreeMap, time::Duration};

use figment::{
    Figment,
    error::Kind,
    providers::Serialized,
    value::{Dict, Value},
};

use super::{ChannelConfig, Config, MAX_PRESIGN_TTL, ObjectStorageConfig, StorageConfig};

/// Every problem found in the configuration, each with the key that holds it.
#[derive(Debug, Default)]
pub struct ConfigErrors {
    problems: Vec<(String, String)>,
}

impl ConfigErrors {
    pub fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.problems.push((key.into(), message.into()));
    }

    pub fn is_empty(&self) -> bool {
        self.problems.is_empty()
    }

    pub fn problems(&self) -> &[(String, String)] {
        &self.problems
    }
}

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "invalid configuration ({} problem(s)):", self.problems.len())?;
        for (key, message) in &self.problems {
            writeln!(f, "  - {key}: {message}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

pub(super) fn extract(
    figment: Figment,
    env: &BTreeMap<String, String>,
    mut problems: ConfigErrors,
) -> Result<Config, ConfigErrors> {
    let mut value: Value = match figment.extract() {
        Ok(value) => value,
        Err(errors) => {
            for error in errors {
                problems.push(key_of(&error.path), error.kind.to_string());
            }
            return Err(problems);
        }
    };
    // Each round reports the errors serde found and drops the offending keys, so the
    // defaults stand in for them and the next round can find the errors behind them.
    for _ in 0..64 {
        match Figment::from(Serialized::defaults(&value)).extract::<Config>() {
            Ok(config) => {
                check(&config, &mut problems);
                return if problems.is_empty() { Ok(config) } else { Err(problems) };
            }
            Err(errors) => {
                let mut changed = false;
                for error in errors {
                    let mut path = error.path.clone();
                    // Depending on where serde stopped, the path may already end
                    // with the unknown field.
                    if let Kind::UnknownField(field, _) = &error.kind
                        && path.last() != Some(field)
                    {
                        path.push(field.clone());
                    }
                    let key = key_of(&path);
                    let source = env_source(&path, env);
                    problems.push(key, format!("{}{source}", error.kind));
                    changed |= remove(&mut value, &path);
                }
                if !changed {
                    return Err(problems);
                }
            }
        }
    }
    Err(problems)
}

fn key_of(path: &[String]) -> String {
    if path.is_empty() { "(root)".to_owned() } else { path.join(".") }
}

fn env_source(path: &[String], env: &BTreeMap<String, String>) -> String {
    let name = format!("KILN_{}", path.join("__").to_uppercase());
    if env.contains_key(&name) { format!(" (set by {name})") } else { String::new() }
}

fn remove(value: &mut Value, path: &[String]) -> bool {
    let Some((last, parents)) = path.split_last() else { return false };
    let mut dict: &mut Dict = match value {
        Value::Dict(_, dict) => dict,
        _ => return false,
    };
    for key in parents {
        match dict.get_mut(key) {
            Some(Value::Dict(_, inner)) => dict = inner,
            _ => return false,
        }
    }
    dict.remove(last).is_some()
}

fn check_convert(convert: &super::ConvertConfig, problems: &mut ConfigErrors) {
    const MIB: u64 = 1024 * 1024;
    if convert.concurrency == 0 {
        problems.push("convert.concurrency", "must be at least 1");
    }
    if convert.memory < 16 * MIB || convert.memory / 1024 > u64::from(u32::MAX) {
        problems.push("convert.memory", "must be between 16 MiB (16777216) and 4 TiB");
    }
    if convert.max_memory == 0 || convert.max_memory > convert.memory {
        problems.push("convert.max_memory", "must be greater than 0 and at most convert.memory");
    }
    if convert.timeout.is_zero() {
        problems.push("convert.timeout", "must be longer than 0s");
    }
    for (name, value) in [
        ("convert.max_input", convert.max_input),
        ("convert.max_triangles", convert.max_triangles),
        ("convert.max_output", convert.max_output),
        ("convert.usdz_max_triangles", convert.usdz_max_triangles),
    ] {
        if value == 0 {
            problems.push(name, "must be greater than 0");
        }
    }
    for (name, value) in [
        ("convert.max_texture_side", convert.max_texture_side),
        ("convert.usdz_texture_side", convert.usdz_texture_side),
    ] {
        if value < 16 {
            problems.push(name, "must be at least 16");
        }
    }
}

/// Checks that types alone cannot express.
fn check(config: &Config, problems: &mut ConfigErrors) {
    let upload = &config.upload;
    if upload.max_bytes == 0 {
        problems.push("upload.max_bytes", "must be greater than 0");
    }
    if upload.formats.is_empty() {
        problems.push("upload.formats", "must name at least one of jpeg, png, webp");
    }
    if upload.max_pixels == 0 {
        problems.push("upload.max_pixels", "must be greater than 0");
    }
    if upload.max_side < 16 {
        problems.push("upload.max_side", "must be at least 16");
    }
    if upload.max_prompt_chars == 0 {
        problems.push("upload.max_prompt_chars", "must be greater than 0");
    }
    // The budget is counted in KiB permits of a semaphore, whose count is a u32 per request.
    if upload.decode_memory < 16 * 1024 * 1024 || upload.decode_memory / 1024 > u64::from(u32::MAX) {
        problems.push("upload.decode_memory", "must be between 16 MiB (16777216) and 4 TiB");
    }
    if upload.max_decode_memory == 0 || upload.max_decode_memory > upload.decode_memory {
        problems.push("upload.max_decode_memory", "must be greater than 0 and at most upload.decode_memory");
    }
    let tasks = &config.tasks;
    if tasks.deadline.is_zero() {
        problems.push("tasks.deadline", "must be longer than 0s");
    }
    if tasks.lease < std::time::Duration::from_millis(100) {
        problems.push("tasks.lease", "must be at least 100ms");
    }
    if tasks.poll_interval.is_zero() {
        problems.push("tasks.poll_interval", "must be longer than 0s");
    }
    if tasks.follow_poll_interval < std::time::Duration::from_millis(100) {
        problems.push("tasks.follow_poll_interval", "must be at least 100ms");
    }
    check_convert(&config.convert, problems);
    if parse_time_of_day(&config.retention.run_at).is_none() {
        problems.push("retention.run_at", format!("`{}` is not a time of day like 03:00", config.retention.run_at));
    }
    if config.auth.session_ttl < Duration::from_secs(60) {
        problems.push("auth.session_ttl", "must be at least 1m");
    }
    if config.admin.username.is_some() != config.admin.password.is_some() {
        problems.push(
            "admin",
            "set both `username` and `password` (KILN_ADMIN__USERNAME, KILN_ADMIN__PASSWORD), or neither",
        );
    }
    if config.auth.signin_attempts == 0 {
        problems.push("auth.signin_attempts", "must be at least 1");
    }
    if config.files.signed_ttl < Duration::from_secs(1) {
        problems.push("files.signed_ttl", "must be at least 1s");
    }
    if config.retention.max_age.is_zero() {
        problems.push("retention.max_age", "must be longer than 0s");
    }
    let webhooks = &config.webhooks;
    if webhooks.max_age < std::time::Duration::from_secs(1) {
        problems.push("webhooks.max_age", "must be at least 1s");
    }
    if webhooks.timeout < std::time::Duration::from_millis(100)
        || webhooks.timeout > std::time::Duration::from_secs(300)
    {
        problems.push("webhooks.timeout", "must be between 100ms and 5m");
    }
    // A delivery pruned while its end is still looked for would be announced again.
    if webhooks.keep < webhooks.max_age {
        problems.push("webhooks.keep", "must be at least webhooks.max_age");
    }
    if let Err(err) = tracing_subscriber::EnvFilter::try_new(&config.log.level) {
        problems.push("log.level", format!("not a valid filter: {err}"));
    }
    if config.log.keep_files == 0 {
        problems.push("log.keep_files", "must be at least 1");
    }
    if config.server.shutdown_grace > std::time::Duration::from_secs(600) {
        problems.push("server.shutdown_grace", "must be at most 10m");
    }
    let server = &config.server;
    for (key, value) in [
        ("server.header_timeout", server.header_timeout),
        ("server.idle_timeout", server.idle_timeout),
        ("server.body_timeout", server.body_timeout),
    ] {
        if value < std::time::Duration::from_millis(100) {
            problems.push(key, "must be at least 100ms");
        }
    }
    if server.max_connections == 0 {
        problems.push("server.max_connections", "must be at least 1");
    }
    if server.listen_backlog == 0 {
        problems.push("server.listen_backlog", "must be at least 1");
    }
    if let Some(url) = &config.server.public_url
        && !matches!(url.scheme(), "http" | "https")
    {
        problems.push("server.public_url", "must be an http or https URL");
    }
    check_storage(&config.storage, problems);
    let db = config.database_url();
    if !["sqlite:", "postgres://", "postgresql://"].iter().any(|scheme| db.starts_with(scheme)) {
        problems.push("database.url", "must be a sqlite:, postgres:// or postgresql:// URL");
    }
    if config.database.max_connections == 0 {
        problems.push("database.max_connections", "must be at least 1");
    }
    let mut names = std::collections::HashSet::new();
    for (i, channel) in config.channels.iter().enumerate() {
        let key = |field: &str| format!("channels[{i}].{field}");
        check_channel(channel, &key, problems);
        if !channel.name.trim().is_empty() && !names.insert(channel.name.as_str()) {
            problems.push(key("name"), format!("`{}` is used by another channel", channel.name));
        }
    }
    for (kind, model) in &config.tasks.default_models {
        match crate::tasks::TaskKind::parse(kind) {
            None => problems
                .push(format!("tasks.default_models.{kind}"), "is not one of image_to_3d, text_to_3d, text_to_image"),
            Some(kind) => {
                let served = config
                    .channels
                    .iter()
                    .flat_map(|c| &c.models)
                    .any(|m| &m.name == model && crate::tasks::TaskKind::parse(&m.kind) == Some(kind));
                if !served {
                    problems.push(
                        format!("tasks.default_models.{}", kind.as_str()),
                        format!("no channel serves model `{model}` for {}", kind.as_str()),
                    );
                }
            }
        }
    }
}

/// An object storage section: every key that must be set, and the forms S3 and COS
/// accept, each reported under its own key.
fn check_storage(storage: &StorageConfig, problems: &mut ConfigErrors) {
    let (bucket, cos) = match storage {
        StorageConfig::Fs { .. } => return,
        StorageConfig::S3(bucket) => (bucket, false),
        StorageConfig::Cos(bucket) => (bucket, true),
    };
    let ObjectStorageConfig {
        bucket: name,
        endpoint,
        region,
        access_key_id,
        secret_access_key,
        session_token,
        root,
        virtual_host_style,
        presign_ttl,
        public_base_url,
        serve: _,
    } = bucket;
    if name.is_empty() {
        problems.push("storage.bucket", "is required");
    } else if cos {
        if !is_cos_bucket(name) {
            problems.push(
                "storage.bucket",
                format!(
                    "`{name}` is not a COS bucket name: COS buckets are named `name-APPID`, e.g. \
                     `examplebucket-1250000000` (lowercase letters, digits and `-`, then `-` and the \
                     account's numeric APPID), as the COS console shows them"
                ),
            );
        }
    } else if let Err(why) = check_s3_bucket(name, virtual_host_style.unwrap_or(false)) {
        problems.push("storage.bucket", why);
    }
    match region.as_deref() {
        None if cos => problems.push("storage.region", "is required for COS, e.g. `ap-guangzhou`"),
        None => {}
        Some(region) if cos && !is_cos_region(region) => problems.push(
            "storage.region",
            format!("`{region}` is not a COS region: lowercase words joined by `-`, e.g. `ap-guangzhou`"),
        ),
        Some(region) if region.is_empty() || !region.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') => {
            problems.push("storage.region", format!("`{region}` is not a region: letters, digits and `-`"))
        }
        Some(_) => {}
    }
    if let Some(url) = endpoint {
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            problems.push("storage.endpoint", "must be an http or https URL");
        } else if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            problems.push("storage.endpoint", "must be the server's URL alone, without a path or query");
        }
    }
    if access_key_id.as_deref().is_none_or(str::is_empty) {
        problems.push("storage.access_key_id", "is required (COS: the SecretId)");
    }
    if secret_access_key.as_ref().is_none_or(|s| s.expose().is_empty()) {
        problems.push("storage.secret_access_key", "is required (COS: the SecretKey)");
    }
    if session_token.as_ref().is_some_and(|s| s.expose().is_empty()) {
        problems.push("storage.session_token", "must not be empty; leave it out when there is none");
    }
    if let Some(root) = root
        && (root.split('/').any(|part| part == "." || part == "..") || root.contains('\\'))
    {
        problems.push("storage.root", "must be a key prefix like `kiln/`, without `.` or `..` segments");
    }
    if cos && *virtual_host_style == Some(false) {
        problems.push(
            "storage.virtual_host_style",
            "COS is always addressed virtual-host style (buckets made since 2024 refuse path style); leave it out",
        );
    }
    if *presign_ttl < Duration::from_secs(1) || *presign_ttl > MAX_PRESIGN_TTL {
        problems.push("storage.presign_ttl", "must be between 1s and 7d (the longest a SigV4 presigned URL lives)");
    }
    if let Some(url) = public_base_url
        && (!matches!(url.scheme(), "http" | "https") || url.query().is_some() || url.fragment().is_some())
    {
        problems.push("storage.public_base_url", "must be an http or https URL without a query");
    }
}

/// S3's bucket naming rules: 3–63 lowercase letters, digits, `.` and `-`, starting and
/// ending with a letter or digit. A dotted name cannot be a host name's first label.
fn check_s3_bucket(name: &str, virtual_host: bool) -> Result<(), String> {
    let chars_ok = name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-');
    let ends_ok =
        name.starts_with(|c: char| c.is_ascii_alphanumeric()) && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !(3..=63).contains(&name.len()) || !chars_ok || !ends_ok {
        return Err(format!(
            "`{name}` is not a bucket name: 3–63 lowercase letters, digits, `.` and `-`, starting and ending with a \
             letter or digit"
        ));
    }
    if virtual_host && name.contains('.') {
        return Err(format!("`{name}` has a `.`, which virtual-host addressing cannot put in a host name"));
    }
    Ok(())
}

/// `name-APPID`: a name of lowercase letters, digits and `-`, then `-` and the account's
/// APPID, which is all digits.
pub(crate) fn is_cos_bucket(bucket: &str) -> bool {
    let Some((name, appid)) = bucket.rsplit_once('-') else { return false };
    !name.is_empty()
        && bucket.len() <= 63
        && !name.starts_with('-')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !appid.is_empty()
        && appid.chars().all(|c| c.is_ascii_digit())
}

/// A COS region: lowercase words joined by `-`, the first of letters (`ap-guangzhou`,
/// `na-siliconvalley`, `ap-shanghai-fsi`).
fn is_cos_region(region: &str) -> bool {
    let mut parts = region.split('-');
    let first_ok = parts.next().is_some_and(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase()));
    let mut rest = parts.peekable();
    first_ok
        && rest.peek().is_some()
        && rest.all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()))
}

/// The rules one channel's fields must follow, wherever it is defined (the file, or the
/// database through the admin API): its name, models, kinds and limits. `key` turns a
/// field's path (`name`, `models[0].kind`) into the key its problem is reported under.
/// Whether the name is free, and whether the provider takes the options, are for the
/// caller, which knows the other channels and the provider types.
pub fn check_channel(channel: &ChannelConfig, key: &dyn Fn(&str) -> String, problems: &mut ConfigErrors) {
    if let Err(why) = check_name(&channel.name) {
        problems.push(key("name"), why);
    }
    if channel.max_concurrency == 0 {
        problems.push(key("max_concurrency"), "must be at least 1");
    }
    if channel.models.is_empty() {
        problems.push(key("models"), "must list at least one model");
    }
    for (j, model) in channel.models.iter().enumerate() {
        if let Err(why) = check_name(&model.name) {
            problems.push(key(&format!("models[{j}].name")), why);
        } else if channel.models[..j].iter().any(|m| m.name == model.name) {
            problems.push(key(&format!("models[{j}].name")), format!("`{}` is listed twice", model.name));
        }
        if crate::tasks::TaskKind::parse(&model.kind).is_none() {
            problems.push(
                key(&format!("models[{j}].kind")),
                format!("`{}` is not one of image_to_3d, text_to_3d, text_to_image", model.kind),
            );
        }
    }
}

/// A channel's or a model's name: what tasks, metrics, logs and URL paths carry, so
/// 1–64 characters without spaces, control characters or the URL's own `/ ? # %`.
/// Any script is fine (`魔搭-qwen`).
fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("must not be empty");
    }
    if name.chars().count() > 64 {
        return Err("must be at most 64 characters");
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '/' | '?' | '#' | '%')) {
        return Err("must not hold spaces, control characters, `/`, `?`, `#` or `%`");
    }
    Ok(())
}

/// Parses `HH:MM` into (hour, minute).
pub fn parse_time_of_day(text: &str) -> Option<(u32, u32)> {
    let (h, m) = text.split_once(':')?;
    let (h, m) = (h.parse::<u32>().ok()?, m.parse::<u32>().ok()?);
    (h < 24 && m < 60 && text.len() <= 5).then_some((h, m))
}
