"""Type hints of the compiled module (src/python/, PyO3). Every method that runs the GPU
releases the GIL while it works."""

import os
from typing import Iterable, Iterator, List, Literal, Optional, Sequence, Tuple, Union, overload

import numpy as np
import numpy.typing as npt

__version__: str

StrPath = Union[str, "os.PathLike[str]"]

def devices(backend: Optional[str] = None) -> List[Tuple[int, str, str]]:
    """The GPU adapters as `zhinao devices` lists them: (index, name, backend)."""

class Embedder:
    """A BERT embedding model (360Zhinao-search, or any sentence-transformers BERT directory).

    `backend` ("vulkan", "metal", "dx12", "gl", "auto"; default: WGPU_BACKEND, else auto) and
    `device` (adapter index or name substring) choose the GPU as the CLI's `--backend`/`--device`.
    `pooling` None reads 1_Pooling/config.json (else "cls"). A text over the model's limit is
    truncated with a UserWarning, or refused (InputError) with `truncate=False`.
    """

    def __init__(
        self,
        model_dir: StrPath,
        *,
        backend: Optional[str] = None,
        device: Optional[str] = None,
        pooling: Optional[Literal["cls", "mean"]] = None,
        normalize: bool = True,
        query_instruction: Optional[str] = None,
        max_batch_tokens: int = 8192,
        truncate: bool = True,
    ) -> None: ...
    def embed(self, texts: Iterable[str], *, is_query: bool = False) -> npt.NDArray[np.float32]:
        """Embeddings [N, D] in input order (texts packed into token-budget GPU batches)."""
    def tokenize(self, text: str, *, is_query: bool = False) -> List[int]: ...
    @property
    def dim(self) -> int: ...
    @property
    def max_len(self) -> int: ...
    @property
    def pooling(self) -> Literal["cls", "mean"]: ...

class Reranker:
    """The 360Zhinao reranker. `position` is the scored prompt position ("before-label", "label",
    "last"); over-long pairs are truncated as the reference does (UserWarning), or refused with
    `truncate=False`."""

    def __init__(
        self,
        model_dir: StrPath,
        *,
        backend: Optional[str] = None,
        device: Optional[str] = None,
        position: Literal["before-label", "label", "last"] = "before-label",
        truncate: bool = True,
    ) -> None: ...
    def score(self, query: str, docs: Iterable[str], *, normalize: bool = False) -> npt.NDArray[np.float32]:
        """Raw scores [N] (their sigmoid with `normalize=True`), in the order of `docs`."""
    def score_pairs(
        self, pairs: Iterable[Sequence[str]], *, normalize: bool = False
    ) -> npt.NDArray[np.float32]:
        """Scores of (query, document) pairs [N]."""
    @property
    def max_len(self) -> int: ...

class TokenStream(Iterator[str]):
    """Text pieces of a streamed generation. Dropping it, or `close()`, stops the generation."""

    def __iter__(self) -> "TokenStream": ...
    def __next__(self) -> str: ...
    def close(self) -> None: ...
    @property
    def token_ids(self) -> Optional[List[int]]:
        """The generated ids (stop id excluded) once exhausted, else None."""
    @property
    def stop_reason(self) -> Optional[Literal["eos", "length", "context", "cancelled"]]: ...

Prompt = Union[str, Sequence[int]]

class Generator:
    """A 360Zhinao causal LM with one session (its KV cache keeps the previous sequence, so a
    chat's next turn prefills only what is new). Sampling defaults: generation_config.json."""

    def __init__(
        self,
        model_dir: StrPath,
        *,
        backend: Optional[str] = None,
        device: Optional[str] = None,
        ctx_len: Optional[int] = None,
        chunk: int = 512,
        kv_type: str = "f16",
        kv_sink: Optional[int] = None,
    ) -> None: ...
    @overload
    def generate(
        self,
        prompt: Prompt,
        *,
        chat: bool = False,
        system: Optional[str] = None,
        max_new_tokens: Optional[int] = None,
        temperature: Optional[float] = None,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        repetition_penalty: Optional[float] = None,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        seed: int = 0,
        stream: Literal[False] = False,
    ) -> str: ...
    @overload
    def generate(
        self,
        prompt: Prompt,
        *,
        chat: bool = False,
        system: Optional[str] = None,
        max_new_tokens: Optional[int] = None,
        temperature: Optional[float] = None,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        repetition_penalty: Optional[float] = None,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        seed: int = 0,
        stream: Literal[True],
    ) -> TokenStream: ...
    def generate_ids(
        self,
        prompt: Prompt,
        *,
        chat: bool = False,
        system: Optional[str] = None,
        max_new_tokens: Optional[int] = None,
        temperature: Optional[float] = None,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        repetition_penalty: Optional[float] = None,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        seed: int = 0,
    ) -> List[int]: ...
    def perplexity(self, texts: Iterable[str]) -> npt.NDArray[np.float64]:
        """Perplexity of each text [N] (context-sized windows, as `zhinao perplexity`)."""
    def tokenize(self, text: str) -> List[int]: ...
    def detokenize(self, ids: Sequence[int]) -> str: ...
    @property
    def ctx_len(self) -> int: ...
