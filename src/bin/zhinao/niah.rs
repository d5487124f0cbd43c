//! `zhinao eval niah`: the needle-in-a-haystack grid (`zhinao::eval::niah`) from the command line.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::Args;
use zhinao::eval::niah::{self, Lang, NiahOptions};
use zhinao::eval::niah_plot;

use crate::lm::ModelArgs;
use crate::GpuArgs;

#[derive(Args, Debug)]
pub struct NiahArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt lengths in tokens, comma-separated (default: 10 from 1024 to the model's context,
    /// as 360's harness).
    #[arg(long, value_delimiter = ',')]
    pub lengths: Vec<usize>,
    /// Needle depths in % of the haystack, comma-separated (default: 0,10,…,100).
    #[arg(long, value_delimiter = ',')]
    pub depths: Vec<f64>,
    /// Haystack, needle and question language: en, zh or both.
    #[arg(long, default_value = "both")]
    pub lang: String,
    /// Seeds the haystack and the needles (12345: 360's seed).
    #[arg(long, default_value_t = 12345)]
    pub seed: u64,
    /// Tokens generated per answer (greedy).
    #[arg(long, default_value_t = 32)]
    pub max_new_tokens: usize,
    /// Print the whole report as JSON on stdout (instead of the table).
    #[arg(long)]
    pub json: bool,
    /// Directory for niah.json and niah.svg.
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
}

pub fn run(a: &NiahArgs, gpu: &GpuArgs) -> Result<()> {
    let langs = Lang::parse_list(&a.lang)?;
    // The grid is checked against the model's context before the GPU or the weights are touched.
    let cfg = zhinao::loader::ZhinaoConfig::load(&a.model.model)?;
    let max_ctx = a.model.ctx.unwrap_or(cfg.max_position_embeddings).min(cfg.max_position_embeddings);
    let lengths =
        if a.lengths.is_empty() { niah::default_lengths(max_ctx, a.max_new_tokens) } else { a.lengths.clone() };
    let depths = if a.depths.is_empty() { niah::default_depths(11) } else { a.depths.clone() };
    niah::check_grid(&lengths, &depths, max_ctx)?;
    // A context just long enough for the longest prompt and its answer (the cache is paged, but
    // the estimate printed before loading is for the whole context).
    let longest = lengths.iter().copied().max().unwrap_or(1);
    let mut margs = a.model.clone();
    margs.ctx = Some(a.model.ctx.unwrap_or((longest + a.max_new_tokens).min(cfg.max_position_embeddings)));
    let lm = crate::lm::load(&margs, gpu)?;
    let name =
        a.model.model.file_name().map_or_else(|| a.model.model.display().to_string(), |n| n.to_string_lossy().into());
    let opts = NiahOptions { lengths, depths, langs, seed: a.seed, max_new: a.max_new_tokens };
    let total = opts.lengths.len() * opts.depths.len() * opts.langs.len();
    let mut done = 0;
    let report = niah::run(&lm, &name, &opts, &mut |c| {
        done += 1;
        eprintln!(
            "[{done}/{total}] {} {} tokens, depth {}%: score {} (needle {} at token {}; answer {:?})",
            c.lang, c.length, c.depth, c.score, c.value, c.needle_token, c.answer
        );
    })?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let (json_path, svg_path) = (a.out.join("niah.json"), a.out.join("niah.svg"));
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    std::fs::write(&svg_path, niah_plot::svg(&report)).with_context(|| format!("writing {}", svg_path.display()))?;
    eprintln!("wrote {} and {}", json_path.display(), svg_path.display());
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", niah_plot::table(&report));
    }
    Ok(())
}
