//! `FakeCos`: a Tencent COS bucket as its S3-compatible interface serves it, after
//! `/work/shared/reference/provider-apis.md` §3.1–3.4 and §4 traps 11–15.
//!
//! What it enforces, as COS does for buckets made since 2024:
//!
//! - **Virtual-host addressing only.** A request must carry `Host:
//!   {name-APPID}.cos.{region}.myqcloud.com`; a path-style one (`Host:
//!   cos.{region}.myqcloud.com`, the bucket in the path) is refused with 403 (§3.1). The
//!   error code `PathStyleDomainForbidden` is the fake's own: no COS page gives one.
//! - **SigV4**, checked in full: the credential's key id, date, region and service, the
//!   signed headers (always `host`), the payload hash when one is given, the clock skew
//!   of signed headers, and, for presigned URLs, the expiry. A temporary credential's
//!   session token must come along (`x-amz-security-token`, header or query).
//! - **Private objects**: an unsigned request is refused (403 `AccessDenied`).
//! - **Multipart** parts of at least 1 MiB but the last (§3.2), and a fault to fail one
//!   part so that a client's abort can be seen.
//! - **The default domain forces downloads**: a GET answers `Content-Disposition:
//!   attachment` and `x-cos-force-download: true` (§3.1, trap 13). Every answer carries
//!   `x-cos-request-id` and `Server: tencent-cos`.
//!
//! The fake listens on `127.0.0.1`; a client reaches it under the real host name with a
//! DNS override (`reqwest::ClientBuilder::resolve`) — see [`FakeCos::client`] — so the
//! `Host` it sends is the one production sends (trap 15).

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use axum::{
    body::Body,
    http::{HeaderMap, Method, Request, Response, StatusCode},
};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::server::{Reply, Server};

/// The bucket, region and credential a default `CosOptions` serves and accepts.
pub const COS_BUCKET: &str = "examplebucket-1250000000";
pub const COS_REGION: &str = "ap-guangzhou";
pub const COS_SECRET_ID: &str = "AKIDfakeCOSsecretId0000000000000000";
pub const COS_SECRET_KEY: &str = "fakeCOSsecretKeyThatMustNeverBeLogged";
pub const COS_TOKEN: &str = "fakeCOSsessionTokenThatMustNeverBeLogged";

/// COS's smallest multipart part but the last (§3.2).
pub const COS_MIN_PART: usize = 1024 * 1024;

/// How a `FakeCos` behaves.
#[derive(Clone, Debug)]
pub struct CosOptions {
    pub bucket: String,
    pub region: String,
    pub secret_id: String,
    pub secret_key: String,
    /// A temporary credential's token every request must carry.
    pub token: Option<String>,
    /// Fail this part number of every multipart upload with 500.
    pub fail_part: Option<u32>,
    /// Answer the first this many requests, whatever they are, with 503 `SlowDown`, as
    /// COS does under load: a moment's failure a client should retry.
    pub slow_down_first: usize,
}

impl Default for CosOptions {
    fn default() -> Self {
        CosOptions {
            bucket: COS_BUCKET.to_owned(),
            region: COS_REGION.to_owned(),
            secret_id: COS_SECRET_ID.to_owned(),
            secret_key: COS_SECRET_KEY.to_owned(),
            token: Some(COS_TOKEN.to_owned()),
            fail_part: None,
            slow_down_first: 0,
        }
    }
}

/// A stored object.
#[derive(Clone, Debug)]
pub struct CosObject {
    pub bytes: Vec<u8>,
    pub content_type: Option<String>,
    pub cache_control: Option<String>,
    pub etag: String,
}

/// One request the fake answered.
#[derive(Clone, Debug)]
pub struct CosRequest {
    pub method: String,
    pub host: String,
    pub path: String,
    pub query: String,
    pub status: u16,
    /// Signed with a header (`Authorization`) rather than a presigned URL.
    pub header_signed: bool,
}

#[derive(Default)]
struct Upload {
    key: String,
    content_type: Option<String>,
    cache_control: Option<String>,
    parts: BTreeMap<u32, Vec<u8>>,
}

#[derive(Default)]
struct State {
    objects: HashMap<String, CosObject>,
    uploads: HashMap<String, Upload>,
    requests: Vec<CosRequest>,
    aborted: usize,
    completed_multipart: usize,
    slowed_down: usize,
}

struct Inner {
    options: CosOptions,
    state: Mutex<State>,
}

pub struct FakeCos {
    inner: Arc<Inner>,
    server: Server,
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl FakeCos {
    pub fn start(options: CosOptions) -> FakeCos {
        let inner = Arc::new(Inner { options, state: Mutex::new(State::default()) });
        let handler_inner = Arc::clone(&inner);
        let server = Server::start(2, move |_base| {
            Arc::new(move |request: Request<Body>| {
                let inner = Arc::clone(&handler_inner);
                Box::pin(async move { Reply::Answer(inner.handle(request).await) })
            })
        });
        FakeCos { inner, server }
    }

    /// `cos.{region}.myqcloud.com`: the region's endpoint host, without the bucket.
    pub fn region_host(&self) -> String {
        format!("cos.{}.myqcloud.com", self.inner.options.region)
    }

    /// `{bucket}.cos.{region}.myqcloud.com`: the virtual host.
    pub fn bucket_host(&self) -> String {
        format!("{}.{}", self.inner.options.bucket, self.region_host())
    }

    /// The endpoint to configure: the region's, over plain HTTP (the fake has no TLS).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.region_host())
    }

    /// An HTTP client that reaches the fake under COS's host names (the bucket's and the
    /// region's): a DNS override to `127.0.0.1:PORT`, nothing else changed.
    pub fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .resolve(&self.bucket_host(), self.server.addr)
            .resolve(&self.region_host(), self.server.addr)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client")
    }

    pub fn object(&self, key: &str) -> Option<CosObject> {
        lock(&self.inner.state).objects.get(key).cloned()
    }

    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = lock(&self.inner.state).objects.keys().cloned().collect();
        keys.sort();
        keys
    }

    pub fn requests(&self) -> Vec<CosRequest> {
        lock(&self.inner.state).requests.clone()
    }

    /// Multipart uploads aborted by the client.
    pub fn aborted(&self) -> usize {
        lock(&self.inner.state).aborted
    }

    /// Multipart uploads completed.
    pub fn completed_multipart(&self) -> usize {
        lock(&self.inner.state).completed_multipart
    }

    /// How many requests were answered 503 `SlowDown` (`CosOptions::slow_down_first`).
    pub fn slowed_down(&self) -> usize {
        lock(&self.inner.state).slowed_down
    }

    /// Multipart uploads begun and neither completed nor aborted.
    pub fn open_uploads(&self) -> usize {
        lock(&self.inner.state).uploads.len()
    }
}

fn xml_error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message>\
         <RequestId>fake-cos</RequestId></Error>"
    );
    Response::builder()
        .status(status)
        .header("content-type", "application/xml")
        .body(Body::from(body))
        .expect("response")
}

fn xml(body: String) -> Response<Body> {
    Response::builder().status(200).header("content-type", "application/xml").body(Body::from(body)).expect("xml")
}

fn empty(status: StatusCode) -> Response<Body> {
    Response::builder().status(status).body(Body::empty()).expect("response")
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The query's pairs, percent-decoded, in order.
fn query_pairs(query: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}

/// SigV4's URI encoding: everything but `A–Z a–z 0–9 - _ . ~` as `%XX`.
fn uri_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("any key length");
    mac.update(data.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// `20260101T000000Z` as a time.
fn parse_amz_date(text: &str) -> Option<SystemTime> {
    let t = chrono::NaiveDateTime::parse_from_str(text, "%Y%m%dT%H%M%SZ").ok()?;
    let secs = u64::try_from(t.and_utc().timestamp()).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// What a request's signature says, once checked.
struct Signed {
    by_header: bool,
}

impl Inner {
    async fn handle(&self, request: Request<Body>) -> Response<Body> {
        let (parts, body) = request.into_parts();
        let host = header(&parts.headers, "host").unwrap_or("").to_owned();
        let path = parts.uri.path().to_owned();
        let query = parts.uri.query().unwrap_or("").to_owned();
        let body = match axum::body::to_bytes(body, 64 * 1024 * 1024).await {
            Ok(body) => body,
            Err(_) => return xml_error(StatusCode::BAD_REQUEST, "IncompleteBody", "cannot read the body"),
        };
        let slow_down = {
            let mut state = lock(&self.state);
            let slow_down = state.slowed_down < self.options.slow_down_first;
            if slow_down {
                state.slowed_down += 1;
            }
            slow_down
        };
        let (mut response, header_signed) = if slow_down {
            (xml_error(StatusCode::SERVICE_UNAVAILABLE, "SlowDown", "Please reduce your request rate."), false)
        } else {
            self.answer(&parts.method, &host, &path, &query, &parts.headers, &body)
        };
        let headers = response.headers_mut();
        headers.insert("server", "tencent-cos".parse().expect("header"));
        headers.insert("x-cos-request-id", uuid::Uuid::new_v4().to_string().parse().expect("header"));
        lock(&self.state).requests.push(CosRequest {
            method: parts.method.to_string(),
            host,
            path,
            query,
            status: response.status().as_u16(),
            header_signed,
        });
        response
    }

    fn answer(
        &self,
        method: &Method,
        host: &str,
        path: &str,
        query: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> (Response<Body>, bool) {
        let options = &self.options;
        let region_host = format!("cos.{}.myqcloud.com", options.region);
        let bucket_host = format!("{}.{region_host}", options.bucket);
        let host_name = host.split(':').next().unwrap_or("");
        if host_name == region_host {
            return (
                xml_error(
                    StatusCode::FORBIDDEN,
                    "PathStyleDomainForbidden",
                    "Path-style requests are not supported for buckets created on or after 2024-01-01; \
                     use the virtual-hosted domain",
                ),
                false,
            );
        }
        if host_name != bucket_host {
            return (xml_error(StatusCode::NOT_FOUND, "NoSuchBucket", "The specified bucket does not exist."), false);
        }
        let signed = match self.verify(method, host, path, query, headers, body) {
            Ok(signed) => signed,
            Err((code, message)) => return (xml_error(StatusCode::FORBIDDEN, code, &message), false),
        };
        let key = match percent_encoding_decode(path.trim_start_matches('/')) {
            Some(key) => key,
            None => return (xml_error(StatusCode::BAD_REQUEST, "InvalidURI", "bad key"), signed.by_header),
        };
        let pairs = query_pairs(query);
        let has = |name: &str| pairs.iter().any(|(k, _)| k == name);
        let get = |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let response = match *method {
            Method::PUT if has("partNumber") => self.upload_part(get("uploadId"), get("partNumber"), body),
            Method::PUT => {
                let object = CosObject {
                    bytes: body.to_vec(),
                    content_type: header(headers, "content-type").map(str::to_owned),
                    cache_control: header(headers, "cache-control").map(str::to_owned),
                    etag: format!("\"{}\"", hex::encode(Sha256::digest(body))[..32].to_owned()),
                };
                let etag = object.etag.clone();
                lock(&self.state).objects.insert(key, object);
                Response::builder().status(200).header("etag", etag).body(Body::empty()).expect("response")
            }
            Method::POST if has("uploads") => {
                let id = uuid::Uuid::new_v4().simple().to_string();
                let upload = Upload {
                    key: key.clone(),
                    content_type: header(headers, "content-type").map(str::to_owned),
                    cache_control: header(headers, "cache-control").map(str::to_owned),
                    parts: BTreeMap::new(),
                };
                lock(&self.state).uploads.insert(id.clone(), upload);
                xml(format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<InitiateMultipartUploadResult><Bucket>{}</Bucket>\
                     <Key>{key}</Key><UploadId>{id}</UploadId></InitiateMultipartUploadResult>",
                    options.bucket
                ))
            }
            Method::POST if has("uploadId") => self.complete(get("uploadId"), &key, body),
            Method::POST if has("delete") => self.delete_many(body),
            Method::DELETE if has("uploadId") => {
                let mut state = lock(&self.state);
                match get("uploadId").and_then(|id| state.uploads.remove(&id)) {
                    Some(_) => {
                        state.aborted += 1;
                        empty(StatusCode::NO_CONTENT)
                    }
                    None => xml_error(StatusCode::NOT_FOUND, "NoSuchUpload", "The upload does not exist."),
                }
            }
            Method::DELETE => {
                lock(&self.state).objects.remove(&key);
                empty(StatusCode::NO_CONTENT)
            }
            Method::GET | Method::HEAD => self.read(method, &key, headers),
            _ => xml_error(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", "not supported by the fake"),
        };
        (response, signed.by_header)
    }

    fn read(&self, method: &Method, key: &str, headers: &HeaderMap) -> Response<Body> {
        let Some(object) = lock(&self.state).objects.get(key).cloned() else {
            return xml_error(StatusCode::NOT_FOUND, "NoSuchKey", "The specified key does not exist.");
        };
        let len = object.bytes.len();
        let (status, start, end) = match header(headers, "range").and_then(|r| r.strip_prefix("bytes=")) {
            Some(range) => {
                let (a, b) = range.split_once('-').unwrap_or((range, ""));
                let start: usize = a.parse().unwrap_or(0);
                let end: usize = if b.is_empty() { len } else { b.parse::<usize>().map(|e| e + 1).unwrap_or(len) };
                if start >= len {
                    return xml_error(StatusCode::RANGE_NOT_SATISFIABLE, "InvalidRange", "out of range");
                }
                (StatusCode::PARTIAL_CONTENT, start, end.min(len))
            }
            None => (StatusCode::OK, 0, len),
        };
        let mut builder = Response::builder()
            .status(status)
            .header("etag", &object.etag)
            .header("content-length", end - start)
            .header("accept-ranges", "bytes")
            .header("last-modified", httpdate::fmt_http_date(SystemTime::now()))
            // The default domain never shows an object inline (§3.1, trap 13).
            .header("content-disposition", "attachment")
            .header("x-cos-force-download", "true");
        if let Some(ct) = &object.content_type {
            builder = builder.header("content-type", ct);
        }
        if let Some(cc) = &object.cache_control {
            builder = builder.header("cache-control", cc);
        }
        if status == StatusCode::PARTIAL_CONTENT {
            builder = builder.header("content-range", format!("bytes {start}-{}/{len}", end - 1));
        }
        let body = if *method == Method::HEAD { Body::empty() } else { Body::from(object.bytes[start..end].to_vec()) };
        builder.body(body).expect("response")
    }

    fn upload_part(&self, id: Option<String>, number: Option<String>, body: &[u8]) -> Response<Body> {
        let Some(number) = number.and_then(|n| n.parse::<u32>().ok()) else {
            return xml_error(StatusCode::BAD_REQUEST, "InvalidArgument", "bad partNumber");
        };
        if self.options.fail_part == Some(number) {
            return xml_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "the fake was told to fail this part",
            );
        }
        let mut state = lock(&self.state);
        let Some(upload) = id.and_then(|id| state.uploads.get_mut(&id)) else {
            return xml_error(StatusCode::NOT_FOUND, "NoSuchUpload", "The upload does not exist.");
        };
        upload.parts.insert(number, body.to_vec());
        let etag = format!("\"{}\"", &hex::encode(Sha256::digest(body))[..32]);
        Response::builder().status(200).header("etag", etag).body(Body::empty()).expect("response")
    }

    fn complete(&self, id: Option<String>, key: &str, body: &[u8]) -> Response<Body> {
        let text = String::from_utf8_lossy(body);
        let listed: Vec<u32> =
            text.split("<PartNumber>").skip(1).filter_map(|s| s.split('<').next()?.trim().parse().ok()).collect();
        let mut state = lock(&self.state);
        let Some(upload) = id.as_ref().and_then(|id| state.uploads.remove(id)) else {
            return xml_error(StatusCode::NOT_FOUND, "NoSuchUpload", "The upload does not exist.");
        };
        if upload.key != key || listed.is_empty() {
            return xml_error(StatusCode::BAD_REQUEST, "InvalidPart", "parts do not match the upload");
        }
        let mut bytes = Vec::new();
        for (i, number) in listed.iter().enumerate() {
            let Some(part) = upload.parts.get(number) else {
                return xml_error(StatusCode::BAD_REQUEST, "InvalidPart", "a listed part was never uploaded");
            };
            if i + 1 < listed.len() && part.len() < COS_MIN_PART {
                return xml_error(StatusCode::BAD_REQUEST, "EntityTooSmall", "a part but the last is under 1 MiB");
            }
            bytes.extend_from_slice(part);
        }
        let etag = format!("\"{}-{}\"", &hex::encode(Sha256::digest(&bytes))[..32], listed.len());
        let object = CosObject {
            bytes,
            content_type: upload.content_type,
            cache_control: upload.cache_control,
            etag: etag.clone(),
        };
        state.objects.insert(key.to_owned(), object);
        state.completed_multipart += 1;
        xml(format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<CompleteMultipartUploadResult><Bucket>{}</Bucket>\
             <Key>{key}</Key><ETag>{etag}</ETag></CompleteMultipartUploadResult>",
            self.options.bucket
        ))
    }

    fn delete_many(&self, body: &[u8]) -> Response<Body> {
        let text = String::from_utf8_lossy(body);
        let keys: Vec<String> =
            text.split("<Key>").skip(1).filter_map(|s| s.split("</Key>").next().map(str::to_owned)).collect();
        let mut state = lock(&self.state);
        let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<DeleteResult>");
        for key in keys {
            state.objects.remove(&key);
            out.push_str(&format!("<Deleted><Key>{key}</Key></Deleted>"));
        }
        out.push_str("</DeleteResult>");
        xml(out)
    }

    /// Checks a request's SigV4 signature, from its `Authorization` header or, for a
    /// presigned URL, its query.
    fn verify(
        &self,
        method: &Method,
        host: &str,
        path: &str,
        query: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Signed, (&'static str, String)> {
        let options = &self.options;
        let pairs = query_pairs(query);
        let from_query = |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let denied = |why: &str| ("AccessDenied", why.to_owned());
        let (by_header, credential, signed_headers, signature, amz_date, payload_hash, token) =
            if let Some(auth) = header(headers, "authorization") {
                let rest = auth.strip_prefix("AWS4-HMAC-SHA256 ").ok_or_else(|| denied("not SigV4"))?;
                let mut fields = HashMap::new();
                for field in rest.split(',') {
                    if let Some((k, v)) = field.trim().split_once('=') {
                        fields.insert(k.to_owned(), v.to_owned());
                    }
                }
                let field = |name: &str| fields.get(name).cloned().ok_or_else(|| denied("incomplete Authorization"));
                let amz_date = header(headers, "x-amz-date").ok_or_else(|| denied("no x-amz-date"))?.to_owned();
                let payload = header(headers, "x-amz-content-sha256").unwrap_or("UNSIGNED-PAYLOAD").to_owned();
                if payload != "UNSIGNED-PAYLOAD" && payload != hex::encode(Sha256::digest(body)) {
                    return Err(("XAmzContentSHA256Mismatch", "the body's hash differs".to_owned()));
                }
                let token = header(headers, "x-amz-security-token").map(str::to_owned);
                (true, field("Credential")?, field("SignedHeaders")?, field("Signature")?, amz_date, payload, token)
            } else if from_query("X-Amz-Algorithm").as_deref() == Some("AWS4-HMAC-SHA256") {
                let need = |name: &str| from_query(name).ok_or_else(|| denied("incomplete presigned URL"));
                let amz_date = need("X-Amz-Date")?;
                let expires: u64 = need("X-Amz-Expires")?.parse().map_err(|_| denied("bad X-Amz-Expires"))?;
                let start = parse_amz_date(&amz_date).ok_or_else(|| denied("bad X-Amz-Date"))?;
                if SystemTime::now() > start + Duration::from_secs(expires) {
                    return Err(denied("Request has expired"));
                }
                let token = from_query("X-Amz-Security-Token");
                (
                    false,
                    need("X-Amz-Credential")?,
                    need("X-Amz-SignedHeaders")?,
                    need("X-Amz-Signature")?,
                    amz_date,
                    "UNSIGNED-PAYLOAD".to_owned(),
                    token,
                )
            } else {
                return Err(denied("Anonymous access is forbidden for this operation (the object is private)"));
            };
        let scope: Vec<&str> = credential.split('/').collect();
        let [key_id, date, region, service, terminator] = scope[..] else {
            return Err(denied("bad credential scope"));
        };
        if key_id != options.secret_id {
            return Err(("InvalidAccessKeyId", "The access key id does not exist.".to_owned()));
        }
        if region != options.region || service != "s3" || terminator != "aws4_request" || !amz_date.starts_with(date) {
            return Err(("AuthorizationQueryParametersError", format!("wrong credential scope {credential}")));
        }
        if token.as_deref() != options.token.as_deref() {
            return Err(("InvalidToken", "The session token is missing or wrong.".to_owned()));
        }
        if by_header {
            let at = parse_amz_date(&amz_date).ok_or_else(|| denied("bad x-amz-date"))?;
            let skew = match SystemTime::now().duration_since(at) {
                Ok(d) => d,
                Err(e) => e.duration(),
            };
            if skew > Duration::from_secs(15 * 60) {
                return Err((
                    "RequestTimeTooSkewed",
                    "The difference between the request time and now is too large.".to_owned(),
                ));
            }
        }
        let names: Vec<&str> = signed_headers.split(';').collect();
        if !names.contains(&"host") {
            return Err(denied("host is not signed"));
        }
        let mut canonical_headers = String::new();
        for name in &names {
            let value = if *name == "host" { Some(host) } else { header(headers, name) };
            let value = value.ok_or_else(|| denied("a signed header is missing"))?;
            let value = value.split_whitespace().collect::<Vec<_>>().join(" ");
            canonical_headers.push_str(&format!("{name}:{value}\n"));
        }
        let mut query_items: Vec<(String, String)> = pairs
            .iter()
            .filter(|(k, _)| by_header || k != "X-Amz-Signature")
            .map(|(k, v)| (uri_encode(k), uri_encode(v)))
            .collect();
        query_items.sort();
        let canonical_query = query_items.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");
        let canonical_request =
            format!("{method}\n{path}\n{canonical_query}\n{canonical_headers}\n{signed_headers}\n{payload_hash}");
        let to_sign = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{date}/{region}/s3/aws4_request\n{}",
            hex::encode(Sha256::digest(canonical_request.as_bytes()))
        );
        let mut key = hmac(format!("AWS4{}", options.secret_key).as_bytes(), date);
        for part in [region, "s3", "aws4_request"] {
            key = hmac(&key, part);
        }
        let expected = hex::encode(hmac(&key, &to_sign));
        if expected != signature {
            return Err(("SignatureDoesNotMatch", "The request signature we calculated does not match.".to_owned()));
        }
        Ok(Signed { by_header })
    }
}

/// A path's `%XX` escapes decoded; `None` when they are not UTF-8.
fn percent_encoding_decode(path: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(path.len());
    let raw = path.as_bytes();
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            let hex = std::str::from_utf8(raw.get(i + 1..i + 3)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            bytes.push(raw[i]);
            i += 1;
        }
    }
    String::from_utf8(bytes).ok()
}
