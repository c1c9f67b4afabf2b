#!/usr/bin/env python3
"""HF `tokenizers` peer for tokenizer_bench: same corpus, same measurement.

Encodes one document at a time (no batching, so no Rayon parallelism) with
add_special_tokens=False and prints one JSON line per tokenizer:
  {"name": ..., "load_s": ..., "mb_per_s": ..., "tokens": ...}
The fastest of --passes passes is reported, like the C++ side.
"""
import argparse
import json
import os
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", required=True, help="JSON Lines written by tokenizer_bench")
    parser.add_argument("--tokenizers", required=True, help="directory of <name>/tokenizer.json")
    parser.add_argument("--names", default="qwen3,llama3,deepseek_v3,llama2")
    parser.add_argument("--passes", type=int, default=2)
    args = parser.parse_args()

    from tokenizers import Tokenizer

    with open(args.corpus, encoding="utf-8") as f:
        docs = [json.loads(line)["text"] for line in f]
    total_bytes = sum(len(d.encode("utf-8")) for d in docs)
    for name in args.names.split(","):
        start = time.perf_counter()
        tok = Tokenizer.from_file(os.path.join(args.tokenizers, name, "tokenizer.json"))
        load_s = time.perf_counter() - start
        best = float("inf")
        tokens = 0
        for _ in range(max(1, args.passes)):
            tokens = 0
            start = time.perf_counter()
            for doc in docs:
                tokens += len(tok.encode(doc, add_special_tokens=False).ids)
            best = min(best, time.perf_counter() - start)
        print(json.dumps({"name": name, "load_s": load_s, "mb_per_s": total_bytes / 1e6 / best,
                          "tokens": tokens}), flush=True)


if __name__ == "__main__":
    main()
