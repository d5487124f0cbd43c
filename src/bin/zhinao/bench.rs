//! `zhinao bench ops`: per-kernel GB/s and GFLOP/s at the real 360Zhinao-7B shapes, beside the
//! adapter's measured copy bandwidth. `zhinao bench generate`: prefill/decode tokens/s of a model
//! directory. `zhinao bench embed`: BERT-large encoder tokens/s (the 360Zhinao-search shape) and
//! `zhinao bench rerank`: pairs/s at the 1.8B reranker shape, both with random in-memory weights.
//! Timings on a software adapter (lavapipe) are not performance figures.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use clap::Subcommand;
use zhinao::gpu::{Context, CoopMode, Dispatch, GpuOptions};
use zhinao::loader::BertConfig;
use zhinao::loader::ZhinaoConfig;
use zhinao::models::bert::{random_checkpoint, Batch, Bert};
use zhinao::models::decoder::{Decoder, Layer};
use zhinao::models::reranker::{Reranker, ScoreHead, ScorePosition};
use zhinao::ops::attention::{self, AttnShape};
use zhinao::ops::matmul::matmul;
use zhinao::ops::matmul_q4::matmul_q4;
use zhinao::rng::Rng;
use zhinao::tensor::{from_f32, DType, Linear, QWeight, Weight};
use zhinao::tokenizer::RerankInput;

use crate::lm::ModelArgs;
use crate::GpuArgs;

#[derive(Subcommand)]
pub enum BenchCmd {
    /// Kernel throughput at the 7B shapes.
    Ops {
        /// Divide every dimension by this (smoke runs on slow adapters).
        #[arg(long, default_value_t = 1)]
        shrink: usize,
        /// Timed repetitions per kernel.
        #[arg(long, default_value_t = 20)]
        iters: usize,
        /// One JSON object per row: {"id", "gbps", "us", "variant", ...}.
        #[arg(long)]
        json: bool,
        /// Time every GEMV tune (threads × rows per workgroup × load width) at every GEMV shape
        /// (GEMV rows only).
        #[arg(long)]
        sweep: bool,
        /// Only the GEMV rows.
        #[arg(long)]
        gemv: bool,
        /// Token rows of the GEMV rows (1..4; decode is 1).
        #[arg(long, default_value_t = 1)]
        tokens: usize,
        /// MB of weight copies each GEMV row rotates through (≥ 4× the L2 keeps them streaming).
        #[arg(long, default_value_t = 256)]
        stream_mb: u64,
        /// Only the GEMV rows whose id contains this (e.g. `int4`, `4096x11008`).
        #[arg(long)]
        filter: Option<String>,
    },
    /// Prefill and decode tokens/s of a model directory, and decode's roofline fraction.
    Generate {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long, default_value_t = 512)]
        prompt_len: usize,
        #[arg(long, default_value_t = 128)]
        gen: usize,
        /// Decode at a context of this many positions: the KV cache is filled with synthetic values
        /// (no prefill; `--prompt-len` is then not run) and `--gen` tokens are decoded after them.
        /// Needs `--ctx` >= fill + gen. Rows: `zhinao bench generate --model DIR --ctx 360064
        /// --kv-type q4 --fill 360000 --gen 32 --json`.
        #[arg(long, default_value_t = 0)]
        fill: usize,
        /// Aggregate decode throughput of this many sequences decoded together (continuous
        /// batching, `engine::batch`): each prefills `--prompt-len` random tokens, then `--gen` steps
        /// are timed. Rows `7b-int4.decode.batch16`: `--batch 16 --json`.
        #[arg(long, default_value_t = 0)]
        batch: usize,
        #[arg(long)]
        json: bool,
        /// Also time one decode step per dispatch (timestamp queries) and sum it by kernel.
        #[arg(long)]
        profile: bool,
    },
    /// Encoder tokens/s at the BERT-large shape (24 layers, C 1024, 16 heads, FFN 4096), batch 32 × 128.
    Embed {
        /// Divide hidden, FFN, heads and layers by this (smoke runs on slow adapters).
        #[arg(long, default_value_t = 1)]
        shrink: usize,
        /// Timed forwards.
        #[arg(long, default_value_t = 5)]
        iters: usize,
        /// Weight dtype: f16, bf16 or f32.
        #[arg(long, default_value = "f16")]
        dtype: String,
        #[arg(long, default_value_t = 32)]
        batch: usize,
        #[arg(long, default_value_t = 128)]
        seq: usize,
    },
    /// Reranker pairs/s at the 1.8B shape (24 layers, hidden 2048, 16 heads, FFN 5632), random
    /// bf16 weights built in memory, 512-token pairs.
    Rerank {
        /// Divide layers, heads (head dim stays 128), FFN, vocab and pair length by this.
        #[arg(long, default_value_t = 1)]
        shrink: usize,
        /// Pairs per timed call (packed into batches that fit the adapter's binding limit).
        #[arg(long, default_value_t = 16)]
        pairs: usize,
        /// Timed calls.
        #[arg(long, default_value_t = 3)]
        iters: usize,
    },
    /// The HTTP server under load with a chat model directory: time to first token, inter-token
    /// latency (p50/p95) and generated tokens/s, measured by streaming clients on 127.0.0.1.
    #[cfg(feature = "server")]
    Serve(crate::bench_serve::BenchServeArgs),
}

pub fn run(cmd: BenchCmd, gpu: &GpuArgs) -> Result<()> {
    match cmd {
        BenchCmd::Ops { shrink, iters, json, sweep, gemv, tokens, stream_mb, filter } => {
            let shrink = shrink.max(1);
            let g = crate::bench_gemv::GemvBench {
                shrink,
                iters: iters.max(1),
                tokens: tokens.clamp(1, zhinao::ops::gemv::MAX_T),
                stream_bytes: (stream_mb * 1_000_000 / (shrink * shrink) as u64).max(1),
                sweep,
                json,
                filter,
            };
            let ctx = gpu.context()?;
            let copy = copy_bandwidth(&ctx)?;
            if json {
                println!("{}", serde_json::json!({"id": "bandwidth.copy", "gbps": copy, "device": ctx.describe()}));
            }
            if !(sweep || gemv) {
                ops(&ctx, shrink, iters.max(1), json, copy)?;
                prefill_kernel_rows(gpu, shrink, iters.max(1))?;
            }
            crate::bench_gemv::rows(&ctx, &g, copy)
        }
        BenchCmd::Generate { model, prompt_len, gen, batch, json, .. } if batch > 0 => {
            crate::bench_generate::decode_batch(&model, batch, prompt_len, gen, json, gpu)
        }
        BenchCmd::Generate { model, gen, fill, json, .. } if fill > 0 => {
            crate::bench_generate::decode_at(&model, fill, gen, json, gpu)
        }
        BenchCmd::Generate { model, prompt_len, gen, json, profile, .. } => {
            crate::bench_generate::generate(&model, prompt_len, gen, json, profile, gpu)
        }
        BenchCmd::Embed { shrink, iters, dtype, batch, seq } => {
            embed(gpu, shrink.max(1), iters.max(1), &dtype, batch.max(1), seq.max(1))
        }
        BenchCmd::Rerank { shrink, pairs, iters } => rerank(gpu.context()?, shrink.max(1), pairs.max(1), iters.max(1)),
        #[cfg(feature = "server")]
        BenchCmd::Serve(a) => crate::bench_serve::run(&a, gpu),
    }
}

/// Median seconds per repetition of `ds`, each repetition recorded into one pass.
pub fn time(ctx: &Context, ds: &[Dispatch], iters: usize) -> Result<f64> {
    let refs: Vec<&Dispatch> = ds.iter().collect();
    ctx.run(&refs)?;
    ctx.sync()?;
    let mut samples = Vec::new();
    for _ in 0..3 {
        let all: Vec<&Dispatch> = (0..iters).flat_map(|_| refs.iter().copied()).collect();
        let t0 = Instant::now();
        ctx.run(&all)?;
        ctx.sync()?;
        samples.push(t0.elapsed().as_secs_f64() / iters as f64);
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    Ok(samples[1])
}

/// As [`time`], with the pass's GPU timestamps where the adapter has them: (median GPU seconds
/// per repetition if timed, median wall-clock seconds per repetition).
pub fn time_gpu(ctx: &Context, ds: &[Dispatch], iters: usize) -> Result<(Option<f64>, f64)> {
    let refs: Vec<&Dispatch> = ds.iter().collect();
    ctx.run(&refs)?;
    ctx.sync()?;
    let all: Vec<&Dispatch> = (0..iters).flat_map(|_| refs.iter().copied()).collect();
    let (mut gpu, mut wall) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let t0 = Instant::now();
        let g = ctx.run_timed(&all)?;
        wall.push(t0.elapsed().as_secs_f64() / iters as f64);
        gpu.extend(g.map(|s| s / iters as f64));
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v.get(v.len() / 2).copied()
    };
    Ok((median(gpu), median(wall).unwrap_or(f64::NAN)))
}

/// Random-looking values without generating each one: a 1M-value normal block, tiled.
fn fill(rng: &mut Rng, n: usize, scale: f32) -> Vec<f32> {
    let block = rng.normals(n.min(1 << 20), scale);
    block.iter().cycle().take(n).copied().collect()
}

/// Streaming bandwidth of a compute shader in GB/s: y += x over 2 × 256 MiB (2 reads, 1 write).
pub fn stream_bandwidth(ctx: &Context) -> Result<f64> {
    let n = ((256u64 << 20).min(ctx.limits.max_binding) / 4) as usize;
    let x = ctx.buffer("stream x", (n * 4) as u64)?;
    let y = ctx.buffer("stream y", (n * 4) as u64)?;
    let d = zhinao::ops::elementwise::add(ctx, &x, &y, n)?;
    let secs = time(ctx, &[d], 20)?;
    Ok(3.0 * (n * 4) as f64 / secs / 1e9)
}

/// Device copy-engine bandwidth in GB/s (bytes read + bytes written).
pub fn copy_bandwidth(ctx: &Context) -> Result<f64> {
    let bytes = (256u64 << 20).min(ctx.limits.max_buffer_size / 2) & !3;
    let a = ctx.buffer("copy src", bytes)?;
    let b = ctx.buffer("copy dst", bytes)?;
    ctx.copy(&a, 0, &b, 0, bytes);
    ctx.sync()?;
    let n = 10;
    let t0 = Instant::now();
    for _ in 0..n {
        ctx.copy(&a, 0, &b, 0, bytes);
    }
    ctx.sync()?;
    Ok(2.0 * bytes as f64 * n as f64 / t0.elapsed().as_secs_f64() / 1e9)
}

struct Row {
    /// Machine id (`gemm.bf16.512x12288x4096`, `matmul.bf16.12288x4096.t1`, `attn.decode.4096`).
    id: String,
    name: String,
    secs: f64,
    bytes: f64,
    flops: f64,
}

/// The matmul (resident weights), int4 and attention rows; `copy` is the copy-engine bandwidth.
fn ops(ctx: &Context, shrink: usize, iters: usize, json: bool, copy: f64) -> Result<()> {
    let bw = stream_bandwidth(ctx)?;
    let out = Out { json, bw };
    if json {
        println!("{}", serde_json::json!({"id": "bandwidth.stream", "gbps": bw}));
    } else {
        println!("bandwidth: copy engine {copy:.1} GB/s, compute stream (y += x) {bw:.1} GB/s (bytes read + written); % below is of the stream figure");
        println!("{:<44} {:>10} {:>10} {:>10} {:>8}", "kernel", "time", "GB/s", "GFLOP/s", "% stream");
    }
    let mut rows = Vec::new();
    let mut rng = Rng::new(1);
    let h = 4096 / shrink;
    let shapes = [
        (h, 3 * h, "qkv"),
        (h, 11008 / shrink, "gate/up"),
        (11008 / shrink, h, "down"),
        (h, 158464 / shrink, "lm_head"),
    ];
    for (k, n, what) in shapes {
        let w = Weight::upload(ctx, what, DType::BF16, n, k, &from_f32(DType::BF16, &fill(&mut rng, n * k, 0.02)))?;
        for t in [1usize, 512 / shrink.min(512)] {
            let x = ctx.upload_f32("x", &fill(&mut rng, t * k, 1.0))?;
            let y = ctx.buffer("y", (t * n * 4) as u64)?;
            if (t * n * 4) as u64 > ctx.limits.max_binding {
                continue;
            }
            let ds = matmul(ctx, &x, t, &w, None, &y, false)?;
            let secs = time(ctx, &ds, iters)?;
            rows.push(Row {
                id: matmul_id("bf16", t, n, k),
                name: format!("matmul bf16 {what} {k}->{n} T={t}"),
                secs,
                bytes: w.bytes() as f64 + (t * (k + n) * 4) as f64,
                flops: 2.0 * (t * k * n) as f64,
            });
            out.row(rows.last());
        }
    }
    // GPTQ int4 (group 128, symmetric) at the same shapes.
    for (k, n, what) in shapes {
        let words: Vec<u32> = (0..k / 8 * n).map(|_| rng.next_u64() as u32).collect();
        let gs = [128, 64, 32, 16, 8].into_iter().find(|g| k % g == 0).unwrap_or(8); // 128 at real shapes
        let g = k / gs;
        let zeros = vec![0x7777_7777u32; g * n / 8];
        let scales = from_f32(DType::F16, &vec![0.01; g * n]);
        let w = QWeight::upload(
            ctx,
            what,
            k,
            n,
            gs,
            bytemuck::cast_slice(&words),
            bytemuck::cast_slice(&zeros),
            &scales,
            None,
        )?;
        for t in [1usize, 512 / shrink.min(512)] {
            if (t * n * 4) as u64 > ctx.limits.max_binding {
                continue;
            }
            let x = ctx.upload_f32("x", &fill(&mut rng, t * k, 1.0))?;
            let y = ctx.buffer("y", (t * n * 4) as u64)?;
            let ds = matmul_q4(ctx, &x, t, &w, None, &y, false)?;
            let secs = time(ctx, &ds, iters)?;
            rows.push(Row {
                id: matmul_id("int4", t, n, k),
                name: format!("matmul int4 {what} {k}->{n} T={t}"),
                secs,
                bytes: w.bytes() as f64 + (t * (k + n) * 4) as f64,
                flops: 2.0 * (t * k * n) as f64,
            });
            out.row(rows.last());
        }
    }
    attn_decode_rows(ctx, shrink, iters, &out)?;
    // Causal prefill of 512 tokens at the 7B head shape.
    let (h, d, kv) = (32 / shrink.min(32), 128, 4096 / shrink);
    let row = attention::cache_row_bytes(h, d) as u64;
    let ck = ctx.upload("k cache", &from_f32(DType::F16, &fill(&mut rng, kv * h * d, 1.0)))?;
    let cv = ctx.upload("v cache", &from_f32(DType::F16, &fill(&mut rng, kv * h * d, 1.0)))?;
    let q = ctx.upload_f32("q", &fill(&mut rng, 512 * h * d, 1.0))?;
    let o = ctx.buffer("o", (512 * h * d * 4) as u64)?;
    let pos = ctx.buffer("pos", 4)?;
    let s = 512 / shrink.min(512);
    let shape = AttnShape { b: 1, s, h, hkv: h, d, kv_stride: kv, q_stride: h * d, causal: true };
    let ds = vec![attention::prefill(ctx, &q, &ck, &cv, &pos, &o, &shape, None)?];
    let secs = time(ctx, &ds, iters)?;
    rows.push(Row {
        id: format!("attn.prefill.{s}"),
        name: format!("attn prefill causal H={h} D={d} T={s}"),
        secs,
        bytes: 2.0 * (s as u64 * row) as f64,
        flops: 2.0 * (h * d * s * s) as f64,
    });
    out.row(rows.last());
    sampling_rows(ctx, iters, &mut rows, &out)?;
    Ok(())
}

/// Sampling over one 158464-logit row: the argmax op, the device sampler's greedy kernel, and the
/// default sampler (T 1.0, top-p 0.8) on a peaked row (the max holds ≥ 0.8: one pass), a
/// language-model-like row and a flat row (top-p keeps most of the vocabulary: the most select
/// passes). The time column is per call; bytes count one read of the row.
fn sampling_rows(ctx: &Context, iters: usize, rows: &mut Vec<Row>, out: &Out) -> Result<()> {
    use zhinao::ops::sampler::{GpuSampler, SamplerIo};
    use zhinao::sampling::SamplingParams;
    let v = 158464;
    let mut rng = Rng::new(7);
    let mut peaked = fill(&mut rng, v, 1.0);
    peaked[1234] = 15.0;
    let mut llm = fill(&mut rng, v, 2.0);
    for (j, i) in [17usize, 900, 4242, 77777, 150000].iter().enumerate() {
        llm[*i] = 9.0 - j as f32;
    }
    let flat = fill(&mut rng, v, 0.01);
    let ids = ctx.buffer("ids", 4)?;
    let vals = ctx.buffer("vals", 4)?;
    let (hist, pos, toks) = (ctx.buffer("hist", (v * 4) as u64)?, ctx.buffer("pos", 4)?, ctx.buffer("toks", 4)?);
    let s = GpuSampler::new(ctx, v)?;
    let default = SamplingParams { temperature: 1.0, top_p: 0.8, ..SamplingParams::greedy() };
    let mut cases: Vec<(String, &[f32], Option<&SamplingParams>)> = vec![(format!("argmax.{v}"), &peaked, None)];
    let greedy = SamplingParams::greedy();
    cases.push((format!("sample.greedy.{v}"), &peaked, Some(&greedy)));
    for (kind, row) in [("peaked", &peaked), ("llm", &llm), ("flat", &flat)] {
        cases.push((format!("sample.top_p.{v}.{kind}"), row, Some(&default)));
    }
    let mut passes = Vec::new();
    for (name, row, params) in cases {
        let logits = ctx.upload_f32("logits", row)?;
        let ds = match params {
            None => zhinao::ops::sample::argmax(ctx, &logits, 1, v, &ids, &vals)?,
            Some(p) => {
                let io =
                    SamplerIo { logits: &logits, offset: 0, hist: &hist, ids: &ids, pos: &pos, toks: &toks, slot: 0 };
                vec![s.record(ctx, p, &io, false)?]
            }
        };
        let secs = time(ctx, &ds, iters)?;
        if params.is_some_and(|p| !p.is_greedy()) {
            passes.push(format!("{name} {}", 1 + ctx.read_u32(&s.dbg, zhinao::ops::sampler::dbg::PASSES, 1)?[0]));
        }
        rows.push(Row { id: name.clone(), name, secs, bytes: (v * 4) as f64, flops: 0.0 });
        out.row(rows.last());
    }
    if !out.json {
        println!("# passes over the row: {}", passes.join(", "));
    }
    Ok(())
}

/// Decode attention rows `attn.decode.<ctx>` (7B: H = Hkv = 32, D = 128) and
/// `attn.decode.gqa.<ctx>` (360Zhinao2: H = 32, Hkv = 8, D = 128) at 4K and 32K keys (both passes,
/// the position read from the GPU). GB/s counts the K and V bytes read. Each row cycles through
/// enough layers' caches (>= 256 MiB in all) that they do not sit in L2, as a real decode step does;
/// `us` is per layer. Rows whose cache exceeds one storage binding are skipped (lavapipe: 128 MiB).
fn attn_decode_rows(ctx: &Context, shrink: usize, iters: usize, out: &Out) -> Result<()> {
    let json = out.json;
    let d = 128;
    let h = (32 / shrink).max(1);
    let pool_len = 1usize << 21; // 4 MiB of random f16, tiled into every cache on the GPU
    let pool = ctx.upload("f16 pool", &from_f32(DType::F16, &Rng::new(11).normals(pool_len, 1.0)))?;
    for (tag, hkv) in [("", h), (".gqa", (h / 4).max(1))] {
        for full in [4096usize, 32768] {
            let kv = (full / shrink).max(1);
            let id = format!("attn.decode{tag}.{kv}");
            let cache = (kv * attention::cache_row_bytes(hkv, d)) as u64;
            if cache > ctx.limits.max_binding {
                if !json {
                    println!("{id:<44} skipped: a {} MiB cache exceeds one binding", cache >> 20);
                }
                continue;
            }
            let layers = ((256u64 << 20).div_ceil(2 * cache) as usize).clamp(1, 64);
            let q = ctx.upload_f32("q", &Rng::new(12).normals(h * d, 1.0))?;
            let o = ctx.buffer("o", (h * d * 4) as u64)?;
            let pos = ctx.upload_u32("pos", &[kv as u32 - 1])?;
            let scratch = ctx.buffer("scratch", (attention::decode_scratch_len(h, hkv, d, kv) * 4) as u64)?;
            let mut caches = Vec::new();
            let mut ds = Vec::new();
            for _ in 0..layers {
                let (ck, cv) = (ctx.buffer("k cache", cache)?, ctx.buffer("v cache", cache)?);
                for c in [&ck, &cv] {
                    for off in (0..cache).step_by(pool.size as usize) {
                        ctx.copy(&pool, 0, c, off, pool.size.min(cache - off));
                    }
                }
                ds.extend(attention::decode(ctx, &q, &ck, &cv, &pos, &scratch, &o, h, hkv, d, kv)?);
                caches.push((ck, cv));
            }
            let secs = time(ctx, &ds, iters)? / layers as f64;
            let bytes = 2.0 * cache as f64;
            let name = format!("{id} H={h} Hkv={hkv} D={d} splits={}", attention::decode_splits(h, hkv, d, kv));
            out.row(Some(&Row { id, name, secs, bytes, flops: 4.0 * (h * d * kv) as f64 }));
        }
    }
    Ok(())
}

/// `gemm.<dtype>.<M>x<N>x<K>` for prefill; T ≤ 4 rows (weights resident, not streamed) as
/// `matmul.<dtype>.<N>x<K>.t<T>` (the streamed GEMV rows are `gemv.*`).
fn matmul_id(dtype: &str, t: usize, n: usize, k: usize) -> String {
    if t <= zhinao::ops::gemv::MAX_T {
        format!("matmul.{dtype}.{n}x{k}.t{t}")
    } else {
        format!("gemm.{dtype}.{t}x{n}x{k}")
    }
}

/// Row printer: a table line, or one JSON object.
struct Out {
    json: bool,
    /// Compute-stream bandwidth, GB/s.
    bw: f64,
}

impl Out {
    fn row(&self, r: Option<&Row>) {
        let Some(r) = r else { return };
        let gbs = r.bytes / r.secs / 1e9;
        if self.json {
            let v = serde_json::json!({
                "id": r.id, "gbps": gbs, "us": r.secs * 1e6, "variant": r.name,
                "gflops": r.flops / r.secs / 1e9, "pct_stream": 100.0 * gbs / self.bw,
            });
            println!("{v}");
            return;
        }
        println!(
            "{:<44} {:>8.3}ms {:>10.1} {:>10.1} {:>7.0}%",
            r.name,
            r.secs * 1e3,
            gbs,
            r.flops / r.secs / 1e9,
            100.0 * gbs / self.bw
        );
    }
}

fn embed(gpu: &GpuArgs, shrink: usize, iters: usize, dtype: &str, batch: usize, seq: usize) -> Result<()> {
    let dt = match dtype {
        "f16" => DType::F16,
        "bf16" => DType::BF16,
        "f32" => DType::F32,
        other => anyhow::bail!("--dtype {other}: expected f16, bf16 or f32"),
    };
    let cfg: BertConfig = serde_json::from_value(serde_json::json!({
        "vocab_size": 21128,
        "hidden_size": 1024 / shrink,
        "num_hidden_layers": (24 / shrink).max(1),
        "num_attention_heads": (16 / shrink).max(1),
        "intermediate_size": 4096 / shrink,
        "max_position_embeddings": 512,
    }))?;
    let ctx = gpu.context()?;
    println!(
        "BERT L={} C={} H={} I={} {dtype}, batch {batch} x {seq} tokens",
        cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size
    );
    let files = random_checkpoint(&cfg, dt, 1)?;
    let m = Bert::from_files(ctx.clone(), cfg.clone(), &files, &mut |_, _| {})?;
    drop(files);
    let mut rng = Rng::new(2);
    let seqs: Vec<Vec<u32>> =
        (0..batch).map(|_| (0..seq).map(|_| rng.below(cfg.vocab_size as u32)).collect()).collect();
    let refs: Vec<&[u32]> = seqs.iter().map(|s| s.as_slice()).collect();
    let b = Batch::pad(&refs, 0)?;
    m.forward(&b)?; // warm-up: pipelines, recording
    let (c, i, l) = (cfg.hidden_size as f64, cfg.intermediate_size as f64, cfg.num_hidden_layers as f64);
    let t = b.tokens() as f64;
    // Matmuls 2·T·(4C² + 2CI) per layer, attention 4·B·S²·C per layer.
    let flops = l * (2.0 * t * (4.0 * c * c + 2.0 * c * i) + 4.0 * batch as f64 * (seq * seq) as f64 * c);
    // End to end for the same batch: upload, the replayed forward, readback of [T, C].
    let mut secs = Vec::new();
    for _ in 0..iters {
        let t0 = Instant::now();
        m.forward(&b)?;
        secs.push(t0.elapsed().as_secs_f64());
    }
    secs.sort_by(|a, b| a.total_cmp(b));
    let med = secs[secs.len() / 2];
    println!(
        "forward + readback {:.2} ms  {:.0} tokens/s  {:.1} GFLOP/s  (weights {:.0} MiB; median of {iters})",
        med * 1e3,
        t / med,
        flops / med / 1e9,
        m.weight_bytes as f64 / 1048576.0
    );
    Ok(())
}

/// A bf16 weight [rows, cols] of N(0, 0.02) values, cut from a shared random pool (the values
/// do not matter for timing; generating 1.5B normals would).
fn random_weight(ctx: &Context, pool: &[u8], label: &str, rows: usize, cols: usize) -> Result<Weight> {
    let bytes = rows * cols * 2;
    let data: Vec<u8> = pool.iter().copied().cycle().take(bytes).collect();
    Ok(Weight::upload(ctx, label, DType::BF16, rows, cols, &data)?)
}

/// The 1.8B reranker backbone (shrunk) with random weights, and a random head.
fn random_reranker(ctx: Arc<Context>, shrink: usize) -> Result<Reranker> {
    let heads = (16 / shrink).max(1);
    let cfg = ZhinaoConfig::from_json(
        &serde_json::json!({
            "hidden_size": heads * 128,
            "num_hidden_layers": (24 / shrink).max(1),
            "num_attention_heads": heads,
            "intermediate_size": (5632 / shrink).div_ceil(8) * 8,
            "vocab_size": 158464 / shrink,
            "max_position_embeddings": 4096,
            "rope_theta": 10000.0,
            "rms_norm_eps": 1e-6
        })
        .to_string(),
    )?;
    let (c, i, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let mut rng = Rng::new(7);
    let pool = from_f32(DType::BF16, &rng.normals(1 << 20, 0.02));
    let ones = vec![1.0f32; c];
    let dense = |label: &str, rows: usize, cols: usize| -> Result<Linear> {
        Ok(Linear::Dense(random_weight(&ctx, &pool, label, rows, cols)?))
    };
    let mut layers = Vec::new();
    for _ in 0..cfg.num_hidden_layers {
        layers.push(Layer {
            input_layernorm: ctx.upload_f32("input_layernorm", &ones)?,
            qkv: dense("qkv_proj", 3 * c, c)?,
            qkv_bias: Some(ctx.upload_f32("qkv bias", &rng.normals(3 * c, 0.02))?),
            o_proj: dense("o_proj", c, c)?,
            post_attention_layernorm: ctx.upload_f32("post_attention_layernorm", &ones)?,
            gate_up: dense("gate_up", 2 * i, c)?,
            gate_up_interleaved: true,
            down_proj: dense("down_proj", c, i)?,
        });
    }
    let embed_tokens = random_weight(&ctx, &pool, "embed_tokens", v, c)?;
    let backbone = Decoder {
        norm: ctx.upload_f32("norm", &ones)?,
        inv_freq: ctx.upload_f32("inv_freq", &zhinao::ops::rope::inv_freq(cfg.rope_theta as f32, cfg.head_dim()))?,
        cfg,
        ctx: ctx.clone(),
        embed_tokens,
        layers,
    };
    ctx.sync()?;
    Ok(Reranker::from_parts(backbone, ScoreHead { weight: rng.normals(c, 0.02), bias: 0.0 })?)
}

fn rerank(ctx: Arc<Context>, shrink: usize, pairs: usize, iters: usize) -> Result<()> {
    let t0 = Instant::now();
    let r = random_reranker(ctx, shrink)?;
    let cfg = &r.backbone.cfg;
    let len = (512 / shrink).max(16);
    println!(
        "reranker {} layers, hidden {}, {} heads, FFN {}; {:.1} MiB of bf16 weights (built in {:.1} s); {pairs} pairs of {len} tokens, batches of at most {} rows",
        cfg.num_hidden_layers,
        cfg.hidden_size,
        cfg.num_attention_heads,
        cfg.intermediate_size,
        r.backbone.weight_bytes() as f64 / 1048576.0,
        t0.elapsed().as_secs_f64(),
        r.max_batch_tokens
    );
    let mut rng = Rng::new(3);
    let v = cfg.vocab_size as u64;
    let inputs: Vec<RerankInput> = (0..pairs)
        .map(|_| RerankInput { ids: (0..len).map(|_| (rng.next_u64() % v) as u32).collect(), label_pos: len - 3 })
        .collect();
    r.score_inputs(&inputs, ScorePosition::BeforeLabel)?; // warm-up: pipelines, buffers
    let mut secs = Vec::new();
    for _ in 0..iters {
        let t = Instant::now();
        r.score_inputs(&inputs, ScorePosition::BeforeLabel)?;
        secs.push(t.elapsed().as_secs_f64());
    }
    secs.sort_by(|a, b| a.total_cmp(b));
    let med = secs[secs.len() / 2];
    let params = r.backbone.weight_bytes() as f64 / 2.0 - (cfg.vocab_size * cfg.hidden_size) as f64;
    println!(
        "{:.2} pairs/s  ({:.0} tokens/s, {:.1} ms per pair, ~{:.1} GFLOP/s in the decoder matmuls; median of {iters})",
        pairs as f64 / med,
        (pairs * len) as f64 / med,
        med * 1e3 / pairs as f64,
        2.0 * params * (pairs * len) as f64 / med / 1e9
    );
    Ok(())
}

/// Prefill kernel rows (TFLOP/s) for each path this adapter has: the SIMT GEMM and attention (coop
/// forced off), and the cooperative-matrix GEMM and attention in exact and fast mode (only where the
/// adapter lists 16×16×16 f16×f16→f32). One JSON object per row, ids as in shared/perf.md
/// (`gemm.<dtype>.<M>x<N>x<K>`, `attn.prefill.<S>`), the path in `path`.
fn prefill_kernel_rows(gpu: &GpuArgs, shrink: usize, iters: usize) -> Result<()> {
    let paths = [("simt", CoopMode::Off), ("coop-exact", CoopMode::Exact), ("coop-fast", CoopMode::Fast)];
    for (path, mode) in paths {
        let opts = GpuOptions {
            backend: gpu.backend.clone(),
            device: gpu.device.clone(),
            coop: Some(mode),
            ..Default::default()
        };
        let ctx = Context::new(&opts)?;
        if ctx.caps.coop != mode {
            println!("{path}: not available on this adapter (no 16x16x16 f16->f32 cooperative matrices)");
            continue;
        }
        let (h, k) = (4096 / shrink, 4096 / shrink);
        for (m, dtype) in [(512, "bf16"), (2048, "bf16"), (512, "f16"), (512, "int4")] {
            let m = (m / shrink).max(8);
            let secs = gemm_secs(&ctx, m, h, k, dtype, iters)?;
            bench_row(&format!("gemm.{dtype}.{m}x{h}x{k}"), path, 2.0 * (m * h * k) as f64 / secs / 1e12, secs);
        }
        let (heads, d, s) = ((32 / shrink).max(1), 128, (2048 / shrink).max(16));
        let secs = attn_prefill_secs(&ctx, heads, d, s, iters)?;
        let flops = 2.0 * (heads * d * s * s) as f64; // causal: half of 4·H·D·S²
        bench_row(&format!("attn.prefill.{s}"), path, flops / secs / 1e12, secs);
    }
    Ok(())
}

fn bench_row(id: &str, path: &str, tflops: f64, secs: f64) {
    println!(
        "{}",
        serde_json::json!({"id": id, "path": path, "engine": tflops, "unit": "TFLOP/s", "ms": secs * 1e3,
            "command": "zhinao bench ops"})
    );
}

/// Seconds per y[M, N] = x[M, K] · Wᵀ with a random weight of `dtype` (bf16, f16 or int4, g128).
fn gemm_secs(ctx: &Context, m: usize, n: usize, k: usize, dtype: &str, iters: usize) -> Result<f64> {
    let mut rng = Rng::new(9);
    let x = ctx.upload_f32("x", &fill(&mut rng, m * k, 1.0))?;
    let y = ctx.buffer("y", (m * n * 4) as u64)?;
    let ds = if dtype == "int4" {
        let words: Vec<u32> = (0..k / 8 * n).map(|_| rng.next_u64() as u32).collect();
        let gs = [128, 64, 32, 16, 8].into_iter().find(|g| k.is_multiple_of(*g)).unwrap_or(8);
        let zeros = vec![0x7777_7777u32; k / gs * n / 8];
        let scales = from_f32(DType::F16, &vec![0.01; k / gs * n]);
        let w = QWeight::upload(
            ctx,
            "w",
            k,
            n,
            gs,
            bytemuck::cast_slice(&words),
            bytemuck::cast_slice(&zeros),
            &scales,
            None,
        )?;
        matmul_q4(ctx, &x, m, &w, None, &y, false)?
    } else {
        let dt = if dtype == "f16" { DType::F16 } else { DType::BF16 };
        let w = Weight::upload(ctx, "w", dt, n, k, &from_f32(dt, &fill(&mut rng, n * k, 0.02)))?;
        matmul(ctx, &x, m, &w, None, &y, false)?
    };
    time(ctx, &ds, iters)
}

/// Seconds per causal prefill attention of S tokens over a fresh f16 cache (H = Hkv heads of D).
fn attn_prefill_secs(ctx: &Context, h: usize, d: usize, s: usize, iters: usize) -> Result<f64> {
    let mut rng = Rng::new(10);
    let ck = ctx.upload("k cache", &from_f32(DType::F16, &fill(&mut rng, s * h * d, 1.0)))?;
    let cv = ctx.upload("v cache", &from_f32(DType::F16, &fill(&mut rng, s * h * d, 1.0)))?;
    let q = ctx.upload_f32("q", &fill(&mut rng, s * h * d, 1.0))?;
    let o = ctx.buffer("o", (s * h * d * 4) as u64)?;
    let shape = AttnShape { b: 1, s, h, hkv: h, d, kv_stride: s, q_stride: h * d, causal: true };
    let pos = ctx.buffer("pos", 4)?;
    time(ctx, &[attention::prefill(ctx, &q, &ck, &cv, &pos, &o, &shape, None)?], iters)
}
