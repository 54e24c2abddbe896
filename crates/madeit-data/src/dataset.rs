//! Labelled image datasets as people have them on disk, read lazily.
//!
//! - An **image folder**: one sub-folder per class (`root/<class>/<image>`), the layout of
//!   torchvision's `ImageFolder`. Classes are the sub-folders in sorted order, or a given
//!   class list (every sub-folder must then name a class of the list). Files ending in
//!   `.jpg`, `.jpeg`, `.png` or `.webp` (any case) are images, in sorted order; hidden files
//!   are skipped.
//! - **Hugging Face `datasets` Parquet files**: an image column of `{bytes, path}` structs
//!   (the `Image` feature) and an integer label column; the class names come from the
//!   `ClassLabel` feature recorded in the file's `huggingface` metadata, or are given.
//!
//! Opening a dataset reads only the file list or the label column, so every label is
//! known (and checked against the class list) before any image is decoded.
//! [`Dataset::encoded`] then yields the encoded images in order, one at a time, so a split
//! is never held in memory; [`crate::stream`] decodes and preprocesses them on worker
//! threads.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parquet::file::reader::FileReader;
use parquet::file::serialized_reader::SerializedFileReader;
use parquet::record::{Field, Row};
use parquet::schema::types::Type;

use crate::error::{DataError, Result};

/// File extensions read as images from an image folder.
pub const IMAGE_EXTENSIONS: [&str; 4] = ["jpg", "jpeg", "png", "webp"];

/// Default image column of a `datasets` Parquet file.
pub const DEFAULT_IMAGE_COLUMN: &str = "image";
/// Default label column of a `datasets` Parquet file.
pub const DEFAULT_LABEL_COLUMN: &str = "label";

/// One encoded image of a dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// Position in the dataset (before any selection).
    pub index: usize,
    /// The encoded bytes (JPEG, PNG or WebP).
    pub bytes: Vec<u8>,
    /// The class index.
    pub label: u32,
    /// Where it came from, for messages: a file path, or `file.parquet, row N`.
    pub name: String,
}

/// Where the images of a dataset are.
#[derive(Debug, Clone)]
enum Storage {
    /// One file per image.
    Folder(Arc<Vec<PathBuf>>),
    /// Rows of Parquet files.
    Parquet {
        files: Arc<Vec<PathBuf>>,
        image_column: String,
    },
}

/// A labelled image dataset on disk (see the module documentation). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Dataset {
    storage: Storage,
    labels: Arc<Vec<u32>>,
    classes: Arc<Vec<String>>,
    /// Selected indices in increasing order; `None` = all.
    selection: Option<Arc<Vec<usize>>>,
    /// A short description for messages.
    source: String,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |e| DataError::io(path, e)
}

fn malformed(file: &Path, detail: impl Into<String>) -> DataError {
    DataError::Malformed {
        file: file.display().to_string(),
        detail: detail.into(),
    }
}

/// Checks a class list: non-empty, no empty or duplicate name.
fn check_classes(classes: &[String], what: &Path) -> Result<()> {
    if classes.is_empty() {
        return Err(malformed(what, "the class list is empty"));
    }
    for (i, c) in classes.iter().enumerate() {
        if c.trim().is_empty() {
            return Err(malformed(what, format!("class {i} has an empty name")));
        }
        if classes[..i].contains(c) {
            return Err(malformed(what, format!("class `{c}` is listed twice")));
        }
    }
    Ok(())
}

impl Dataset {
    /// Opens an image folder (see the module documentation).
    ///
    /// # Errors
    /// [`DataError::Io`] when the folder cannot be listed; [`DataError::Malformed`] naming
    /// the folder when it has no class sub-folder, a class folder holds no image, a
    /// sub-folder is not in `classes`, or `classes` has an empty or duplicate name.
    pub fn image_folder(root: &Path, classes: Option<&[String]>) -> Result<Self> {
        let mut dirs: Vec<(String, PathBuf)> = Vec::new();
        for entry in std::fs::read_dir(root).map_err(io(root))? {
            let entry = entry.map_err(io(root))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') && path.is_dir() {
                dirs.push((name, path));
            }
        }
        dirs.sort();
        if dirs.is_empty() {
            return Err(malformed(
                root,
                "no class sub-folder (expected root/<class>/<image>)",
            ));
        }
        let classes: Vec<String> = match classes {
            Some(c) => c.to_vec(),
            None => dirs.iter().map(|(n, _)| n.clone()).collect(),
        };
        check_classes(&classes, root)?;
        let mut files = Vec::new();
        let mut labels = Vec::new();
        for (name, dir) in &dirs {
            let label = classes.iter().position(|c| c == name).ok_or_else(|| {
                malformed(
                    dir,
                    format!("the folder `{name}` is not a class of the class list"),
                )
            })?;
            let mut images: Vec<PathBuf> = Vec::new();
            for entry in std::fs::read_dir(dir).map_err(io(dir))? {
                let path = entry.map_err(io(dir))?.path();
                let hidden = path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'));
                let is_image = path.extension().is_some_and(|e| {
                    IMAGE_EXTENSIONS.contains(&e.to_string_lossy().to_ascii_lowercase().as_str())
                });
                if !hidden && is_image && path.is_file() {
                    images.push(path);
                }
            }
            if images.is_empty() {
                return Err(malformed(
                    dir,
                    format!(
                        "the class folder holds no image ({})",
                        IMAGE_EXTENSIONS.join(", ")
                    ),
                ));
            }
            images.sort();
            let label = u32::try_from(label).map_err(|_| malformed(root, "too many classes"))?;
            labels.extend(std::iter::repeat_n(label, images.len()));
            files.extend(images);
        }
        Ok(Self {
            storage: Storage::Folder(Arc::new(files)),
            labels: Arc::new(labels),
            classes: Arc::new(classes),
            selection: None,
            source: root.display().to_string(),
        })
    }

    /// Opens Hugging Face `datasets` Parquet files (their rows in file order), reading the
    /// label column and the class names.
    ///
    /// # Errors
    /// [`DataError::Malformed`] naming the file when it is not Parquet, lacks either
    /// column, has a label column that is not integer, a label outside the class list, or
    /// when no class list is given and the file records no `ClassLabel` names for the
    /// label column (or the files disagree on them); [`DataError::Io`] for unreadable
    /// files.
    pub fn parquet(
        files: &[PathBuf],
        image_column: &str,
        label_column: &str,
        classes: Option<&[String]>,
    ) -> Result<Self> {
        let first = files
            .first()
            .ok_or_else(|| malformed(Path::new("<parquet>"), "no Parquet file given"))?;
        let mut names: Option<Vec<String>> = classes.map(<[String]>::to_vec);
        let mut labels: Vec<u32> = Vec::new();
        let mut raw: Vec<(usize, i64)> = Vec::new();
        for (f, file) in files.iter().enumerate() {
            let reader = open_parquet(file)?;
            let schema = reader.metadata().file_metadata().schema_descr_ptr();
            let root = schema.root_schema();
            for column in [image_column, label_column] {
                if !root.get_fields().iter().any(|t| t.name() == column) {
                    let have: Vec<&str> = root.get_fields().iter().map(|t| t.name()).collect();
                    return Err(malformed(
                        file,
                        format!("no column `{column}` (the file has: {})", have.join(", ")),
                    ));
                }
            }
            if classes.is_none() {
                let found = class_label_names(&reader, label_column, file)?;
                match (&names, found) {
                    (None, Some(found)) => names = Some(found),
                    (Some(known), Some(found)) if *known != found => {
                        return Err(malformed(
                            file,
                            format!(
                                "its `{label_column}` class names differ from those of {}",
                                first.display()
                            ),
                        ));
                    }
                    _ => {}
                }
            }
            let proj = projection(root, &[label_column]);
            let rows = reader
                .get_row_iter(Some(proj))
                .map_err(|e| malformed(file, e.to_string()))?;
            for (row_index, row) in rows.enumerate() {
                let row = row.map_err(|e| malformed(file, e.to_string()))?;
                let value = row_label(&row, file, row_index)?;
                raw.push((f, value));
            }
        }
        let classes = names.ok_or_else(|| {
            malformed(
                first,
                format!(
                    "the file records no ClassLabel names for `{label_column}`; give the \
                     class names explicitly"
                ),
            )
        })?;
        check_classes(&classes, first)?;
        let mut row_in_file = 0usize;
        let mut last_file = 0usize;
        for (f, value) in raw {
            if f != last_file {
                (last_file, row_in_file) = (f, 0);
            }
            let label = u32::try_from(value)
                .ok()
                .filter(|&l| (l as usize) < classes.len())
                .ok_or_else(|| DataError::LabelOutOfRange {
                    file: files
                        .get(f)
                        .map_or(String::new(), |p| p.display().to_string()),
                    index: row_in_file,
                    label: value,
                    num_classes: classes.len(),
                })?;
            labels.push(label);
            row_in_file += 1;
        }
        if labels.is_empty() {
            return Err(malformed(first, "the files hold no row"));
        }
        Ok(Self {
            storage: Storage::Parquet {
                files: Arc::new(files.to_vec()),
                image_column: image_column.to_owned(),
            },
            labels: Arc::new(labels),
            classes: Arc::new(classes),
            selection: None,
            source: first.display().to_string(),
        })
    }

    /// The `ClassLabel` names of `label_column` recorded in a `datasets` Parquet file's
    /// `huggingface` metadata, if it records them.
    ///
    /// # Errors
    /// [`DataError::Malformed`] naming the file when it is not Parquet or its metadata is
    /// not JSON; [`DataError::Io`] for an unreadable file.
    pub fn parquet_class_names(file: &Path, label_column: &str) -> Result<Option<Vec<String>>> {
        class_label_names(&open_parquet(file)?, label_column, file)
    }

    /// The class names, in label order.
    #[must_use]
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// Where the dataset is, for messages.
    #[must_use]
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Number of images (after any selection).
    #[must_use]
    pub fn len(&self) -> usize {
        self.selection
            .as_ref()
            .map_or(self.labels.len(), |s| s.len())
    }

    /// Whether there is no image.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The labels (after any selection), in order.
    #[must_use]
    pub fn labels(&self) -> Vec<u32> {
        match &self.selection {
            None => self.labels.to_vec(),
            Some(s) => s
                .iter()
                .filter_map(|&i| self.labels.get(i).copied())
                .collect(),
        }
    }

    /// The images at `indices` of the current selection (any order; kept in dataset
    /// order, duplicates dropped).
    ///
    /// # Errors
    /// [`DataError::IndexOutOfRange`] for an index past the end.
    pub fn select(&self, indices: &[usize]) -> Result<Self> {
        let n = self.len();
        let mut picked: Vec<usize> = Vec::with_capacity(indices.len());
        for &i in indices {
            if i >= n {
                return Err(DataError::IndexOutOfRange { index: i, n });
            }
            picked.push(match &self.selection {
                None => i,
                Some(s) => s.get(i).copied().unwrap_or(i),
            });
        }
        picked.sort_unstable();
        picked.dedup();
        Ok(Self {
            selection: Some(Arc::new(picked)),
            ..self.clone()
        })
    }

    /// The encoded images (after any selection), in order. Folder images are read one file
    /// at a time, Parquet rows one row group at a time.
    #[must_use]
    pub fn encoded(&self) -> Box<dyn Iterator<Item = Result<Encoded>> + Send> {
        let selected: Option<Arc<Vec<usize>>> = self.selection.clone();
        let wanted = move |i: usize| {
            selected
                .as_ref()
                .is_none_or(|s| s.binary_search(&i).is_ok())
        };
        let labels = Arc::clone(&self.labels);
        match &self.storage {
            Storage::Folder(files) => {
                let files = Arc::clone(files);
                Box::new((0..files.len()).filter(move |&i| wanted(i)).map(move |i| {
                    let path = files.get(i).cloned().unwrap_or_default();
                    let bytes = std::fs::read(&path).map_err(io(&path))?;
                    Ok(Encoded {
                        index: i,
                        bytes,
                        label: labels.get(i).copied().unwrap_or(0),
                        name: path.display().to_string(),
                    })
                }))
            }
            Storage::Parquet {
                files,
                image_column,
            } => Box::new(ParquetImages {
                files: Arc::clone(files),
                image_column: image_column.clone(),
                labels,
                wanted: Box::new(wanted),
                file: 0,
                rows: None,
                row_in_file: 0,
                index: 0,
                failed: false,
            }),
        }
    }
}

fn open_parquet(file: &Path) -> Result<SerializedFileReader<File>> {
    let f = File::open(file).map_err(io(file))?;
    SerializedFileReader::new(f).map_err(|e| malformed(file, format!("not a Parquet file: {e}")))
}

/// The projection of `root` onto `columns`.
fn projection(root: &Type, columns: &[&str]) -> Type {
    let fields = root
        .get_fields()
        .iter()
        .filter(|t| columns.contains(&t.name()))
        .cloned()
        .collect();
    Type::group_type_builder(root.name())
        .with_fields(fields)
        .build()
        .unwrap_or_else(|_| root.clone())
}

/// The integer label of a row whose only column is the label.
fn row_label(row: &Row, file: &Path, index: usize) -> Result<i64> {
    let bad = || malformed(file, format!("row {index}: the label is not an integer"));
    match row.get_column_iter().next().map(|(_, f)| f) {
        // A boolean label (a binary task stored as `bool`) is 0 or 1, as FusionBench's
        // dataset wrapper converts it.
        Some(Field::Bool(v)) => Ok(i64::from(*v)),
        Some(Field::Byte(v)) => Ok(i64::from(*v)),
        Some(Field::Short(v)) => Ok(i64::from(*v)),
        Some(Field::Int(v)) => Ok(i64::from(*v)),
        Some(Field::Long(v)) => Ok(*v),
        Some(Field::UByte(v)) => Ok(i64::from(*v)),
        Some(Field::UShort(v)) => Ok(i64::from(*v)),
        Some(Field::UInt(v)) => Ok(i64::from(*v)),
        Some(Field::ULong(v)) => i64::try_from(*v).map_err(|_| bad()),
        _ => Err(bad()),
    }
}

/// The `ClassLabel` names of `column` recorded by `datasets` in the file's `huggingface`
/// metadata (`{"info": {"features": {column: {"_type": "ClassLabel", "names": [...]}}}}`).
fn class_label_names(
    reader: &SerializedFileReader<File>,
    column: &str,
    file: &Path,
) -> Result<Option<Vec<String>>> {
    let Some(kv) = reader.metadata().file_metadata().key_value_metadata() else {
        return Ok(None);
    };
    let Some(text) = kv
        .iter()
        .find(|k| k.key == "huggingface")
        .and_then(|k| k.value.as_deref())
    else {
        return Ok(None);
    };
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| malformed(file, format!("its `huggingface` metadata is not JSON: {e}")))?;
    let feature = &value["info"]["features"][column];
    let Some(names) = feature["names"].as_array() else {
        return Ok(None);
    };
    names
        .iter()
        .map(|n| {
            n.as_str().map(str::to_owned).ok_or_else(|| {
                malformed(
                    file,
                    format!("a ClassLabel name of `{column}` is not a string"),
                )
            })
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// The `path` of a row's image struct, if it records one.
fn row_path(row: &Row) -> Option<String> {
    match row.get_column_iter().next().map(|(_, f)| f) {
        Some(Field::Group(g)) => g.get_column_iter().find_map(|(k, f)| match f {
            Field::Str(p) if k == "path" => Some(p.clone()),
            _ => None,
        }),
        _ => None,
    }
}

/// The image bytes of a row whose only column is the image struct (`{bytes, path}`), or
/// plain binary.
fn row_image(row: &Row, name: &str) -> Result<Vec<u8>> {
    let bad = |detail: &str| DataError::Image {
        file: name.to_owned(),
        message: detail.to_owned(),
    };
    match row.get_column_iter().next().map(|(_, f)| f) {
        Some(Field::Group(g)) => {
            for (key, field) in g.get_column_iter() {
                if key == "bytes" {
                    return match field {
                        Field::Bytes(b) => Ok(b.data().to_vec()),
                        Field::Null => Err(bad(
                            "the image has no bytes (only a path, which is not read)",
                        )),
                        _ => Err(bad("`bytes` is not binary")),
                    };
                }
            }
            Err(bad("the image struct has no `bytes` field"))
        }
        Some(Field::Bytes(b)) => Ok(b.data().to_vec()),
        _ => Err(bad(
            "the image column is neither an Image struct nor binary",
        )),
    }
}

/// Iterates the image column of Parquet files, one file's rows at a time.
struct ParquetImages {
    files: Arc<Vec<PathBuf>>,
    image_column: String,
    labels: Arc<Vec<u32>>,
    wanted: Box<dyn Fn(usize) -> bool + Send>,
    file: usize,
    rows: Option<parquet::record::reader::RowIter<'static>>,
    row_in_file: usize,
    index: usize,
    failed: bool,
}

impl ParquetImages {
    fn open_next(&mut self) -> Result<bool> {
        let Some(path) = self.files.get(self.file) else {
            return Ok(false);
        };
        let reader = open_parquet(path)?;
        let root = reader.metadata().file_metadata().schema_descr_ptr();
        let proj = projection(root.root_schema(), &[self.image_column.as_str()]);
        let iter = parquet::record::reader::RowIter::from_file_into(Box::new(reader))
            .project(Some(proj))
            .map_err(|e| malformed(path, e.to_string()))?;
        self.rows = Some(iter);
        self.row_in_file = 0;
        Ok(true)
    }
}

impl Iterator for ParquetImages {
    type Item = Result<Encoded>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        loop {
            if self.rows.is_none() {
                match self.open_next() {
                    Ok(true) => {}
                    Ok(false) => return None,
                    Err(e) => {
                        self.failed = true;
                        return Some(Err(e));
                    }
                }
            }
            let path = self.files.get(self.file).cloned().unwrap_or_default();
            let Some(row) = self.rows.as_mut().and_then(Iterator::next) else {
                self.rows = None;
                self.file += 1;
                continue;
            };
            let (index, row_in_file) = (self.index, self.row_in_file);
            self.index += 1;
            self.row_in_file += 1;
            if !(self.wanted)(index) {
                continue;
            }
            let out = row
                .map_err(|e| malformed(&path, e.to_string()))
                .and_then(|row| {
                    let name = match row_path(&row) {
                        Some(p) => format!("{}, row {row_in_file} ({p})", path.display()),
                        None => format!("{}, row {row_in_file}", path.display()),
                    };
                    row_image(&row, &name).map(|bytes| (bytes, name))
                })
                .map(|(bytes, name)| Encoded {
                    index,
                    bytes,
                    label: self.labels.get(index).copied().unwrap_or(0),
                    name,
                });
            if out.is_err() {
                self.failed = true;
            }
            return Some(out);
        }
    }
}
