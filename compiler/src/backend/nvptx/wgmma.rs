//! `dot` on sm_90a through the warpgroup instruction `wgmma.mma_async.m64nNk16`: four warps
//! multiply a 64 x 16 slice of `a` by a 16 x N slice of `b`, both read straight from shared
//! memory through matrix descriptors, into a 64 x N f32 accumulator.
//!
//! The accumulator layout is the rows-first MMA layout with one 16-row atom per warp
//! ([`super::assign::fits_warpgroups`]): warp `w` of warpgroup `g` holds rows
//! `64 g + 16 w ..`, register `4 j + c` element `c` of the 16 x 8 atom `j`, exactly the
//! registers of `mma.m16n8k16` atoms laid along N (PTX ISA, "Register Fragments and Shared
//! Memory Matrix Layouts" of `wgmma`).
//!
//! Operands: a [`SharedTile`] with panels of at most 64 columns whose rows are 128, 64 or 32
//! bytes is the canonical 128-, 64- or 32-byte swizzled layout. Stored `[outer][k]` it is
//! K-major: 8-row core groups `8 * row bytes` apart (the descriptor's stride offset), one
//! 16-deep step 32 bytes further along the row. Stored `[k][outer]` it is MN-major
//! (`imm-trans` set): panels of outer indices a panel apart (the leading offset), 8-row groups
//! along k as before, one step 16 rows further down.
//!
//! `a` may also come from registers: the accumulator of an earlier tensor-core dot whose warps
//! hold the same rows, its atoms repacked as `mma.m16n8k16` `a` fragments (flash attention's
//! `p @ v`).
//!
//! The instruction is asynchronous: the accumulator registers pass through
//! `wgmma.fence`, the `wgmma`s, `wgmma.commit_group` and `wgmma.wait_group 0` as tied operands
//! of each inline-asm statement, so nothing reads them before the wait. Shared memory written
//! by ordinary stores or `cp.async` is made visible to the asynchronous proxy with
//! `fence.proxy.async` before the barrier that publishes it.

use super::dot::Staged;
use super::lower::{Lowerer, Regs, Res};
use super::mma::{Major, MmaLayout, SharedTile, ATOM_K};
use crate::types::DType;
use inkwell::types::BasicTypeEnum;
use inkwell::values::{BasicMetadataValueEnum, BasicValueEnum, IntValue};

/// Whether accumulator layout `l` is the accumulator of `wgmma.m64nNk16` run by whole
/// warpgroups: one 16-row atom per warp, warps only along the rows, `n` within 256.
pub(super) fn is_warpgroup_accumulator(l: &MmaLayout) -> bool {
    l.warps_n == 1 && l.atoms_m() == 1 && l.warps_m % 4 == 0 && l.n <= 256
}

/// Whether `wgmma` can read `tile` through a matrix descriptor: its panel rows are one of the
/// swizzled widths (128, 64 or 32 bytes).
pub(super) fn has_descriptor(tile: &SharedTile) -> bool {
    matches!(tile.panel_cols(), 16 | 32 | 64)
}

/// Where `wgmma` reads `a`.
pub(super) enum WgmmaA<'a, 'ctx> {
    /// Shared memory, through a descriptor.
    Shared(&'a Staged<'ctx>),
    /// Registers: for each 16-deep step, the warp's four 32-bit `a` fragment registers (the
    /// fragments of `mma.m16n8k16` for its 16 rows).
    Registers(Vec<Vec<BasicValueEnum<'ctx>>>),
}

/// Rows of `a` one warpgroup multiplies.
const GROUP_ROWS: u32 = 64;

impl<'ctx> Lowerer<'_, 'ctx> {
    /// `fence.proxy.async.shared::cta`: this thread's shared-memory writes become visible to
    /// `wgmma` (after the next barrier, for the other threads' reads).
    pub(super) fn fence_async_proxy(&self) -> Res<()> {
        self.asm_void("fence.proxy.async.shared::cta;")
    }

    /// `acc + a @ b` for the whole depth, one `wgmma` per 16-deep step; on return at most
    /// `pending` groups of this warpgroup's `wgmma`s (this one included) are still running.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn wgmma(
        &self,
        d: DType,
        a: &WgmmaA<'_, 'ctx>,
        b: &Staged<'ctx>,
        l: &MmaLayout,
        depth: u32,
        acc: Regs<'ctx>,
        pending: u32,
    ) -> Res<Regs<'ctx>> {
        let ty = match d {
            DType::Bf16 => "bf16",
            DType::F16 => "f16",
            _ => return Err(format!("wgmma on {d}").into()),
        };
        // Warpgroups beyond the tile's rows hold copies of the first ones'.
        let groups = l.warps_m / 4;
        let group = self.bit_field(
            self.tid,
            &super::layout::TidTerm {
                shift: 7,
                mask: groups - 1,
                mul: 1,
            },
        )?;
        let n = l.n;
        let mut acc = self.tied_asm("wgmma.fence.sync.aligned;", acc)?;
        for (step, k0) in (0..depth).step_by(ATOM_K as usize).enumerate() {
            let db = self.descriptor(b, None, k0)?;
            let outs: Vec<String> = (0..acc.len()).map(|i| format!("${i}")).collect();
            // Operands: the outputs, the tied inputs, then `a`, `b` and scale-d.
            let m = 2 * acc.len();
            let trans_b = u32::from(b.major == Major::Outer);
            let (a_text, b_at, imm, mut extra, cons) = match a {
                WgmmaA::Shared(a) => {
                    let da = self.descriptor(a, Some(group), k0)?;
                    let trans_a = u32::from(a.major == Major::Outer);
                    let extra: Vec<BasicValueEnum> = vec![da.into()];
                    (
                        format!("${m}"),
                        m + 1,
                        format!("{trans_a}, {trans_b}"),
                        extra,
                        "l,l,r",
                    )
                }
                WgmmaA::Registers(frags) => {
                    let regs: Vec<String> = (m..m + 4).map(|i| format!("${i}")).collect();
                    (
                        format!("{{{}}}", regs.join(", ")),
                        m + 4,
                        format!("{trans_b}"),
                        frags[step].clone(),
                        "r,r,r,r,l,r",
                    )
                }
            };
            let text = format!(
                "{{\n.reg .pred p;\nsetp.ne.b32 p, ${}, 0;\n\
                 wgmma.mma_async.sync.aligned.m64n{n}k16.f32.{ty}.{ty} {{{}}}, {a_text}, \
                 ${b_at}, p, 1, 1, {imm};\n}}",
                b_at + 1,
                outs.join(", "),
            );
            extra.push(db.into());
            extra.push(self.i32(1).into());
            acc = self.asm_with_acc(&text, acc, &extra, cons)?;
        }
        let acc = self.tied_asm("wgmma.commit_group.sync.aligned;", acc)?;
        self.wgmma_wait(acc, pending)
    }

    /// `wgmma.wait_group pending` on the registers of an accumulator.
    pub(super) fn wgmma_wait(&self, acc: Regs<'ctx>, pending: u32) -> Res<Regs<'ctx>> {
        self.tied_asm(&format!("wgmma.wait_group.sync.aligned {pending};"), acc)
    }

    /// The 64-bit matrix descriptor of the 16-deep step at `k0` of operand `s`; for `a`, of
    /// the rows of warpgroup `group`.
    fn descriptor(
        &self,
        s: &Staged<'ctx>,
        group: Option<IntValue<'ctx>>,
        k0: u32,
    ) -> Res<IntValue<'ctx>> {
        let t = &s.tile;
        let p = t.panel_cols();
        let row_bytes = 2 * p;
        let panel_bytes = 2 * t.panel_pitch();
        let (step, group_bytes, leading) = match s.major {
            // [outer][k]: k runs along the rows, across panels past 64.
            Major::K => (
                k0 / p * panel_bytes + k0 % p * 2,
                GROUP_ROWS * row_bytes,
                16,
            ),
            // [k][outer]: k runs down the rows; outer across panels.
            Major::Outer => (k0 * row_bytes, GROUP_ROWS / p * panel_bytes, panel_bytes),
        };
        let mode: u64 = match p {
            64 => 1,
            32 => 2,
            _ => 3,
        };
        let stride = 8 * row_bytes;
        let i64t = self.ctx.i64_type();
        let start = self.b.build_ptr_to_int(s.buffer, self.ctx.i32_type(), "")?;
        let mut addr = self
            .b
            .build_int_add(start, self.i32((t.base + step) as u64), "")?;
        if let Some(g) = group {
            let off = self.b.build_int_mul(g, self.i32(group_bytes as u64), "")?;
            addr = self.b.build_int_add(addr, off, "")?;
        }
        let field = self.b.build_right_shift(addr, self.i32(4), false, "")?;
        let field = self.b.build_and(field, self.i32(0x3fff), "")?;
        let field = self.b.build_int_z_extend(field, i64t, "")?;
        let fixed = (leading as u64 >> 4) << 16 | (stride as u64 >> 4) << 32 | mode << 62;
        Ok(self
            .b
            .build_or(field, i64t.const_int(fixed, false), "desc")?)
    }

    /// An inline-asm statement with no operands, kept in place.
    fn asm_void(&self, text: &str) -> Res<()> {
        let fn_ty = self.ctx.void_type().fn_type(&[], false);
        let asm = self.ctx.create_inline_asm(
            fn_ty,
            text.to_string(),
            "~{memory}".into(),
            true,
            false,
            None,
            false,
        );
        self.b.build_indirect_call(fn_ty, asm, &[], "")?;
        Ok(())
    }

    /// `text` with the accumulator registers as tied in/out operands (so that no read or
    /// write of them moves across it).
    fn tied_asm(&self, text: &str, acc: Regs<'ctx>) -> Res<Regs<'ctx>> {
        self.asm_with_acc(text, acc, &[], "")
    }

    /// `text` with the accumulator as operands `$0 ..` (tied in/out f32) and `extra` after
    /// them with `constraints`.
    fn asm_with_acc(
        &self,
        text: &str,
        acc: Regs<'ctx>,
        extra: &[BasicValueEnum<'ctx>],
        constraints: &str,
    ) -> Res<Regs<'ctx>> {
        let f32t = self.ctx.f32_type();
        let n = acc.len();
        let mut cons: Vec<String> = vec!["=f".to_string(); n];
        cons.extend((0..n).map(|i| i.to_string()));
        if !constraints.is_empty() {
            cons.push(constraints.to_string());
        }
        cons.push("~{memory}".to_string());
        let fields: Vec<BasicTypeEnum> = vec![f32t.into(); n];
        let ret = self.ctx.struct_type(&fields, false);
        let mut params: Vec<inkwell::types::BasicMetadataTypeEnum> = vec![f32t.into(); n];
        params.extend(
            extra
                .iter()
                .map(|v| inkwell::types::BasicMetadataTypeEnum::from(v.get_type())),
        );
        let fn_ty = ret.fn_type(&params, false);
        let asm = self.ctx.create_inline_asm(
            fn_ty,
            text.to_string(),
            cons.join(","),
            true,
            false,
            None,
            false,
        );
        let args: Vec<BasicMetadataValueEnum> =
            acc.iter().chain(extra).map(|&v| v.into()).collect();
        let call = self.b.build_indirect_call(fn_ty, asm, &args, "")?;
        let inkwell::values::ValueKind::Basic(result) = call.try_as_basic_value() else {
            return Err("wgmma asm returned nothing".to_string().into());
        };
        let result = result.into_struct_value();
        (0..n as u32)
            .map(|i| {
                self.b
                    .build_extract_value(result, i, "")
                    .map_err(Into::into)
            })
            .collect()
    }
}
