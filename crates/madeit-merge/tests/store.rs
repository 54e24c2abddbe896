//! Store round trips, atomic replacement and corruption handling.
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

// The low-rank fixtures shared with `madeit-experts`'s own tests.
#[path = "../../madeit-experts/tests/common/mod.rs"]
mod common;

use common::*;
use madeit_merge::made_it::store::{self, Factor, MANIFEST_FILE, checksum, tensor_key};
use madeit_merge::made_it::{ExpertsError, HistoryScope, MadeIt, MadeItConfig, NonTargetRule};
use madeit_params::ParamDict;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

fn state(kappa: f64, n: u32, rule: NonTargetRule) -> (ParamDict, MadeIt) {
    let pre = pretrained(2, "vision_model.", 61);
    let mut m = MadeIt::new(MadeItConfig {
        rho: 0.25,
        kappa,
        non_target: rule,
        history: HistoryScope::Pooled,
        ..MadeItConfig::default()
    })
    .unwrap();
    for t in 0..n {
        let ft = finetuned(&pre, 300 + u64::from(t), 3, 0.5);
        m.absorb(&pre, &ft, t * 3 + 1).unwrap();
    }
    (pre, m)
}

/// Saves `m` to a new temporary directory.
fn save_to_temp(m: &MadeIt) -> (tempfile::TempDir, store::SavedStore) {
    let dir = tempfile::tempdir().unwrap();
    let paths = store::save(m, dir.path()).unwrap();
    (dir, paths)
}

fn manifest(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&fs::read(dir.join(MANIFEST_FILE)).unwrap()).unwrap()
}

fn tensor_file(dir: &Path) -> PathBuf {
    dir.join(manifest(dir)["tensor_file"].as_str().unwrap())
}

fn write_manifest(dir: &Path, v: &serde_json::Value) {
    fs::write(
        dir.join(MANIFEST_FILE),
        serde_json::to_vec_pretty(v).unwrap(),
    )
    .unwrap();
}

/// A tensor of the store's file: name, dtype, shape and bytes.
type Item = (String, Dtype, Vec<usize>, Vec<u8>);

/// Rewrites the tensor file through `edit` and fixes the manifest's size and checksum,
/// so that only the content check can catch the change.
fn rewrite_tensors(dir: &Path, edit: impl FnOnce(&mut Vec<Item>)) {
    let path = tensor_file(dir);
    let bytes = fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut items: Vec<Item> = st
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    edit(&mut items);
    let views: Vec<(String, TensorView<'_>)> = items
        .iter()
        .map(|(k, d, s, b)| (k.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let out = safetensors::serialize(views, None::<HashMap<String, String>>).unwrap();
    fs::write(&path, &out).unwrap();
    let mut m = manifest(dir);
    m["tensor_bytes"] = serde_json::json!(out.len());
    m["checksum"] = serde_json::json!(format!("{:016x}", checksum(&out)));
    write_manifest(dir, &m);
}

#[test]
fn save_load_round_trip_is_bit_identical() {
    for (kappa, rule) in [
        (1.0, NonTargetRule::Pretrained),
        (f64::INFINITY, NonTargetRule::RunningMean),
        (f64::NEG_INFINITY, NonTargetRule::Pretrained),
    ] {
        let (_, m) = state(kappa, 4, rule);
        let (dir, saved) = save_to_temp(&m);
        assert!(saved.manifest.ends_with(MANIFEST_FILE));
        assert_eq!(
            fs::metadata(&saved.tensors).unwrap().len(),
            saved.tensor_bytes
        );
        let back = store::load(dir.path()).unwrap();
        // PartialEq on f32/f64 values: every factor, score and threshold is identical.
        assert_eq!(back, m);
        for (a, b) in back.modules().iter().zip(m.modules()) {
            for (x, y) in a.experts().iter().zip(b.experts()) {
                let bits = |e: &madeit_merge::made_it::Expert| -> Vec<u32> {
                    let mut v: Vec<u32> = e.s().iter().map(|x| x.to_bits()).collect();
                    for j in 0..e.rank() {
                        v.extend(e.u().col(j).iter().map(|x| x.to_bits()));
                        v.extend(e.v().col(j).iter().map(|x| x.to_bits()));
                    }
                    v
                };
                assert_eq!(bits(x), bits(y));
            }
        }
        // Saving what was loaded gives the same files.
        let (_dir2, saved2) = save_to_temp(&back);
        assert_eq!(
            fs::read(&saved.tensors).unwrap(),
            fs::read(&saved2.tensors).unwrap()
        );
        assert_eq!(
            fs::read(&saved.manifest).unwrap(),
            fs::read(&saved2.manifest).unwrap()
        );
    }
}

#[test]
fn a_resumed_run_continues_identically() {
    let (pre, mut m) = state(0.5, 3, NonTargetRule::RunningMean);
    let (dir, _) = save_to_temp(&m);
    let mut resumed = store::load(dir.path()).unwrap();
    let ft = finetuned(&pre, 999, 3, 0.5);
    let a = m.absorb(&pre, &ft, 50).unwrap();
    let b = resumed.absorb(&pre, &ft, 50).unwrap();
    assert_eq!(a, b);
    assert_eq!(m, resumed);
}

#[test]
fn saving_again_replaces_the_tensor_file_and_cleans_up() {
    let (pre, mut m) = state(1.0, 2, NonTargetRule::Pretrained);
    let (dir, first) = save_to_temp(&m);
    // A leftover temporary file from an interrupted save.
    fs::write(dir.path().join(".madeit-tmp-1-manifest.json"), b"partial").unwrap();
    m.absorb(&pre, &finetuned(&pre, 77, 3, 0.5), 40).unwrap();
    let second = store::save(&m, dir.path()).unwrap();
    assert_ne!(first.tensors, second.tensors);
    assert!(!first.tensors.exists());
    let names: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert_eq!(store::load(dir.path()).unwrap(), m);
}

#[test]
fn an_interrupted_save_leaves_the_previous_store_loadable() {
    // Simulate a crash after the new tensor file was written but before the manifest
    // was replaced: the old manifest and its tensor file are still there.
    let (pre, mut m) = state(1.0, 2, NonTargetRule::Pretrained);
    let (dir, _) = save_to_temp(&m);
    let old = m.clone();
    let old_manifest = fs::read(dir.path().join(MANIFEST_FILE)).unwrap();
    let old_tensors = tensor_file(dir.path());
    let old_bytes = fs::read(&old_tensors).unwrap();
    m.absorb(&pre, &finetuned(&pre, 78, 3, 0.5), 41).unwrap();
    let new = store::save(&m, dir.path()).unwrap();
    fs::write(dir.path().join(MANIFEST_FILE), old_manifest).unwrap();
    fs::write(&old_tensors, old_bytes).unwrap();
    assert!(new.tensors.exists());
    assert_eq!(store::load(dir.path()).unwrap(), old);
}

#[test]
fn corrupt_or_missing_files_give_typed_errors() {
    let (_, m) = state(1.0, 3, NonTargetRule::RunningMean);
    let fresh = || save_to_temp(&m).0;

    // Missing manifest.
    let dir = tempfile::tempdir().unwrap();
    let err = store::load(dir.path()).unwrap_err();
    assert!(
        matches!(&err, ExpertsError::StoreIo { path, .. } if path.ends_with(MANIFEST_FILE)),
        "{err}"
    );

    // Unparsable manifest.
    let dir = fresh();
    fs::write(dir.path().join(MANIFEST_FILE), b"{ not json").unwrap();
    assert!(matches!(
        store::load(dir.path()),
        Err(ExpertsError::StoreFormat { .. })
    ));

    // Unsupported version.
    let dir = fresh();
    let mut v = manifest(dir.path());
    v["version"] = serde_json::json!(99);
    write_manifest(dir.path(), &v);
    assert!(matches!(
        store::load(dir.path()),
        Err(ExpertsError::StoreVersion { found: 99, .. })
    ));

    // Missing tensor file.
    let dir = fresh();
    let tf = tensor_file(dir.path());
    fs::remove_file(&tf).unwrap();
    let err = store::load(dir.path()).unwrap_err();
    assert!(
        matches!(&err, ExpertsError::StoreIo { path, .. } if *path == tf),
        "{err}"
    );

    // A flipped byte.
    let dir = fresh();
    let tf = tensor_file(dir.path());
    let mut bytes = fs::read(&tf).unwrap();
    let k = bytes.len() - 7;
    bytes[k] ^= 0x40;
    fs::write(&tf, &bytes).unwrap();
    let err = store::load(dir.path()).unwrap_err();
    assert!(
        matches!(&err, ExpertsError::StoreMismatch { path, message } if *path == tf && message.contains("checksum")),
        "{err}"
    );

    // A truncated file.
    let dir = fresh();
    let tf = tensor_file(dir.path());
    let bytes = fs::read(&tf).unwrap();
    fs::write(&tf, &bytes[..bytes.len() / 2]).unwrap();
    assert!(matches!(
        store::load(dir.path()),
        Err(ExpertsError::StoreMismatch { .. })
    ));

    // A tensor file name that escapes the directory.
    let dir = fresh();
    let mut v = manifest(dir.path());
    v["tensor_file"] = serde_json::json!("../elsewhere.safetensors");
    write_manifest(dir.path(), &v);
    assert!(matches!(
        store::load(dir.path()),
        Err(ExpertsError::StoreFormat { .. })
    ));

    let name = m.modules()[4].name().to_owned();
    // The load error of a fresh store whose tensor file `edit` rewrote (checksum fixed up).
    let load_after = |edit: &dyn Fn(&mut Vec<Item>)| {
        let dir = fresh();
        rewrite_tensors(dir.path(), edit);
        store::load(dir.path()).unwrap_err()
    };

    // A missing tensor (checksum fixed up).
    let key = tensor_key(&name, 1, Factor::V);
    let err = load_after(&|items| items.retain(|(k, ..)| *k != key));
    assert!(
        matches!(&err, ExpertsError::StoreMissingTensor { tensor, .. } if *tensor == key),
        "{err}"
    );

    // An extra tensor.
    let err = load_after(&|items| {
        items.push(("stray".to_owned(), Dtype::F32, vec![1], vec![0, 0, 0, 0]));
    });
    assert!(
        matches!(&err, ExpertsError::StoreUnexpectedTensor { tensor, .. } if tensor == "stray"),
        "{err}"
    );

    // Wrong shape, wrong dtype, NaN, non-orthonormal basis.
    let key = tensor_key(&name, 0, Factor::U);
    let err = load_after(&|items| {
        let it = items.iter_mut().find(|(k, ..)| *k == key).unwrap();
        let (r, c) = (it.2[0], it.2[1]);
        it.2 = vec![c, r];
    });
    assert!(
        matches!(&err, ExpertsError::StoreTensor { tensor, message, .. } if *tensor == key && message.contains("shape")),
        "{err}"
    );

    let err = load_after(&|items| {
        let it = items.iter_mut().find(|(k, ..)| *k == key).unwrap();
        it.1 = Dtype::I32;
    });
    assert!(
        matches!(&err, ExpertsError::StoreTensor { tensor, message, .. } if *tensor == key && message.contains("dtype")),
        "{err}"
    );

    let err = load_after(&|items| {
        let it = items.iter_mut().find(|(k, ..)| *k == key).unwrap();
        it.3[0..4].copy_from_slice(&f32::NAN.to_le_bytes());
    });
    assert!(
        matches!(&err, ExpertsError::StoreTensor { tensor, message, .. } if *tensor == key && message.contains("non-finite")),
        "{err}"
    );

    let err = load_after(&|items| {
        let it = items.iter_mut().find(|(k, ..)| *k == key).unwrap();
        it.3[0..4].copy_from_slice(&3.0f32.to_le_bytes());
    });
    assert!(
        matches!(&err, ExpertsError::StoreTensor { tensor, message, .. } if tensor.starts_with(&name) && message.contains("orthonormal")),
        "{err}"
    );

    // A manifest whose task sets break the partition invariant.
    let dir = fresh();
    let mut v = manifest(dir.path());
    v["modules"][2]["experts"][0]["tasks"] = serde_json::json!([12345]);
    write_manifest(dir.path(), &v);
    let err = store::load(dir.path()).unwrap_err();
    assert!(matches!(err, ExpertsError::StoreInvalid { .. }), "{err}");

    // A manifest whose config gives another rank.
    let dir = fresh();
    let mut v = manifest(dir.path());
    v["config"]["rho"] = serde_json::json!(0.5);
    write_manifest(dir.path(), &v);
    assert!(matches!(
        store::load(dir.path()),
        Err(ExpertsError::StoreInvalid { .. })
    ));

    // A manifest naming a module that is not a target module.
    let dir = fresh();
    let mut v = manifest(dir.path());
    v["modules"][0]["weight_key"] = serde_json::json!("encoder.layers.0.mlp.fc3.weight");
    write_manifest(dir.path(), &v);
    assert!(matches!(
        store::load(dir.path()),
        Err(ExpertsError::StoreFormat { .. })
    ));
}

#[test]
fn manifest_records_scores_and_task_sets() {
    let (_, m) = state(f64::INFINITY, 3, NonTargetRule::Pretrained);
    let (dir, _) = save_to_temp(&m);
    let v = manifest(dir.path());
    assert_eq!(v["config"]["kappa"], serde_json::json!("inf"));
    assert_eq!(v["tasks"], serde_json::json!([1, 4, 7]));
    assert_eq!(v["history"].as_array().unwrap().len(), 3);
    assert_eq!(
        v["history"][2]["modules"][0]["scores"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        v["history"][2]["modules"][0]["threshold"]["threshold"],
        serde_json::json!("inf")
    );
    assert_eq!(
        v["modules"][0]["experts"][1]["tasks"],
        serde_json::json!([4])
    );
}
