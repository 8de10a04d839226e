#!/usr/bin/env python3
"""Checks Kiln's LoRA adapters and exports against Hugging Face's own implementations:
Kiln's logits (`kiln eval --adapter ADAPTER --logits`, f32 on the CPU) on a few token sequences
beside

- PEFT: `peft.PeftModel.from_pretrained(base, ADAPTER)` (the adapter unmerged, as PEFT runs it);
- the merged folder (`kiln export --merge --out MERGED`) loaded by transformers;
- the GGUF (`kiln export --gguf FILE`) read by llama.cpp's `gguf.GGUFReader`, dequantized by
  `gguf.quants`, un-permuted and run by transformers (and, where transformers' own GGUF loader
  takes the file, through that loader too); its dequantized tensors are also compared with
  PEFT's `merge_and_unload()` weights.

Usage (from the repository root; the `kiln` binary is found in $KILN, $CARGO_TARGET_DIR or
target/, release before debug):

    /work/pyenv/bin/python bench/check_peft.py --base tests/fixtures/hf/qwen2_gqa_bias_untied \\
        --adapter tests/fixtures/hf/qwen2_gqa_bias_untied/adapter --merged /tmp/merged \\
        --gguf /tmp/merged.gguf

Needs torch, transformers, peft, safetensors, numpy and gguf. Prints one line per comparison
(max |Δlogit|, max |Δlogit| / (1 + |logit|), argmax agreement) and, with --json, writes them.
Exits 1 when a float32 comparison (PEFT, the merged folder, an F32 GGUF) is off by more than
--tol, or a GGUF tensor by more than its type's rounding.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent


def find_kiln(explicit):
    if explicit:
        return explicit
    if os.environ.get("KILN"):
        return os.environ["KILN"]
    roots = [os.environ.get("CARGO_TARGET_DIR"), str(ROOT / "target")]
    for root in [r for r in roots if r]:
        for profile in ("release", "debug"):
            p = Path(root) / profile / "kiln"
            if p.is_file():
                return str(p)
    sys.exit("error: no kiln binary found (build it, or pass --kiln / set KILN)")


def sequences(vocab, seed, lengths):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, size=n).tolist() for n in lengths]


def kiln_logits(kiln, model, adapter, seqs, work, tag):
    data = work / f"{tag}.jsonl"
    data.write_text("".join(json.dumps({"input_ids": s}) + "\n" for s in seqs))
    out = work / f"{tag}.logits.safetensors"
    cmd = [kiln, "eval", "--model", str(model), "--data", str(data), "--precision", "f32",
           "--logits", str(out), "--json"]
    if adapter is not None:
        cmd += ["--adapter", str(adapter)]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} failed:\n{run.stderr}")
    from safetensors import safe_open

    with safe_open(str(out), "np") as f:
        logits = f.get_tensor("logits")
        starts = json.loads(f.metadata()["sequence_starts"])
    return [logits[a:a + len(s)] for a, s in zip(starts, seqs)]


@torch.no_grad()
def torch_logits(model, seqs):
    model.eval()
    return [model(torch.tensor([s])).logits[0].double().numpy() for s in seqs]


def compare(name, got, want):
    diff = max(float(np.abs(g - w).max()) for g, w in zip(got, want))
    rel = max(float((np.abs(g - w) / (1 + np.abs(w))).max()) for g, w in zip(got, want))
    agree = np.mean(np.concatenate([g.argmax(-1) == w.argmax(-1) for g, w in zip(got, want)]))
    return {"comparison": name, "max_abs_diff": diff, "max_rel_diff": rel, "argmax_agreement": float(agree)}


def load_hf(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32,
                                                attn_implementation="eager")


def unpermute(w, n_head):
    """llama.cpp's Q/K row permutation undone (GGUF row h·d + 2i + j → HF row h·d + j·d/2 + i)."""
    d = w.shape[0] // n_head
    return w.reshape(n_head, d // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


HF_PARTS = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}


def gguf_state_dict(path):
    """The GGUF's tensors as a Hugging Face state dict (f32), with the file's types."""
    import gguf

    r = gguf.GGUFReader(str(path))
    field = lambda k: r.fields[k].contents()
    arch = field("general.architecture")
    heads, kv_heads = field(f"{arch}.attention.head_count"), field(f"{arch}.attention.head_count_kv")
    state, types = {}, {}
    for t in r.tensors:
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        w = w.reshape([int(d) for d in reversed(t.shape)])
        if t.name == "token_embd.weight":
            hf = "model.embed_tokens.weight"
        elif t.name == "output_norm.weight":
            hf = "model.norm.weight"
        elif t.name == "output.weight":
            hf = "lm_head.weight"
        else:
            _, layer, part, kind = t.name.split(".")
            hf = f"model.layers.{layer}.{HF_PARTS[part]}.{kind}"
            if arch == "llama" and part in ("attn_q", "attn_k"):
                w = unpermute(w, heads if part == "attn_q" else kv_heads)
        state[hf] = torch.from_numpy(np.ascontiguousarray(w))
        types[hf] = t.tensor_type.name
    return arch, state, types


def rounding_bound(ty, w):
    """The largest error writing `w` (one tensor, f32) as GGUF type `ty` can make."""
    a = float(np.abs(w).max())
    # Kiln and PEFT merge W + scale·B·A in f32 in different orders: a few ulps apart.
    merge = a * 2.0 ** -20 + 1e-9
    if ty == "F32":
        return merge
    if ty == "F16":
        return a * 2.0 ** -11 + 2.0 ** -25 + merge
    if ty == "BF16":
        return a * 2.0 ** -8 + merge
    if ty == "Q8_0":
        return a / 254 + a * 2.0 ** -11 + merge  # half a step, and the f16 scale
    return float("inf")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, type=Path)
    ap.add_argument("--adapter", required=True, type=Path)
    ap.add_argument("--merged", type=Path, help="a merged Hugging Face folder (kiln export --merge --out)")
    ap.add_argument("--gguf", type=Path, help="a GGUF file (kiln export --merge --gguf)")
    ap.add_argument("--kiln", help="the kiln binary")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lengths", default="17,5,33,1", help="token sequence lengths")
    ap.add_argument("--tol", type=float, default=1e-3, help="max |Δlogit| for the f32 comparisons")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()

    import transformers
    from peft import PeftModel

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    torch.manual_seed(0)
    kiln = find_kiln(args.kiln)
    base = load_hf(args.base)
    vocab = base.config.vocab_size
    seqs = sequences(vocab, args.seed, [int(n) for n in args.lengths.split(",")])
    results, failed = [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        kiln_adapter = kiln_logits(kiln, args.base, args.adapter, seqs, work, "adapter")
        kiln_base = kiln_logits(kiln, args.base, None, seqs, work, "base")
        peft_model = PeftModel.from_pretrained(base, str(args.adapter))
        peft = torch_logits(peft_model, seqs)
        results.append(compare("kiln --adapter vs peft (unmerged)", kiln_adapter, peft))
        with peft_model.disable_adapter():
            plain = torch_logits(peft_model, seqs)
        results.append(compare("kiln base vs transformers base", kiln_base, plain))
        base_vs_adapter = compare("(peft vs its base: what the adapter changes)", peft, plain)
        merged_state = {k: v.clone() for k, v in peft_model.merge_and_unload().state_dict().items()}
        f32_checks = [0, 1]
        if args.merged:
            kiln_merged = kiln_logits(kiln, args.merged, None, seqs, work, "merged")
            results.append(compare("kiln merged folder vs peft", kiln_merged, peft))
            results.append(compare("transformers(merged folder) vs kiln --adapter",
                                   torch_logits(load_hf(args.merged), seqs), kiln_adapter))
            f32_checks += [len(results) - 2, len(results) - 1]
        if args.gguf:
            arch, state, types = gguf_state_dict(args.gguf)
            worst = {"comparison": "gguf tensors vs peft merge_and_unload", "types": {}}
            for name, w in state.items():
                want = merged_state[name].numpy()
                err = float(np.abs(w.numpy() - want).max())
                bound = rounding_bound(types[name], want)
                worst["types"][types[name]] = max(worst["types"].get(types[name], 0.0), err)
                if err > bound * (1 + 1e-6):
                    failed.append(f"gguf tensor {name} ({types[name]}): |Δ| {err:.3g} > {bound:.3g}")
            results.append(worst)
            m = load_hf(args.base)
            missing, unexpected = m.load_state_dict(state, strict=False)
            missing = [k for k in missing if not (k == "lm_head.weight" and m.config.tie_word_embeddings)]
            if missing or unexpected:
                failed.append(f"gguf: missing {missing}, unexpected {unexpected}")
            if m.config.tie_word_embeddings:
                m.tie_weights()
            ty = sorted(set(types.values()) - {"F32"}) or ["F32"]
            results.append(compare(f"gguf ({'/'.join(ty)}, gguf.GGUFReader) vs kiln --adapter",
                                   torch_logits(m, seqs), kiln_adapter))
            if ty == ["F32"]:
                f32_checks.append(len(results) - 1)
            try:
                from transformers import AutoModelForCausalLM

                t = AutoModelForCausalLM.from_pretrained(str(args.gguf.parent), gguf_file=args.gguf.name,
                                                         dtype=torch.float32)
                name = f"gguf ({'/'.join(ty)}, transformers' GGUF loader) vs kiln --adapter"
                dropped = sorted(set(state) - set(t.state_dict()))
                if dropped:
                    # transformers 5's loader has no Llama attention biases (llama.cpp has them)
                    results.append({"comparison": name, "skipped": f"the loader drops {len(dropped)} "
                                    f"tensors of the file, e.g. {dropped[0]}"})
                else:
                    results.append(compare(name, torch_logits(t, seqs), kiln_adapter))
            except Exception as e:  # the loader wants a tokenizer, or does not know the file
                results.append({"comparison": "gguf via transformers' GGUF loader",
                                "skipped": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"})
        results.append(base_vs_adapter)
    for i in f32_checks:
        if results[i]["max_abs_diff"] > args.tol:
            failed.append(f"{results[i]['comparison']}: {results[i]['max_abs_diff']:.3g} > {args.tol}")
    print(f"{args.base} + {args.adapter}: {len(seqs)} sequences, {sum(map(len, seqs))} tokens, vocab {vocab}")
    for r in results:
        if "max_abs_diff" in r:
            print(f"  {r['comparison']}: max |Δlogit| {r['max_abs_diff']:.3g}, relative "
                  f"{r['max_rel_diff']:.3g}, argmax agreement {r['argmax_agreement']:.3f}")
        elif "types" in r:
            print(f"  {r['comparison']}: max |Δw| by type " +
                  ", ".join(f"{k} {v:.3g}" for k, v in sorted(r["types"].items())))
        else:
            print(f"  {r['comparison']}: skipped ({r['skipped']})")
    if args.json:
        args.json.write_text(json.dumps({"base": str(args.base), "adapter": str(args.adapter),
                                         "results": results, "failed": failed}, indent=1))
    for f in failed:
        print(f"FAILED: {f}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
