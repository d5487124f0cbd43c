"""Scoring corpora on Ray Data: one model replica per GPU (an actor pool), token-budget GPU
batches inside each replica, rows kept in order. The same code runs on a laptop (a local Ray
started by ``ray.init()``) and on a cluster (``ray.init(address="auto")``, or a job submitted to it).

    import ray, zhinao.data
    ds = ray.data.read_json("corpus/*.jsonl")                 # or read_parquet
    ds = zhinao.data.embed(ds, "360Zhinao-search", workers=8)  # 8 GPUs, one replica each
    ds.write_parquet("embeddings/")                            # `embedding`: fixed_size_list<float>[D]

Ray is imported lazily: ``import zhinao`` never needs it (``pip install "zhinao[ray]"`` adds it).
"""

from typing import Any, Dict, Optional

import numpy as np


def _vectors(mat: np.ndarray):
    """[N, D] float32 as an Arrow fixed_size_list<float>[D] column (readable by any Parquet reader)."""
    import pyarrow as pa

    n, d = mat.shape
    flat = pa.array(np.ascontiguousarray(mat).reshape(n * d), type=pa.float32())  # no copy
    return pa.FixedSizeListArray.from_arrays(flat, d)


class EmbedWorker:
    """A Ray Data map_batches callable (``batch_format="pyarrow"``): adds ``output_column``, the
    embedding of ``text_column``. One per actor: the model loads once in ``__init__``; each Ray
    batch is split by the engine into GPU batches of at most ``max_batch_tokens`` padded tokens."""

    def __init__(self, model_dir: str, text_column: str = "text", output_column: str = "embedding",
                 **embedder_kwargs: Any):
        import zhinao

        self.model = zhinao.Embedder(model_dir, **embedder_kwargs)
        self.text_column, self.output_column = text_column, output_column

    def __call__(self, batch):
        texts = batch.column(self.text_column).to_pylist()
        return batch.append_column(self.output_column, _vectors(self.model.embed(texts)))


class RerankWorker:
    """A map_batches callable (``batch_format="pyarrow"``): adds ``output_column``, the reranker's
    score of (``query_column``, ``doc_column``) per row (its sigmoid with ``normalize=True``)."""

    def __init__(self, model_dir: str, query_column: str = "query", doc_column: str = "text",
                 output_column: str = "score", normalize: bool = False, **reranker_kwargs: Any):
        import zhinao

        self.model = zhinao.Reranker(model_dir, **reranker_kwargs)
        self.cols = (query_column, doc_column)
        self.output_column, self.normalize = output_column, normalize

    def __call__(self, batch):
        import pyarrow as pa

        q, d = (batch.column(c).to_pylist() for c in self.cols)
        scores = self.model.score_pairs(list(zip(q, d)), normalize=self.normalize)
        return batch.append_column(self.output_column, pa.array(scores, type=pa.float32()))


def _map(ds, worker, fn_kwargs: Dict[str, Any], workers: int, num_gpus: float, num_cpus: Optional[float],
         batch_size: int, preserve_order: bool):
    import ray.data

    if preserve_order:
        # Output rows in input order (Ray otherwise emits blocks as they finish). A dataset keeps the
        # context it was created with (shared with the datasets derived from it): set it there.
        for ctx in (getattr(ds, "context", None), ray.data.DataContext.get_current()):
            if ctx is not None:
                ctx.execution_options.preserve_order = True
    return ds.map_batches(
        worker,
        fn_constructor_kwargs=fn_kwargs,
        batch_format="pyarrow",
        batch_size=batch_size,
        concurrency=workers,  # a fixed pool of `workers` actors, each holding one model replica
        num_gpus=num_gpus,
        num_cpus=num_cpus,
    )


def embed(ds, model_dir: str, *, workers: int = 1, num_gpus: float = 1, num_cpus: Optional[float] = None,
          batch_size: int = 256, preserve_order: bool = True, text_column: str = "text",
          output_column: str = "embedding", worker=EmbedWorker, **embedder_kwargs: Any):
    """``ds`` with an ``output_column`` of embeddings, computed by ``workers`` actors holding one
    replica each (``num_gpus`` per actor: 1 = one GPU each; 0 on a machine whose GPU Ray does not
    count, e.g. lavapipe). ``embedder_kwargs`` go to :class:`zhinao.Embedder` (e.g.
    ``max_batch_tokens``, ``pooling``, ``query_instruction``); ``worker`` may be a subclass of
    :class:`EmbedWorker` (e.g. one that adds columns)."""
    kw = dict(model_dir=model_dir, text_column=text_column, output_column=output_column, **embedder_kwargs)
    return _map(ds, worker, kw, workers, num_gpus, num_cpus, batch_size, preserve_order)


def rerank(ds, model_dir: str, *, workers: int = 1, num_gpus: float = 1, num_cpus: Optional[float] = None,
           batch_size: int = 64, preserve_order: bool = True, query_column: str = "query",
           doc_column: str = "text", output_column: str = "score", normalize: bool = False,
           **reranker_kwargs: Any):
    """``ds`` with an ``output_column`` of reranker scores of (``query_column``, ``doc_column``)."""
    kw = dict(model_dir=model_dir, query_column=query_column, doc_column=doc_column,
              output_column=output_column, normalize=normalize, **reranker_kwargs)
    return _map(ds, RerankWorker, kw, workers, num_gpus, num_cpus, batch_size, preserve_order)
