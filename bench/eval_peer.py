#!/usr/bin/env python3
"""The CPU peer of `kiln eval` and `kiln generate`: Hugging Face transformers (eager, no grad) on the same
model folder, the same data and the same prompt, so one run shows both side by side.

Needs torch and transformers (pip install torch transformers). Prints one JSON line each:
- eval: every line of examples/data/eval.jsonl tokenized by the model's tokenizer, run one sequence at
  a time (no padding: every token counted is real), the token-weighted mean loss and input tokens/s;
- generate: the chat template around the prompt, greedy, `max_new_tokens`, HF's KV cache; time to first
  token and decode tokens/s.
"""
import argparse, json, time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

p = argparse.ArgumentParser()
p.add_argument("--model", required=True)
p.add_argument("--data", default="examples/data/eval.jsonl")
p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
p.add_argument("--prompt", default="What is the capital of France?")
p.add_argument("--max-new-tokens", type=int, default=48)
a = p.parse_args()
dtype = getattr(torch, a.dtype)
tok = AutoTokenizer.from_pretrained(a.model)
model = AutoModelForCausalLM.from_pretrained(a.model, dtype=dtype).eval()

seqs = [tok(json.loads(l)["text"])["input_ids"] for l in open(a.data) if l.strip()]
with torch.no_grad():
    model(torch.tensor([seqs[0]]))  # warm-up
    start = time.perf_counter()
    total, count = 0.0, 0
    for ids in seqs:
        logits = model(torch.tensor([ids])).logits[0].float()
        logp = torch.log_softmax(logits, dim=-1)
        total -= logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].sum().item()
        count += len(ids) - 1
    seconds = time.perf_counter() - start
tokens = sum(len(s) for s in seqs)
print(json.dumps({"peer": "transformers", "op": "eval", "dtype": a.dtype, "loss": total / count,
                  "tokens": count, "input_tokens": tokens, "seconds": seconds,
                  "tokens_per_second": tokens / seconds, "threads": torch.get_num_threads()}))

text = tok.apply_chat_template([{"role": "user", "content": a.prompt}], tokenize=False,
                               add_generation_prompt=True)
ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
with torch.no_grad():
    start = time.perf_counter()
    out = model(ids, use_cache=True)
    first = time.perf_counter() - start
    past, new = out.past_key_values, [int(out.logits[0, -1].argmax())]
    while len(new) < a.max_new_tokens and new[-1] not in (tok.eos_token_id,):
        out = model(torch.tensor([[new[-1]]]), past_key_values=past, use_cache=True)
        past = out.past_key_values
        new.append(int(out.logits[0, -1].argmax()))
    total_s = time.perf_counter() - start
print(json.dumps({"peer": "transformers", "op": "generate", "dtype": a.dtype,
                  "answer": tok.decode(new, skip_special_tokens=True), "new_tokens": len(new),
                  "time_to_first_token_s": first,
                  "decode_tokens_per_second": (len(new) - 1) / max(total_s - first, 1e-9)}))
