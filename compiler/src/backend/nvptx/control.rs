//! Structured control flow: `for` loops with carried tiles (one LLVM phi per register) and
//! `if`s with results. Conditions and bounds are scalars, which every thread of the block holds
//! alike, so control flow stays uniform and barriers inside it are legal.

use super::lower::{LowerError, Lowerer, Regs, Res};
use crate::ir::{Block, Value};
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
        let (lo, hi, step) = (
            self.scalar(lo)?.into_int_value(),
            self.scalar(hi)?.into_int_value(),
            self.scalar(step)?.into_int_value(),
        );
        let init: Vec<Regs> = init.iter().map(|&v| self.regs(v)).collect::<Res<_>>()?;
        let pre = self.current_block()?;
        let header = self.ctx.append_basic_block(self.func, "for.header");
        let body_bb = self.ctx.append_basic_block(self.func, "for.body");
        let exit = self.ctx.append_basic_block(self.func, "for.exit");
        self.b.build_unconditional_branch(header)?;
        self.b.position_at_end(header);
        let iv = self.b.build_phi(lo.get_type(), "iv")?;
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
        self.define(body.args[0], vec![ivv.into()]);
        for (a, p) in body.args[1..].iter().zip(&phis) {
            self.define(*a, p.iter().map(|p| p.as_basic_value()).collect());
        }
        let next = self
            .block(body)?
            .filter(|n| n.len() == phis.len())
            .ok_or_else(|| LowerError("for body does not yield its carried values".into()))?;
        let iv_next = self.b.build_int_add(ivv, step, "iv.next")?;
        let latch = self.current_block()?;
        self.b.build_unconditional_branch(header)?;
        iv.add_incoming(&[(&lo, pre), (&iv_next, latch)]);
        for (p, regs) in phis.iter().zip(&next) {
            for (phi, r) in p.iter().zip(regs) {
                phi.add_incoming(&[(r, latch)]);
            }
        }
        self.b.position_at_end(exit);
        for (r, p) in results.iter().zip(&phis) {
            self.define(*r, p.iter().map(|p| p.as_basic_value()).collect());
        }
        Ok(())
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
            arms.push((y, self.current_block()?));
            self.b.build_unconditional_branch(merge)?;
        }
        self.b.position_at_end(merge);
        if arms.iter().any(|(y, _)| y.len() != results.len()) {
            return Err(LowerError(
                "an if branch yields the wrong number of values".into(),
            ));
        }
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
