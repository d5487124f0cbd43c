//! The `zhinao` command line: devices, download, generate, chat, tokenize, perplexity, embed, rerank,
//! eval, serve, bench.

mod batch_file;
mod bench;
mod bench_gemv;
mod bench_generate;
#[cfg(feature = "server")]
mod bench_serve;
mod download;
mod embed;
mod eval;
mod lm;
mod niah;
mod rerank;
#[cfg(feature = "server")]
mod serve;
mod shards;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use zhinao::gpu::{list_adapters, Context, GpuOptions};

/// `zhinao --version`: the crate version and the git commit it was built from (see build.rs).
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("ZHINAO_GIT_COMMIT"), ")");

#[derive(Parser)]
#[command(
    name = "zhinao",
    version = VERSION,
    about = "GPU-portable inference for the 360Zhinao model family (wgpu: Vulkan, Metal, DX12)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// GPU selection, shared by every command.
#[derive(Args, Clone, Debug)]
pub struct GpuArgs {
    /// Backend: vulkan, metal, dx12, gl or auto (default: WGPU_BACKEND, else auto).
    #[arg(long, global = true)]
    pub backend: Option<String>,
    /// Adapter by index or name substring (see `zhinao devices`).
    #[arg(long, global = true)]
    pub device: Option<String>,
}

impl GpuArgs {
    pub fn context(&self) -> Result<std::sync::Arc<Context>> {
        let ctx = Context::new(&GpuOptions {
            backend: self.backend.clone(),
            device: self.device.clone(),
            ..Default::default()
        })?;
        eprintln!("device: {}", ctx.describe());
        Ok(ctx)
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// List every adapter with backend, driver, limits and features.
    Devices {
        #[command(flatten)]
        gpu: GpuArgs,
    },
    /// Download a published repository into the local cache (or --dir), resumable and verified.
    Download {
        #[command(flatten)]
        args: download::DownloadArgs,
    },
    /// Generate a completion (or, with --chat, an answer) for one prompt.
    Generate {
        #[command(flatten)]
        args: lm::GenerateArgs,
        #[command(flatten)]
        gpu: GpuArgs,
    },
    /// Interactive terminal chat.
    Chat {
        #[command(flatten)]
        args: lm::ChatArgs,
        #[command(flatten)]
        gpu: GpuArgs,
    },
    /// Token ids of a text (JSON with --json).
    Tokenize {
        #[command(flatten)]
        args: lm::TokenizeArgs,
    },
    /// Per-position argmax, log-probabilities, top logits and perplexity.
    Perplexity {
        #[command(flatten)]
        args: lm::PerplexityArgs,
        #[command(flatten)]
        gpu: GpuArgs,
    },
    /// Text embeddings with a BERT model (360Zhinao-search): JSONL out, in input order.
    Embed {
        #[command(flatten)]
        args: embed::EmbedArgs,
        #[command(flatten)]
        gpu: GpuArgs,
    },
    /// Score documents against a query with the reranker, best first.
    Rerank {
        #[command(flatten)]
        args: rerank::RerankArgs,
        #[command(flatten)]
        gpu: GpuArgs,
    },
    /// C-MTEB-style evaluation on a local dataset (retrieval: NDCG@10; rerank: MAP, MRR@10).
    Eval {
        #[command(subcommand)]
        what: eval::EvalCmd,
        #[command(flatten)]
        gpu: GpuArgs,
    },
    /// OpenAI-compatible HTTP server: chat, completions, embeddings, rerank (see the README).
    #[cfg(feature = "server")]
    Serve {
        #[command(flatten)]
        args: serve::ServeArgs,
        #[command(flatten)]
        gpu: GpuArgs,
    },
    /// Benchmarks (GB/s, GFLOP/s, tokens/s).
    Bench {
        #[command(subcommand)]
        what: bench::BenchCmd,
        #[command(flatten)]
        gpu: GpuArgs,
    },
}

fn devices(gpu: &GpuArgs) -> Result<()> {
    let adapters = list_adapters(gpu.backend.as_deref())?;
    if adapters.is_empty() {
        anyhow::bail!("no GPU adapter found (on Linux install a Vulkan driver, e.g. Debian's mesa-vulkan-drivers)");
    }
    for a in adapters {
        println!("[{}] {}", a.index, a.name);
        println!("    backend {}  type {}  driver {}", a.backend_label(), a.device_type, a.driver_label());
        let l = &a.limits;
        println!(
            "    max buffer {} MiB  max storage binding {} MiB  storage buffers/stage {}  workgroup storage {} KiB  invocations/workgroup {}",
            l.max_buffer_size >> 20,
            l.max_binding >> 20,
            l.storage_buffers_per_stage,
            l.workgroup_storage >> 10,
            l.invocations_per_workgroup
        );
        let c = &a.caps;
        println!(
            "    tiers: shader-f16 {}  subgroups {} (size {}..{})  timestamps {}",
            c.shader_f16, c.subgroups, c.subgroup_min, c.subgroup_max, c.timestamps
        );
        if a.coop_configs.is_empty() {
            println!("    cooperative matrices: none");
        } else {
            println!("    cooperative matrices: {}", a.coop_configs.join(", "));
        }
        println!(
            "    coop kernels (16x16x16 f16->f32): {}",
            if c.coop_f16() { "available, opt-in with ZHINAO_COOP=1 (or =fast)" } else { "not available" }
        );
        println!("    features: {}", a.features);
    }
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Devices { gpu } => devices(&gpu),
        Cmd::Download { args } => download::run(&args),
        Cmd::Bench { what, gpu } => bench::run(what, &gpu),
        Cmd::Generate { args, gpu } => lm::run_generate(&args, &gpu),
        Cmd::Chat { args, gpu } => lm::run_chat(&args, &gpu),
        Cmd::Tokenize { args } => lm::run_tokenize(&args),
        Cmd::Perplexity { args, gpu } => lm::run_perplexity(&args, &gpu),
        Cmd::Embed { args, gpu } => embed::run(&args, &gpu),
        Cmd::Rerank { args, gpu } => rerank::run(&args, &gpu),
        Cmd::Eval { what, gpu } => eval::run(what, &gpu),
        #[cfg(feature = "server")]
        Cmd::Serve { args, gpu } => serve::run(&args, &gpu),
    }
}
