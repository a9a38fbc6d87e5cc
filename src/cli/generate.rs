//! `kiln generate`: a client of the native API. Submits a picture or a prompt, shows a
//! progress bar fed by the task's event stream (resuming with `Last-Event-ID` if the
//! connection drops), and downloads the main output.

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
    /// Model to use (default: the server's default for the input).
    #[arg(long)]
    model: Option<String>,
    /// Provider options as a JSON object.
    #[arg(long, value_name = "JSON")]
    params: Option<String>,
    /// kiln server.
    #[arg(long, env = "KILN_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// Where to write the result (default: `<task id>.<format>`).
    #[arg(short, long, value_name = "FILE")]
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
    let main = outputs
        .iter()
        .find(|o| matches!(o["role"].as_str(), Some("model" | "image")))
        .or(outputs.first())
        .ok_or_else(|| Failure("the task finished without outputs".into()))?;
    let url = main["url"].as_str().ok_or_else(|| Failure("the output has no URL".into()))?;
    let format = main["format"].as_str().unwrap_or("bin");
    let path = args.output.unwrap_or_else(|| PathBuf::from(format!("{id}.{format}")));
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
