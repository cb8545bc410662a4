//! `--device auto|cpu|cuda|cuda:N`: parsed once, resolved against what libtorch sees.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tch::Device;

/// The device a run asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceSpec {
    /// The first CUDA GPU when libtorch sees one, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// CUDA GPU with this ordinal (`cuda` is `cuda:0`).
    Cuda(usize),
}

/// A device that was asked for but cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeviceError {
    /// Not one of the accepted spellings.
    #[error("invalid device {0:?}: expected auto, cpu, cuda or cuda:N")]
    Parse(String),
    /// CUDA requested but libtorch sees no GPU (or fewer than asked for).
    #[error(
        "device cuda:{index} requested but libtorch sees {available} CUDA device(s); use --device cpu or auto"
    )]
    Unavailable {
        /// The ordinal asked for.
        index: usize,
        /// How many CUDA devices libtorch reports.
        available: usize,
    },
}

impl FromStr for DeviceSpec {
    type Err = DeviceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| DeviceError::Parse(s.to_string())),
        }
    }
}

impl TryFrom<String> for DeviceSpec {
    type Error = DeviceError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<DeviceSpec> for String {
    fn from(d: DeviceSpec) -> String {
        d.to_string()
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl DeviceSpec {
    /// Resolve against the number of CUDA devices libtorch reports (pure, for tests).
    pub fn resolve_with(self, cuda_devices: usize) -> Result<Device, DeviceError> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Auto if cuda_devices > 0 => Ok(Device::Cuda(0)),
            Self::Auto => Ok(Device::Cpu),
            Self::Cuda(index) if index < cuda_devices => Ok(Device::Cuda(index)),
            Self::Cuda(index) => Err(DeviceError::Unavailable {
                index,
                available: cuda_devices,
            }),
        }
    }

    /// Resolve against this machine, and set the CUDA-only flags when a GPU is chosen
    /// (cuDNN autotuning: the fastest convolution algorithms for fixed shapes).
    pub fn resolve(self) -> Result<Device, DeviceError> {
        let device = self.resolve_with(tch::Cuda::device_count().max(0) as usize)?;
        configure_backend(device);
        Ok(device)
    }
}

/// Backend switches that only matter on CUDA; compiled everywhere, applied only on a GPU.
pub fn configure_backend(device: Device) {
    if device.is_cuda() {
        tch::Cuda::cudnn_set_benchmark(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_spelling_and_rejects_others() {
        assert_eq!("auto".parse(), Ok(DeviceSpec::Auto));
        assert_eq!("cpu".parse(), Ok(DeviceSpec::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceSpec::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceSpec::Cuda(3)));
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1", "CPU", ""] {
            assert_eq!(
                bad.parse::<DeviceSpec>(),
                Err(DeviceError::Parse(bad.to_string())),
                "{bad}"
            );
        }
        assert_eq!(DeviceSpec::Cuda(2).to_string(), "cuda:2");
    }

    #[test]
    fn auto_prefers_cuda_and_missing_gpus_are_errors() {
        assert_eq!(DeviceSpec::Auto.resolve_with(0), Ok(Device::Cpu));
        assert_eq!(DeviceSpec::Auto.resolve_with(2), Ok(Device::Cuda(0)));
        assert_eq!(DeviceSpec::Cuda(1).resolve_with(2), Ok(Device::Cuda(1)));
        assert_eq!(
            DeviceSpec::Cuda(0).resolve_with(0),
            Err(DeviceError::Unavailable {
                index: 0,
                available: 0
            })
        );
        assert_eq!(DeviceSpec::Cpu.resolve_with(4), Ok(Device::Cpu));
    }

    #[test]
    fn resolves_on_this_machine() {
        // Whatever this machine has, `auto` resolves and `cpu` is always available.
        assert!(DeviceSpec::Auto.resolve().is_ok());
        assert_eq!(DeviceSpec::Cpu.resolve(), Ok(Device::Cpu));
    }

    #[test]
    fn round_trips_through_serde() {
        let d: DeviceSpec = serde_json::from_str("\"cuda:1\"").unwrap();
        assert_eq!(d, DeviceSpec::Cuda(1));
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"cuda:1\"");
        assert!(serde_json::from_str::<DeviceSpec>("\"tpu\"").is_err());
    }
}
