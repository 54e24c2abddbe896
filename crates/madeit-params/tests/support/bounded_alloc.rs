//! The allocation bound of the fuzz tests on hostile input (safetensors, package readers,
//! `config.json`): a global allocator that fails (aborting the test) on any request past a
//! limit, and a proptest runner that keeps no failure files. A test binary includes this
//! file with `#[path]`; it then holds one test only, as nothing else may run beside it.

use std::alloc::System;

use cap::Cap;
use proptest::test_runner::{Config, TestRunner};

#[global_allocator]
static ALLOC: Cap<System> = Cap::new(System, usize::MAX);

/// Memory a read of a few kilobytes may take (64 MiB, far above what it needs).
pub const BOUND: usize = 64 << 20;

/// Runs `f` with allocations limited to [`BOUND`] above what is allocated now.
pub fn bounded<T>(f: impl FnOnce() -> T) -> T {
    let _ = ALLOC.set_limit(ALLOC.allocated().saturating_add(BOUND));
    let out = f();
    let _ = ALLOC.set_limit(usize::MAX);
    out
}

/// A proptest runner of `cases` cases that persists no failures.
pub fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}
