//! `zhinao bench generate`: decode and prefill of a real model directory through the engine's own
//! generation loop (`engine::generate`), with an optional per-kernel profile of one decode step, and
//! decode at a long synthetic context (`--fill`).

use std::time::Instant;

use anyhow::Result;
use zhinao::engine::{generate as generate_tokens, Batch, BatchOptions, GenOptions, Session, Step};
use zhinao::rng::Rng;

use crate::bench::copy_bandwidth;
use crate::lm::ModelArgs;
use crate::GpuArgs;

/// Prefill `prompt_len` random tokens, then decode `gen` tokens greedily through `engine::generate`
/// (the pipelined loop: device sampling, steps queued ahead). With `profile`, one decode step is
/// then timed per dispatch (timestamp queries) and summed by kernel label.
pub fn generate(
    model: &ModelArgs,
    prompt_len: usize,
    gen: usize,
    json: bool,
    profile: bool,
    gpu: &GpuArgs,
) -> Result<()> {
    let l = crate::lm::load(model, gpu)?;
    let m = &l.model;
    let ctx = m.ctx();
    let bw = copy_bandwidth(ctx)?;
    let mut rng = Rng::new(7);
    let ids: Vec<u32> = (0..prompt_len.max(1)).map(|_| rng.below(m.cfg().vocab_size.min(100_000) as u32)).collect();
    let ctx_len = (ids.len() + gen + 1).min(l.ctx_len);
    let mut s = Session::with_kv(m.clone(), ctx_len, model.chunk, model.kv_type, model.kv_sink)?;
    let greedy = || zhinao::sampling::Sampler::new(zhinao::sampling::SamplingParams::greedy());
    let run = |s: &mut Session, prompt: &[u32], n: usize| {
        s.reset();
        let opts = GenOptions { max_new: n, ..Default::default() };
        generate_tokens(s, prompt, &opts, &mut greedy(), &mut |_| true)
    };
    // Warm-up: compile every pipeline once (prefill shapes, the decode plan, the sampler).
    run(&mut s, &ids, 2)?;
    let g = run(&mut s, &ids, gen.min(ctx_len - ids.len()).max(1))?;
    let (prefill, decode, n) = (g.prefill_secs, g.decode_secs, g.output_ids.len().saturating_sub(1));
    // Bytes read per decoded token: every weight except the embedding table (one row is read).
    let per_token = (m.weight_bytes - m.decoder.embed_tokens.bytes()) as f64;
    let decode_tps = n as f64 / decode.max(1e-9);
    let roofline = bw * 1e9 / per_token;
    let params = per_token / 2.0; // approximate for 16-bit weights
    let prefill_tps = ids.len() as f64 / prefill;
    let tokens = g.output_ids.len().max(1) as f64;
    let want_profile = profile;
    let profile = if profile { s.profile_step()? } else { None };
    let mut by_label: Vec<(&str, usize, f64)> = Vec::new();
    for (label, secs) in profile.iter().flatten() {
        match by_label.iter_mut().find(|e| e.0 == *label) {
            Some(e) => (e.1, e.2) = (e.1 + 1, e.2 + secs),
            None => by_label.push((label, 1, *secs)),
        }
    }
    by_label.sort_by(|a, b| b.2.total_cmp(&a.2));
    if json {
        let prof: Vec<_> =
            by_label.iter().map(|(l, c, t)| serde_json::json!({"label": l, "dispatches": c, "us": t * 1e6})).collect();
        println!(
            "{}",
            serde_json::json!({
                "device": ctx.describe(), "copy_gbps": bw, "weight_bytes_per_token": per_token,
                "prefill_tokens": ids.len(), "prefill_seconds": prefill, "prefill_tokens_per_second": prefill_tps,
                "decode_tokens": n, "decode_seconds": decode, "decode_tokens_per_second": decode_tps,
                "decode_roofline_tokens_per_second": roofline, "decode_roofline_fraction": decode_tps / roofline,
                "dispatches_per_token": g.steps.dispatches as f64 / tokens, "submits_per_token": g.steps.submits as f64 / tokens,
                "waits_per_token": g.steps.waits as f64 / tokens, "idle_waits": g.steps.idle_waits,
                "profile": prof,
            })
        );
    } else {
        println!("device copy bandwidth {bw:.1} GB/s; {:.2} GB of weights read per decoded token", per_token / 1e9);
        println!(
            "prefill {} tokens (to the first token): {:.3} s = {prefill_tps:.1} tokens/s (~{:.1} GFLOP/s for 16-bit weights)",
            ids.len(),
            prefill,
            2.0 * params * prefill_tps / 1e9
        );
        println!("decode {n} tokens: {decode:.3} s = {decode_tps:.2} tokens/s = {:.0}% of the {roofline:.1} tokens/s bandwidth roofline", 100.0 * decode_tps / roofline);
        println!(
            "per token: {:.1} dispatches, {:.2} submits, {:.2} host waits ({} with the GPU idle)",
            g.steps.dispatches as f64 / tokens,
            g.steps.submits as f64 / tokens,
            g.steps.waits as f64 / tokens,
            g.steps.idle_waits
        );
        if !by_label.is_empty() {
            let total: f64 = by_label.iter().map(|e| e.2).sum();
            println!("one decode step, by kernel ({:.1} us in all):", total * 1e6);
            for (label, count, secs) in &by_label {
                println!("  {label:<28} {count:>4} dispatches {:>9.1} us {:>5.1}%", secs * 1e6, 100.0 * secs / total);
            }
        } else if want_profile {
            println!("no per-dispatch profile: the adapter has no timestamp queries");
        }
    }
    Ok(())
}

/// Decode `gen` tokens after `fill` synthetic cached positions (see `Session::fill_synthetic`).
pub fn decode_at(model: &ModelArgs, fill: usize, gen: usize, json: bool, gpu: &GpuArgs) -> Result<()> {
    let l = crate::lm::load(model, gpu)?;
    let m = &l.model;
    let ctx = m.ctx();
    let gen = gen.max(1);
    if fill + gen + 1 > l.ctx_len {
        anyhow::bail!("--fill {fill} + --gen {gen} needs --ctx >= {} (context is {})", fill + gen + 1, l.ctx_len);
    }
    let mut s = Session::with_kv(m.clone(), l.ctx_len, model.chunk.min(64), model.kv_type, model.kv_sink)?;
    s.fill_synthetic(fill)?;
    s.step(0, true)?; // warm-up: records the decode step, compiles its pipelines
    ctx.sync()?;
    let t0 = Instant::now();
    let mut tok = 0;
    for _ in 0..gen {
        tok = match s.step(tok, true)? {
            Step::Greedy(t) => t.min(m.cfg().vocab_size as u32 - 1),
            Step::Logits(_) => unreachable!("greedy step"),
        };
    }
    let secs = t0.elapsed().as_secs_f64();
    let (held, max) = s.kv_bytes();
    let tps = gen as f64 / secs;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "device": ctx.describe(), "kv_type": model.kv_type.name(), "kv_sink": s.kv_sink(), "ctx": fill,
                "kv_bytes_held": held, "kv_bytes_at_full_context": max, "weight_bytes": m.weight_bytes,
                "decode_tokens": gen, "decode_seconds": secs, "decode_tokens_per_second": tps,
                "decode_ms_per_token": 1e3 / tps,
            })
        );
    } else {
        println!(
            "decode after {fill} positions ({} KV, {:.1} MiB held): {gen} tokens in {secs:.3} s = {tps:.2} tokens/s",
            model.kv_type,
            held as f64 / 1048576.0
        );
    }
    Ok(())
}

/// `b` sequences of `prompt_len` random tokens decoded together: all are prefilled and joined
/// first, then `gen` batched steps are timed (each gives every sequence one token; stop ids are
/// ignored). Reports the aggregate tokens/s and, in the same run, batch 1's for the ratio.
pub fn decode_batch(
    model: &ModelArgs,
    b: usize,
    prompt_len: usize,
    gen: usize,
    json: bool,
    gpu: &GpuArgs,
) -> Result<()> {
    let l = crate::lm::load(model, gpu)?;
    let m = &l.model;
    let ctx = m.ctx();
    let gen = gen.max(1);
    let ctx_len = prompt_len.max(1) + gen + 2;
    let mut rng = Rng::new(11);
    let greedy = zhinao::sampling::SamplingParams::greedy();
    let mut measure = |n: usize| -> Result<f64> {
        let opts = BatchOptions { parallel: n, ctx_len, chunk: model.chunk };
        let mut batch = Batch::new(m.clone(), opts)?;
        for _ in 0..n {
            let ids: Vec<u32> =
                (0..prompt_len.max(1)).map(|_| rng.below(m.cfg().vocab_size.min(100_000) as u32)).collect();
            batch.add(&ids, &greedy)?;
        }
        while batch.waiting() > 0 {
            batch.step()?;
        }
        batch.step()?; // warm-up: records this batch size's step, compiles its pipelines
        ctx.sync()?;
        let t0 = Instant::now();
        let mut tokens = 0;
        for _ in 0..gen {
            tokens += batch.step()?.len();
        }
        Ok(tokens as f64 / t0.elapsed().as_secs_f64())
    };
    let one = measure(1)?;
    let many = measure(b)?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "device": ctx.describe(), "batch": b, "prompt_tokens": prompt_len, "decode_steps": gen,
                "decode_tokens_per_second": many, "batch1_decode_tokens_per_second": one, "speedup": many / one,
            })
        );
    } else {
        println!(
            "batch {b}: {many:.1} tokens/s aggregate ({:.1} per sequence); batch 1 through the same path: {one:.1} tokens/s; {:.2}x",
            many / b as f64,
            many / one
        );
    }
    Ok(())
}
