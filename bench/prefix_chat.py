#!/usr/bin/env python3
"""Prefix caching on multi-turn chat, through the real gRPC API (issue 14's benchmark).

Workload: a shared system prompt (--system tokens), --conversations conversations of
--turns turns each, run concurrently; every turn re-sends the whole history (system,
earlier user turns and answers) plus --new fresh tokens, and streams a --answer-token
greedy answer. Token ids are sent as-is, so a perfect cache could serve, for each
request, its longest common prefix with any sequence (prompt + answer) seen before it,
less its last token.

Prints, for sluiced with --enable_prefix_caching:
  - hit rate: Σ Usage.cached_tokens / Σ tokens a perfect cache could serve;
  - TTFT of the last turn, caching on vs off (the same prompts, sent alone);
  - snapshot memory (GetEngineStats: snapshots held × bytes of one);
  - a no-reuse workload (distinct random prompts) with caching on vs off: throughput.

Usage (from the repository root, after `make` and scripts/setup-venv.sh):
  build/venv/bin/python bench/prefix_chat.py --model bench/synthetic/qwen3_5_0_8b
  build/venv/bin/python bench/prefix_chat.py --model bench/synthetic/qwen3_0_6b
  build/venv/bin/python bench/prefix_chat.py --model bench/synthetic/qwen3_5_moe_2b8
(bench/make_synthetic.py writes the synthetic checkpoints.) Random weights: the answers
are meaningless, the shapes and the work are real.
"""
import argparse
import json
import os
import random
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "python"))

import sluice_testlib as t  # noqa: E402
from sluice_client import Client  # noqa: E402  (installed into build/venv by scripts/setup-venv.sh)


def common_prefix(a, b):
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def stream_one(client, tokens, answer):
    """Returns (answer tokens, TTFT seconds, cached tokens)."""
    start = time.perf_counter()
    ttft = None
    out = []
    cached = 0
    for delta in client.stream(tokens=tokens, max_tokens=answer, ignore_eos=True, timeout=3600):
        if delta.token_ids and ttft is None:
            ttft = time.perf_counter() - start
        out.extend(delta.token_ids)
        if delta.usage is not None:
            cached = delta.usage.cached_tokens
    return out, ttft, cached


def daemon_args(args, caching):
    return [f"--enable_prefix_caching={'true' if caching else 'false'}",
            f"--kv_cache_memory={args.kv_cache_memory}", f"--prefix_state_memory={args.prefix_state_memory}",
            f"--max_num_seqs={max(args.conversations, args.no_reuse_requests)}", f"--threads={args.threads}",
            f"--max_model_len={args.max_model_len}"]


def chat(args, vocab):
    """Runs the chat workload with caching on; returns its figures and the last turns' prompts."""
    rng = random.Random(args.seed)
    system = [rng.randrange(vocab) for _ in range(args.system)]
    seen = []                 # sequences a perfect cache has seen (prompt + answer, and prompts)
    seen_lock = threading.Lock()
    records = []
    last_prompts = []

    def conversation(c):
        crng = random.Random(args.seed * 1000 + c)
        history = list(system)
        with Client(f"127.0.0.1:{daemon.port}") as client:
            for turn in range(args.turns):
                prompt = history + [crng.randrange(vocab) for _ in range(args.new)]
                with seen_lock:
                    servable = min(max((common_prefix(prompt, s) for s in seen), default=0), len(prompt) - 1)
                    seen.append(prompt)
                answer, ttft, cached = stream_one(client, prompt, args.answer)
                with seen_lock:
                    seen.append(prompt + answer)
                    records.append({"conversation": c, "turn": turn + 1, "prompt": len(prompt),
                                    "servable": servable, "cached": cached, "ttft": ttft})
                    if turn + 1 == args.turns:
                        last_prompts.append(prompt)
                history = prompt + answer

    with t.Daemon(args.model, args=daemon_args(args, True), metrics=False) as daemon:
        start = time.perf_counter()
        # The first conversation's first turn goes alone, so the system prompt is cached
        # once, as it would be on a server that has been up for a while.
        threads = [threading.Thread(target=conversation, args=(c,)) for c in range(args.conversations)]
        threads[0].start()
        while not records:
            time.sleep(0.05)
        for th in threads[1:]:
            th.start()
        for th in threads:
            th.join()
        wall = time.perf_counter() - start
        with Client(f"127.0.0.1:{daemon.port}") as client:
            stats = client.engine_stats()
    return records, last_prompts, stats, wall


def ttft_alone(args, prompts, caching, warm_prompts=()):
    """TTFT of each prompt sent alone (after warm_prompts, which fill the cache)."""
    out = []
    with t.Daemon(args.model, args=daemon_args(args, caching), metrics=False) as daemon:
        with Client(f"127.0.0.1:{daemon.port}") as client:
            for p in warm_prompts:
                stream_one(client, p, 1)
            for p in prompts:
                _, ttft, cached = stream_one(client, p, 1)
                out.append((ttft, cached))
    return out


def no_reuse(args, vocab, caching):
    """Distinct random prompts, all at once: output tokens per second."""
    rng = random.Random(args.seed + 17)
    prompts = [[rng.randrange(vocab) for _ in range(args.no_reuse_prompt)] for _ in range(args.no_reuse_requests)]
    with t.Daemon(args.model, args=daemon_args(args, caching), metrics=False) as daemon:
        with Client(f"127.0.0.1:{daemon.port}") as client:
            stream_one(client, [1, 2, 3], 2)  # warm-up
        results = []

        def one(p):
            with Client(f"127.0.0.1:{daemon.port}") as client:
                results.append(client.generate(tokens=p, max_tokens=args.no_reuse_answer, ignore_eos=True,
                                               timeout=3600))

        start = time.perf_counter()
        threads = [threading.Thread(target=one, args=(p,)) for p in prompts]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wall = time.perf_counter() - start
    tokens = sum(len(p) + args.no_reuse_answer for p in prompts)
    return tokens / wall, sum(r.usage.cached_tokens for r in results)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--system", type=int, default=1000)
    ap.add_argument("--conversations", type=int, default=8)
    ap.add_argument("--turns", type=int, default=6)
    ap.add_argument("--new", type=int, default=100)
    ap.add_argument("--answer", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--kv_cache_memory", type=int, default=3 << 30)
    ap.add_argument("--prefix_state_memory", type=int, default=1 << 30)
    ap.add_argument("--ttft_samples", type=int, default=2, help="last-turn prompts timed alone, on and off")
    ap.add_argument("--no_reuse_requests", type=int, default=8)
    ap.add_argument("--no_reuse_prompt", type=int, default=256)
    ap.add_argument("--no_reuse_answer", type=int, default=16)
    ap.add_argument("--no_reuse_rounds", type=int, default=2)
    ap.add_argument("--max_model_len", type=int, default=8192)
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--json", help="write the figures here too")
    args = ap.parse_args()
    with open(os.path.join(args.model, "config.json")) as f:
        config = json.load(f)
    vocab = config.get("text_config", config)["vocab_size"]
    name = os.path.basename(os.path.normpath(args.model))
    print(f"# {name}: system {args.system}, {args.conversations} conversations x {args.turns} turns, "
          f"+{args.new} tokens a turn, {args.answer}-token answers, {args.threads} threads; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)

    records, last_prompts, stats, wall = chat(args, vocab)
    servable = sum(r["servable"] for r in records)
    cached = sum(r["cached"] for r in records)
    print(f"chat workload: {len(records)} requests, {sum(r['prompt'] for r in records)} prompt tokens, "
          f"{wall:.1f} s wall")
    print(f"hit rate: {cached} cached / {servable} servable by a perfect cache = {cached / max(servable, 1):.1%}")
    for turn in range(1, args.turns + 1):
        rs = [r for r in records if r["turn"] == turn]
        print(f"  turn {turn}: prompt {sum(r['prompt'] for r in rs) / len(rs):.0f}, "
              f"servable {sum(r['servable'] for r in rs) / len(rs):.0f}, cached {sum(r['cached'] for r in rs) / len(rs):.0f}, "
              f"TTFT (concurrent) {sum(r['ttft'] for r in rs) / len(rs):.2f} s")
    snapshot_mib = stats.state_snapshots * stats.state_snapshot_bytes / 2**20
    print(f"engine: queries {stats.prefix_cache_queries}, hits {stats.prefix_cache_hits}, cached blocks "
          f"{stats.cached_kv_blocks}, block evictions {stats.kv_block_evictions}; snapshots "
          f"{stats.state_snapshots} of {stats.total_state_snapshots} x {stats.state_snapshot_bytes / 2**20:.2f} MiB "
          f"= {snapshot_mib:.0f} MiB, evictions {stats.state_snapshot_evictions}")

    # Last-turn TTFT alone: caching on (after the conversation up to there is cached) vs off.
    sample = last_prompts[: args.ttft_samples]
    # Warm the cache with each conversation's history as the chat left it: the prompt's
    # previous turn (system + history) is what a live server would hold.
    on = ttft_alone(args, sample, True, warm_prompts=[p[: len(p) - args.new] for p in sample])
    off = ttft_alone(args, sample, False)
    for (t_on, c_on), (t_off, _) in zip(on, off):
        print(f"last-turn TTFT alone: off {t_off:.2f} s, on {t_on:.2f} s ({c_on} cached) = {t_off / t_on:.1f}x")

    figures = {"model": name, "hit_rate": cached / max(servable, 1), "cached": cached, "servable": servable,
               "snapshot_bytes": stats.state_snapshot_bytes, "snapshots": stats.state_snapshots,
               "ttft_last_off": [x[0] for x in off], "ttft_last_on": [x[0] for x in on]}
    rates = {True: [], False: []}
    for _ in range(args.no_reuse_rounds):
        for caching in (False, True):
            rate, hits = no_reuse(args, vocab, caching)
            rates[caching].append(rate)
            print(f"no-reuse ({args.no_reuse_requests} x {args.no_reuse_prompt}+{args.no_reuse_answer}): caching "
                  f"{'on ' if caching else 'off'} {rate:.1f} tok/s (cached {hits})", flush=True)
    best_on, best_off = max(rates[True]), max(rates[False])
    print(f"no-reuse best of {args.no_reuse_rounds}: on {best_on:.1f} vs off {best_off:.1f} tok/s "
          f"({best_on / best_off - 1:+.1%})")
    figures.update({"no_reuse_on": rates[True], "no_reuse_off": rates[False]})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)


if __name__ == "__main__":
    main()
