#!/usr/bin/env python3
"""CUDA-parity harness + GPU report for the zhinao engine (see tools/parity/README.md).

    python tools/parity/run.py --zhinao target/release/zhinao --out /tmp/parity \
        [--device cuda|cpu] [--shapes real|small] [--models 7b,7b-int4,reranker,bert] [--bench] \
        [--model-dir-7b DIR] [--model-dir-7b-int4 DIR] [--model-dir-reranker DIR] [--model-dir-bert DIR] \
        [--layers N] [--work DIR] [--deadline SECONDS]

1. builds random-weight checkpoints in the published layouts (spec §2.6, §5, §6, §7) at the real or reduced
   shapes (or uses the given checkpoint directories);
2. runs the PyTorch reference (tools/fixtures/zhinao_ref.py for the LM, float32 and half precision;
   transformers BertModel for BERT; LM backbone + `linear` for the reranker) on CUDA when available;
3. runs the engine through its CLI (perplexity [--dump], generate, embed, rerank, bench);
4. compares (per-layer hidden states, logits, forced-decoding top-1, greedy prefix, embedding cosines,
   rerank scores/order) and, with --bench, times engine vs PyTorch;
5. writes OUT/report.md (+ OUT/results.json, OUT/log.txt).

Every step is timed and logged; a failing step is recorded in the report, never a crash.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
FIXTURES = os.path.join(ROOT, "tools", "fixtures")
sys.path.insert(0, FIXTURES)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

import make_fixtures as mf  # noqa: E402  (Vocab, zhinao_config, generation_config, tokenizer_config, LAYER_ORDER, ...)
import make_gptq as mg  # noqa: E402      (pack_qweight / pack_qzeros / unpack_rows: AutoGPTQ v1 packing)
from zhinao_ref import ZhinaoDims, ZhinaoRef, deinterleave_qkv, interleave_qkv, rope_inv_freq  # noqa: E402

# ----------------------------------------------------------------------------------------------
# shapes
# ----------------------------------------------------------------------------------------------

SHAPES = {
    "real": {
        "7b": dict(hidden=4096, heads=32, kv_heads=32, layers=32, inter=11008, vocab=158464, theta=10000.0,
                   max_pos=4096),
        "reranker": dict(hidden=2048, heads=16, kv_heads=16, layers=24, inter=5632, vocab=158464, theta=10000.0,
                         max_pos=4096),
        "bert": dict(hidden=1024, heads=16, layers=24, inter=4096, vocab=21128, max_pos=512),
        "prompt_len": 64, "forced": 256, "greedy": 32,
        "bench_prompts": ((512, 128), (2048, 16)),     # (prompt tokens, generated tokens)
    },
    "small": {
        "7b": dict(hidden=256, heads=2, kv_heads=2, layers=4, inter=768, vocab=4096, theta=10000.0, max_pos=1024),
        "reranker": dict(hidden=256, heads=2, kv_heads=2, layers=2, inter=768, vocab=4096, theta=10000.0,
                         max_pos=1024),
        "bert": dict(hidden=256, heads=4, layers=2, inter=1024, vocab=1024, max_pos=512),
        "prompt_len": 32, "forced": 256, "greedy": 16,
        "bench_prompts": ((64, 8), (128, 4)),          # lavapipe-sized
    },
}
GPTQ_GS = 128
SHARD_BYTES = 2_000_000_000
LINEARS = mg.LINEARS

EMBED_TEXTS = [
    "为这个句子生成表示以用于检索相关文章：北京今天天气很好",
    "hello world",
    "What is a search engine? Retrieval models embed queries and passages into vectors.",
    "大模型",
    "360智脑 is a large language model；我们在上海。",
    "the weather in beijing today is good",
    "搜索引擎 retrieval relevant document text",
    "how to run a large language model",
]
RERANK_QUERY = "什么是机器学习？"
RERANK_DOCS = [
    "机器学习是人工智能的一个分支，它让计算机从数据中学习规律。",
    "Beijing is the capital of the People's Republic of China.",
    "The quick brown fox jumps over the lazy dog.",
    "今天天气怎么样？",
    "Machine learning lets computers learn patterns from data.",
    "深度学习是机器学习的一种方法。",
]


# ----------------------------------------------------------------------------------------------
# logging / step bookkeeping
# ----------------------------------------------------------------------------------------------

class Run:
    def __init__(self, out_dir, deadline_s):
        self.out = out_dir
        self.t0 = time.time()
        self.deadline = self.t0 + deadline_s if deadline_s else None
        self.steps = []          # {name, status, seconds, note}
        self.results = {}        # section -> dict
        self.log_f = open(os.path.join(out_dir, "log.txt"), "a", encoding="utf-8")
        self.args = None

    def log(self, msg):
        line = f"[{time.time() - self.t0:7.1f}s] {msg}"
        print(line, flush=True)
        self.log_f.write(line + "\n")
        self.log_f.flush()

    def remaining(self):
        return None if self.deadline is None else self.deadline - time.time()

    def step(self, name, fn, *a, min_left=0, **k):
        """Run fn; record status and time. Returns fn's value or None on failure/skip."""
        rem = self.remaining()
        if rem is not None and rem < min_left:
            self.steps.append(dict(name=name, status="skipped", seconds=0.0,
                                   note=f"time budget: {rem:.0f}s left < {min_left}s needed"))
            self.log(f"SKIP {name}: time budget ({rem:.0f}s left)")
            return None
        self.log(f"START {name}")
        t = time.time()
        try:
            val = fn(*a, **k)
            status, note = "ok", ""
            if isinstance(val, StepNote):
                status, note, val = val.status, val.note, val.value
        except EngineError as e:
            val = None
            status = "not run" if str(e).startswith("not run") else "failed"
            note = f"engine: {str(e)[:400]}"
        except Exception as e:  # noqa: BLE001
            val, status = None, "failed"
            note = f"{type(e).__name__}: {str(e)[:400]}"
            self.log_f.write(traceback.format_exc() + "\n")
        dt = time.time() - t
        self.steps.append(dict(name=name, status=status, seconds=round(dt, 1), note=note))
        self.log(f"END {name}: {status} in {dt:.1f}s {note}")
        if self.args is not None:      # keep report.md current: a killed run still leaves a report
            try:
                write_report(self, self.args)
            except Exception as e:  # noqa: BLE001
                self.log(f"report write failed: {e}")
        return val


class StepNote:
    def __init__(self, value, status, note):
        self.value, self.status, self.note = value, status, note


class EngineError(RuntimeError):
    pass


# ----------------------------------------------------------------------------------------------
# engine CLI
# ----------------------------------------------------------------------------------------------

def engine(run, args, cli_args, timeout=600, stdin=None, parse_json=True):
    rem = run.remaining()
    if rem is not None:
        timeout = max(10, min(timeout, rem - 5))
    cmd = [args.zhinao] + cli_args
    shown = " ".join(shlex.quote(c) if len(c) < 200 else shlex.quote(c[:60] + "…") for c in cmd)
    run.log(f"  $ {shown}")
    t = time.time()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=stdin)
    except subprocess.TimeoutExpired:
        raise EngineError(f"timed out after {timeout:.0f}s: {shown}")
    dt = time.time() - t
    err_tail = p.stderr.strip()[-1500:]
    if err_tail:
        run.log_f.write(f"  stderr: {err_tail}\n")
    if p.returncode != 0:
        msg = err_tail.splitlines()
        first = next((ln for ln in msg if "error" in ln.lower()), msg[0] if msg else f"rc {p.returncode}")
        if "unrecognized subcommand" in err_tail or "unexpected argument" in err_tail:
            raise EngineError(f"not run: {first.strip()}")
        raise EngineError(f"rc {p.returncode}: {first.strip()[:300]}")
    run.log(f"  ok in {dt:.1f}s")
    if not parse_json:
        return p.stdout, dt
    return json.loads(p.stdout), dt


def is_not_run(note):
    return note.startswith("EngineError: not run")


# ----------------------------------------------------------------------------------------------
# metrics
# ----------------------------------------------------------------------------------------------

def nerr(a, b):
    """normalised squared error ||a-b||^2 / ||b||^2 and max |a-b|."""
    a, b = a.double().cpu(), b.double().cpu()
    return float(((a - b) ** 2).sum() / max((b ** 2).sum(), 1e-300)), float((a - b).abs().max())


def prefix_len(a, b):
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def kendall_tau(x, y):
    n, s = len(x), 0
    for i in range(n):
        for j in range(i + 1, n):
            s += np.sign(x[i] - x[j]) * np.sign(y[i] - y[j])
    return float(s / (n * (n - 1) / 2)) if n > 1 else 1.0


def fmt(x, p=3):
    if x is None:
        return "–"
    if isinstance(x, float):
        if x == 0:
            return "0"
        if abs(x) < 1e-3 or abs(x) >= 1e5:
            return f"{x:.{p}e}"
        return f"{x:.{p + 1}g}"
    return str(x)


# ----------------------------------------------------------------------------------------------
# checkpoint builders
# ----------------------------------------------------------------------------------------------

class Gen:
    def __init__(self, dev, seed):
        self.dev = dev
        self.g = torch.Generator(device=dev).manual_seed(seed)

    def n(self, *shape, std):
        return torch.randn(*shape, generator=self.g, device=self.dev) * std

    def randint(self, hi, shape):
        return torch.randint(0, hi, shape, generator=self.g, device=self.dev)


def lm_config(v, s, dtype="bfloat16"):
    cfg = mf.zhinao_config(v, hidden=s["hidden"], heads=s["heads"], kv_heads=s["kv_heads"], layers=s["layers"],
                           inter=s["inter"], theta=s["theta"], max_pos=s["max_pos"], dtype=dtype)
    cfg["vocab_size"] = s["vocab"]
    assert s["vocab"] >= v.n_tokens
    return cfg


def lm_float_tensors(cfg, v, gen):
    """Yield (name, float32 tensor on gen.dev) in HF save order, with make_fixtures.make_weights' scales
    (residual stream O(1), logits std ~3; specials/padding rows damped so greedy runs stay on real tokens)."""
    H, nh, nkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd, I, L, V = H // nh, cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    emb = gen.n(V, H, std=0.5)
    emb[v.n_ranks:] *= 0.5
    yield "model.embed_tokens.weight", emb
    del emb
    for l in range(L):
        p = f"model.layers.{l}."
        q = gen.n(nh * hd, H, std=1.2 / math.sqrt(H))
        k = gen.n(nkv * hd, H, std=1.2 / math.sqrt(H))
        vv = gen.n(nkv * hd, H, std=1.0 / math.sqrt(H))
        yield p + "self_attn.qkv_proj.weight", interleave_qkv(q, k, vv, nh, nkv, hd)
        del q, k, vv
        qb, kb, vb = gen.n(nh * hd, std=0.2), gen.n(nkv * hd, std=0.2), gen.n(nkv * hd, std=0.1)
        yield p + "self_attn.qkv_proj.bias", interleave_qkv(qb, kb, vb, nh, nkv, hd)
        yield p + "self_attn.o_proj.weight", gen.n(H, nh * hd, std=0.8 / math.sqrt(nh * hd))
        yield p + "mlp.gate_proj.weight", gen.n(I, H, std=1.0 / math.sqrt(H))
        yield p + "mlp.up_proj.weight", gen.n(I, H, std=1.0 / math.sqrt(H))
        yield p + "mlp.down_proj.weight", gen.n(H, I, std=1.0 / math.sqrt(I))
        yield p + "input_layernorm.weight", 1.0 + gen.n(H, std=0.1)
        yield p + "post_attention_layernorm.weight", 1.0 + gen.n(H, std=0.1)
    yield "model.norm.weight", 1.0 + gen.n(H, std=0.1)
    lm = gen.n(V, H, std=3.0 / math.sqrt(H))
    lm[v.n_ranks:] *= 0.1
    yield "lm_head.weight", lm


class ShardWriter:
    """save_pretrained-like sharding: model-0000i-of-0000N.safetensors + model.safetensors.index.json."""

    def __init__(self, out_dir, shard_bytes=SHARD_BYTES):
        self.out, self.limit = out_dir, shard_bytes
        self.cur, self.cur_bytes, self.files, self.map, self.total = {}, 0, [], {}, 0

    def add(self, name, t):
        nb = t.numel() * t.element_size()
        if self.cur and self.cur_bytes + nb > self.limit:
            self.flush()
        self.cur[name] = t.detach().to("cpu").contiguous()
        self.cur_bytes += nb
        self.total += nb

    def flush(self):
        if not self.cur:
            return
        tmp = f"shard-{len(self.files) + 1}.tmp"
        save_file(self.cur, os.path.join(self.out, tmp), metadata={"format": "pt"})
        self.files.append((tmp, list(self.cur)))
        self.cur, self.cur_bytes = {}, 0

    def close(self):
        self.flush()
        n = len(self.files)
        for i, (tmp, names) in enumerate(self.files):
            fname = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            os.replace(os.path.join(self.out, tmp), os.path.join(self.out, fname))
            for k in names:
                self.map[k] = fname
        mf.write_json(os.path.join(self.out, "model.safetensors.index.json"),
                      {"metadata": {"total_size": self.total}, "weight_map": dict(sorted(self.map.items()))})
        return n


def prep_dir(d):
    if os.path.exists(d):
        shutil.rmtree(d)
    os.makedirs(os.path.join(d, "vocab"))
    shutil.copyfile(mf.VOCAB_PATH, os.path.join(d, "vocab", "360.tiktoken"))


def build_7b(run, args, v, s, dev):
    """bf16 sharded checkpoint; returns (cfg, weights dict of bf16 tensors on dev)."""
    d = os.path.join(args.work, f"zhinao-7b-{args.shapes}")
    prep_dir(d)
    cfg = lm_config(v, s)
    mf.write_json(os.path.join(d, "config.json"), cfg)
    mf.write_json(os.path.join(d, "generation_config.json"), mf.generation_config(v))
    mf.write_json(os.path.join(d, "tokenizer_config.json"), mf.tokenizer_config(v, cfg["model_max_length"]))
    sw, w = ShardWriter(d), {}
    hd = cfg["hidden_size"] // cfg["num_attention_heads"]
    for name, t in lm_float_tensors(cfg, v, Gen(dev, 1001)):
        tb = t.to(torch.bfloat16)
        del t
        w[name] = tb
        sw.add(name, tb)
        if name == "model.layers.0.post_attention_layernorm.weight":
            sw.add("model.layers.0.self_attn.rotary_emb.inv_freq", rope_inv_freq(hd, cfg["rope_theta"]).float())
    n = sw.close()
    run.log(f"  7b checkpoint: {d} ({sw.total / 1e9:.2f} GB, {n} shards)")
    return d, cfg, w


def pack_qweight_t(q):
    """torch (device) version of make_gptq.pack_qweight: q [N, K] in 0..15 -> int32 [K/8, N] packed along K."""
    qt = q.T.to(torch.int64)
    K, N = qt.shape
    out = torch.zeros(K // 8, N, dtype=torch.int64, device=q.device)
    for j in range(8):
        out |= qt[j::8] << (4 * j)
    return torch.where(out >= 2 ** 31, out - 2 ** 32, out).to(torch.int32)


def build_7b_int4(run, args, v, s, dev):
    """AutoGPTQ v1 checkpoint (bits 4, group 128, sym, desc_act false) with RANDOM int4 values and scales.
    Returns (dir, cfg, weights dict: fp16 tensors on dev, decoder linears as dense dequantized [N, K] fp16)."""
    d = os.path.join(args.work, f"zhinao-7b-int4-{args.shapes}")
    prep_dir(d)
    cfg = lm_config(v, s, dtype="float16")
    qc = mg.quantize_config(False)
    qc.update(group_size=GPTQ_GS, model_file_base_name=f"gptq_model-4bit-{GPTQ_GS}g")
    cfg["quantization_config"] = qc
    mf.write_json(os.path.join(d, "config.json"), cfg)
    mf.write_json(os.path.join(d, "quantize_config.json"), qc)
    mf.write_json(os.path.join(d, "generation_config.json"), mf.generation_config(v))
    mf.write_json(os.path.join(d, "tokenizer_config.json"), mf.tokenizer_config(v, cfg["model_max_length"]))
    gen = Gen(dev, 6006)
    tensors, w, checked = {}, {}, False
    for name, t in lm_float_tensors(cfg, v, Gen(dev, 1001)):
        base = name[:-len(".weight")] if name.endswith(".weight") else None
        if base and any(base.endswith(lin) for lin in LINEARS):
            N, K = t.shape
            std = t.std().item()
            del t
            q = gen.randint(16, (N, K))
            # per (group, column) scale: uniform q-8 has std 4.61 -> scale = target std / 4.61 (x U[0.75,1.25])
            scales = ((std / 4.61) * (0.75 + 0.5 * torch.rand(K // GPTQ_GS, N, generator=gen.g, device=dev))
                      ).to(torch.float16)
            qweight = pack_qweight_t(q)
            if not checked:   # our device packer must equal make_gptq's (numpy) AutoGPTQ packer
                ref_pack = mg.pack_qweight(q[:, :256].cpu())
                assert torch.equal(qweight[:32].cpu(), ref_pack), "device packer != make_gptq.pack_qweight"
                assert torch.equal(mg.unpack_rows(qweight[:32].cpu()), q[:, :256].T.cpu())
                checked = True
            g_idx = (torch.arange(K, device=dev) // GPTQ_GS).to(torch.int32)
            qzeros = torch.full((K // GPTQ_GS, N // 8), 0x77777777, dtype=torch.int32, device=dev)
            # dequant exactly like the library (fp16): W = scales[g] * (q - (z + 1)), z + 1 = 8
            W = (scales[g_idx.long()].T * (q - 8).to(torch.float16))          # [N, K] fp16
            del q
            w[name] = W
            for kind, tt in (("qweight", qweight), ("qzeros", qzeros), ("scales", scales), ("g_idx", g_idx)):
                tensors[f"{base}.{kind}"] = tt.cpu().contiguous()
        else:
            th = t.to(torch.float16)
            del t
            w[name] = th
            tensors[name] = th.cpu().contiguous()
    fname = f"{qc['model_file_base_name']}.safetensors"
    save_file(tensors, os.path.join(d, fname), metadata={"format": "pt"})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    run.log(f"  int4 checkpoint: {d}/{fname} ({total / 1e9:.2f} GB)")
    return d, cfg, w


def build_reranker(run, args, v, s, dev):
    d = os.path.join(args.work, f"zhinao-reranker-{args.shapes}")
    prep_dir(d)
    cfg = lm_config(v, s)
    cfg["use_flash_attn"] = True
    cfg["transformers_version"] = "4.34.0"
    mf.write_json(os.path.join(d, "config.json"), cfg)
    mf.write_json(os.path.join(d, "generation_config.json"), mf.generation_config(v))
    mf.write_json(os.path.join(d, "tokenizer_config.json"),
                  mf.tokenizer_config(v, cfg["model_max_length"], padding_side="right"))
    w = {}
    for name, t in lm_float_tensors(cfg, v, Gen(dev, 4004)):
        w[name] = t.to(torch.bfloat16)
        del t
    H = cfg["hidden_size"]
    gen = Gen(dev, 4005)
    w["linear.weight"] = (gen.n(1, H, std=1.0 / math.sqrt(H))).to(torch.bfloat16)
    w["linear.bias"] = torch.tensor([0.25], device=dev).to(torch.bfloat16)
    torch.save({k: t.cpu().contiguous() for k, t in w.items()}, os.path.join(d, "pytorch_model.bin"))
    run.log(f"  reranker checkpoint: {d}/pytorch_model.bin")
    return d, cfg, w


def bert_vocab(n):
    import make_bert
    voc = make_bert.build_vocab()
    voc += [f"[unused{i}]" for i in range(n - len(voc))]
    return voc[:n]


def build_bert(run, args, s, dev):
    from transformers import BertConfig, BertModel, BertTokenizerFast
    d = os.path.join(args.work, f"bert-{args.shapes}")
    if os.path.exists(d):
        shutil.rmtree(d)
    os.makedirs(d)
    voc = bert_vocab(s["vocab"])
    with open(os.path.join(d, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(voc) + "\n")
    kw = dict(do_lower_case=True, tokenize_chinese_chars=True, strip_accents=None, model_max_length=s["max_pos"])
    try:
        tok = BertTokenizerFast(vocab=os.path.join(d, "vocab.txt"), **kw)
    except TypeError:
        tok = BertTokenizerFast(vocab_file=os.path.join(d, "vocab.txt"), **kw)
    tok.save_pretrained(d)
    cfg = BertConfig(vocab_size=s["vocab"], hidden_size=s["hidden"], num_hidden_layers=s["layers"],
                     num_attention_heads=s["heads"], intermediate_size=s["inter"],
                     max_position_embeddings=s["max_pos"], type_vocab_size=2, hidden_act="gelu",
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, layer_norm_eps=1e-12, pad_token_id=0)
    with torch.device(dev):
        model = BertModel(cfg, add_pooling_layer=True).float().eval()
    g = torch.Generator(device=dev).manual_seed(3004)
    with torch.no_grad():   # make_bert's recipe: LN ~1, small biases, embeddings 0.5, linears 1/sqrt(fan_in)
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g, device=dev)
            if "LayerNorm.weight" in name:
                p.copy_(1.0 + 0.1 * r)
            elif name.endswith("bias"):
                p.copy_(0.05 * r)
            elif "embeddings" in name:
                p.copy_(0.5 * r)
            else:
                p.copy_(r / p.shape[-1] ** 0.5)
    sd = {k: t.detach().cpu().contiguous() for k, t in model.state_dict().items()}
    save_file(sd, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    cd = cfg.to_dict()
    cd["architectures"] = ["BertModel"]
    cd.pop("_attn_implementation", None)
    cd["torch_dtype"] = "float32"
    mf.write_json(os.path.join(d, "config.json"), cd)
    run.log(f"  bert checkpoint: {d} (vocab {len(voc)})")
    return d, model, tok


def load_lm_dir(d, dev):
    """Real checkpoint directory -> (cfg, weights on dev). bf16 shards, GPTQ file, or pytorch_model.bin."""
    cfg = json.load(open(os.path.join(d, "config.json")))
    files = os.listdir(d)
    w = {}
    if "quantization_config" in cfg or any(f.startswith("gptq_model") for f in files):
        f = next(f for f in files if f.startswith("gptq_model") and f.endswith(".safetensors"))
        rd = load_file(os.path.join(d, f), device=str(dev))
        for k, t in rd.items():
            if t.is_floating_point() and not k.endswith(".scales"):
                w[k] = t.half()
        bases = {k[:-len(".qweight")] for k in rd if k.endswith(".qweight")}
        for b in bases:
            qw, qz, sc, gi = (rd[b + x].cpu() for x in (".qweight", ".qzeros", ".scales", ".g_idx"))
            w[b + ".weight"] = mg.dequant_fp16(qw, qz, sc, gi).T.contiguous().to(dev)
    elif any(f.endswith(".safetensors") for f in files):
        for f in sorted(f for f in files if f.endswith(".safetensors")):
            w.update(load_file(os.path.join(d, f), device=str(dev)))
    else:
        w.update(torch.load(os.path.join(d, "pytorch_model.bin"), map_location=dev, weights_only=True))
    w = {k: t for k, t in w.items() if not k.endswith("rotary_emb.inv_freq")}
    return cfg, w


# ----------------------------------------------------------------------------------------------
# LM parity
# ----------------------------------------------------------------------------------------------

def half_dtype(cfg):
    return torch.float16 if "quantization_config" in cfg or cfg.get("torch_dtype") == "float16" else torch.bfloat16


def lm_parity(run, args, tag, d, cfg, w, dev, v, sh):
    res = run.results.setdefault(tag, {"dir": d})
    dims = ZhinaoDims.from_config(cfg)
    if args.layers_note:
        res["layers_note"] = args.layers_note
    hdt = half_dtype(cfg)
    res["half_dtype"] = str(hdt).replace("torch.", "")
    g = torch.Generator().manual_seed(7)
    T = sh["prompt_len"]
    prompt = torch.randint(0, v.n_ranks, (T,), generator=g).tolist()
    res["prompt_len"] = T

    # --- reference forward passes (fp32 and half) ---
    def ref_forward():
        out = {}
        with torch.device(dev):
            r32 = ZhinaoRef(dims, w, dtype=torch.float32)
            o = r32.forward(prompt)
            out["f32"] = {k: o[k].cpu() for k in ("hidden", "logits")}
            n_forced = sh["forced"]
            gids, _ = r32.greedy(prompt, n_forced)
            out["greedy_f32"] = gids
            del r32
            torch.cuda.empty_cache() if dev.type == "cuda" else None
            rh = ZhinaoRef(dims, w, dtype=hdt)
            o = rh.forward(prompt)
            out["half"] = {k: o[k].cpu() for k in ("hidden", "logits")}
            # forced decoding: argmax of the half ref on the fp32 greedy sequence (baseline agreement)
            seq = prompt + gids[:-1]
            out["half_forced_argmax"] = rh.forward(seq)["logits"][T - 1:].argmax(-1).cpu().tolist()
            gh, _ = rh.greedy(prompt, sh["greedy"])
            out["greedy_half"] = gh
            del rh
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        return out

    ref = run.step(f"{tag}: reference (fp32 + {res['half_dtype']}) forward, greedy {sh['forced']}", ref_forward)
    if ref is None:
        return
    res["ref_half_vs_f32_logits"] = nerr(ref["half"]["logits"], ref["f32"]["logits"])
    gids = ref["greedy_f32"]
    res["ref_half_forced_top1"] = sum(int(a == b) for a, b in zip(ref["half_forced_argmax"], gids)) / len(gids)
    res["ref_half_greedy_prefix"] = prefix_len(ref["greedy_half"], gids)

    # --- engine perplexity with dump ---
    dump = os.path.join(args.work, f"dump-{tag}.safetensors")
    if os.path.exists(dump):
        os.remove(dump)

    def eng_ppl():
        base = ["perplexity", "--model", d, "--ids", json.dumps(prompt), "--json", "--top-k", "5"]
        try:
            js, dt = engine(run, args, base + ["--dump", dump])
            return StepNote((js, True), "ok", f"{dt:.1f}s")
        except EngineError as e:
            if "not run" not in str(e) or "--dump" not in str(e):
                raise
            js, dt = engine(run, args, base)
            return StepNote((js, False), "ok", "dump unavailable (engine has no --dump yet)")

    r = run.step(f"{tag}: engine perplexity on the prompt (+ --dump)", eng_ppl)
    if r is not None:
        js, dumped = r
        pos = js["positions"]
        ref_lg = ref["f32"]["logits"]
        ref_half_lg = ref["half"]["logits"]
        am = [p["argmax"] for p in pos]
        res["prompt_top1_vs_f32"] = sum(int(a == b) for a, b in zip(am, ref_lg.argmax(-1).tolist())) / len(am)
        res["prompt_top1_vs_half"] = sum(int(a == b) for a, b in zip(am, ref_half_lg.argmax(-1).tolist())) / len(am)
        # top-k logits listed by the engine vs the reference logits at those ids
        mx, mxh = 0.0, 0.0
        for t, p in enumerate(pos):
            for tid, lg in p["top"]:
                mx = max(mx, abs(lg - ref_lg[t, tid].item()))
                mxh = max(mxh, abs(lg - ref_half_lg[t, tid].item()))
        res["topk_logits_maxabs_vs_f32"], res["topk_logits_maxabs_vs_half"] = mx, mxh
        lp_ref = torch.log_softmax(ref_lg.double(), -1)
        lpd = [abs(p["logprob"] - lp_ref[t, prompt[t + 1]].item()) for t, p in enumerate(pos[:-1])
               if p.get("logprob") is not None]
        res["logprob_maxabs_vs_f32"] = max(lpd) if lpd else None
        res["ppl_engine"] = js.get("ppl")
        nll = -torch.stack([lp_ref[t, prompt[t + 1]] for t in range(T - 1)]).mean().item()
        res["ppl_ref_f32"] = math.exp(nll)
        res["dump"] = "ok" if dumped and os.path.exists(dump) else "dump unavailable"
        if dumped and os.path.exists(dump):
            dd = load_file(dump)
            layers = []
            eh = dd["hidden"]
            for l in range(min(eh.shape[0], ref["f32"]["hidden"].shape[0])):
                e32 = nerr(eh[l], ref["f32"]["hidden"][l])
                eh_ = nerr(eh[l], ref["half"]["hidden"][l])
                hh = nerr(ref["half"]["hidden"][l], ref["f32"]["hidden"][l])
                layers.append([l, e32[0], e32[1], eh_[0], eh_[1], hh[0]])
            res["hidden_layers"] = layers
            res["logits_vs_f32"] = nerr(dd["logits"], ref_lg)
            res["logits_vs_half"] = nerr(dd["logits"], ref_half_lg)

    # --- forced decoding over the fp32 reference's greedy continuation ---
    def forced():
        seq = prompt + gids[:-1]
        js, dt = engine(run, args, ["perplexity", "--model", d, "--ids", json.dumps(seq), "--json", "--top-k", "1"])
        am = [p["argmax"] for p in js["positions"]][T - 1:]
        agree = sum(int(a == b) for a, b in zip(am, gids))
        return StepNote(agree / len(gids), "ok", f"{agree}/{len(gids)}")

    r = run.step(f"{tag}: engine forced decoding over {len(gids)} reference tokens", forced, min_left=60)
    res["forced_top1_vs_f32"] = r

    # --- greedy generation ---
    def greedy():
        n = sh["greedy"]
        js, dt = engine(run, args, ["generate", "--model", d, "--prompt-ids", json.dumps(prompt), "--temperature", "0",
                                    "--max-new-tokens", str(n), "--json"])
        out = js["output_ids"]
        return {"n": len(out), "stop": js.get("stop_reason"), "prefix_vs_f32": prefix_len(out, gids[:n]),
                "prefix_vs_half": prefix_len(out, ref["greedy_half"][:n]), "timings": js.get("timings", {})}

    res["greedy"] = run.step(f"{tag}: engine greedy generate {sh['greedy']} tokens", greedy, min_left=45)


# ----------------------------------------------------------------------------------------------
# reranker / bert parity
# ----------------------------------------------------------------------------------------------

def reranker_parity(run, args, d, cfg, w, dev, v):
    import make_reranker
    res = run.results.setdefault("reranker", {"dir": d})
    dims = ZhinaoDims.from_config(cfg)
    lw, lb = w["linear.weight"], w.get("linear.bias")

    def ref_scores():
        out = {}
        for dt in (torch.float32, torch.bfloat16):
            with torch.device(dev):
                r = ZhinaoRef(dims, {k: t for k, t in w.items() if not k.startswith("linear.")}, dtype=dt)
                sc = []
                for doc in RERANK_DOCS:
                    ids, zero_pos = make_reranker.build_ids(v, RERANK_QUERY, doc)
                    fin = r.forward(ids)["final"][zero_pos - 1]
                    s = fin.float() @ lw.float().T[:, 0] + (lb.float()[0] if lb is not None else 0.0)
                    sc.append(float(s))
                out[str(dt).replace("torch.", "")] = sc
                del r
        return out

    ref = run.step("reranker: reference scores (fp32 + bf16)", ref_scores)
    if ref is None:
        return
    res["ref"] = ref

    def eng():
        docs = os.path.join(args.work, "rerank-docs.txt")
        open(docs, "w", encoding="utf-8").write("\n".join(RERANK_DOCS) + "\n")
        js, dt = engine(run, args, ["rerank", "--model", d, "--query", RERANK_QUERY, "--docs", docs, "--json"])
        sc = [None] * len(RERANK_DOCS)
        for r in js["results"]:
            sc[r["index"]] = r["score"]
        return {"scores": sc, "seconds": dt}

    e = run.step("reranker: engine rerank", eng)
    if e is None:
        return
    res["engine"] = e["scores"]
    for k, rs in ref.items():
        res[f"maxabs_vs_{k}"] = max(abs(a - b) for a, b in zip(e["scores"], rs))
        res[f"tau_vs_{k}"] = kendall_tau(e["scores"], rs)
        res[f"same_order_vs_{k}"] = list(np.argsort(e["scores"])) == list(np.argsort(rs))


def bert_parity(run, args, d, model, tok, dev):
    res = run.results.setdefault("bert", {"dir": d})

    def ref_emb():
        out = {}
        enc = tok(EMBED_TEXTS, padding=True, truncation=True, max_length=512, return_tensors="pt").to(dev)
        for dt in (torch.float32, torch.bfloat16):
            m = model.to(dt)
            with torch.no_grad():
                last = m(**enc).last_hidden_state.float()
            out[str(dt).replace("torch.", "")] = torch.nn.functional.normalize(last[:, 0], dim=-1).cpu()
        model.float()
        return out

    ref = run.step("bert: reference CLS+L2 embeddings (fp32 + bf16, transformers BertModel)", ref_emb)
    if ref is None:
        return
    res["ref_bf16_vs_f32_cos_min"] = float((ref["bfloat16"] * ref["float32"]).sum(-1).min())

    def eng():
        inp = os.path.join(args.work, "embed-input.txt")
        open(inp, "w", encoding="utf-8").write("\n".join(EMBED_TEXTS) + "\n")
        out, dt = engine(run, args, ["embed", "--model", d, "--input", inp, "--output", "-"], parse_json=False)
        embs = [None] * len(EMBED_TEXTS)
        for line in out.splitlines():
            if line.strip():
                j = json.loads(line)
                embs[j["index"]] = j["embedding"]
        return torch.tensor(embs, dtype=torch.float32)

    e = run.step("bert: engine embed", eng)
    if e is None:
        return
    for k, r in ref.items():
        cos = torch.nn.functional.cosine_similarity(e, r, dim=-1)
        res[f"cos_vs_{k}"] = (float(cos.min()), float(cos.mean()))


# ----------------------------------------------------------------------------------------------
# benchmarks
# ----------------------------------------------------------------------------------------------

def cuda_time(fn, warmup=2, iters=5):
    """median seconds of fn(): torch.cuda.Event timing on CUDA, perf_counter on CPU (small-run smoke test)."""
    if not torch.cuda.is_available() or torch.get_default_device().type != "cuda":
        for _ in range(warmup):
            fn()
        ts = []
        for _ in range(iters):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return float(np.median(ts))
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b) / 1e3)
    return float(np.median(ts))


def torch_roofline(run, dev):
    res = run.results.setdefault("roofline", {})
    res["device"] = str(dev)
    nb = 1 << 30 if dev.type == "cuda" else 1 << 27
    x = torch.empty(nb, dtype=torch.uint8, device=dev)
    y = torch.empty_like(x)
    with torch.device(dev):
        t = cuda_time(lambda: y.copy_(x), 3, 10 if dev.type == "cuda" else 3)
    res["copy_GBps"] = 2 * nb / t / 1e9     # read + write
    del x, y
    n = 8192 if dev.type == "cuda" else 512
    mdt = torch.bfloat16 if dev.type == "cuda" else torch.float32     # CPU bf16 GEMM can be very slow
    res["matmul_dtype"] = str(mdt).replace("torch.", "")
    a = torch.randn(n, n, device=dev, dtype=mdt)
    b = torch.randn(n, n, device=dev, dtype=mdt)
    with torch.device(dev):
        t = cuda_time(lambda: a @ b, 3, 10 if dev.type == "cuda" else 3)
    res["matmul_TFLOPs"] = 2 * n ** 3 / t / 1e12
    return res


def lm_bytes_flops(cfg, int4=False):
    H, I, L, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = H // nh
    lin = L * (H * (nh + 2 * nkv) * hd + nh * hd * H + 3 * H * I)
    head = V * H
    wbytes = (lin * (0.5 + 2 / GPTQ_GS) if int4 else lin * 2) + head * 2     # per decoded token (embed row ignored)
    return wbytes, 2 * (lin + head)                                             # bytes/token, FLOP/token


def engine_bench(run, args, tag, d, cfg, int4):
    """decode / prefill tokens/s from `bench generate` (or `generate --json` timings)."""
    res = run.results.setdefault("bench", {}).setdefault(tag, {})
    g = torch.Generator().manual_seed(11)
    for plen, gen_n in args.sh["bench_prompts"]:
        key = f"engine_p{plen}"

        def one():
            try:
                js, dt = engine(run, args, ["bench", "generate", "--model", d, "--prompt-len", str(plen),
                                            "--gen", str(gen_n), "--json"], timeout=300)
                src = "bench generate"
            except EngineError as e:
                run.log(f"  bench generate unavailable ({e}); using generate --json timings")
                ids = torch.randint(0, 3000, (plen,), generator=g).tolist()
                js, dt = engine(run, args, ["generate", "--model", d, "--prompt-ids", json.dumps(ids), "--temperature",
                                            "0", "--max-new-tokens", str(gen_n), "--ctx", str(plen + gen_n + 64),
                                            "--json"], timeout=300)
                src = "generate --json"
            t = js.get("timings", js)
            return {"source": src, "prefill_tps": t.get("prefill_tokens_per_second"),
                    "decode_tps": t.get("decode_tokens_per_second"), "raw": {k: t[k] for k in list(t)[:12]}}

        res[key] = run.step(f"bench {tag}: engine prompt {plen}", one, min_left=60)


def torch_lm_bench(run, args, tag, cfg, w, dev):
    """PyTorch CUDA baseline: transformers Qwen2ForCausalLM (same maths, de-interleaved q/k/v) in bf16,
    eager and SDPA attention, prefill 512/2048 and decode (KV cache) tokens/s, timed with cuda events."""
    res = run.results.setdefault("bench", {}).setdefault(tag, {})
    from transformers import Qwen2Config, Qwen2ForCausalLM
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg["hidden_size"] // nh
    dt = half_dtype(cfg)
    qcfg = Qwen2Config(vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
                       intermediate_size=cfg["intermediate_size"], num_hidden_layers=cfg["num_hidden_layers"],
                       num_attention_heads=nh, num_key_value_heads=nkv, max_position_embeddings=4096,
                       rope_theta=cfg["rope_theta"], rms_norm_eps=cfg["rms_norm_eps"], tie_word_embeddings=False,
                       use_sliding_window=False, hidden_act="silu", attention_dropout=0.0)
    sd = {}
    for k, t in w.items():
        if ".qkv_proj." in k:
            q, kk, vv = deinterleave_qkv(t, nh, nkv, hd)
            b, kind = k.split(".qkv_proj.")
            sd[f"{b}.q_proj.{kind}"], sd[f"{b}.k_proj.{kind}"], sd[f"{b}.v_proj.{kind}"] = q, kk, vv
        elif k.startswith("model.") or k.startswith("lm_head"):
            sd[k] = t
    with torch.device("meta"):
        model = Qwen2ForCausalLM(qcfg)
    model.load_state_dict({k: t.to(dt) for k, t in sd.items()}, strict=False, assign=True)
    with torch.device(dev):    # non-persistent inv_freq buffer: rebuild it off the meta device
        model.model.rotary_emb = type(model.model.rotary_emb)(config=qcfg)
    model.eval()
    out = {}
    for impl in ("eager", "sdpa"):
        model.config._attn_implementation = impl
        for layer in model.model.layers:
            layer.self_attn.config._attn_implementation = impl
        r = {}
        for plen, _ in args.sh["bench_prompts"]:
            ids = torch.randint(0, 3000, (1, plen), device=dev)
            with torch.no_grad(), torch.device(dev):
                t = cuda_time(lambda: model(ids, use_cache=False, logits_to_keep=1), 1, 3)
            r[f"prefill_tps_p{plen}"] = plen / t
        ids = torch.randint(0, 3000, (1, args.sh["bench_prompts"][0][0]), device=dev)
        with torch.no_grad():
            o = model(ids, use_cache=True, logits_to_keep=1)
            pkv = o.past_key_values
            nxt = o.logits[:, -1:].argmax(-1)
            n = 32 if dev.type == "cuda" else 8
            sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
            for i in range(n + 4):
                if i == 4:
                    sync()
                    t0 = time.perf_counter()
                o = model(nxt, past_key_values=pkv, use_cache=True)
                pkv, nxt = o.past_key_values, o.logits[:, -1:].argmax(-1)   # argmax: no host sync per token
            sync()
        r["decode_tps"] = n / (time.perf_counter() - t0)
        out[impl] = r
        run.log(f"  torch {impl}: {r}")
    del model
    torch.cuda.empty_cache()
    res["torch"] = out
    return out


def torch_small_bench(run, args, kind, obj, dev, v=None):
    """PyTorch CUDA embedding tokens/s (bert) or rerank pairs/s (reranker, bf16 ZhinaoRef = eager)."""
    res = run.results.setdefault("bench", {}).setdefault(kind, {})
    if kind == "bert":
        model, tok = obj
        model = model.to(torch.bfloat16)
        enc = tok(EMBED_TEXTS * 8, padding=True, truncation=True, max_length=512, return_tensors="pt").to(dev)
        ntok = int(enc["attention_mask"].sum())
        with torch.no_grad(), torch.device(dev):
            t = cuda_time(lambda: model(**enc), 2, 5)
        model.float()
        res["torch_bf16_tokens_per_s"] = ntok / t
    else:
        import make_reranker
        cfg, w = obj
        dims = ZhinaoDims.from_config(cfg)
        with torch.device(dev):
            r = ZhinaoRef(dims, {k: t for k, t in w.items() if not k.startswith("linear.")}, dtype=torch.bfloat16)
            seqs = [make_reranker.build_ids(v, RERANK_QUERY, doc)[0] for doc in RERANK_DOCS]
            with torch.no_grad():
                t = cuda_time(lambda: [r.forward(s) for s in seqs], 1, 3)
        res["torch_bf16_eager_pairs_per_s"] = len(seqs) / t
    return res


def engine_bench_ops(run, args):
    """`zhinao bench ops` (kernel GB/s, GFLOP/s at the 7B shapes): raw output into the report. Too slow for
    lavapipe, so only run when the reference runs on CUDA (i.e. on a GPU machine)."""
    if args.device_used != "cuda":
        return StepNote(None, "skipped", "CPU run (lavapipe would take too long at the 7B shapes)")
    out, dt = engine(run, args, ["bench", "ops"], timeout=150, parse_json=False)
    run.results.setdefault("bench_ops", {})["output"] = out.strip()[-6000:]
    return out


def engine_small_bench(run, args, kind, d):
    """`zhinao bench embed|rerank` build random weights in memory at the published shape (BERT-large;
    the 1.8B reranker with 512-token pairs); `d` (the checkpoint) is not needed. `--shrink 8` for small shapes."""
    res = run.results.setdefault("bench", {}).setdefault(kind, {})
    cmd = ["bench", "embed" if kind == "bert" else "rerank"]
    if args.shapes == "small":
        cmd += ["--shrink", "8"]
    out, dt = engine(run, args, cmd, timeout=180, parse_json=False)
    res["engine_output"] = out.strip()[-800:]
    m = re.search(r"forward [\d.]+ ms\s+([\d.]+) tokens/s", out) if kind == "bert" else re.search(r"([\d.]+) pairs/s", out)
    if m:
        res["engine_tokens_per_s" if kind == "bert" else "engine_pairs_per_s"] = float(m.group(1))
    return res


# ----------------------------------------------------------------------------------------------
# environment
# ----------------------------------------------------------------------------------------------

def sh_out(cmd, timeout=60):
    try:
        p = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=timeout)
        return (p.stdout + (p.stderr if p.returncode else "")).strip()
    except Exception as e:   # noqa: BLE001
        return f"({type(e).__name__}: {e})"


def environment(run, args, dev):
    env = run.results.setdefault("env", {})
    env["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    env["host"] = f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs"
    env["python"] = sys.version.split()[0]
    env["torch"] = torch.__version__
    try:
        import transformers
        env["transformers"] = transformers.__version__
    except Exception:   # noqa: BLE001
        env["transformers"] = "missing"
    env["cuda"] = torch.version.cuda
    env["torch_device"] = str(dev) + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else "")
    env["nvidia_smi"] = sh_out("nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv")
    env["libvulkan"] = sh_out("ldconfig -p | grep libvulkan.so.1") or "MISSING: libvulkan.so.1 not in ldconfig -p"
    env["zhinao"] = args.zhinao
    env["zhinao_version"] = sh_out(f"{shlex.quote(args.zhinao)} --version")
    env["devices"] = sh_out(f"{shlex.quote(args.zhinao)} devices 2>&1")
    env["env_vars"] = {k: os.environ.get(k) for k in ("WGPU_BACKEND", "VK_ICD_FILENAMES", "VK_DRIVER_FILES")
                       if os.environ.get(k)}
    if "MISSING" in env["libvulkan"] or not env["devices"] or "error" in env["devices"].lower():
        return StepNote(env, "warning", "Vulkan loader or adapter missing: engine steps will fail")
    return env


# ----------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------

def write_report(run, args):
    R = run.results
    env = R.get("env", {})
    L = []
    a = L.append
    a(f"# zhinao CUDA-parity report ({args.shapes} shapes, reference on {args.device_used})\n")
    a(f"- date: {env.get('date')}\n- host: {env.get('host')}\n- GPU (nvidia-smi): "
      f"`{env.get('nvidia_smi', '').replace(chr(10), ' | ')}`")
    a(f"- torch {env.get('torch')}, transformers {env.get('transformers')}, CUDA {env.get('cuda')}, "
      f"python {env.get('python')}; reference device: {env.get('torch_device')}")
    a(f"- engine: `{env.get('zhinao')}` ({env.get('zhinao_version')}); env {env.get('env_vars')}")
    a(f"- libvulkan: `{env.get('libvulkan')}`")
    a(f"- command: `{' '.join(shlex.quote(x) for x in sys.argv)}`")
    if args.layers_note:
        a(f"- **{args.layers_note}**")
    a("\n`zhinao devices`:\n```\n" + env.get("devices", "") + "\n```\n")
    a("Metrics: nerr = ‖engine−ref‖²/‖ref‖²; maxabs = max |engine−ref|. `f32` = tools/fixtures/zhinao_ref.py in float32; "
      "`half` = the same reference with weights and activations in bf16 (7B, reranker) or fp16 (Int4, as AutoGPTQ "
      "runs it), RMSNorm/RoPE angles/softmax in fp32. Weights are random (std 1/sqrt(fan_in), norms ≈ 1), "
      "so top-1 margins are smaller than a trained model's: compare the engine's agreement with the "
      "half-vs-f32 reference baseline.\n")

    for tag in ("7b", "7b-int4"):
        if tag not in R:
            continue
        r = R[tag]
        a(f"## {tag} ({r.get('dir')})\n")
        a("| figure | vs ref f32 | vs ref half | ref half vs f32 |\n|---|---|---|---|")
        lv, lh = r.get("logits_vs_f32"), r.get("logits_vs_half")
        rh = r.get("ref_half_vs_f32_logits")
        a(f"| logits nerr (dump) | {fmt(lv and lv[0])} | {fmt(lh and lh[0])} | {fmt(rh and rh[0])} |")
        a(f"| logits maxabs (dump) | {fmt(lv and lv[1])} | {fmt(lh and lh[1])} | {fmt(rh and rh[1])} |")
        a(f"| top-5 logits maxabs (perplexity JSON) | {fmt(r.get('topk_logits_maxabs_vs_f32'))} | "
          f"{fmt(r.get('topk_logits_maxabs_vs_half'))} | |")
        a(f"| prompt top-1 agreement ({r.get('prompt_len')} positions) | {fmt(r.get('prompt_top1_vs_f32'))} | "
          f"{fmt(r.get('prompt_top1_vs_half'))} | |")
        a(f"| next-token logprob maxabs | {fmt(r.get('logprob_maxabs_vs_f32'))} | | |")
        a(f"| perplexity (engine / ref) | {fmt(r.get('ppl_engine'))} / {fmt(r.get('ppl_ref_f32'))} | | |")
        a(f"| forced-decoding top-1 over the f32 greedy continuation | {fmt(r.get('forced_top1_vs_f32'))} | | "
          f"{fmt(r.get('ref_half_forced_top1'))} |")
        gr = r.get("greedy") or {}
        a(f"| greedy matching prefix (of {gr.get('n', '–')}, stop {gr.get('stop', '–')}) | {fmt(gr.get('prefix_vs_f32'))}"
          f" | {fmt(gr.get('prefix_vs_half'))} | {fmt(r.get('ref_half_greedy_prefix'))} |")
        a(f"\nper-layer dump: **{r.get('dump', 'not run')}**\n")
        if r.get("hidden_layers"):
            a("| hidden[l] (0 = embedding) | nerr vs f32 | maxabs vs f32 | nerr vs half | maxabs vs half | "
              "ref half vs f32 nerr |\n|---|---|---|---|---|---|")
            for l, e32, m32, eh, mh, hh in r["hidden_layers"]:
                a(f"| {l} | {fmt(e32)} | {fmt(m32)} | {fmt(eh)} | {fmt(mh)} | {fmt(hh)} |")
        a("")

    if "reranker" in R:
        r = R["reranker"]
        a(f"## reranker ({r.get('dir')})\n")
        a("score = linear(model.norm(h))[position before the \"0\" placeholder], input of spec §7 (make_reranker.build_ids)\n")
        a("| doc | ref f32 | ref bf16 | engine |\n|---|---|---|---|")
        eng = r.get("engine") or [None] * len(RERANK_DOCS)
        for i, doc in enumerate(RERANK_DOCS):
            a(f"| {i}: {doc[:30]} | {fmt(r['ref']['float32'][i])} | {fmt(r['ref']['bfloat16'][i])} | {fmt(eng[i])} |")
        for k in ("float32", "bfloat16"):
            if f"maxabs_vs_{k}" in r:
                a(f"\nvs {k}: max |Δscore| {fmt(r[f'maxabs_vs_{k}'])}, Kendall tau {fmt(r[f'tau_vs_{k}'])}, "
                  f"same order {r[f'same_order_vs_{k}']}")
        a("")
    if "bert" in R:
        r = R["bert"]
        a(f"## bert / embedding ({r.get('dir')})\n")
        a("| figure | min | mean |\n|---|---|---|")
        for k in ("float32", "bfloat16"):
            c = r.get(f"cos_vs_{k}")
            a(f"| cosine engine vs ref {k} (CLS + L2) | {fmt(c and c[0], 6)} | {fmt(c and c[1], 6)} |")
        a(f"| ref bf16 vs f32 cosine | {fmt(r.get('ref_bf16_vs_f32_cos_min'), 6)} | |\n")

    B = R.get("bench")
    if args.bench:
        a("## benchmarks\n")
        rf = R.get("roofline", {})
        a(f"measured with torch in this run: copy bandwidth (device-to-device, read+write) "
          f"**{fmt(rf.get('copy_GBps'))} GB/s**, {rf.get('matmul_dtype', 'bf16')} matmul **{fmt(rf.get('matmul_TFLOPs'))} TFLOP/s** (torch on {rf.get('device')})\n")
        a("| model | what | engine tok/s | torch eager | torch SDPA | engine % of copy BW | engine % of matmul | "
          "engine source |\n|---|---|---|---|---|---|---|---|")
        for tag in ("7b", "7b-int4"):
            b = (B or {}).get(tag, {})
            if not b:
                continue
            wb, fl = b.get("bytes_flops", (None, None))
            tr = b.get("torch") or {}
            for plen, _ in args.sh["bench_prompts"]:
                e = b.get(f"engine_p{plen}") or {}
                pt = e.get("prefill_tps")
                pct = (100 * pt * fl / 1e12 / rf["matmul_TFLOPs"]) if pt and fl and rf.get("matmul_TFLOPs") else None
                a(f"| {tag} | prefill {plen} | {fmt(pt)} | {fmt(tr.get('eager', {}).get(f'prefill_tps_p{plen}'))} | "
                  f"{fmt(tr.get('sdpa', {}).get(f'prefill_tps_p{plen}'))} | | {fmt(pct)} | {e.get('source', '–')} |")
            p0 = args.sh["bench_prompts"][0][0]
            e = b.get(f"engine_p{p0}") or {}
            dtps = e.get("decode_tps")
            pct = (100 * dtps * wb / 1e9 / rf["copy_GBps"]) if dtps and wb and rf.get("copy_GBps") else None
            a(f"| {tag} | decode (after {p0}) | {fmt(dtps)} | {fmt(tr.get('eager', {}).get('decode_tps'))} | "
              f"{fmt(tr.get('sdpa', {}).get('decode_tps'))} | {fmt(pct)} | | {e.get('source', '–')} |")
        if R.get("bench_ops"):
            a("\n`zhinao bench ops`:\n```\n" + R["bench_ops"]["output"] + "\n```")
        if B:
            for k in ("bert", "reranker"):
                if k in B:
                    a(f"\n{k}: {json.dumps(B[k], default=str)[:600]}")
        a("\nengine sources and raw timings: see results.json. torch Int4 columns use the dense fp16 "
          "dequantized weights (no GPTQ kernel in the reference environment). Decode % = weight bytes per token "
          "(int4: 0.5 B + scales per weight, fp16/bf16 embed-less lm_head) × tok/s ÷ copy bandwidth; prefill % = "
          "2·params·tok/s ÷ matmul rate.\n")

    a("## steps\n\n| step | status | seconds | note |\n|---|---|---|---|")
    for s in run.steps:
        a(f"| {s['name']} | {s['status']} | {s['seconds']} | {s['note'].replace('|', '/')[:300]} |")
    a(f"\ntotal wall time {time.time() - run.t0:.0f}s\n")
    txt = "\n".join(L)
    open(os.path.join(args.out, "report.md"), "w", encoding="utf-8").write(txt)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"results": R, "steps": run.steps}, f, indent=1, default=str)
    return txt


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zhinao", default=os.path.join(ROOT, "target", "release", "zhinao"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", default="/tmp/zhinao-parity-work", help="checkpoints and dumps go here")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--shapes", choices=["real", "small"], default="real")
    ap.add_argument("--models", default="7b,7b-int4,reranker,bert")
    ap.add_argument("--layers", type=int, default=None, help="override the 7B/7B-int4/reranker layer count")
    ap.add_argument("--prompt-len", type=int, default=None)
    ap.add_argument("--forced", type=int, default=None, help="forced-decoding length (default 256)")
    ap.add_argument("--bench", action="store_true")
    ap.add_argument("--deadline", type=float, default=None, help="seconds; later steps are skipped past it")
    for m in ("7b", "7b-int4", "reranker", "bert"):
        ap.add_argument(f"--model-dir-{m}", default=None)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.work, exist_ok=True)
    args.zhinao = os.path.abspath(args.zhinao)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("CUDA not available: falling back to CPU", flush=True)
        args.device = "cpu"
    dev = torch.device(args.device)
    args.device_used = args.device
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    if dev.type == "cpu":
        torch.set_num_threads(max(1, os.cpu_count() or 1))
    run = Run(args.out, args.deadline)
    sh = dict(SHAPES[args.shapes])
    if args.prompt_len:
        sh["prompt_len"] = args.prompt_len
    if args.forced:
        sh["forced"] = args.forced
    args.layers_note = None
    if args.layers:
        for k in ("7b", "reranker"):
            sh[k] = dict(sh[k], layers=args.layers)
        args.layers_note = (f"--layers {args.layers}: real widths with {args.layers} decoder layers "
                            f"(published: 7B 32, reranker 24) to fit the time budget")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.sh = sh
    run.args = args
    run.log(f"zhinao parity: shapes {args.shapes}, device {dev}, models {models}, bench {args.bench}, work {args.work}")

    run.step("environment (versions, nvidia-smi, libvulkan, zhinao devices)", environment, run, args, dev)
    v = mf.Vocab()
    if args.bench:
        run.step("torch roofline (copy bandwidth, bf16 matmul)", torch_roofline, run, dev)
        run.step("engine bench ops", engine_bench_ops, run, args)

    for tag in ("7b", "7b-int4"):
        if tag not in models:
            continue
        user_dir = getattr(args, "model_dir_" + tag.replace("-", "_"))
        if user_dir:
            r = run.step(f"{tag}: load {user_dir}", lambda: (user_dir,) + load_lm_dir(user_dir, dev))
        else:
            builder = build_7b if tag == "7b" else build_7b_int4
            r = run.step(f"{tag}: build random checkpoint ({args.shapes})", builder, run, args, v, sh["7b"], dev)
        if r is None:
            continue
        d, cfg, w = r
        lm_parity(run, args, tag, d, cfg, w, dev, v, sh)
        if args.bench:
            b = run.results.setdefault("bench", {}).setdefault(tag, {})
            b["bytes_flops"] = lm_bytes_flops(cfg, int4=(tag == "7b-int4"))
            engine_bench(run, args, tag, d, cfg, tag == "7b-int4")
            run.step(f"bench {tag}: torch transformers eager/SDPA", torch_lm_bench, run, args, tag, cfg, w, dev,
                     min_left=60)
        del w
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        write_report(run, args)

    if "reranker" in models:
        if args.model_dir_reranker:
            r = run.step("reranker: load", lambda: (args.model_dir_reranker,) + load_lm_dir(args.model_dir_reranker,
                                                                                            dev))
        else:
            r = run.step(f"reranker: build random checkpoint ({args.shapes})", build_reranker, run, args, v,
                         sh["reranker"], dev, min_left=60)
        if r is not None:
            d, cfg, w = r
            reranker_parity(run, args, d, cfg, w, dev, v)
            if args.bench:
                run.step("bench reranker: engine", engine_small_bench, run, args, "reranker", d, min_left=30)
                run.step("bench reranker: torch", torch_small_bench, run, args, "reranker", (cfg, w), dev, v)
            del w
        write_report(run, args)

    if "bert" in models:
        if args.model_dir_bert:
            def load_bert():
                from transformers import AutoTokenizer, BertModel
                m = BertModel.from_pretrained(args.model_dir_bert).float().eval().to(dev)
                return args.model_dir_bert, m, AutoTokenizer.from_pretrained(args.model_dir_bert)
            r = run.step("bert: load", load_bert)
        else:
            r = run.step(f"bert: build random checkpoint ({args.shapes})", build_bert, run, args, sh["bert"], dev,
                         min_left=30)
        if r is not None:
            d, model, tok = r
            bert_parity(run, args, d, model, tok, dev)
            if args.bench:
                run.step("bench bert: engine", engine_small_bench, run, args, "bert", d, min_left=30)
                run.step("bench bert: torch", torch_small_bench, run, args, "bert", (model, tok), dev)

    write_report(run, args)
    run.log(f"report: {os.path.join(args.out, 'report.md')}")


if __name__ == "__main__":
    main()
