//! The faces' boundary: every face reads and writes through the gateway's methods that
//! take a `Caller`, so who may see what is decided in one place. A face that reached
//! the database, the storage or the event bus directly would bypass that; this test
//! reads the faces' source and names any that do.

use std::path::Path;

const FORBIDDEN: [&str; 5] = [".db()", ".storage()", ".bus()", ".runs()", "sqlx::"];

fn sources(dir: &Path, found: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

#[test]
fn faces_reach_data_only_through_the_gateway() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("src/api.rs")];
    sources(&root.join("src/api"), &mut files);
    assert!(files.len() > 10, "the faces were found: {files:?}");
    let mut offenders = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for needle in FORBIDDEN {
                if line.contains(needle) {
                    offenders.push(format!(
                        "{}:{}: {}",
                        file.strip_prefix(root).unwrap().display(),
                        n + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(offenders.is_empty(), "faces must call the gateway's caller-taking methods:\n{}", offenders.join("\n"));
}
