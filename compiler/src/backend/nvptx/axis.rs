//! Alignment analysis: which integer and pointer tiles advance by one element along runs of the
//! flattened tile, which are constant along runs, and what powers of two divide them. Loads and
//! stores use it to pick vector widths (the facts Triton calls contiguity, constancy and
//! divisibility).
//!
//! Facts are about aligned runs of the flattened row-major tile: a run of length `c` starts at a
//! flat index that is a multiple of `c`. `contig = c` means `v[i] = v[base] + (i - base)` on each
//! run; `constancy = c` means `v` is constant on each run; `div` is a power of two dividing the
//! first element of each contiguous run (each element when `contig == 1`). For pointers `div` is
//! in bytes. All three are powers of two.

use super::PtxOptions;
use crate::ir::{BinaryOp, Block, CmpPred, ConstValue, Elem, Kernel, Op, ParamKind, Value};
use std::collections::HashMap;

/// Divisibility assumed of zero (and the cap on all divisibility).
const DIV_MAX: u64 = 1 << 30;

/// What is known of one value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AxisInfo {
    pub contig: u32,
    pub constancy: u32,
    pub div: u64,
}

impl AxisInfo {
    const UNKNOWN: AxisInfo = AxisInfo {
        contig: 1,
        constancy: 1,
        div: 1,
    };

    /// Divisibility of the first element of each run of length `run` (which divides `contig`
    /// or is a multiple of `constancy`-runs): inside a contiguous run, `base + m` with `m` a
    /// multiple of `run`.
    fn div_at(self, run: u32) -> u64 {
        if self.contig > 1 {
            self.div.min(run as u64)
        } else {
            self.div
        }
    }
}

/// Facts for every integer and pointer value of a kernel (others are absent).
pub struct AxisAnalysis {
    info: HashMap<Value, AxisInfo>,
}

impl AxisAnalysis {
    pub fn run(k: &Kernel, opts: &PtxOptions) -> AxisAnalysis {
        let mut a = AxisAnalysis {
            info: HashMap::new(),
        };
        for (i, (p, &v)) in k.params.iter().zip(&k.body.args).enumerate() {
            let aligned = opts.param_divisible_by_16(i);
            let div = match p.kind {
                ParamKind::Ptr { pointee, .. } if aligned => 16.max(pointee.size_bytes() as u64),
                ParamKind::Ptr { pointee, .. } => pointee.size_bytes() as u64,
                ParamKind::Scalar(_) if aligned => 16,
                ParamKind::Scalar(_) => 1,
            };
            a.info.insert(
                v,
                AxisInfo {
                    contig: 1,
                    constancy: 1,
                    div,
                },
            );
        }
        a.block(k, &k.body);
        a
    }

    /// The facts about `v` (nothing known if it was not analysed).
    pub fn get(&self, v: Value) -> AxisInfo {
        self.info.get(&v).copied().unwrap_or(AxisInfo::UNKNOWN)
    }

    fn block(&mut self, k: &Kernel, b: &Block) {
        for inst in &b.insts {
            if let Op::For { lo, step, body, .. } = &inst.op {
                let iv = AxisInfo {
                    div: self.get(*lo).div.min(self.get(*step).div),
                    ..AxisInfo::UNKNOWN
                };
                self.info.insert(body.args[0], iv);
            }
            for nested in inst.op.blocks() {
                self.block(k, nested);
            }
            if let [r] = inst.results[..] {
                if let Some(i) = self.op(k, &inst.op, r) {
                    self.info.insert(r, i);
                }
            }
        }
    }

    fn op(&self, k: &Kernel, op: &Op, result: Value) -> Option<AxisInfo> {
        let numel = k.ty(result).numel().min(u32::MAX as u64) as u32;
        let g = |v: &Value| self.get(*v);
        Some(match op {
            Op::Const(ConstValue::Int(c)) => AxisInfo {
                contig: 1,
                constancy: numel,
                div: if *c == 0 {
                    DIV_MAX
                } else {
                    (1u64 << c.trailing_zeros()).min(DIV_MAX)
                },
            },
            Op::Range(n) => AxisInfo {
                contig: *n,
                constancy: 1,
                div: DIV_MAX,
            },
            Op::Splat(v) => AxisInfo {
                contig: 1,
                constancy: numel,
                div: g(v).div_at(1),
            },
            Op::Reshape(v) => g(v),
            Op::Cast(v) if k.ty(*v).dtype().is_some_and(|d| d.is_int()) => g(v),
            Op::Broadcast(v) => broadcast(&k.ty(*v).shape, &k.ty(result).shape, g(v)),
            Op::PtrAdd(p, o) => {
                let esize = k.ty(*p).elem.pointee()?.size_bytes() as u64;
                let (p, o) = (g(p), g(o));
                let contig = (p.constancy.min(o.contig)).max(p.contig.min(o.constancy));
                AxisInfo {
                    contig,
                    constancy: p.constancy.min(o.constancy),
                    div: p.div_at(contig).min(o.div_at(contig).saturating_mul(esize)),
                }
            }
            Op::Binary(bop, a, b) if is_int_or_ptr(k.ty(*a).elem) => {
                let (a, b) = (g(a), g(b));
                let constancy = a.constancy.min(b.constancy);
                match bop {
                    BinaryOp::Add | BinaryOp::Sub => {
                        let mut contig = a.contig.min(b.constancy);
                        if *bop == BinaryOp::Add {
                            contig = contig.max(a.constancy.min(b.contig));
                        }
                        AxisInfo {
                            contig,
                            constancy,
                            div: a.div_at(contig).min(b.div_at(contig)),
                        }
                    }
                    BinaryOp::Mul => AxisInfo {
                        contig: 1,
                        constancy,
                        div: a.div_at(1).saturating_mul(b.div_at(1)).min(DIV_MAX),
                    },
                    _ => AxisInfo {
                        constancy,
                        ..AxisInfo::UNKNOWN
                    },
                }
            }
            Op::Cmp(pred, a, b) => {
                let (a, b) = (g(a), g(b));
                let mut constancy = a.constancy.min(b.constancy);
                // `range < n` is constant on aligned runs that `n` does not split.
                if matches!(pred, CmpPred::Lt | CmpPred::Ge) && a.contig > 1 {
                    let run = (a.contig.min(b.constancy) as u64).min(b.div).min(a.div) as u32;
                    constancy = constancy.max(run);
                }
                AxisInfo {
                    constancy,
                    ..AxisInfo::UNKNOWN
                }
            }
            Op::Binary(BinaryOp::And | BinaryOp::Or, a, b) => AxisInfo {
                constancy: g(a).constancy.min(g(b).constancy),
                ..AxisInfo::UNKNOWN
            },
            _ => return None,
        })
    }
}

fn is_int_or_ptr(e: Elem) -> bool {
    match e {
        Elem::Ptr(_) => true,
        Elem::Scalar(d) => d.is_int(),
    }
}

/// Facts after repeating size-1 dimensions of `src` to `dst`.
fn broadcast(src: &[u32], dst: &[u32], i: AxisInfo) -> AxisInfo {
    // Product of the trailing dimensions that are repeated, and of the trailing ones that are not.
    let repeated: u32 = dst
        .iter()
        .zip(src)
        .rev()
        .take_while(|(d, s)| d != s)
        .map(|(d, _)| d)
        .product();
    if repeated > 1 {
        return AxisInfo {
            contig: 1,
            constancy: repeated,
            div: i.div_at(1),
        };
    }
    let kept: u32 = dst
        .iter()
        .zip(src)
        .rev()
        .take_while(|(d, s)| d == s)
        .map(|(d, _)| d)
        .product();
    AxisInfo {
        contig: i.contig.min(kept),
        constancy: i.constancy.min(kept),
        div: i.div_at(i.contig.min(kept)),
    }
}
