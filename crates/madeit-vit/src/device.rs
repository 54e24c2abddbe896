//! Where towers run: the CPU (burn's flex backend) or, with the `wgpu` feature, a GPU
//! through burn's wgpu backend.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Device;
use crate::error::VitError;

/// The device a command or an evaluation runs its towers on (`--device cpu|wgpu`).
///
/// Merging itself (the SVDs and projections of every weight-space method) runs on the
/// CPU through faer whatever the choice; the device holds the towers that evaluate,
/// route and train (test-time methods).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// burn's flex CPU backend (the default; always built).
    #[default]
    Cpu,
    /// burn's wgpu backend (Vulkan, Metal or DX12). Needs a build with the `wgpu` feature
    /// and a usable adapter.
    Wgpu,
}

impl DeviceKind {
    /// Every kind, in the order `--help` lists them.
    pub const ALL: [Self; 2] = [Self::Cpu, Self::Wgpu];

    /// The name on the command line and in configuration files.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Wgpu => "wgpu",
        }
    }

    /// Whether this build of madeit contains the backend (the CPU always; wgpu with the
    /// `wgpu` feature). A built backend may still find no adapter at run time.
    #[must_use]
    pub const fn is_built(self) -> bool {
        match self {
            Self::Cpu => true,
            Self::Wgpu => cfg!(feature = "wgpu"),
        }
    }

    /// The burn device: `Device::flex()` for the CPU, `wgpu_device()` for wgpu.
    ///
    /// # Errors
    /// [`VitError::Backend`] when the backend is not built into this binary (the message
    /// names the cargo feature to rebuild with), or when wgpu finds no usable adapter.
    pub fn device(self) -> Result<Device, VitError> {
        match self {
            Self::Cpu => Ok(Device::flex()),
            Self::Wgpu => wgpu_or_error(),
        }
    }
}

#[cfg(feature = "wgpu")]
fn wgpu_or_error() -> Result<Device, VitError> {
    wgpu_device()
}

#[cfg(not(feature = "wgpu"))]
fn wgpu_or_error() -> Result<Device, VitError> {
    Err(VitError::Backend {
        message: "this build of madeit has no wgpu backend; rebuild it with the `wgpu` \
                  cargo feature (for the command-line tool: \
                  `cargo install --path crates/madeit-cli --features wgpu`)"
            .to_owned(),
    })
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DeviceKind {
    type Err = VitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| VitError::Backend {
                message: format!("unknown device `{s}`: expected `cpu` or `wgpu`"),
            })
    }
}

/// burn's wgpu device (Vulkan, Metal or DX12, whichever the platform offers), for
/// [`ClipVisionModel::load_dir_on`](crate::ClipVisionModel::load_dir_on) /
/// [`ClipVisionModel::to_device`](crate::ClipVisionModel::to_device). Needs the `wgpu`
/// feature.
///
/// The runtime is initialised on the first call (adapter selection, device and queue),
/// once per process; later calls return the same device or the same error. A machine
/// without a usable adapter gets [`VitError::Backend`] naming wgpu's reason, instead of
/// a panic at the first tensor.
///
/// # Errors
/// [`VitError::Backend`] when wgpu finds no adapter or cannot open a device on it.
#[cfg(feature = "wgpu")]
pub fn wgpu_device() -> Result<Device, VitError> {
    static DEVICE: std::sync::OnceLock<Result<Device, String>> = std::sync::OnceLock::new();
    DEVICE
        .get_or_init(|| Device::wgpu_options().init().map_err(|e| e.to_string()))
        .clone()
        .map_err(|message| VitError::Backend {
            message: format!("no usable wgpu device: {message}"),
        })
}

/// Whether [`wgpu_device`] finds a usable adapter on this machine (initialising the
/// runtime if it was not yet).
#[cfg(feature = "wgpu")]
#[must_use]
pub fn wgpu_available() -> bool {
    wgpu_device().is_ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for k in DeviceKind::ALL {
            assert_eq!(k.name().parse::<DeviceKind>().unwrap(), k);
            assert_eq!(k.to_string(), k.name());
        }
        assert_eq!(" CPU ".parse::<DeviceKind>().unwrap(), DeviceKind::Cpu);
        let err = "cuda".parse::<DeviceKind>().unwrap_err().to_string();
        assert!(err.contains("unknown device `cuda`"), "{err}");
        assert_eq!(DeviceKind::default(), DeviceKind::Cpu);
    }

    #[test]
    fn the_cpu_is_always_built_and_wgpu_only_with_its_feature() {
        assert!(DeviceKind::Cpu.is_built());
        assert!(DeviceKind::Cpu.device().is_ok());
        assert_eq!(DeviceKind::Wgpu.is_built(), cfg!(feature = "wgpu"));
        if !cfg!(feature = "wgpu") {
            let err = DeviceKind::Wgpu.device().unwrap_err().to_string();
            assert!(err.contains("`wgpu` cargo feature"), "{err}");
        }
    }

    #[test]
    fn serde_uses_the_command_line_names() {
        let json = serde_json::to_string(&DeviceKind::Wgpu).unwrap();
        assert_eq!(json, "\"wgpu\"");
        let back: DeviceKind = serde_json::from_str("\"cpu\"").unwrap();
        assert_eq!(back, DeviceKind::Cpu);
    }
}
