//! Turns a picture into a GLB from the command line, printing the stages and statistics:
//! `cargo run -p relief --release --example reconstruct -- picture.jpg model.glb [KEY=VALUE...]`
//! where KEY is depth, resolution, max_triangles or texture_size.

use std::process::ExitCode;
use std::time::Instant;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, output, settings @ ..] = args.as_slice() else {
        eprintln!("usage: reconstruct PICTURE OUTPUT.glb [depth=F] [resolution=N] [max_triangles=N] [texture_size=N]");
        return ExitCode::from(2);
    };
    let mut options = relief::Options::default();
    for setting in settings {
        let parsed = match setting.split_once('=') {
            Some(("depth", v)) => v.parse().map(|v| options.depth = v).is_ok(),
            Some(("resolution", v)) => v.parse().map(|v| options.resolution = v).is_ok(),
            Some(("max_triangles", v)) => v.parse().map(|v| options.max_triangles = v).is_ok(),
            Some(("texture_size", v)) => v.parse().map(|v| options.texture_size = v).is_ok(),
            _ => false,
        };
        if !parsed {
            eprintln!("unrecognised setting {setting}");
            return ExitCode::from(2);
        }
    }
    let bytes = match std::fs::read(input) {
        Ok(bytes) => bytes,
        Err(e) => {
            eprintln!("reading {input}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let started = Instant::now();
    let result = relief::reconstruct(&bytes, &options, &mut |stage, percent| {
        eprintln!("{:>8.1?} {stage:?} {percent}%", started.elapsed());
    });
    match result {
        Ok(model) => {
            println!("{:?}", model.stats);
            if let Err(e) = std::fs::write(output, &model.glb) {
                eprintln!("writing {output}: {e}");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{} ({})", e, e.code());
            ExitCode::FAILURE
        }
    }
}
