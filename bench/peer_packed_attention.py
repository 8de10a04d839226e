#!/usr/bin/env python3
"""PyTorch peers for causal attention over a pack of variable-length sequences.

The lengths are the ones `kiln bench ops` uses (same generator): 8,192 tokens in sequences of
1 to 1,024 tokens, 14 query / 2 key-value heads, head dim 64, bf16. Two peers:
  - per-sequence SDPA (flash backend): one call per sequence, no padding;
  - padded batch: every sequence padded to the longest, one SDPA call with a causal + padding mask
    (what a trainer without packing does); time counts padding work, tokens/s counts real tokens.
One JSON line per measurement: median milliseconds of CUDA events around each call.
"""
import json
import torch
import torch.nn.functional as F
from torch.nn.attention import sdpa_kernel, SDPBackend

M64 = (1 << 64) - 1


def packed_lengths(tokens=8192, longest=1024):
    left, x, out = tokens, 0x2545F4914F6CDD1D, []
    while left > 0:
        x ^= (x << 13) & M64
        x ^= x >> 7
        x ^= (x << 17) & M64
        n = int(longest ** ((x % 1000) / 1000.0))
        n = max(1, min(n, left))
        out.append(n)
        left -= n
    return out


def bench(fn, iters=30, warm=5):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(iters):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record(); fn(); e.record(); torch.cuda.synchronize()
        ts.append(s.elapsed_time(e))
    ts.sort()
    return ts[len(ts) // 2]


def main(hq=14, hk=2, d=64):
    lens = packed_lengths()
    dev, bf = "cuda", torch.bfloat16
    t = sum(lens)
    q = torch.randn(t, hq, d, device=dev, dtype=bf, requires_grad=True)
    k = torch.randn(t, hk, d, device=dev, dtype=bf, requires_grad=True)
    v = torch.randn(t, hk, d, device=dev, dtype=bf, requires_grad=True)
    starts = [sum(lens[:i]) for i in range(len(lens))]

    def per_sequence(backward):
        outs = []
        for s, n in zip(starts, lens):
            qs = q[s:s + n].transpose(0, 1)[None]
            ks = k[s:s + n].transpose(0, 1).repeat_interleave(hq // hk, 0)[None]
            vs = v[s:s + n].transpose(0, 1).repeat_interleave(hq // hk, 0)[None]
            outs.append(F.scaled_dot_product_attention(qs, ks, vs, is_causal=True))
        if backward:
            torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])

    longest = max(lens)
    qp = torch.zeros(len(lens), hq, longest, d, device=dev, dtype=bf)
    kp = torch.zeros(len(lens), hq, longest, d, device=dev, dtype=bf)
    for i, (s, n) in enumerate(zip(starts, lens)):
        qp[i, :, :n] = q[s:s + n].detach().transpose(0, 1)
        kp[i, :, :n] = k[s:s + n].detach().transpose(0, 1).repeat_interleave(hq // hk, 0)
    qp.requires_grad_(); kp.requires_grad_()
    vp = kp.detach().clone().requires_grad_()
    pos = torch.arange(longest, device=dev)
    valid = pos[None, :] < torch.tensor(lens, device=dev)[:, None]
    mask = (pos[None, :, None] >= pos[None, None, :]) & valid[:, None, :]

    def padded(backward):
        o = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=mask[:, None])
        if backward:
            o.backward(torch.ones_like(o))

    for name, fn in [("per_sequence_sdpa_flash", per_sequence), ("padded_sdpa", padded)]:
        for backward in (False, True):
            with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
                ms = bench(lambda: fn(backward))
            print(json.dumps(dict(op="attn_fwd_bwd" if backward else "attn_fwd", peer=name, ms=round(ms, 4),
                                  sequences=len(lens), tokens=t, longest=longest)), flush=True)


if __name__ == "__main__":
    main()
