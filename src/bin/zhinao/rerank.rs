//! `zhinao rerank`: score documents against a query with the 360Zhinao reranker and print them
//! best first (raw score and its sigmoid as `relevance`). `index` is the document's 0-based line
//! number: a blank line is scored as an empty document (and reported), never skipped. A pair
//! longer than the model takes is truncated with a warning (as the reference FlagReranker does
//! with `max_len`), or refused with `--no-truncate`.

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
    /// Refuse a (query, document) pair longer than the model takes instead of truncating it.
    #[arg(long)]
    pub no_truncate: bool,
}

/// Load a reranker directory, reporting its size on stderr.
pub fn load_reranker(model: &Path, gpu: &GpuArgs) -> Result<Reranker> {
    let ctx = gpu.context()?;
    let r = match Reranker::load(ctx, model, &mut |_, _| {}) {
        Ok(r) => r,
        Err(zhinao::Error::MissingTensor { name, .. }) if name.starts_with("linear.") => bail!(
            "{} has no `linear` score head ({name}): it is not a 360Zhinao reranker (a chat or base model runs with `zhinao generate`)",
            model.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("loading reranker {}", model.display())),
    };
    let cfg = &r.backbone.cfg;
    eprintln!(
        "reranker: {} layers, hidden {}, {} heads; weights {:.1} MiB on the GPU (lm_head not loaded)",
        cfg.num_hidden_layers,
        cfg.hidden_size,
        cfg.num_attention_heads,
        r.backbone.weight_bytes() as f64 / 1048576.0
    );
    Ok(r)
}

/// Documents of a file, one per line: plain lines, or JSON objects with a "text" field. A blank
/// line is an empty document (reported on stderr), so document i is line i + 1.
pub fn read_docs(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut docs = Vec::new();
    let mut blank = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            blank.push(n + 1);
            docs.push(String::new());
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
    if docs.len() == blank.len() {
        bail!("{}: no documents", path.display());
    }
    if !blank.is_empty() {
        eprintln!(
            "note: {} blank line(s) scored as empty documents, keeping index = line number - 1 (line {})",
            blank.len(),
            crate::embed::list_lines(&blank)
        );
    }
    Ok(docs)
}

pub fn run(a: &RerankArgs, gpu: &GpuArgs) -> Result<()> {
    let position: ScorePosition = a.position.parse()?;
    let docs = read_docs(&a.docs)?;
    let r = load_reranker(&a.model, gpu)?;
    let checked = r.inputs_checked(&a.query, &docs)?;
    let cut: Vec<(usize, usize)> = checked.iter().enumerate().filter_map(|(i, (_, n))| n.map(|n| (i + 1, n))).collect();
    if let Some(&(line, tokens)) = cut.first() {
        let limit = r.max_input_len();
        if a.no_truncate {
            bail!(
                "{} line {line}: the query and document make a prompt of {tokens} tokens, more than the reranker takes ({limit}: the reference's max_len 1024 or the model's max_position_embeddings, whichever is smaller); truncation is off",
                a.docs.display()
            );
        }
        let lines: Vec<usize> = cut.iter().map(|c| c.0).collect();
        eprintln!(
            "warning: {} document(s) made prompts longer than the reranker's {limit} tokens and were truncated to it, as the reference does (line {}; the first made {tokens} tokens); --no-truncate refuses them instead",
            cut.len(),
            crate::embed::list_lines(&lines)
        );
    }
    let inputs: Vec<_> = checked.into_iter().map(|(i, _)| i).collect();
    let scores = r.score_inputs(&inputs, position)?;
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
