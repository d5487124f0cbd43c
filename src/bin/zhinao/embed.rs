//! `zhinao embed`: text embeddings with a BERT model directory (360Zhinao-search, spec §6).
//! Input: one text per line, or JSONL objects with a `text` field (detected per line). Output:
//! JSONL, one `{"index", "embedding"}` object per input line, in input order, `index` being the
//! 0-based line number: a blank line is embedded as the empty string (and reported), never
//! skipped, so a pipeline joining by index stays aligned. A text longer than the model's limit is
//! truncated with a warning, or refused with `--no-truncate`.

use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use clap::{Args, ValueEnum};
use zhinao::embed::{query_instruction, EmbedOptions, Embedder};
use zhinao::loader::Pooling;

use crate::lm::progress_bar;
use crate::GpuArgs;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum PoolingArg {
    Cls,
    Mean,
}

#[derive(Args, Debug, Clone)]
pub struct EmbedArgs {
    /// Model directory: config.json, model.safetensors or pytorch_model.bin, tokenizer.json or vocab.txt.
    #[arg(long, value_parser = crate::download::model_path)]
    pub model: PathBuf,
    /// Pooling (default: 1_Pooling/config.json, else cls).
    #[arg(long, value_enum)]
    pub pooling: Option<PoolingArg>,
    /// Do not L2-normalise the embeddings.
    #[arg(long)]
    pub no_normalize: bool,
    /// Prepend this instruction to every input (queries); `zhinao-search` names 360Zhinao-search's
    /// retrieval instruction "为这个句子生成表示以用于检索相关文章：".
    #[arg(long)]
    pub query_instruction: Option<String>,
    /// Input file (`-` for stdin): one text per line, or JSONL with a `text` field. Several files
    /// or a glob (`corpus/part-*.jsonl`) are shards: each gets its own output file in `--output`.
    #[arg(long, required = true, num_args = 1..)]
    pub input: Vec<PathBuf>,
    /// Output JSONL file (`-` for stdout); with several input shards, a directory.
    #[arg(long)]
    pub output: PathBuf,
    /// Take only shards k with k % N == I of the inputs (one process per GPU: `--device I --shard I/N`).
    #[arg(long, value_parser = crate::shards::parse_shard)]
    pub shard: Option<crate::shards::Shard>,
    /// Most padded tokens per batch.
    #[arg(long, default_value_t = 8192)]
    pub max_batch_tokens: usize,
    /// Refuse a text longer than the model's limit instead of truncating it.
    #[arg(long)]
    pub no_truncate: bool,
}

/// Lists at most this many lines in one warning.
const LIST_MAX: usize = 10;

/// `1, 4, 9` (and how many more).
pub fn list_lines(lines: &[usize]) -> String {
    let shown: Vec<String> = lines.iter().take(LIST_MAX).map(|n| n.to_string()).collect();
    let more = lines.len().saturating_sub(LIST_MAX);
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

/// The text of one input line: a JSON object's `text` field, else the line itself.
fn line_text(line: &str, n: usize) -> Result<String> {
    let t = line.trim_start();
    if t.starts_with('{') {
        if let Ok(serde_json::Value::Object(obj)) = serde_json::from_str::<serde_json::Value>(t) {
            return match obj.get("text") {
                Some(serde_json::Value::String(s)) => Ok(s.clone()),
                _ => bail!("line {n}: JSON object without a string `text` field"),
            };
        }
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// Every line of the input, in order: blank lines become empty texts (reported on stderr).
fn read_inputs(path: &PathBuf) -> Result<Vec<String>> {
    let reader: Box<dyn BufRead> = if path.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?,
        ))
    };
    let mut texts = Vec::new();
    let mut blank = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            blank.push(i + 1);
            texts.push(String::new());
            continue;
        }
        texts.push(line_text(&line, i + 1)?);
    }
    if !blank.is_empty() {
        eprintln!(
            "note: {} blank line(s) embedded as the empty string, keeping index = line number - 1 (line {})",
            blank.len(),
            list_lines(&blank)
        );
    }
    Ok(texts)
}

pub fn run(a: &EmbedArgs, gpu: &GpuArgs) -> Result<()> {
    let jobs = if crate::shards::is_sharded(&a.input) {
        crate::shards::plan(&crate::shards::expand(&a.input)?, &a.output, a.shard)?
    } else {
        vec![(a.input[0].clone(), a.output.clone())]
    };
    let opts = EmbedOptions {
        pooling: a.pooling.map(|p| match p {
            PoolingArg::Cls => Pooling::Cls,
            PoolingArg::Mean => Pooling::Mean,
        }),
        normalize: !a.no_normalize,
        query_instruction: a.query_instruction.as_deref().map(query_instruction),
        max_batch_tokens: a.max_batch_tokens,
        truncate: !a.no_truncate,
    };
    let ctx = gpu.context()?;
    let mut bar = progress_bar();
    let e = Embedder::load(ctx, &a.model, &opts, &mut bar).with_context(|| format!("loading {}", a.model.display()))?;
    eprintln!("pooling {:?}, normalize {}", e.pooling, e.normalize);
    for (input, output) in &jobs {
        if jobs.len() > 1 {
            eprintln!("{} -> {}", input.display(), output.display());
        }
        embed_file(&e, a, input, output)?;
    }
    Ok(())
}

/// Embed one input file into one output file (a shard of a sharded run, or the whole job).
fn embed_file(e: &Embedder, a: &EmbedArgs, input: &PathBuf, output: &PathBuf) -> Result<()> {
    let texts = read_inputs(input)?;
    eprintln!("{} texts", texts.len());
    let t0 = Instant::now();
    let show = texts.len() >= 256;
    let mut progress = |done: usize, total: usize| {
        if show {
            let s = t0.elapsed().as_secs_f64();
            eprint!("\rembedding {done} / {total}  {:.1} texts/s ", done as f64 / s.max(1e-9));
            if done == total {
                eprintln!();
            }
        }
    };
    let is_query = e.query_instruction.is_some();
    let (seqs, truncated) = e.tokenize_texts(&texts, is_query)?;
    if let Some(t) = truncated.first() {
        if a.no_truncate {
            return Err(e.too_long(&format!("{} line {}", input.display(), t.index + 1), t.tokens).into());
        }
        let lines: Vec<usize> = truncated.iter().map(|t| t.index + 1).collect();
        eprintln!(
            "warning: {} text(s) longer than the model's limit of {} tokens ({}) were truncated to it (line {}; the first had {} tokens); --no-truncate refuses them instead",
            truncated.len(),
            e.tokenizer.max_len,
            e.limit_source,
            list_lines(&lines),
            t.tokens
        );
    }
    let vecs = e.embed_ids(&seqs, &mut progress)?;
    let out: Box<dyn Write> = if output.as_os_str() == "-" {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(std::fs::File::create(output).with_context(|| format!("creating {}", output.display()))?)
    };
    let mut out = BufWriter::new(out);
    for (i, v) in vecs.iter().enumerate() {
        serde_json::to_writer(&mut out, &serde_json::json!({ "index": i, "embedding": v }))?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    eprintln!("{} embeddings in {:.2} s", vecs.len(), t0.elapsed().as_secs_f64());
    Ok(())
}
