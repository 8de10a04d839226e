//! Choosing the device and kernels a model command runs on.

use std::sync::Arc;

use clap::ValueEnum;
use kiln::ops::Ops;
use kiln::runtime::Device;

/// `--device`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DeviceChoice {
    Cpu,
    Cuda,
}

/// The kernels for `choice` (CUDA device 0), or why there are none.
pub fn ops(choice: DeviceChoice) -> Result<Arc<Ops>, String> {
    let device = match choice {
        DeviceChoice::Cpu => Device::cpu(),
        DeviceChoice::Cuda => Device::cuda(0).map_err(|e| format!("--device cuda: {e}"))?,
    };
    Ok(Arc::new(Ops::new(device)))
}

/// `--device cpu|cuda|cuda:N`; `None` picks the first GPU when there is one, else the CPU.
pub fn parse_device(spec: Option<&str>) -> Result<Arc<Ops>, String> {
    let device = match spec {
        None => Device::cuda(0).unwrap_or_else(|_| Device::cpu()),
        Some("cpu") => Device::cpu(),
        Some(s) => {
            let ordinal = match s.strip_prefix("cuda") {
                Some("") => 0,
                Some(rest) => rest
                    .strip_prefix(':')
                    .and_then(|n| n.parse::<usize>().ok())
                    .ok_or_else(|| format!("--device {s}: expected cpu, cuda or cuda:N"))?,
                None => return Err(format!("--device {s}: expected cpu, cuda or cuda:N")),
            };
            Device::cuda(ordinal).map_err(|e| format!("--device {s}: {e}"))?
        }
    };
    Ok(Arc::new(Ops::new(device)))
}
