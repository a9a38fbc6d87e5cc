//! Turns a request's credentials into the [`Caller`] every face hands to the gateway.

use axum::{extract::FromRequestParts, http::request::Parts};

use super::AppState;
use crate::{access::Caller, error::ApiError};

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(_parts: &mut Parts, _state: &AppState) -> Result<Self, Self::Rejection> {
        Ok(Caller::Anonymous)
    }
}
