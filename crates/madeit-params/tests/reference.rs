//! Files written by PyTorch's safetensors writer load bit for bit (fixture made by
//! `tests/fixtures/gen_reference.py`).

use std::path::Path;

use madeit_params::{DType, ParamDict};
use serde::Deserialize;

#[derive(Deserialize)]
struct Reference {
    metadata: std::collections::BTreeMap<String, String>,
    tensors: std::collections::BTreeMap<String, Entry>,
}

#[derive(Deserialize)]
struct Entry {
    dtype: String,
    shape: Vec<usize>,
    bits: Vec<u32>,
}

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The storage bit pattern of an in-memory value.
fn storage_bits(x: f32, dtype: DType) -> u32 {
    match dtype {
        DType::F16 => u32::from(half::f16::from_f32(x).to_bits()),
        DType::BF16 => u32::from(half::bf16::from_f32(x).to_bits()),
        _ => x.to_bits(),
    }
}

#[test]
fn loads_pytorch_written_file_bit_for_bit() -> Result<(), Box<dyn std::error::Error>> {
    let reference: Reference =
        serde_json::from_str(&std::fs::read_to_string(fixture("reference.json"))?)?;
    let (dict, meta) = ParamDict::load_with_metadata(&fixture("reference.safetensors"))?;
    assert_eq!(meta.as_ref(), Some(&reference.metadata));
    assert_eq!(dict.len(), reference.tensors.len());
    for (name, want) in &reference.tensors {
        let t = dict.get(name)?;
        assert_eq!(t.dtype().name(), want.dtype, "{name}");
        assert_eq!(t.shape(), want.shape.as_slice(), "{name}");
        let got: Vec<u32> = t
            .data()
            .iter()
            .map(|&x| storage_bits(x, t.dtype()))
            .collect();
        assert_eq!(got, want.bits, "{name}");
    }
    // Saving what was loaded and loading it again changes nothing.
    let bytes = dict.to_safetensors_bytes(&madeit_params::SaveOptions {
        dtype: None,
        metadata: meta,
    })?;
    let (again, meta2) = ParamDict::from_safetensors_bytes(&bytes)?;
    assert_eq!(meta2.as_ref(), Some(&reference.metadata));
    assert_eq!(
        again.keys().collect::<Vec<_>>(),
        dict.keys().collect::<Vec<_>>()
    );
    for (name, t) in dict.iter() {
        let u = again.get(name)?;
        assert_eq!(u.dtype(), t.dtype());
        let a: Vec<u32> = t.data().iter().map(|x| x.to_bits()).collect();
        let b: Vec<u32> = u.data().iter().map(|x| x.to_bits()).collect();
        assert_eq!(a, b, "{name}");
    }
    Ok(())
}
