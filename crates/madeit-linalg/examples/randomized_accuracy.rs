//! Accuracy of the randomized truncated SVD against the exact one, on decaying, flat and
//! low-rank-plus-noise spectra (f64 and f32). Prints, per case, the worst over seeds of:
//! - `sv`: `max_i |s_i(rand) - s_i(exact)| / s_1`,
//! - `1-aff U`, `1-aff V`: `1 - ||U_rand^T U_exact||_F^2 / r` (0 when the subspaces agree),
//! - `frob`: `||A - A_r(rand)||_F / ||A - A_r(exact)||_F - 1` (0 when optimal).
//!
//! `cargo run --release -p madeit-linalg --example randomized_accuracy`

use madeit_linalg::faer::{Mat, MatRef};
use madeit_linalg::{Real, TruncatedSvd, random, truncated_svd};

fn affinity_gap<T: Real>(a: MatRef<'_, T>, b: MatRef<'_, T>) -> f64 {
    let m = a.transpose() * b;
    1.0 - m.squared_norm_l2().to_f64() / a.ncols() as f64
}

fn metrics<T: Real>(a: &Mat<T>, r: usize, method: TruncatedSvd) -> [f64; 4] {
    let exact = truncated_svd(a.as_ref(), r, TruncatedSvd::Exact).expect("exact");
    let rand = truncated_svd(a.as_ref(), r, method).expect("randomized");
    let s1 = exact.s[0].to_f64();
    let sv = exact
        .s
        .iter()
        .zip(&rand.s)
        .map(|(x, y)| (x.to_f64() - y.to_f64()).abs() / s1)
        .fold(0.0, f64::max);
    let err_exact = (a - exact.reconstruct()).norm_l2().to_f64();
    let err_rand = (a - rand.reconstruct()).norm_l2().to_f64();
    [
        sv,
        affinity_gap(rand.u.as_ref(), exact.u.as_ref()),
        affinity_gap(rand.v.as_ref(), exact.v.as_ref()),
        err_rand / err_exact - 1.0,
    ]
}

fn report<T: Real>(
    name: &str,
    m: usize,
    n: usize,
    r: usize,
    spectrum: &dyn Fn(u64) -> Mat<T>,
    method: TruncatedSvd,
) {
    let mut worst = [0.0f64; 4];
    for seed in 0..8 {
        let a = spectrum(seed);
        let got = metrics(&a, r, method);
        for (w, g) in worst.iter_mut().zip(got) {
            *w = w.max(g);
        }
    }
    println!(
        "| {name} | {} | {m}x{n} | {r} | {:.1e} | {:.1e} | {:.1e} | {:.2e} |",
        T::NAME,
        worst[0],
        worst[1],
        worst[2],
        worst[3]
    );
}

fn run<T: Real>(method: TruncatedSvd) {
    for (m, n, r) in [(300, 200, 20), (200, 300, 20), (768, 768, 77)] {
        let k = m.min(n);
        let tau = r as f64 / 1000f64.ln();
        let decay: Vec<f64> = (0..k).map(|i| (-(i as f64) / tau).exp()).collect();
        let slow: Vec<f64> = (0..k)
            .map(|i| (-(i as f64) / (2.0 * r as f64)).exp())
            .collect();
        let flat: Vec<f64> = (0..k)
            .map(|i| 1.0 - 0.5 * i as f64 / (k - 1) as f64)
            .collect();
        report::<T>(
            "decaying s_r/s_1=1e-3",
            m,
            n,
            r,
            &|s| random::with_spectrum(m, n, &decay, s).expect("ok"),
            method,
        );
        report::<T>(
            "slow exp(-i/2r)",
            m,
            n,
            r,
            &|s| random::with_spectrum(m, n, &slow, s).expect("ok"),
            method,
        );
        report::<T>(
            "flat 1..0.5",
            m,
            n,
            r,
            &|s| random::with_spectrum(m, n, &flat, s).expect("ok"),
            method,
        );
        report::<T>(
            "low rank + noise",
            m,
            n,
            r,
            &|s| low_rank_plus_noise(m, n, r, 0.1, s),
            method,
        );
    }
}

/// Rank-`r` signal with singular values 10..5 plus Gaussian noise of spectral norm about
/// `noise * 10`.
fn low_rank_plus_noise<T: Real>(m: usize, n: usize, r: usize, noise: f64, seed: u64) -> Mat<T> {
    let signal: Vec<f64> = (0..r)
        .map(|i| 10.0 - 5.0 * i as f64 / (r.max(2) - 1) as f64)
        .collect();
    let l = random::with_spectrum::<T>(m, n, &signal, seed).expect("ok");
    let g = random::gaussian::<T>(m, n, seed ^ 0xabcd);
    let scale = T::from_f64(noise * 10.0 / ((m as f64).sqrt() + (n as f64).sqrt()));
    &l + &g * madeit_linalg::faer::Scale(scale)
}

fn main() {
    for (p, q) in [(10, 2), (10, 1), (10, 0), (5, 2)] {
        let method = TruncatedSvd::Randomized {
            oversample: p,
            power_iters: q,
            seed: 17,
        };
        println!("\noversample {p}, power_iters {q}");
        println!("| spectrum | T | shape | r | sv | 1-aff U | 1-aff V | frob |");
        println!("|---|---|---|---|---|---|---|---|");
        run::<f64>(method);
        run::<f32>(method);
    }
}
