//! Converts a GLB into every format this crate writes, timing each step:
//! `cargo run -p formats --release --example convert -- model.glb out-dir`.

use std::fs::File;
use std::io::BufWriter;
use std::time::Instant;

use formats::{Cancel, Limits, Model, write};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(input), Some(dir)) = (args.next(), args.next()) else {
        return Err("usage: convert MODEL.glb OUT-DIR".into());
    };
    let dir = std::path::PathBuf::from(dir);
    std::fs::create_dir_all(&dir)?;
    let glb = std::fs::read(&input)?;
    let cancel = Cancel::new();
    let timed = |name: &str, start: Instant, path: Option<&std::path::Path>| {
        let size = path.and_then(|p| std::fs::metadata(p).ok()).map_or(0, |m| m.len());
        println!("{name:8} {:8.1} ms {size:>10} bytes", start.elapsed().as_secs_f64() * 1000.0);
    };
    let estimate = formats::estimate(&glb, &Limits::default())?;
    println!("estimate {:.1} MB of memory", estimate.memory_bytes as f64 / 1e6);
    let start = Instant::now();
    let model = Model::read_glb(&glb, &Limits::default(), &cancel)?;
    timed("read", start, None);
    println!("         {} triangles, {} vertices", model.triangles(), model.vertices());

    let path = dir.join("output3d.zip");
    let start = Instant::now();
    write::obj_zip(&model, File::create(&path)?, &cancel)?;
    timed("obj", start, Some(&path));
    for (name, units) in [("stl", write::Units::Metres), ("stl-mm", write::Units::Millimetres)] {
        let path = dir.join(format!("model-{name}.stl"));
        let start = Instant::now();
        write::stl(&model, BufWriter::new(File::create(&path)?), units, &cancel)?;
        timed(name, start, Some(&path));
    }
    let path = dir.join("model.ply");
    let start = Instant::now();
    write::ply(&model, BufWriter::new(File::create(&path)?), &cancel)?;
    timed("ply", start, Some(&path));
    let path = dir.join("model.usdz");
    let start = Instant::now();
    let options = write::UsdzOptions { max_triangles: u64::MAX, ..write::UsdzOptions::default() };
    write::usdz(&model, File::create(&path)?, &options, &cancel)?;
    timed("usdz", start, Some(&path));
    Ok(())
}
