//! One attempt at a delivery: sign the stored body with the owner's key (the Standard
//! Webhooks scheme of [`crate::webhooks`], the same one kiln's workers use), POST it
//! through a client that connects only to checked addresses, never follows a redirect
//! and never goes through a proxy (a proxy would resolve the name itself, past the
//! check), and say what came of it.
//!
//! Only the status line of an answer is kept, never its body: with private destinations
//! allowed, a body shown to the user would let them read internal services through kiln.

use std::time::Duration;

use reqwest::{StatusCode, header::CONTENT_TYPE, redirect::Policy};

use super::{
    Delivery,
    destination::{Guard, check_destination, refusal},
};
use crate::{
    providers::remote::http::describe,
    webhooks::{SigningKey, now_secs},
};

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Outcome {
    /// A 2xx answer.
    Delivered(StatusCode),
    /// 410 Gone: the receiver wants no more.
    Gone,
    /// Any other answer, retried.
    Answered(StatusCode),
    /// Not sent, and it would not be next time either (a refused destination).
    Refused(String),
    /// Not delivered, for a reason that may pass: the network, DNS, the secret.
    Failed(String),
}

impl Outcome {
    pub fn status_code(&self) -> Option<u16> {
        match self {
            Outcome::Delivered(status) | Outcome::Answered(status) => Some(status.as_u16()),
            Outcome::Gone => Some(StatusCode::GONE.as_u16()),
            Outcome::Refused(_) | Outcome::Failed(_) => None,
        }
    }

    /// The attempt's error text for the user; `None` when delivered.
    pub fn error(&self) -> Option<String> {
        match self {
            Outcome::Delivered(_) => None,
            Outcome::Gone => Some("the receiver answered 410 Gone: no more attempts".to_owned()),
            Outcome::Answered(status) if status.is_redirection() => {
                Some(format!("the receiver answered {status} (redirects are not followed)"))
            }
            Outcome::Answered(status) => Some(format!("the receiver answered {status}")),
            Outcome::Refused(why) | Outcome::Failed(why) => Some(why.clone()),
        }
    }
}

/// The webhook HTTP client.
pub(super) struct Sender {
    client: reqwest::Client,
    allow_private: bool,
}

impl Sender {
    pub fn new(allow_private: bool, timeout: Duration) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .dns_resolver(Guard { allow_private })
            .redirect(Policy::none())
            .no_proxy()
            .connect_timeout(timeout)
            .timeout(timeout)
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION"), " (webhooks)"))
            .build()?;
        Ok(Self { client, allow_private })
    }

    /// Signs and POSTs a delivery's body to its URL.
    pub async fn send(&self, delivery: &Delivery, key: &SigningKey) -> Outcome {
        // The URL was checked when it was given; the setting may have changed since, and
        // an IP literal is checked only here (names are checked by the resolver).
        let url = match check_destination(&delivery.url, self.allow_private) {
            Ok(url) => url,
            Err(err) if err.is_permanent() => return Outcome::Refused(err.to_string()),
            Err(err) => return Outcome::Failed(err.to_string()),
        };
        // The id stays the same across attempts, so a receiver can tell a retry from a
        // new message; the timestamp is the attempt's.
        let signed = key.sign_with(&message_id(delivery), now_secs(), delivery.payload.as_bytes());
        let mut request = self.client.post(url).header(CONTENT_TYPE, "application/json").body(delivery.payload.clone());
        for (name, value) in signed.headers() {
            request = request.header(name, value);
        }
        match request.send().await {
            Ok(response) => match response.status() {
                status if status.is_success() => Outcome::Delivered(status),
                StatusCode::GONE => Outcome::Gone,
                status => Outcome::Answered(status),
            },
            Err(err) => match refusal(&err) {
                Some(refused) if refused.is_permanent() => Outcome::Refused(refused.to_string()),
                Some(refused) => Outcome::Failed(refused.to_string()),
                None => Outcome::Failed(describe(&err)),
            },
        }
    }
}

/// The `webhook-id` of a delivery: the same for every attempt.
pub fn message_id(delivery: &Delivery) -> String {
    format!("msg_{}", delivery.id.simple())
}
