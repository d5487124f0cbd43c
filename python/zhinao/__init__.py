"""zhinao: the 360Zhinao model family on any GPU (wgpu: Vulkan, Metal, DX12), from Python.

    import zhinao
    emb = zhinao.Embedder("assets/tiny-bert")
    vectors = emb.embed(["今天天气很好", "The weather is nice today."])   # numpy float32 [2, D]

Every call that runs the GPU releases the GIL. Engine errors are raised as
:class:`ZhinaoError` subclasses (:class:`InputError` is also a ``ValueError``,
:class:`ModelError` an ``OSError``). ``zhinao.data`` has the Ray Data actors for scoring corpora
across many GPUs.
"""

from ._errors import DeviceError, InputError, ModelError, ZhinaoError
from ._zhinao import Embedder, Generator, Reranker, TokenStream, __version__, devices

__all__ = [
    "Embedder",
    "Reranker",
    "Generator",
    "TokenStream",
    "devices",
    "ZhinaoError",
    "InputError",
    "ModelError",
    "DeviceError",
    "__version__",
]
