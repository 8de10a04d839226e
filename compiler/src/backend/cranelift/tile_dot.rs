//! `dot` of two tiles in the frame, as a call to the `gemm` crate's single-threaded f32 product.
//!
//! Cranelift's x86-64 backend has no 256-bit vectors, and a tile product written as Cranelift
//! loops (one FMA chain per output element) runs at a few percent of the machine's peak. The
//! `gemm` crate's register-blocked AVX2/AVX-512/NEON micro-kernels reach most of it even for
//! 64 x 64 x 64 tiles, so the JIT'd code hands every tile product to it, the way a GPU backend
//! hands `dot` to tensor-core instructions. Operands are strided views of frame slots (a
//! transposed operand is the same slot with its strides swapped), so nothing is copied unless an
//! operand is not already f32 in a slot.

use super::lower::{Lowerer, Res};
use crate::ir::{ConstValue, Op, Value};
use crate::types::DType;
use cranelift_codegen::ir::{types, AbiParam, InstBuilder, StackSlot, Value as ClValue};
use cranelift_jit::JITModule;
use cranelift_module::{FuncId, Linkage, Module};

/// The symbol generated code calls.
pub(super) const SYMBOL: &str = "kiln_tile_dot";

/// `dst[m, n] (+)= a[m, k] · b[k, n]` in f32: `dst` row-major and contiguous, `a` and `b` with
/// element strides `(row, column)`; `dst` is read first when `accumulate` is non-zero.
///
/// # Safety
/// Every element the strides address must be valid, and `dst` must not overlap `a` or `b`.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe extern "C" fn kiln_tile_dot(
    m: u64,
    n: u64,
    k: u64,
    dst: *mut f32,
    a: *const f32,
    a_rows: i64,
    a_cols: i64,
    b: *const f32,
    b_rows: i64,
    b_cols: i64,
    accumulate: u32,
) {
    // SAFETY: the caller (generated code) passes slots of the frame sized for these shapes.
    unsafe {
        ::gemm::gemm(
            m as usize,
            n as usize,
            k as usize,
            dst,
            1,
            n as isize,
            accumulate != 0,
            a,
            a_cols as isize,
            a_rows as isize,
            b,
            b_cols as isize,
            b_rows as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            ::gemm::Parallelism::None,
        )
    }
}

/// Declares [`kiln_tile_dot`] as an import of `module`.
pub(super) fn declare(module: &mut JITModule) -> Result<FuncId, String> {
    let mut sig = module.make_signature();
    sig.params.extend([AbiParam::new(types::I64); 10]);
    sig.params.push(AbiParam::new(types::I32));
    module
        .declare_function(SYMBOL, Linkage::Import, &sig)
        .map_err(|e| e.to_string())
}

/// An f32 tile in the frame, seen as a matrix: its address and element strides.
struct View {
    addr: ClValue,
    rows_stride: i64,
    cols_stride: i64,
}

impl Lowerer<'_, '_> {
    /// `r = dot(a, b, acc)`: `a` is `[m, k]`, `b` `[k, n]`, `acc` and `r` `[m, n]`; products
    /// accumulate in f32 and round once to `r`'s element type.
    pub(super) fn dot(&mut self, a: Value, b: Value, acc: Value, r: Value) -> Res<()> {
        let (ta, tb) = (self.k.ty(a).clone(), self.k.ty(b).clone());
        let (m, kk, n) = (
            u64::from(ta.shape[0]),
            u64::from(ta.shape[1]),
            u64::from(tb.shape[1]),
        );
        let dacc = self.k.ty(acc).dtype().ok_or("dot of pointers")?;
        let dr = self.k.ty(r).dtype().ok_or("dot of pointers")?;
        let va = self.dot_operand(a)?;
        let vb = self.dot_operand(b)?;
        // The product goes straight into `r`'s slot when `r` is f32, else into f32 scratch.
        let dst = if dr == DType::F32 {
            self.slot_of(r)?
        } else {
            self.new_slot(types::F32, m * n)?
        };
        let accumulate = !self.is_zero(acc);
        if accumulate {
            self.copy_as_f32(acc, dacc, dst)?;
        }
        let f = self.tile_dot_ref();
        let dst_addr = self.b.ins().stack_addr(types::I64, dst, 0);
        let mut args = vec![];
        for x in [m, n, kk] {
            args.push(self.b.ins().iconst(types::I64, x as i64));
        }
        args.push(dst_addr);
        for v in [va, vb] {
            args.push(v.addr);
            args.push(self.b.ins().iconst(types::I64, v.rows_stride));
            args.push(self.b.ins().iconst(types::I64, v.cols_stride));
        }
        args.push(self.b.ins().iconst(types::I32, i64::from(accumulate)));
        self.b.ins().call(f, &args);
        if dr != DType::F32 {
            let out = self.slot_of(r)?;
            self.counted_loop(m * n, |l, i| {
                let x = l.slot_load(dst, types::F32, i);
                let x = l.cast(DType::F32, dr, x);
                l.slot_store(out, x, i);
                Ok(())
            })?;
        }
        Ok(())
    }

    /// `v` as an f32 matrix in the frame: its own slot, the slot a `trans` reads with strides
    /// swapped, or else an f32 copy.
    fn dot_operand(&mut self, v: Value) -> Res<View> {
        let ty = self.k.ty(v).clone();
        let (rows, cols) = (i64::from(ty.shape[0]), i64::from(ty.shape[1]));
        let d = ty.dtype().ok_or("dot of pointers")?;
        if d == DType::F32 {
            if let Some(&slot) = self.slots.get(&v) {
                let addr = self.b.ins().stack_addr(types::I64, slot, 0);
                return Ok(View {
                    addr,
                    rows_stride: cols,
                    cols_stride: 1,
                });
            }
            if let Some(Op::Trans(x)) = self.facts.du.def_op(v) {
                if self.facts.is_virtual(v) {
                    if let Some(&slot) = self.slots.get(x) {
                        // v[p, q] = x[q, p], and x is [cols, rows].
                        let addr = self.b.ins().stack_addr(types::I64, slot, 0);
                        return Ok(View {
                            addr,
                            rows_stride: 1,
                            cols_stride: rows,
                        });
                    }
                }
            }
        }
        let slot = self.new_slot(types::F32, ty.numel())?;
        self.copy_as_f32(v, d, slot)?;
        let addr = self.b.ins().stack_addr(types::I64, slot, 0);
        Ok(View {
            addr,
            rows_stride: cols,
            cols_stride: 1,
        })
    }

    /// Writes every element of `v` (of type `d`), widened to f32, into `slot`.
    fn copy_as_f32(&mut self, v: Value, d: DType, slot: StackSlot) -> Res<()> {
        if d == DType::F32 {
            return self.materialize(v, slot);
        }
        self.counted_loop(self.k.ty(v).numel(), |l, i| {
            let x = l.elem(v, i)?;
            let x = l.cast(d, DType::F32, x);
            l.slot_store(slot, x, i);
            Ok(())
        })
    }

    /// Whether `v` is a constant zero tile (`zeros(...)` as a dot's accumulator).
    fn is_zero(&self, v: Value) -> bool {
        match self.facts.du.def_op(v) {
            Some(Op::Const(ConstValue::Float(x))) => *x == 0.0 && x.is_sign_positive(),
            Some(Op::Const(ConstValue::Int(0))) => true,
            Some(Op::Splat(s)) => self.is_zero(*s),
            _ => false,
        }
    }
}
