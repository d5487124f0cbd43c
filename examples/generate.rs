//! The smallest program that loads a model and streams a completion.
//!
//!     cargo run --release --example generate -- assets/tiny-zhinao "你好"
//!
//! (The tiny checkpoint has random weights: the text is meaningless. Point it at a published
//! 360Zhinao directory for real output.)

use std::io::Write;
use std::path::PathBuf;

use zhinao::generate::{generate, Session};
use zhinao::gpu::{Context, GpuOptions};
use zhinao::models::zhinao::Zhinao;
use zhinao::sampling::{Sampler, SamplingParams};
use zhinao::tokenizer::{SpecialMode, StreamDecoder, Tokenizer};

fn main() -> zhinao::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().unwrap_or_else(|| "assets/tiny-zhinao".into()));
    let prompt = args.next().unwrap_or_else(|| "The capital of France is".into());

    let ctx = Context::new(&GpuOptions::default())?;
    let model = Zhinao::load(ctx, &dir, &mut |_, _| {})?;
    let tok = Tokenizer::from_model_dir(&dir)?;

    let ids = tok.encode(&prompt, SpecialMode::All)?;
    let mut session = Session::new(&model, 512.min(model.cfg.max_position_embeddings), 256)?;
    let mut sampler = Sampler::new(SamplingParams::greedy());
    let mut stream = StreamDecoder::new(&tok, true);
    generate(&mut session, &ids, 32, &tok.stop_ids(), &mut sampler, &mut |id| {
        print!("{}", stream.push(id));
        std::io::stdout().flush().is_ok()
    })?;
    println!("{}", stream.finish());
    Ok(())
}
