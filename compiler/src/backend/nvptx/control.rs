//! Structured control flow: `for` loops with carried tiles (one LLVM phi per register, or per
//! pair of `bf16`/`f16` registers) and `if`s with results. Conditions and bounds are scalars,
//! which every thread of the block holds alike, so control flow stays uniform and barriers inside
//! it are legal.

use super::lower::{LowerError, Lowerer, Regs, Res};
use crate::ir::{Block, ConstValue, Op, Value};
use inkwell::values::BasicValue;
use inkwell::IntPredicate;

impl<'ctx> Lowerer<'_, 'ctx> {
    pub(super) fn for_loop(
        &mut self,
        lo: Value,
        hi: Value,
        step: Value,
        init: &[Value],
        body: &Block,
        results: &[Value],
    ) -> Res<()> {
        let positive = matches!(self.def(step), Some(Op::Const(ConstValue::Int(s))) if *s > 0);
        let (lo, hi, step) = (
            self.scalar(lo)?.into_int_value(),
            self.scalar(hi)?.into_int_value(),
            self.scalar(step)?.into_int_value(),
        );
        // A step <= 0 runs the body zero times: the loop starts at its end.
        let lo = if positive {
            lo
        } else {
            let zero = step.get_type().const_zero();
            let forward = self
                .b
                .build_int_compare(IntPredicate::SGT, step, zero, "forward")?;
            self.b.build_select(forward, lo, hi, "lo")?.into_int_value()
        };
        let layouts: Vec<_> = body.args[1..].iter().map(|&a| self.layout(a)).collect();
        let init: Vec<Regs> = init
            .iter()
            .zip(&layouts)
            .map(|(&v, l)| self.pack(self.regs_as(v, l)?))
            .collect::<Res<_>>()?;
        let report = self.d.pipeline_report(body);
        if let Some(e) = report.error {
            return Err(LowerError(e));
        }
        let plan = report.plan;
        let region = plan.as_ref().map(|p| self.claim_ring(p)).transpose()?;
        if let (Some(p), Some(r)) = (&plan, region) {
            self.pipeline_prologue(body, p, r, (lo, hi, step))?;
        }
        let pre = self.current_block()?;
        let header = self.ctx.append_basic_block(self.func, "for.header");
        let body_bb = self.ctx.append_basic_block(self.func, "for.body");
        let exit = self.ctx.append_basic_block(self.func, "for.exit");
        self.b.build_unconditional_branch(header)?;
        self.b.position_at_end(header);
        let iv = self.b.build_phi(lo.get_type(), "iv")?;
        let stage = match plan {
            Some(_) => {
                let phi = self.b.build_phi(self.ctx.i32_type(), "stage")?;
                phi.add_incoming(&[(&self.i32(0), pre)]);
                Some(phi)
            }
            None => None,
        };
        let mut phis = vec![];
        for regs in &init {
            let mut p = vec![];
            for r in regs {
                let phi = self.b.build_phi(r.get_type(), "carry")?;
                phi.add_incoming(&[(r, pre)]);
                p.push(phi);
            }
            phis.push(p);
        }
        let ivv = iv.as_basic_value().into_int_value();
        let go = self.b.build_int_compare(IntPredicate::SLT, ivv, hi, "")?;
        self.b.build_conditional_branch(go, body_bb, exit)?;
        self.b.position_at_end(body_bb);
        for (a, p) in body.args[1..].iter().zip(&phis) {
            let regs = self.unpack(p.iter().map(|p| p.as_basic_value()).collect())?;
            self.define(*a, regs);
        }
        let read_stage = stage.map(|p| p.as_basic_value().into_int_value());
        if let (Some(p), Some(r), Some(s)) = (&plan, region, read_stage) {
            self.pipeline_iteration(body, p, r, (ivv, hi, step), s)?;
        }
        self.define(body.args[0], vec![ivv.into()]);
        let next: Vec<Regs> = self
            .block(body)?
            .filter(|n| n.len() == phis.len())
            .ok_or_else(|| LowerError("for body does not yield its carried values".into()))?
            .iter()
            .zip(&layouts)
            .map(|(&v, l)| self.pack(self.regs_as(v, l)?))
            .collect::<Res<_>>()?;
        let iv_next = self.b.build_int_add(ivv, step, "iv.next")?;
        let stage_next = match (&plan, read_stage) {
            (Some(p), Some(s)) => Some(self.next_stage(p, s)?),
            _ => None,
        };
        let latch = self.current_block()?;
        self.b.build_unconditional_branch(header)?;
        iv.add_incoming(&[(&lo, pre), (&iv_next, latch)]);
        if let (Some(phi), Some(next)) = (stage, stage_next) {
            phi.add_incoming(&[(&next, latch)]);
        }
        for (p, regs) in phis.iter().zip(&next) {
            for (phi, r) in p.iter().zip(regs) {
                phi.add_incoming(&[(r, latch)]);
            }
        }
        self.b.position_at_end(exit);
        // The last `wgmma`s left in flight finish before the ring is released.
        let in_flight = plan.as_ref().and_then(|p| p.in_flight).map(|(_, i)| i);
        let mut exits = vec![];
        for (i, p) in phis.iter().enumerate() {
            let mut regs = self.unpack(p.iter().map(|p| p.as_basic_value()).collect())?;
            if in_flight == Some(i) {
                regs = self.wgmma_wait(regs, 0)?;
            }
            exits.push(regs);
        }
        if let Some(p) = &plan {
            self.pipeline_epilogue(p)?;
        }
        for (r, regs) in results.iter().zip(exits) {
            self.define(*r, regs);
        }
        Ok(())
    }

    /// Pairs of half-precision registers as `<2 x T>` (one 32-bit register each: LLVM would
    /// give every scalar its own).
    fn pack(&self, regs: Regs<'ctx>) -> Res<Regs<'ctx>> {
        let half = |r: &Regs<'ctx>| {
            r.first().is_some_and(|x| {
                x.is_float_value() && x.into_float_value().get_type().get_bit_width() == 16
            })
        };
        if regs.len() % 2 != 0 || !half(&regs) {
            return Ok(regs);
        }
        let ty = regs[0].into_float_value().get_type().vec_type(2);
        regs.chunks(2)
            .map(|pair| {
                let mut v = ty.get_undef();
                for (j, &x) in pair.iter().enumerate() {
                    v = self.b.build_insert_element(v, x, self.i32(j as u64), "")?;
                }
                Ok(v.as_basic_value_enum())
            })
            .collect()
    }

    /// Undoes [`Lowerer::pack`].
    fn unpack(&self, regs: Regs<'ctx>) -> Res<Regs<'ctx>> {
        if !regs.first().is_some_and(|r| r.is_vector_value()) {
            return Ok(regs);
        }
        let mut out = Vec::with_capacity(2 * regs.len());
        for r in regs {
            for j in 0..2 {
                out.push(
                    self.b
                        .build_extract_element(r.into_vector_value(), self.i32(j), "")?,
                );
            }
        }
        Ok(out)
    }

    pub(super) fn if_else(
        &mut self,
        cond: Value,
        then_b: &Block,
        else_b: &Block,
        results: &[Value],
    ) -> Res<()> {
        let c = self.scalar(cond)?.into_int_value();
        let then_bb = self.ctx.append_basic_block(self.func, "then");
        let else_bb = self.ctx.append_basic_block(self.func, "else");
        let merge = self.ctx.append_basic_block(self.func, "endif");
        self.b.build_conditional_branch(c, then_bb, else_bb)?;
        let mut arms = vec![];
        for (bb, blk) in [(then_bb, then_b), (else_bb, else_b)] {
            self.b.position_at_end(bb);
            let y = self.block(blk)?.unwrap_or_default();
            if y.len() != results.len() {
                return Err(LowerError(
                    "an if branch yields the wrong number of values".into(),
                ));
            }
            let y: Vec<Regs> = y
                .iter()
                .zip(results)
                .map(|(&v, &r)| self.regs_as(v, &self.layout(r)))
                .collect::<Res<_>>()?;
            arms.push((y, self.current_block()?));
            self.b.build_unconditional_branch(merge)?;
        }
        self.b.position_at_end(merge);
        for (i, &r) in results.iter().enumerate() {
            let mut regs = vec![];
            for (j, first) in arms[0].0[i].iter().enumerate() {
                let phi = self.b.build_phi(first.get_type(), "")?;
                for (y, bb) in &arms {
                    phi.add_incoming(&[(&y[i][j], *bb)]);
                }
                regs.push(phi.as_basic_value());
            }
            self.define(r, regs);
        }
        Ok(())
    }
}
