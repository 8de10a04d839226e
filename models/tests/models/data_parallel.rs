//! Data parallelism on CPU devices, ranks as threads over the in-process stand-in for NCCL
//! (`LocalGroup`): the step's micro-batches are shared so that every bin is trained exactly once
//! per epoch for any world size; N ranks give the same losses, gradient norms and weights as
//! one rank with the same global batch (full fine-tuning and LoRA+); ZeRO-1 gives the same as
//! plain data parallelism with about 1/N of the optimizer state per rank; a checkpoint written
//! by 2 ranks resumes on 1 and one written by 1 on 2; only rank 0 writes files. On GPUs (the
//! `dp_gpu_` tests): 2 GPUs against 1, ZeRO-1 against DP, resume 2 → 1, which skip on fewer
//! than 2 CUDA devices.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use kiln_models::adapters::{LoraSpec, Target};
use kiln_models::batch::Sequence;
use kiln_models::data::TokenStore;
use kiln_models::data_parallel::{self, DataParallel, Zero};
use kiln_models::data_plan::{Cursor, DataPlan, Examples, LongExamples};
use kiln_models::metrics::{MetricsLog, StepMetrics};
use kiln_models::precision::Precision;
use kiln_models::trainer::{Length, LoraOptions, TrainOptions, Trainer};
use kiln_models::HostTensor;
use kiln_ops::Ops;
use kiln_runtime::collective::{Communicator, LocalGroup};

use crate::hf::cpu_ops;
use crate::train::{options, random_data, rel, trainer_on};

#[test]
fn sharding_trains_every_bin_exactly_once_per_epoch_for_any_world_size() {
    let lengths: Vec<usize> = random_data(60, 100, 21)
        .iter()
        .map(|s| s.input_ids.len())
        .collect();
    let seqs: Vec<Sequence> = lengths
        .iter()
        .map(|&n| Sequence::new((0..n as u32).collect()))
        .collect();
    let store = Arc::new(TokenStore::from_sequences(&seqs).unwrap());
    let (examples, _) = Examples::prepare(store, 16, LongExamples::Split, "d").unwrap();
    for budget in [16, 40, 100, 1000] {
        let plan = DataPlan::new(examples.clone(), budget, 16, 5).unwrap();
        for world in 1..=8 {
            for epoch in 0..2 {
                let bins = plan.bins(epoch);
                let mut trained = vec![0usize; bins.len()];
                let mut cursor = Cursor { epoch, position: 0 };
                while cursor.epoch == epoch {
                    let step = plan.step(cursor);
                    let tokens: Vec<usize> = step
                        .micro_batches
                        .iter()
                        .map(|b| b.iter().map(|&i| examples.example_len(i)).sum())
                        .collect();
                    let mut loads = vec![];
                    for rank in 0..world {
                        let mine = data_parallel::shard(&tokens, world, rank);
                        loads.push(mine.iter().map(|&k| tokens[k]).sum::<usize>());
                        for k in mine {
                            trained[cursor.position + k] += 1;
                        }
                    }
                    // Balanced to within one micro-batch.
                    let (lo, hi) = (loads.iter().min().unwrap(), loads.iter().max().unwrap());
                    assert!(hi - lo <= *tokens.iter().max().unwrap());
                    cursor = step.next;
                }
                assert!(
                    trained.iter().all(|&n| n == 1),
                    "budget {budget}, world {world}, epoch {epoch}: {trained:?}"
                );
            }
        }
    }
}

/// What a rank saw: its per-step metrics, the final trained tensors (rank 0's gather under
/// ZeRO-1) and its optimizer state's bytes.
struct RankRun {
    metrics: Vec<StepMetrics>,
    tensors: Vec<(String, HostTensor)>,
    optimizer_bytes: usize,
}

#[derive(Clone)]
struct Case {
    model: &'static str,
    precision: Precision,
    options: TrainOptions,
    data: Vec<Sequence>,
}

impl Case {
    fn trainer(&self, ops: &Arc<Ops>) -> Trainer {
        trainer_on(
            ops,
            self.model,
            self.precision,
            self.options.clone(),
            self.data.clone(),
        )
    }
}

fn lora_plus() -> LoraOptions {
    LoraOptions {
        spec: LoraSpec {
            rank: 4,
            alpha: 8.0,
            rslora: false,
            dropout: 0.1,
            targets: Target::ALL.to_vec(),
        },
        plus_ratio: 16.0,
        adapter: None,
    }
}

fn full_f32(tokens_per_step: usize) -> Case {
    Case {
        model: "llama_gqa_tied",
        precision: Precision::F32,
        options: options(None, 4, tokens_per_step, 16),
        data: random_data(20, 256, 5),
    }
}

fn lora_f32(tokens_per_step: usize) -> Case {
    Case {
        model: "qwen2_gqa_bias_untied",
        precision: Precision::F32,
        options: options(Some(lora_plus()), 4, tokens_per_step, 16),
        data: random_data(20, 320, 6),
    }
}

/// Runs `steps` steps (from `resume`, if given) on `world` threads, each a rank with its own
/// trainer on the CPU; small buckets, so that several reductions interleave with the backward.
fn run_ranks(
    case: &Case,
    world: usize,
    zero: Zero,
    steps: usize,
    resume: Option<&Path>,
    save: Option<&Path>,
) -> Vec<RankRun> {
    let comms = std::sync::Mutex::new(
        LocalGroup::ranks(world, Duration::from_secs(120))
            .into_iter()
            .map(Some)
            .collect::<Vec<_>>(),
    );
    let make = move |rank: usize| -> (Arc<Ops>, Arc<dyn Communicator>) {
        let comm = comms.lock().unwrap()[rank].take().unwrap();
        (cpu_ops(), Arc::new(comm))
    };
    run_ranks_on(case, world, make, zero, steps, resume, save)
}

/// [`run_ranks`] with each rank's device and communicator from `make(rank)`, called on the
/// rank's thread (NCCL's ranks must join concurrently).
fn run_ranks_on(
    case: &Case,
    world: usize,
    make: impl Fn(usize) -> (Arc<Ops>, Arc<dyn Communicator>) + Send + Sync + 'static,
    zero: Zero,
    steps: usize,
    resume: Option<&Path>,
    save: Option<&Path>,
) -> Vec<RankRun> {
    let make = Arc::new(make);
    let threads: Vec<_> = (0..world)
        .map(|rank| {
            let case = case.clone();
            let make = make.clone();
            let resume = resume.map(Path::to_path_buf);
            let save = save.map(Path::to_path_buf);
            std::thread::spawn(move || {
                let (ops, comm) = make(rank);
                let mut t = case.trainer(&ops);
                let mut dp = DataParallel::new(comm, zero);
                dp.bucket_bytes = 4096;
                t.set_data_parallel(dp).unwrap();
                if let Some(dir) = &resume {
                    t.resume(dir).unwrap();
                }
                let metrics = (0..steps).map(|_| t.step().unwrap()).collect();
                if let Some(out) = &save {
                    t.save_checkpoint(out).unwrap();
                }
                RankRun {
                    metrics,
                    tensors: t.trained_tensors().unwrap(),
                    optimizer_bytes: t.optimizer_bytes(),
                }
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

fn single(case: &Case, steps: usize) -> (Vec<StepMetrics>, Trainer) {
    single_on(&cpu_ops(), case, steps)
}

fn single_on(ops: &Arc<Ops>, case: &Case, steps: usize) -> (Vec<StepMetrics>, Trainer) {
    let mut t = case.trainer(ops);
    let metrics = (0..steps).map(|_| t.step().unwrap()).collect();
    (metrics, t)
}

fn assert_same_steps(label: &str, got: &[StepMetrics], want: &[StepMetrics], tol: f64) {
    assert_eq!(got.len(), want.len(), "{label}");
    for (g, w) in got.iter().zip(want) {
        assert_eq!(
            (g.step, g.tokens, g.input_tokens, g.micro_batches),
            (w.step, w.tokens, w.input_tokens, w.micro_batches),
            "{label}: step {}'s counts",
            w.step
        );
        assert!(
            rel(g.loss, w.loss) < tol,
            "{label}: step {} loss {} vs {}",
            w.step,
            g.loss,
            w.loss
        );
        assert!(
            rel(g.grad_norm, w.grad_norm) < tol,
            "{label}: step {} grad norm {} vs {}",
            w.step,
            g.grad_norm,
            w.grad_norm
        );
        assert_eq!(g.skipped, w.skipped, "{label}: step {}", w.step);
    }
}

fn assert_same_tensors(label: &str, got: &[(String, HostTensor)], want: &[(String, HostTensor)]) {
    assert_close_tensors(label, got, want, 1e-5);
}

/// Every tensor of `got` within `tol` of `want`'s, relative to the tensor's largest element.
fn assert_close_tensors(
    label: &str,
    got: &[(String, HostTensor)],
    want: &[(String, HostTensor)],
    tol: f64,
) {
    assert_eq!(got.len(), want.len(), "{label}");
    for ((name, g), (wname, w)) in got.iter().zip(want) {
        assert_eq!(name, wname, "{label}");
        // Relative to the tensor's largest element: an element that is a small sum of
        // updates of either sign (LoRA+'s B: 16 × lr each) keeps their rounding.
        let scale = w.data.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let worst = g
            .data
            .iter()
            .zip(&w.data)
            .map(|(a, b)| ((a - b).abs() / b.abs().max(scale).max(1e-6)) as f64)
            .fold(0.0, f64::max);
        let at = g
            .data
            .iter()
            .zip(&w.data)
            .enumerate()
            .max_by(|x, y| {
                let d = |(a, b): (&f32, &f32)| (a - b).abs() / b.abs().max(scale).max(1e-6);
                d(x.1).total_cmp(&d(y.1))
            })
            .map(|(i, (a, b))| format!("element {i}: {a} vs {b}, tensor max {scale}"))
            .unwrap_or_default();
        assert!(worst < tol, "{label}: `{name}` differs by {worst:e} ({at})");
    }
}

#[test]
fn n_ranks_train_like_one_rank_with_the_same_global_batch() {
    // Budgets of several micro-batches a step (k per rank) and of one (ranks without any).
    for case in [full_f32(48), lora_f32(48), full_f32(16)] {
        let (want, mut t) = single(&case, 4);
        let want_tensors = t.trained_tensors().unwrap();
        assert!(want.iter().any(|m| m.micro_batches >= 3) || case.options.tokens_per_step == 16);
        for world in [2, 3] {
            let label = format!(
                "{} {} budget {}, {world} ranks",
                case.model,
                if case.options.lora.is_some() {
                    "lora+"
                } else {
                    "full"
                },
                case.options.tokens_per_step
            );
            let ranks = run_ranks(&case, world, Zero::Off, 4, None, None);
            for (rank, r) in ranks.iter().enumerate() {
                let label = format!("{label}, rank {rank}");
                assert_same_steps(&label, &r.metrics, &want, 1e-5);
                assert_same_tensors(&label, &r.tensors, &want_tensors);
            }
        }
    }
}

#[test]
fn zero_1_equals_plain_data_parallel_with_a_share_of_the_state() {
    let bf16_full = Case {
        model: "qwen2_gqa_bias_untied",
        precision: Precision::Bf16,
        options: options(None, 3, 48, 16),
        data: random_data(20, 320, 8),
    };
    for case in [bf16_full, lora_f32(48)] {
        let whole = case.trainer(&cpu_ops()).optimizer_bytes();
        for world in [2, 3] {
            let dp = run_ranks(&case, world, Zero::Off, 3, None, None);
            let zero = run_ranks(&case, world, Zero::One, 3, None, None);
            let label = format!("{} {} ZeRO-1 on {world}", case.model, case.precision);
            // The same sums in the same order: the same bits as plain data parallelism.
            for (z, d) in zero[0].metrics.iter().zip(&dp[0].metrics) {
                assert_eq!(
                    z.loss.to_bits(),
                    d.loss.to_bits(),
                    "{label}: step {}",
                    d.step
                );
                assert_eq!(z.grad_norm.to_bits(), d.grad_norm.to_bits(), "{label}");
            }
            assert_same_tensors(&label, &zero[0].tensors, &dp[0].tensors);
            // Rank 0 gathered everything; the others hold no gathered copy.
            assert!(zero[1..].iter().all(|r| r.tensors.is_empty()), "{label}");
            // Each rank holds about 1 / world of the state: within one tensor of it.
            let shares: Vec<usize> = zero.iter().map(|r| r.optimizer_bytes).collect();
            assert_eq!(shares.iter().sum::<usize>(), whole, "{label}: {shares:?}");
            // f32 moments, and f32 masters when the model computes in bf16.
            let per_element = if case.precision == Precision::F32 {
                8
            } else {
                12
            };
            let largest = dp[0]
                .tensors
                .iter()
                .map(|(_, t)| t.len() * per_element)
                .max()
                .unwrap();
            for s in &shares {
                assert!(
                    *s <= whole / world + largest,
                    "{label}: {shares:?} of {whole}"
                );
            }
            assert!(shares.iter().all(|&s| s < whole), "{label}: {shares:?}");
        }
    }
}

#[test]
fn checkpoints_resume_on_another_number_of_ranks() {
    for case in [lora_f32(48), full_f32(48)] {
        let mut straight = case.clone();
        straight.options.length = Length::Steps(6);
        let (want, _) = single(&straight, 6);
        let mut case = case;
        case.options.length = Length::Steps(6);

        // 2 ranks (ZeRO-1: the state is gathered to rank 0) → 1 rank.
        let dir = tempfile::tempdir().unwrap();
        let first = run_ranks(&case, 2, Zero::One, 3, None, Some(dir.path()));
        assert_same_steps("2 ranks, steps 1-3", &first[0].metrics, &want[..3], 1e-5);
        let checkpoint = kiln_models::checkpoint::resolve(Path::new("latest"), dir.path()).unwrap();
        let mut one = case.trainer(&cpu_ops());
        one.resume(&checkpoint).unwrap();
        assert_eq!(one.state.step, 3);
        let after: Vec<StepMetrics> = (0..3).map(|_| one.step().unwrap()).collect();
        assert_same_steps("2 → 1 ranks, steps 4-6", &after, &want[3..], 1e-5);

        // 1 rank → 2 ranks (plain data parallel).
        let dir = tempfile::tempdir().unwrap();
        let mut one = case.trainer(&cpu_ops());
        for _ in 0..3 {
            one.step().unwrap();
        }
        let checkpoint = one.save_checkpoint(dir.path()).unwrap();
        let two = run_ranks(&case, 2, Zero::Off, 3, Some(&checkpoint), None);
        for r in &two {
            assert_same_steps("1 → 2 ranks, steps 4-6", &r.metrics, &want[3..], 1e-5);
        }
    }
}

#[test]
fn only_rank_0_writes_metrics_checkpoints_and_outputs() {
    let mut case = lora_f32(48);
    case.options.save_every = 2;
    let outs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let dirs: Vec<std::path::PathBuf> = outs.iter().map(|d| d.path().join("run")).collect();
    let comms = LocalGroup::ranks(2, Duration::from_secs(120));
    let threads: Vec<_> = comms
        .into_iter()
        .zip(dirs.clone())
        .map(|(comm, out)| {
            let case = case.clone();
            std::thread::spawn(move || {
                let mut t = case.trainer(&cpu_ops());
                t.set_data_parallel(DataParallel::new(Arc::new(comm), Zero::One))
                    .unwrap();
                let mut seen = 0;
                t.run(&out, &AtomicBool::new(false), |_| seen += 1).unwrap();
                seen
            })
        })
        .collect();
    let seen: Vec<usize> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(seen, vec![4, 4], "both ranks see every step's metrics");
    let logged = MetricsLog::read(&dirs[0].join("metrics.jsonl")).unwrap();
    assert_eq!(logged.len(), 4);
    assert!(logged.last().unwrap().eval_loss.is_some());
    assert!(dirs[0].join("adapter/adapter_model.safetensors").is_file());
    assert_eq!(kiln_models::checkpoint::list(&dirs[0]).unwrap().len(), 2);
    assert!(!dirs[1].exists(), "rank 1 wrote files");
}

#[test]
fn a_stop_request_on_one_rank_stops_every_rank_after_the_same_step() {
    let mut case = lora_f32(48);
    case.options.length = Length::Steps(8);
    let outs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let dirs: Vec<std::path::PathBuf> = outs.iter().map(|d| d.path().join("run")).collect();
    let comms = LocalGroup::ranks(2, Duration::from_secs(120));
    let threads: Vec<_> = comms
        .into_iter()
        .zip(dirs.clone())
        .map(|(comm, out)| {
            let case = case.clone();
            std::thread::spawn(move || {
                let rank = comm.rank();
                let mut t = case.trainer(&cpu_ops());
                t.set_data_parallel(DataParallel::new(Arc::new(comm), Zero::One))
                    .unwrap();
                // Only rank 1 is asked to stop, once it has seen step 2.
                let stop = AtomicBool::new(false);
                let end = t
                    .run(&out, &stop, |m| {
                        if rank == 1 && m.step == 2 {
                            stop.store(true, std::sync::atomic::Ordering::SeqCst);
                        }
                    })
                    .unwrap();
                (end, t.state.step)
            })
        })
        .collect();
    let ends: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let (steps, kinds): (Vec<usize>, Vec<bool>) = ends
        .iter()
        .map(|(end, step)| {
            (
                *step,
                matches!(end, kiln_models::trainer::RunEnd::Interrupted { .. }),
            )
        })
        .unzip();
    assert_eq!(kinds, vec![true, true], "both ranks stop early");
    assert_eq!(steps[0], steps[1], "at the same step");
    assert!(steps[0] > 2 && steps[0] < 8, "{steps:?}");
    let saved: Vec<usize> = kiln_models::checkpoint::list(&dirs[0])
        .unwrap()
        .iter()
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(saved, vec![steps[0]]);
    assert_eq!(
        MetricsLog::read(&dirs[0].join("metrics.jsonl"))
            .unwrap()
            .len(),
        steps[0]
    );
}

/// The GPUs' rank makers: rank `r` on `cuda:r` with an NCCL communicator of `world` ranks, or
/// `None` after printing why the test skips.
#[cfg(feature = "cuda")]
mod gpu {
    use super::*;
    use kiln_runtime::collective::NcclCommunicator;
    use kiln_runtime::Device;

    /// The ops of `cuda:0` .. `cuda:{world - 1}`, or `None` (printing the skip) with fewer GPUs
    /// or no NCCL.
    pub fn gpus(test: &str, world: usize) -> Option<Vec<Arc<Ops>>> {
        let mut all = vec![];
        for i in 0..world {
            let ops = match i {
                0 => crate::cuda_ops().map_err(|e| e.to_string()),
                _ => Device::cuda(i)
                    .map(|d| Arc::new(Ops::new(d)))
                    .map_err(|e| e.to_string()),
            };
            match ops {
                Ok(ops) => all.push(ops),
                Err(e) if i == 0 => {
                    println!("{test}: skipped: no CUDA device ({e})");
                    return None;
                }
                Err(e) => {
                    println!("{test}: skipped: fewer than {world} CUDA devices ({e})");
                    return None;
                }
            }
        }
        if let Err(e) = kiln_runtime::collective::nccl_library() {
            println!("{test}: skipped: no NCCL ({e})");
            return None;
        }
        Some(all)
    }

    /// Runs `case` on one NCCL rank per GPU of `gpus`.
    pub fn run_nccl(
        case: &Case,
        gpus: &[Arc<Ops>],
        zero: Zero,
        steps: usize,
        resume: Option<&Path>,
        save: Option<&Path>,
    ) -> Vec<RankRun> {
        let world = gpus.len();
        let id = NcclCommunicator::unique_id().unwrap();
        let gpus = gpus.to_vec();
        let make = move |rank: usize| -> (Arc<Ops>, Arc<dyn Communicator>) {
            let ops = gpus[rank].clone();
            let comm =
                NcclCommunicator::new(ops.device(), rank, world, &id, Duration::from_secs(120))
                    .unwrap();
            (ops, Arc::new(comm))
        };
        run_ranks_on(case, world, make, zero, steps, resume, save)
    }

    fn bf16_full() -> Case {
        Case {
            model: "qwen2_gqa_bias_untied",
            precision: Precision::Bf16,
            options: options(None, 4, 48, 16),
            data: random_data(20, 320, 8),
        }
    }

    /// One NCCL rank (any machine with a GPU): the trainer's data-parallel path through NCCL
    /// gives what the plain trainer gives.
    #[test]
    fn dp_gpu_one_nccl_rank_trains_like_the_plain_trainer() {
        let Some(gpus) = gpus("dp_gpu_one_nccl_rank_trains_like_the_plain_trainer", 1) else {
            return;
        };
        // bf16 full fine-tuning adds the embedding's gradient with float atomics
        // (docs/TRAINING.md): to rounding, compounded over the steps.
        for (case, tol) in [(lora_f32(48), 1e-5), (bf16_full(), 1e-3)] {
            let (want, _) = single_on(&gpus[0], &case, 4);
            let got = run_nccl(&case, &gpus, Zero::Off, 4, None, None);
            assert_same_steps("1 NCCL rank", &got[0].metrics, &want, tol);
        }
    }

    #[test]
    fn dp_gpu_two_gpus_train_like_one_with_the_same_global_batch() {
        let Some(gpus) = gpus("dp_gpu_two_gpus_train_like_one", 2) else {
            return;
        };
        let case = bf16_full();
        let (want, _) = single_on(&gpus[0], &case, 4);
        let got = run_nccl(&case, &gpus, Zero::Off, 4, None, None);
        for (rank, r) in got.iter().enumerate() {
            // bf16 compute: the loss curve to bf16's precision.
            assert_same_steps(&format!("2 GPUs, rank {rank}"), &r.metrics, &want, 1e-2);
        }
        let case = lora_f32(48);
        let (want, _) = single_on(&gpus[0], &case, 4);
        let got = run_nccl(&case, &gpus, Zero::Off, 4, None, None);
        assert_same_steps("2 GPUs, LoRA+ f32", &got[0].metrics, &want, 1e-4);
    }

    #[test]
    fn dp_gpu_zero_1_equals_plain_data_parallel() {
        let Some(gpus) = gpus("dp_gpu_zero_1_equals_plain_data_parallel", 2) else {
            return;
        };
        // Float atomics in the loss total and, in full fine-tuning, the embedding's gradient
        // (docs/TRAINING.md): to rounding, not bits.
        for (case, tol) in [(bf16_full(), 1e-3), (lora_f32(48), 1e-4)] {
            let dp = run_nccl(&case, &gpus, Zero::Off, 4, None, None);
            let zero = run_nccl(&case, &gpus, Zero::One, 4, None, None);
            assert_same_steps("ZeRO-1 against DP", &zero[0].metrics, &dp[0].metrics, tol);
            assert_close_tensors("ZeRO-1 against DP", &zero[0].tensors, &dp[0].tensors, tol);
            let whole = dp[0].optimizer_bytes;
            let shares: Vec<usize> = zero.iter().map(|r| r.optimizer_bytes).collect();
            assert_eq!(shares.iter().sum::<usize>(), whole);
            println!("ZeRO-1 optimizer state per GPU: {shares:?} bytes of {whole}");
        }
    }

    #[test]
    fn dp_gpu_a_checkpoint_of_two_gpus_resumes_on_one() {
        let Some(gpus) = gpus("dp_gpu_a_checkpoint_of_two_gpus_resumes_on_one", 2) else {
            return;
        };
        let mut case = lora_f32(48);
        case.options.length = Length::Steps(6);
        let (want, _) = single_on(&gpus[0], &case, 6);
        let dir = tempfile::tempdir().unwrap();
        let first = run_nccl(&case, &gpus, Zero::One, 3, None, Some(dir.path()));
        assert_same_steps("2 GPUs, steps 1-3", &first[0].metrics, &want[..3], 1e-4);
        let checkpoint = kiln_models::checkpoint::resolve(Path::new("latest"), dir.path()).unwrap();
        let mut one = case.trainer(&gpus[0]);
        one.resume(&checkpoint).unwrap();
        let after: Vec<StepMetrics> = (0..3).map(|_| one.step().unwrap()).collect();
        assert_same_steps("2 → 1 GPUs, steps 4-6", &after, &want[3..], 1e-4);
    }
}
