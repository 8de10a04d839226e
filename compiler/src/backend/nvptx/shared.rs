//! Moving elements between threads through the shared scratch buffer: broadcasts along
//! non-trailing axes, transposes, and `dot` (an FMA loop over operands staged in shared memory).
//!
//! Protocol: the buffer is free when a conversion starts; the conversion writes, waits at a
//! barrier, reads, and waits at a second barrier before anyone may write again. All conversions
//! run in uniform control flow (tile ops only appear under `if`s and `for`s whose conditions are
//! scalars, which every thread of the block computes alike), so the barriers are legal.

use super::layout::Layout;
use super::lower::{memory_type, Lowerer, Regs, Res};
use crate::ir::{Block, Kernel, Op, Value};
use crate::types::DType;
use inkwell::values::{BasicValueEnum, IntValue, PointerValue};
use std::collections::HashMap;

/// Bytes reserved for a full reduction: one value slot of 8 bytes and one index per warp.
pub const REDUCE_BYTES: u32 = 32 * 8 + 32 * 4;

fn align16(x: u32) -> u32 {
    x.div_ceil(16) * 16
}

/// The shared memory a kernel needs: the largest single conversion.
pub fn bytes_needed(k: &Kernel, threads: u32) -> u32 {
    let defs = super::lower::definitions(&k.body);
    fn walk(k: &Kernel, defs: &HashMap<Value, &Op>, threads: u32, b: &Block, max: &mut u32) {
        for inst in &b.insts {
            let bytes = |v: &Value| {
                let t = k.ty(*v);
                t.numel() as u32 * t.dtype().map_or(8, |d| d.size_bytes() as u32)
            };
            let need = match &inst.op {
                Op::Broadcast(v)
                    if k.ty(*v).numel() > 1 && !super::remat::rematerialisable(k, defs, *v) =>
                {
                    bytes(v)
                }
                Op::Trans(v) => bytes(v),
                Op::Reduce { value, axis, .. } => {
                    let full = inst.results.first().is_some_and(|r| k.ty(*r).numel() == 1);
                    if full {
                        REDUCE_BYTES
                    } else {
                        // The result (up to 8 bytes an element), and the source unless the
                        // reduction stays within warps.
                        let out = inst.results.first().map_or(0, |r| k.ty(*r).numel() as u32);
                        let t = k.ty(*value);
                        let l = Layout::new(t.numel() as u32, threads);
                        if super::reduce::axis_within_warps(&l, &t.shape, *axis) {
                            out * 8
                        } else {
                            bytes(value).max(out * 8)
                        }
                    }
                }
                Op::Dot { a, b, .. } => align16(bytes(a)) + bytes(b),
                _ => 0,
            };
            *max = (*max).max(need);
            for nested in inst.op.blocks() {
                walk(k, defs, threads, nested, max);
            }
        }
    }
    let mut max = 0;
    walk(k, &defs, threads, &k.body, &mut max);
    align16(max)
}

impl<'ctx> Lowerer<'_, 'ctx> {
    /// The shared address of element `index` of an array of `d` starting at byte `base`.
    pub fn shared_elem(
        &self,
        base: u32,
        index: IntValue<'ctx>,
        d: DType,
    ) -> Res<PointerValue<'ctx>> {
        let bytes = self
            .b
            .build_int_mul(index, self.i32(d.size_bytes() as u64), "")?;
        let off = self.b.build_int_add(bytes, self.i32(base as u64), "")?;
        // SAFETY: `bytes_needed` sized the buffer for every index the conversions form.
        Ok(unsafe {
            self.b
                .build_in_bounds_gep(self.ctx.i8_type(), self.smem, &[off], "")?
        })
    }

    /// Writes a tile's registers to shared memory at their flat indices (replicas write the same
    /// value to the same place, which is harmless).
    pub fn write_shared(&self, regs: &Regs<'ctx>, l: &Layout, d: DType, base: u32) -> Res<()> {
        for (i, &v) in regs.iter().enumerate() {
            let idx = self.flat_index(l, i as u32)?;
            let p = self.shared_elem(base, idx, d)?;
            self.b.build_store(p, self.register_to_memory(v, d)?)?;
        }
        Ok(())
    }

    pub fn read_shared(
        &self,
        base: u32,
        index: IntValue<'ctx>,
        d: DType,
    ) -> Res<BasicValueEnum<'ctx>> {
        let p = self.shared_elem(base, index, d)?;
        let raw = self.b.build_load(memory_type(self.ctx, d), p, "")?;
        self.register_from_memory(raw, d)
    }

    /// Redistributes `src` into the layout of `dst`: each destination element `i` becomes source
    /// element `map(i)`.
    fn gather(
        &self,
        src: Value,
        dst: Value,
        map: impl Fn(&Self, IntValue<'ctx>) -> Res<IntValue<'ctx>>,
    ) -> Res<Regs<'ctx>> {
        let (ls, ld) = (self.layout(src), self.layout(dst));
        let mut regs = self.regs(src)?;
        // Pointers travel as 64-bit integers.
        let is_ptr = self.k.ty(src).elem.pointee().is_some();
        let d = if is_ptr {
            for r in &mut regs {
                *r = self
                    .b
                    .build_ptr_to_int(r.into_pointer_value(), self.ctx.i64_type(), "")?
                    .into();
            }
            DType::I64
        } else {
            self.dtype(src)?
        };
        self.write_shared(&regs, &ls, d, 0)?;
        self.barrier()?;
        let mut out = vec![];
        for i in 0..ld.regs {
            let idx = map(self, self.flat_index(&ld, i)?)?;
            let v = self.read_shared(0, idx, d)?;
            out.push(if is_ptr {
                let pty = self.reg_type(self.k.ty(src).elem).into_pointer_type();
                self.b.build_int_to_ptr(v.into_int_value(), pty, "")?.into()
            } else {
                v
            });
        }
        self.barrier()?;
        Ok(out)
    }

    /// `(flat >> shift) & (dim - 1)`.
    pub fn digit(&self, flat: IntValue<'ctx>, shift: u32, dim: u32) -> Res<IntValue<'ctx>> {
        let s = self
            .b
            .build_right_shift(flat, self.i32(shift as u64), false, "")?;
        Ok(self.b.build_and(s, self.i32(dim as u64 - 1), "")?)
    }

    pub fn broadcast(&self, src: Value, dst: Value) -> Res<Regs<'ctx>> {
        if self.k.ty(src).numel() == 1 {
            let v = self.scalar(src)?;
            return Ok(vec![v; self.layout(dst).regs as usize]);
        }
        let s_shape = self.k.ty(src).shape.clone();
        let d_shape = self.k.ty(dst).shape.clone();
        if super::remat::rematerialisable(self.k, self.defs(), src) {
            let l = self.layout(dst);
            return (0..l.regs)
                .map(|r| {
                    let i = self.broadcast_index(&s_shape, &d_shape, self.flat_index(&l, r)?)?;
                    self.remat_at(src, i)
                })
                .collect();
        }
        self.gather(src, dst, |s, i| s.broadcast_index(&s_shape, &d_shape, i))
    }

    pub fn transpose(&self, src: Value, dst: Value) -> Res<Regs<'ctx>> {
        let shape = self.k.ty(src).shape.clone();
        let (a, b) = (shape[0], shape[1]);
        // dst[j][i] = src[i][j]; dst is <b x a>.
        self.gather(src, dst, |s, f| {
            let j = s.digit(f, a.trailing_zeros(), b)?;
            let i = s.digit(f, 0, a)?;
            let hi =
                s.b.build_left_shift(i, s.i32(b.trailing_zeros() as u64), "")?;
            Ok(s.b.build_or(hi, j, "")?)
        })
    }

    /// `acc + a @ b`: both operands staged in shared memory, then each thread runs a loop over
    /// `k` with one f32 FMA per accumulator register it owns.
    pub fn dot(&mut self, a: Value, b: Value, acc: Value) -> Res<Regs<'ctx>> {
        let (da, db) = (self.dtype(a)?, self.dtype(b)?);
        let (ta, tb) = (self.k.ty(a).clone(), self.k.ty(b).clone());
        let (kdim, n) = (ta.shape[1], tb.shape[1]);
        let b_base = align16(ta.numel() as u32 * da.size_bytes() as u32);
        self.write_shared(&self.regs(a)?, &self.layout(a), da, 0)?;
        self.write_shared(&self.regs(b)?, &self.layout(b), db, b_base)?;
        self.barrier()?;
        let lacc = self.layout(acc);
        let init = self.regs(acc)?;
        let mut rows = vec![];
        let mut cols = vec![];
        for i in 0..lacc.regs {
            let f = self.flat_index(&lacc, i)?;
            let row =
                self.b
                    .build_right_shift(f, self.i32(n.trailing_zeros() as u64), false, "")?;
            rows.push(
                self.b
                    .build_left_shift(row, self.i32(kdim.trailing_zeros() as u64), "")?,
            );
            cols.push(self.b.build_and(f, self.i32(n as u64 - 1), "")?);
        }
        let pre = self.current_block()?;
        let body = self.ctx.append_basic_block(self.func, "dot.k");
        let exit = self.ctx.append_basic_block(self.func, "dot.end");
        self.b.build_unconditional_branch(body)?;
        self.b.position_at_end(body);
        let kk = self.b.build_phi(self.ctx.i32_type(), "k")?;
        let kv = kk.as_basic_value().into_int_value();
        let phis = (0..init.len())
            .map(|_| self.b.build_phi(self.ctx.f32_type(), "acc"))
            .collect::<Result<Vec<_>, _>>()?;
        let mut next = vec![];
        let k_row = self
            .b
            .build_left_shift(kv, self.i32(n.trailing_zeros() as u64), "")?;
        for (i, phi) in phis.iter().enumerate() {
            let ai = self.b.build_or(rows[i], kv, "")?;
            let x = self.widen(self.read_shared(0, ai, da)?, da)?;
            let bi = self.b.build_or(k_row, cols[i], "")?;
            let y = self.widen(self.read_shared(b_base, bi, db)?, db)?;
            let s = self.call(
                "llvm.fma",
                &[self.ctx.f32_type().into()],
                &[x.into(), y.into(), phi.as_basic_value()],
            )?;
            next.push(s);
        }
        let k_next = self.b.build_int_add(kv, self.i32(1), "")?;
        let more = self.b.build_int_compare(
            inkwell::IntPredicate::ULT,
            k_next,
            self.i32(kdim as u64),
            "",
        )?;
        self.b.build_conditional_branch(more, body, exit)?;
        kk.add_incoming(&[(&self.i32(0), pre), (&k_next, body)]);
        for ((phi, x0), x1) in phis.iter().zip(&init).zip(&next) {
            phi.add_incoming(&[(x0, pre), (x1, body)]);
        }
        self.b.position_at_end(exit);
        self.barrier()?;
        Ok(next)
    }
}
