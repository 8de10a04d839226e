//! A small harness: buffers from f64 data, launches of shipped kernels through the kernel cache,
//! and tolerance checks with a useful failure message.

use half::{bf16, f16};
use kiln_compiler::ast::{Item, TypeExprKind};
use kiln_compiler::{ConstValue, DType, Defines, Source};
use kiln_ops::Ops;
use kiln_runtime::{Args, Buffer, Device, KernelCache, KernelSpec};
use std::cell::Cell;
use std::sync::Arc;

/// Runs `f` on the CPU, then on CUDA device 0 if there is one (saying so when there is not).
pub fn for_each_device(f: impl Fn(&Harness)) {
    f(&Harness::new(Device::cpu()));
    match Device::cuda(0) {
        Ok(gpu) => f(&Harness::new(gpu)),
        Err(e) => println!("skipped on GPU: {e}"),
    }
}

/// A harness on the CPU only, for tests of argument checking.
pub fn cpu() -> Harness {
    Harness::new(Device::cpu())
}

/// Absolute plus relative tolerance: |got - want| <= abs + rel * |want|.
#[derive(Clone, Copy, Debug)]
pub struct Tol {
    pub rel: f64,
    pub abs: f64,
}

pub struct Harness {
    pub device: Device,
    /// The typed operations on this device (their own kernel cache).
    pub ops: Ops,
    cache: KernelCache,
    seed: Cell<u64>,
}

impl Harness {
    fn new(device: Device) -> Harness {
        Harness {
            ops: Ops::with_cache(device.clone(), Arc::new(KernelCache::in_memory())),
            device,
            cache: KernelCache::in_memory(),
            seed: Cell::new(0x9E37_79B9_7F4A_7C15),
        }
    }

    /// Uniform in (-scale, scale), never exactly zero (xorshift64*).
    fn uniform(&self, scale: f64) -> f64 {
        let mut x = self.seed.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.seed.set(x);
        let u = (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64;
        let v = (2.0 * u - 1.0) * scale;
        if v == 0.0 {
            scale * 0.5
        } else {
            v
        }
    }

    /// Random values already rounded to bf16.
    pub fn rand_bf16(&self, n: usize, scale: f64) -> Vec<f64> {
        (0..n)
            .map(|_| bf16::from_f64(self.uniform(scale)).to_f64())
            .collect()
    }

    /// Random values already rounded to f16.
    pub fn rand_f16(&self, n: usize, scale: f64) -> Vec<f64> {
        (0..n)
            .map(|_| f16::from_f64(self.uniform(scale)).to_f64())
            .collect()
    }

    /// Random values already rounded to f32.
    pub fn rand_f32(&self, n: usize, scale: f64) -> Vec<f64> {
        (0..n).map(|_| self.uniform(scale) as f32 as f64).collect()
    }

    /// Random values already rounded to `dtype` (bf16, f16 or f32).
    pub fn rand(&self, dtype: DType, n: usize, scale: f64) -> Vec<f64> {
        match dtype {
            DType::Bf16 => self.rand_bf16(n, scale),
            DType::F16 => self.rand_f16(n, scale),
            DType::F32 => self.rand_f32(n, scale),
            d => panic!("no random {d} values"),
        }
    }

    /// A buffer of `dtype` (bf16, f16 or f32) holding `v`.
    pub fn buf(&self, dtype: DType, v: &[f64]) -> Buffer {
        match dtype {
            DType::Bf16 => self.bf16(v),
            DType::F16 => self.f16(v),
            DType::F32 => self.f32_buf(v),
            d => panic!("no {d} buffers from f64"),
        }
    }

    pub fn rand_labels(&self, n: usize, vocab: usize) -> Vec<i32> {
        (0..n)
            .map(|_| ((self.uniform(0.5) + 0.5) * vocab as f64) as i32 % vocab as i32)
            .collect()
    }

    pub fn bf16(&self, v: &[f64]) -> Buffer {
        let data: Vec<bf16> = v.iter().map(|&x| bf16::from_f64(x)).collect();
        self.device.upload(&data).unwrap()
    }

    pub fn f16(&self, v: &[f64]) -> Buffer {
        let data: Vec<f16> = v.iter().map(|&x| f16::from_f64(x)).collect();
        self.device.upload(&data).unwrap()
    }

    pub fn f32_buf(&self, v: &[f64]) -> Buffer {
        let data: Vec<f32> = v.iter().map(|&x| x as f32).collect();
        self.device.upload(&data).unwrap()
    }

    pub fn i32_buf(&self, v: &[i32]) -> Buffer {
        self.device.upload(v).unwrap()
    }

    /// A buffer whose every element is NaN until written.
    pub fn poisoned(&self, dtype: DType, n: usize) -> Buffer {
        let mut b = self.device.alloc(dtype, n).unwrap();
        b.poison().unwrap();
        b
    }

    /// A bf16 buffer whose every element is NaN until written.
    pub fn poisoned_bf16(&self, n: usize) -> Buffer {
        self.poisoned(DType::Bf16, n)
    }

    pub fn poisoned_f32(&self, n: usize) -> Buffer {
        self.poisoned(DType::F32, n)
    }

    /// Launches kernel `kernel` of the shipped file `file`, then waits for it.
    pub fn launch(
        &self,
        file: &str,
        kernel: &str,
        defines: &[(&str, i64)],
        grid: [u32; 3],
        args: &Args<'_>,
    ) {
        let f = kiln_ops::kernels::file(file).unwrap_or_else(|| panic!("no kernel file {file}"));
        let src = Source::new(f.name, f.source);
        self.launch_source(
            &src,
            kernel,
            defines,
            (KernelSpec::DEFAULT_NUM_WARPS, 1),
            grid,
            args,
        );
    }

    /// Launches kernel `kernel` of `src` with `num_warps` warps per program and a
    /// `num_stages`-stage loop pipeline (on a GPU), then waits for it.
    pub fn launch_source(
        &self,
        src: &Source,
        kernel: &str,
        defines: &[(&str, i64)],
        (num_warps, num_stages): (u32, u32),
        grid: [u32; 3],
        args: &Args<'_>,
    ) {
        // Values are given as integers; a constant the kernel declares `bool` takes 0 / 1.
        let module = kiln_compiler::parse(src).unwrap_or_else(|e| panic!("{e}"));
        let declared_bool = |name: &str| {
            module.items.iter().any(|item| match item {
                Item::Kernel(k) if k.name.name == kernel => k
                    .consts
                    .iter()
                    .any(|c| c.name.name == name && c.ty.kind == TypeExprKind::Scalar(DType::Bool)),
                _ => false,
            })
        };
        let defines: Defines = defines
            .iter()
            .map(|&(n, v)| {
                let value = if declared_bool(n) {
                    ConstValue::Bool(v != 0)
                } else {
                    ConstValue::Int(v)
                };
                (n.to_string(), value)
            })
            .collect();
        let spec = KernelSpec::new(src, kernel)
            .with_defines(&defines)
            .with_num_warps(num_warps)
            .with_num_stages(num_stages);
        self.cache
            .launch(&self.device, &spec, grid, args)
            .unwrap_or_else(|e| panic!("{kernel} {defines:?} on {}: {e}", self.device));
        self.device.synchronize().unwrap();
    }

    /// A buffer's contents as f64.
    pub fn read(&self, b: &Buffer) -> Vec<f64> {
        match b.dtype() {
            DType::Bf16 => b
                .download::<bf16>()
                .unwrap()
                .iter()
                .map(|x| x.to_f64())
                .collect(),
            DType::F32 => b
                .download::<f32>()
                .unwrap()
                .iter()
                .map(|&x| x as f64)
                .collect(),
            DType::F16 => b
                .download::<f16>()
                .unwrap()
                .iter()
                .map(|x| x.to_f64())
                .collect(),
            DType::I32 => b
                .download::<i32>()
                .unwrap()
                .iter()
                .map(|&x| x as f64)
                .collect(),
            d => panic!("read of {d} not supported"),
        }
    }

    pub fn assert_close(&self, what: &str, got: &[f64], want: &[f64], tol: Tol) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        let mut bad = vec![];
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            // Written so that NaN (an unwritten, poisoned element) fails.
            let within = (g - w).abs() <= tol.abs + tol.rel * w.abs();
            if !within {
                bad.push((i, g, w));
            }
        }
        assert!(
            bad.is_empty(),
            "{what} on {}: {} of {} elements off (tolerance {tol:?}); first: {:?}",
            self.device,
            bad.len(),
            got.len(),
            &bad[..bad.len().min(5)]
        );
    }
}
