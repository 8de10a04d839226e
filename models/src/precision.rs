//! [`Precision`]: the element type of a model's weights and activations, and moving host f32
//! tensors in and out of it.

use std::fmt;
use std::str::FromStr;

use half::{bf16, f16};
use kiln_compiler::DType;
use kiln_runtime::{Buffer, Device};

use crate::{Error, HostTensor, Result};

/// The compute precision of a model: weights and activations in this type, every reduction,
/// softmax, norm and accumulation in f32, parameter gradients in f32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// bf16 weights and activations (f32 accumulation): training and inference.
    #[default]
    Bf16,
    /// f32 throughout: the exact reference (tests, evaluation).
    F32,
}

impl Precision {
    /// The element type of weights and activations.
    pub fn dtype(self) -> DType {
        match self {
            Precision::Bf16 => DType::Bf16,
            Precision::F32 => DType::F32,
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::Bf16 => "bf16",
            Precision::F32 => "f32",
        })
    }
}

impl FromStr for Precision {
    type Err = Error;

    fn from_str(s: &str) -> Result<Precision> {
        match s {
            "bf16" => Ok(Precision::Bf16),
            "f32" => Ok(Precision::F32),
            _ => Err(Error::Invalid(format!(
                "unknown precision `{s}` (expected f32 or bf16)"
            ))),
        }
    }
}

/// `tensor` on `device` as `dtype` (bf16 and f16 rounded to nearest even).
pub fn upload(device: &Device, tensor: &HostTensor, dtype: DType) -> Result<Buffer> {
    let mut buffer = device.alloc_uninit(dtype, tensor.data.len())?;
    write(&mut buffer, &tensor.data)?;
    Ok(buffer)
}

/// Overwrites `buffer` in place with `data` (as many values as it holds) in its own element
/// type, rounded as [`upload`] rounds.
pub fn write(buffer: &mut Buffer, data: &[f32]) -> Result<()> {
    match buffer.dtype() {
        DType::F32 => buffer.write(data)?,
        DType::Bf16 => {
            buffer.write(&data.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>())?
        }
        DType::F16 => buffer.write(&data.iter().map(|&x| f16::from_f32(x)).collect::<Vec<_>>())?,
        other => {
            return Err(Error::Invalid(format!(
                "cannot hold model weights as {other}"
            )))
        }
    }
    Ok(())
}

/// A floating-point buffer's contents as f32 (exact: every bf16 and f16 is an f32).
pub fn download(buffer: &Buffer) -> Result<Vec<f32>> {
    Ok(match buffer.dtype() {
        DType::F32 => buffer.download::<f32>()?,
        DType::Bf16 => buffer
            .download::<bf16>()?
            .into_iter()
            .map(f32::from)
            .collect(),
        DType::F16 => buffer
            .download::<f16>()?
            .into_iter()
            .map(f32::from)
            .collect(),
        other => {
            return Err(Error::Invalid(format!(
                "a {other} buffer is not floating point"
            )))
        }
    })
}
