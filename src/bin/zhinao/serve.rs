//! `zhinao serve`: parse the flags and start the OpenAI-compatible server (`zhinao::serve`).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use clap::Args;
use zhinao::gpu::GpuOptions;
use zhinao::serve::engine::{loader, EngineOptions};
use zhinao::serve::ServeConfig;

use crate::GpuArgs;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Chat model directory (360Zhinao, bf16 or GPTQ): /v1/chat/completions and /v1/completions.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Embedding model directory (BERT, 360Zhinao-search): /v1/embeddings.
    #[arg(long)]
    pub embedding_model: Option<PathBuf>,
    /// Reranker directory (360Zhinao-1.8B-Reranking): /v1/rerank.
    #[arg(long)]
    pub rerank_model: Option<PathBuf>,
    /// Address to bind (loopback by default; 0.0.0.0 exposes the server to the network).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port (0: any free port; the address is printed).
    #[arg(long, default_value_t = 8360)]
    pub port: u16,
    /// Require this key (`Authorization: Bearer KEY` or `X-Api-Key`) on every route but /health and
    /// /v1/models. Prefer the environment variable ZHINAO_API_KEY (the default when set): a key on
    /// the command line is visible to every user of the machine in `ps`.
    #[arg(long)]
    pub api_key: Option<String>,
    /// Also accept requests whose `Host` is NAME (repeatable; the port is ignored). Loopback names
    /// (localhost, 127.0.0.0/8, [::1]) are always accepted; on a loopback bind, or when this flag is
    /// given, any other Host gets 403 (a defence against DNS rebinding by web pages). `*` accepts
    /// any Host (behind a proxy that checks it).
    #[arg(long = "allowed-host", value_name = "NAME")]
    pub allowed_host: Vec<String>,
    /// Open connections at most; more wait in the listen backlog until one closes.
    #[arg(long, default_value_t = 512)]
    pub max_connections: usize,
    /// Seconds a client has to send a request head; also how long an idle connection stays open.
    #[arg(long, default_value_t = 10)]
    pub header_timeout: u64,
    /// Seconds a client has to send a whole request body (408 beyond).
    #[arg(long, default_value_t = 30)]
    pub body_timeout: u64,
    /// Seconds a response or stream may stay blocked on a client that does not read; then the
    /// connection is dropped and its generation cancelled.
    #[arg(long, default_value_t = 30)]
    pub write_timeout: u64,
    /// Seconds one engine step (a prefill, a token, a batch) may run before /health answers 503.
    #[arg(long, default_value_t = 300)]
    pub stall_timeout: u64,
    /// API requests admitted at once (queued, running or streaming); more get 429.
    #[arg(long, default_value_t = 64)]
    pub max_concurrent: usize,
    /// Engine jobs that may wait behind the running one; more get 429.
    #[arg(long, default_value_t = 32)]
    pub max_queue: usize,
    /// KV-cache length of the chat model (default: max_position_embeddings, reduced to fit).
    #[arg(long)]
    pub ctx: Option<usize>,
    /// Tokens per prefill pass (with --parallel: prompt tokens prefilled between two decode steps).
    #[arg(long, default_value_t = 512)]
    pub chunk: usize,
    /// Chat generations decoded together (continuous batching: each has its own KV-cache slot of
    /// --ctx positions). 1: one at a time, keeping a conversation's prefix cached between requests.
    #[arg(long, default_value_t = 1)]
    pub parallel: usize,
    /// KV-cache storage of the chat model: f16, q8 or q4 (q8/q4 need --parallel 1).
    #[arg(long = "kv-type", default_value = "f16", value_parser = crate::lm::parse_kv)]
    pub kv_type: zhinao::engine::KvFormat,
    /// Positions a q8/q4 cache keeps in f16 at its start (attention sinks; default 16, 0 = none).
    #[arg(long = "kv-sink")]
    pub kv_sink: Option<usize>,
    /// Most tokens in one batch of embedding or rerank requests.
    #[arg(long, default_value_t = 8192)]
    pub batch_tokens: usize,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 2 << 20)]
    pub body_limit: usize,
    /// Allowed CORS origin (repeat for several; `*` for any). Default: no CORS headers.
    #[arg(long = "cors-origin")]
    pub cors_origin: Vec<String>,
    /// Seconds running generations may go on after SIGTERM before they are ended with an error event.
    #[arg(long, default_value_t = 30)]
    pub shutdown_grace: u64,
    /// Do not log one line per request.
    #[arg(long)]
    pub quiet: bool,
    /// Most tokens one request may generate; a request asking more (or none, with a larger default)
    /// is clamped to it and ends with finish_reason "length".
    #[arg(long)]
    pub max_tokens: Option<usize>,
}

pub fn run(a: &ServeArgs, gpu: &GpuArgs) -> Result<()> {
    if a.model.is_none() && a.embedding_model.is_none() && a.rerank_model.is_none() {
        bail!("give at least one of --model, --embedding-model, --rerank-model");
    }
    if a.max_tokens == Some(0) {
        bail!("--max-tokens must be at least 1");
    }
    if a.max_queue == 0 || a.max_concurrent == 0 || a.parallel == 0 || a.max_connections == 0 {
        bail!("--max-queue, --max-concurrent, --max-connections and --parallel must be at least 1");
    }
    if [a.header_timeout, a.body_timeout, a.write_timeout, a.stall_timeout].contains(&0) {
        bail!("--header-timeout, --body-timeout, --write-timeout and --stall-timeout must be at least 1 second");
    }
    let api_key = a
        .api_key
        .clone()
        .or_else(|| std::env::var("ZHINAO_API_KEY").ok())
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty());
    let cfg = ServeConfig {
        api_key,
        max_concurrent: a.max_concurrent,
        max_queue: a.max_queue,
        batch_tokens: a.batch_tokens,
        body_limit: a.body_limit,
        cors_origins: a.cors_origin.clone(),
        shutdown_grace: Duration::from_secs(a.shutdown_grace),
        log_requests: !a.quiet,
        max_tokens: a.max_tokens,
        allowed_hosts: a.allowed_host.clone(),
        max_connections: a.max_connections,
        header_timeout: Duration::from_secs(a.header_timeout),
        body_timeout: Duration::from_secs(a.body_timeout),
        write_timeout: Duration::from_secs(a.write_timeout),
        stall_timeout: Duration::from_secs(a.stall_timeout),
        ..Default::default()
    };
    let opts = EngineOptions {
        chat: a.model.clone(),
        embedding: a.embedding_model.clone(),
        rerank: a.rerank_model.clone(),
        ctx: a.ctx,
        chunk: a.chunk,
        parallel: a.parallel,
        kv: a.kv_type,
        kv_sink: a.kv_sink,
        embed_batch_tokens: a.batch_tokens,
        gpu: GpuOptions { backend: gpu.backend.clone(), device: gpu.device.clone(), ..Default::default() },
    };
    zhinao::serve::run(cfg, SocketAddr::new(a.host, a.port), loader(opts))
        .map_err(anyhow::Error::msg)
        .context("zhinao serve")
}
