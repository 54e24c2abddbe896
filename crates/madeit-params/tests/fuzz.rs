//! The safetensors reader on hostile input: random bytes and mutations of valid files never
//! make it panic, and it never allocates more than a bound, whatever sizes a header claims.
//!
//! One test per binary: the allocation bound is enforced by a global allocator that fails
//! (aborting the test) on any request past the limit, so nothing else may run beside it.

#![allow(clippy::unwrap_used, clippy::panic)]

use madeit_params::{ParamDict, SaveOptions, Tensor};
use proptest::prelude::*;

#[path = "support/bounded_alloc.rs"]
mod bounded_alloc;

use bounded_alloc::{bounded, runner};

fn valid_file() -> Vec<u8> {
    let mut d = ParamDict::new();
    d.insert(
        "w",
        Tensor::new(vec![3, 4], (0..12).map(|i| i as f32).collect()).unwrap(),
    );
    d.insert("b", Tensor::new(vec![3], vec![0.5; 3]).unwrap());
    d.to_safetensors_bytes(&SaveOptions::default()).unwrap()
}

/// A file whose header claims `shape` for `dtype` over the given data offsets.
fn claiming(dtype: &str, shape: &[u64], offsets: (u64, u64), data: usize) -> Vec<u8> {
    let header = serde_json::json!({"x": {"dtype": dtype, "shape": shape, "data_offsets": [offsets.0, offsets.1]}})
        .to_string();
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend(std::iter::repeat_n(0u8, data));
    out
}

#[test]
fn the_safetensors_reader_never_panics_nor_over_allocates() {
    let mut runner = runner(512);
    // Random bytes.
    runner
        .run(&proptest::collection::vec(any::<u8>(), 0..2048), |bytes| {
            bounded(|| {
                let _ = ParamDict::from_safetensors_bytes(&bytes);
            });
            Ok(())
        })
        .unwrap();
    // Mutations of a valid file: overwritten bytes, truncation, a forged header length.
    let valid = valid_file();
    let n = valid.len();
    let strategy = (
        proptest::collection::vec((0..n, any::<u8>()), 0..8),
        0..=n,
        proptest::option::of(any::<u64>()),
    );
    runner
        .run(&strategy, |(edits, keep, header_len)| {
            let mut bytes = valid.clone();
            for (i, b) in edits {
                bytes[i] = b;
            }
            if let Some(h) = header_len {
                bytes[..8].copy_from_slice(&h.to_le_bytes());
            }
            bytes.truncate(keep);
            bounded(|| {
                if let Ok((d, _)) = ParamDict::from_safetensors_bytes(&bytes) {
                    // Whatever parses must be consistent.
                    for (_, t) in d.iter() {
                        prop_assert_eq!(t.numel(), t.shape().iter().product::<usize>());
                    }
                }
                Ok(())
            })
        })
        .unwrap();
    // Headers that claim enormous tensors over a few bytes of data.
    for (dtype, shape, offsets, data) in [
        ("F32", vec![1u64 << 31, 1 << 31], (0, 16), 16),
        ("F32", vec![u64::MAX, 2], (0, 8), 8),
        ("F16", vec![1 << 40], (0, 1 << 41), 64),
        ("BF16", vec![4], (0, u64::MAX), 8),
        ("F32", vec![], (0, 4), 4),
        ("I64", vec![1 << 30], (0, 8 << 30), 8),
    ] {
        let bytes = claiming(dtype, &shape, offsets, data);
        let res = bounded(|| ParamDict::from_safetensors_bytes(&bytes).map(|_| ()));
        if shape.is_empty() {
            assert!(res.is_ok(), "a scalar is a valid tensor");
        } else {
            assert!(res.is_err(), "{dtype} {shape:?} {offsets:?} was accepted");
        }
    }
}
