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
