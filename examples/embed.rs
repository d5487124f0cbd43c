//! Sentence embeddings with a BERT model (360Zhinao-search or any sentence-transformers BERT).
//!
//!     cargo run --release --example embed -- assets/tiny-bert

use zhinao::embed::{EmbedOptions, Embedder};
use zhinao::gpu::{Context, GpuOptions};

fn main() -> zhinao::Result<()> {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "assets/tiny-bert".into());
    let ctx = Context::new(&GpuOptions::default())?;
    let e = Embedder::load(ctx, dir.as_ref(), &EmbedOptions::default(), &mut |_, _| {})?;
    let texts = vec!["今天天气很好".to_string(), "The weather is nice today.".to_string()];
    let v = e.embed_texts(&texts, false)?;
    let cos: f32 = v[0].iter().zip(&v[1]).map(|(a, b)| a * b).sum();
    println!("{} dimensions; cosine of the two sentences {cos:.4}", v[0].len());
    Ok(())
}
