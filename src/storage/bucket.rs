//! The OpenDAL operator for a bucket: any S3-compatible server (`type = "s3"`), or
//! Tencent COS through its S3 interface (`type = "cos"`, reference provider-apis.md §3):
//! the region's endpoint by default, virtual-host addressing always, since COS buckets
//! made since 2024 refuse path style.
//!
//! Credentials come from the configuration only: the environment (`AWS_*`), `~/.aws`
//! and the instance metadata service are not read, so what kiln signs with is what
//! `kiln config check` shows (masked). They reach the signer through a provider of
//! kiln's own, [`ConfiguredCredential`], because reqsign logs its providers with `Debug`
//! at debug level and its own static provider prints the secret key in full.

use std::time::Duration;

use opendal::{
    HttpTransporter, OperationContext, Operator,
    layers::{RetryEvent, RetryInterceptor, RetryLayer, TimeoutLayer},
    services,
};
use opendal_http_transport_reqwest::ReqwestTransport;
use reqsign_aws_v4::Credential;
use reqsign_core::{Context, ProvideCredential, ProvideCredentialChain};

use crate::config::{ObjectStorageConfig, Secret};

/// The region an S3 bucket is signed for when none is configured; MinIO, Garage and
/// Ceph accept it whatever their own.
const DEFAULT_S3_REGION: &str = "us-east-1";

/// The client for bucket requests: a connection must open within 10 s and a response
/// must not stall for a minute, but a long transfer that keeps moving is never cut.
pub(super) fn http_client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(60))
        .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// How often a bucket request that failed for a moment (a 5xx, a 429 `SlowDown`, a
/// dropped connection or a timeout; OpenDAL marks those temporary) is tried again, after
/// a jittered backoff from 200 ms to 5 s. A refusal (403, 404, a bad signature) is final
/// at once. Three more tries cover the brief 503s S3 servers and COS answer under load
/// without holding a task for long when the bucket is really down.
const RETRIES: usize = 3;

/// The longest a bucket operation other than reading or writing a body may take (a stat,
/// a delete, starting or completing a multipart upload), and the longest one read or write
/// of a body may stall: past it the request is abandoned and, being temporary, retried.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(60);

/// The region requests are signed for.
fn region(settings: &ObjectStorageConfig) -> String {
    settings.region.clone().filter(|r| !r.is_empty()).unwrap_or_else(|| DEFAULT_S3_REGION.to_owned())
}

/// The endpoint without the bucket: as configured, else COS's regional one, else
/// OpenDAL's AWS default for the region.
fn endpoint(settings: &ObjectStorageConfig, cos: bool, region: &str) -> Option<String> {
    match &settings.endpoint {
        Some(url) => Some(url.as_str().trim_end_matches('/').to_owned()),
        None if cos => Some(format!("https://cos.{region}.myqcloud.com")),
        None => None,
    }
}

/// The key prefix (`root`) as objects carry it: `kiln/`, or empty.
pub(super) fn key_prefix(settings: &ObjectStorageConfig) -> String {
    let root = settings.root.as_deref().unwrap_or("").trim_matches('/');
    if root.is_empty() { String::new() } else { format!("{root}/") }
}

pub(super) fn operator(
    settings: &ObjectStorageConfig,
    cos: bool,
    http: reqwest::Client,
) -> Result<Operator, opendal::Error> {
    let region = region(settings);
    let mut builder = services::S3::default()
        .bucket(&settings.bucket)
        .region(&region)
        .root(&format!("/{}", key_prefix(settings)))
        .disable_config_load()
        .disable_ec2_metadata();
    if let Some(endpoint) = endpoint(settings, cos, &region) {
        builder = builder.endpoint(&endpoint);
    }
    if cos || settings.virtual_host_style == Some(true) {
        builder = builder.enable_virtual_host_style();
    }
    // Validation made both required; without them requests go unsigned and are refused.
    if let (Some(id), Some(secret)) = (&settings.access_key_id, &settings.secret_access_key) {
        let credential = ConfiguredCredential {
            access_key_id: id.clone(),
            secret_access_key: secret.clone(),
            session_token: settings.session_token.clone(),
        };
        builder = builder.credential_provider_chain(ProvideCredentialChain::new().push(credential));
    }
    let transport = HttpTransporter::new(ReqwestTransport::new(http));
    let operator = Operator::new(builder)?.with_context(OperationContext::new().with_http_transport(transport));
    // The timeout goes inside the retry, as OpenDAL requires: a retry must never be cut
    // off by a timeout while it restores a body's state.
    Ok(operator.layer(TimeoutLayer::new().with_timeout(OPERATION_TIMEOUT).with_io_timeout(OPERATION_TIMEOUT)).layer(
        RetryLayer::new()
            .with_max_times(RETRIES)
            .with_jitter()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(5))
            .with_notify(LogRetry),
    ))
}

/// Logs each retry of a bucket request (OpenDAL's own goes to the `log` crate, which
/// kiln does not collect). OpenDAL's error names the operation, the path and the
/// server's answer, never the credential.
struct LogRetry;

impl RetryInterceptor for LogRetry {
    fn intercept(&self, event: RetryEvent<'_>) {
        tracing::warn!(
            operation = %event.op,
            attempt = event.attempt,
            retry_in_ms = u64::try_from(event.retry_after.as_millis()).unwrap_or(u64::MAX),
            error = %event.err,
            "a bucket request failed for a moment; trying again"
        );
    }
}

/// The bucket's credential from the configuration, for the signer.
struct ConfiguredCredential {
    access_key_id: String,
    secret_access_key: Secret,
    session_token: Option<Secret>,
}

impl std::fmt::Debug for ConfiguredCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfiguredCredential")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key)
            .field("session_token", &self.session_token)
            .finish()
    }
}

impl ProvideCredential for ConfiguredCredential {
    type Credential = Credential;

    async fn provide_credential(&self, _: &Context) -> reqsign_core::Result<Option<Credential>> {
        Ok(Some(Credential {
            access_key_id: self.access_key_id.clone(),
            secret_access_key: self.secret_access_key.expose().to_owned(),
            session_token: self.session_token.as_ref().map(|t| t.expose().to_owned()),
            expires_in: None,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cos(region: &str) -> ObjectStorageConfig {
        ObjectStorageConfig {
            bucket: "examplebucket-1250000000".to_owned(),
            region: Some(region.to_owned()),
            ..ObjectStorageConfig::default()
        }
    }

    #[test]
    fn cos_defaults_to_its_regional_endpoint_and_s3_to_aws() {
        let settings = cos("ap-guangzhou");
        assert_eq!(endpoint(&settings, true, "ap-guangzhou").as_deref(), Some("https://cos.ap-guangzhou.myqcloud.com"));
        assert_eq!(endpoint(&settings, false, "ap-guangzhou"), None, "OpenDAL picks AWS's");
        let given = ObjectStorageConfig {
            endpoint: Some(url::Url::parse("http://127.0.0.1:9000/").expect("url")),
            ..ObjectStorageConfig::default()
        };
        assert_eq!(endpoint(&given, false, "us-east-1").as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(region(&ObjectStorageConfig::default()), "us-east-1");
    }

    #[test]
    fn the_key_prefix_is_normalised() {
        let with = |root: &str| key_prefix(&ObjectStorageConfig { root: Some(root.to_owned()), ..Default::default() });
        assert_eq!(with("kiln"), "kiln/");
        assert_eq!(with("/kiln/results/"), "kiln/results/");
        assert_eq!(with("/"), "");
        assert_eq!(key_prefix(&ObjectStorageConfig::default()), "");
    }

    #[tokio::test]
    async fn a_cos_bucket_is_addressed_by_virtual_host_and_presigned_with_sigv4() {
        let mut settings = cos("ap-guangzhou");
        settings.access_key_id = Some("AKIDEXAMPLE".to_owned());
        settings.secret_access_key = Some(Secret::new("secret"));
        let op = operator(&settings, true, reqwest::Client::new()).expect("operator");
        let url = op.presign_read("images/a.png", Duration::from_secs(600)).await.expect("presign").uri().to_string();
        assert!(
            url.starts_with("https://examplebucket-1250000000.cos.ap-guangzhou.myqcloud.com/images/a.png?"),
            "{url}"
        );
        assert!(url.contains("X-Amz-Algorithm=AWS4-HMAC-SHA256") && url.contains("X-Amz-Expires=600"), "{url}");
        assert!(url.contains("%2Fap-guangzhou%2Fs3%2Faws4_request"), "signed for the region: {url}");
        assert!(!url.contains("secret"), "{url}");
    }

    #[test]
    fn the_credential_never_prints_its_secrets() {
        let credential = ConfiguredCredential {
            access_key_id: "AKIDEXAMPLE".to_owned(),
            secret_access_key: Secret::new("the-secret-key"),
            session_token: Some(Secret::new("the-session-token")),
        };
        let printed = format!("{credential:?}");
        assert!(printed.contains("AKIDEXAMPLE"), "{printed}");
        assert!(!printed.contains("the-secret-key") && !printed.contains("the-session-token"), "{printed}");
    }
}
