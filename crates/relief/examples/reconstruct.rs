//! Turns a picture into a GLB from the command line, printing the stages and statistics:
//! `cargo run -p relief --release --example reconstruct -- picture.jpg model.glb [KEY=VALUE...]`
//! where KEY is depth, resolution, max_triangles or texture_size. The cut-out and the
//! position map (`pixel_images.png`, `xyz_images.png`) are written beside the GLB.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use relief::{Observer, Product, Stage};

/// Prints each stage and keeps each product with the time it was ready.
struct Printer {
    started: Instant,
    products: Vec<Product>,
}

impl Observer for Printer {
    fn stage(&mut self, stage: Stage, percent: u8) {
        eprintln!("{:>8.1?} {stage:?} {percent}%", self.started.elapsed());
    }

    fn product(&mut self, product: Product) {
        eprintln!("{:>8.1?} {} ({} bytes)", self.started.elapsed(), product.file_name(), product.bytes().len());
        self.products.push(product);
    }
}

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
    let mut printer = Printer { started: Instant::now(), products: Vec::new() };
    let result = relief::reconstruct_observed(&bytes, &options, &mut printer, &|| false);
    match result {
        Ok(model) => {
            println!("{:?}", model.stats);
            let folder = Path::new(output).parent().map(Path::to_path_buf).unwrap_or_default();
            let files = printer.products.iter().map(|p| (folder.join(p.file_name()), p.bytes()));
            for (path, bytes) in std::iter::once((PathBuf::from(output), model.glb.as_slice())).chain(files) {
                if let Err(e) = std::fs::write(&path, bytes) {
                    eprintln!("writing {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{} ({})", e, e.code());
            ExitCode::FAILURE
        }
    }
}
