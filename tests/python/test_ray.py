"""The distributed path: Ray Data on a local Ray with two model replicas (actors) embeds a JSONL
corpus and writes Parquet; the vectors equal the CLI's, in order, nothing dropped or duplicated.
Also the rerank path and the example pipeline script (Parquet in, Parquet out)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, asset, cli, write_jsonl

if os.environ.get("CI") == "true":
    import ray  # in CI a missing Ray is a failure, not a skip
else:
    ray = pytest.importorskip("ray")
import pyarrow as pa
import pyarrow.parquet as pq

import zhinao.data

N = 41  # not a multiple of the batch size
WORDS = ["北京", "天气", "river", "model", "数据", "GPU", "🎉", "token", "检索", "ok"]


def corpus():
    # varied lengths (1 to 60 words) so the engine's token-budget batches differ from Ray's
    return [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(1 + (i * 7) % 60)) for i in range(N)]


@pytest.fixture(scope="module")
def local_ray():
    # 4 logical CPUs on a 2-core machine: 2 for the actors, the rest for the read/write tasks
    # (all CPUs held by actors would starve the readers).
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    # The workers cannot import this test module: ship its classes (Tagged) by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


class Tagged(zhinao.data.EmbedWorker):
    """The embed worker, also recording which actor process handled each row."""

    def __call__(self, batch):
        out = super().__call__(batch)
        return out.append_column("pid", pa.array([os.getpid()] * out.num_rows, type=pa.int64()))


def test_two_workers_embed_like_the_cli(local_ray, tmp_path):
    texts = corpus()
    src = tmp_path / "corpus.jsonl"
    with open(src, "w", encoding="utf-8") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"id": i, "text": t}, ensure_ascii=False) + "\n")
    cli_out = tmp_path / "cli.jsonl"
    cli("embed", "--model", asset("tiny-bert"), "--input", str(src), "--output", str(cli_out))
    want = np.array([json.loads(line)["embedding"] for line in cli_out.read_text().splitlines()], np.float32)

    ds = ray.data.read_json(str(src))
    ds = zhinao.data.embed(ds, asset("tiny-bert"), workers=2, num_gpus=0, num_cpus=1, batch_size=5,
                           worker=Tagged)
    out_dir = tmp_path / "parquet"
    ds.write_parquet(str(out_dir))

    table = pq.read_table(str(out_dir))
    ids = table.column("id").to_pylist()
    assert sorted(ids) == list(range(N)), "a row was dropped or duplicated"
    assert len(set(table.column("pid").to_pylist())) == 2, "both replicas should have worked"
    assert pa.types.is_fixed_size_list(table.schema.field("embedding").type)
    order = np.argsort(ids)
    got = np.array(table.column("embedding").to_pylist(), np.float32)[order]
    # Each row's vector is independent of its batch neighbours up to float rounding (padding
    # masked; README "Python"): measured 0 here, bounded at 1e-6.
    assert np.abs(got - want).max() <= 1e-6
    np.testing.assert_array_equal(np.array(table.column("text").to_pylist())[order], np.array(texts))

    # In order: the dataset's rows come out in input order (preserve_order). The Parquet files are
    # written by parallel tasks and are not named in row order: join on a key column (here `id`).
    rows = ds.take_all()
    assert [r["id"] for r in rows] == list(range(N))
    print(f"max |ray - cli| = {np.abs(got - want).max():.3g}")


def test_two_workers_rerank_like_the_cli(local_ray, tmp_path):
    docs = ["北京是中国的首都。", "今天天气很好。", "The capital of France is Paris.", "", "GPU 推理引擎"] * 2
    query = "中国的首都是哪里？"
    path = tmp_path / "docs.jsonl"
    write_jsonl(path, docs)
    out = cli("rerank", "--model", asset("tiny-reranker"), "--query", query, "--docs", str(path), "--json",
              json_out=True)
    want = {r["index"]: r["score"] for r in out["results"]}
    ds = ray.data.from_items([{"i": i, "query": query, "text": d} for i, d in enumerate(docs)])
    rows = zhinao.data.rerank(ds, asset("tiny-reranker"), workers=2, num_gpus=0, num_cpus=1,
                              batch_size=3).take_all()
    assert [r["i"] for r in rows] == list(range(len(docs)))
    np.testing.assert_allclose([r["score"] for r in rows], [want[i] for i in range(len(docs))], atol=1e-6)


def test_example_pipeline_parquet_in_parquet_out(tmp_path):
    texts = corpus()[:12]
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": list(range(12)), "text": texts}), str(src))
    out_dir = tmp_path / "out"
    p = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "python", "ray_pipeline.py"), "embed",
         "--model", asset("tiny-bert"), "--input", str(src), "--output", str(out_dir),
         "--workers", "2", "--gpus-per-worker", "0", "--local-cpus", "4", "--batch-size", "4"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "RAY_ADDRESS": ""})
    assert p.returncode == 0, p.stderr[-4000:]
    table = pq.read_table(str(out_dir))
    ids = table.column("id").to_pylist()
    assert sorted(ids) == list(range(12))
    want = zhinao.Embedder(asset("tiny-bert")).embed(texts)
    got = np.array(table.column("embedding").to_pylist(), np.float32)[np.argsort(ids)]
    assert np.abs(got - want).max() <= 1e-6
