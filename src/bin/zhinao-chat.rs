//! `zhinao-chat`: the desktop chat app for 360Zhinao models (build with `--features app`).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use zhinao::app::i18n::Lang;
use zhinao::app::settings::{data_dir, Theme};
use zhinao::app::{AppOptions, RunOptions, Script};
use zhinao::gpu::GpuOptions;

#[derive(Clone, Copy, ValueEnum)]
enum LangArg {
    Zh,
    En,
}

#[derive(Clone, Copy, ValueEnum)]
enum ThemeArg {
    Dark,
    Light,
}

/// Desktop chat with 360Zhinao models, on the GPU the engine uses (wgpu: Vulkan, Metal, DX12).
#[derive(Parser)]
#[command(name = "zhinao-chat", version)]
struct Args {
    /// Model directory to open (default: the one opened last).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Where conversations and settings are kept (default: ZHINAO_CHAT_DATA, else the platform's
    /// data directory).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// UI language.
    #[arg(long, value_enum)]
    lang: Option<LangArg>,
    #[arg(long, value_enum)]
    theme: Option<ThemeArg>,
    /// Show (and continue) the conversation with this id.
    #[arg(long)]
    conversation: Option<String>,
    /// Window size in points, WIDTHxHEIGHT.
    #[arg(long)]
    size: Option<String>,
    /// Scripted mode: send this prompt once the model is loaded.
    #[arg(long)]
    prompt: Option<String>,
    /// Scripted mode: save a PNG of the window after the reply.
    #[arg(long, requires = "prompt")]
    screenshot: Option<PathBuf>,
    /// Scripted mode: close the window after the reply (and the screenshot); exit 0 only if all
    /// of it succeeded.
    #[arg(long, requires = "prompt")]
    exit_after_reply: bool,
    /// At most this many new tokens per reply in this run (overrides the settings, not saved).
    #[arg(long)]
    max_new_tokens: Option<usize>,
    /// Scripted mode: fail after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Backend: vulkan, metal, dx12, gl or auto (default: WGPU_BACKEND, else auto).
    #[arg(long)]
    backend: Option<String>,
    /// Adapter by index or name substring (see `zhinao devices`).
    #[arg(long)]
    device: Option<String>,
}

fn parse_size(s: &str) -> Option<[f32; 2]> {
    let (w, h) = s.split_once(['x', 'X'])?;
    Some([w.trim().parse().ok()?, h.trim().parse().ok()?])
}

fn main() {
    let a = Args::parse();
    let size = match a.size.as_deref().map(parse_size) {
        Some(None) => {
            eprintln!("zhinao-chat: --size wants WIDTHxHEIGHT, e.g. 1100x720");
            std::process::exit(2);
        }
        Some(s) => s,
        None => None,
    };
    let dir = match data_dir(a.data_dir.as_deref()) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("zhinao-chat: {e}");
            std::process::exit(2);
        }
    };
    let opts = RunOptions {
        app: AppOptions {
            data_dir: dir,
            model: a.model,
            no_model: false,
            lang: a.lang.map(|l| match l {
                LangArg::Zh => Lang::Zh,
                LangArg::En => Lang::En,
            }),
            theme: a.theme.map(|t| match t {
                ThemeArg::Dark => Theme::Dark,
                ThemeArg::Light => Theme::Light,
            }),
            conversation: a.conversation,
            max_new_tokens: a.max_new_tokens,
        },
        gpu: GpuOptions { backend: a.backend, device: a.device, ..Default::default() },
        size,
        script: a.prompt.map(|prompt| Script {
            prompt,
            screenshot: a.screenshot,
            exit_after_reply: a.exit_after_reply,
            timeout: Duration::from_secs(a.timeout),
        }),
    };
    if let Err(e) = zhinao::app::run(opts) {
        eprintln!("zhinao-chat: {e}");
        std::process::exit(1);
    }
}
