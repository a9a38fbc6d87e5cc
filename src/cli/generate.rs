//! `kiln generate`: a client of the native API. Submits a picture or a prompt, shows a
//! progress bar fed by the task's event stream (resuming with `Last-Event-ID` if the
//! connection drops), and downloads the main output: the model of a 3D task, the image
//! of a text-to-image task, named after its format unless `--output` says otherwise.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::Args;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Picture to turn into a model (JPEG, PNG or WebP).
    #[arg(value_name = "IMAGE", required_unless_present = "prompt")]
    image: Option<PathBuf>,
    /// Text prompt, for text-to-3D or text-to-image models.
    #[arg(long)]
    prompt: Option<String>,
    /// Model to use (default: the server's default for the input); its kind decides
    /// what is made (`GET /api/v1/catalog` lists them).
    #[arg(short, long)]
    model: Option<String>,
    /// Provider options as a JSON object.
    #[arg(long, value_name = "JSON")]
    params: Option<String>,
    /// kiln server.
    #[arg(long, env = "KILN_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// Where to write the result (default: `<task id>.<format>`, e.g. `….glb` for a
    /// model, `….png` for an image; into it when it is a directory).
    #[arg(short, long, visible_alias = "out", value_name = "FILE")]
    output: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

/// A failure to report: the message, and the exit code.
struct Failure(String);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(err: E) -> Self {
        Failure(err.to_string())
    }
}

pub async fn run(args: GenerateArgs) -> ExitCode {
    match generate(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(message)) => {
            eprintln!("kiln: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The server's error sentence from an error envelope, or the status line.
async fn server_error(response: reqwest::Response) -> Failure {
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    match serde_json::from_str::<Value>(&text) {
        Ok(body) => {
            let code = body["error"]["code"].as_str().unwrap_or("error");
            let message = body["error"]["message"].as_str().unwrap_or("the server refused the request");
            Failure(format!("{message} ({code}, HTTP {})", status.as_u16()))
        }
        Err(_) => Failure(format!("the server answered HTTP {status}")),
    }
}

async fn generate(args: GenerateArgs) -> Result<(), Failure> {
    let base = args.server.trim_end_matches('/').to_owned();
    let client = reqwest::Client::builder().connect_timeout(Duration::from_secs(10)).build()?;
    let url = format!("{base}/api/v1/tasks");
    let request = match &args.image {
        Some(path) => {
            let bytes =
                tokio::fs::read(path).await.map_err(|e| Failure(format!("cannot read {}: {e}", path.display())))?;
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "image".into());
            let mut form =
                reqwest::multipart::Form::new().part("image", reqwest::multipart::Part::bytes(bytes).file_name(name));
            if let Some(prompt) = &args.prompt {
                form = form.text("prompt", prompt.clone());
            }
            if let Some(model) = &args.model {
                form = form.text("model", model.clone());
            }
            if let Some(params) = &args.params {
                form = form.text("params", params.clone());
            }
            client.post(&url).multipart(form)
        }
        None => {
            let params: Value = match &args.params {
                Some(p) => serde_json::from_str(p).map_err(|e| Failure(format!("--params is not JSON: {e}")))?,
                None => Value::Object(Default::default()),
            };
            client.post(&url).json(&serde_json::json!({ "prompt": args.prompt, "model": args.model, "params": params }))
        }
    };
    let response = request.send().await.map_err(|e| Failure(format!("cannot reach {base}: {e}")))?;
    if !response.status().is_success() {
        return Err(server_error(response).await);
    }
    let task: Value = response.json().await?;
    let id = task["id"].as_str().ok_or_else(|| Failure("the server's answer has no task id".into()))?.to_owned();
    let kind = task["kind"].as_str().unwrap_or_default().to_owned();
    let events_url = format!("{base}/api/v1/tasks/{id}/events");

    let bar = if args.quiet { ProgressBar::hidden() } else { ProgressBar::new(100) };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{bar:30}] {pos:>3}% {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    bar.set_message(format!("task {id} submitted"));

    let mut last_id: Option<String> = None;
    let mut attempts = 0;
    let outcome = 'follow: loop {
        let mut request = client.get(&events_url);
        if let Some(last) = &last_id {
            request = request.header("Last-Event-ID", last);
        }
        let response = match request.send().await {
            Ok(r) if r.status().is_success() => r,
            Ok(r) => return Err(server_error(r).await),
            Err(err) => {
                attempts += 1;
                if attempts > 5 {
                    return Err(Failure(format!("lost the event stream: {err}")));
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut events = response.bytes_stream().eventsource();
        while let Some(event) = events.next().await {
            let Ok(event) = event else { break };
            attempts = 0;
            if !event.id.is_empty() {
                last_id = Some(event.id.clone());
            }
            let data: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
            match event.event.as_str() {
                "queued" => {
                    let position = data["position"].as_u64().unwrap_or(0);
                    bar.set_message(format!("queued, {} in line", ordinal(position)));
                }
                "processing" => {
                    bar.set_position(data["progress"].as_u64().unwrap_or(0).min(100));
                    bar.set_message(data["stage"].as_str().unwrap_or("processing").to_owned());
                }
                "result" => bar.println(format!("  output ready: {}", data["url"].as_str().unwrap_or(""))),
                "completed" => break 'follow Ok(()),
                "failed" => {
                    let message = data["error"]["message"].as_str().unwrap_or("the task failed");
                    let code = data["error"]["code"].as_str().unwrap_or("failed");
                    break 'follow Err(Failure(format!("{message} ({code})")));
                }
                "canceled" => break 'follow Err(Failure("the task was canceled".into())),
                _ => {}
            }
        }
        // The stream ended without a terminal event: resume where it stopped.
        attempts += 1;
        if attempts > 5 {
            return Err(Failure("the event stream keeps dropping".into()));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    bar.finish_and_clear();
    outcome?;

    let response = client.get(format!("{base}/api/v1/tasks/{id}/result")).send().await?;
    if !response.status().is_success() {
        return Err(server_error(response).await);
    }
    let result: Value = response.json().await?;
    let outputs = result["outputs"].as_array().cloned().unwrap_or_default();
    let main = main_output(&kind, &outputs).ok_or_else(|| Failure("the task finished without outputs".into()))?;
    let url = main["url"].as_str().ok_or_else(|| Failure("the output has no URL".into()))?;
    let format = main["format"].as_str().filter(|f| !f.is_empty()).unwrap_or("bin");
    let path = destination(args.output, &id, format);
    if let Some(asked) = path.extension().and_then(|e| e.to_str())
        && !same_format(asked, format)
    {
        eprintln!("kiln: note: the result is {}, written to {} as asked", format.to_uppercase(), path.display());
    }
    let response = client.get(url).send().await?;
    if !response.status().is_success() {
        return Err(server_error(response).await);
    }
    let bytes = response.bytes().await?;
    tokio::fs::write(&path, &bytes).await.map_err(|e| Failure(format!("cannot write {}: {e}", path.display())))?;
    let seconds = result["metadata"]["generation_time"].as_f64().unwrap_or(0.0);
    println!("{} ({} bytes, {format}, generated in {seconds:.1} s)", path.display(), bytes.len());
    Ok(())
}

/// The output a task is about: the one with its kind's main role (`image` for
/// text-to-image, `model` otherwise), else a model or an image, else the first.
fn main_output<'a>(kind: &str, outputs: &'a [Value]) -> Option<&'a Value> {
    let role = if kind == "text_to_image" { "image" } else { "model" };
    outputs
        .iter()
        .find(|o| o["role"] == role)
        .or_else(|| outputs.iter().find(|o| matches!(o["role"].as_str(), Some("model" | "image"))))
        .or(outputs.first())
}

/// Where the result goes: `--output` as given, or `<task id>.<format>` (inside
/// `--output` when that is a directory).
fn destination(output: Option<PathBuf>, id: &str, format: &str) -> PathBuf {
    let name = format!("{id}.{format}");
    match output {
        Some(dir) if dir.is_dir() => dir.join(name),
        Some(path) => path,
        None => PathBuf::from(name),
    }
}

/// Whether a file extension names this output format (`jpg` and `jpeg` are one).
fn same_format(extension: &str, format: &str) -> bool {
    let canonical = |f: &str| match f.to_ascii_lowercase().as_str() {
        "jpeg" => "jpg".to_owned(),
        other => other.to_owned(),
    };
    canonical(extension) == canonical(format)
}

fn ordinal(n: u64) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_main_output_follows_the_kind() {
        let preview = json!({ "role": "preview", "format": "webp" });
        let model = json!({ "role": "model", "format": "glb" });
        let image = json!({ "role": "image", "format": "png" });
        let outputs = [preview.clone(), model.clone(), image.clone()];
        assert_eq!(main_output("text_to_3d", &outputs), Some(&model));
        assert_eq!(main_output("image_to_3d", &outputs), Some(&model));
        assert_eq!(main_output("text_to_image", &outputs), Some(&image));
        // Never the preview render while the model is there; an unknown kind takes either.
        assert_eq!(main_output("", &[preview.clone(), image.clone()]), Some(&image));
        assert_eq!(main_output("text_to_3d", std::slice::from_ref(&preview)), Some(&preview));
        assert_eq!(main_output("text_to_3d", &[]), None);
    }

    #[test]
    fn the_file_is_named_after_the_format_unless_told_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(destination(None, "t1", "png"), PathBuf::from("t1.png"));
        assert_eq!(destination(None, "t1", "glb"), PathBuf::from("t1.glb"));
        assert_eq!(destination(Some(dir.path().into()), "t1", "png"), dir.path().join("t1.png"));
        assert_eq!(destination(Some("fox.png".into()), "t1", "png"), PathBuf::from("fox.png"));
        assert!(same_format("JPEG", "jpg") && same_format("png", "png") && !same_format("glb", "png"));
    }
}
