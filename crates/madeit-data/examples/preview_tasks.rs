//! Writes a contact sheet of every task's first test images, as the network sees them
//! (32 × 32 RGB), one row per task.
//!
//! ```text
//! cargo run -p madeit-data --example preview_tasks [OUT.png] [CACHE_DIR]
//! ```
//!
//! The sources must have been fetched (see the `fetch_data` example).

use std::path::PathBuf;

use madeit_data::{DataError, IMAGE_SIZE, Split, default_cache_dir, load_tasks, zoo_tasks};

const PER_ROW: usize = 16;
const GAP: usize = 2;

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), DataError> {
    let mut args = std::env::args_os().skip(1);
    let out = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("tasks.png"));
    let cache = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(default_cache_dir);
    let tasks = load_tasks(&cache, &zoo_tasks())?;
    let cell = IMAGE_SIZE + GAP;
    let (w, h) = (PER_ROW * cell + GAP, tasks.len() * cell + GAP);
    let mut sheet = vec![96u8; w * h * 3];
    for (row, task) in tasks.iter().enumerate() {
        let test = task.split(Split::Test)?;
        for k in 0..PER_ROW.min(test.n) {
            // Spread the picks over the split so several classes show.
            let img = test.image(k * test.n / PER_ROW).unwrap_or_default();
            let (x0, y0) = (GAP + k * cell, GAP + row * cell);
            for y in 0..IMAGE_SIZE {
                let src = img
                    .get(y * IMAGE_SIZE * 3..(y + 1) * IMAGE_SIZE * 3)
                    .unwrap_or_default();
                let d = ((y0 + y) * w + x0) * 3;
                if let Some(dst) = sheet.get_mut(d..d + src.len()) {
                    dst.copy_from_slice(src);
                }
            }
        }
        println!("row {row}: {}", task.spec.name);
    }
    let file = std::fs::File::create(&out).map_err(|e| DataError::Io {
        path: out.clone(),
        source: e,
    })?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w as u32, h as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let png_err = |e: png::EncodingError| DataError::Png {
        file: out.display().to_string(),
        message: e.to_string(),
    };
    let mut writer = enc.write_header().map_err(png_err)?;
    writer.write_image_data(&sheet).map_err(png_err)?;
    writer.finish().map_err(png_err)?;
    println!("wrote {}", out.display());
    Ok(())
}
