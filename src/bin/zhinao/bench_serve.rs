//! `zhinao bench serve`: the HTTP server under load, measured from the client side. Starts `serve`
//! in-process on 127.0.0.1 with a chat model directory, warms it up with one request, then keeps
//! `--clients` streaming `/v1/completions` requests in flight (greedy, a random `--prompt-tokens`
//! prompt given as ids, `--max-tokens` new tokens) until `--requests` have finished. Reports time to
//! first token and inter-token latency (p50, p95) and the aggregate generated tokens/s; `--json`
//! prints rows with the ids of `shared/perf.md` (`server.ttft.p50`, `server.itl.p50`, …).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use clap::Args;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use zhinao::gpu::GpuOptions;
use zhinao::rng::Rng;
use zhinao::serve::engine::{loader, EngineOptions};
use zhinao::serve::ServeConfig;

use crate::GpuArgs;

#[derive(Args, Debug)]
pub struct BenchServeArgs {
    /// Chat model directory.
    #[arg(long)]
    pub model: PathBuf,
    /// KV-cache length (default: the model's, reduced to fit).
    #[arg(long)]
    pub ctx: Option<usize>,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 1)]
    pub clients: usize,
    /// Requests measured in total.
    #[arg(long, default_value_t = 8)]
    pub requests: usize,
    #[arg(long, default_value_t = 512)]
    pub prompt_tokens: usize,
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// Tokens per prefill pass.
    #[arg(long, default_value_t = 512)]
    pub chunk: usize,
    /// Generations decoded together by the server (`zhinao serve --parallel`).
    #[arg(long, default_value_t = 1)]
    pub parallel: usize,
    #[arg(long)]
    pub json: bool,
}

/// One streamed request: (time to first token, gaps between tokens, tokens).
async fn one(addr: SocketAddr, body: &Value) -> Result<(f64, Vec<f64>, usize)> {
    let t0 = Instant::now();
    let mut s = TcpStream::connect(addr).await?;
    let b = body.to_string();
    let head = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        b.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(b.as_bytes()).await?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).await?;
    if !line.contains(" 200 ") {
        let mut rest = String::new();
        let _ = r.read_to_string(&mut rest).await;
        bail!("server answered {}: {rest}", line.trim());
    }
    loop {
        line.clear();
        r.read_line(&mut line).await?;
        if line.trim().is_empty() {
            break;
        }
    }
    // Chunked body; events are `data: …\n\n`. Each event with text is one or more tokens.
    let (mut ttft, mut last, mut gaps, mut tokens) = (None, Instant::now(), Vec::new(), 0usize);
    let mut buf = Vec::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            break;
        }
        let n = usize::from_str_radix(line.trim(), 16).context("chunk size")?;
        if n == 0 {
            break;
        }
        let mut chunk = vec![0; n + 2];
        r.read_exact(&mut chunk).await?;
        buf.extend_from_slice(&chunk[..n]);
        while let Some(i) = buf.windows(2).position(|w| w == b"\n\n") {
            let ev: Vec<u8> = buf.drain(..i + 2).collect();
            let Some(data) = ev.strip_prefix(b"data: ") else { continue };
            if data.starts_with(b"[DONE]") {
                continue;
            }
            let v: Value = serde_json::from_slice(&data[..data.len() - 2])?;
            if v.get("error").is_some() {
                bail!("stream error: {v}");
            }
            if let Some(u) = v["usage"]["completion_tokens"].as_u64() {
                tokens = u as usize;
            }
            if v["choices"][0]["text"].as_str().is_some_and(|t| !t.is_empty()) {
                let now = Instant::now();
                match ttft {
                    None => ttft = Some((now - t0).as_secs_f64()),
                    Some(_) => gaps.push((now - last).as_secs_f64()),
                }
                last = now;
            }
        }
    }
    Ok((ttft.unwrap_or(f64::NAN), gaps, tokens))
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

pub fn run(a: &BenchServeArgs, gpu: &GpuArgs) -> Result<()> {
    let cfg = ServeConfig {
        log_requests: false,
        max_queue: a.clients.max(1) + 1,
        max_concurrent: a.clients.max(1) + 8,
        ..Default::default()
    };
    let opts = EngineOptions {
        chat: Some(a.model.clone()),
        ctx: a.ctx,
        chunk: a.chunk,
        parallel: a.parallel,
        embed_batch_tokens: 8192,
        gpu: GpuOptions { backend: gpu.backend.clone(), device: gpu.device.clone(), ..Default::default() },
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Value>();
        let server = tokio::spawn(zhinao::serve::serve(
            cfg,
            listener,
            loader(opts),
            async move {
                let _ = stop_rx.await;
            },
            move |cards| {
                let _ = ready_tx.send(json!(cards.iter().map(|c| json!({ "id": c.id, "n_ctx": c.n_ctx, "vocab": c.vocab_size })).collect::<Vec<_>>()));
            },
        ));
        let models = match ready_rx.await {
            Ok(m) => m,
            Err(_) => bail!("the model failed to load: {:?}", server.await),
        };
        let n_ctx = models[0]["n_ctx"].as_u64().unwrap_or(0) as usize;
        let prompt_len = a.prompt_tokens.min(n_ctx.saturating_sub(a.max_tokens + 1)).max(1);
        let mut rng = Rng::new(7);
        let vocab = models[0]["vocab"].as_u64().unwrap_or(1000).min(20_000) as u32;
        // Random ids from the vocabulary's lower part (ordinary text tokens; the specials sit at the end).
        let prompt: Vec<u32> = (0..prompt_len).map(|_| rng.below(vocab.saturating_sub(16).max(1))).collect();
        let body = json!({ "prompt": prompt, "max_tokens": a.max_tokens, "temperature": 0, "stream": true,
                           "stream_options": { "include_usage": true } });
        one(addr, &body).await.context("warm-up request")?;
        let t0 = Instant::now();
        let mut ttfts = Vec::new();
        let mut itls = Vec::new();
        let mut tokens = 0usize;
        let mut done = 0usize;
        let mut set = tokio::task::JoinSet::new();
        let mut started = 0usize;
        while done < a.requests.max(1) {
            while started < a.requests.max(1) && set.len() < a.clients.max(1) {
                let body = body.clone();
                set.spawn(async move { one(addr, &body).await });
                started += 1;
            }
            let Some(r) = set.join_next().await else { break };
            let (t, gaps, n) = r??;
            ttfts.push(t);
            itls.extend(gaps);
            tokens += n;
            done += 1;
        }
        let wall = t0.elapsed().as_secs_f64();
        let _ = stop_tx.send(());
        let _ = tokio::time::timeout(Duration::from_secs(30), server).await;
        let (ttft50, ttft95) = (pct(&mut ttfts, 0.5) * 1e3, pct(&mut ttfts, 0.95) * 1e3);
        let (itl50, itl95) = (pct(&mut itls, 0.5) * 1e3, pct(&mut itls, 0.95) * 1e3);
        let tps = tokens as f64 / wall;
        let command = format!(
            "zhinao bench serve --model {} --clients {} --requests {} --prompt-tokens {} --max-tokens {} --json",
            a.model.display(),
            a.clients,
            a.requests,
            prompt_len,
            a.max_tokens
        );
        let extra = json!({ "concurrency": a.clients, "parallel": a.parallel, "prompt_tokens": prompt_len, "max_tokens": a.max_tokens,
                            "requests": done, "command": command });
        let row = |id: &str, v: f64, unit: &str| {
            let mut r = json!({ "id": id, "engine": v, "unit": unit });
            if let (Some(o), Some(e)) = (r.as_object_mut(), extra.as_object()) {
                o.extend(e.clone());
            }
            r
        };
        if a.json {
            let rows = vec![
                row("server.ttft.p50", ttft50, "ms"),
                row("server.ttft.p95", ttft95, "ms"),
                row("server.itl.p50", itl50, "ms"),
                row("server.itl.p95", itl95, "ms"),
                row("server.throughput", tps, "tok/s"),
            ];
            println!("{}", json!({ "models": models, "rows": rows }));
        } else {
            println!(
                "{done} requests, {} in flight, prompt {prompt_len} tokens, up to {} new: TTFT p50 {ttft50:.1} ms, p95 \
                 {ttft95:.1} ms; ITL p50 {itl50:.2} ms, p95 {itl95:.2} ms; {tokens} tokens in {wall:.2} s = {tps:.1} tok/s",
                a.clients, a.max_tokens
            );
        }
        Ok(())
    })
}
