"""zhinao's Python classes against the CLI on the tiny checkpoints: the same embeddings, scores,
greedy (and seeded sampled) tokens and perplexities; bad input raises a clear exception."""

import json
import threading
import time
import warnings

import numpy as np
import pytest

import zhinao
from conftest import asset, cli, write_jsonl

TEXTS = [
    "今天天气很好",
    "The weather is nice today.",
    "Ünïcödé, emoji 🎉 and CJK 中文混合 text",
    "",
    "def f(x):\n    return x * 2",
    "a " * 60,
]


@pytest.fixture(scope="module")
def embedder():
    return zhinao.Embedder(asset("tiny-bert"))


@pytest.fixture(scope="module")
def reranker():
    return zhinao.Reranker(asset("tiny-reranker"))


@pytest.fixture(scope="module")
def generator():
    return zhinao.Generator(asset("tiny-zhinao"))


def cli_embed(tmp_path, model, texts, *extra):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jsonl(inp, texts)
    cli("embed", "--model", model, "--input", str(inp), "--output", str(out), *extra)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(len(texts)))
    return np.array([r["embedding"] for r in rows], dtype=np.float32)


# ---- embeddings ---------------------------------------------------------------------------------


def test_embed_equals_cli(embedder, tmp_path):
    got = embedder.embed(TEXTS)
    assert got.dtype == np.float32 and got.shape == (len(TEXTS), embedder.dim)
    assert got.flags["C_CONTIGUOUS"]
    want = cli_embed(tmp_path, asset("tiny-bert"), TEXTS)
    np.testing.assert_array_equal(got, want)  # the same code path: bit-identical


def test_embed_mean_pooling_and_query_instruction_equal_cli(tmp_path):
    e = zhinao.Embedder(asset("tiny-bert-padded"), query_instruction="zhinao-search")
    assert e.pooling == "mean"
    got = e.embed(TEXTS[:3], is_query=True)
    want = cli_embed(tmp_path, asset("tiny-bert-padded"), TEXTS[:3], "--query-instruction", "zhinao-search")
    np.testing.assert_array_equal(got, want)


def test_embed_accepts_any_sequence_of_str(embedder):
    a = embedder.embed(TEXTS[:2])
    np.testing.assert_array_equal(a, embedder.embed(tuple(TEXTS[:2])))
    np.testing.assert_array_equal(a, embedder.embed(np.array(TEXTS[:2], dtype=object)))
    np.testing.assert_array_equal(a, embedder.embed(t for t in TEXTS[:2]))


# ---- reranking ----------------------------------------------------------------------------------

QUERY = "中国的首都是哪里？"
DOCS = ["北京是中国的首都。", "今天天气很好。", "The capital of France is Paris.", ""]


def cli_rerank(tmp_path, query, docs):
    path = tmp_path / "docs.jsonl"
    write_jsonl(path, docs)
    out = cli("rerank", "--model", asset("tiny-reranker"), "--query", query, "--docs", str(path), "--json",
              json_out=True)
    by_index = {r["index"]: r for r in out["results"]}
    raw = np.array([by_index[i]["score"] for i in range(len(docs))], dtype=np.float32)
    rel = np.array([by_index[i]["relevance"] for i in range(len(docs))], dtype=np.float32)
    return raw, rel


def test_rerank_equals_cli(reranker, tmp_path):
    raw, rel = cli_rerank(tmp_path, QUERY, DOCS)
    got = reranker.score(QUERY, DOCS)
    assert got.dtype == np.float32 and got.shape == (len(DOCS),)
    np.testing.assert_allclose(got, raw, rtol=0, atol=1e-6)
    np.testing.assert_allclose(reranker.score(QUERY, DOCS, normalize=True), rel, rtol=0, atol=1e-6)


def test_score_pairs_equal_per_query_cli(reranker, tmp_path):
    q2 = "What is the capital of France?"
    pairs = [(QUERY, DOCS[0]), (q2, DOCS[2]), (QUERY, DOCS[1]), [q2, DOCS[0]]]
    got = reranker.score_pairs(pairs)
    raw1, _ = cli_rerank(tmp_path, QUERY, [DOCS[0], DOCS[1]])
    raw2, _ = cli_rerank(tmp_path, q2, [DOCS[2], DOCS[0]])
    np.testing.assert_allclose(got, [raw1[0], raw2[0], raw1[1], raw2[1]], rtol=0, atol=1e-6)


# ---- generation and perplexity ------------------------------------------------------------------

PROMPT = "你好，请介绍一下你自己"


def cli_generate(*args):
    return cli("generate", "--model", asset("tiny-zhinao"), *args, "--json", json_out=True)


def test_greedy_tokens_equal_cli(generator):
    want = cli_generate("--prompt", PROMPT, "--temperature", "0", "--max-new-tokens", "24")
    ids = generator.generate_ids(PROMPT, temperature=0, max_new_tokens=24)
    assert ids == want["output_ids"]
    assert generator.generate(PROMPT, temperature=0, max_new_tokens=24) == want["text"]
    # token ids as the prompt, as `--prompt-ids`
    assert generator.generate_ids(want["prompt_ids"], temperature=0, max_new_tokens=24) == ids


def test_chat_and_seeded_sampling_equal_cli(generator):
    want = cli_generate("--prompt", PROMPT, "--chat", "--system", "Be brief.", "--max-new-tokens", "16",
                        "--temperature", "0.8", "--top-p", "0.9", "--top-k", "20", "--seed", "7")
    got = generator.generate_ids(PROMPT, chat=True, system="Be brief.", max_new_tokens=16, temperature=0.8,
                                 top_p=0.9, top_k=20, seed=7)
    assert got == want["output_ids"]


def test_stream_pieces_join_to_the_text(generator):
    want = cli_generate("--prompt", PROMPT, "--temperature", "0", "--max-new-tokens", "24")
    stream = generator.generate(PROMPT, temperature=0, max_new_tokens=24, stream=True)
    assert isinstance(stream, zhinao.TokenStream) and stream.token_ids is None
    pieces = list(stream)
    assert "".join(pieces) == want["text"]
    assert stream.token_ids == want["output_ids"]
    assert stream.stop_reason == want["stop_reason"]


def test_dropped_stream_cancels_and_frees_the_session(generator):
    stream = generator.generate(PROMPT, temperature=0, max_new_tokens=400, stream=True)
    next(stream)
    stream.close()
    rest = list(stream)
    assert stream.stop_reason == "cancelled" and len(rest) < 399
    s2 = generator.generate(PROMPT, temperature=0, max_new_tokens=400, stream=True)
    next(s2)
    del s2  # dropped mid-generation: the worker stops and releases the session
    assert len(generator.generate_ids(PROMPT, temperature=0, max_new_tokens=4)) == 4


# Two threads iterate one stream: whichever calls next() while the other waits inside it gets
# ValueError, as a Python generator raises. 0.5.0 deadlocked (the waiting thread needed the GIL back
# while the other blocked on the stream's lock holding it), so the threads run in a child process
# that must finish in time.
TWO_ITERATORS = """
import json, sys, threading, time, zhinao
stream = zhinao.Generator(sys.argv[1]).generate(sys.argv[2], temperature=0, max_new_tokens=200, stream=True)
busy, pieces = [], []
def drain():
    while True:
        try:
            pieces.append(next(stream))
        except StopIteration:
            return
        except ValueError as e:
            busy.append(str(e))
            time.sleep(0.0005)
threads = [threading.Thread(target=drain) for _ in range(2)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps({"busy": busy[:1], "n_busy": len(busy), "pieces": len(pieces), "stop": stream.stop_reason,
                  "ids": len(stream.token_ids or [])}))
"""


def test_two_threads_iterating_one_stream_get_an_error_not_a_deadlock():
    import subprocess
    import sys

    try:
        p = subprocess.run([sys.executable, "-c", TWO_ITERATORS, asset("tiny-zhinao"), PROMPT],
                           capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        pytest.fail("two threads iterating one TokenStream deadlocked")
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["n_busy"] > 0 and r["busy"] == ["generator already executing"], r
    assert r["pieces"] > 0 and r["stop"] in ("eos", "length") and r["ids"] > 0, r


def test_perplexity_equals_cli(generator):
    texts = ["The quick brown fox jumps over the lazy dog.", "今天天气很好，我们去公园散步吧。"]
    got = generator.perplexity(texts)
    assert got.dtype == np.float64 and got.shape == (2,)
    want = [cli("perplexity", "--model", asset("tiny-zhinao"), "--text", t, "--json", json_out=True)["ppl"]
            for t in texts]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_gil_released_while_generating(generator):
    done = threading.Event()
    ticks = 0

    def work():
        generator.generate_ids(PROMPT, temperature=0, max_new_tokens=48)
        done.set()

    t = threading.Thread(target=work)
    t.start()
    while not done.is_set():
        ticks += 1  # runs only while the worker does not hold the GIL
        time.sleep(0.001)
    t.join()
    assert ticks > 5


# ---- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [zhinao.Embedder, zhinao.Reranker, zhinao.Generator])
def test_missing_directory(cls, tmp_path):
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(zhinao.ModelError, match="no-such-model") as e:
        cls(missing)
    assert isinstance(e.value, OSError)


def test_wrong_model_kind():
    with pytest.raises(zhinao.ModelError):
        zhinao.Embedder(asset("tiny-zhinao"))
    with pytest.raises(zhinao.ModelError):
        zhinao.Generator(asset("tiny-bert"))
    with pytest.raises(zhinao.ModelError, match="linear"):
        zhinao.Reranker(asset("tiny-zhinao"))


def test_empty_inputs(embedder, reranker, generator):
    with pytest.raises(ValueError, match="empty"):
        embedder.embed([])
    with pytest.raises(ValueError, match="empty"):
        reranker.score(QUERY, [])
    with pytest.raises(ValueError, match="empty"):
        reranker.score_pairs([])
    with pytest.raises(ValueError, match="empty"):
        generator.perplexity([])
    with pytest.raises(ValueError, match="no tokens"):
        generator.perplexity([""])
    with pytest.raises(ValueError, match="no tokens"):
        generator.generate("")
    with pytest.raises(ValueError, match="no tokens"):
        generator.generate([])


def test_non_string_items(embedder, reranker, generator):
    with pytest.raises(TypeError, match=r"texts\[1\] is int"):
        embedder.embed(["ok", 3])
    with pytest.raises(TypeError, match="single str"):
        embedder.embed("a bare string")
    with pytest.raises(TypeError, match=r"texts\[0\] is NoneType"):
        embedder.embed([None])
    with pytest.raises(TypeError, match="sequence of str"):
        embedder.embed(42)
    with pytest.raises(TypeError, match=r"docs\[2\] is bytes"):
        reranker.score(QUERY, ["a", "b", b"c"])
    with pytest.raises(TypeError, match="query"):
        reranker.score(None, ["a"])
    with pytest.raises(TypeError, match=r"pairs\[1\]"):
        reranker.score_pairs([("q", "d"), ("q", "d", "x")])
    with pytest.raises(TypeError, match=r"pairs\[0\]"):
        reranker.score_pairs(["qd"])
    with pytest.raises(TypeError, match=r"texts\[0\] is float"):
        generator.perplexity([1.5])
    with pytest.raises(TypeError, match="prompt"):
        generator.generate(3.5)


def test_over_long_text(reranker, generator):
    long = "长" * 5000
    strict = zhinao.Embedder(asset("tiny-bert"), truncate=False)
    with pytest.raises(zhinao.InputError, match=r"texts\[1\].*truncation is off"):
        strict.embed(["short", long])
    lenient = zhinao.Embedder(asset("tiny-bert"))
    with pytest.warns(UserWarning, match="truncated"):
        v = lenient.embed(["short", long])
    assert v.shape[0] == 2 and np.isfinite(v).all()
    strict_r = zhinao.Reranker(asset("tiny-reranker"), truncate=False)
    with pytest.raises(zhinao.InputError, match="pair 0"):
        strict_r.score(QUERY, [long])
    with pytest.warns(UserWarning, match="truncated"):
        assert np.isfinite(reranker.score(QUERY, [long])).all()
    with pytest.raises(zhinao.InputError, match="does not fit the context"):
        generator.generate(long, max_new_tokens=4)


def test_bad_parameters(generator):
    with pytest.raises(zhinao.InputError, match="sampling parameters"):
        generator.generate(PROMPT, temperature=float("nan"), max_new_tokens=2)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        generator.generate([1, 10**9], max_new_tokens=2)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generator.generate(PROMPT, max_new_tokens=0)
    with pytest.raises(ValueError, match="pooling"):
        zhinao.Embedder(asset("tiny-bert"), pooling="max")
    with pytest.raises(zhinao.InputError, match="score position"):
        zhinao.Reranker(asset("tiny-reranker"), position="middle")
    with pytest.raises(zhinao.DeviceError):
        zhinao.Embedder(asset("tiny-bert"), device="no-such-adapter-xyz")
    # the session still works after all of these
    assert len(generator.generate_ids(PROMPT, temperature=0, max_new_tokens=2)) == 2


def test_kv_type_equals_cli(generator):
    # q4 with an f16 sink holding the whole text is f16; without one it is quantized, as the CLI's.
    text = ["今天天气很好，我们去公园散步吧。"]
    f16 = generator.perplexity(text)
    sunk = zhinao.Generator(asset("tiny-zhinao"), kv_type="q4", kv_sink=64).perplexity(text)
    np.testing.assert_allclose(sunk, f16, rtol=1e-5)
    q4 = zhinao.Generator(asset("tiny-zhinao"), kv_type="q4", kv_sink=0).perplexity(text)
    want = cli("perplexity", "--model", asset("tiny-zhinao"), "--text", text[0], "--json", "--kv-type", "q4",
               "--kv-sink", "0", json_out=True)["ppl"]
    np.testing.assert_allclose(q4, [want], rtol=1e-12)
    assert abs(q4[0] - f16[0]) > 1e-5 * f16[0]
    with pytest.raises(zhinao.InputError, match="unknown KV type"):
        zhinao.Generator(asset("tiny-zhinao"), kv_type="q3")


def test_errors_are_one_family():
    for cls in (zhinao.InputError, zhinao.ModelError, zhinao.DeviceError):
        assert issubclass(cls, zhinao.ZhinaoError)
    assert issubclass(zhinao.InputError, ValueError)
    assert zhinao.devices()  # at least the adapter the tests run on
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert isinstance(zhinao.__version__, str)
