//! The CPU backend: tile IR to native code through Cranelift.
//!
//! ABI of a compiled kernel: one native function
//! `extern "C" fn(args: *const u64, bounds: *const u64, program_id: *const u32,
//! num_programs: *const u32, fault: *mut u64)` run once per program. `args[i]` holds parameter
//! `i`: a pointer's address, or a scalar's bits zero-extended (i32, f32 as its IEEE bits, i64).
//! `bounds[i]` is the byte length of pointer parameter `i`'s buffer. A kernel compiled with
//! bounds checks (the default, see [`CpuOptions`]) never touches memory outside those buffers:
//! such an access is skipped, and the program's first one is written to `fault`
//! ([`AccessFault`]).
//!
//! Scalars live in SSA registers; tiles are loops over their elements. Chains of elementwise ops
//! are fused into the loop of the op that consumes them (see `plan`), so only tiles that are
//! read more than once, across blocks, or by reductions, `dot`, `trans` and `broadcast` are
//! stored, in stack arrays of the function's frame. 16-bit floats are carried as their bits and
//! computed in f32; `exp`, `exp2` and `sigmoid` are inline sequences (`expf`), other math
//! functions without an instruction call Rust (`math`), and `dot` calls the `gemm` crate
//! (`tile_dot`).
//!
//! Loops whose values all have a four-lane form run four elements per iteration in vector
//! registers (`lanes` decides, `vector` and `vmemory` lower); the rest stay scalar.

mod bounds;
mod consts;
mod elem;
mod expf;
mod half;
mod jit;
mod lanes;
mod lower;
mod math;
mod memory;
mod plan;
mod reduce;
mod scalar;
mod tile_dot;
mod vector;
mod vmemory;

use super::BackendError;
use crate::ir::{Kernel, Param};
use cranelift_codegen::ir::UserFuncName;
use cranelift_codegen::Context;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::JITModule;
use cranelift_module::{Linkage, Module};

pub use crate::backend::AccessKind;
pub use lower::MAX_FRAME_BYTES;

type KernelFn = unsafe extern "C" fn(*const u64, *const u64, *const u32, *const u32, *mut u64);

/// How to compile a kernel for the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CpuOptions {
    /// Check every access against the bounds of its buffer (see the module docs).
    pub bounds_checks: bool,
}

impl Default for CpuOptions {
    fn default() -> Self {
        CpuOptions {
            bounds_checks: true,
        }
    }
}

/// The first out-of-bounds access a program of a checked kernel attempted (and skipped).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccessFault {
    /// The index of the pointer parameter it went through.
    pub param: usize,
    /// Its offset from that parameter's address, in bytes (negative below it).
    pub byte_offset: i64,
    pub kind: AccessKind,
}

/// A kernel compiled to native code; runs one program per call.
pub struct CpuKernel {
    name: String,
    params: Vec<Param>,
    entry: KernelFn,
    frame_bytes: u64,
    options: CpuOptions,
    has_atomics: bool,
    /// Owns the code `entry` points to; freed on drop.
    module: Option<JITModule>,
}

// SAFETY: after `finalize_definitions` the module's code is immutable and never touched again
// until `Drop`, which has exclusive access. The generated function keeps all state in its own
// frame, so any number of threads may call it at once.
unsafe impl Send for CpuKernel {}
unsafe impl Sync for CpuKernel {}

impl CpuKernel {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// Bytes of tile arrays in the function's stack frame: a thread running programs needs at
    /// least this much stack (plus a little). At most [`MAX_FRAME_BYTES`].
    pub fn frame_bytes(&self) -> u64 {
        self.frame_bytes
    }

    /// The options it was compiled with.
    pub fn options(&self) -> CpuOptions {
        self.options
    }

    /// Whether the kernel adds to memory with `atomic_add`: the order in which its programs
    /// run then decides how float sums round, so a caller that wants the same bits on every run
    /// runs its programs in program order (see the runtime's CPU launch).
    pub fn has_atomics(&self) -> bool {
        self.has_atomics
    }

    /// Runs program `program_id` of a grid of `num_programs` and returns its first
    /// out-of-bounds access, if any (always `None` without bounds checks). Fails, without
    /// running, when `args` or `bounds` does not have one entry per parameter.
    ///
    /// # Safety
    /// `args` must match [`CpuKernel::params`] one to one. With bounds checks, `bounds[i]` must
    /// be a number of bytes valid at pointer `args[i]`; without, every pointer must be valid for
    /// every element the program touches. The thread needs [`CpuKernel::frame_bytes`] of stack
    /// to spare (stack probes turn too little into a stack-overflow abort, never into access
    /// past the stack).
    pub unsafe fn run_program(
        &self,
        args: &[u64],
        bounds: &[u64],
        program_id: [u32; 3],
        num_programs: [u32; 3],
    ) -> Result<Option<AccessFault>, BackendError> {
        if args.len() != self.params.len() || bounds.len() != self.params.len() {
            return Err(error(
                &self.name,
                format!(
                    "{} arguments and {} bounds for {} parameters",
                    args.len(),
                    bounds.len(),
                    self.params.len()
                ),
            ));
        }
        let mut fault = [0u64; bounds::FAULT_WORDS];
        // SAFETY: the caller vouches for the arguments; the function reads `args` and `bounds`
        // (lengths checked above), three u32s from each grid array, what the kernel's pointers
        // address, and writes `fault`.
        unsafe {
            (self.entry)(
                args.as_ptr(),
                bounds.as_ptr(),
                program_id.as_ptr(),
                num_programs.as_ptr(),
                fault.as_mut_ptr(),
            )
        };
        Ok(match fault {
            [0, ..] => None,
            [param, offset, kind] => Some(AccessFault {
                param: param as usize - 1,
                byte_offset: offset as i64,
                kind: AccessKind::from_code(kind).ok_or_else(|| {
                    error(&self.name, format!("fault record of unknown kind {kind}"))
                })?,
            }),
        })
    }
}

impl Drop for CpuKernel {
    fn drop(&mut self) {
        if let Some(m) = self.module.take() {
            // SAFETY: `&mut self` means no call of `entry` is running or can start.
            unsafe { m.free_memory() };
        }
    }
}

fn error(kernel: &str, message: impl Into<String>) -> BackendError {
    BackendError {
        backend: "cranelift",
        kernel: kernel.to_string(),
        message: message.into(),
    }
}

/// Translates `k` into a function in `module`; returns its context and the frame's tile bytes.
fn translate(
    k: &Kernel,
    module: &mut JITModule,
    options: CpuOptions,
) -> Result<(Context, u64), BackendError> {
    let err = |m: String| error(&k.name, m);
    crate::ir::verify(k).map_err(|e| err(e.to_string()))?;
    let math_ids = jit::declare_math(module).map_err(err)?;
    let dot_id = tile_dot::declare(module).map_err(err)?;
    let mut ctx = module.make_context();
    ctx.func.signature = jit::kernel_signature(module);
    ctx.func.name = UserFuncName::testcase(&k.name);
    let mut fctx = FunctionBuilderContext::new();
    let builder = FunctionBuilder::new(&mut ctx.func, &mut fctx);
    let frame =
        lower::Lowerer::lower_kernel(k, builder, module, &math_ids, dot_id, options.bounds_checks)
            .map_err(err)?;
    Ok((ctx, frame))
}

/// Compiles a kernel to native code for this machine, with bounds checks.
pub fn compile(k: &Kernel) -> Result<CpuKernel, BackendError> {
    compile_with(k, CpuOptions::default())
}

/// Compiles a kernel to native code for this machine.
pub fn compile_with(k: &Kernel, options: CpuOptions) -> Result<CpuKernel, BackendError> {
    let err = |m: String| error(&k.name, m);
    let mut module = jit::new_module().map_err(err)?;
    let (mut ctx, frame_bytes) = translate(k, &mut module, options)?;
    let id = module
        .declare_function(&k.name, Linkage::Local, &ctx.func.signature)
        .map_err(|e| err(e.to_string()))?;
    module
        .define_function(id, &mut ctx)
        .map_err(|e| err(format!("{e:?}")))?;
    module
        .finalize_definitions()
        .map_err(|e| err(e.to_string()))?;
    let code = module.get_finalized_function(id);
    // SAFETY: the function was defined with `kernel_signature`, which is `KernelFn`.
    let entry = unsafe { std::mem::transmute::<*const u8, KernelFn>(code) };
    Ok(CpuKernel {
        name: k.name.clone(),
        params: k.params.clone(),
        entry,
        frame_bytes,
        options,
        has_atomics: uses_atomics(&k.body),
        module: Some(module),
    })
}

fn uses_atomics(block: &crate::ir::Block) -> bool {
    block.insts.iter().any(|inst| {
        matches!(inst.op, crate::ir::Op::AtomicAdd { .. })
            || inst.op.blocks().into_iter().any(uses_atomics)
    })
}

/// The Cranelift IR of a kernel as translated, before Cranelift's optimisations, as text
/// (`kiln compile --emit clif`).
pub fn emit_clif(k: &Kernel, options: CpuOptions) -> Result<String, BackendError> {
    let mut module = jit::new_module().map_err(|m| error(&k.name, m))?;
    let (ctx, _) = translate(k, &mut module, options)?;
    Ok(ctx.func.display().to_string())
}

/// The fusion and four-lane decisions about each instruction of a kernel, as `kiln compile
/// --emit layouts` prints them: whether a tile is *fused* (recomputed inside the loops that
/// read it) or *stored* (in a stack array), and whether the loop that computes or stores it
/// runs four lanes at a time (`x4`) or one element at a time (`scalar`). These are the
/// decisions the lowering reads (see `plan` and `lanes`).
pub struct Annotations<'a> {
    plan: lanes::LanePlan<'a>,
}

impl<'a> Annotations<'a> {
    pub fn new(k: &'a Kernel) -> Annotations<'a> {
        Annotations {
            plan: lanes::LanePlan::new(k),
        }
    }

    /// What was decided about `inst`, if anything (scalars live in registers: nothing to say).
    pub fn facts(&self, inst: &crate::ir::Inst) -> Option<String> {
        use crate::ir::Op;
        let p = &self.plan;
        let lanes = |ok: bool| if ok { "x4" } else { "scalar" };
        match &inst.op {
            Op::Store { ptr, value, mask } => {
                let tile = !p.k.ty(*ptr).is_scalar();
                tile.then(|| format!("store {}", lanes(p.store_vectorizes(*ptr, *value, *mask))))
            }
            Op::AtomicAdd { ptr, .. } => {
                (!p.k.ty(*ptr).is_scalar()).then(|| "atomic scalar".into())
            }
            Op::For { .. } | Op::If { .. } | Op::Yield(_) => None,
            op => {
                let &r = inst.results.first()?;
                let ty = p.k.ty(r);
                if ty.is_scalar() {
                    return None;
                }
                if p.is_virtual(r) {
                    return Some(match p.form(r) {
                        Some(lanes::Form::Lanes) => "fused x4".into(),
                        Some(lanes::Form::Uniform) => "fused uniform".into(),
                        Some(lanes::Form::Seq { .. }) => "fused sequence".into(),
                        None => "fused scalar".into(),
                    });
                }
                let computed_in_place = !matches!(
                    op,
                    Op::Reduce { .. } | Op::Dot { .. } | Op::Trans(_) | Op::Broadcast(_)
                );
                if !computed_in_place {
                    return Some("stored".into());
                }
                let x4 =
                    ty.numel() >= lanes::LANES && p.op_form(op, r).is_some() && p.slot_lanes_ok(r);
                Some(format!("stored {}", lanes(x4)))
            }
        }
    }
}
