//! The published task orders: CPython's `random.seed(s); random.shuffle(ids)`, bit for bit.
//!
//! The continual-merging protocol processes the tasks of a benchmark in ten random orders,
//! produced in Python by
//!
//! ```python
//! random.seed(s)            # s = 42, 43, ..., 51
//! ids = list(range(1, n + 1))
//! random.shuffle(ids)
//! ```
//!
//! [`task_order`] reproduces that exactly. The pieces, as CPython implements them:
//!
//! - **Generator**: MT19937 (Matsumoto & Nishimura, 1998), [`Mt19937`].
//! - **Seeding** with an integer `s`: the 32-bit words of `|s|`, least significant first
//!   (one word `[0]` for `s = 0`), are passed to the reference `init_by_array`.
//! - **`getrandbits(k)`**: for `k ≤ 32`, `genrand_uint32() >> (32 − k)`; for larger `k`, words
//!   are drawn least significant first and only the last one is shifted.
//! - **`_randbelow(n)`**: with `k = n.bit_length()`, draw `r = getrandbits(k)` until `r < n`.
//! - **`shuffle(x)`**: Fisher–Yates from the end: for `i = len−1, ..., 1`, swap `x[i]` with
//!   `x[_randbelow(i + 1)]`.

/// The ten seeds of the published protocol, `42, 43, ..., 51`.
pub const PUBLISHED_SEEDS: [u64; 10] = [42, 43, 44, 45, 46, 47, 48, 49, 50, 51];

/// Number of 32-bit words of state.
const N: usize = 624;
/// Offset of the second word in the recurrence.
const M: usize = 397;
const MATRIX_A: u32 = 0x9908_b0df;
const UPPER_MASK: u32 = 0x8000_0000;
const LOWER_MASK: u32 = 0x7fff_ffff;

/// The 32-bit Mersenne Twister MT19937, with CPython's seeding and derived draws.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mt19937 {
    mt: [u32; N],
    /// Index of the next word to temper; `N` means the state must be regenerated.
    mti: usize,
}

impl Mt19937 {
    /// The reference `init_genrand(s)`:
    /// `mt[0] = s`, `mt[i] = 1812433253 · (mt[i−1] ⊕ (mt[i−1] ≫ 30)) + i  (mod 2³²)`.
    #[must_use]
    pub fn new(seed: u32) -> Self {
        let mut mt = [0u32; N];
        let mut prev = seed;
        for (i, slot) in mt.iter_mut().enumerate() {
            if i > 0 {
                prev = 1_812_433_253u32
                    .wrapping_mul(prev ^ (prev >> 30))
                    .wrapping_add(i as u32);
            }
            *slot = prev;
        }
        Self { mt, mti: N }
    }

    /// The reference `init_by_array(key)` (an empty key is treated as `[0]`, as CPython's
    /// seeding never passes an empty key).
    #[must_use]
    pub fn from_key(key: &[u32]) -> Self {
        let key: &[u32] = if key.is_empty() { &[0] } else { key };
        let mut g = Self::new(19_650_218);
        let mt = &mut g.mt;
        let (mut i, mut j) = (1usize, 0usize);
        for _ in 0..N.max(key.len()) {
            let prev = mt[i - 1];
            let k = key.get(j).copied().unwrap_or(0);
            mt[i] = (mt[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1_664_525))
                .wrapping_add(k)
                .wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= N {
                mt[0] = mt[N - 1];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
        }
        for _ in 0..N - 1 {
            let prev = mt[i - 1];
            mt[i] =
                (mt[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1_566_083_941)).wrapping_sub(i as u32);
            i += 1;
            if i >= N {
                mt[0] = mt[N - 1];
                i = 1;
            }
        }
        mt[0] = 0x8000_0000;
        g
    }

    /// CPython's `random.seed(seed)` for a non-negative integer: `init_by_array` of the 32-bit
    /// words of `seed`, least significant first (`[lo]` if `seed < 2³²`, else `[lo, hi]`).
    #[must_use]
    pub fn python_seeded(seed: u64) -> Self {
        let lo = seed as u32;
        let hi = (seed >> 32) as u32;
        if hi == 0 {
            Self::from_key(&[lo])
        } else {
            Self::from_key(&[lo, hi])
        }
    }

    /// Regenerates the 624 words of state (the reference "twist").
    fn twist(&mut self) {
        let mag = |y: u32| if y & 1 == 0 { 0 } else { MATRIX_A };
        let mt = &mut self.mt;
        for kk in 0..N {
            let y = (mt[kk] & UPPER_MASK) | (mt[(kk + 1) % N] & LOWER_MASK);
            mt[kk] = mt[(kk + M) % N] ^ (y >> 1) ^ mag(y);
        }
        self.mti = 0;
    }

    /// The next tempered 32-bit output (`genrand_uint32`, Python's `getrandbits(32)`).
    pub fn genrand_uint32(&mut self) -> u32 {
        if self.mti >= N {
            self.twist();
        }
        let mut y = self.mt[self.mti];
        self.mti += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }

    /// Python's `getrandbits(k)` for `k ≤ 64`: a uniform integer in `[0, 2^k)`. Returns `None`
    /// for `k > 64` (Python supports any `k`; nothing here needs more than 64 bits).
    pub fn getrandbits(&mut self, k: u32) -> Option<u64> {
        match k {
            0 => Some(0),
            1..=32 => Some(u64::from(self.genrand_uint32() >> (32 - k))),
            33..=64 => {
                let lo = u64::from(self.genrand_uint32());
                let hi = u64::from(self.genrand_uint32() >> (64 - k));
                Some(lo | (hi << 32))
            }
            _ => None,
        }
    }

    /// Python's `_randbelow(n)`: uniform in `[0, n)` by rejection on `getrandbits(k)`,
    /// `k = n.bit_length()`. Returns `None` for `n = 0` (an empty range).
    pub fn randbelow(&mut self, n: u64) -> Option<u64> {
        if n == 0 {
            return None;
        }
        let k = u64::BITS - n.leading_zeros();
        loop {
            let r = self.getrandbits(k)?;
            if r < n {
                return Some(r);
            }
        }
    }

    /// Python's `random()`: `(a · 2²⁶ + b) / 2⁵³` with `a = genrand ≫ 5`, `b = genrand ≫ 6`,
    /// a uniform double in `[0, 1)` with 53 random bits.
    pub fn random(&mut self) -> f64 {
        let a = f64::from(self.genrand_uint32() >> 5);
        let b = f64::from(self.genrand_uint32() >> 6);
        (a * 67_108_864.0 + b) * (1.0 / 9_007_199_254_740_992.0)
    }

    /// Python's `shuffle(x)`: for `i` from `len − 1` down to 1, swap `x[i]` and
    /// `x[_randbelow(i + 1)]`.
    pub fn shuffle<T>(&mut self, x: &mut [T]) {
        for i in (1..x.len()).rev() {
            // randbelow(i + 1) < i + 1 <= len, so the index is always valid.
            if let Some(j) = self.randbelow(i as u64 + 1) {
                x.swap(i, j as usize);
            }
        }
    }
}

/// The order in which the protocol visits `n_tasks` tasks for `seed`: the CPython shuffle of
/// the 1-based ids `[1, 2, ..., n_tasks]` after `random.seed(seed)`.
///
/// ```
/// use madeit_eval::orders::task_order;
/// assert_eq!(task_order(8, 42), vec![4, 5, 7, 8, 3, 6, 1, 2]);
/// ```
#[must_use]
pub fn task_order(n_tasks: usize, seed: u64) -> Vec<usize> {
    let mut ids: Vec<usize> = (1..=n_tasks).collect();
    Mt19937::python_seeded(seed).shuffle(&mut ids);
    ids
}

/// The ten published orders for `n_tasks` tasks, one per seed of [`PUBLISHED_SEEDS`].
#[must_use]
pub fn published_orders(n_tasks: usize) -> Vec<Vec<usize>> {
    PUBLISHED_SEEDS
        .iter()
        .map(|&s| task_order(n_tasks, s))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_init_genrand_output() {
        // Reference values from mt19937ar.c's test driver: init_by_array({0x123, 0x234,
        // 0x345, 0x456}) then genrand_int32() starts 1067595299 955945823 477289528.
        let mut g = Mt19937::from_key(&[0x123, 0x234, 0x345, 0x456]);
        let first: Vec<u32> = (0..3).map(|_| g.genrand_uint32()).collect();
        assert_eq!(first, [1_067_595_299, 955_945_823, 477_289_528]);
    }

    #[test]
    fn getrandbits_and_randbelow_edges() {
        let mut g = Mt19937::python_seeded(1);
        assert_eq!(g.getrandbits(0), Some(0));
        assert_eq!(g.getrandbits(65), None);
        assert_eq!(g.randbelow(0), None);
        assert_eq!(g.randbelow(1), Some(0));
        for n in 1..50u64 {
            assert!(g.randbelow(n).is_some_and(|r| r < n));
        }
        for _ in 0..100 {
            let x = g.random();
            assert!((0.0..1.0).contains(&x));
        }
    }

    #[test]
    fn degenerate_orders() {
        assert!(task_order(0, 42).is_empty());
        assert_eq!(task_order(1, 42), [1]);
    }
}
