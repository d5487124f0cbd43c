//! The smallest program that loads a model and streams a completion.
//!
//!     cargo run --release --example generate -- assets/tiny-zhinao "你好"
//!
//! (The tiny checkpoint has random weights: the text is meaningless. Point it at a published
//! 360Zhinao directory for real output.)

use std::io::Write;
use std::path::PathBuf;

use zhinao::engine::{generate, GenOptions, Lm, LmOptions};
use zhinao::gpu::{Context, GpuOptions};
use zhinao::sampling::{Sampler, SamplingParams};
use zhinao::tokenizer::{SpecialMode, StreamDecoder};

fn main() -> zhinao::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().unwrap_or_else(|| "assets/tiny-zhinao".into()));
    let prompt = args.next().unwrap_or_else(|| "The capital of France is".into());

    let ctx = Context::new(&GpuOptions::default())?;
    let lm = Lm::load(ctx, &dir, &LmOptions::default(), &mut |_, _| {})?;
    let ids = lm.tokenizer.encode(&prompt, SpecialMode::All)?;

    let mut session = lm.session()?;
    let mut sampler = Sampler::new(SamplingParams::greedy());
    let mut stream = StreamDecoder::new(&lm.tokenizer, true);
    let opts = GenOptions { max_new: 32, stop_ids: lm.stop_ids(), cancel: None };
    generate(&mut session, &ids, &opts, &mut sampler, &mut |id| {
        print!("{}", stream.push(id));
        std::io::stdout().flush().is_ok()
    })?;
    println!("{}", stream.finish());
    Ok(())
}
