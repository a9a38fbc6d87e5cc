//! The path and query extractors of every face (and the mapping of JSON body rejections), and what their documented parameters
//! accept. axum's own `Path` and `Query` refuse with a plain-text 400; these refuse
//! through [`ApiError`], so a bad query is 400 `invalid_request` and an unreadable path
//! segment 404 `not_found`, both in the JSON envelope, as the OpenAPI document says.
//!
//! Every bound the document states is enforced here: an integer documented as `int64`
//! is refused above `i64::MAX` even where the Rust field is a `u64`, and a page size
//! that is clamped is documented with the range it accepts, not the range it uses.

use axum::{
    extract::{
        FromRequestParts,
        rejection::{JsonRejection, PathRejection, QueryRejection},
    },
    http::StatusCode,
};
use serde::{Deserialize, Deserializer, de::Error as _};
use utoipa::openapi::{
    KnownFormat, ObjectBuilder, SchemaFormat, Type,
    schema::{Object, SchemaType},
};

use crate::error::{ApiError, Code};

/// `axum::extract::Query`, refusing with 400 `invalid_request` in the JSON envelope.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

/// `axum::extract::Path`, refusing with 404 `not_found` in the JSON envelope: a path
/// segment that cannot be read (say, percent-encoded bytes that are not UTF-8) names
/// nothing.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

/// A JSON request body, refusing through [`ApiError`] (see the `JsonRejection`
/// mapping below). A number with a zero fraction (`5.0`) is taken where an integer is
/// expected: JSON Schema counts it as one, and so do clients that write every number
/// as a float (Python's `json` does for a float that happens to be whole).
#[derive(Debug)]
pub struct Json<T>(pub T);

impl<T, S> axum::extract::FromRequest<S> for Json<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let axum::Json(mut value) = axum::Json::<serde_json::Value>::from_request(request, state).await?;
        whole_numbers(&mut value);
        serde_path_to_error::deserialize(value).map(Json).map_err(|err| {
            let path = err.path().to_string();
            let at = if path == "." { String::new() } else { format!("{path}: ") };
            ApiError::with_message(Code::MalformedJson, format!("The JSON body does not fit: {at}{}", err.into_inner()))
        })
    }
}

/// Turns every float with a zero fraction, within the 64-bit integers, into an integer.
fn whole_numbers(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Number(n) if n.is_f64() => {
            if let Some(f) = n.as_f64()
                && f.fract() == 0.0
            {
                // Exactly representable bounds: -2^63 and 2^64.
                if (-9_223_372_036_854_775_808.0..0.0).contains(&f) {
                    *value = Value::from(f as i64);
                } else if (0.0..18_446_744_073_709_551_616.0).contains(&f) {
                    *value = Value::from(f as u64);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(whole_numbers),
        Value::Object(map) => map.values_mut().for_each(whole_numbers),
        _ => {}
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::with_message(Code::InvalidRequest, rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        tracing::debug!(error = %rejection.body_text(), "unreadable path");
        ApiError::new(Code::NotFound)
    }
}

/// A JSON body that cannot be taken: 415 without a JSON `Content-Type`, 413 over the
/// body limit, 400 `malformed_json` otherwise (syntax, types, unknown fields).
impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection.status() {
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                ApiError::with_message(Code::UnsupportedMediaType, "Send application/json.")
            }
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::with_message(Code::FileTooLarge, "The body is too large."),
            _ => ApiError::with_message(Code::MalformedJson, rejection.body_text()),
        }
    }
}

/// For `Option<u64>` query fields documented as `int64`: refuses values above
/// `i64::MAX`, which the document promises do not exist (and which the database could
/// not take).
pub fn int64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    let value = Option::<u64>::deserialize(deserializer)?;
    match value {
        Some(n) if n > i64::MAX as u64 => Err(D::Error::custom(format!("{n} is over the largest int64"))),
        other => Ok(other),
    }
}

/// The schema of a page size that is clamped rather than refused: any `u32` is taken
/// (and brought into `lo`–`hi`); anything else is 400.
pub fn page_size(lo: u32, hi: u32, default: u32) -> Object {
    clamped("Page size", lo, hi, default)
}

/// The schema of a `u32` query value that is clamped rather than refused.
pub fn clamped(what: &str, lo: u32, hi: u32, default: u32) -> Object {
    ObjectBuilder::new()
        .schema_type(SchemaType::new(Type::Integer))
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
        .minimum(Some(0))
        .maximum(Some(u32::MAX))
        .description(Some(format!(
            "{what}. Any value from 0 to 4294967295 is taken and brought into {lo}–{hi} (default {default})."
        )))
        .build()
}

/// `offset` of the admin's lists: any int64 from 0.
pub fn offset() -> Object {
    ObjectBuilder::new()
        .schema_type(SchemaType::new(Type::Integer))
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
        .minimum(Some(0))
        .description(Some("Items to skip."))
        .build()
}

/// `limit` of the native lists: 1–100, default 20.
pub fn limit() -> Object {
    page_size(1, 100, 20)
}

/// `pageSize` of seed 004's list: 1–100, default 10.
pub fn seed004_page_size() -> Object {
    page_size(1, 100, 10)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[test]
    fn whole_floats_become_integers_and_others_stay() {
        let mut value = serde_json::json!({ "a": 5.0, "b": [-3.0, 2.5], "c": 1e300, "d": "7.0", "e": 0.0 });
        super::whole_numbers(&mut value);
        assert_eq!(value, serde_json::json!({ "a": 5, "b": [-3, 2.5], "c": 1e300, "d": "7.0", "e": 0 }));
        assert!(value["a"].is_u64() && value["b"][0].is_i64());
    }

    #[derive(Debug, Deserialize)]
    struct Q {
        #[serde(default, deserialize_with = "super::int64")]
        offset: Option<u64>,
    }

    fn parse(query: &str) -> Result<Option<u64>, String> {
        let uri: axum::http::Uri = format!("/?{query}").parse().map_err(|e| format!("{e}"))?;
        axum::extract::Query::<Q>::try_from_uri(&uri).map(|q| q.0.offset).map_err(|e| e.body_text())
    }

    #[test]
    fn int64_fields_take_what_int64_holds_and_nothing_more() {
        assert_eq!(parse(""), Ok(None));
        assert_eq!(parse("offset=0"), Ok(Some(0)));
        assert_eq!(parse("offset=9223372036854775807"), Ok(Some(i64::MAX as u64)));
        assert!(parse("offset=9223372036854775808").is_err());
        assert!(parse("offset=18446744073709551616").is_err());
        assert!(parse("offset=-1").is_err());
        assert!(parse("offset=x").is_err());
    }
}
