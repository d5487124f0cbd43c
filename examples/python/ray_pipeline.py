"""Embed or rerank a corpus on Ray Data and write Parquet: one model replica per GPU.

    # a laptop (a local Ray is started), one GPU:
    python examples/python/ray_pipeline.py embed --model assets/tiny-bert \
        --input corpus.jsonl --output out/ --workers 1
    # a cluster: the same command on the head node (or `ray job submit -- python ...`) with
    # RAY_ADDRESS=auto and --workers = the number of GPUs; inputs and output on shared storage (s3://...)
    python examples/python/ray_pipeline.py rerank --model 360Zhinao-1.8B-Reranking \
        --input s3://bucket/pairs/ --output s3://bucket/scores/ --workers 16

Input: JSONL (`.jsonl`/`.json`) or Parquet, a file, a directory or a glob; a `text` column (and a
`query` column for rerank). Output: Parquet with the input columns plus `embedding`
(fixed_size_list<float>[D]) or `score` (float), rows in input order.
"""

import argparse
import time

import ray
import ray.data

import zhinao.data


def read(path: str):
    p = path.rstrip("/")
    if p.endswith(".parquet") or "parquet" in p.rsplit("/", 1)[-1]:
        return ray.data.read_parquet(path)
    if p.endswith((".jsonl", ".json")):
        return ray.data.read_json(path)
    # a directory: Parquet if it holds any, else JSONL
    import glob
    import os

    if os.path.isdir(p) and not glob.glob(os.path.join(p, "*.parquet")):
        return ray.data.read_json(path)
    return ray.data.read_parquet(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("task", choices=["embed", "rerank"])
    ap.add_argument("--model", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--workers", type=int, default=1, help="model replicas (one per GPU)")
    ap.add_argument("--gpus-per-worker", type=float, default=1.0,
                    help="0 where Ray sees no GPU (a software Vulkan device, or Metal on a Mac)")
    ap.add_argument("--cpus-per-worker", type=float, default=1.0)
    ap.add_argument("--local-cpus", type=int, default=None,
                    help="logical CPUs of a local Ray (default: the machine's); leave room for the readers")
    ap.add_argument("--batch-size", type=int, default=256, help="rows per Ray batch")
    ap.add_argument("--max-batch-tokens", type=int, default=8192, help="padded tokens per GPU batch (embed)")
    ap.add_argument("--backend", default=None, help="vulkan, metal, dx12, gl (default: WGPU_BACKEND, else auto)")
    a = ap.parse_args()

    # RAY_ADDRESS=auto joins a running cluster; otherwise a local one starts.
    ray.init(**({"num_cpus": a.local_cpus, "include_dashboard": False} if a.local_cpus else {}))
    ds = read(a.input)
    t0 = time.time()
    if a.task == "embed":
        ds = zhinao.data.embed(ds, a.model, workers=a.workers, num_gpus=a.gpus_per_worker,
                               num_cpus=a.cpus_per_worker, batch_size=a.batch_size, max_batch_tokens=a.max_batch_tokens, backend=a.backend)
    else:
        ds = zhinao.data.rerank(ds, a.model, workers=a.workers, num_gpus=a.gpus_per_worker,
                                num_cpus=a.cpus_per_worker, batch_size=a.batch_size, backend=a.backend)
    ds.write_parquet(a.output)
    print(f"wrote {a.output} in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
