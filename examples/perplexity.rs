//! Perplexity of a text under a causal LM.
//!
//!     cargo run --release --example perplexity -- assets/tiny-zhinao "今天天气很好"

use zhinao::engine::{perplexity, Lm, LmOptions};
use zhinao::gpu::{Context, GpuOptions};
use zhinao::tokenizer::SpecialMode;

fn main() -> zhinao::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| "assets/tiny-zhinao".into());
    let text = args.next().unwrap_or_else(|| "The quick brown fox jumps over the lazy dog.".into());
    let lm = Lm::load(Context::new(&GpuOptions::default())?, dir.as_ref(), &LmOptions::default(), &mut |_, _| {})?;
    let ids = lm.tokenizer.encode(&text, SpecialMode::All)?;
    let report = perplexity(&mut lm.session()?, &ids, 1)?;
    println!("perplexity {:.3} over {} tokens", report.ppl, report.scored);
    Ok(())
}
