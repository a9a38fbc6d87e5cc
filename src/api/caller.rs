//! Turns a request's credentials into the [`Caller`] every face hands to the gateway.
//!
//! A middleware authenticates every request once — an `Authorization: Bearer` API token,
//! else the console's session cookie — refuses a token over its rate with 429 and the
//! `RateLimit` headers (which also go on every answer to a rate-limited token), and
//! leaves the result in the request. The [`Caller`] extractor then refuses anonymous
//! callers when `auth.mode = "tokens"`; [`Visitor`] takes anyone (the sign-in routes,
//! `GET /api/v1/me`).

use axum::{
    extract::{FromRequestParts, Request, State},
    http::{HeaderName, HeaderValue, header, request::Parts},
    middleware::Next,
    response::{IntoResponse, Response},
};

use super::AppState;
use crate::{
    access::Caller,
    accounts::sessions::{COOKIE_NAME, CSRF_HEADER},
    config::AuthMode,
    error::{ApiError, Code},
    ratelimit::Standing,
};

/// What the middleware found: the caller, or the refusal of bad credentials.
#[derive(Clone)]
enum Authenticated {
    Caller(Caller),
    Refused(Code),
}

/// The value of the named cookie in a request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn add_rate_headers(response: &mut Response, standing: &Standing) {
    for (name, value) in standing.headers() {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(HeaderName::from_static(name), value);
        }
    }
}

pub async fn authenticate(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let headers = request.headers();
    let found = state
        .gateway
        .authenticate(
            bearer(headers),
            cookie(headers, COOKIE_NAME),
            request.method(),
            headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()),
        )
        .await;
    let standing = match found {
        Ok((caller, standing)) => {
            request.extensions_mut().insert(Authenticated::Caller(caller));
            standing
        }
        Err(err) if err.code == Code::Internal => return err.into_response(),
        Err(err) => {
            request.extensions_mut().insert(Authenticated::Refused(err.code));
            None
        }
    };
    if let Some(standing) = standing.filter(|s| !s.allowed) {
        let mut response = ApiError::with_message(
            Code::RateLimited,
            format!("This API token may make {} requests a minute; retry in {} s.", standing.limit, standing.reset),
        )
        .retry_after(standing.reset)
        .into_response();
        add_rate_headers(&mut response, &standing);
        return response;
    }
    let mut response = next.run(request).await;
    if let Some(standing) = standing {
        add_rate_headers(&mut response, &standing);
    }
    response
}

fn found(parts: &Parts) -> Result<Caller, ApiError> {
    match parts.extensions.get::<Authenticated>() {
        Some(Authenticated::Caller(caller)) => Ok(caller.clone()),
        Some(Authenticated::Refused(code)) => Err(ApiError::new(*code)),
        // A route outside the middleware: nobody.
        None => Ok(Caller::Anonymous),
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let caller = found(parts)?;
        if caller == Caller::Anonymous && state.gateway.auth_mode() == AuthMode::Tokens {
            return Err(ApiError::new(Code::Unauthorized));
        }
        Ok(caller)
    }
}

/// Whoever calls, anonymous callers included whatever the mode; bad credentials are
/// still refused.
pub struct Visitor(pub Caller);

impl FromRequestParts<AppState> for Visitor {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &AppState) -> Result<Self, Self::Rejection> {
        found(parts).map(Visitor)
    }
}

/// The client's address (for sign-in limits and the audit log): the connection's, or,
/// from a trusted proxy (`server.trusted_proxies`), the one its `X-Forwarded-For` names;
/// unspecified when the request did not come through kiln's server (a test calling the
/// router directly).
pub struct ClientIp(pub std::net::IpAddr);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|info| info.0.ip())
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        let trusted = &state.gateway.config().server.trusted_proxies;
        Ok(ClientIp(client_ip(peer, &parts.headers, trusted)))
    }
}

/// The client behind a chain of trusted proxies: walking `X-Forwarded-For` from the
/// right (the hop nearest kiln), the first address that is not a trusted proxy. A
/// client can write anything at the left of the header, so only what trusted proxies
/// appended counts; an entry that is not an address ends the walk.
fn client_ip(peer: std::net::IpAddr, headers: &axum::http::HeaderMap, trusted: &[ipnet::IpNet]) -> std::net::IpAddr {
    let is_trusted = |ip: &std::net::IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .collect::<Vec<_>>();
    for hop in hops.into_iter().rev() {
        let Ok(ip) = hop.trim().parse::<std::net::IpAddr>() else { break };
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    client
}

/// A caller who is an admin, checked before the request's body is read: 401 for an
/// anonymous caller, 403 for a user.
pub struct Admin(pub Caller);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let caller = found(parts)?;
        state.gateway.require_admin(&caller)?;
        Ok(Admin(caller))
    }
}

/// A signed-in caller (a token or a session), checked before the body is read: 401
/// otherwise, in either mode.
pub struct SignedIn(pub Caller);

impl FromRequestParts<AppState> for SignedIn {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let caller = found(parts)?;
        state.gateway.require_user(&caller)?;
        Ok(SignedIn(caller))
    }
}

#[cfg(test)]
mod client_ip_tests {
    use axum::http::{HeaderMap, HeaderValue};

    use super::client_ip;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append("x-forwarded-for", HeaderValue::from_str(v).expect("header"));
        }
        map
    }

    #[test]
    fn only_trusted_proxies_are_believed_and_only_for_what_they_appended() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().expect("net"), "::1/128".parse().expect("net")];
        let proxy = "10.0.0.5".parse().expect("ip");
        let stranger = "203.0.113.9".parse().expect("ip");
        assert_eq!(client_ip(stranger, &headers(&["198.51.100.1"]), &trusted), stranger, "not a proxy: ignored");
        assert_eq!(client_ip(proxy, &headers(&["198.51.100.1"]), &trusted).to_string(), "198.51.100.1");
        // A client's own forged entry at the left stays at the left.
        let chain = headers(&["1.2.3.4, 198.51.100.1, 10.0.0.7"]);
        assert_eq!(client_ip(proxy, &chain, &trusted).to_string(), "198.51.100.1");
        let split = headers(&["1.2.3.4", "198.51.100.1"]);
        assert_eq!(client_ip(proxy, &split, &trusted).to_string(), "198.51.100.1", "several header lines");
        assert_eq!(client_ip(proxy, &headers(&["garbage, 10.0.0.9"]), &trusted).to_string(), "10.0.0.9");
        assert_eq!(client_ip(proxy, &HeaderMap::new(), &trusted), proxy, "no header: the proxy itself");
        assert_eq!(client_ip(stranger, &HeaderMap::new(), &[]), stranger);
    }
}
