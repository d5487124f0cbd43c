"""Smoke test of `zhinao serve` with the official `openai` Python client (run by .ci/run).

Starts the server on 127.0.0.1 (a free port) with the tiny checkpoints and an API key, then: lists the
models; a greedy chat completion, the same streamed (joined deltas equal the text), streamed with
`include_usage` (last chunk has `choices == []` and the totals); a text completion; embeddings as
floats and as base64 (the client's default) with equal vectors; and the errors the client maps to
exceptions (unknown model -> BadRequestError, wrong key -> AuthenticationError). SIGTERM must stop
the server with exit status 0. Prints "N passed, M failed" and exits non-zero on any failure.

Usage: python tests/openai_smoke.py [path/to/zhinao]
"""

import os
import queue
import signal
import subprocess
import sys
import threading
import time

import openai

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target", "release", "zhinao")
KEY = "smoke-key"


def start():
    proc = subprocess.Popen(
        [BIN, "serve", "--model", "assets/tiny-zhinao", "--embedding-model", "assets/tiny-bert",
         "--port", "0", "--api-key", KEY, "--quiet"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(l) for l in proc.stdout], daemon=True).start()
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            if proc.poll() is not None:
                raise RuntimeError("server exited: " + proc.stderr.read())
            continue
        if "ready on http://" in line:
            addr = line.split("ready on http://")[1].split(":")[0:2]
            return proc, "%s:%s" % (addr[0], addr[1])
    proc.kill()
    raise RuntimeError("server not ready within 180 s")


def main():
    proc, addr = start()
    base = "http://%s/v1" % addr
    client = openai.OpenAI(base_url=base, api_key=KEY, max_retries=0, timeout=120)
    results = []

    def check(name, fn):
        t0 = time.time()
        try:
            fn()
            results.append((name, None))
            print("ok    %-40s %.2f s" % (name, time.time() - t0), flush=True)
        except Exception as e:  # report every failure, keep going
            results.append((name, e))
            print("FAIL  %-40s %r" % (name, e), flush=True)

    msgs = [{"role": "user", "content": "你好，请介绍一下你自己"}]

    def models():
        ids = sorted(m.id for m in client.models.list())
        assert ids == ["tiny-bert", "tiny-zhinao"], ids

    state = {}

    def chat():
        r = client.chat.completions.create(model="tiny-zhinao", messages=msgs, temperature=0, max_tokens=8)
        c = r.choices[0]
        assert c.message.role == "assistant" and isinstance(c.message.content, str)
        assert c.finish_reason in ("stop", "length"), c.finish_reason
        assert r.usage.completion_tokens <= 8 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
        state["text"] = c.message.content

    def stream():
        s = client.chat.completions.create(model="tiny-zhinao", messages=msgs, temperature=0, max_tokens=8, stream=True)
        text = "".join(ch.choices[0].delta.content or "" for ch in s if ch.choices)
        assert text == state["text"], (text, state["text"])

    def stream_usage():
        s = client.chat.completions.create(model="tiny-zhinao", messages=msgs, temperature=0, max_tokens=8,
                                           stream=True, stream_options={"include_usage": True})
        chunks = list(s)
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0, chunks[-1]
        assert all(c.usage is None for c in chunks[:-1])
        assert "".join(c.choices[0].delta.content or "" for c in chunks[:-1] if c.choices) == state["text"]

    def completion():
        r = client.completions.create(model="tiny-zhinao", prompt="The capital of France", temperature=0, max_tokens=6)
        assert isinstance(r.choices[0].text, str) and r.usage.completion_tokens <= 6

    def embeddings():
        texts = ["你好，世界", "hello world"]
        f = client.embeddings.create(model="tiny-bert", input=texts, encoding_format="float")
        b = client.embeddings.create(model="tiny-bert", input=texts)  # the client asks for base64 and decodes
        assert len(f.data) == 2 and f.usage.prompt_tokens > 0
        for x, y in zip(f.data, b.data):
            assert len(x.embedding) == len(y.embedding) > 0
            assert max(abs(p - q) for p, q in zip(x.embedding, y.embedding)) < 1e-6

    def errors():
        try:
            client.chat.completions.create(model="no-such-model", messages=msgs, max_tokens=2)
            raise AssertionError("no error for an unknown model")
        except openai.BadRequestError as e:
            assert e.status_code == 400 and "no-such-model" in str(e)
        bad = openai.OpenAI(base_url=base, api_key="wrong", max_retries=0, timeout=30)
        try:
            bad.chat.completions.create(model="tiny-zhinao", messages=msgs, max_tokens=2)
            raise AssertionError("no error for a wrong key")
        except openai.AuthenticationError as e:
            assert e.status_code == 401
        assert [m.id for m in bad.models.list()], "/v1/models is public"

    for name, fn in [("models.list", models), ("chat.completions", chat), ("chat.completions stream", stream),
                     ("stream include_usage", stream_usage), ("completions", completion),
                     ("embeddings float and base64", embeddings), ("errors as exceptions", errors)]:
        check(name, fn)

    def sigterm():
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
        assert rc == 0, "exit status %d: %s" % (rc, proc.stderr.read()[-2000:])

    check("SIGTERM exits 0", sigterm)
    if proc.poll() is None:
        proc.kill()
    failed = [n for n, e in results if e is not None]
    print("openai-python %s against zhinao serve at %s" % (openai.__version__, addr))
    print("openai_smoke: %d passed, %d failed" % (len(results) - len(failed), len(failed)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
