//! The `--device` choices (cpu, cuda, metal) and opening one.

use candle_core::{Device, Result};

/// The `--device` choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceKind {
    #[default]
    Cpu,
    Cuda,
    Metal,
}

impl std::str::FromStr for DeviceKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" => Ok(DeviceKind::Cpu),
            "cuda" | "gpu" => Ok(DeviceKind::Cuda),
            "metal" => Ok(DeviceKind::Metal),
            other => Err(format!(
                "unknown device '{other}': expected cpu, cuda or metal"
            )),
        }
    }
}

impl TryFrom<String> for DeviceKind {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        s.parse()
    }
}

impl From<DeviceKind> for String {
    fn from(d: DeviceKind) -> String {
        d.to_string()
    }
}

impl std::fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Cuda => "cuda",
            DeviceKind::Metal => "metal",
        })
    }
}

/// Opens device 0 of the given kind. Without the matching cargo feature (`cuda`, `metal`) candle returns an
/// error saying so.
pub fn make_device(kind: DeviceKind) -> Result<Device> {
    let rebuild = |feature: &str, name: &str, needs: &str| {
        candle_core::Error::Msg(format!(
            "--device {feature}: this build has no {name} support; rebuild with the `{feature}` feature, e.g. \
             `cargo run --release -p xtask --features {feature} -- …` ({needs})"
        ))
    };
    match kind {
        DeviceKind::Cpu => Ok(Device::Cpu),
        DeviceKind::Cuda if !candle_core::utils::cuda_is_available() => Err(rebuild(
            "cuda",
            "CUDA",
            "needs the CUDA toolkit's nvcc at build time",
        )),
        DeviceKind::Metal if !candle_core::utils::metal_is_available() => {
            Err(rebuild("metal", "Metal", "macOS only"))
        }
        DeviceKind::Cuda => Device::new_cuda(0),
        DeviceKind::Metal => Device::new_metal(0),
    }
}
