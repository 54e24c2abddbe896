//! The extension module is built with the workspace (`cargo test --workspace` builds this
//! package's cdylib before this test) and exports CPython's entry point for `madeit._madeit`.
//! `.ci/run` then runs the Python tests against exactly this library.

use std::path::PathBuf;

/// The cdylib next to this test executable (`target/<profile>/deps/`) or one folder up.
fn library() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let deps = exe.parent()?;
    let name = format!(
        "{}_madeit{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    [deps.join(&name), deps.parent()?.join(&name)]
        .into_iter()
        .find(|p| p.is_file())
}

#[test]
fn the_extension_exports_its_init_function() -> Result<(), Box<dyn std::error::Error>> {
    let path = library().ok_or("the madeit-py cdylib was not built next to the tests")?;
    let bytes = std::fs::read(&path)?;
    let symbol = b"PyInit__madeit";
    assert!(
        bytes.windows(symbol.len()).any(|w| w == symbol),
        "{} does not export PyInit__madeit",
        path.display()
    );
    Ok(())
}
