//! Split files: writing, reading back, and rejecting files that are not split files.

#![allow(clippy::unwrap_used, clippy::panic)]

use std::collections::HashMap;

use madeit_data::export::{SPLIT_FORMAT, split_from_bytes, split_to_bytes};
use madeit_data::{
    DataError, EXPORTED_SPLITS, ImageSet, SourceData, SourceId, Split, export_task, prepare_task,
    read_split, split_path, task_by_name, write_split,
};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

fn sample() -> ImageSet {
    let (n, h, w, c) = (3, 2, 4, 3);
    let images: Vec<u8> = (0..n * h * w * c).map(|k| (k * 5 % 256) as u8).collect();
    ImageSet::new(
        images,
        n,
        h,
        w,
        c,
        vec![2, 0, 1],
        vec!["a".into(), "b/c".into(), "d \"e\"".into()],
    )
    .unwrap()
}

#[test]
fn split_files_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/test.safetensors");
    let set = sample();
    write_split(&path, &set, "mnist", "test").unwrap();
    let back = read_split(&path).unwrap();
    assert_eq!(back.set, set);
    assert_eq!((back.task.as_str(), back.split.as_str()), ("mnist", "test"));
    // The stored layout is [n, c, h, w] U8 and [n] I64.
    let bytes = std::fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let images = st.tensor("images").unwrap();
    assert_eq!(
        (images.dtype(), images.shape().to_vec()),
        (Dtype::U8, vec![3, 3, 2, 4])
    );
    assert_eq!(images.data(), set.to_nchw().as_slice());
    let labels = st.tensor("labels").unwrap();
    assert_eq!(
        (labels.dtype(), labels.shape().to_vec()),
        (Dtype::I64, vec![3])
    );
    assert_eq!(&labels.data()[..8], &2i64.to_le_bytes());
    assert!(!dir.path().join("sub/test.safetensors.tmp").exists());
}

fn with_tensors(
    images: TensorView<'_>,
    labels: TensorView<'_>,
    meta: Option<HashMap<String, String>>,
) -> Vec<u8> {
    safetensors::tensor::serialize([("images", images), ("labels", labels)], meta).unwrap()
}

fn meta(classes: &str) -> Option<HashMap<String, String>> {
    Some(
        [
            ("format", SPLIT_FORMAT),
            ("task", "t"),
            ("split", "val"),
            ("class_names", classes),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect(),
    )
}

#[test]
fn u32_labels_are_accepted() {
    let px = [1u8, 2, 3, 4];
    let lab: Vec<u8> = [1u32, 0].iter().flat_map(|l| l.to_le_bytes()).collect();
    let bytes = with_tensors(
        TensorView::new(Dtype::U8, vec![2, 1, 1, 2], &px).unwrap(),
        TensorView::new(Dtype::U32, vec![2], &lab).unwrap(),
        meta("[\"x\",\"y\"]"),
    );
    let f = split_from_bytes(&bytes, "u32.safetensors".as_ref()).unwrap();
    assert_eq!(f.set.labels, vec![1, 0]);
    assert_eq!(f.set.images, vec![1, 2, 3, 4]);
}

#[test]
fn malformed_split_files_are_rejected_with_their_path() {
    let px = [0u8; 4];
    let lab: Vec<u8> = [0i64, 5].iter().flat_map(|l| l.to_le_bytes()).collect();
    let p = std::path::Path::new("bad.safetensors");
    let images = || TensorView::new(Dtype::U8, vec![2, 1, 1, 2], &px).unwrap();
    let labels = || TensorView::new(Dtype::I64, vec![2], &lab).unwrap();
    // Label 5 with two classes.
    let err =
        split_from_bytes(&with_tensors(images(), labels(), meta("[\"x\",\"y\"]")), p).unwrap_err();
    assert!(
        matches!(err, DataError::LabelOutOfRange { label: 5, ref file, .. } if file == "bad.safetensors")
    );
    // No metadata.
    let err = split_from_bytes(&with_tensors(images(), labels(), None), p).unwrap_err();
    assert!(matches!(err, DataError::SplitFile { ref path, .. } if path == p));
    // Images as F32.
    let f = [0u8; 16];
    let err = split_from_bytes(
        &with_tensors(
            TensorView::new(Dtype::F32, vec![2, 1, 1, 2], &f).unwrap(),
            labels(),
            meta("[\"x\"]"),
        ),
        p,
    )
    .unwrap_err();
    assert!(matches!(err, DataError::SplitFile { ref detail, .. } if detail.contains("U8")));
    // Labels of the wrong length.
    let one = 0i64.to_le_bytes();
    let err = split_from_bytes(
        &with_tensors(
            images(),
            TensorView::new(Dtype::I64, vec![1], &one).unwrap(),
            meta("[\"x\"]"),
        ),
        p,
    )
    .unwrap_err();
    assert!(matches!(err, DataError::SplitFile { .. }));
    // Not safetensors at all.
    assert!(matches!(
        split_from_bytes(b"garbage", p).unwrap_err(),
        DataError::Safetensors { .. }
    ));
    assert!(matches!(
        read_split("/nonexistent/x.safetensors".as_ref()).unwrap_err(),
        DataError::Io { .. }
    ));
}

#[test]
fn export_task_writes_val_seed_and_test() {
    let l: Vec<u32> = (0..200).map(|i| (i % 10) as u32).collect();
    let images: Vec<u8> = (0..200 * 64).map(|k| (k % 17) as u8).collect();
    let set = ImageSet::new(
        images,
        200,
        8,
        8,
        1,
        l,
        (0..10).map(|c| c.to_string()).collect(),
    )
    .unwrap();
    let data = prepare_task(
        &SourceData {
            source: SourceId::Optdigits,
            images: set,
            official_test: None,
            pretrain_labels: None,
        },
        &task_by_name("optdigits").unwrap(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let paths = export_task(dir.path(), &data).unwrap();
    assert_eq!(paths.len(), EXPORTED_SPLITS.len());
    for split in EXPORTED_SPLITS {
        let path = split_path(dir.path(), "optdigits", split);
        assert!(paths.contains(&path));
        let back = read_split(&path).unwrap();
        assert_eq!(back.set, data.split(split).unwrap());
        assert_eq!(back.split, split.name());
    }
    assert_eq!(
        read_split(&split_path(dir.path(), "optdigits", Split::Seed))
            .unwrap()
            .set
            .n,
        50
    );
    // Bytes API agrees with the file API.
    let test = data.split(Split::Test).unwrap();
    let bytes = split_to_bytes(&test, "optdigits", "test").unwrap();
    assert_eq!(
        bytes,
        std::fs::read(split_path(dir.path(), "optdigits", Split::Test)).unwrap()
    );
}
