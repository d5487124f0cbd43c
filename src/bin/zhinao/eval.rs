//! `zhinao eval retrieval|rerank`: C-MTEB-style metrics on a local dataset (see `zhinao::eval`
//! for the layouts and the exact metric definitions); `zhinao eval niah`: needle in a haystack
//! over lengths × depths on a causal LM (`zhinao::eval::niah`).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};
use serde_json::json;
use zhinao::eval::{eval_rerank, eval_retrieval, PairScorer, Report, RerankData, RetrievalData, TextEmbedder};
use zhinao::models::reranker::{Reranker, ScorePosition};

use crate::GpuArgs;

#[derive(Args, Debug)]
pub struct DataArgs {
    /// Model directory.
    #[arg(long, value_parser = crate::download::model_path)]
    pub model: PathBuf,
    /// Dataset directory (C-MTEB layout).
    #[arg(long)]
    pub data: PathBuf,
    /// Print one JSON object (with per-sample scores for rerank).
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum EvalCmd {
    /// NDCG@10 of an embedding model: corpus.jsonl, queries.jsonl, qrels/test.tsv.
    Retrieval(DataArgs),
    /// MAP and MRR@10 of the reranker: test.jsonl with query, positive, negative.
    Rerank {
        #[command(flatten)]
        args: DataArgs,
        /// Which position's hidden state is scored.
        #[arg(long, default_value = "before-label", value_parser = ["before-label", "label", "last"])]
        position: String,
    },
    /// Needle in a haystack on a causal LM: a seeded haystack, a 7-digit needle, greedy answers,
    /// scored over context lengths × depths; writes niah.json and niah.svg (heatmap) to --out.
    Niah(crate::niah::NiahArgs),
}

/// The embedding model of a directory.
fn load_embedder(model: &Path, gpu: &GpuArgs) -> Result<Box<dyn TextEmbedder>> {
    let opts = zhinao::embed::EmbedOptions::default();
    let e = zhinao::embed::Embedder::load(gpu.context()?, model, &opts, &mut |_, _| {})
        .with_context(|| format!("loading the embedding model {}", model.display()))?;
    Ok(Box::new(e))
}

/// The reranker as a `PairScorer` at one score position.
struct RerankScorer {
    reranker: Reranker,
    position: ScorePosition,
}

impl PairScorer for RerankScorer {
    fn score_pairs(&self, query: &str, passages: &[String]) -> zhinao::Result<Vec<f32>> {
        Ok(self.reranker.score(query, passages, self.position)?.iter().map(|s| s.raw).collect())
    }
}

fn print(report: &Report, extra: Option<serde_json::Value>, as_json: bool) {
    if as_json {
        let mut v = json!(report);
        if let Some(x) = extra {
            v["samples"] = x;
        }
        println!("{v}");
    } else {
        println!("{} ({} evaluated)", report.task, report.evaluated);
        for (k, v) in &report.metrics {
            println!("  {k:<10} {v:.4}");
        }
    }
}

pub fn run(cmd: EvalCmd, gpu: &GpuArgs) -> Result<()> {
    match cmd {
        EvalCmd::Retrieval(a) => {
            let data =
                RetrievalData::load(&a.data).with_context(|| format!("retrieval data in {}", a.data.display()))?;
            let embedder = load_embedder(&a.model, gpu)?;
            let report = eval_retrieval(embedder.as_ref(), &data)?;
            print(&report, None, a.json);
        }
        EvalCmd::Rerank { args: a, position } => {
            let data = RerankData::load(&a.data).with_context(|| format!("reranking data in {}", a.data.display()))?;
            let scorer =
                RerankScorer { reranker: crate::rerank::load_reranker(&a.model, gpu)?, position: position.parse()? };
            let (report, samples) = eval_rerank(&scorer, &data)?;
            print(&report, Some(json!(samples)), a.json);
        }
        EvalCmd::Niah(a) => crate::niah::run(&a, gpu)?,
    }
    Ok(())
}
