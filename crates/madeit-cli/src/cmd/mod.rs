//! Subcommands.

pub mod analyze;
pub mod benchmark;
pub mod embed;
pub mod heads;
pub mod inspect;
pub mod merge;
pub mod methods;
pub mod orders;
pub mod plots;
pub mod run;
pub mod zoo;

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar of `len` steps drawn with `template` (the default style if the template does
/// not parse), ticking steadily; a hidden one with `quiet`.
pub(crate) fn progress_bar(quiet: bool, len: u64, template: &str) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}
