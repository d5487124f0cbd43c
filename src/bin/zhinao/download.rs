//! `zhinao download`: fetch a published repository into the local cache (or a plain directory), with
//! a progress bar per file and overall; and `model_path`, the `--model` parser that also accepts a
//! repository id already in the cache. The work is done by `zhinao::hub`.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, ValueEnum};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use zhinao::hub::{self, DownloadProgress, DownloadRequest, RemoteFile, Source};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum SourceArg {
    /// The Hugging Face hub (HF_ENDPOINT selects a mirror).
    Huggingface,
    /// ModelScope (MODELSCOPE_DOMAIN selects another host).
    Modelscope,
}

#[derive(Args, Debug)]
pub struct DownloadArgs {
    /// Repository, e.g. qihoo360/360Zhinao-7B-Chat-4K-Int4 (see the README's model table).
    pub repo_id: String,
    /// Branch, tag or commit (default: main; master on ModelScope).
    #[arg(long)]
    pub revision: Option<String>,
    /// Only files matching this glob (repeatable), e.g. --include '*.json' --include 'vocab/*'.
    #[arg(long)]
    pub include: Vec<String>,
    /// Also put the files, as published, in this directory (then use --model DIR).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "huggingface")]
    pub source: SourceArg,
    /// Hub URL (default: HF_ENDPOINT or https://huggingface.co; MODELSCOPE_DOMAIN or www.modelscope.cn).
    #[arg(long)]
    pub endpoint: Option<String>,
    /// How often an interrupted transfer is resumed within this run.
    #[arg(long, default_value_t = 5)]
    pub retries: usize,
    /// Seconds to wait for a connection or for data before a transfer counts as stalled (and is
    /// resumed, up to --retries times).
    #[arg(long, default_value_t = 60.0, value_parser = parse_timeout)]
    pub timeout: f64,
}

fn parse_timeout(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(t) if t.is_finite() && t > 0.0 && t <= 86_400.0 => Ok(t),
        _ => Err(format!("'{s}' is not a number of seconds between 0 and 86400")),
    }
}

/// clap's parser for every `--model`: a directory, or `ORG/NAME[@REVISION]` already in the cache.
pub fn model_path(s: &str) -> std::result::Result<PathBuf, String> {
    hub::resolve_model(s).map_err(|e| e.to_string())
}

pub fn run(a: &DownloadArgs) -> Result<()> {
    let req = DownloadRequest {
        revision: a.revision.clone(),
        include: a.include.clone(),
        dir: a.dir.clone(),
        source: match a.source {
            SourceArg::Huggingface => Source::HuggingFace,
            SourceArg::Modelscope => Source::ModelScope,
        },
        endpoint: a.endpoint.clone(),
        retries: a.retries,
        timeout: std::time::Duration::from_secs_f64(a.timeout),
        ..DownloadRequest::new(&a.repo_id)
    };
    let mut bars = Bars::new();
    let out = hub::download(&req, &mut bars)?;
    bars.clear();
    let total: u64 = out.files.iter().map(|f| f.1).sum();
    eprintln!(
        "{} at commit {}: {} files, {}; {} fetched, {} already complete",
        a.repo_id,
        out.commit,
        out.files.len(),
        human(total),
        out.fetched,
        out.files.len() - out.fetched
    );
    let model = if a.dir.is_some() { out.dir.display().to_string() } else { a.repo_id.clone() };
    eprintln!("use it with: zhinao chat --model {model}");
    println!("{}", out.dir.display());
    Ok(())
}

/// Progress: an overall bar and one for the current file on a terminal; one line per file otherwise.
struct Bars {
    multi: MultiProgress,
    overall: Option<ProgressBar>,
    file: Option<ProgressBar>,
    /// Bytes of the files finished so far, and of the current file.
    base: u64,
    current: u64,
    /// Files finished, of how many.
    files_done: usize,
    files: usize,
    terminal: bool,
}

impl Bars {
    fn new() -> Self {
        let terminal = std::io::stderr().is_terminal();
        Bars {
            multi: MultiProgress::new(),
            overall: None,
            file: None,
            base: 0,
            current: 0,
            files_done: 0,
            files: 0,
            terminal,
        }
    }
    fn style(template: &str) -> ProgressStyle {
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("=> ")
    }
    fn clear(&mut self) {
        if let Some(b) = self.file.take() {
            b.finish_and_clear();
        }
        if let Some(b) = self.overall.take() {
            b.finish();
        }
    }
}

impl DownloadProgress for Bars {
    fn plan(&mut self, files: &[RemoteFile]) {
        let total = files.iter().map(|f| f.size.unwrap_or(0)).sum::<u64>();
        self.files = files.len();
        if !self.terminal {
            eprintln!("{} files, {}", files.len(), human(total));
            return;
        }
        let b = self.multi.add(ProgressBar::new(total));
        b.set_style(Self::style(
            "{prefix:>12} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} ({msg} files)",
        ));
        b.set_prefix("total");
        b.set_message(format!("0/{}", files.len()));
        b.set_length(total);
        self.overall = Some(b);
    }
    fn file_start(&mut self, f: &RemoteFile) {
        self.current = 0;
        if self.terminal {
            let b = self.multi.insert(0, ProgressBar::new(f.size.unwrap_or(0)));
            b.set_style(Self::style("{prefix:>12} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} {msg}"));
            let name = f.path.rsplit('/').next().unwrap_or(&f.path);
            let short: String = if name.chars().count() > 12 {
                format!("…{}", name.chars().rev().take(11).collect::<Vec<_>>().into_iter().rev().collect::<String>())
            } else {
                name.to_string()
            };
            b.set_prefix(short);
            b.set_message(f.path.clone());
            self.file = Some(b);
        }
    }
    fn file_bytes(&mut self, done: u64) {
        self.current = done;
        if let Some(b) = &self.file {
            b.set_position(done);
        }
        if let Some(b) = &self.overall {
            b.set_position(self.base + done);
        }
    }
    fn file_done(&mut self, f: &RemoteFile, fetched: bool) {
        self.base += f.size.unwrap_or(self.current);
        self.files_done += 1;
        if let Some(b) = self.file.take() {
            b.finish_and_clear();
        }
        if let Some(b) = &self.overall {
            b.set_position(self.base);
            b.set_message(format!("{}/{}", self.files_done, self.files));
        }
        if !self.terminal {
            let what = if fetched { "fetched" } else { "already complete" };
            eprintln!("{what}: {} ({})", f.path, human(f.size.unwrap_or(self.current)));
        }
    }
    fn warn(&mut self, msg: &str) {
        self.multi.suspend(|| eprintln!("warning: {msg}"));
    }
}

fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{bytes} B")
    }
}
