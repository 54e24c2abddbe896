//! safetensors round trips and malformed-file handling.

use std::collections::BTreeMap;
use std::path::Path;

use madeit_params::{DType, Metadata, ParamDict, ParamsError, SaveOptions, Tensor};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A small dictionary with mixed shapes (matrix, vector, scalar, empty, 4-D) and values that
/// cover normals, subnormals, signed zeros and large magnitudes.
fn sample(dtype: DType) -> Result<ParamDict, ParamsError> {
    let mut d = ParamDict::new();
    let vals = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|i| {
                let x = (i as f32 * 0.37 - 1.3).sin() * 10f32.powi((i % 7) as i32 - 3);
                dtype.round(x)
            })
            .collect()
    };
    d.insert(
        "z.layers.0.weight",
        Tensor::new(vec![3, 5], vals(15))?.with_dtype(dtype),
    );
    d.insert("a.bias", Tensor::new(vec![5], vals(5))?.with_dtype(dtype));
    d.insert(
        "m.scalar",
        Tensor::new(vec![], vec![dtype.round(-0.0)])?.with_dtype(dtype),
    );
    d.insert(
        "e.empty",
        Tensor::new(vec![0, 4], vec![])?.with_dtype(dtype),
    );
    d.insert(
        "conv.weight",
        Tensor::new(vec![2, 1, 2, 3], vals(12))?.with_dtype(dtype),
    );
    Ok(d)
}

fn bits(d: &ParamDict) -> Vec<(String, Vec<usize>, DType, Vec<u32>)> {
    d.iter()
        .map(|(k, t)| {
            (
                k.to_owned(),
                t.shape().to_vec(),
                t.dtype(),
                t.data().iter().map(|x| x.to_bits()).collect(),
            )
        })
        .collect()
}

#[test]
fn round_trip_is_bit_exact_for_every_dtype() -> TestResult {
    let dir = tempfile::tempdir()?;
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let d = sample(dtype)?;
        let path = dir.path().join(format!("{dtype}.safetensors"));
        d.save(&path)?;
        let back = ParamDict::load(&path)?;
        assert_eq!(bits(&d), bits(&back), "{dtype}");
        // Saving what was loaded reproduces the file byte for byte.
        let path2 = dir.path().join(format!("{dtype}-2.safetensors"));
        back.save(&path2)?;
        assert_eq!(std::fs::read(&path)?, std::fs::read(&path2)?, "{dtype}");
    }
    Ok(())
}

#[test]
fn every_f16_and_bf16_bit_pattern_survives_f32() -> TestResult {
    // f16 -> f32 -> f16 must be exact for all 65536 patterns (NaN payloads aside).
    let f16_vals: Vec<f32> = (0..=u16::MAX)
        .map(|b| half::f16::from_bits(b).to_f32())
        .filter(|x| !x.is_nan())
        .collect();
    let bf16_vals: Vec<f32> = (0..=u16::MAX)
        .map(|b| half::bf16::from_bits(b).to_f32())
        .filter(|x| !x.is_nan())
        .collect();
    for (dtype, vals) in [(DType::F16, f16_vals), (DType::BF16, bf16_vals)] {
        let mut d = ParamDict::new();
        d.insert(
            "all",
            Tensor::new(vec![vals.len()], vals.clone())?.with_dtype(dtype),
        );
        let bytes = d.to_safetensors_bytes(&SaveOptions::default())?;
        let (back, meta) = ParamDict::from_safetensors_bytes(&bytes)?;
        assert!(meta.is_none());
        let got = back.get("all")?;
        assert_eq!(got.dtype(), dtype);
        let want: Vec<u32> = vals.iter().map(|x| x.to_bits()).collect();
        let have: Vec<u32> = got.data().iter().map(|x| x.to_bits()).collect();
        assert_eq!(want, have, "{dtype}");
    }
    Ok(())
}

#[test]
fn save_as_converts_and_rounds_to_nearest() -> TestResult {
    let dir = tempfile::tempdir()?;
    let d = sample(DType::F32)?;
    for dtype in [DType::F16, DType::BF16, DType::F32] {
        let path = dir.path().join("conv.safetensors");
        d.save_as(&path, dtype)?;
        let back = ParamDict::load(&path)?;
        for (name, t) in d.iter() {
            let b = back.get(name)?;
            assert_eq!(b.dtype(), dtype);
            assert_eq!(b.shape(), t.shape());
            let want: Vec<u32> = t.data().iter().map(|&x| dtype.round(x).to_bits()).collect();
            let have: Vec<u32> = b.data().iter().map(|x| x.to_bits()).collect();
            assert_eq!(want, have, "{name} as {dtype}");
        }
    }
    // f32 -> f16 relative error is at most 2^-11 for normal values.
    let x = 0.1f32;
    let r = DType::F16.round(x);
    assert!((r - x).abs() <= x * 2f32.powi(-11));
    Ok(())
}

#[test]
fn mixed_dtypes_keep_insertion_order_and_alignment() -> TestResult {
    let mut d = ParamDict::new();
    d.insert(
        "h",
        Tensor::new(vec![3], vec![1.0, 2.0, 3.0])?.with_dtype(DType::F16),
    );
    d.insert("f", Tensor::new(vec![2], vec![0.25, -8.0])?);
    d.insert(
        "b",
        Tensor::new(vec![1], vec![0.5])?.with_dtype(DType::BF16),
    );
    d.insert("g", Tensor::new(vec![1], vec![7.0])?);
    let bytes = d.to_safetensors_bytes(&SaveOptions::default())?;
    let (back, _) = ParamDict::from_safetensors_bytes(&bytes)?;
    assert_eq!(back.keys().collect::<Vec<_>>(), ["h", "f", "b", "g"]);
    assert_eq!(bits(&back), bits(&d));
    // The reference reader agrees, and every tensor starts at a multiple of its element size.
    let st = safetensors::SafeTensors::deserialize(&bytes)?;
    let header_len = usize::try_from(u64::from_le_bytes(bytes[..8].try_into()?))?;
    assert_eq!(header_len % 8, 0);
    for (name, view) in st.tensors() {
        let start = view.data().as_ptr() as usize - bytes.as_ptr() as usize - 8 - header_len;
        let size = d.get(&name)?.dtype().size_bytes();
        assert_eq!(start % size, 0, "{name} misaligned");
    }
    Ok(())
}

#[test]
fn reads_files_written_by_the_reference_serializer() -> TestResult {
    // Files written by other tools list tensors sorted by name; loading follows the header.
    let a: Vec<u8> = [1.0f32, -2.0]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let b: Vec<u8> = [half::f16::from_f32(3.5)]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let views = vec![
        (
            "w2",
            safetensors::tensor::TensorView::new(safetensors::Dtype::F16, vec![1, 1], &b)?,
        ),
        (
            "w1",
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2], &a)?,
        ),
    ];
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_owned(), "pt".to_owned());
    let bytes = safetensors::serialize(views, Some(meta))?;
    let (d, m) = ParamDict::from_safetensors_bytes(&bytes)?;
    assert_eq!(d.get("w1")?.data(), &[1.0, -2.0]);
    assert_eq!(d.get("w1")?.dtype(), DType::F32);
    assert_eq!(d.get("w2")?.data(), &[3.5]);
    assert_eq!(d.get("w2")?.shape(), &[1, 1]);
    assert_eq!(d.get("w2")?.dtype(), DType::F16);
    assert_eq!(
        m.and_then(|m| m.get("format").cloned()).as_deref(),
        Some("pt")
    );
    Ok(())
}

#[test]
fn metadata_round_trips() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("m.safetensors");
    let d = sample(DType::F32)?;
    let mut meta: Metadata = BTreeMap::new();
    meta.insert("format".into(), "pt".into());
    meta.insert("note".into(), "quote \" and unicode é".into());
    d.save_with_metadata(&path, &meta)?;
    let (back, m) = ParamDict::load_with_metadata(&path)?;
    assert_eq!(m.as_ref(), Some(&meta));
    assert_eq!(bits(&back), bits(&d));
    // Without metadata, none comes back.
    d.save(&path)?;
    let (_, m) = ParamDict::load_with_metadata(&path)?;
    assert_eq!(m, None);
    Ok(())
}

#[test]
fn unsupported_dtype_names_the_tensor() -> TestResult {
    let raw = [1u8, 2, 3, 4];
    let views = vec![
        (
            "ok",
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1], &raw)?,
        ),
        (
            "counts",
            safetensors::tensor::TensorView::new(safetensors::Dtype::I32, vec![1], &raw)?,
        ),
    ];
    let bytes = safetensors::serialize(views, None)?;
    let r = ParamDict::from_safetensors_bytes(&bytes);
    assert!(
        matches!(&r, Err(ParamsError::UnsupportedDType { name, dtype }) if name == "counts" && dtype == "I32"),
        "{r:?}"
    );
    Ok(())
}

fn expect_file_error(path: &Path, what: &str) {
    let r = ParamDict::load(path);
    assert!(
        matches!(&r, Err(ParamsError::Safetensors { path: p, .. }) if p == path),
        "{what}: expected a Safetensors error naming the file, got {r:?}"
    );
    if let Err(e) = r {
        let msg = e.to_string();
        assert!(
            msg.contains(&path.display().to_string()),
            "{what}: message does not name the file: {msg}"
        );
    }
}

/// The bytes of [`sample`] saved as `dtype` (to `good.safetensors` in `dir`).
fn sample_bytes(dir: &Path, dtype: DType) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let good = dir.join("good.safetensors");
    sample(dtype)?.save(&good)?;
    Ok(std::fs::read(&good)?)
}

#[test]
fn truncated_files_are_typed_errors_naming_the_file() -> TestResult {
    let dir = tempfile::tempdir()?;
    let bytes = sample_bytes(dir.path(), DType::F16)?;
    let bad = dir.path().join("truncated.safetensors");
    // Every prefix: inside the length, inside the header, inside the data, one byte short.
    for cut in (0..bytes.len()).step_by(3).chain([bytes.len() - 1]) {
        std::fs::write(&bad, &bytes[..cut])?;
        expect_file_error(&bad, &format!("cut at {cut}"));
    }
    // Trailing garbage is rejected too.
    let mut longer = bytes.clone();
    longer.extend_from_slice(&[0, 0, 0, 0]);
    std::fs::write(&bad, &longer)?;
    expect_file_error(&bad, "trailing bytes");
    Ok(())
}

#[test]
fn corrupt_headers_are_typed_errors_naming_the_file() -> TestResult {
    let dir = tempfile::tempdir()?;
    let bytes = sample_bytes(dir.path(), DType::F32)?;
    let bad = dir.path().join("corrupt.safetensors");
    let n = u64::from_le_bytes(bytes[..8].try_into()?);

    let with_len = |len: u64| {
        let mut b = bytes.clone();
        b[..8].copy_from_slice(&len.to_le_bytes());
        b
    };
    for (what, b) in [
        ("huge header length", with_len(u64::MAX)),
        ("header length past the end", with_len(bytes.len() as u64)),
        ("header length too short", with_len(n - 3)),
        ("header length too long", with_len(n + 8)),
        ("zero header length", with_len(0)),
    ] {
        std::fs::write(&bad, &b)?;
        expect_file_error(&bad, what);
    }

    // Garbage bytes in the header (not JSON / not UTF-8).
    let mut b = bytes.clone();
    for x in &mut b[8..16] {
        *x = 0xff;
    }
    std::fs::write(&bad, &b)?;
    expect_file_error(&bad, "garbage header");

    // Wrong offsets: shift a data_offsets entry.
    let text = String::from_utf8(bytes[8..8 + usize::try_from(n)?].to_vec())?;
    let broken = text.replacen("\"data_offsets\":[0,", "\"data_offsets\":[4,", 1);
    assert_ne!(broken, text);
    let mut b = bytes[..8].to_vec();
    b.extend_from_slice(broken.as_bytes());
    b.extend_from_slice(&bytes[8 + usize::try_from(n)?..]);
    std::fs::write(&bad, &b)?;
    expect_file_error(&bad, "bad offsets");

    // Pure garbage and an empty file.
    let garbage: Vec<u8> = (0..1000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&bad, &garbage)?;
    expect_file_error(&bad, "garbage");
    std::fs::write(&bad, [])?;
    expect_file_error(&bad, "empty");
    Ok(())
}

#[test]
fn missing_file_is_an_io_error_naming_it() {
    let path = Path::new("/nonexistent/dir/model.safetensors");
    let r = ParamDict::load(path);
    assert!(
        matches!(&r, Err(ParamsError::Io { path: p, .. }) if p == path),
        "{r:?}"
    );
}

#[test]
fn failed_save_keeps_the_existing_file_and_leaves_no_temporaries() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("keep.safetensors");
    let d = sample(DType::F32)?;
    d.save(&path)?;
    let before = std::fs::read(&path)?;

    // 1e5 does not fit in f16: the save fails half-way through the data.
    let mut big = d.clone();
    big.insert("zz.big", Tensor::new(vec![2], vec![1.0, 1e5])?);
    let r = big.save_as(&path, DType::F16);
    assert!(
        matches!(&r, Err(ParamsError::DTypeOverflow { name, index: 1, dtype: DType::F16, .. }) if name == "zz.big"),
        "{r:?}"
    );
    assert_eq!(std::fs::read(&path)?, before);
    let entries: Vec<_> = std::fs::read_dir(dir.path())?.collect::<Result<_, _>>()?;
    assert_eq!(entries.len(), 1, "temporary file left behind: {entries:?}");

    // Saving into a directory that does not exist is an Io error naming the path.
    let missing = dir.path().join("no/such/dir/x.safetensors");
    let r = d.save(&missing);
    assert!(
        matches!(&r, Err(ParamsError::Io { path: p, .. }) if *p == missing),
        "{r:?}"
    );
    // A successful save replaces the file.
    let mut other = ParamDict::new();
    other.insert("only", Tensor::new(vec![1], vec![2.0])?);
    other.save(&path)?;
    assert_eq!(ParamDict::load(&path)?, other);
    Ok(())
}

#[test]
fn non_finite_values_round_trip_and_are_detected() -> TestResult {
    let mut d = ParamDict::new();
    d.insert("fine", Tensor::new(vec![2], vec![1.0, 2.0])?);
    d.insert(
        "bad",
        Tensor::new(vec![2, 2], vec![0.0, 1.0, f32::INFINITY, f32::NAN])?.with_dtype(DType::F16),
    );
    let bytes = d.to_safetensors_bytes(&SaveOptions::default())?;
    let (back, _) = ParamDict::from_safetensors_bytes(&bytes)?;
    let r = back.check_finite();
    assert!(
        matches!(&r, Err(ParamsError::NonFinite { name, index: 2, value }) if name == "bad" && *value == f32::INFINITY),
        "{r:?}"
    );
    Ok(())
}

#[cfg(unix)]
#[test]
fn saved_files_get_ordinary_permissions() -> TestResult {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir()?;
    let plain = dir.path().join("plain");
    std::fs::write(&plain, b"x")?;
    let saved = dir.path().join("saved.safetensors");
    sample(DType::F32)?.save(&saved)?;
    // Same mode as any newly created file (not the private mode of temporary files).
    assert_eq!(
        std::fs::metadata(&saved)?.permissions().mode() & 0o777,
        std::fs::metadata(&plain)?.permissions().mode() & 0o777
    );
    Ok(())
}

#[test]
fn empty_dict_round_trips_and_reserved_name_is_refused() -> TestResult {
    let empty = ParamDict::new();
    let bytes = empty.to_safetensors_bytes(&SaveOptions::default())?;
    let (back, meta) = ParamDict::from_safetensors_bytes(&bytes)?;
    assert!(back.is_empty());
    assert!(meta.is_none());

    let mut d = ParamDict::new();
    d.insert("__metadata__", Tensor::new(vec![1], vec![1.0])?);
    let r = d.to_safetensors_bytes(&SaveOptions::default());
    assert!(matches!(&r, Err(ParamsError::Safetensors { .. })), "{r:?}");
    Ok(())
}

#[test]
fn tensors_listed_out_of_data_order_load_correctly() -> TestResult {
    // A hand-written header whose listing order differs from the data order.
    let header = r#"{"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&1.5f32.to_le_bytes());
    bytes.extend_from_slice(&(-2.0f32).to_le_bytes());
    let (d, _) = ParamDict::from_safetensors_bytes(&bytes)?;
    assert_eq!(d.keys().collect::<Vec<_>>(), ["b", "a"]);
    assert_eq!(d.get("a")?.data(), &[1.5]);
    assert_eq!(d.get("b")?.data(), &[-2.0]);
    Ok(())
}
