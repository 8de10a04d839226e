//! Moving elements between threads through the shared scratch buffer: layout conversions,
//! broadcasts along non-trailing axes and transposes (`dot` stages its operands there too: see
//! `dot`).
//!
//! Protocol: the buffer is free when a conversion starts; the conversion writes, waits at a
//! barrier, reads, and waits at a second barrier before anyone may write again. All conversions
//! run in uniform control flow (tile ops only appear under `if`s and `for`s whose conditions are
//! scalars, which every thread of the block computes alike), so the barriers are legal. Each
//! conversion claims the bytes it uses ([`Lowerer::claim_shared`]); the buffer is sized to the
//! largest claim.

use super::layout::Layout;
use super::lower::{memory_type, Lowerer, Regs, Res};
use super::mma::SharedTile;
use crate::ir::Value;
use crate::types::DType;
use inkwell::values::{BasicValueEnum, IntValue, PointerValue};

/// Bytes reserved for a full reduction: one value slot of 8 bytes and one index per warp.
pub const REDUCE_BYTES: u32 = 32 * 8 + 32 * 4;

/// `x` rounded up to a multiple of 16.
pub fn align16(x: u32) -> u32 {
    x.div_ceil(16) * 16
}

/// `x` rounded up to where a tensor-core operand tile may start ([`SharedTile::ALIGN`]).
pub fn align_tile(x: u32) -> u32 {
    x.div_ceil(SharedTile::ALIGN) * SharedTile::ALIGN
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
        // SAFETY: every conversion claims the bytes it indexes, and the buffer is sized to the
        // largest claim.
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

    /// `src` in layout `to`, through shared memory.
    pub fn convert(&self, src: Value, to: &Layout) -> Res<Regs<'ctx>> {
        self.gather(src, to, |_, i| Ok(i))
    }

    /// Redistributes `src` into layout `to`: each destination element `i` becomes source
    /// element `map(i)`.
    fn gather(
        &self,
        src: Value,
        to: &Layout,
        map: impl Fn(&Self, IntValue<'ctx>) -> Res<IntValue<'ctx>>,
    ) -> Res<Regs<'ctx>> {
        let ls = self.layout(src);
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
        self.claim_shared(self.k.ty(src).numel() as u32 * d.size_bytes() as u32);
        self.write_shared(&regs, &ls, d, 0)?;
        self.barrier()?;
        let mut out = vec![];
        for i in 0..to.regs() {
            let idx = map(self, self.flat_index(to, i)?)?;
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
        let l = self.layout(dst);
        if self.k.ty(src).numel() == 1 {
            let v = self.scalar(src)?;
            return Ok(vec![v; l.regs() as usize]);
        }
        // A row vector into the MMA tile whose rows it is laid out as: register copies.
        if let (Layout::Rows(r), Layout::Mma(m)) = (self.layout(src), &l) {
            if super::mma::MmaRows::of(m) == Some(r) {
                let regs = self.regs(src)?;
                return Ok((0..m.regs())
                    .map(|reg| {
                        let (atom, c) = (reg / 4, reg % 4);
                        regs[(atom / m.atoms_n() * 2 + c / 2) as usize]
                    })
                    .collect());
            }
        }
        let s_shape = self.k.ty(src).shape.clone();
        let d_shape = self.k.ty(dst).shape.clone();
        if super::remat::rematerialisable(self.k, self.du(), src) {
            return (0..l.regs())
                .map(|r| {
                    let i = self.broadcast_index(&s_shape, &d_shape, self.flat_index(&l, r)?)?;
                    self.remat_at(src, i)
                })
                .collect();
        }
        self.gather(src, &l, |s, i| s.broadcast_index(&s_shape, &d_shape, i))
    }

    pub fn transpose(&self, src: Value, dst: Value) -> Res<Regs<'ctx>> {
        let shape = self.k.ty(src).shape.clone();
        let (a, b) = (shape[0], shape[1]);
        // dst[j][i] = src[i][j]; dst is <b x a>.
        self.gather(src, &self.layout(dst), |s, f| {
            let j = s.digit(f, a.trailing_zeros(), b)?;
            let i = s.digit(f, 0, a)?;
            let hi =
                s.b.build_left_shift(i, s.i32(b.trailing_zeros() as u64), "")?;
            Ok(s.b.build_or(hi, j, "")?)
        })
    }
}
