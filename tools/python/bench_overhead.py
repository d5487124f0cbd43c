"""The Python call against the CLI on the same input: is the wrapper's overhead small?

    .venv/bin/python tools/python/bench_overhead.py --model assets/tiny-bert [--n 512] [--bin target/release/zhinao]

Embeds N synthetic texts (mixed lengths, zh/en) with `zhinao embed` (the time it prints: tokenise,
GPU batches, writing JSONL, model load excluded) and with `zhinao.Embedder.embed` (tokenise, GPU
batches, the one copy into numpy), best of --repeat; then the per-call cost of a one-text call,
where the fixed overhead of the binding (argument conversion, GIL release, array creation) shows
most. Prints one JSON object. On lavapipe only the ratio means anything, never the speed.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

import zhinao

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def texts(n):
    words = ["北京", "天气", "river", "model", "数据", "GPU", "token", "检索", "search", "向量"]
    return [" ".join(words[(i + j) % len(words)] for j in range(2 + (i * 13) % 28)) for i in range(n)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(ROOT, "assets", "tiny-bert"))
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "zhinao"))
    ap.add_argument("--max-batch-tokens", type=int, default=8192)
    a = ap.parse_args()

    t = texts(a.n)
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "in.jsonl")
        with open(src, "w", encoding="utf-8") as f:
            for x in t:
                f.write(json.dumps({"text": x}, ensure_ascii=False) + "\n")
        cli_s = []
        for _ in range(a.repeat):
            p = subprocess.run([a.bin, "embed", "--model", a.model, "--input", src, "--output", os.devnull,
                                "--max-batch-tokens", str(a.max_batch_tokens)],
                               capture_output=True, text=True, check=True)
            cli_s.append(float(re.search(r"embeddings in ([0-9.]+) s", p.stderr).group(1)))
            device = re.search(r"device: (.*)", p.stderr).group(1).strip()

    e = zhinao.Embedder(a.model, max_batch_tokens=a.max_batch_tokens)
    e.embed(t[:8])  # warm-up: pipelines compiled, shapes recorded
    py_s = []
    for _ in range(a.repeat):
        t0 = time.perf_counter()
        v = e.embed(t)
        py_s.append(time.perf_counter() - t0)
    assert v.shape == (a.n, e.dim) and np.isfinite(v).all()

    one = [t[0]]
    calls = 50
    e.embed(one)
    t0 = time.perf_counter()
    for _ in range(calls):
        e.embed(one)
    per_call = (time.perf_counter() - t0) / calls

    cli_best, py_best = min(cli_s), min(py_s)
    print(json.dumps({
        "bench": "python_vs_cli_embed",
        "device": device,
        "model": a.model,
        "texts": a.n,
        "cli_embed_s": cli_best,
        "python_embed_s": py_best,
        "python_over_cli": py_best / cli_best,
        "python_one_text_call_s": per_call,
        "python_version": sys.version.split()[0],
        "zhinao_version": zhinao.__version__,
    }))


if __name__ == "__main__":
    main()
