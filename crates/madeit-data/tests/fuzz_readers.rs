//! The package readers on hostile input: random bytes and mutations of valid files never
//! make them panic, and they never allocate more than a bound.
//!
//! One test per binary: the allocation bound is enforced by a global allocator that fails
//! (aborting the test) on any request past the limit, so nothing else may run beside it.

#![allow(clippy::unwrap_used, clippy::panic)]

use std::io::Write;

use madeit_data::readers::{emoji, gunzip, idx, mnist_json, optdigits, pickle};
use proptest::prelude::*;

#[path = "../../madeit-params/tests/support/bounded_alloc.rs"]
mod bounded_alloc;

use bounded_alloc::{bounded, runner};

/// Every reader on the same bytes.
fn read_all(bytes: &[u8]) {
    let _ = idx::parse_idx(bytes, 3, "x");
    let _ = idx::read_idx_images(bytes, "x");
    let _ = idx::read_idx_labels(bytes, "x");
    let _ = gunzip(bytes, "x");
    let _ = mnist_json::read_digit_json(bytes, "x");
    let _ = optdigits::read_optdigits_csv(bytes, "x");
    let _ = pickle::parse_ndarray_pickle(bytes, "x");
    let _ = emoji::decode_png_rgba(bytes, "x");
    let _ = emoji::parse_emoji_index(bytes, "x");
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

#[test]
fn the_readers_never_panic_nor_over_allocate() {
    let mut runner = runner(512);
    runner
        .run(&proptest::collection::vec(any::<u8>(), 0..2048), |bytes| {
            bounded(|| read_all(&bytes));
            Ok(())
        })
        .unwrap();
    // Mutations of valid inputs of each format.
    let images = idx::encode_idx(&[2, 3, 3], &[7u8; 18]);
    let digit = format!(
        "[{}]",
        (0..784)
            .map(|i| format!("{}", (i % 7) as f32 / 7.0))
            .collect::<Vec<_>>()
            .join(",")
    );
    let csv = (0..3)
        .map(|r| {
            let mut v: Vec<String> = (0..64).map(|i| ((i + r) % 17).to_string()).collect();
            v.push((r % 10).to_string());
            v.join(",")
        })
        .collect::<Vec<_>>()
        .join("\n");
    let valid: Vec<Vec<u8>> = vec![
        images.clone(),
        gz(&images),
        digit.into_bytes(),
        csv.into_bytes(),
        br#"[{"image": "1f600.png", "category": "Smileys", "subcategory": "face", "sort_order": 1}]"#.to_vec(),
    ];
    for base in valid {
        let n = base.len();
        let strategy = (proptest::collection::vec((0..n, any::<u8>()), 0..6), 0..=n);
        runner
            .run(&strategy, |(edits, keep)| {
                let mut bytes = base.clone();
                for (i, b) in edits {
                    bytes[i] = b;
                }
                bytes.truncate(keep);
                bounded(|| read_all(&bytes));
                Ok(())
            })
            .unwrap();
    }
    // IDX headers that claim huge arrays over a few bytes.
    for dims in [[u32::MAX, u32::MAX, u32::MAX], [1 << 20, 1 << 20, 1]] {
        let mut bytes = vec![0, 0, 8, 3];
        for d in dims {
            bytes.extend_from_slice(&d.to_be_bytes());
        }
        bytes.extend_from_slice(&[0; 16]);
        assert!(bounded(|| idx::parse_idx(&bytes, 3, "x")).is_err());
    }
}
