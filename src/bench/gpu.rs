//! Shared pieces of the GPU benchmarks: random device data, rotation of input sets so that
//! repeated runs do not find their inputs in L2, and CUDA-event timing.

use half::bf16;
use kiln::compiler::{ConstValue, DType, Defines, Source};
use kiln::runtime::{Args, Buffer, Device, Kernel, KernelCache, KernelSpec};
use rayon::prelude::*;
use std::sync::Arc;

/// The H200's measured device-to-device copy rate (bytes read + written), in GB/s.
pub const COPY_CEILING_GBPS: f64 = 4172.0;

/// Bytes of inputs and outputs one measurement cycles through, at least: four times the
/// H200's 60 MB L2, so a run never finds the previous run's data there.
const ROTATION_BYTES: usize = 240 << 20;

/// Errors of the benchmarks are reported as text.
pub fn err(e: kiln::runtime::Error) -> String {
    e.to_string()
}

/// A deterministic pseudo-random value in [-scale, scale), never exactly zero.
fn value(i: usize, seed: u64, scale: f32) -> f32 {
    let mut h = (i as u64) ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    h = (h ^ (h >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    h = (h ^ (h >> 33)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    let unit = (h >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
    (unit * 2.0 - 1.0) * scale + 1e-4
}

/// `len` random bf16 values in [-scale, scale) on `dev`.
pub fn rand_bf16(dev: &Device, len: usize, seed: u64, scale: f32) -> Result<Buffer, String> {
    let host: Vec<bf16> = (0..len)
        .into_par_iter()
        .map(|i| bf16::from_f32(value(i, seed, scale)))
        .collect();
    dev.upload(&host).map_err(err)
}

/// `len` random f32 values in [-scale, scale) on `dev` (`positive` folds them to > 0).
pub fn rand_f32(
    dev: &Device,
    len: usize,
    seed: u64,
    scale: f32,
    positive: bool,
) -> Result<Buffer, String> {
    let host: Vec<f32> = (0..len)
        .into_par_iter()
        .map(|i| {
            let v = value(i, seed, scale);
            if positive {
                v.abs() + 1e-6
            } else {
                v
            }
        })
        .collect();
    dev.upload(&host).map_err(err)
}

/// How many copies of a working set of `bytes` make up a rotation larger than L2.
pub fn rotation(bytes: usize) -> usize {
    ROTATION_BYTES.div_ceil(bytes.max(1)).clamp(1, 64)
}

/// A kernel of `ops/kernels/` specialised by `defines`, with `num_warps` warps per program.
pub struct KernelChoice {
    pub file: &'static str,
    pub kernel: &'static str,
    pub defines: Vec<(&'static str, ConstValue)>,
    pub num_warps: u32,
    pub num_stages: u32,
}

impl KernelChoice {
    pub fn new(file: &'static str, kernel: &'static str, num_warps: u32) -> KernelChoice {
        KernelChoice {
            file,
            kernel,
            defines: vec![],
            num_warps,
            num_stages: 1,
        }
    }

    pub fn stages(mut self, num_stages: u32) -> KernelChoice {
        self.num_stages = num_stages;
        self
    }

    pub fn int(mut self, name: &'static str, value: i64) -> KernelChoice {
        self.defines.push((name, ConstValue::Int(value)));
        self
    }

    pub fn flag(mut self, name: &'static str, value: bool) -> KernelChoice {
        self.defines.push((name, ConstValue::Bool(value)));
        self
    }

    /// `BLOCK=1024 w4` (and `s3` when pipelined), for tables.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self
            .defines
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        parts.push(format!("w{}", self.num_warps));
        if self.num_stages > 1 {
            parts.push(format!("s{}", self.num_stages));
        }
        parts.join(" ")
    }

    /// Compiles (or finds) the kernel for `args` (its specialisation for them) on `dev`.
    pub fn load(
        &self,
        cache: &KernelCache,
        dev: &Device,
        args: &Args<'_>,
    ) -> Result<Arc<Kernel>, String> {
        let file = kiln::ops::kernels::file(self.file)
            .ok_or_else(|| format!("{} is not a shipped kernel file", self.file))?;
        let source = Source::new(file.name, file.source);
        let defines: Defines = self
            .defines
            .iter()
            .map(|(n, v)| (n.to_string(), *v))
            .collect();
        let spec = KernelSpec::new(&source, self.kernel)
            .with_defines(&defines)
            .with_num_warps(self.num_warps)
            .with_num_stages(self.num_stages);
        let specialization = args.specialization(&cache.params(&spec).map_err(err)?);
        cache.kernel(dev, &spec, &specialization).map_err(err)
    }
}

/// Times `run(i)` (which queues the `i`-th run's work) with a pair of CUDA events around each
/// run, synchronising in between as the peer scripts do. Returns the median in milliseconds.
pub fn median_ms(
    dev: &Device,
    runs: usize,
    mut run: impl FnMut(usize) -> Result<(), String>,
) -> Result<f64, String> {
    for i in 0..3 {
        run(i)?;
    }
    dev.synchronize().map_err(err)?;
    let mut times = Vec::with_capacity(runs);
    for i in 0..runs {
        let start = dev.record_event().map_err(err)?;
        run(i)?;
        let end = dev.record_event().map_err(err)?;
        times.push(start.elapsed_ms(&end).map_err(err)? as f64);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[runs / 2])
}

/// Allocates `len` elements of `dtype` on `dev`, filled with NaN-like poison.
pub fn output(dev: &Device, dtype: DType, len: usize) -> Result<Buffer, String> {
    let mut b = dev.alloc(dtype, len).map_err(err)?;
    b.poison().map_err(err)?;
    Ok(b)
}
