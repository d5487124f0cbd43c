//! `zhinao rerank`: score documents against a query with the 360Zhinao reranker and print them
//! best first (raw score and its sigmoid as `relevance`). `index` is the document's 0-based line
//! number: a blank line is scored as an empty document (and reported), never skipped. A pair
//! longer than the model takes is truncated with a warning (as the reference FlagReranker does
//! with `max_len`), or refused with `--no-truncate`.

use std::io::Write as _;
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
    #[arg(long, required_unless_present = "pairs", requires = "docs")]
    pub query: Option<String>,
    /// Documents, one per line; JSON Lines with a "text" field are also accepted.
    #[arg(long, required_unless_present = "pairs", conflicts_with = "pairs")]
    pub docs: Option<PathBuf>,
    /// Instead of --query/--docs: JSONL files of pairs, `{"query": .., "text": ..}` per line, scored
    /// in input order into JSONL `{"index", "score", "relevance"}` (index = line number - 1). Several
    /// files or a glob are shards: one output file each in the `--output` directory.
    #[arg(long, num_args = 1.., conflicts_with = "query")]
    pub pairs: Vec<PathBuf>,
    /// Output of --pairs: a JSONL file (default `-`, stdout), or a directory for several shards.
    #[arg(long, requires = "pairs")]
    pub output: Option<PathBuf>,
    /// With --pairs: take only shards k with k % N == I (one process per GPU).
    #[arg(long, value_parser = crate::shards::parse_shard, requires = "pairs")]
    pub shard: Option<crate::shards::Shard>,
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
    if !a.pairs.is_empty() {
        return run_pairs(a, gpu, position);
    }
    let (Some(query), Some(docs_path)) = (&a.query, &a.docs) else { bail!("give --query and --docs, or --pairs") };
    let docs = read_docs(docs_path)?;
    let r = load_reranker(&a.model, gpu)?;
    let checked = r.inputs_checked(query, &docs)?;
    let cut: Vec<(usize, usize)> = checked.iter().enumerate().filter_map(|(i, (_, n))| n.map(|n| (i + 1, n))).collect();
    if let Some(&(line, tokens)) = cut.first() {
        let limit = r.max_input_len();
        if a.no_truncate {
            bail!(
                "{} line {line}: the query and document make a prompt of {tokens} tokens, more than the reranker takes ({limit}: the reference's max_len 1024 or the model's max_position_embeddings, whichever is smaller); truncation is off",
                docs_path.display()
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

/// The (query, document) pairs of a JSONL file, one `{"query", "text"}` object per line.
fn read_pairs(path: &Path) -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut pairs = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{} line {}: not a JSON object", path.display(), n + 1))?;
        match (v.get("query").and_then(|q| q.as_str()), v.get("text").and_then(|t| t.as_str())) {
            (Some(q), Some(t)) => pairs.push((q.to_string(), t.to_string())),
            _ => bail!("{} line {}: expected {{\"query\": str, \"text\": str}}", path.display(), n + 1),
        }
    }
    Ok(pairs)
}

/// `--pairs`: score every pair of every (selected) shard, in input order, one JSONL output each.
fn run_pairs(a: &RerankArgs, gpu: &GpuArgs, position: ScorePosition) -> Result<()> {
    let output = a.output.clone().unwrap_or_else(|| PathBuf::from("-"));
    let jobs = if crate::shards::is_sharded(&a.pairs) {
        crate::shards::plan(&crate::shards::expand(&a.pairs)?, &output, a.shard)?
    } else {
        vec![(a.pairs[0].clone(), output)]
    };
    let r = load_reranker(&a.model, gpu)?;
    for (input, output) in &jobs {
        let pairs = read_pairs(input)?;
        let mut inputs = Vec::with_capacity(pairs.len());
        let mut cut = Vec::new();
        for (i, (q, d)) in pairs.iter().enumerate() {
            let (inp, n) = r.inputs_checked(q, std::slice::from_ref(d))?.remove(0);
            if let Some(n) = n {
                if a.no_truncate {
                    bail!(
                        "{} line {}: a prompt of {n} tokens, more than the reranker takes ({}); truncation is off",
                        input.display(),
                        i + 1,
                        r.max_input_len()
                    );
                }
                cut.push(i + 1);
            }
            inputs.push(inp);
        }
        if !cut.is_empty() {
            eprintln!(
                "warning: {}: {} pair(s) truncated to the reranker's {} tokens (line {})",
                input.display(),
                cut.len(),
                r.max_input_len(),
                crate::embed::list_lines(&cut)
            );
        }
        let scores = r.score_inputs(&inputs, position)?;
        let mut out: Box<dyn std::io::Write> = if output.as_os_str() == "-" {
            Box::new(std::io::stdout().lock())
        } else {
            Box::new(std::io::BufWriter::new(
                std::fs::File::create(output).with_context(|| format!("creating {}", output.display()))?,
            ))
        };
        for (i, s) in scores.iter().enumerate() {
            writeln!(out, "{}", json!({ "index": i, "score": s.raw, "relevance": s.prob }))?;
        }
        out.flush()?;
        eprintln!("{}: {} pairs scored", input.display(), scores.len());
    }
    Ok(())
}
