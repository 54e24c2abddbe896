//! Fingerprints of named tensors: how a stream recognises its pretrained model and each
//! task's checkpoint, and the one pass that hashes a task's two models and measures `‖τ‖`.

use std::fmt;

use madeit_params::{DType, ParamDict, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A 128-bit fingerprint of a set of named tensors: their names, shapes, storage dtypes and
/// the exact bits of every value (independent of the order of the tensors).
///
/// It is a fast non-cryptographic hash (two independent 64-bit multiply–xorshift lanes over
/// the raw bits, finalised with the SplitMix64 mixer), meant to catch accidents — the same
/// fine-tuned model fed twice, a different pretrained model passed mid-stream — not
/// adversaries. Written as 32 hexadecimal digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(u128);

impl Fingerprint {
    /// The fingerprint of every tensor of `params`.
    #[must_use]
    pub fn of_params(params: &ParamDict) -> Self {
        let mut per_tensor: Vec<(&str, u128)> = params
            .iter()
            .collect::<Vec<_>>()
            .par_iter()
            .map(|&(name, t)| (name, tensor_hash(name, t)))
            .collect();
        per_tensor.sort_unstable_by(|a, b| a.0.cmp(b.0));
        Self::combine(per_tensor.iter().map(|&(_, h)| h))
    }

    /// Folds per-tensor hashes (in a fixed order) into one fingerprint.
    pub fn combine(hashes: impl Iterator<Item = u128>) -> Self {
        let (mut a, mut b) = (SEED_A, SEED_B);
        let mut n = 0u64;
        for h in hashes {
            a = splitmix(a ^ (h as u64));
            b = splitmix(b ^ ((h >> 64) as u64));
            n += 1;
        }
        a = splitmix(a ^ n);
        b = splitmix(b ^ n.rotate_left(32));
        Self((u128::from(b) << 64) | u128::from(a))
    }

    /// The raw 128-bit value.
    #[must_use]
    pub fn value(self) -> u128 {
        self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl Serialize for Fingerprint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Fingerprint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.len() != 32 {
            return Err(serde::de::Error::custom(format!(
                "a fingerprint has 32 hexadecimal digits, got `{s}`"
            )));
        }
        u128::from_str_radix(&s, 16)
            .map(Self)
            .map_err(|_| serde::de::Error::custom(format!("invalid fingerprint `{s}`")))
    }
}

const SEED_A: u64 = 0x243f_6a88_85a3_08d3;
const SEED_B: u64 = 0x1319_8a2e_0370_7344;
const MUL_A: u64 = 0x9e37_79b9_7f4a_7c15;
const MUL_B: u64 = 0xc2b2_ae3d_27d4_eb4f;

// SplitMix64 finaliser: a bijective avalanche mix of 64 bits.
use madeit_linalg::random::mix64 as splitmix;

/// A streaming 128-bit hash: four independent lanes of two 64-bit multiply–rotate states
/// (so the multiplications pipeline), folded with SplitMix64 at the end.
struct Hasher {
    a: [u64; LANES],
    b: [u64; LANES],
    pending: [u64; LANES],
    filled: usize,
    words: u64,
}

const LANES: usize = 4;

impl Hasher {
    fn new() -> Self {
        let mut a = [SEED_A; LANES];
        let mut b = [SEED_B; LANES];
        for (i, (x, y)) in a.iter_mut().zip(b.iter_mut()).enumerate() {
            *x ^= i as u64;
            *y = y.wrapping_add(i as u64);
        }
        Self {
            a,
            b,
            pending: [0; LANES],
            filled: 0,
            words: 0,
        }
    }

    #[inline(always)]
    fn block(&mut self, w: [u64; LANES]) {
        for ((a, b), w) in self.a.iter_mut().zip(self.b.iter_mut()).zip(w) {
            *a = (*a ^ w).wrapping_mul(MUL_A).rotate_left(29);
            *b = (b.wrapping_add(w) ^ (*b >> 31)).wrapping_mul(MUL_B);
        }
    }

    /// Feeds one 64-bit word.
    #[inline]
    fn word(&mut self, w: u64) {
        self.pending[self.filled] = w;
        self.filled += 1;
        self.words += 1;
        if self.filled == LANES {
            self.block(self.pending);
            self.filled = 0;
        }
    }

    /// Feeds the bits of a slice of `f32`s, two values per word (the word sequence does not
    /// depend on how a tensor is split into calls, as long as each call but the last gets
    /// an even number of values).
    fn floats(&mut self, data: &[f32]) {
        let pair = |p: &[f32]| -> u64 {
            p.iter().enumerate().fold(0u64, |acc, (i, x)| {
                acc | (u64::from(x.to_bits()) << (32 * i))
            })
        };
        // Align to a block boundary word by word.
        let mut start = 0;
        while self.filled != 0 {
            match data.get(start..start + 2) {
                Some(p) => self.word(pair(p)),
                None => break,
            }
            start += 2;
        }
        let rest = data.get(start..).unwrap_or_default();
        let mut blocks = rest.chunks_exact(2 * LANES);
        for c in &mut blocks {
            let mut w = [0u64; LANES];
            for (slot, p) in w.iter_mut().zip(c.chunks_exact(2)) {
                *slot = pair(p);
            }
            self.block(w);
            self.words += LANES as u64;
        }
        let mut tail = blocks.remainder().chunks_exact(2);
        for p in &mut tail {
            self.word(pair(p));
        }
        for x in tail.remainder() {
            self.word(u64::from(x.to_bits()));
        }
    }

    fn finish(mut self) -> u128 {
        let words = self.words;
        while self.filled != 0 {
            self.word(0);
        }
        let (mut a, mut b) = (words, !words);
        for i in 0..LANES {
            a = splitmix(a ^ self.a[i]);
            b = splitmix(b ^ self.b[i]);
        }
        (u128::from(b) << 64) | u128::from(a)
    }
}

/// Hashes the header of a named tensor (name, shape, dtype).
fn header_hasher(name: &str, t: &Tensor) -> Hasher {
    let mut h = Hasher::new();
    for chunk in name.as_bytes().chunks(8) {
        let mut w = [0u8; 8];
        w[..chunk.len()].copy_from_slice(chunk);
        h.word(u64::from_le_bytes(w));
    }
    h.word(name.len() as u64);
    for &d in t.shape() {
        h.word(d as u64);
    }
    h.word(t.shape().len() as u64);
    h.word(match t.dtype() {
        DType::F32 => 1,
        DType::F16 => 2,
        DType::BF16 => 3,
        _ => 4,
    });
    h
}

/// Hashes one named tensor (name, shape, dtype, value bits) to 128 bits.
pub fn tensor_hash(name: &str, t: &Tensor) -> u128 {
    let mut h = header_hasher(name, t);
    h.floats(t.data());
    h.word(t.numel() as u64);
    h.finish()
}

/// One pass over a pretrained tensor `p` and the matching fine-tuned tensor `f`: both
/// hashes (as [`tensor_hash`]), `Σ (f − p)²` in `f64`, and whether each is finite
/// (`(hash_p, hash_f, squared_distance, p_finite, f_finite)`).
#[must_use]
pub fn scan_pair(name: &str, p: &Tensor, f: &Tensor) -> (u128, u128, f64, bool, bool) {
    const CHUNK: usize = 4096;
    let (mut hp, mut hf) = (header_hasher(name, p), header_hasher(name, f));
    let (mut sq, mut p_ok, mut f_ok) = (0.0f64, true, true);
    for (pc, fc) in p.data().chunks(CHUNK).zip(f.data().chunks(CHUNK)) {
        hp.floats(pc);
        hf.floats(fc);
        sq += squared_distance(pc, fc);
        p_ok &= madeit_params::all_finite(pc);
        f_ok &= madeit_params::all_finite(fc);
    }
    hp.word(p.numel() as u64);
    hf.word(f.numel() as u64);
    (hp.finish(), hf.finish(), sq, p_ok, f_ok)
}

/// `Σ (f − p)²` in `f64`, in eight interleaved partial sums (a single running sum is one
/// long chain of dependent additions; eight vectorise and round no worse).
fn squared_distance(p: &[f32], f: &[f32]) -> f64 {
    let (pb, pt) = p.as_chunks::<8>();
    let (fb, ft) = f.as_chunks::<8>();
    let mut lanes = [0.0f64; 8];
    for (a, b) in pb.iter().zip(fb) {
        for ((l, &x), &y) in lanes.iter_mut().zip(a).zip(b) {
            let d = f64::from(y) - f64::from(x);
            *l += d * d;
        }
    }
    let tail: f64 = pt
        .iter()
        .zip(ft)
        .map(|(&x, &y)| (f64::from(y) - f64::from(x)).powi(2))
        .sum();
    lanes.iter().sum::<f64>() + tail
}

/// Serialises an `f64` exactly, as the 16 hexadecimal digits of its bits (`"0x3ff0..."`),
/// so that a saved stream resumes bit-identically whatever JSON reader is used.
pub mod exact_f64 {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `0x` followed by the 16 hex digits of `x.to_bits()`.
    ///
    /// # Errors
    /// Those of the serializer.
    #[allow(clippy::trivially_copy_pass_by_ref)]
    pub fn serialize<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{:#018x}", x.to_bits()))
    }

    /// Reads what [`serialize`] wrote.
    ///
    /// # Errors
    /// A custom error for anything but `0x` and 16 hex digits.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        let s = String::deserialize(d)?;
        s.strip_prefix("0x")
            .filter(|h| h.len() == 16)
            .and_then(|h| u64::from_str_radix(h, 16).ok())
            .map(f64::from_bits)
            .ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "expected an exact f64 as `0x` and 16 hex digits, got `{s}`"
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn tensor(n: usize, offset: f32) -> Tensor {
        Tensor::new(vec![n], (0..n).map(|i| i as f32 * 0.37 + offset).collect()).unwrap()
    }

    #[test]
    fn the_fused_scan_hashes_like_the_plain_hash() {
        for n in [0, 1, 2, 3, 7, 8, 9, 4095, 4096, 4097, 10_001] {
            let (p, f) = (tensor(n, 0.0), tensor(n, 1.0));
            for name in ["", "w", "a.long.enough.name.to.span.words"] {
                let (hp, hf, sq, p_ok, f_ok) = scan_pair(name, &p, &f);
                assert_eq!(hp, tensor_hash(name, &p), "n = {n}, name = {name:?}");
                assert_eq!(hf, tensor_hash(name, &f), "n = {n}, name = {name:?}");
                let want: f64 = p
                    .data()
                    .iter()
                    .zip(f.data())
                    .map(|(&a, &b)| (f64::from(b) - f64::from(a)).powi(2))
                    .sum();
                assert!((sq - want).abs() <= 1e-12 * want.max(1.0));
                assert!(p_ok && f_ok);
                if n > 0 {
                    assert_ne!(hp, hf);
                }
            }
        }
    }

    #[test]
    fn hashes_see_names_shapes_and_dtypes() {
        let t = tensor(6, 0.5);
        let h = tensor_hash("w", &t);
        assert_ne!(h, tensor_hash("v", &t));
        assert_ne!(h, tensor_hash("w", &t.clone().reshape(vec![2, 3]).unwrap()));
        assert_ne!(h, tensor_hash("w", &t.clone().with_dtype(DType::F16)));
        let f = Fingerprint(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        let json = serde_json::to_string(&f).unwrap();
        assert_eq!(json, "\"0123456789abcdef0011223344556677\"");
        assert_eq!(serde_json::from_str::<Fingerprint>(&json).unwrap(), f);
    }
}
