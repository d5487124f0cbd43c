//! A two-turn chat with the reference prompt format (make_context), sampling with the model's
//! generation_config defaults and a cancel flag.
//!
//!     cargo run --release --example chat -- assets/tiny-zhinao

use std::sync::atomic::AtomicBool;

use zhinao::engine::{generate, GenOptions, Lm, LmOptions};
use zhinao::gpu::{Context, GpuOptions};
use zhinao::sampling::Sampler;
use zhinao::tokenizer::Message;

fn main() -> zhinao::Result<()> {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "assets/tiny-zhinao".into());
    let lm = Lm::load(Context::new(&GpuOptions::default())?, dir.as_ref(), &LmOptions::default(), &mut |_, _| {})?;
    let mut session = lm.session()?;
    let mut sampler = Sampler::new(lm.default_sampling());
    let cancel = AtomicBool::new(false); // set from another thread to stop an answer
    let mut history = Vec::new();
    for question in ["你好", "请介绍一下你自己"] {
        history.push(Message::new("user", question));
        let prompt = lm.chat_prompt(&history, 64)?;
        let opts = GenOptions { max_new: 64, stop_ids: lm.stop_ids(), cancel: Some(&cancel) };
        let g = generate(&mut session, &prompt, &opts, &mut sampler, &mut |_| true)?;
        let answer = lm.tokenizer.decode(&g.output_ids, true);
        println!("User: {question}\nAssistant: {answer}\n({} prompt tokens reused from the cache)\n", g.cached_tokens);
        history.push(Message::new("assistant", &answer));
    }
    Ok(())
}
