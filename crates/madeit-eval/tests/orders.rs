//! Task orders and the Mersenne Twister against CPython (fixture `tests/fixtures/orders.json`,
//! made by `tests/fixtures/gen_orders.py`).

use madeit_eval::orders::{Mt19937, PUBLISHED_SEEDS, published_orders, task_order};
use serde::Deserialize;

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[derive(Deserialize)]
struct Fixture {
    orders: Vec<OrderRecord>,
    streams: Vec<Stream>,
}

#[derive(Deserialize)]
struct OrderRecord {
    n_tasks: usize,
    seed: u64,
    order: Vec<usize>,
}

#[derive(Deserialize)]
struct Stream {
    /// Decimal string (seeds up to 2^64 - 1 do not fit a JSON double).
    seed: String,
    getrandbits32: Vec<u32>,
    getrandbits_k: Vec<KBits>,
    /// `repr()` of Python floats, which round-trips exactly.
    random: Vec<String>,
}

#[derive(Deserialize)]
struct KBits {
    k: u32,
    value: String,
}

fn fixture() -> Result<Fixture, Box<dyn std::error::Error>> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/orders.json");
    Ok(serde_json::from_str(&std::fs::read_to_string(path)?)?)
}

#[test]
fn published_orders_of_the_papers() {
    // The orders printed in the protocol description (task ids 1-based).
    assert_eq!(task_order(8, 42), [4, 5, 7, 8, 3, 6, 1, 2]);
    assert_eq!(task_order(8, 43), [7, 8, 5, 4, 2, 6, 3, 1]);
    assert_eq!(
        task_order(14, 42),
        [9, 13, 8, 7, 14, 12, 6, 3, 10, 4, 5, 1, 2, 11]
    );
    assert_eq!(
        task_order(20, 42),
        [
            20, 6, 15, 5, 10, 14, 16, 19, 7, 13, 18, 11, 2, 12, 3, 17, 8, 9, 1, 4
        ]
    );
    assert_eq!(PUBLISHED_SEEDS, [42, 43, 44, 45, 46, 47, 48, 49, 50, 51]);
}

#[test]
fn every_order_matches_cpython() -> TestResult {
    let fx = fixture()?;
    // n in 2..=20 times ten seeds.
    assert_eq!(fx.orders.len(), 19 * 10);
    for rec in &fx.orders {
        assert_eq!(
            task_order(rec.n_tasks, rec.seed),
            rec.order,
            "n = {}, seed = {}",
            rec.n_tasks,
            rec.seed
        );
    }
    for n in 2..=20 {
        let mine = published_orders(n);
        let theirs: Vec<&Vec<usize>> = PUBLISHED_SEEDS
            .iter()
            .filter_map(|&s| {
                fx.orders
                    .iter()
                    .find(|r| r.n_tasks == n && r.seed == s)
                    .map(|r| &r.order)
            })
            .collect();
        assert_eq!(theirs.len(), 10);
        assert!(mine.iter().zip(theirs).all(|(a, b)| a == b), "n = {n}");
    }
    Ok(())
}

#[test]
fn orders_are_permutations() {
    for n in 0..=40 {
        for &s in &PUBLISHED_SEEDS {
            let mut o = task_order(n, s);
            o.sort_unstable();
            assert_eq!(o, (1..=n).collect::<Vec<_>>());
        }
    }
}

#[test]
fn raw_stream_matches_cpython_getrandbits32() -> TestResult {
    let fx = fixture()?;
    assert!(fx.streams.iter().any(|s| s.getrandbits32.len() > 2 * 624));
    for st in &fx.streams {
        let seed: u64 = st.seed.parse()?;
        let mut g = Mt19937::python_seeded(seed);
        let mine: Vec<u32> = (0..st.getrandbits32.len())
            .map(|_| g.genrand_uint32())
            .collect();
        assert_eq!(mine, st.getrandbits32, "seed {seed}");
    }
    Ok(())
}

#[test]
fn getrandbits_k_and_random_match_cpython() -> TestResult {
    let fx = fixture()?;
    for st in &fx.streams {
        let seed: u64 = st.seed.parse()?;
        let mut g = Mt19937::python_seeded(seed);
        for kb in &st.getrandbits_k {
            let want: u64 = kb.value.parse()?;
            assert_eq!(g.getrandbits(kb.k), Some(want), "seed {seed}, k = {}", kb.k);
        }
        let mut g = Mt19937::python_seeded(seed);
        for r in &st.random {
            let want: f64 = r.parse()?;
            assert_eq!(g.random().to_bits(), want.to_bits(), "seed {seed}");
        }
    }
    Ok(())
}
