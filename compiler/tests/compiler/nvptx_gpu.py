"""Runs the PTX dumped by the nvptx tests (KILN_PTX_DUMP=dir) on a GPU, against torch.

python3 nvptx_gpu.py DIR [sm_90]   -- needs torch with CUDA; loads PTX through the driver API.
"""
import ctypes
import math
import sys

import torch

DIR = sys.argv[1]
ARCH = sys.argv[2] if len(sys.argv) > 2 else "sm_90"
torch.zeros(1, device="cuda")  # makes the primary context current
cuda = ctypes.CDLL("libcuda.so.1")
modules = {}


def ok(r, what):
    if r != 0:
        raise RuntimeError(f"{what}: CUDA error {r}")


def function(name, kind):
    key = (name, kind)
    if key not in modules:
        ptx = open(f"{DIR}/{name}.{ARCH}.{kind}.ptx", "rb").read() + b"\0"
        mod = ctypes.c_void_p()
        ok(cuda.cuModuleLoadData(ctypes.byref(mod), ptx), f"load {name}")
        fn = ctypes.c_void_p()
        ok(cuda.cuModuleGetFunction(ctypes.byref(fn), mod, name.encode()), name)
        modules[key] = fn
    return modules[key]


def launch(name, kind, grid, args):
    fn = function(name, kind)
    cargs = []
    for a in args:
        if isinstance(a, torch.Tensor):
            cargs.append(ctypes.c_uint64(a.data_ptr()))
        elif isinstance(a, tuple):
            cargs.append(a[1](a[0]))
        elif isinstance(a, float):
            cargs.append(ctypes.c_float(a))
        else:
            cargs.append(ctypes.c_int32(a))
    params = (ctypes.c_void_p * len(cargs))(*[ctypes.cast(ctypes.byref(c), ctypes.c_void_p) for c in cargs])
    g = list(grid) + [1] * (3 - len(grid))
    ok(cuda.cuLaunchKernel(fn, g[0], g[1], g[2], 128, 1, 1, 0, None, params, None), f"launch {name}")
    torch.cuda.synchronize()


I64 = ctypes.c_int64
failures = []


def check(what, got, want, atol=0.0, rtol=0.0):
    good = torch.allclose(got.float(), want.float(), atol=atol, rtol=rtol, equal_nan=True)
    err = (got.float() - want.float()).abs().nan_to_num().max().item() if got.numel() else 0
    print(f"{'ok  ' if good else 'FAIL'} {what}: max abs err {err:.3g}")
    if not good:
        failures.append(what)


dev = "cuda"
torch.manual_seed(0)
for kind in ["plain", "aligned"]:
    # add: masked elementwise, bf16.
    for n in ([1000, 4096] if kind == "plain" else [4096]):
        a = torch.randn(n, device=dev, dtype=torch.bfloat16)
        b = torch.randn(n, device=dev, dtype=torch.bfloat16)
        out = torch.full((n + 64,), 7.0, device=dev, dtype=torch.bfloat16)
        launch("add", kind, [math.ceil(n / 1024)], [a, b, out, (n, I64)])
        check(f"add n={n} {kind}", out[:n], (a.float() + b.float()).bfloat16())
        check(f"add tail untouched n={n} {kind}", out[n:], torch.full((64,), 7.0, device=dev))
    # rmsnorm_fwd: row reduction.
    for n in ([896, 1024] if kind == "plain" else [1024]):
        rows = 8
        x = torch.randn(rows, n, device=dev, dtype=torch.bfloat16)
        w = torch.randn(n, device=dev, dtype=torch.bfloat16)
        y = torch.empty_like(x)
        rstd = torch.empty(rows, device=dev)
        launch("rmsnorm_fwd", kind, [rows], [x, w, y, rstd, n, 1e-6])
        r = torch.rsqrt(x.float().pow(2).mean(-1) + 1e-6)
        check(f"rmsnorm rstd n={n} {kind}", rstd, r, rtol=1e-5)
        check(f"rmsnorm y n={n} {kind}", y, (x.float() * r[:, None] * w.float()).bfloat16(), atol=2e-2, rtol=1e-2)
    # cross_entropy_fwd: for loop with online softmax.
    rows, vocab = 4, 10000 if kind == "plain" else 8192
    logits = (torch.randn(rows, vocab, device=dev) * 3).bfloat16()
    labels = torch.tensor([3, -100, vocab - 1, 17], device=dev, dtype=torch.int32)
    loss = torch.empty(rows, device=dev)
    lse = torch.empty(rows, device=dev)
    launch("cross_entropy_fwd", kind, [rows], [logits, labels, loss, lse, vocab, -100])
    ref_lse = torch.logsumexp(logits.float(), -1)
    ref = torch.nn.functional.cross_entropy(logits.float(), labels.long(), ignore_index=-100, reduction="none")
    check(f"cross_entropy lse {kind}", lse, ref_lse, rtol=1e-5, atol=1e-5)
    check(f"cross_entropy loss {kind}", loss, ref, rtol=1e-5, atol=1e-4)
    # broadcast2d: broadcasts along both axes (through shared memory).
    ld = 64
    x = torch.randn(64, ld, device=dev)
    bias = torch.randn(64, device=dev)
    scale = torch.randn(64, device=dev)
    y = torch.empty_like(x)
    launch("broadcast2d", kind, [2], [x, bias, scale, y, ld])
    check(f"broadcast2d {kind}", y, x * scale[:, None] + bias[None, :], atol=1e-5, rtol=1e-5)
    # matmul: dot in an FMA loop, with edge masks.
    m, n, k = 50, 40, 37
    a = torch.randn(m, k, device=dev).bfloat16()
    b = torch.randn(k, n, device=dev).bfloat16()
    c = torch.empty(m, n, device=dev)
    launch("matmul", kind, [2, 2], [a, b, c, m, n, k])
    check(f"matmul {kind}", c, a.float() @ b.float(), atol=1e-3, rtol=1e-4)
    # atomics: f32 vector and scalar atomics, i32 scalar atomic.
    rows, n = 10, 200
    x = torch.randn(rows, n, device=dev)
    out = torch.zeros(n + 1, device=dev)
    cnt = torch.zeros(1, device=dev, dtype=torch.int32)
    launch("atomics", kind, [rows], [x, out, cnt, n])
    check(f"atomics columns {kind}", out[:n], x.sum(0), atol=1e-4)
    check(f"atomics total {kind}", out[n:], x.sum().reshape(1), atol=1e-3)
    check(f"atomics count {kind}", cnt, torch.tensor([rows], device=dev))
    # branch: if with results.
    rows, n = 6, 100
    x = torch.randn(rows, n, device=dev)
    y = torch.empty_like(x)
    launch("branch", kind, [rows], [x, y, n, 2.0])
    top = x.max(-1, keepdim=True).values
    check(f"branch {kind}", y, torch.where(top > 2.0, x / top * 2.0, x * 2.0), atol=1e-6, rtol=1e-6)
    # misc: axis reductions, argmax, trans, math, integer ops.
    x = torch.randn(16, 64, device=dev)
    x[3, 5] = x[3].max() + 1
    x[3, 9] = x[3, 5]  # tie: first index wins
    idx = torch.zeros(17, device=dev, dtype=torch.int32)
    colmax = torch.empty(64, device=dev)
    t = torch.empty(64, 16, device=dev, dtype=torch.bfloat16)
    q = torch.empty(16, 64, device=dev, dtype=torch.int32)
    flags = torch.empty(16, 64, device=dev, dtype=torch.int32)
    launch("misc", kind, [1], [x, idx, colmax, t, q, flags])
    check(f"misc argmax axis {kind}", idx[:16], x.argmax(1).int())
    check(f"misc argmax all {kind}", idx[16:], x.flatten().argmax().int().reshape(1))
    check(f"misc max axis 0 {kind}", colmax, x.max(0).values)
    tr = x.T
    a = tr.abs()
    f = (tr.exp() + tr.tanh() + tr.sigmoid() + (a + 1).log() + tr.sin() * tr.cos() + a.sqrt()
         + (a + 1).rsqrt() + tr.exp2() + (a + 1).log2())
    check(f"misc math {kind}", t, f.bfloat16(), atol=0.1, rtol=2e-2)
    i = (x * 100).to(torch.int32)
    tq = torch.div(i, 7, rounding_mode="trunc")
    tq = torch.fmod(tq, 5)
    want = torch.minimum((tq << 2) >> 1, torch.maximum(i, -i)) ^ ((i & 3) | 8)
    check(f"misc ints {kind}", q, want)
    check(f"misc flags {kind}", flags, ((x > 0.5) | ~(x < -0.5)).int())

    # types: f16, bf16, i64 through casts and reductions; a 64-element tile on 128 threads.
    N = 64
    h = torch.randn(N, device=dev).half()
    b = torch.randn(N, device=dev).bfloat16()
    l = torch.randint(-1000, 1000, (N,), device=dev, dtype=torch.int64)
    out_h = torch.empty(N, device=dev, dtype=torch.half)
    out_l = torch.empty(N + 1, device=dev, dtype=torch.int64)
    out_f = torch.empty(N + 1, device=dev)
    out_i = torch.empty(N, device=dev, dtype=torch.int32)
    launch("types", kind, [1], [h, b, l, out_h, out_l, out_f, out_i])
    f = h.float() + b.float()
    hb = (h.float() * b.half().float()).half()
    check(f"types f16 {kind}", out_h, (hb.float() - h.float()).half())
    check(f"types i64 {kind}", out_l[:N], l * 3 - f.to(torch.int64) + l.sum())
    check(f"types i64 min+max {kind}", out_l[N:], (l.min() + l.max()).reshape(1))
    check(f"types f32 {kind}", out_f[:N], f.abs() + l.float() + b.half().float(), rtol=1e-6)
    want_i = torch.fmod(f.to(torch.int32), 7) + l.argmax().int() + l.int()
    check(f"types i32 {kind}", out_i, want_i)
    check(f"types scalars {kind}", out_f[N:], (f.min() + h.float().sum().half().float()).reshape(1), atol=0.05)

    # rows: reductions along rows (in-warp shuffles) and columns (shared memory).
    x = torch.randn(64, 128, device=dev).bfloat16()
    x[5, 7] = x[5].max() + 1
    x[5, 100] = x[5, 7]  # tie: first index wins
    row_sum = torch.empty(64, device=dev)
    row_arg = torch.empty(64, device=dev, dtype=torch.int32)
    col_min = torch.empty(2, 128, device=dev, dtype=torch.bfloat16)
    launch("rows", kind, [2], [x, row_sum, row_arg, col_min])
    check(f"rows sum {kind}", row_sum, x.float().pow(2).sum(1), rtol=1e-5)
    check(f"rows argmax {kind}", row_arg, x.float().argmax(1).int())
    check(f"rows min axis 0 {kind}", col_min, x.view(2, 32, 128).min(1).values)

print("FAILURES:", failures if failures else "none")
sys.exit(1 if failures else 0)
