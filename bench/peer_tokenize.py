#!/usr/bin/env python3
"""The tokenization yardstick of `kiln bench data`: Hugging Face `tokenizers` (Python) on the
same JSONL of `{"text": ...}` lines and the same tokenizer.json — each line parsed with
`json.loads`, batches of 1024 texts through `Tokenizer.encode_batch` (Rust, on all cores, with
the tokenizer's special tokens as `kiln train` adds them), EOS appended. Prints one JSON line:
seconds, records, tokens, tokens_per_s.
"""

import argparse
import json
import time

import tokenizers


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tokenizer", required=True, help="tokenizer.json")
    p.add_argument("--data", required=True, help="JSONL of {\"text\": ...} lines")
    p.add_argument("--eos", required=True, type=int, help="the EOS id appended to each text")
    p.add_argument("--batch", type=int, default=1024)
    args = p.parse_args()

    tok = tokenizers.Tokenizer.from_file(args.tokenizer)
    start = time.perf_counter()
    records = tokens = 0
    with open(args.data, encoding="utf-8") as f:
        batch = []

        def flush():
            nonlocal tokens
            for enc in tok.encode_batch(batch, add_special_tokens=True):
                ids = enc.ids
                if not ids or ids[-1] != args.eos:
                    ids = ids + [args.eos]
                tokens += len(ids)
            batch.clear()

        for line in f:
            if not line.strip():
                continue
            batch.append(json.loads(line)["text"])
            records += 1
            if len(batch) == args.batch:
                flush()
        flush()
    seconds = time.perf_counter() - start
    print(json.dumps({"peer": "hf-tokenizers", "version": tokenizers.__version__,
                      "seconds": seconds, "records": records, "tokens": tokens,
                      "tokens_per_s": tokens / seconds}))


if __name__ == "__main__":
    main()
