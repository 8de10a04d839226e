#!/usr/bin/env python3
"""Peer of `kiln bench train --gpus N`: PyTorch DistributedDataParallel, run under
`torchrun --nproc_per_node N bench/peer_ddp.py ...`.

The model, its config and the batches are peer_hf.py's (the Qwen2.5-0.5B architecture with
random weights, bf16, SDPA attention; fused AdamW; clipping at 1), imported from the same
folder (../shared/bench/peer_hf.py, which scripts/gpu-bundle copies next to this file). Each
rank trains --batch x --seq tokens a step (its own seeded batches), DDP all-reducing the
gradients in its default 25 MB buckets during the backward. `--zero 1` swaps the optimizer for
torch's ZeroRedundancyOptimizer (AdamW state sharded across ranks). Rank 0 prints one JSON line:
the global tokens/s (all ranks' real tokens over the slowest rank's time), per GPU, and the
largest peak memory of any rank.
"""
import argparse, json, os, sys, time

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peer_hf import make_batches, qwen05_config  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--peer", default="hf", choices=["hf", "compile"])
    p.add_argument("--mode", default="full", choices=["full", "lora"])
    p.add_argument("--data", default="fixed", choices=["fixed", "varlen"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--layers", type=int, default=None, help="fewer layers for a smoke test")
    p.add_argument("--zero", type=int, default=0, choices=[0, 1])
    args = p.parse_args()

    dist.init_process_group("nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    local = int(os.environ.get("LOCAL_RANK", rank))
    torch.cuda.set_device(local)
    dev = torch.device("cuda", local)
    torch.manual_seed(0)  # the same initial weights on every rank (DDP also broadcasts them)
    gen = torch.Generator().manual_seed(1234 + rank)

    from transformers import Qwen2ForCausalLM
    cfg = qwen05_config(args.layers)
    cfg._attn_implementation = "sdpa"
    model = Qwen2ForCausalLM(cfg).to(dtype=torch.bfloat16, device=dev)
    model.train()
    if args.mode == "lora":
        from peft import LoraConfig, get_peft_model
        lcfg = LoraConfig(r=32, lora_alpha=64, lora_dropout=0.0, bias="none",
                          target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                          "gate_proj", "up_proj", "down_proj"])
        model = get_peft_model(model, lcfg)
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local])
    trainable = [p for p in ddp.parameters() if p.requires_grad]
    lr = 2e-4 if args.mode == "lora" else 1e-5
    if args.zero:
        from torch.distributed.optim import ZeroRedundancyOptimizer
        opt = ZeroRedundancyOptimizer(trainable, optimizer_class=torch.optim.AdamW, lr=lr,
                                      weight_decay=0.0 if args.mode == "lora" else 0.01)
    else:
        opt = torch.optim.AdamW(trainable, lr=lr,
                                weight_decay=0.0 if args.mode == "lora" else 0.01, fused=True)
    fwd = torch.compile(ddp) if args.peer == "compile" else ddp
    batches = make_batches(args, gen)

    def step(b):
        ids, mask, labels, real = b
        ids, mask, labels = (t.to(dev, non_blocking=True) for t in (ids, mask, labels))
        out = fwd(input_ids=ids, attention_mask=mask, labels=labels)
        out.loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out.loss.detach(), gn.detach(), real

    torch.cuda.reset_peak_memory_stats()
    for b in batches[:args.warmup]:
        step(b)
    torch.cuda.synchronize()
    dist.barrier()
    t0 = time.perf_counter()
    tokens = 0
    losses = []
    for b in batches[args.warmup:]:
        loss, _, real = step(b)
        losses.append(loss)
        tokens += real
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    stats = torch.tensor([tokens, dt, torch.cuda.max_memory_allocated()], dtype=torch.float64,
                         device=dev)
    total = stats.clone()
    dist.all_reduce(total[:1], op=dist.ReduceOp.SUM)
    dist.all_reduce(total[1:], op=dist.ReduceOp.MAX)
    if rank == 0:
        tps = float(total[0]) / float(total[1])
        rec = dict(peer=f"ddp-{args.peer}", mode=args.mode, data=args.data, gpus=world,
                   zero=args.zero, batch=args.batch, seq=args.seq, steps=args.steps,
                   tokens_per_s=round(tps, 1), tokens_per_s_per_gpu=round(tps / world, 1),
                   step_ms=round(1000 * float(total[1]) / args.steps, 2),
                   peak_mem_gib=round(float(total[2]) / 2**30, 2),
                   loss_first=round(float(losses[0]), 4), loss_last=round(float(losses[-1]), 4),
                   torch=torch.__version__, gpu=torch.cuda.get_device_name())
        print(json.dumps(rec), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
