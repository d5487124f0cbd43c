//! `zhinao rerank`: score documents against a query with the 360Zhinao reranker and print them
//! best first (raw score and its sigmoid as `relevance`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use clap::Args;
use serde_json::json;
use zhinao::models::reranker::{Reranker, ScorePosition};

use crate::GpuArgs;

#[derive(Args, Debug)]
pub struct RerankArgs {
    /// Reranker model directory (config.json, pytorch_model.bin or safetensors, vocab/360.tiktoken).
    #[arg(long, value_parser = crate::download::model_path)]
    pub model: PathBuf,
    #[arg(long)]
    pub query: String,
    /// Documents, one per line; JSON Lines with a "text" field are also accepted.
    #[arg(long)]
    pub docs: PathBuf,
    /// Print only the best N.
    #[arg(long)]
    pub top_n: Option<usize>,
    /// Print one JSON object: {"results": [{"index", "score", "relevance"}, …]}.
    #[arg(long)]
    pub json: bool,
    /// Which position's hidden state is scored (spec §7: unconfirmed; see ScorePosition).
    #[arg(long, default_value = "before-label", value_parser = ["before-label", "label", "last"])]
    pub position: String,
}

/// Load a reranker directory, reporting its size on stderr.
pub fn load_reranker(model: &Path, gpu: &GpuArgs) -> Result<Reranker> {
    let ctx = gpu.context()?;
    let r =
        Reranker::load(ctx, model, &mut |_, _| {}).with_context(|| format!("loading reranker {}", model.display()))?;
    let cfg = &r.backbone.cfg;
    eprintln!(
        "reranker: {} layers, hidden {}, {} heads; weights {:.1} MiB on the GPU (lm_head not loaded)",
        cfg.num_hidden_layers,
        cfg.hidden_size,
        cfg.num_attention_heads,
        r.backbone.weight_bytes as f64 / 1048576.0
    );
    Ok(r)
}

/// Documents of a file: plain lines, or JSON objects with a "text" field (blank lines skipped).
pub fn read_docs(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut docs = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let obj =
            line.trim_start().starts_with('{').then(|| serde_json::from_str::<serde_json::Value>(line).ok()).flatten();
        match obj {
            Some(v) => match v.get("text").and_then(|t| t.as_str()) {
                Some(t) => docs.push(t.to_string()),
                None => bail!("{} line {}: a JSON object without a \"text\" string", path.display(), n + 1),
            },
            None => docs.push(line.to_string()),
        }
    }
    if docs.is_empty() {
        bail!("{}: no documents", path.display());
    }
    Ok(docs)
}

pub fn run(a: &RerankArgs, gpu: &GpuArgs) -> Result<()> {
    let position: ScorePosition = a.position.parse()?;
    let docs = read_docs(&a.docs)?;
    let r = load_reranker(&a.model, gpu)?;
    let scores = r.score(&a.query, &docs, position)?;
    let mut order: Vec<usize> = (0..docs.len()).collect();
    order.sort_by(|&x, &y| scores[y].raw.total_cmp(&scores[x].raw));
    order.truncate(a.top_n.unwrap_or(docs.len()));
    if a.json {
        let results: Vec<_> =
            order.iter().map(|&i| json!({ "index": i, "score": scores[i].raw, "relevance": scores[i].prob })).collect();
        println!("{}", json!({ "results": results }));
    } else {
        println!("{:>4} {:>6} {:>10} {:>9}  document", "rank", "index", "score", "relevance");
        for (rank, &i) in order.iter().enumerate() {
            let preview: String = docs[i].chars().take(60).collect();
            println!("{:>4} {:>6} {:>10.4} {:>9.4}  {preview}", rank + 1, i, scores[i].raw, scores[i].prob);
        }
    }
    Ok(())
}
