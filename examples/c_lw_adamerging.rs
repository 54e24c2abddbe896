//! C. LW AdaMerging: at every step one coefficient per parameter tensor, initialised at 0.3
//! and clamped to [0, 1], is learned by entropy minimisation on a few unlabeled images of the
//! new task (the zoo's seed split). The reference discards earlier merges
//! (`accumulate = false`: every step is `theta0 + clamp(L) tau_t`); this example runs both
//! modes on the first three tasks of the seed-42 order.
//!
//! `cargo run --release -p madeit --example c_lw_adamerging -- [ZOO_DIR]`

mod common;

use madeit::adapt::AdaMergingConfig;
use madeit::eval::MethodSpec;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    common::describe("c_lw_adamerging")?;
    for accumulate in [false, true] {
        println!("accumulate = {accumulate}");
        let config = AdaMergingConfig {
            accumulate,
            ..AdaMergingConfig::default()
        };
        common::run_method(MethodSpec::AdaMerging(config), 3)?;
    }
    Ok(())
}
