//! Datasets as people have them: image folders and `datasets` Parquet files, decoding as
//! PIL's `convert("RGB")`, CLIP's preprocessing against transformers, and the streaming
//! decoder. The fixtures are written by `scripts/clip_preprocess_reference.py`.

#![allow(clippy::unwrap_used, clippy::panic)]

use std::path::{Path, PathBuf};

use madeit_data::dataset::Dataset;
use madeit_data::preprocess::{
    AlphaRule, ClipPreprocess, Resizer, decode_rgb, decode_rgb_with, over_white, resized_size,
};
use madeit_data::stream::{BatchStream, StreamOptions};
use madeit_params::ParamDict;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/datasets")
}

fn images() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(fixtures().join("images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e != "md"))
        .collect();
    v.sort();
    v
}

/// Mean absolute difference.
fn mad(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32
}

#[test]
fn preprocessing_matches_transformers_on_real_images_and_every_format() {
    let reference = ParamDict::load(&fixtures().join("reference.safetensors")).unwrap();
    let pre = ClipPreprocess::clip(48);
    let mut resizer = Resizer::new();
    let mut worst = (0.0f32, String::new());
    for path in images() {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let img = decode_rgb(&std::fs::read(&path).unwrap(), &name).unwrap();
        let ours = pre.apply(&img, &name, &mut resizer).unwrap();
        for kind in ["pil", "tv"] {
            let want = reference.get(&format!("{kind}.{name}")).unwrap();
            assert_eq!(want.shape(), &[3, 48, 48]);
            let d = mad(&ours, want.data());
            assert!(d <= 0.01, "{kind} {name}: mean abs diff {d}");
            if d > worst.0 {
                worst = (d, format!("{kind} {name}"));
            }
        }
    }
    eprintln!("worst mean abs diff {} ({})", worst.0, worst.1);
}

#[test]
fn sizes_follow_transformers() {
    // The shorter side becomes the size, the longer int(size * long / short).
    assert_eq!(resized_size(600, 512, 224), (262, 224));
    assert_eq!(resized_size(427, 640, 224), (224, 335));
    assert_eq!(resized_size(102, 102, 224), (224, 224));
    let pre = ClipPreprocess::from_json_str(
        r#"{"size": 224, "crop_size": 224, "resample": 3, "image_mean": [0.5, 0.5, 0.5],
            "image_std": [0.5, 0.5, 0.5], "feature_extractor_type": "CLIPFeatureExtractor"}"#,
        "preprocessor_config.json",
        224,
    )
    .unwrap();
    assert_eq!(pre.crop_size, (224, 224));
    assert_eq!(pre.image_mean, [0.5; 3]);
    let modern = ClipPreprocess::from_json_str(
        r#"{"size": {"shortest_edge": 256}, "crop_size": {"height": 240, "width": 224}}"#,
        "p.json",
        224,
    )
    .unwrap();
    assert_eq!((modern.shortest_edge, modern.crop_size), (256, (240, 224)));
    for bad in [
        r#"{"resample": 9}"#,
        r#"{"image_std": [0.5, 0.0, 0.5]}"#,
        r#"{"image_mean": [0.5, 0.5]}"#,
        r#"{"size": 0}"#,
        r#"{"size": "large"}"#,
        "not json",
    ] {
        let err = ClipPreprocess::from_json_str(bad, "p.json", 224).unwrap_err();
        assert!(err.to_string().contains("p.json"), "{err}");
    }
}

#[test]
fn a_crop_larger_than_the_image_pads_with_zeros_as_transformers() {
    // A 3 x 2 image cropped to 5 x 4 without resizing: placed at ceil((5-3)/2) = 1 rows
    // and ceil((4-2)/2) = 1 column.
    let img = madeit_data::preprocess::RgbImage {
        width: 2,
        height: 3,
        pixels: (1..=18).collect(),
    };
    let pre = ClipPreprocess {
        do_resize: false,
        crop_size: (5, 4),
        do_normalize: false,
        do_rescale: false,
        ..ClipPreprocess::clip(4)
    };
    let out = pre.apply(&img, "x", &mut Resizer::new()).unwrap();
    let red: Vec<f32> = out[..20].to_vec();
    #[rustfmt::skip]
    let want = [
        0.0, 0.0, 0.0, 0.0,
        0.0, 1.0, 4.0, 0.0,
        0.0, 7.0, 10.0, 0.0,
        0.0, 13.0, 16.0, 0.0,
        0.0, 0.0, 0.0, 0.0,
    ];
    assert_eq!(red, want);
}

#[test]
fn decoding_converts_like_pil() {
    let read = |n: &str| {
        let p = fixtures().join("images").join(n);
        decode_rgb(&std::fs::read(p).unwrap(), n).unwrap()
    };
    // Grey is replicated into three equal channels.
    let g = read("microaneurysms.png");
    assert!(g.pixels.chunks(3).all(|p| p[0] == p[1] && p[1] == p[2]));
    let g16 = read("variant_grey16.png");
    assert!(g16.pixels.chunks(3).all(|p| p[0] == p[1] && p[1] == p[2]));
    // Transparency is composited onto white (transformers' convert_to_rgb), or dropped
    // with AlphaRule::Drop (PIL's convert("RGB")): the half at alpha 64 keeps its colours.
    let bytes = |n: &str| std::fs::read(fixtures().join("images").join(n)).unwrap();
    let dropped = decode_rgb_with(&bytes("variant_rgba.webp"), "x", AlphaRule::Drop).unwrap();
    let lossless = read("variant_lossless.webp");
    assert!(dropped.pixels == lossless.pixels);
    let white = read("variant_rgba.webp");
    let px = |img: &madeit_data::preprocess::RgbImage, x: usize| img.pixels[3 * x];
    // Column 0 is at alpha 64: c' = (c a + 255 (255 - a)) / 255, Pillow's rounding.
    let c = px(&lossless, 0);
    assert_eq!(px(&white, 0), over_white(c, 64));
    assert!((i32::from(over_white(c, 64)) - (i32::from(c) * 64 + 255 * 191) / 255).abs() <= 1);
    // The opaque half is unchanged.
    let last = lossless.width - 1;
    assert_eq!(px(&white, last), px(&lossless, last));
    for bad in [
        &b"not an image"[..],
        &b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"[..],
        &[],
    ] {
        let err = decode_rgb(bad, "broken.png").unwrap_err();
        assert!(err.to_string().contains("broken.png"), "{err}");
    }
    // A JPEG cut short is refused (PIL: "image file is truncated"), though the decoder
    // would fill the missing rows; whole JPEGs (baseline, CMYK) pass the check.
    for n in ["rocket.jpg", "grace_hopper.jpg", "variant_cmyk.jpg"] {
        let whole = bytes(n);
        assert!(madeit_data::preprocess::jpeg_is_complete(&whole), "{n}");
        let err = decode_rgb(&whole[..whole.len() * 2 / 3], n).unwrap_err();
        assert!(err.to_string().contains("cut short"), "{err}");
        assert!(err.to_string().contains(n), "{err}");
    }
}

#[test]
fn image_folders_and_parquet_files_hold_the_same_dataset() {
    let folder = Dataset::image_folder(&fixtures().join("folder"), None).unwrap();
    let parquet = Dataset::parquet(
        &[fixtures().join("parquet/test-00000-of-00001.parquet")],
        "image",
        "label",
        None,
    )
    .unwrap();
    assert_eq!(folder.classes(), ["jpeg", "other"]);
    assert_eq!(
        parquet.classes(),
        folder.classes(),
        "ClassLabel names from the metadata"
    );
    assert_eq!(folder.len(), 9);
    assert_eq!(parquet.len(), 9);
    let blobs = |d: &Dataset| {
        let mut v: Vec<(u32, Vec<u8>)> = d
            .encoded()
            .map(|e| e.map(|e| (e.label, e.bytes)).unwrap())
            .collect();
        v.sort();
        v
    };
    assert_eq!(blobs(&folder), blobs(&parquet));
    let first = parquet.encoded().next().unwrap().unwrap();
    assert!(
        first.name.contains("row 0") && first.name.contains("horse.png"),
        "{}",
        first.name
    );
    // Selections keep dataset order.
    let sel = parquet.select(&[5, 1, 1]).unwrap();
    assert_eq!(sel.len(), 2);
    let idx: Vec<usize> = sel.encoded().map(|e| e.unwrap().index).collect();
    assert_eq!(idx, [1, 5]);
    assert!(parquet.select(&[9]).is_err());
}

#[test]
fn the_stream_decodes_ahead_in_order() {
    let folder = Dataset::image_folder(&fixtures().join("folder"), None).unwrap();
    let pre = ClipPreprocess::clip(32);
    let options = StreamOptions {
        batch: 4,
        workers: 3,
        queue: 2,
    };
    let batches: Vec<_> = BatchStream::new(&folder, &pre, options)
        .map(Result::unwrap)
        .collect();
    assert_eq!(batches.iter().map(|b| b.len).collect::<Vec<_>>(), [4, 4, 1]);
    let labels: Vec<u32> = batches.iter().flat_map(|b| b.labels.clone()).collect();
    assert_eq!(labels, folder.labels());
    let mut resizer = Resizer::new();
    let direct: Vec<f32> = folder
        .encoded()
        .flat_map(|e| {
            let e = e.unwrap();
            let img = decode_rgb(&e.bytes, &e.name).unwrap();
            pre.apply(&img, &e.name, &mut resizer).unwrap()
        })
        .collect();
    let streamed: Vec<f32> = batches.iter().flat_map(|b| b.pixels.clone()).collect();
    assert_eq!(streamed, direct);
    // Dropping a stream early stops its threads.
    let mut s = BatchStream::new(&folder, &pre, options);
    assert!(s.next().is_some());
    drop(s);
}

#[test]
fn bad_datasets_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    // A class folder with no image.
    std::fs::create_dir_all(root.join("a")).unwrap();
    std::fs::create_dir_all(root.join("b")).unwrap();
    std::fs::copy(
        fixtures().join("images/horse.png"),
        root.join("a/horse.png"),
    )
    .unwrap();
    std::fs::write(root.join("b/notes.txt"), "no image here").unwrap();
    let err = Dataset::image_folder(root, None).unwrap_err().to_string();
    assert!(err.contains("holds no image") && err.contains('b'), "{err}");
    // A folder that is not a class of the list.
    std::fs::write(root.join("b/broken.png"), "not a png").unwrap();
    let err = Dataset::image_folder(root, Some(&["a".to_owned(), "c".to_owned()]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("`b` is not a class"), "{err}");
    // An image that does not decode: the stream names it.
    let ds = Dataset::image_folder(root, None).unwrap();
    let err = BatchStream::new(&ds, &ClipPreprocess::clip(32), StreamOptions::new(8))
        .find_map(Result::err)
        .unwrap()
        .to_string();
    assert!(err.contains("broken.png"), "{err}");
    // Duplicate class names.
    let err = Dataset::image_folder(root, Some(&["a".to_owned(), "a".to_owned()]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("twice"), "{err}");
    // Parquet: a missing column, too few classes for the labels, not Parquet at all.
    let pq = [fixtures().join("parquet/test-00000-of-00001.parquet")];
    let err = Dataset::parquet(&pq, "img", "label", None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no column `img`") && err.contains("image, label"),
        "{err}"
    );
    let err = Dataset::parquet(&pq, "image", "label", Some(&["only".to_owned()]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("test-00000-of-00001.parquet"), "{err}");
    let err = Dataset::parquet(&[root.join("a/horse.png")], "image", "label", None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not a Parquet file") && err.contains("horse.png"),
        "{err}"
    );
}
