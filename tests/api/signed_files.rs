//! `files.access = "signed"`: every file URL kiln hands out carries an expiry and an
//! HMAC; the URL works as handed out, and a bare, altered or foreign one is refused.

use crate::helpers::{ECHO_CHANNEL, TestApp};

const SIGNED: &str = "[files]\naccess = \"signed\"\nsigned_ttl = \"10m\"\n";

#[tokio::test]
async fn signed_file_urls_work_as_handed_out_and_nothing_else_does() {
    let app = TestApp::spawn_with(&format!("{SIGNED}{ECHO_CHANNEL}")).await;
    let (_, url) = app.finished_output().await;
    let (bare, query) = url.split_once('?').expect("the URL is signed");
    assert!(query.starts_with("expires=") && query.contains("&sig="), "{query}");

    let ok = app.client.get(&url).send().await.unwrap();
    assert_eq!(ok.status(), 200, "as handed out");
    assert!(!ok.bytes().await.unwrap().is_empty());

    for (what, wrong) in [
        ("no signature", bare.to_owned()),
        ("a changed signature", format!("{}0", url.trim_end_matches(|c: char| c.is_ascii_hexdigit()))),
        ("a moved expiry", url.replacen("expires=", "expires=9", 1)),
    ] {
        let refused = app.client.get(&wrong).send().await.unwrap();
        assert_eq!(refused.status(), 403, "{what}");
        let body: serde_json::Value = refused.json().await.unwrap();
        assert_eq!(body["error"]["code"], "file_url_invalid", "{what}");
    }

    // Another file's signature does not open this one.
    let (_, other) = app.finished_output().await;
    let (_, other_query) = other.split_once('?').unwrap();
    let swapped = app.client.get(format!("{bare}?{other_query}")).send().await.unwrap();
    assert_eq!(swapped.status(), 403);
    app.stop().await;
}

#[tokio::test]
async fn public_files_need_no_signature() {
    let app = TestApp::spawn_with(ECHO_CHANNEL).await;
    let (_, url) = app.finished_output().await;
    assert!(!url.contains('?'), "{url}");
    assert_eq!(app.client.get(&url).send().await.unwrap().status(), 200);
    // Whatever query a client or a CDN adds is ignored (schemathesis sent this one).
    let added = format!("{url}?expires=null&expires=null&utm=x");
    assert_eq!(app.client.get(&added).send().await.unwrap().status(), 200);
    app.stop().await;
}
