//! The one HTTP layer every cloud provider speaks through: timeouts, a per-channel
//! request budget, retries with jittered exponential backoff that honour `Retry-After`,
//! and the rule that decides what may be retried — any request the upstream provably
//! did not take (it could not be reached, or answered 429 or 503), and idempotent
//! requests (reads) after any transient failure. A create whose answer was lost is never
//! sent again: that is how a paid job is made twice.
//!
//! Downloads go through a second client that never carries a credential.

use std::{num::NonZeroU32, sync::Arc, time::Duration};

use backon::{BackoffBuilder, ExponentialBuilder};
use bytes::Bytes;
use governor::{DefaultDirectRateLimiter, Jitter, Quota, RateLimiter};
use reqwest::{RequestBuilder, Response, StatusCode, header::HeaderMap};
use tokio::time::Instant;

/// How a request may be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// A read: retried after timeouts, resets, 429, 500, 502, 503 and 504.
    Idempotent,
    /// A create: retried only when the upstream provably did not take it (it could not
    /// be reached, or answered 429 or 503).
    UntilTaken,
}

/// A request that got no usable HTTP answer.
#[derive(Debug, thiserror::Error)]
pub enum Fault {
    /// The request never reached the upstream (connection refused, DNS, TLS before
    /// sending): provably not taken.
    #[error("the upstream could not be reached: {0}")]
    NotSent(String),
    /// The request was sent and its answer lost (timeout, reset, a cut body): the
    /// upstream may or may not have acted on it.
    #[error("the upstream's answer was lost: {0}")]
    Lost(String),
    /// The task's deadline came before an answer.
    #[error("the deadline passed while waiting on the upstream")]
    Deadline,
}

/// An HTTP answer, read whole (API answers are small; files go through
/// [`Http::download`]).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// The first of `names` the answer carries, as text: an upstream request or trace id.
    pub fn header(&self, names: &[&str]) -> Option<String> {
        names.iter().find_map(|n| self.headers.get(*n)).and_then(|v| v.to_str().ok()).map(str::to_owned)
    }

    /// `Retry-After` in seconds (the HTTP-date form is rare from APIs and ignored).
    pub fn retry_after(&self) -> Option<Duration> {
        retry_after(&self.headers)
    }

    /// The body as JSON, if it is JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Tuning of one channel's HTTP layer.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Connection set-up.
    pub connect_timeout: Duration,
    /// A whole API request.
    pub request_timeout: Duration,
    /// Attempts of a retried request, the first included.
    pub attempts: u32,
    /// The first pause between attempts; it doubles with jitter up to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// The longest `Retry-After` obeyed; a longer one is cut to this.
    pub max_retry_after: Duration,
    /// Upstream API requests per minute, whatever the load (0: no budget).
    pub requests_per_minute: u32,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            attempts: 4,
            min_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(30),
            requests_per_minute: 300,
        }
    }
}

/// A channel's HTTP layer. Cheap to clone.
#[derive(Clone)]
pub struct Http {
    api: reqwest::Client,
    files: reqwest::Client,
    budget: Option<Arc<DefaultDirectRateLimiter>>,
    settings: Arc<HttpSettings>,
}

impl Http {
    pub fn new(settings: HttpSettings) -> anyhow::Result<Self> {
        let api = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.request_timeout)
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
            .build()?;
        // Result URLs are presigned: they must be fetched without the API key, and a
        // redirect must not carry one either (this client never has one to carry).
        let files = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let budget = NonZeroU32::new(settings.requests_per_minute).map(|n| {
            // A burst of a tenth of the minute's budget, so a restart that resumes many
            // tasks does not spend the whole minute in its first second.
            let burst = NonZeroU32::new((n.get() / 10).max(1)).unwrap_or(NonZeroU32::MIN);
            Arc::new(RateLimiter::direct(Quota::per_minute(n).allow_burst(burst)))
        });
        Ok(Self { api, files, budget, settings: Arc::new(settings) })
    }

    /// The client for API requests; credentials are added per request by the provider.
    pub fn client(&self) -> &reqwest::Client {
        &self.api
    }

    /// Waits for the channel's budget to allow one more upstream request.
    async fn spend(&self) {
        if let Some(budget) = &self.budget {
            budget.until_ready_with_jitter(Jitter::up_to(Duration::from_millis(50))).await;
        }
    }

    /// Sends a request built by `make` (called again for each attempt), retrying as
    /// `retry` allows until `until`. Any HTTP answer that is not retried — or the last
    /// one when attempts run out — is returned for the provider to read.
    pub async fn send(
        &self,
        make: impl Fn() -> RequestBuilder,
        retry: Retry,
        until: Option<Instant>,
    ) -> Result<Answer, Fault> {
        let mut pauses = ExponentialBuilder::default()
            .with_min_delay(self.settings.min_backoff)
            .with_max_delay(self.settings.max_backoff)
            .with_max_times(self.settings.attempts.saturating_sub(1) as usize)
            .with_jitter()
            .build();
        loop {
            self.spend().await;
            let sent = match until {
                Some(until) => match tokio::time::timeout_at(until, read(make())).await {
                    Ok(sent) => sent,
                    Err(_) => return Err(Fault::Deadline),
                },
                None => read(make()).await,
            };
            let (again, hint) = match &sent {
                Ok(answer) => (retryable_status(answer.status, retry), answer.retry_after()),
                Err(Fault::NotSent(_)) => (true, None),
                Err(Fault::Lost(_)) => (retry == Retry::Idempotent, None),
                Err(Fault::Deadline) => (false, None),
            };
            let pause = match (again, pauses.next()) {
                (true, Some(pause)) => hint.map_or(pause, |h| h.min(self.settings.max_retry_after).max(pause)),
                _ => return sent,
            };
            if until.is_some_and(|until| Instant::now() + pause >= until) {
                return sent;
            }
            tracing::debug!(?pause, status = ?sent.as_ref().ok().map(|a| a.status), "retrying an upstream request");
            tokio::time::sleep(pause).await;
        }
    }

    /// Starts a download (no credentials, no total timeout: the caller bounds the time
    /// between chunks and the size).
    pub async fn download(&self, url: &str) -> Result<Response, Fault> {
        self.files.get(url).send().await.map_err(|err| classify(&err))
    }
}

fn retryable_status(status: StatusCode, retry: Retry) -> bool {
    match retry {
        Retry::UntilTaken => matches!(status, StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE),
        Retry::Idempotent => matches!(
            status,
            StatusCode::TOO_MANY_REQUESTS
                | StatusCode::INTERNAL_SERVER_ERROR
                | StatusCode::BAD_GATEWAY
                | StatusCode::SERVICE_UNAVAILABLE
                | StatusCode::GATEWAY_TIMEOUT
        ),
    }
}

async fn read(request: RequestBuilder) -> Result<Answer, Fault> {
    let response = request.send().await.map_err(|err| classify(&err))?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.bytes().await.map_err(|err| Fault::Lost(describe(&err)))?;
    Ok(Answer { status, headers, body })
}

/// A connection that was never made cannot have delivered the request; anything later
/// might have.
fn classify(err: &reqwest::Error) -> Fault {
    if err.is_connect() || err.is_builder() { Fault::NotSent(describe(err)) } else { Fault::Lost(describe(err)) }
}

/// What went wrong and the error chain below it, without the URL (which may carry a
/// presigned signature, or a webhook receiver's token).
pub(crate) fn describe(err: &reqwest::Error) -> String {
    let mut text = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "cannot connect"
    } else if err.is_body() || err.is_decode() {
        "body cut short"
    } else {
        "request failed"
    }
    .to_owned();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_are_retried_only_when_provably_not_taken() {
        for status in [StatusCode::TOO_MANY_REQUESTS, StatusCode::SERVICE_UNAVAILABLE] {
            assert!(retryable_status(status, Retry::UntilTaken));
        }
        for status in [StatusCode::INTERNAL_SERVER_ERROR, StatusCode::BAD_GATEWAY, StatusCode::GATEWAY_TIMEOUT] {
            assert!(!retryable_status(status, Retry::UntilTaken), "{status}: may have been taken");
            assert!(retryable_status(status, Retry::Idempotent));
        }
        assert!(!retryable_status(StatusCode::BAD_REQUEST, Retry::Idempotent));
    }

    #[tokio::test]
    async fn a_refused_connection_is_not_sent_and_retried_then_reported() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/x", listener.local_addr().expect("addr"));
        drop(listener);
        let http = Http::new(HttpSettings {
            attempts: 2,
            min_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
            ..HttpSettings::default()
        })
        .expect("client");
        let client = http.client().clone();
        let err = http.send(|| client.post(&url), Retry::UntilTaken, None).await.expect_err("nothing listens");
        assert!(matches!(err, Fault::NotSent(_)), "{err:?}");
    }
}
