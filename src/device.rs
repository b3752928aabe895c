//! Device selection in one place: `cpu`, `cuda` or `cuda:N`, from a `--device` flag or, for
//! tests and benches, from the `BIASLENS_DEVICE` environment variable.
//!
//! A CUDA device is only available in builds with `--features cuda` (see docs/cuda.md); asking
//! for one otherwise is an error that says so, never a silent fallback to the CPU.

use crate::{Error, Result};
use candle_core::Device;

/// Environment variable read by [`test_device`].
pub const DEVICE_ENV: &str = "BIASLENS_DEVICE";

/// Parse `cpu`, `cuda` or `cuda:N` into a candle device (opening the CUDA context).
pub fn parse_device(spec: &str) -> Result<Device> {
    let ordinal = match spec.trim() {
        "cpu" => return Ok(Device::Cpu),
        "cuda" => 0,
        s => match s.strip_prefix("cuda:") {
            Some(n) => n.parse::<usize>().map_err(|_| {
                Error::param(
                    "device",
                    format!("`{spec}`: N in cuda:N must be a non-negative integer"),
                )
            })?,
            None => {
                return Err(Error::param(
                    "device",
                    format!("`{spec}`: expected cpu, cuda or cuda:N"),
                ))
            }
        },
    };
    if !cfg!(feature = "cuda") {
        return Err(Error::param(
            "device",
            format!("`{spec}`: this binary was built without CUDA; rebuild with `--features cuda` (docs/cuda.md)"),
        ));
    }
    Device::new_cuda(ordinal).map_err(|e| {
        Error::param(
            "device",
            format!("`{spec}`: cannot open CUDA device {ordinal}: {e}"),
        )
    })
}

/// The device tests and benches run on: `$BIASLENS_DEVICE` (default `cpu`).
///
/// Panics with the parse error when the variable is set to something unusable: a GPU check that
/// quietly ran on the CPU would report CPU numbers as GPU results.
pub fn test_device() -> Device {
    let spec = std::env::var(DEVICE_ENV).unwrap_or_else(|_| "cpu".to_string());
    match parse_device(&spec) {
        Ok(d) => d,
        Err(e) => panic!("{DEVICE_ENV}={spec}: {e}"),
    }
}

/// Short name of a device for tables and logs: `cpu`, `cuda:N`, `metal`.
pub fn device_name(d: &Device) -> String {
    match d.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_parses() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        assert_eq!(device_name(&parse_device(" cpu ").unwrap()), "cpu");
    }

    #[test]
    fn malformed_specs_name_the_parameter() {
        for bad in ["gpu", "cuda:", "cuda:-1", "cuda:x", "CUDA", ""] {
            let e = parse_device(bad).unwrap_err().to_string();
            assert!(e.contains("parameter `device`"), "{bad}: {e}");
        }
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_feature_is_an_error() {
        let e = parse_device("cuda:0").unwrap_err().to_string();
        assert!(e.contains("--features cuda"), "{e}");
    }
}
