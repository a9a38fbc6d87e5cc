//! The OpenAPI document against the server: every operation gets a corpus of requests
//! (valid ones, unknown and malformed ids, bad, huge and negative query values, empty
//! bodies, wrong content types, malformed JSON), and every answer's status must be one
//! the operation documents, with the body its document promises for it.

use std::collections::BTreeMap;

use reqwest::{Method, header};
use serde_json::{Value, json};

use crate::helpers::{TestApp, fixture};

const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];
const UNKNOWN_ID: &str = "00000000-0000-4000-8000-000000000000";

/// What exists on the server, for requests that should reach past "not found".
struct Known {
    task: String,
    picture: String,
    picture_key: String,
}

struct Probe {
    what: String,
    method: Method,
    path: String,
    query: Option<String>,
    headers: Vec<(String, String)>,
    body: Option<(Option<String>, Vec<u8>)>,
}

fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        for (method, operation) in item.as_object().into_iter().flatten() {
            if METHODS.contains(&method.as_str()) {
                out.push((path.clone(), method.clone(), operation.clone()));
            }
        }
    }
    out
}

fn parameters<'a>(operation: &'a Value, place: &str) -> Vec<&'a str> {
    operation["parameters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["in"] == place)
        .filter_map(|p| p["name"].as_str())
        .collect()
}

/// The real value for a path parameter, by what the path is about.
fn real_value(known: &Known, path: &str) -> String {
    if path.starts_with("/files/") {
        known.picture_key.clone()
    } else if path.starts_with("/static/") {
        format!("{}.glb", known.task)
    } else if path.contains("picture") {
        known.picture.clone()
    } else {
        known.task.clone()
    }
}

fn multipart(boundary: &str, fields: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, filename, bytes) in fields {
        body.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"").as_bytes());
        if let Some(filename) = filename {
            body.extend_from_slice(format!("; filename=\"{filename}\"").as_bytes());
        }
        body.extend_from_slice(b"\r\n\r\n");
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    body
}

fn corpus(known: &Known, path: &str, method: &str, operation: &Value) -> Vec<Probe> {
    let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes()).unwrap_or(Method::GET);
    let path_params = parameters(operation, "path");
    let fill = |value: &str| {
        let mut filled = path.to_owned();
        for name in &path_params {
            filled = filled.replace(&format!("{{{name}}}"), value);
        }
        filled
    };
    let real_path = fill(&real_value(known, path));
    let probe = |what: &str, path: String| Probe {
        what: what.to_owned(),
        method: method.clone(),
        path,
        query: None,
        headers: Vec::new(),
        body: None,
    };
    let mut probes = vec![probe("as documented", real_path.clone())];
    if !path_params.is_empty() {
        for (what, value) in [
            ("unknown id", UNKNOWN_ID.to_owned()),
            ("unknown id with the real one's suffix", format!("{UNKNOWN_ID}.glb")),
            ("malformed id", "not-an-id".to_owned()),
            ("zero", "0".to_owned()),
            ("bytes that are not UTF-8", "%FF%FE".to_owned()),
            ("a long id", "9".repeat(300)),
        ] {
            probes.push(probe(what, fill(&value)));
        }
    }
    for name in parameters(operation, "query") {
        for value in [
            "x",
            "",
            "-1",
            "0",
            "1.5",
            "101",
            "4294967296",
            "9223372036854775807",
            "9223372036854775808",
            "99999999999999999999999",
            UNKNOWN_ID,
        ] {
            let mut p = probe(&format!("?{name}={value}"), real_path.clone());
            p.query = Some(format!("{name}={value}"));
            probes.push(p);
        }
    }
    for name in parameters(operation, "header") {
        for value in ["x", "-1", "99999999999999999999", "bytes=0-1", "bytes=99999999-", "respond-async", ""] {
            let mut p = probe(&format!("{name}: {value}"), real_path.clone());
            p.headers.push((name.to_owned(), value.to_owned()));
            probes.push(p);
        }
    }
    if operation.get("requestBody").is_some() {
        let boundary = "kilnboundary";
        let form = format!("multipart/form-data; boundary={boundary}");
        let json = Some("application/json".to_owned());
        let png = fixture("vase.png");
        let bodies: Vec<(&str, Option<String>, Vec<u8>)> = vec![
            ("no body", None, Vec::new()),
            ("text/plain", Some("text/plain".into()), b"hello".to_vec()),
            ("an empty JSON body", json.clone(), Vec::new()),
            ("malformed JSON", json.clone(), b"{oops".to_vec()),
            ("a JSON array", json.clone(), b"[]".to_vec()),
            ("an empty JSON object", json.clone(), b"{}".to_vec()),
            (
                "JSON with unknown ids",
                json.clone(),
                json!({ "picture_id": UNKNOWN_ID, "pictureId": UNKNOWN_ID, "taskId": UNKNOWN_ID })
                    .to_string()
                    .into_bytes(),
            ),
            (
                "JSON with the real picture",
                json.clone(),
                json!({ "picture_id": known.picture, "pictureId": known.picture }).to_string().into_bytes(),
            ),
            (
                "JSON of the wrong types",
                json.clone(),
                json!({ "prompt": 1, "picture_id": [], "pictureId": {}, "params": "x" }).to_string().into_bytes(),
            ),
            ("a form without a boundary", Some("multipart/form-data".into()), b"x".to_vec()),
            ("an empty form", Some(form.clone()), multipart(boundary, &[])),
            ("a broken form", Some(form.clone()), b"--kilnboundary\r\nnonsense".to_vec()),
            (
                "a form with bytes that are no picture",
                Some(form.clone()),
                multipart(
                    boundary,
                    &[("image", Some("x.png"), b"not a picture"), ("file", Some("x.png"), b"not a picture")],
                ),
            ),
            ("a form with an empty picture", Some(form.clone()), multipart(boundary, &[("image", Some("x.png"), b"")])),
            ("a form with a picture", Some(form.clone()), multipart(boundary, &[("image", Some("vase.png"), &png)])),
            (
                "a form with a picture as `file`",
                Some(form.clone()),
                multipart(boundary, &[("file", Some("vase.png"), &png), ("name", None, b"model.glb")]),
            ),
            (
                "a form with a bad kind",
                Some(form.clone()),
                multipart(
                    boundary,
                    &[("image", Some("vase.png"), &png), ("kind", None, b"nonsense"), ("params", None, b"{oops")],
                ),
            ),
            (
                "a form naming an unknown picture",
                Some(form),
                multipart(boundary, &[("picture_id", None, UNKNOWN_ID.as_bytes())]),
            ),
        ];
        for (what, content_type, bytes) in bodies {
            let mut p = probe(what, real_path.clone());
            p.body = Some((content_type, bytes));
            probes.push(p);
        }
    }
    probes
}

/// Whether `status` is documented by `responses`, and the response object that says so.
fn documented(responses: &Value, status: u16) -> Option<&Value> {
    let exact = status.to_string();
    let range = format!("{}XX", status / 100);
    responses.get(&exact).or_else(|| responses.get(&range)).or_else(|| responses.get("default"))
}

fn media_matches(documented: &str, received: &str) -> bool {
    let main = |t: &str| t.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let (documented, received) = (main(documented), main(received));
    documented == received
        || documented == "*/*"
        || documented.strip_suffix("/*").is_some_and(|top| received.starts_with(&format!("{top}/")))
}

/// What is wrong with an answer, by its operation's document; `None` when nothing is.
async fn judge(doc_root: &Value, operation: &Value, response: reqwest::Response) -> Option<String> {
    let status = response.status().as_u16();
    let Some(doc) = documented(&operation["responses"], status) else {
        let text = response.text().await.unwrap_or_default();
        return Some(format!(
            "answered {status}, which is not documented: {}",
            text.chars().take(200).collect::<String>()
        ));
    };
    let content_type =
        response.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let content = doc["content"].as_object().filter(|c| !c.is_empty())?;
    let Some((media, entry)) = content.iter().find(|(media, _)| media_matches(media, &content_type)) else {
        return Some(format!(
            "answered {status} as `{content_type}`; documented: {:?}",
            content.keys().collect::<Vec<_>>()
        ));
    };
    if media.starts_with("text/event-stream") {
        return judge_stream(doc_root, entry, response).await;
    }
    if !media.starts_with("application/json") {
        return None;
    }
    let schema = entry["schema"]["$ref"].as_str().unwrap_or_default().to_owned();
    let body: Value = match response.json().await {
        Ok(body) => body,
        Err(err) => return Some(format!("answered {status} with a body that is not JSON: {err}")),
    };
    let is_text = |v: &Value| v.as_str().is_some_and(|s| !s.is_empty());
    if schema.ends_with("/ErrorBody")
        && !(is_text(&body["error"]["code"]) && is_text(&body["error"]["message"]) && is_text(&body["request_id"]))
    {
        return Some(format!("answered {status} without the error envelope: {body}"));
    }
    if schema.ends_with("/GenerateAnswer") && status >= 400 && !(body["success"] == false && is_text(&body["error"])) {
        return Some(format!("answered {status} without seed 002's error shape: {body}"));
    }
    let openai_shape = is_text(&body["error"]["message"])
        && is_text(&body["error"]["type"])
        && is_text(&body["error"]["code"])
        && body["error"].as_object().is_some_and(|e| e.contains_key("param"))
        && body.get("request_id").is_none();
    if schema.ends_with("/OpenAiErrorBody") && !openai_shape {
        return Some(format!("answered {status} without OpenAI's error envelope: {body}"));
    }
    None
}

/// The streams probed are of tasks that have ended: each must end by itself, and every
/// event must be of a documented kind with JSON data.
async fn judge_stream(doc: &Value, entry: &Value, response: reqwest::Response) -> Option<String> {
    let target = entry["schema"]["$ref"].as_str().unwrap_or_default().trim_start_matches('#');
    let kinds: Vec<&str> = doc
        .pointer(target)
        .and_then(|schema| schema["oneOf"].as_array())
        .into_iter()
        .flatten()
        .filter_map(|event| event["properties"]["event"]["enum"][0].as_str())
        .collect();
    let text = match tokio::time::timeout(std::time::Duration::from_secs(10), response.text()).await {
        Ok(Ok(text)) => text,
        Ok(Err(err)) => return Some(format!("the stream broke: {err}")),
        Err(_) => return Some("the stream of a task that has ended did not end within 10 s".to_owned()),
    };
    for block in text.split("\n\n").filter(|b| b.lines().any(|l| l.starts_with("data:"))) {
        let field = |name: &str| {
            block.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.strip_prefix(' ').unwrap_or(v)).unwrap_or("")
        };
        let kind = field("event:");
        if !kinds.contains(&kind) {
            return Some(format!("event `{kind}` is not one of the documented {kinds:?}"));
        }
        if field("id:").parse::<u64>().is_err() || serde_json::from_str::<Value>(field("data:")).is_err() {
            return Some(format!("an event without a numeric id or JSON data: {block}"));
        }
    }
    None
}

async fn send(app: &TestApp, probe: &Probe) -> reqwest::Result<reqwest::Response> {
    let mut url = app.url(&probe.path);
    if let Some(query) = &probe.query {
        url = format!("{url}?{query}");
    }
    let mut request = app.client.request(probe.method.clone(), url);
    for (name, value) in &probe.headers {
        request = request.header(name, value);
    }
    if let Some((content_type, bytes)) = &probe.body {
        if let Some(content_type) = content_type {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        request = request.body(bytes.clone());
    }
    request.timeout(std::time::Duration::from_secs(30)).send().await
}

#[tokio::test]
async fn every_answer_to_every_operation_is_documented_for_it() {
    let app = TestApp::spawn().await;
    let task = app.submit_image(&[]).await["id"].as_str().unwrap_or_default().to_owned();
    app.wait_terminal(&task).await;
    let picture: Value = app.upload("/api/v1/pictures", fixture("mug.jpg"), &[]).await.json().await.unwrap_or_default();
    let picture_url = picture["url"].as_str().unwrap_or_default();
    let known = Known {
        task,
        picture: picture["id"].as_str().unwrap_or_default().to_owned(),
        picture_key: picture_url.split_once("/files/").map(|(_, key)| key.to_owned()).unwrap_or_default(),
    };
    assert!(!known.picture.is_empty() && !known.picture_key.is_empty(), "{picture}");

    let (status, doc) = app.get_json("/openapi.json").await;
    assert_eq!(status, 200);
    let mut failures = Vec::new();
    let mut seen: BTreeMap<String, BTreeMap<u16, usize>> = BTreeMap::new();
    for (path, method, operation) in operations(&doc) {
        for probe in corpus(&known, &path, &method, &operation) {
            let label = format!("{} {path} ({})", method.to_ascii_uppercase(), probe.what);
            match send(&app, &probe).await {
                Ok(response) => {
                    *seen
                        .entry(format!("{} {path}", method.to_ascii_uppercase()))
                        .or_default()
                        .entry(response.status().as_u16())
                        .or_default() += 1;
                    if let Some(problem) = judge(&doc, &operation, response).await {
                        failures.push(format!("{label}: {problem}"));
                    }
                }
                Err(err) => failures.push(format!("{label}: no answer: {err}")),
            }
        }
    }
    assert!(failures.is_empty(), "{} undocumented answers:\n{}", failures.len(), failures.join("\n"));
    // The corpus reaches past the front door: successes and refusals of several kinds.
    let statuses: std::collections::BTreeSet<u16> = seen.values().flat_map(|s| s.keys().copied()).collect();
    for expected in [200, 201, 202, 206, 400, 401, 404, 409, 415] {
        assert!(statuses.contains(&expected), "no probe was answered {expected}: {seen:?}");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_method_a_path_does_not_have_is_405_with_allow_and_the_envelope() {
    let app = TestApp::spawn().await;
    let (_, doc) = app.get_json("/openapi.json").await;
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        let path = path.replace(['{', '}'], "");
        for method in ["put", "patch"] {
            if item.get(method).is_some() {
                continue;
            }
            let response = app
                .client
                .request(
                    Method::from_bytes(method.to_ascii_uppercase().as_bytes()).unwrap_or(Method::PUT),
                    app.url(&path),
                )
                .send()
                .await;
            let Ok(response) = response else { panic!("{method} {path}: no answer") };
            assert_eq!(response.status().as_u16(), 405, "{method} {path}");
            assert!(response.headers().contains_key(header::ALLOW), "{method} {path}: no Allow");
            let body: Value = response.json().await.unwrap_or_default();
            assert_eq!(body["error"]["code"], "method_not_allowed", "{method} {path}");
        }
    }
    app.stop().await;
}
