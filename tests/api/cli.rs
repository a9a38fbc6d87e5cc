//! The `kiln` binary's commands: configuration checks and the `generate` client.

use std::process::Command;

use crate::helpers::TestApp;

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

#[test]
fn config_check_lists_every_problem_with_its_key_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kiln.toml");
    std::fs::write(
        &path,
        "[server]\nbind = \"not an address\"\n\n[upload]\nmax_bytes = -1\nmax_side = 4\n\n[retention]\nrun_at = \"25:99\"\n",
    )
    .unwrap();
    let output = Command::new(KILN)
        .args(["config", "check", "--config"])
        .arg(&path)
        .env("KILN_TASKS__DEADLINE", "soon")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for key in ["server.bind", "upload.max_bytes", "upload.max_side", "retention.run_at", "tasks.deadline"] {
        assert!(stderr.contains(key), "{key} not reported:\n{stderr}");
    }
    assert!(stderr.contains("KILN_TASKS__DEADLINE"), "the env var is named:\n{stderr}");
}

#[test]
fn config_check_prints_the_effective_configuration_with_secrets_masked() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(KILN)
        .args(["config", "check", "--data-dir"])
        .arg(dir.path())
        // Opens no database, so it runs alike on both backends: `config check` only
        // prints the configuration, and this URL is there for its password to be masked.
        .env("KILN_DATABASE__URL", "sqlite://kiln:hunter2@localhost/kiln.db")
        .env("KILN_SERVER__BIND", "127.0.0.1:9999")
        .env_remove("KILN_CONFIG")
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("bind = \"127.0.0.1:9999\""), "{stdout}");
    assert!(!stdout.contains("hunter2"), "{stdout}");
    assert!(stdout.contains("kiln:********@localhost"), "{stdout}");
}

#[test]
fn unknown_keys_and_unknown_provider_types_are_configuration_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kiln.toml");
    std::fs::write(
        &path,
        "[server]\nbindd = \"127.0.0.1:1\"\n\n[[channels]]\nname = \"x\"\ntype = \"warp-drive\"\nmodels = [{ name = \"m\", kind = \"image_to_3d\" }]\n",
    )
    .unwrap();
    let output = Command::new(KILN).args(["config", "check", "--config"]).arg(&path).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("server.bindd"), "{stderr}");
    let output = {
        std::fs::write(
            &path,
            "[[channels]]\nname = \"x\"\ntype = \"warp-drive\"\nmodels = [{ name = \"m\", kind = \"image_to_3d\" }]\n",
        )
        .unwrap();
        Command::new(KILN).args(["config", "check", "--config"]).arg(&path).output().unwrap()
    };
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("channels[0].type"));
}

#[tokio::test]
async fn generate_submits_follows_and_downloads_the_result() {
    let app = TestApp::spawn().await;
    let out = app.dir.path().join("model.glb");
    let image = format!("{}/mug.jpg", crate::helpers::FIXTURES);
    let output = tokio::process::Command::new(KILN)
        .args(["generate", &image, "--quiet", "--server", &app.base, "-o"])
        .arg(&out)
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(std::fs::read(&out).unwrap(), crate::helpers::fixture("mug.jpg"));

    let output = tokio::process::Command::new(KILN)
        .args([
            "generate",
            &format!("{}/invalid/truncated.png", crate::helpers::FIXTURES),
            "--quiet",
            "--server",
            &app.base,
        ])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("corrupt_image"));

    let output = tokio::process::Command::new(KILN)
        .args(["generate", &image, "--quiet", "--params", r#"{"fail": "no_foreground_object"}"#, "--server", &app.base])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("no_foreground_object"));
    app.stop().await;
}

/// An echo channel serving every kind: a picture model, and a prompt model for each text kind.
const EVERY_KIND: &str = r#"
[[channels]]
name = "echo"
type = "echo"
max_concurrency = 2
max_queue = 50
models = [
  { name = "echo", kind = "image_to_3d" },
  { name = "sculptor", kind = "text_to_3d" },
  { name = "painter", kind = "text_to_image" },
]
"#;

#[tokio::test]
async fn generate_makes_every_kind_and_names_the_file_after_its_format() {
    let app = TestApp::spawn_with(EVERY_KIND).await;
    let work = app.dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let generate = |args: &[&str]| {
        let mut command = tokio::process::Command::new(KILN);
        command.arg("generate").args(args).args(["--quiet", "--server", &app.base]).current_dir(&work);
        command.output()
    };
    let written = |stdout: &[u8]| {
        let line = String::from_utf8_lossy(stdout);
        work.join(line.split(" (").next().unwrap_or_default().trim())
    };

    // Text to image, default name: `<task id>.png`, a real picture.
    let output = generate(&["--prompt", "a red fox in the snow", "-m", "painter"]).await.unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let path = written(&output.stdout);
    assert_eq!(path.extension().unwrap(), "png", "{}", path.display());
    let picture = image::load_from_memory(&std::fs::read(&path).unwrap()).expect("the download is a picture");
    assert_eq!((picture.width(), picture.height()), (400, 300));
    assert!(String::from_utf8_lossy(&output.stdout).contains("png"));

    // `--out` (and `-o`) take a file name, or a directory to put `<task id>.png` in.
    let output = generate(&["--prompt", "a fox", "--model", "painter", "--out", "fox.png"]).await.unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(image::load_from_memory(&std::fs::read(work.join("fox.png")).unwrap()).is_ok());
    std::fs::create_dir(work.join("pictures")).unwrap();
    let output = generate(&["--prompt", "a fox", "-m", "painter", "-o", "pictures"]).await.unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let inside: Vec<_> = std::fs::read_dir(work.join("pictures")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(inside.len(), 1);
    assert_eq!(inside[0].extension().unwrap(), "png");
    // A name that says another format is kept, with a note.
    let output = generate(&["--prompt", "a fox", "-m", "painter", "-o", "fox.glb"]).await.unwrap();
    assert!(output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("the result is PNG"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // Text to 3D: `<task id>.glb`.
    let output = generate(&["--prompt", "a vase", "-m", "sculptor"]).await.unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let path = written(&output.stdout);
    assert_eq!(path.extension().unwrap(), "glb", "{}", path.display());
    assert_eq!(std::fs::read(&path).unwrap(), b"a vase");

    // A prompt for a picture model is refused with the server's words.
    let output = generate(&["--prompt", "a vase", "-m", "echo"]).await.unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("missing_input"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    app.stop().await;
}

#[tokio::test]
async fn cleanup_deletes_old_files_on_demand() {
    let app = TestApp::spawn().await;
    let (_, url) = app.finished_output().await;
    assert_eq!(app.client.get(&url).send().await.unwrap().status().as_u16(), 200);

    let output = tokio::process::Command::new(KILN)
        .args(["cleanup", "--older-than", "0s", "--config"])
        .arg(app.dir.path().join("kiln.toml"))
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("expired 2 file(s)"));
    assert_eq!(app.client.get(&url).send().await.unwrap().status().as_u16(), 410);
    app.stop().await;
}

#[test]
fn config_check_masks_channel_secrets_and_refuses_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kiln.toml");
    let secret = "whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA==";
    let channel = |secret: &str| {
        format!(
            "[[channels]]\nname = \"gpu\"\ntype = \"worker\"\nsecret = \"{secret}\"\nmodels = [{{ name = \"trellis2\", kind = \"image_to_3d\" }}]\noptions = {{ workers = [\"http://127.0.0.1:9\"] }}\n"
        )
    };
    std::fs::write(&path, channel(secret)).unwrap();
    let output = Command::new(KILN).args(["config", "check", "--config"]).arg(&path).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(!stdout.contains("c2VjcmV0"), "{stdout}");
    assert!(stdout.contains("secret = \"********\""), "{stdout}");

    std::fs::write(&path, channel("hunter2")).unwrap();
    let output = Command::new(KILN).args(["config", "check", "--config"]).arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr.contains("channels[0]") && stderr.contains("whsec_"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

#[test]
fn kiln_variables_that_are_not_keys_do_not_stop_the_server_but_misspelt_keys_do() {
    let dir = tempfile::tempdir().unwrap();
    let check = |envs: &[(&str, &str)]| {
        let mut command = Command::new(KILN);
        command
            .args(["config", "check", "--data-dir"])
            .arg(dir.path())
            .env_remove("KILN_CONFIG")
            .current_dir(dir.path());
        for (k, v) in envs {
            command.env(k, v);
        }
        command.output().unwrap()
    };
    let output = check(&[
        ("KILN_SERVER", "http://127.0.0.1:9"),
        ("KILN_BIND", "127.0.0.1:9"),
        ("KILN_WORKER_SECRET", "whsec_x"),
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let output = check(&[("KILN_SERVER__BINDD", "127.0.0.1:9")]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("KILN_SERVER__BINDD"));
}

#[test]
fn logs_written_to_a_pipe_carry_no_colour_codes() {
    use std::io::{BufRead, BufReader};

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("kiln.toml");
    let toml = crate::helpers::config_toml(dir.path(), "").replace("level = \"warn\"", "level = \"info\"");
    std::fs::write(&config, toml).unwrap();
    let mut child = Command::new(KILN)
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = Vec::new();
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap();
        let listening = line.contains("kiln is listening");
        lines.push(line);
        if listening {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(lines.iter().any(|l| l.contains("kiln is listening")), "{lines:?}");
    assert!(lines.iter().all(|l| !l.contains('\u{1b}')), "escape codes in a pipe: {lines:?}");
}
