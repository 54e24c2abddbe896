//! Unpacking downloaded archives into a source folder and verifying what they hold
//! (expected files, SHA-256 digests).

use super::*;

pub(super) fn remove_dir_if_exists(p: &Path) -> Result<()> {
    match std::fs::remove_dir_all(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DataError::io(p, e)),
    }
}

pub(super) fn unpack_and_verify(
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
pub(super) fn find_deb(packages: &Path, name: &str) -> Result<Option<PathBuf>> {
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

pub(super) fn find_archive(packages: &Path, spec: &PackageSpec) -> Result<Option<PathBuf>> {
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
pub(super) enum ArchiveKind {
    Deb,
    TarGz,
    Zip,
}

pub(super) fn archive_kind(name: &str) -> Option<ArchiveKind> {
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

/// Normalises an archive member path: `/` separators, no leading `./` or `/`.
pub(super) fn normalise_member(p: &str) -> String {
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

pub(super) fn ends_with_path(path: &str, suffix: &str) -> bool {
    path == suffix
        || (path.len() > suffix.len()
            && path.ends_with(suffix)
            && path.as_bytes().get(path.len() - suffix.len() - 1) == Some(&b'/'))
}

/// The destination (relative to the source folder) of an archive member, if a rule wants it.
pub(super) fn destination(member: &str, rules: &[Rule]) -> Option<(usize, String)> {
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

pub(super) struct Unpacked {
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

pub(super) fn archive_error(path: &Path, e: impl std::fmt::Display) -> DataError {
    DataError::Archive {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

pub(super) fn unpack(
    archives: &[PathBuf],
    root: &Path,
    spec: &PackageSpec,
    clients: &Clients,
) -> Result<()> {
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

pub(super) fn unpack_one(
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

pub(super) fn check_found(archive: &str, spec: &PackageSpec, out: &Unpacked) -> Result<()> {
    for (rule, found) in spec.rules.iter().zip(&out.found) {
        let detail = match *rule {
            Rule::File { from, .. } if found.is_empty() => {
                format!("{archive} has no file `{from}`")
            }
            Rule::Dir {
                from, ext, count, ..
            } if found.len() != count => format!(
                "{archive} has {} `*{ext}` files in `{from}`, expected {count}",
                found.len()
            ),
            Rule::Tree {
                from, exts, count, ..
            } if found.len() != count => format!(
                "{archive} has {} `{}` files below `{from}`, expected {count}",
                found.len(),
                exts.join("`/`")
            ),
            _ => continue,
        };
        return Err(DataError::PackageMissing {
            package: spec.requirement.to_owned(),
            detail,
        });
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

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Digest of every rule's data: `to` → SHA-256 of the file; `to/` → SHA-256 of the lines
/// `"<name> <sha256>\n"` of its files, sorted by name.
pub(super) fn digest_rules(root: &Path, spec: &PackageSpec) -> Result<BTreeMap<String, String>> {
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

pub(super) fn compare_digests(
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
