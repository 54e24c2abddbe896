//! Files and folders that land as a unit.
//!
//! Everything madeit writes goes through this module, so that nothing a user already has
//! is ever lost or seen half-written:
//!
//! - [`write_atomic`] / [`write_atomic_with`]: a file is written to a temporary sibling,
//!   flushed, `fsync`ed and renamed over its destination. Readers see the old file or the
//!   new one, never a mix; on failure the old file is untouched.
//! - [`OutputDir`]: a folder is built in a staging sibling (`.<name>.madeit-partial`) and
//!   swapped in as a whole by [`OutputDir::commit`]. On Linux the swap is one
//!   `renameat2(RENAME_EXCHANGE)`, so the destination always holds either the complete old
//!   folder or the complete new one; elsewhere (or on file systems without the exchange) the
//!   old folder is first renamed to `.<name>.madeit-old`, and [`OutputDir::prepare`] puts it
//!   back if a process was killed between the two renames. A committed folder carries a
//!   marker file ([`MARKER_FILE`]) that records which command wrote it; a non-empty folder
//!   without the marker of the same kind is never replaced unless the caller forces it.
//! - [`check_not_input`]: refuses an output path that is, or holds, one of the inputs
//!   (compared by canonical path and by file identity, so symbolic and hard links count).
//!
//! Leftovers of killed processes (staging folders, `.tmp` files) are removed the next time
//! the same output is prepared, or reused when a run is resumed
//! ([`OutputDir::prepare_resumable`]).
//!
//! [`crash_point`] is a test hook: when the environment variable [`CRASH_ENV`] names a
//! point, the process aborts there, as if killed. The fault-injection tests use it to stop
//! the `madeit` binary between any two steps of a commit.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::ParamsError;

/// Name of the marker file of a committed output folder.
pub const MARKER_FILE: &str = ".madeit-output.json";

/// Suffix of the staging sibling of an output folder (`.<name>.madeit-partial`).
const PARTIAL_SUFFIX: &str = ".madeit-partial";

/// Suffix of the old folder while it is swapped out without `RENAME_EXCHANGE`.
const OLD_SUFFIX: &str = ".madeit-old";

/// Suffix of the temporary files of [`write_atomic_with`] (`.<name>.<random>.madeit.tmp`).
const TEMP_SUFFIX: &str = ".madeit.tmp";

/// Lock file inside a staging folder, held while a process writes into it.
const LOCK_FILE: &str = ".lock";

/// Environment variable naming the [`crash_point`] at which the process aborts.
pub const CRASH_ENV: &str = "MADEIT_CRASH_AT";

/// Aborts the process if [`CRASH_ENV`] equals `name` (a test hook that simulates a kill at
/// a chosen point; the variable is read once).
pub fn crash_point(name: &str) {
    static AT: OnceLock<Option<String>> = OnceLock::new();
    let at = AT.get_or_init(|| std::env::var(CRASH_ENV).ok().filter(|s| !s.is_empty()));
    if at.as_deref() == Some(name) {
        eprintln!("{CRASH_ENV}={name}: aborting here");
        std::process::abort();
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ParamsError + '_ {
    move |source| ParamsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The folder a path lives in (`.` for a bare file name).
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// `fsync`s a folder so that renames and new entries in it are durable (best effort: not
/// every platform can open a folder).
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Writes `bytes` to `path` atomically (see [`write_atomic_with`]).
///
/// # Errors
/// [`ParamsError::Io`] naming `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ParamsError> {
    write_atomic_with(path, |w| w.write_all(bytes).map_err(io_err(path)))
}

/// [`write_atomic`] after creating the missing folders of `path`'s parent.
///
/// # Errors
/// [`ParamsError::Io`] naming the folder that cannot be created, or `path`.
pub fn write_atomic_creating_parent(path: &Path, bytes: &[u8]) -> Result<(), ParamsError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    write_atomic(path, bytes)
}

/// Whether a file name is one of [`write_atomic_with`]'s temporary files
/// (`.<name>.<random>.madeit.tmp`), which only a killed process leaves behind.
#[must_use]
pub fn is_temp_file_name(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(TEMP_SUFFIX)
}

/// Writes a file atomically: `write` fills a temporary file in the same folder
/// (`.<name>.<random>.tmp`), which is flushed, `fsync`ed and renamed over `path`; the folder
/// is then `fsync`ed. On any failure the temporary file is removed and a file already at
/// `path` is left untouched. The file gets the usual permissions of a new file.
///
/// # Errors
/// What `write` returns, or [`ParamsError::Io`] naming `path`.
pub fn write_atomic_with<F>(path: &Path, write: F) -> Result<(), ParamsError>
where
    F: FnOnce(&mut dyn Write) -> Result<(), ParamsError>,
{
    let dir = parent_of(path);
    let file_name = path
        .file_name()
        .map_or_else(|| "file".into(), |s| s.to_string_lossy());
    let prefix = format!(".{file_name}.");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(TEMP_SUFFIX);
    // Temporary files are private (0600) by default; the saved file should get the usual
    // permissions of a new file (0666 minus the umask), like any other written file.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(fs::Permissions::from_mode(0o666));
    }
    let mut tmp = builder.tempfile_in(dir).map_err(io_err(path))?;
    {
        let mut w = BufWriter::with_capacity(1 << 20, tmp.as_file_mut());
        write(&mut w)?;
        w.flush().map_err(io_err(path))?;
    }
    tmp.as_file().sync_all().map_err(io_err(path))?;
    crash_point("file-before-rename");
    tmp.persist(path).map_err(|e| io_err(path)(e.error))?;
    sync_dir(dir);
    Ok(())
}

/// Removes the temporary files that [`write_atomic_with`] leaves in `dir` when a process
/// is killed before its rename (`.<file>.<random>.madeit.tmp`, for any of `files`). Best
/// effort.
pub fn remove_stale_temp_files(dir: &Path, files: &[&str]) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let stale = name.ends_with(TEMP_SUFFIX)
            && files.iter().any(|f| name.starts_with(&format!(".{f}.")));
        if stale {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Removes every temporary file of [`write_atomic_with`] under `dir` (a resumed staging
/// folder may hold those of the killed process). Best effort.
fn remove_all_temp_files(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_all_temp_files(&path);
        } else if entry.file_name().to_string_lossy().ends_with(TEMP_SUFFIX) {
            let _ = fs::remove_file(path);
        }
    }
}

/// The canonical form of `path`, also when it does not exist yet: its deepest existing
/// ancestor is canonicalised and the rest appended.
fn canonical(path: &Path) -> PathBuf {
    if let Ok(p) = fs::canonicalize(path) {
        return p;
    }
    let mut rest = Vec::new();
    let mut cur = path;
    while let Some(name) = cur.file_name() {
        rest.push(name.to_owned());
        cur = parent_of(cur);
        if let Ok(mut base) = fs::canonicalize(cur) {
            for part in rest.iter().rev() {
                base.push(part);
            }
            return base;
        }
    }
    path.to_path_buf()
}

/// Whether two existing paths are the same file or folder (same device and inode on Unix).
fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(x), Ok(y)) = (fs::metadata(a), fs::metadata(b)) {
            return x.dev() == y.dev() && x.ino() == y.ino();
        }
    }
    false
}

/// Refuses an output path that would replace or remove one of the inputs: the output is an
/// input, or an input lies inside the output folder. Paths are compared in canonical form
/// (symbolic links resolved) and, for existing files, by identity (device and inode), so a
/// link to an input counts as that input. An output folder inside an input folder is
/// allowed (writing it changes nothing the input holds).
///
/// # Errors
/// [`ParamsError::OutputIsInput`] naming both paths.
pub fn check_not_input(output: &Path, inputs: &[&Path]) -> Result<(), ParamsError> {
    let out = canonical(output);
    for input in inputs {
        let inp = canonical(input);
        let clash = inp == out || inp.starts_with(&out) || same_file(output, input);
        if clash {
            return Err(ParamsError::OutputIsInput {
                output: output.to_path_buf(),
                input: input.to_path_buf(),
            });
        }
    }
    Ok(())
}

/// The marker of a committed output folder.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Marker {
    /// The kind of output (`merge`, `run`, ...): the command that wrote the folder.
    kind: String,
}

/// What an existing path holds, as far as replacing it is concerned.
enum Existing {
    /// Nothing there.
    Nothing,
    /// An empty folder.
    Empty,
    /// A folder committed by a madeit command of this kind.
    SameKind,
    /// Anything else: a file, a foreign folder, or a madeit output of another kind.
    Other(String),
}

fn inspect(target: &Path, kind: &str) -> Result<Existing, ParamsError> {
    let meta = match fs::symlink_metadata(target) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Existing::Nothing),
        Err(e) => return Err(io_err(target)(e)),
    };
    if !meta.is_dir() {
        return Ok(Existing::Other(if meta.file_type().is_symlink() {
            "a symbolic link".to_owned()
        } else {
            "a file".to_owned()
        }));
    }
    let mut entries = fs::read_dir(target).map_err(io_err(target))?;
    if entries.next().is_none() {
        return Ok(Existing::Empty);
    }
    let marker = target.join(MARKER_FILE);
    let Ok(text) = fs::read_to_string(&marker) else {
        return Ok(Existing::Other(
            "a folder that no madeit command wrote".to_owned(),
        ));
    };
    match serde_json::from_str::<Marker>(&text) {
        Ok(m) if m.kind == kind => Ok(Existing::SameKind),
        Ok(m) => Ok(Existing::Other(format!(
            "the output of `madeit {}`, not of `madeit {kind}`",
            m.kind
        ))),
        Err(_) => Ok(Existing::Other(format!(
            "a folder whose {MARKER_FILE} cannot be read"
        ))),
    }
}

/// A sibling of `target` named `.<name><suffix>`.
fn sibling(target: &Path, suffix: &str) -> PathBuf {
    let name = target
        .file_name()
        .map_or_else(|| "output".into(), |s| s.to_string_lossy());
    parent_of(target).join(format!(".{name}{suffix}"))
}

/// Puts back an old folder that a killed [`swap_in`] left swapped out (only possible on
/// the path without `RENAME_EXCHANGE`), and removes one that is no longer needed.
///
/// # Errors
/// [`ParamsError::Io`] naming the path involved.
pub fn recover(target: &Path) -> Result<(), ParamsError> {
    let old = sibling(target, OLD_SUFFIX);
    if !old.exists() {
        return Ok(());
    }
    if target.exists() {
        // The new folder was committed; only the cleanup was lost.
        fs::remove_dir_all(&old).map_err(io_err(&old))
    } else {
        fs::rename(&old, target).map_err(io_err(target))?;
        sync_dir(parent_of(target));
        Ok(())
    }
}

/// A lock held on a staging folder by the process writing into it.
#[derive(Debug)]
struct Lock {
    _file: File,
}

impl Lock {
    /// Takes the lock file of `staging` (created if needed) without waiting. `Ok(None)`
    /// when another process holds it.
    fn try_take(staging: &Path) -> Result<Option<Self>, ParamsError> {
        let path = staging.join(LOCK_FILE);
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(Self { _file: file })),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(io_err(&path)(e)),
        }
    }
}

/// An output folder being written: files go into a staging sibling that
/// [`commit`](Self::commit) swaps in as a whole (see the module documentation).
///
/// Dropping an `OutputDir` without committing removes the staging folder, unless
/// [`keep_on_drop`](Self::keep_on_drop) was called (resumable runs keep their state).
#[derive(Debug)]
pub struct OutputDir {
    target: PathBuf,
    staging: PathBuf,
    kind: String,
    keep: bool,
    lock: Option<Lock>,
}

impl OutputDir {
    /// Prepares `target` to receive a new output of `kind` (the command's name: `merge`,
    /// `run`, ...). A leftover staging folder of a killed process is removed.
    ///
    /// `target` may not exist yet, may be an empty folder, or may be an earlier output of
    /// the same kind (it is replaced as a whole on commit). Anything else is refused unless
    /// `force` is set.
    ///
    /// # Errors
    /// [`ParamsError::OutputRefused`] naming `target` and what it holds,
    /// [`ParamsError::OutputBusy`] when another process is writing the same output,
    /// [`ParamsError::Io`] naming the path involved.
    pub fn prepare(target: &Path, kind: &str, force: bool) -> Result<Self, ParamsError> {
        Self::open(target, kind, force, false)
    }

    /// As [`prepare`](Self::prepare), but a staging folder left by a killed process is
    /// kept, so that its content can be resumed; when there is none and `target` is an
    /// earlier output of the same kind, the staging folder starts as a copy of it.
    ///
    /// # Errors
    /// As [`prepare`](Self::prepare).
    pub fn prepare_resumable(target: &Path, kind: &str, force: bool) -> Result<Self, ParamsError> {
        Self::open(target, kind, force, true)
    }

    fn open(target: &Path, kind: &str, force: bool, resume: bool) -> Result<Self, ParamsError> {
        let parent = parent_of(target);
        fs::create_dir_all(parent).map_err(io_err(parent))?;
        recover(target)?;
        let existing = inspect(target, kind)?;
        if let Existing::Other(what) = &existing
            && !force
        {
            return Err(ParamsError::OutputRefused {
                path: target.to_path_buf(),
                holds: what.clone(),
            });
        }
        let staging = sibling(target, PARTIAL_SUFFIX);
        let mut lock = None;
        if staging.is_dir() {
            lock = Lock::try_take(&staging)?;
            if lock.is_none() {
                return Err(ParamsError::OutputBusy {
                    path: target.to_path_buf(),
                });
            }
            if !resume {
                drop(lock.take());
                fs::remove_dir_all(&staging).map_err(io_err(&staging))?;
            }
        } else if staging.exists() {
            fs::remove_file(&staging).map_err(io_err(&staging))?;
        }
        if !staging.exists() {
            let fresh = sibling(target, ".madeit-copy");
            if fresh.exists() {
                fs::remove_dir_all(&fresh).map_err(io_err(&fresh))?;
            }
            fs::create_dir(&fresh).map_err(io_err(&fresh))?;
            if resume && matches!(existing, Existing::SameKind) {
                copy_tree(target, &fresh)?;
            }
            fs::rename(&fresh, &staging).map_err(io_err(&staging))?;
            lock = Lock::try_take(&staging)?;
            if lock.is_none() {
                return Err(ParamsError::OutputBusy {
                    path: target.to_path_buf(),
                });
            }
        }
        // A marker copied from an earlier output is rewritten on commit; temporary files of
        // a killed process are not part of the output.
        let _ = fs::remove_file(staging.join(MARKER_FILE));
        remove_all_temp_files(&staging);
        Ok(Self {
            target: target.to_path_buf(),
            staging,
            kind: kind.to_owned(),
            keep: false,
            lock,
        })
    }

    /// The staging folder: write the output's files here.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.staging
    }

    /// The folder the output will have once committed.
    #[must_use]
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Keeps the staging folder when this value is dropped without a commit (a failed or
    /// interrupted run can then be resumed from it).
    pub fn keep_on_drop(&mut self) {
        self.keep = true;
    }

    /// Makes the output durable and swaps it in for `target` as a whole: writes the
    /// marker, `fsync`s every file and folder of the staging folder, exchanges it with the
    /// old folder (or renames it into place) and removes the old folder.
    ///
    /// # Errors
    /// [`ParamsError::Io`] naming the path involved; the old output is then still in place.
    pub fn commit(mut self) -> Result<PathBuf, ParamsError> {
        let marker = serde_json::to_vec_pretty(&Marker {
            kind: self.kind.clone(),
        })
        .map_err(|e| ParamsError::Io {
            path: self.staging.join(MARKER_FILE),
            source: std::io::Error::other(e),
        })?;
        let _ = fs::remove_file(self.staging.join(LOCK_FILE));
        write_atomic(&self.staging.join(MARKER_FILE), &marker)?;
        sync_tree(&self.staging)?;
        crash_point("dir-before-swap");
        swap_in(&self.staging, &self.target)?;
        self.keep = true;
        self.lock = None;
        Ok(self.target.clone())
    }
}

impl Drop for OutputDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_dir_all(&self.staging);
        }
    }
}

/// Puts the complete folder `staging` in the place of `target`, removing what `target`
/// held: one `renameat2(RENAME_EXCHANGE)` where available (so `target` always holds the old
/// folder or the new one), otherwise a rename of the old folder to `.<name>.madeit-old`
/// first, which [`recover`] undoes if the process is killed before the second rename. A
/// file or link at `target` is removed first. The parent folder is `fsync`ed.
///
/// # Errors
/// [`ParamsError::Io`] naming the path involved.
pub fn swap_in(staging: &Path, target: &Path) -> Result<(), ParamsError> {
    let parent = parent_of(target).to_path_buf();
    match fs::symlink_metadata(target).ok() {
        None => {
            fs::rename(staging, target).map_err(io_err(target))?;
        }
        Some(m) if !m.is_dir() => {
            fs::remove_file(target).map_err(io_err(target))?;
            fs::rename(staging, target).map_err(io_err(target))?;
        }
        Some(_) => {
            if exchange(staging, target).is_ok() {
                // The staging path now holds the old folder.
                crash_point("dir-after-swap");
                sync_dir(&parent);
                fs::remove_dir_all(staging).map_err(io_err(staging))?;
            } else {
                let old = sibling(target, OLD_SUFFIX);
                fs::rename(target, &old).map_err(io_err(target))?;
                crash_point("dir-between-renames");
                fs::rename(staging, target).map_err(io_err(target))?;
                sync_dir(&parent);
                fs::remove_dir_all(&old).map_err(io_err(&old))?;
            }
        }
    }
    sync_dir(&parent);
    Ok(())
}

/// Swaps two folders in one step (Linux `renameat2(RENAME_EXCHANGE)`).
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE).map_err(std::io::Error::from)
}

/// No atomic exchange here: the caller falls back to two renames.
#[cfg(not(target_os = "linux"))]
fn exchange(_a: &Path, _b: &Path) -> std::io::Result<()> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}

/// `fsync`s every file and folder under `dir`.
fn sync_tree(dir: &Path) -> Result<(), ParamsError> {
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let path = entry.path();
        let ty = entry.file_type().map_err(io_err(&path))?;
        if ty.is_dir() {
            sync_tree(&path)?;
        } else if ty.is_file() {
            File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(io_err(&path))?;
        }
    }
    sync_dir(dir);
    Ok(())
}

/// Copies the files and folders under `from` into the existing folder `to`.
fn copy_tree(from: &Path, to: &Path) -> Result<(), ParamsError> {
    for entry in fs::read_dir(from).map_err(io_err(from))? {
        let entry = entry.map_err(io_err(from))?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        let ty = entry.file_type().map_err(io_err(&src))?;
        if ty.is_dir() {
            fs::create_dir(&dst).map_err(io_err(&dst))?;
            copy_tree(&src, &dst)?;
        } else if ty.is_file() {
            fs::copy(&src, &dst).map_err(io_err(&dst))?;
        } else if ty.is_symlink() {
            let link = fs::read_link(&src).map_err(io_err(&src))?;
            #[cfg(unix)]
            std::os::unix::fs::symlink(link, &dst).map_err(io_err(&dst))?;
            #[cfg(not(unix))]
            let _ = link;
        }
    }
    Ok(())
}
