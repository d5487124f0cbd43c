//! The tiny checkpoint through sessions on the paged cache: the f16 cache in many small arenas
//! against the PyTorch goldens; q8 and q4 within stated bounds of f16; and a long context (3000
//! positions of a copy of the tiny checkpoint with rope_theta 5e7 and a 400K position limit) in
//! arenas of 256 positions, where paged f16 matches the single-buffer cache and the PyTorch
//! reference's logits (`tools/fixtures/make_long_goldens.py`), and the quantized
//! caches stay within their bounds (logits NMSE and top-1 agreement vs f16), with and without the
//! f16 sink of the first positions.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::*;
use zhinao::engine::Session;
use zhinao::loader::WeightFiles;
use zhinao::models::zhinao::Zhinao;
use zhinao::ops::kv::{KvFormat, KvLayout, SINK};

/// Each format, the quantized ones without and with the default f16 sink.
const VARIANTS: [(KvFormat, usize); 5] =
    [(KvFormat::F16, 0), (KvFormat::Q8, 0), (KvFormat::Q8, SINK), (KvFormat::Q4, 0), (KvFormat::Q4, SINK)];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().fold((0, f32::MIN), |b, (i, &x)| if x > b.1 { (i, x) } else { b }).0
}

/// (logits NMSE vs f16, top-1 agreement vs f16) each quantized format must meet on the tiny
/// random-weight model (measured: see the test output and README "KV cache types").
fn bounds(fmt: KvFormat) -> (f64, f64) {
    match fmt {
        KvFormat::F16 => (1e-9, 1.0),
        // Random weights give near-tied logits, so top-1 is fragile on short prompts (measured
        // worst: q8 94.6%, q4 70.3% on the goldens' prompts; 100% / 98.4% at 3000 positions).
        KvFormat::Q8 => (2e-4, 0.90),
        KvFormat::Q4 => (5e-2, 0.65),
    }
}

fn session(m: &Arc<Zhinao>, (fmt, sink): (KvFormat, usize), rows: usize, ctx_len: usize, chunk: usize) -> Session {
    let cfg = m.cfg();
    let layout =
        KvLayout::with_rows(fmt, cfg.num_kv_heads(), cfg.head_dim(), rows, rows).unwrap().with_sink(sink).unwrap();
    Session::with_layout(m.clone(), ctx_len, chunk, layout).unwrap()
}

fn top1(a: &[f32], b: &[f32], v: usize) -> f64 {
    let rows = a.len() / v;
    let same = a.chunks(v).zip(b.chunks(v)).filter(|(x, y)| argmax(x) == argmax(y)).count();
    same as f64 / rows as f64
}

/// Goldens through arenas of 5 positions (the prompt spans several), chunks of 7, then decode.
#[test]
fn paged_f16_matches_goldens_and_quantized_stay_close() {
    let m = Arc::new(Zhinao::load(ctx(), &root().join("assets/tiny-zhinao"), &mut |_, _| {}).unwrap());
    let v = m.cfg().vocab_size;
    let dir = root().join("assets/goldens");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tiny-zhinao.json")).unwrap()).unwrap();
    let tensors = WeightFiles::open_file(&dir.join("tiny-zhinao.safetensors")).unwrap();
    for p in json["prompts"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        let ids: Vec<u32> = p["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        let want = tensors.get(&format!("{name}.logits")).unwrap().to_f32_vec().unwrap();
        let mut f16_logits = Vec::new();
        for (fmt, sink) in VARIANTS {
            let mut s = session(&m, (fmt, sink), 5, 128, 7);
            let mut logits = if ids.len() > 1 { s.forward(&ids[..ids.len() - 1], true).unwrap() } else { Vec::new() };
            // The last position through the decode step (several arenas, split-K).
            let last = match s.step(ids[ids.len() - 1], false).unwrap() {
                zhinao::engine::Step::Logits(l) => l,
                _ => unreachable!(),
            };
            logits.extend(last);
            if fmt == KvFormat::F16 {
                check(&format!("{name}: paged f16 (arenas of 5) vs goldens"), &logits, &want, 1e-5);
                f16_logits = logits;
                continue;
            }
            let (e, agree) = (nmse(&logits, &f16_logits), top1(&logits, &f16_logits, v));
            println!("{name}: {fmt} (sink {sink}) vs f16: logits nmse {e:.2e}, top-1 {:.1}%", 100.0 * agree);
            // A prompt held entirely in the f16 sink is an f16 cache.
            let (bn, ba) = if ids.len() <= sink { bounds(KvFormat::F16) } else { bounds(fmt) };
            assert!(
                e <= bn && agree >= ba,
                "{name} {fmt} sink {sink}: nmse {e:.2e} (bound {bn:.0e}), top-1 {agree:.3} (bound {ba})"
            );
        }
    }
}

/// A copy of the tiny checkpoint whose config allows 400K positions with rope_theta 5e7 (the
/// 360K model's), so long contexts run on it.
pub fn long_tiny() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("zhinao-long-tiny-{}", std::process::id()));
    let src = root().join("assets/tiny-zhinao");
    copy_dir(&src, &dir);
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    cfg["max_position_embeddings"] = 400_000.into();
    cfg["model_max_length"] = 400_000.into();
    cfg["rope_theta"] = 5e7.into();
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    dir
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), to).unwrap();
        }
    }
}

#[test]
fn long_context_in_many_arenas() {
    let dir = long_tiny();
    let m = Arc::new(Zhinao::load(ctx(), &dir, &mut |_, _| {}).unwrap());
    let v = m.cfg().vocab_size;
    // 3000 seeded ids and the PyTorch reference's last 16 rows of logits for them
    // (tools/fixtures/make_long_goldens.py).
    let golden = WeightFiles::open_file(&root().join("assets/goldens/tiny-zhinao-long.safetensors")).unwrap();
    let ids: Vec<u32> = golden.get("ids").unwrap().to_i32_vec().unwrap().iter().map(|&i| i as u32).collect();
    let reference = golden.get("logits").unwrap().to_f32_vec().unwrap();
    let n = ids.len();
    assert_eq!((n, reference.len()), (3000, 16 * v));
    // One f16 arena for the whole context (the ops::attention kernels).
    let mut one = session(&m, (KvFormat::F16, 0), 4096, 4096, 512);
    one.forward(&ids[..n - 64], false).unwrap();
    let want = one.forward(&ids[n - 64..], true).unwrap();
    check("3000 positions, one f16 buffer vs the PyTorch reference", &want[48 * v..], &reference, 1e-5);
    for (fmt, sink) in VARIANTS {
        let mut s = session(&m, (fmt, sink), 256, 4096, 512);
        s.forward(&ids[..n - 64], false).unwrap();
        let got = s.forward(&ids[n - 64..], true).unwrap();
        let (e, agree) = (nmse(&got, &want), top1(&got, &want, v));
        if fmt == KvFormat::F16 {
            check("3000 positions, paged f16 vs the PyTorch reference", &got[48 * v..], &reference, 1e-5);
        }
        let (held, _) = s.kv_bytes();
        println!(
            "{n} positions, {fmt} (sink {sink}) in arenas of 256: last 64 rows' logits nmse {e:.2e} vs one f16 buffer, top-1 {:.1}%, {} KiB of cache",
            100.0 * agree,
            held >> 10
        );
        let (bn, ba) = bounds(fmt);
        assert!(
            e <= bn && agree >= ba,
            "{fmt} sink {sink}: nmse {e:.2e} (bound {bn:.0e}), top-1 {agree:.3} (bound {ba})"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// The pipelined `generate` (steps queued ahead, device sampling) over a cache that grows arena by
/// arena while steps are in flight: greedy tokens equal a host loop of single steps over the same
/// format, for every format.
#[test]
fn generate_grows_the_cache_while_steps_are_queued() {
    use zhinao::engine::{generate, GenOptions, Step};
    use zhinao::sampling::{Sampler, SamplingParams};
    let m = Arc::new(Zhinao::load(ctx(), &root().join("assets/tiny-zhinao"), &mut |_, _| {}).unwrap());
    let prompt: Vec<u32> = (200..213).collect();
    for variant in [(KvFormat::F16, 0), (KvFormat::Q8, 0), (KvFormat::Q4, 0), (KvFormat::Q4, 3)] {
        let fmt = variant.0;
        // Arenas of 8 positions (after a 3-position f16 sink): the prompt spans two or three, the
        // 24 new tokens three more.
        let mut s = session(&m, variant, 8, 64, 5);
        let opts = GenOptions { max_new: 24, ..Default::default() };
        let g = generate(&mut s, &prompt, &opts, &mut Sampler::new(SamplingParams::greedy()), &mut |_| true).unwrap();
        let mut h = session(&m, variant, 8, 64, 5);
        let mut want = vec![argmax(&h.forward(&prompt, false).unwrap()) as u32];
        while want.len() < 24 {
            match h.step(*want.last().unwrap(), false).unwrap() {
                Step::Logits(l) => want.push(argmax(&l) as u32),
                Step::Greedy(_) => unreachable!(),
            }
        }
        assert_eq!(g.output_ids, want, "{variant:?}");
        assert_eq!(s.pos(), prompt.len() + 23);
        assert!(s.kv_bytes().0 >= h.kv_bytes().0, "{fmt}: the cache grew to hold every position");
    }
}
