//! Data-parallel training: how a step's micro-batches are shared among ranks, which rank owns
//! which tensor's optimizer state under ZeRO-1, and the buckets gradients are reduced in.
//!
//! A step is the *global* step of the plan (`--tokens-per-step` is the budget of all ranks
//! together). Every rank computes the same plan on the host, so each knows the whole step's
//! predicted-token count, the loss's normaliser, without a collective; rank `r` trains only
//! its [`shard`] of the step's micro-batches. After its backward the gradients are summed
//! across ranks bucket by bucket ([`Buckets`]): all-reduced (plain data parallelism), or
//! reduced to each tensor's owner (ZeRO-1, whose owner alone holds the tensor's masters and
//! moments, updates it, and broadcasts the new weights).

use std::sync::Arc;

use kiln_runtime::collective::Communicator;
use kiln_runtime::Buffer;

use crate::model::GradsReady;
use crate::optim::Optimizer;
use crate::{Error, Result};

/// How optimizer state is split across ranks (`--zero`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Zero {
    /// Every rank holds all of it and applies every update (plain data parallelism).
    #[default]
    Off,
    /// ZeRO stage 1: each tensor's masters and moments live on one rank, its owner.
    One,
}

impl std::str::FromStr for Zero {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Zero, String> {
        match s {
            "0" => Ok(Zero::Off),
            "1" => Ok(Zero::One),
            _ => Err(format!(
                "unknown ZeRO stage `{s}` (0: plain data parallel, 1: sharded optimizer state)"
            )),
        }
    }
}

impl std::fmt::Display for Zero {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Zero::Off => "0",
            Zero::One => "1",
        })
    }
}

/// Gradient bytes per bucket by default (PyTorch DDP's 25 MB).
pub const BUCKET_BYTES: usize = 25 << 20;

/// A trainer's place in a data-parallel run.
#[derive(Clone)]
pub struct DataParallel {
    pub comm: Arc<dyn Communicator>,
    pub zero: Zero,
    /// Gradient bytes per bucket (at least one tensor's).
    pub bucket_bytes: usize,
}

impl DataParallel {
    /// A run over `comm`'s ranks with `zero`, in buckets of [`BUCKET_BYTES`].
    pub fn new(comm: Arc<dyn Communicator>, zero: Zero) -> DataParallel {
        DataParallel {
            comm,
            zero,
            bucket_bytes: BUCKET_BYTES,
        }
    }

    pub fn rank(&self) -> usize {
        self.comm.rank()
    }

    pub fn world_size(&self) -> usize {
        self.comm.world_size()
    }
}

/// The micro-batches (indices into `tokens`, in order) that rank `rank` of `world` trains,
/// given each micro-batch's tokens: greedily by decreasing size to the least-loaded rank (ties
/// to the lower index and rank), so every micro-batch goes to exactly one rank and the ranks'
/// token loads differ by at most one micro-batch. With more ranks than micro-batches some ranks
/// get none. Every rank computes the same assignment.
pub fn shard(tokens: &[usize], world: usize, rank: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..tokens.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(tokens[i]), i));
    let mut load = vec![0usize; world.max(1)];
    let mut mine = vec![];
    for i in order {
        let least = (0..load.len()).min_by_key(|&r| (load[r], r)).unwrap_or(0);
        load[least] += tokens[i];
        if least == rank {
            mine.push(i);
        }
    }
    mine.sort_unstable();
    mine
}

/// The owner rank of each tensor (by element count, in order) under ZeRO-1: greedily by
/// decreasing size to the least-loaded rank, so each rank's share of the state is within one
/// tensor of `1 / world` (whole tensors are owned, as torch's `ZeroRedundancyOptimizer` does).
pub fn owners(lens: &[usize], world: usize) -> Vec<usize> {
    let mut owner = vec![0; lens.len()];
    for rank in 0..world.max(1) {
        for i in shard(lens, world, rank) {
            owner[i] = rank;
        }
    }
    owner
}

/// Where in the backward a trained tensor's gradient becomes final, from its name (Hugging
/// Face's, or PEFT's for adapters).
pub fn ready_point(name: &str) -> Result<GradsReady> {
    if let Some(rest) = name.split("layers.").nth(1) {
        let layer = rest.split('.').next().unwrap_or("");
        return layer
            .parse()
            .map(GradsReady::Layer)
            .map_err(|_| Error::Invalid(format!("`{name}`: no layer number after `layers.`")));
    }
    match name {
        "model.embed_tokens.weight" => Ok(GradsReady::Embedding),
        "model.norm.weight" => Ok(GradsReady::Norm),
        "lm_head.weight" => Ok(GradsReady::Output),
        _ => Err(Error::Invalid(format!(
            "`{name}`: not a tensor the backward produces a gradient for"
        ))),
    }
}

/// The order the backward reaches its points in: output, norm, last layer .. first, embedding.
fn backward_order(point: GradsReady) -> (u8, std::cmp::Reverse<usize>) {
    match point {
        GradsReady::Output => (0, std::cmp::Reverse(0)),
        GradsReady::Norm => (1, std::cmp::Reverse(0)),
        GradsReady::Layer(l) => (2, std::cmp::Reverse(l)),
        GradsReady::Embedding => (3, std::cmp::Reverse(0)),
    }
}

/// A group of gradients summed across ranks in one collective call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bucket {
    /// Indices of its tensors, in the optimizer's order.
    pub tensors: Vec<usize>,
    /// The backward point after which all of them are final.
    pub ready: GradsReady,
}

/// The gradients in buckets of about `bucket_bytes`, in the order the backward finishes them
/// (reverse layer order), each closed at a [`GradsReady`] point: once the backward passes
/// that point, the bucket's reduction can start while the backward goes on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Buckets {
    pub buckets: Vec<Bucket>,
}

impl Buckets {
    /// Buckets of the tensors named `names` with `lens` f32 elements.
    pub fn new(names: &[String], lens: &[usize], bucket_bytes: usize) -> Result<Buckets> {
        let mut tensors: Vec<(GradsReady, usize)> = names
            .iter()
            .enumerate()
            .map(|(i, n)| Ok((ready_point(n)?, i)))
            .collect::<Result<_>>()?;
        tensors.sort_by_key(|&(p, i)| (backward_order(p), i));
        let mut buckets = vec![];
        let mut current: Vec<usize> = vec![];
        let mut bytes = 0;
        for (k, &(point, i)) in tensors.iter().enumerate() {
            current.push(i);
            bytes += lens[i] * 4;
            let point_ends = tensors.get(k + 1).is_none_or(|&(next, _)| next != point);
            if point_ends && (bytes >= bucket_bytes || k + 1 == tensors.len()) {
                buckets.push(Bucket {
                    tensors: std::mem::take(&mut current),
                    ready: point,
                });
                bytes = 0;
            }
        }
        Ok(Buckets { buckets })
    }

    /// The buckets that close at `point`.
    pub fn ready_at(&self, point: GradsReady) -> impl Iterator<Item = &Bucket> {
        self.buckets.iter().filter(move |b| b.ready == point)
    }
}

/// Sums bucket `bucket`'s gradients across ranks: all-reduced (every rank gets the sum) or,
/// with `owners` (ZeRO-1), reduced to each tensor's owner, one call per owner. `grads` are all
/// the trained tensors' gradients, in the optimizer's order.
pub fn reduce_bucket(
    comm: &dyn Communicator,
    bucket: &Bucket,
    owners: Option<&[usize]>,
    grads: &mut [&mut Buffer],
) -> Result<()> {
    let what = format!("the gradients finished at {:?}", bucket.ready);
    let mut picked: Vec<Option<&mut Buffer>> = grads.iter_mut().map(|g| Some(&mut **g)).collect();
    match owners {
        None => {
            let mut bufs: Vec<&mut Buffer> = bucket
                .tensors
                .iter()
                .filter_map(|&i| picked.get_mut(i).and_then(Option::take))
                .collect();
            comm.all_reduce_sum(&mut bufs, &what)?;
        }
        Some(owners) => {
            for root in 0..comm.world_size() {
                let mut bufs: Vec<&mut Buffer> = bucket
                    .tensors
                    .iter()
                    .filter(|&&i| owners[i] == root)
                    .filter_map(|&i| picked.get_mut(i).and_then(Option::take))
                    .collect();
                if !bufs.is_empty() {
                    comm.reduce_sum(&mut bufs, root, &what)?;
                }
            }
        }
    }
    Ok(())
}

/// A trainer's part in a data-parallel run: its communicator, the buckets and, under ZeRO-1,
/// each tensor's owner.
pub(crate) struct RankState {
    pub dp: DataParallel,
    buckets: Buckets,
    owners: Option<Vec<usize>>,
}

impl RankState {
    /// The state for tensors `names` of `lens` elements (the optimizer's order), and whether
    /// this rank owns each under ZeRO-1 (all of them without it).
    pub fn new(
        dp: DataParallel,
        names: &[String],
        lens: &[usize],
    ) -> Result<(RankState, Vec<bool>)> {
        let buckets = Buckets::new(names, lens, dp.bucket_bytes)?;
        let owners = (dp.zero == Zero::One).then(|| owners(lens, dp.world_size()));
        let mine = match &owners {
            Some(o) => o.iter().map(|&r| r == dp.rank()).collect(),
            None => vec![true; lens.len()],
        };
        Ok((
            RankState {
                dp,
                buckets,
                owners,
            },
            mine,
        ))
    }

    /// Whether the optimizer state is sharded (ZeRO-1).
    pub fn sharded(&self) -> Option<&[usize]> {
        self.owners.as_deref()
    }

    /// Sums the buckets that close at `point` across ranks.
    pub fn reduce_at(&self, point: GradsReady, grads: &mut [&mut Buffer]) -> Result<()> {
        for bucket in self.buckets.ready_at(point) {
            reduce_bucket(&*self.dp.comm, bucket, self.owners.as_deref(), grads)?;
        }
        Ok(())
    }

    /// Sums every bucket across ranks, in order (a rank that ran no backward this step).
    pub fn reduce_all(&self, grads: &mut [&mut Buffer]) -> Result<()> {
        for bucket in &self.buckets.buckets {
            reduce_bucket(&*self.dp.comm, bucket, self.owners.as_deref(), grads)?;
        }
        Ok(())
    }

    /// ZeRO-1's update, once the gradients are reduced to their owners: each rank sums the
    /// squares of the gradients it owns, the partial sums are all-reduced (so every rank
    /// computes the same norm, clip and skip), each owner updates its tensors and broadcasts
    /// their new weights (`params`, the model's tensors in the optimizer's order).
    pub fn sharded_update(
        &self,
        ops: &kiln_ops::Ops,
        optimizer: &mut Optimizer,
        params: &mut [&mut Buffer],
        grads: &[&Buffer],
        step: usize,
        skip: bool,
    ) -> Result<()> {
        let comm = &*self.dp.comm;
        let owners = self
            .owners
            .as_deref()
            .ok_or_else(|| Error::Invalid("a sharded update without ZeRO-1".into()))?;
        comm.join()?;
        optimizer.add_grad_norms(ops, grads)?;
        comm.all_reduce_sum(
            &mut [optimizer.norm_partials_mut()],
            "the gradient norm's partial sums",
        )?;
        comm.join()?;
        optimizer.finish_step(ops, params, grads, step, skip)?;
        if skip {
            return Ok(());
        }
        let mut params: Vec<Option<&mut Buffer>> =
            params.iter_mut().map(|p| Some(&mut **p)).collect();
        for root in 0..comm.world_size() {
            let mut theirs: Vec<&mut Buffer> = owners
                .iter()
                .zip(params.iter_mut())
                .filter(|(&o, _)| o == root)
                .filter_map(|(_, p)| p.take())
                .collect();
            if !theirs.is_empty() {
                comm.broadcast(&mut theirs, root, &format!("rank {root}'s updated weights"))?;
            }
        }
        Ok(comm.join()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_follow_the_backward_and_close_at_ready_points() {
        let names: Vec<String> = [
            "model.embed_tokens.weight",
            "model.layers.0.a",
            "model.layers.0.b",
            "model.layers.1.a",
            "model.norm.weight",
            "lm_head.weight",
        ]
        .map(String::from)
        .to_vec();
        let lens = [100, 20, 20, 20, 1, 100];
        // 80 bytes a bucket: lm_head alone, then norm + layer 1 + layer 0, then the embedding.
        let b = Buckets::new(&names, &lens, 80).unwrap();
        let got: Vec<(Vec<usize>, GradsReady)> = b
            .buckets
            .iter()
            .map(|b| (b.tensors.clone(), b.ready))
            .collect();
        assert_eq!(
            got,
            vec![
                (vec![5], GradsReady::Output),
                (vec![4, 3], GradsReady::Layer(1)),
                (vec![1, 2], GradsReady::Layer(0)),
                (vec![0], GradsReady::Embedding),
            ]
        );
        let one = Buckets::new(&names, &lens, usize::MAX).unwrap();
        assert_eq!(one.buckets.len(), 1);
        assert_eq!(one.buckets[0].ready, GradsReady::Embedding);
        assert!(ready_point("model.layers.x.q").is_err());
    }

    #[test]
    fn owners_balance_whole_tensors() {
        let lens = [50, 10, 10, 10, 10, 10];
        assert_eq!(owners(&lens, 2), vec![0, 1, 1, 1, 1, 1]);
        assert_eq!(owners(&lens, 1), vec![0; 6]);
        assert!("2".parse::<Zero>().is_err());
    }
}
