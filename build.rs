//! Embeds the built web page (`web/dist`, made by `npm run build`) into the binary.
//!
//! It writes `$OUT_DIR/web_assets.rs`: a table of (path, bytes) pairs, each file taken
//! with `include_bytes!`, which `src/api/web.rs` includes. When `web/dist` is absent
//! (clippy or `cargo build` before the page was built) the table is empty and the server
//! serves a short page saying so; cargo still builds.
//!
//! Cargo must notice when the page is rebuilt. A changed file is already tracked by its
//! `include_bytes!`, but a new file (a new content hash in its name) is not, hence
//! `rerun-if-changed` on the `dist` directory, which cargo scans recursively.

use std::{
    env, fs,
    path::{Path, PathBuf},
};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let dist = root.join("web").join("dist");
    let mut files = Vec::new();
    if dist.join("index.html").is_file() {
        collect(&dist, &dist, &mut files);
        files.sort();
    } else {
        // An empty `dist` is created so that there is a directory to watch: a path that
        // does not exist would make cargo rerun this script, and rebuild the crate, on
        // every build.
        let _ = fs::create_dir_all(&dist);
    }
    println!("cargo:rerun-if-changed={}", dist.display());
    let mut out = String::from("/// The built page's files: path relative to `web/dist`, with `/` separators.\n");
    out.push_str("pub static FILES: &[(&str, &[u8])] = &[\n");
    for (relative, absolute) in &files {
        out.push_str(&format!("    ({relative:?}, include_bytes!({absolute:?})),\n"));
    }
    out.push_str("];\n");
    let target = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("web_assets.rs");
    fs::write(&target, out).expect("write web_assets.rs");
}

/// Every regular file under `dir`, as (relative path with `/`, absolute path).
fn collect(base: &Path, dir: &Path, files: &mut Vec<(String, String)>) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(base, &path, files);
        } else if path.is_file()
            && let Ok(relative) = path.strip_prefix(base)
        {
            let relative = relative.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/");
            files.push((relative, path.display().to_string()));
        }
    }
}
