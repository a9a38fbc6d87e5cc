//! The web page at `/`: the files of `web/dist`, embedded at build time (see `build.rs`),
//! served as the router's fallback so that every API route keeps priority.
//!
//! - A path naming an embedded file serves it; hashed files under `assets/` are cached
//!   for a year (`immutable`: their name changes with their content), everything else is
//!   revalidated on each use (`no-cache` + `ETag`), so a new build shows at once.
//! - The page's own routes (`/tasks/{id}`, `/library`, `/history`, `/signin`, `/account`,
//!   `/console` and its pages: [`PAGE_ROUTES`], [`CONSOLE_PAGES`]) get `index.html`, and
//!   the page shows them itself.
//! - Everything else keeps the JSON 404, above all the paths that belong to the API, the
//!   files or operations (`/api/`, `/files/`, `/health`…): a client asking an API for
//!   JSON must not get HTML with status 200. The page's routes are listed rather than
//!   guessed ("anything without a dot") so that a mistyped API path is never a page.
//! - The build writes `.br` and `.gz` siblings next to compressible files; the one the
//!   client accepts is sent, so the three.js chunk crosses a slow link at a quarter of
//!   its size without compressing on every request.
//! - Every answer carries a strict Content-Security-Policy (no inline script or style,
//!   no `eval`), widened only by what the viewer needs (WebAssembly for the meshopt
//!   decoder, `blob:`/`data:` for glTF parts) and by the origin of the file URLs when it
//!   differs from the page's.
//! - When the page was not built, `/` answers a short plain-text note instead, and the
//!   server works as before.

use std::{collections::HashMap, sync::Arc};

use axum::{
    body::Body,
    extract::Request,
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{MethodRouter, any},
};
use sha2::{Digest, Sha256};

use crate::{
    api::AppState,
    error::{ApiError, Code},
};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/web_assets.rs"));
}

/// The client-side routes of `web/src/router.ts`, answered with `index.html`: whole
/// first segments, `tasks` followed by exactly one more segment (the task id), and
/// `console` followed by one of [`CONSOLE_PAGES`]. Adding a route to the page means
/// adding it here.
const PAGE_ROUTES: [&str; 5] = ["library", "history", "signin", "account", "console"];

/// The console's pages under `/console/` (its dashboard is `/console` itself).
const CONSOLE_PAGES: [&str; 8] = ["channels", "users", "tokens", "usage", "tasks", "audit", "settings", "prices"];

/// Path prefixes that belong to the API, stored files and operations. The page never
/// answers for them, even when nothing else does.
const RESERVED: [&str; 10] =
    ["/api", "/v1", "/files", "/static", "/picture", "/docs", "/openapi.json", "/health", "/ready", "/metrics"];

const NOT_BUILT: &str = "kiln is running, but its web page was not built into this binary.\n\n\
Build it with `make run` (or `cd web && npm ci && npm run build`, then build kiln again).\n\
The API works without it: see /docs for the API browser and /openapi.json for its document.\n";

/// One servable file and its precompressed variants.
struct Asset {
    identity: &'static [u8],
    brotli: Option<&'static [u8]>,
    gzip: Option<&'static [u8]>,
    content_type: &'static str,
    /// Quoted, without the encoding suffix.
    etag: String,
    immutable: bool,
}

/// The embedded page: its files by path (`index.html`, `assets/index-3f2a….js`).
pub struct WebPage {
    assets: HashMap<&'static str, Asset>,
    csp: HeaderValue,
}

impl WebPage {
    /// The page built into this binary, with a policy that allows the origin of
    /// `public_url`, where the file URLs in API answers point.
    pub fn embedded(public_url: &url::Url) -> Self {
        Self::from_files(embedded::FILES, public_url)
    }

    fn from_files(files: &'static [(&'static str, &'static [u8])], public_url: &url::Url) -> Self {
        let by_path: HashMap<&str, &[u8]> = files.iter().copied().collect();
        let mut assets = HashMap::new();
        for (path, bytes) in files {
            if path.ends_with(".br") || path.ends_with(".gz") {
                continue;
            }
            let digest = Sha256::digest(bytes);
            assets.insert(
                *path,
                Asset {
                    identity: bytes,
                    brotli: by_path.get(format!("{path}.br").as_str()).copied(),
                    gzip: by_path.get(format!("{path}.gz").as_str()).copied(),
                    content_type: content_type(path),
                    etag: format!("\"{}\"", hex::encode(&digest[..12])),
                    immutable: path.starts_with("assets/"),
                },
            );
        }
        Self { assets, csp: csp(public_url) }
    }

    /// The answer for a request no API route took.
    fn answer(&self, method: &Method, path: &str, headers: &HeaderMap) -> Response {
        if is_reserved(path) {
            return ApiError::new(Code::NotFound).into_response();
        }
        let relative = path.trim_start_matches('/');
        let found =
            if relative.is_empty() { Some("index.html") } else { self.assets.get_key_value(relative).map(|(k, _)| *k) };
        let target = match found {
            Some(name) => Some(name),
            None if is_page_route(relative) => Some("index.html"),
            // A missing file (a stale hashed asset, a mistyped icon) or any other path is
            // a 404: sending index.html instead would reach a script tag, or an API
            // client, as HTML with status 200.
            None => return ApiError::new(Code::NotFound).into_response(),
        };
        if method != Method::GET && method != Method::HEAD {
            let mut response = ApiError::new(Code::MethodNotAllowed).into_response();
            response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        match target.and_then(|name| self.assets.get(name)) {
            Some(asset) => self.serve(asset, headers),
            None if relative.is_empty() => self.not_built(),
            // Without a page there are no page routes either: only `/` explains.
            None => ApiError::new(Code::NotFound).into_response(),
        }
    }

    fn serve(&self, asset: &Asset, request: &HeaderMap) -> Response {
        let accepted = accepted_encodings(request);
        let (body, encoding) = match (asset.brotli, asset.gzip) {
            (Some(br), _) if accepted.brotli => (br, Some("br")),
            (_, Some(gz)) if accepted.gzip => (gz, Some("gzip")),
            _ => (asset.identity, None),
        };
        let etag = match encoding {
            // Each encoding is a different representation, so it has its own tag.
            Some(encoding) => format!("{}-{encoding}\"", asset.etag.trim_end_matches('"')),
            None => asset.etag.clone(),
        };
        let not_modified = request.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).is_some_and(|v| {
            v.split(',').any(|tag| matches!(tag.trim().trim_start_matches("W/"), t if t == etag || t == "*"))
        });
        let mut response = if not_modified {
            StatusCode::NOT_MODIFIED.into_response()
        } else {
            let mut response = Response::new(Body::from(body));
            response.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
            response
        };
        let headers = response.headers_mut();
        self.common_headers(headers);
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
        if let Ok(value) = HeaderValue::from_str(&etag) {
            headers.insert(header::ETAG, value);
        }
        if let Some(encoding) = encoding {
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(encoding));
        }
        if asset.brotli.is_some() || asset.gzip.is_some() {
            headers.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        }
        let cache = if asset.immutable { "public, max-age=31536000, immutable" } else { "no-cache" };
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
        response
    }

    fn not_built(&self) -> Response {
        let mut response = NOT_BUILT.into_response();
        self.common_headers(response.headers_mut());
        response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        response
    }

    fn common_headers(&self, headers: &mut HeaderMap) {
        headers.insert(header::CONTENT_SECURITY_POLICY, self.csp.clone());
        headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    }
}

/// The router's fallback: the page, or the API's JSON 404/405. The page is built once
/// here, with the policy for this server's `public_url`.
pub fn fallback(public_url: &url::Url) -> MethodRouter<AppState> {
    let page = Arc::new(WebPage::embedded(public_url));
    any(move |request: Request| {
        let page = Arc::clone(&page);
        async move { page.answer(request.method(), request.uri().path(), request.headers()) }
    })
}

fn is_reserved(path: &str) -> bool {
    RESERVED.iter().any(|prefix| {
        path.strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || rest.starts_with('.'))
    })
}

fn is_page_route(relative: &str) -> bool {
    match relative.split_once('/') {
        None => PAGE_ROUTES.contains(&relative),
        Some(("tasks", id)) => !id.is_empty() && !id.contains('/'),
        Some(("console", page)) => CONSOLE_PAGES.contains(&page),
        Some(_) => false,
    }
}

/// The policy. `'self'` covers the page, its scripts and the API. The viewer needs
/// `blob:` for the textures `GLTFLoader` unpacks from a GLB (fetched as object URLs), and
/// `data:` for glTF buffers written inline; the picture preview uses a `blob:` URL too.
/// `'wasm-unsafe-eval'` lets the meshopt decoder (bundled in the viewer's chunk) compile
/// its WebAssembly, without which the compressed model cannot be read; it allows
/// WebAssembly compilation only, not JavaScript's `eval` or `new Function`.
/// File URLs are absolute, built from `server.public_url`: when that is another origin
/// (a CDN, another host name), it must be allowed for images and fetches.
fn csp(public_url: &url::Url) -> HeaderValue {
    let origin = public_url.origin();
    let files = if origin.is_tuple() { format!(" {}", origin.ascii_serialization()) } else { String::new() };
    let policy = format!(
        "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; img-src 'self' blob: data:{files}; \
         connect-src 'self' blob: data:{files}; font-src 'self'; worker-src 'self' blob:; \
         object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    );
    HeaderValue::from_str(&policy).unwrap_or_else(|_| {
        HeaderValue::from_static("default-src 'self'; img-src 'self' blob: data:; connect-src 'self' blob: data:")
    })
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "webmanifest" => "application/manifest+json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "txt" => "text/plain; charset=utf-8",
        "glb" => "model/gltf-binary",
        "wasm" => "application/wasm",
        _ => "application/octet-stream",
    }
}

#[derive(Default, Debug, PartialEq)]
struct Accepted {
    brotli: bool,
    gzip: bool,
}

/// Which of `br` and `gzip` the client accepts (`q=0` refuses).
fn accepted_encodings(headers: &HeaderMap) -> Accepted {
    let mut accepted = Accepted::default();
    for value in headers.get_all(header::ACCEPT_ENCODING).iter().filter_map(|v| v.to_str().ok()) {
        for item in value.split(',') {
            let mut parts = item.split(';');
            let name = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let refused = parts.any(|p| {
                p.trim().strip_prefix("q=").and_then(|q| q.trim().parse::<f32>().ok()).is_some_and(|q| q <= 0.0)
            });
            if refused {
                continue;
            }
            match name.as_str() {
                "br" => accepted.brotli = true,
                "gzip" => accepted.gzip = true,
                "*" => {
                    accepted.brotli = true;
                    accepted.gzip = true;
                }
                _ => {}
            }
        }
    }
    accepted
}

#[cfg(test)]
mod tests {
    use super::*;

    static FILES: &[(&str, &[u8])] = &[
        ("index.html", b"<!doctype html><title>kiln</title>"),
        ("assets/index-abc123.js", b"console.log('page')"),
        ("assets/index-abc123.js.br", b"BR"),
        ("assets/index-abc123.js.gz", b"GZ"),
        ("favicon.svg", b"<svg/>"),
    ];

    fn page() -> WebPage {
        WebPage::from_files(FILES, &url::Url::parse("https://files.example.com/kiln/").expect("url"))
    }

    fn get(page: &WebPage, path: &str, headers: &[(&'static str, &'static str)]) -> Response {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(*name, HeaderValue::from_static(value));
        }
        page.answer(&Method::GET, path, &map)
    }

    async fn body(response: Response) -> Vec<u8> {
        axum::body::to_bytes(response.into_body(), 1 << 20).await.expect("body").to_vec()
    }

    fn header(response: &Response, name: header::HeaderName) -> &str {
        response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    #[tokio::test]
    async fn client_routes_get_index_html_uncached() {
        let page = page();
        for path in [
            "/",
            "/tasks/0193f0e2-aaaa-7bbb-8ccc-000000000000",
            "/library",
            "/history",
            "/signin",
            "/account",
            "/console",
            "/console/channels",
            "/console/users",
            "/console/tokens",
            "/console/usage",
            "/console/tasks",
            "/console/audit",
            "/console/settings",
            "/console/prices",
        ] {
            let response = get(&page, path, &[]);
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            assert_eq!(header(&response, header::CONTENT_TYPE), "text/html; charset=utf-8");
            assert_eq!(header(&response, header::CACHE_CONTROL), "no-cache");
            assert_eq!(body(response).await, b"<!doctype html><title>kiln</title>");
        }
    }

    #[tokio::test]
    async fn reserved_paths_and_missing_files_keep_the_json_404() {
        let page = page();
        for path in [
            "/api/v1/nothing",
            "/api",
            "/v1/images/x",
            "/files/pictures/x.png",
            "/static/x.glb",
            "/picture/upload",
            "/docs/x",
            "/openapi.json",
            "/health",
            "/ready",
            "/metrics",
            "/assets/index-old.js",
            "/missing.png",
            "/nowhere",
            "/etc/passwd",
            "/tasks",
            "/tasks/a/b",
            "/library/x",
            "/console/nope",
            "/console/users/x",
            "/account/tokens",
            "/signin/x",
        ] {
            let response = get(&page, path, &[]);
            assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
            assert!(header(&response, header::CONTENT_TYPE).starts_with("application/json"), "{path}");
            let json: serde_json::Value = serde_json::from_slice(&body(response).await).expect("json");
            assert_eq!(json["error"]["code"], "not_found", "{path}");
        }
        // A reserved prefix is a whole segment: `/healthy` is not `/health`, and not a page either.
        assert_eq!(get(&page, "/healthy", &[]).status(), StatusCode::NOT_FOUND);
        assert!(is_reserved("/health") && is_reserved("/health/x") && !is_reserved("/healthy"));
    }

    #[tokio::test]
    async fn hashed_assets_are_immutable_and_compressed_when_accepted() {
        let page = page();
        let plain = get(&page, "/assets/index-abc123.js", &[]);
        assert_eq!(header(&plain, header::CACHE_CONTROL), "public, max-age=31536000, immutable");
        assert_eq!(header(&plain, header::CONTENT_TYPE), "text/javascript; charset=utf-8");
        assert_eq!(header(&plain, header::VARY), "Accept-Encoding");
        assert!(plain.headers().get(header::CONTENT_ENCODING).is_none());
        let etag = header(&plain, header::ETAG).to_owned();
        assert_eq!(body(plain).await, b"console.log('page')");

        let br = get(&page, "/assets/index-abc123.js", &[("accept-encoding", "gzip, deflate, br")]);
        assert_eq!(header(&br, header::CONTENT_ENCODING), "br");
        assert_ne!(header(&br, header::ETAG), etag);
        assert_eq!(body(br).await, b"BR");

        let gz = get(&page, "/assets/index-abc123.js", &[("accept-encoding", "br;q=0, gzip")]);
        assert_eq!(header(&gz, header::CONTENT_ENCODING), "gzip");
        assert_eq!(body(gz).await, b"GZ");

        // Unhashed files are revalidated.
        assert_eq!(header(&get(&page, "/favicon.svg", &[]), header::CACHE_CONTROL), "no-cache");
    }

    #[tokio::test]
    async fn etag_revalidation_answers_304() {
        let page = page();
        let first = get(&page, "/", &[]);
        let etag: &'static str = header(&first, header::ETAG).to_owned().leak();
        let again = get(&page, "/", &[("if-none-match", etag)]);
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert!(body(again).await.is_empty());
        assert_eq!(get(&page, "/", &[("if-none-match", "\"other\"")]).status(), StatusCode::OK);
    }

    #[test]
    fn policy_is_strict_and_allows_the_file_origin() {
        let response = get(&page(), "/", &[]);
        let policy = header(&response, header::CONTENT_SECURITY_POLICY);
        // WebAssembly (the viewer's meshopt decoder) and nothing else: no `eval`, no
        // inline script or style.
        assert!(policy.contains("script-src 'self' 'wasm-unsafe-eval';"), "{policy}");
        assert!(policy.contains("style-src 'self';"), "{policy}");
        assert_eq!(policy.matches("unsafe").count(), 1, "{policy}");
        assert!(!policy.contains("'unsafe-eval'") && !policy.contains("'unsafe-inline'"), "{policy}");
        assert!(policy.contains("img-src 'self' blob: data: https://files.example.com;"), "{policy}");
        assert!(policy.contains("connect-src 'self' blob: data: https://files.example.com;"), "{policy}");
        assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
    }

    #[tokio::test]
    async fn other_methods_get_405() {
        let response = page().answer(&Method::POST, "/library", &HeaderMap::new());
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(header(&response, header::ALLOW), "GET, HEAD");
    }

    #[tokio::test]
    async fn without_a_build_the_root_explains() {
        let page = WebPage::from_files(&[], &url::Url::parse("http://127.0.0.1:8080/").expect("url"));
        assert!(page.assets.is_empty());
        let response = get(&page, "/", &[]);
        assert_eq!(response.status(), StatusCode::OK);
        assert!(header(&response, header::CONTENT_TYPE).starts_with("text/plain"));
        assert!(String::from_utf8(body(response).await).expect("utf8").contains("not built"));
        assert_eq!(get(&page, "/api/v1/x", &[]).status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn encodings_are_read_with_their_weights() {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip;q=0.5, br;q=0"));
        assert_eq!(accepted_encodings(&headers), Accepted { brotli: false, gzip: true });
        headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("identity"));
        assert_eq!(accepted_encodings(&headers), Accepted::default());
    }
}
