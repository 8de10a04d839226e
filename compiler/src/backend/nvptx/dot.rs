//! `acc + a @ b`. On tensor cores when the layout assignment put the result in the MMA layout
//! (`bf16`/`f16` operands of suitable shapes, see [`super::assign::on_tensor_cores`]): the
//! operands are staged in shared memory, each warp reads its fragments with `ldmatrix` and runs
//! `mma.sync.m16n8k16` over its atoms, one 16-deep slice of `k` at a time. Otherwise an FMA
//! loop: each thread walks `k` once per accumulator register it holds.
//!
//! On sm_90a, a tensor-core dot whose accumulator is the `wgmma` layout runs as `wgmma` instead,
//! reading `b` (and `a`, unless it is in registers) from shared memory (see `wgmma`).
//!
//! Both paths follow the shared-memory protocol of `shared`: write, barrier, read, barrier.

use super::layout::{Layout, TidTerm};
use super::lower::{Lowerer, Regs, Res};
use super::mma::{
    ldmatrix_lane_terms, Major, MmaLayout, Operand, SharedTile, ATOM_K, ATOM_M, ATOM_N,
};
use super::shared::{align16, align_tile};
use super::wgmma::WgmmaA;
use crate::ir::{Op, Value};
use crate::types::DType;
use inkwell::types::BasicTypeEnum;
use inkwell::values::{BasicValue, BasicValueEnum, IntValue, PointerValue};

type V<'ctx> = BasicValueEnum<'ctx>;

/// An operand in shared memory: `tile`, whose `base` counts from `buffer`.
pub(super) struct Staged<'ctx> {
    pub op: Operand,
    pub major: Major,
    pub tile: SharedTile,
    pub buffer: PointerValue<'ctx>,
    /// Copied there by the loop pipeline rather than staged by this dot.
    pub piped: bool,
}

impl<'ctx> Lowerer<'_, 'ctx> {
    /// The registers of `r = dot(a, b, acc)`.
    pub fn dot(&mut self, a: Value, b: Value, acc: Value, r: Value) -> Res<Regs<'ctx>> {
        match self.layout(r) {
            Layout::Mma(l) => self.dot_mma(a, b, acc, r, &l),
            l => self.dot_fma(a, b, acc, &l),
        }
    }

    fn dot_mma(
        &mut self,
        a: Value,
        b: Value,
        acc: Value,
        r: Value,
        l: &MmaLayout,
    ) -> Res<Regs<'ctx>> {
        let d = self.dtype(a)?;
        let depth = self.k.ty(a).shape[1];
        let mut acc = self.regs_as(acc, &Layout::Mma(*l))?;
        // `a` computed by tensor cores with the result's rows in each warp's registers is
        // repacked as `a` fragments in place; otherwise it goes through shared memory.
        let a_regs = self.a_in_registers(a, l)?;
        let sa = match a_regs {
            Some(_) => None,
            None => Some(self.stage(a, Operand::A, 0)?),
        };
        let b_base = sa
            .as_ref()
            .filter(|s| !s.piped)
            .map_or(0, |s| align_tile(s.tile.bytes()));
        let sb = self.stage(b, Operand::B, b_base)?;
        // Pipelined operands are already in shared memory (see `pipeline`): only what was
        // written here needs the barriers.
        let written = [sa.as_ref(), Some(&sb)]
            .into_iter()
            .flatten()
            .filter(|s| !s.piped)
            .map(|s| s.tile.base + s.tile.bytes())
            .max();
        let warpgroups = matches!(
            self.d.dot_path(a, b, r),
            super::decisions::DotPath::Wgmma { .. }
        );
        if let Some(end) = written {
            self.claim_shared(end);
            if warpgroups {
                self.fence_async_proxy()?;
            }
            self.barrier()?;
        }
        if warpgroups {
            let a = match (&sa, &a_regs) {
                (Some(sa), _) => WgmmaA::Shared(sa),
                (None, Some((la, regs))) => WgmmaA::Registers(
                    (0..depth)
                        .step_by(ATOM_K as usize)
                        .map(|k0| self.a_fragment(la, regs, 0, k0))
                        .collect::<Res<_>>()?,
                ),
                (None, None) => unreachable!("a is staged when not in registers"),
            };
            let pending = u32::from(self.in_flight.contains(&r));
            let acc = self.wgmma(d, &a, &sb, l, depth, acc, pending)?;
            if written.is_some() {
                self.barrier()?;
            }
            return Ok(acc);
        }
        let lane = self.b.build_and(self.tid, self.i32(31), "lane")?;
        let lane16 = self.b.build_and(self.tid, self.i32(15), "")?;
        let row0 = self.bit_field(self.tid, &l.warp_row_term())?;
        let col0 = self.bit_field(self.tid, &l.warp_col_term())?;
        for k0 in (0..depth).step_by(ATOM_K as usize) {
            let mut a_frags = vec![];
            for i in 0..l.atoms_m() {
                a_frags.push(match (&a_regs, &sa) {
                    (Some((la, regs)), _) => self.a_fragment(la, regs, i, k0)?,
                    (None, Some(sa)) => self.ldmatrix(sa, 4, lane, (row0, i * ATOM_M), k0)?,
                    (None, None) => unreachable!("a is staged when not in registers"),
                });
            }
            // One `.x4` covers two atoms of `b`; an odd last atom takes an `.x2`.
            let mut b_frags = vec![];
            for j in (0..l.atoms_n()).step_by(2) {
                let outer = (col0, j * ATOM_N);
                if j + 1 < l.atoms_n() {
                    let r = self.ldmatrix(&sb, 4, lane, outer, k0)?;
                    b_frags.push(vec![r[0], r[1]]);
                    b_frags.push(vec![r[2], r[3]]);
                } else {
                    b_frags.push(self.ldmatrix(&sb, 2, lane16, outer, k0)?);
                }
            }
            for (i, fa) in a_frags.iter().enumerate() {
                for (j, fb) in b_frags.iter().enumerate() {
                    let c = l.atom_reg(i as u32, j as u32) as usize;
                    let out = self.mma(d, fa, fb, &acc[c..c + 4])?;
                    acc.splice(c..c + 4, out);
                }
            }
        }
        if written.is_some() {
            self.barrier()?;
        }
        Ok(acc)
    }

    /// The registers of `a` when it is an MMA tile (computed by tensor cores, possibly through
    /// elementwise ops) whose warps hold exactly the rows of result layout `l` and the whole
    /// depth: then its accumulator atoms are the `a` fragments, two atoms per 16-deep step.
    fn a_in_registers(&self, a: Value, l: &MmaLayout) -> Res<Option<(MmaLayout, Regs<'ctx>)>> {
        match self.d.a_in_registers(a, l) {
            Some(la) => Ok(Some((la, self.regs(a)?))),
            None => Ok(None),
        }
    }

    /// The `a` fragment of rows `16 i ..` and depth `k0 ..` of a warp from the registers of
    /// an accumulator `regs` in layout `la`. Register `j` of the fragment: row `g + 8 (j % 2)`,
    /// columns `k0 + 8 (j / 2) + 2t` and the next, which are elements `2 (j % 2)` and the next
    /// of accumulator atom `(i, k0 / 8 + j / 2)`.
    fn a_fragment(&self, la: &MmaLayout, regs: &Regs<'ctx>, i: u32, k0: u32) -> Res<Vec<V<'ctx>>> {
        (0..4)
            .map(|j| {
                let r = (la.atom_reg(i, k0 / ATOM_N + j / 2) + 2 * (j % 2)) as usize;
                self.pack_pair(regs[r], regs[r + 1])
            })
            .collect()
    }

    /// Two 16-bit values as one 32-bit register, `lo` in the low half.
    fn pack_pair(&self, lo: V<'ctx>, hi: V<'ctx>) -> Res<V<'ctx>> {
        let half = lo.into_float_value().get_type();
        let mut v = half.vec_type(2).get_undef();
        v = self.b.build_insert_element(v, lo, self.i32(0), "")?;
        v = self.b.build_insert_element(v, hi, self.i32(1), "")?;
        Ok(self.b.build_bit_cast(v, self.ctx.i32_type(), "")?)
    }

    fn add_const(&self, x: IntValue<'ctx>, c: u32) -> Res<IntValue<'ctx>> {
        Ok(self.b.build_int_add(x, self.i32(c as u64), "")?)
    }

    /// Writes operand `v` of the mma to shared memory at byte `base`. A `trans(x)` operand is
    /// staged as `x`, in the other orientation. A tile the loop pipeline already copied is
    /// read where it is.
    fn stage(&mut self, v: Value, op: Operand, base: u32) -> Res<Staged<'ctx>> {
        let natural = match op {
            Operand::A => Major::K,
            Operand::B => Major::Outer,
        };
        let (src, major) = match self.def(v) {
            Some(Op::Trans(x)) => (*x, flip(natural)),
            _ => (v, natural),
        };
        if let Some(&(buffer, tile)) = self.piped.get(&src) {
            return Ok(Staged {
                op,
                major,
                tile,
                buffer,
                piped: true,
            });
        }
        let buffer = self.smem;
        let shape = &self.k.ty(src).shape;
        let tile = SharedTile {
            rows: shape[0],
            cols: shape[1],
            base,
        };
        let d = self.dtype(src)?;
        let l = self.layout(src);
        let regs = self.regs(src)?;
        // Runs of `w` registers are contiguous elements of one row and one 16-byte chunk, which
        // the swizzle keeps together.
        let w = l.vec().min(SharedTile::CHUNK).min(tile.cols) as usize;
        let half = super::lower::scalar_type(self.ctx, d).into_float_type();
        let addresses = self.run_addresses(buffer, &tile, &l, w as u32)?;
        for (run, p) in regs.chunks(w).zip(addresses) {
            let value: V = if w == 1 {
                run[0]
            } else {
                let mut vec = half.vec_type(w as u32).get_undef();
                for (j, &x) in run.iter().enumerate() {
                    vec = self
                        .b
                        .build_insert_element(vec, x, self.i32(j as u64), "")?;
                }
                let words = self.ctx.i32_type().vec_type(w as u32 / 2);
                self.b.build_bit_cast(vec, words, "")?
            };
            let st = self.b.build_store(p, value)?;
            st.set_alignment(2 * w as u32).map_err(|e| e.to_string())?;
        }
        Ok(Staged {
            op,
            major,
            tile,
            buffer,
            piped: false,
        })
    }

    /// The shared address of the first element of each run of `w` registers (`w` dividing
    /// the layout's vector and at most a 16-byte chunk) of a tile laid out as `l`, in `tile`
    /// (at `buffer`). Registers whose flat index is the first's plus whole blocks of 8 rows
    /// share its swizzle phase (see `SharedTile::offset`), so their address is the first's
    /// plus a constant.
    pub(super) fn run_addresses(
        &self,
        buffer: PointerValue<'ctx>,
        tile: &SharedTile,
        l: &Layout,
        w: u32,
    ) -> Res<Vec<PointerValue<'ctx>>> {
        let first = self.element_address(buffer, tile, l, 0)?;
        (0..l.regs())
            .step_by(w as usize)
            .map(|reg| {
                let step = l.reg_offset(reg) - l.reg_offset(0);
                if step % (SharedTile::PHASE_ROWS * tile.cols) != 0 {
                    return self.element_address(buffer, tile, l, reg);
                }
                // The same column, whole phase blocks of rows further down its panel.
                let bytes = 2 * step / tile.cols * tile.panel_cols();
                // SAFETY: an element of the tile, within the claimed buffer.
                Ok(unsafe {
                    self.b.build_in_bounds_gep(
                        self.ctx.i8_type(),
                        first,
                        &[self.i32(bytes as u64)],
                        "",
                    )?
                })
            })
            .collect()
    }

    /// The shared address of the element register `reg` of a tile laid out as `l` holds, in
    /// `tile` (at `buffer`).
    fn element_address(
        &self,
        buffer: PointerValue<'ctx>,
        tile: &SharedTile,
        l: &Layout,
        reg: u32,
    ) -> Res<PointerValue<'ctx>> {
        let flat = self.flat_index(l, reg)?;
        let shift = self.i32(tile.cols.trailing_zeros() as u64);
        let row = self.b.build_right_shift(flat, shift, false, "")?;
        let col = self.b.build_and(flat, self.i32(tile.cols as u64 - 1), "")?;
        self.tile_address(buffer, tile, row, col, row)
    }

    /// The shared address of element `(row, col)` of `tile` at `buffer` (see
    /// [`SharedTile::offset`]); `phase_row` is `row` or any value congruent to it modulo
    /// [`SharedTile::PHASE_ROWS`].
    fn tile_address(
        &self,
        buffer: PointerValue<'ctx>,
        tile: &SharedTile,
        row: IntValue<'ctx>,
        col: IntValue<'ctx>,
        phase_row: IntValue<'ctx>,
    ) -> Res<PointerValue<'ctx>> {
        let phase = self.bit_field(
            phase_row,
            &TidTerm {
                shift: tile.phase_shift(),
                mask: tile.phase_mask(),
                mul: SharedTile::CHUNK,
            },
        )?;
        let p = tile.panel_cols();
        let mut index = self.b.build_int_mul(row, self.i32(p as u64), "")?;
        let within = if tile.cols > p {
            let panel =
                self.b
                    .build_right_shift(col, self.i32(p.trailing_zeros() as u64), false, "")?;
            let panel_start =
                self.b
                    .build_int_mul(panel, self.i32(tile.panel_pitch() as u64), "")?;
            index = self.b.build_int_add(index, panel_start, "")?;
            self.b.build_and(col, self.i32(p as u64 - 1), "")?
        } else {
            col
        };
        let within = self.b.build_xor(within, phase, "")?;
        let index = self.b.build_int_add(index, within, "")?;
        let bytes = self.b.build_int_mul(index, self.i32(2), "")?;
        let off = self
            .b
            .build_int_add(bytes, self.i32(tile.base as u64), "")?;
        // SAFETY: an element of the tile, within its claimed buffer.
        Ok(unsafe {
            self.b
                .build_in_bounds_gep(self.ctx.i8_type(), buffer, &[off], "")?
        })
    }

    /// `ldmatrix.sync.aligned.m8n8.x{count}[.trans].b16` of the 16 x 16 block (16 x 8 for
    /// `count == 2`) of operand `s` at `(outer0 + outer, k0)`; one 32-bit register per 8x8
    /// block. `outer0` is the warp's part, `outer` and `k0` constants.
    fn ldmatrix(
        &self,
        s: &Staged<'ctx>,
        count: u32,
        lane: IntValue<'ctx>,
        (outer0, outer): (IntValue<'ctx>, u32),
        k0: u32,
    ) -> Res<Vec<V<'ctx>>> {
        let (row_terms, col_terms) = ldmatrix_lane_terms(s.op, s.major);
        // The row's constant part goes into the address as a constant (see below).
        let (mut row, row_const, mut col) = match s.major {
            Major::K => (outer0, outer, self.i32(k0 as u64)),
            Major::Outer => (self.i32(0), k0, self.add_const(outer0, outer)?),
        };
        for t in &row_terms {
            row = self.b.build_int_add(row, self.bit_field(lane, t)?, "")?;
        }
        for t in &col_terms {
            col = self.b.build_int_add(col, self.bit_field(lane, t)?, "")?;
        }
        // Every other part of the row is a multiple of 8, so the swizzle phase depends on the
        // lane alone, and blocks that differ only in their row differ by a constant address.
        let r = self.b.build_and(lane, self.i32(7), "")?;
        let p = self.tile_address(s.buffer, &s.tile, row, col, r)?;
        let bytes = self.i32(2 * (row_const * s.tile.panel_cols()) as u64);
        // SAFETY: an element of the tile, within the claimed buffer.
        let p = unsafe {
            self.b
                .build_in_bounds_gep(self.ctx.i8_type(), p, &[bytes], "")?
        };
        let trans = match s.major {
            Major::K => "",
            Major::Outer => ".trans",
        };
        let name = format!("llvm.nvvm.ldmatrix.sync.aligned.m8n8.x{count}{trans}.b16");
        let ptr_ty: BasicTypeEnum = p.get_type().into();
        let r = self.call(&name, &[ptr_ty], &[p.as_basic_value_enum()])?;
        (0..count)
            .map(|i| {
                self.b
                    .build_extract_value(r.into_struct_value(), i, "")
                    .map_err(Into::into)
            })
            .collect()
    }

    /// One `mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.f32`: `c + a @ b` for one atom.
    fn mma(&self, d: DType, a: &[V<'ctx>], b: &[V<'ctx>], c: &[V<'ctx>]) -> Res<Vec<V<'ctx>>> {
        let name = match d {
            DType::Bf16 => "llvm.nvvm.mma.m16n8k16.row.col.bf16",
            DType::F16 => "llvm.nvvm.mma.m16n8k16.row.col.f32.f32",
            _ => return Err(format!("mma on {d}").into()),
        };
        // f16 pairs travel as `<2 x half>`, bf16 pairs as i32.
        let pair = |x: V<'ctx>| -> Res<V<'ctx>> {
            Ok(match d {
                DType::F16 => self
                    .b
                    .build_bit_cast(x, self.ctx.f16_type().vec_type(2), "")?,
                _ => x,
            })
        };
        let mut args = vec![];
        for &x in a.iter().chain(b) {
            args.push(pair(x)?);
        }
        args.extend_from_slice(c);
        let r = self.call(name, &[], &args)?;
        (0..4)
            .map(|i| {
                self.b
                    .build_extract_value(r.into_struct_value(), i, "")
                    .map_err(Into::into)
            })
            .collect()
    }

    /// Both operands staged in shared memory, then each thread runs a loop over `k` with one
    /// f32 FMA per accumulator register it holds (in layout `l`).
    fn dot_fma(&mut self, a: Value, b: Value, acc: Value, l: &Layout) -> Res<Regs<'ctx>> {
        let (da, db) = (self.dtype(a)?, self.dtype(b)?);
        let (ta, tb) = (self.k.ty(a).clone(), self.k.ty(b).clone());
        let (kdim, n) = (ta.shape[1], tb.shape[1]);
        let b_base = align16(ta.numel() as u32 * da.size_bytes() as u32);
        self.claim_shared(b_base + tb.numel() as u32 * db.size_bytes() as u32);
        let (la, lb) = (self.layout(a), self.layout(b));
        self.write_shared(&self.regs_as(a, &la)?, &la, da, 0)?;
        self.write_shared(&self.regs_as(b, &lb)?, &lb, db, b_base)?;
        self.barrier()?;
        let init = self.regs_as(acc, l)?;
        let mut rows = vec![];
        let mut cols = vec![];
        for i in 0..l.regs() {
            let f = self.flat_index(l, i)?;
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

fn flip(m: Major) -> Major {
    match m {
        Major::K => Major::Outer,
        Major::Outer => Major::K,
    }
}
