//! The decode GEMV (`ops::gemv`: dense f32/f16/bf16 and GPTQ int4, T = 1..4, fused RMSNorm prologue,
//! bias, accumulate, SiLU·mul over interleaved gate/up rows, split weights, every tune) against the
//! f64 twin `cpu::gemv` (int4 through `cpu::matmul_q4::dequantize`).

mod common;
use common::*;
use zhinao::cpu::gemv::Fused;
use zhinao::cpu::matmul_q4::{dequantize, g_idx_bytes, pack_gptq, Gptq};
use zhinao::gpu::{Context, GpuOptions};
use zhinao::ops::gemv::{gemv, gemv_tuned, GemvOpts, GemvWeight, Tune};
use zhinao::tensor::{from_f32, to_f32, DType, GptqParts, QWeight, Weight};

/// f32 accumulation (and f32 norm factor and SiLU) against an f64 reference on exactly
/// representable weights: the same bound as the matmul tests.
const BOUND: f64 = 1e-10;

/// (bias, acc, norm, silu): every combination the engine uses.
const FLAGS: [(bool, bool, bool, bool); 7] = [
    (false, false, false, false),
    (true, false, false, false),
    (false, true, false, false),
    (true, true, false, false),
    (false, false, true, false),
    (true, false, true, false),
    (false, false, true, true),
];

#[derive(Clone, Copy, Debug)]
struct Case {
    t: usize,
    bias: bool,
    acc: bool,
    norm: bool,
    silu: bool,
    /// Rows of x before the T used ones (filled with NaN: they must not be read).
    x_row0: usize,
}

impl Case {
    fn new(t: usize, (bias, acc, norm, silu): (bool, bool, bool, bool)) -> Case {
        Case { t, bias, acc, norm, silu, x_row0: 0 }
    }
}

/// Run `w` (whose values, as the GPU sees them, are `wf` [N, K]) on random inputs; returns the NMSE.
fn run(ctx: &Context, w: GemvWeight, wf: &[f32], c: Case, tune: Option<Tune>, seed: u64, what: &str) -> f64 {
    let (n, k) = w.shape();
    let t = c.t;
    let n_out = if c.silu { n / 2 } else { n };
    let mut rng = Rng::new(seed);
    let x = rng.normals(t * k, 1.0);
    let b = rng.normals(n, 1.0);
    let g: Vec<f32> = rng.normals(k, 0.2).iter().map(|v| 1.0 + v).collect();
    let eps = 1e-6;
    let y0 = rng.normals(t * n_out, 1.0);
    let f = Fused {
        bias: c.bias.then_some(&b[..]),
        acc: c.acc.then_some(&y0[..]),
        norm: c.norm.then_some((&g[..], eps)),
        silu: c.silu,
    };
    let want = zhinao::cpu::gemv::gemv(&x, t, k, wf, n, &f);
    let mut xs = vec![f32::NAN; c.x_row0 * k];
    xs.extend_from_slice(&x);
    let gx = ctx.upload_f32("x", &xs).unwrap();
    let gb = ctx.upload_f32("b", &b).unwrap();
    let gg = ctx.upload_f32("g", &g).unwrap();
    let gy = if c.acc { ctx.upload_f32("y", &y0).unwrap() } else { poisoned(ctx, t * n_out) };
    let opts = GemvOpts {
        bias: c.bias.then_some(&gb),
        acc: c.acc,
        norm: c.norm.then_some((&gg, eps)),
        silu: c.silu,
        x_row0: c.x_row0,
    };
    let ds = match tune {
        Some(tune) => gemv_tuned(ctx, &gx, t, w, &opts, &gy, tune),
        None => gemv(ctx, &gx, t, w, &opts, &gy),
    }
    .unwrap();
    ctx.run(&ds.iter().collect::<Vec<_>>()).unwrap();
    let got = ctx.read_f32(&gy, 0, t * n_out).unwrap();
    let name = format!("{what} N={n} K={k} {c:?} tune={tune:?} [{}]", tier_name(ctx));
    check(&name, &got, &want, BOUND);
    nmse(&got, &want)
}

/// A random dense weight [n, k] of `dtype`: (GPU weight, its values).
fn dense(ctx: &Context, rng: &mut Rng, dtype: DType, n: usize, k: usize) -> (Weight, Vec<f32>) {
    let bytes = from_f32(dtype, &rng.normals(n * k, 0.5));
    (Weight::upload(ctx, "w", dtype, n, k, &bytes).unwrap(), to_f32(dtype, &bytes))
}

/// Random AutoGPTQ tensors (q, stored zeros uniform in 0..15, positive f16 scales) and, with
/// `shuffled`, an act-order g_idx (groups of gs inputs in a random order).
fn gptq(rng: &mut Rng, k: usize, n: usize, gs: usize, shuffled: bool) -> (Gptq, Option<Vec<u8>>) {
    let g = k / gs;
    let q: Vec<u8> = (0..k * n).map(|_| rng.below(16) as u8).collect();
    let z: Vec<u8> = (0..g * n).map(|_| rng.below(16) as u8).collect();
    let s: Vec<f32> = (0..g * n).map(|_| 0.01 + 0.05 * rng.uniform()).collect();
    let gi = shuffled.then(|| {
        let mut perm: Vec<u32> = (0..k as u32).collect();
        for i in (1..k).rev() {
            perm.swap(i, rng.below(i as u32 + 1) as usize);
        }
        g_idx_bytes(&perm.iter().map(|&p| p / gs as u32).collect::<Vec<_>>())
    });
    (pack_gptq(k, n, &q, &z, &s), gi)
}

fn parts<'a>(t: &'a Gptq, gi: Option<&'a [u8]>) -> GptqParts<'a> {
    GptqParts { qweight: &t.qweight, qzeros: &t.qzeros, scales: &t.scales, g_idx: gi }
}

/// A random GPTQ weight [n, k]: (GPU weight, its dequantized values [N, K]).
fn q4(ctx: &Context, rng: &mut Rng, k: usize, n: usize, gs: usize, shuffled: bool) -> (QWeight, Vec<f32>) {
    let (t, gi) = gptq(rng, k, n, gs, shuffled);
    let w = QWeight::upload(ctx, "w", k, n, gs, &t.qweight, &t.qzeros, &t.scales, gi.as_deref()).unwrap();
    (w, dequantize(k, n, gs, &t.qweight, &t.qzeros, &t.scales, gi.as_deref()))
}

/// Interleave the rows of two [n, k] f32 matrices (the reference for the gate/up layout).
fn interleave(a: &[f32], b: &[f32], k: usize) -> Vec<f32> {
    a.chunks(k).zip(b.chunks(k)).flat_map(|(x, y)| x.iter().chain(y).copied()).collect()
}

fn report(what: &str, ctx: &Context, worst: f64) {
    if std::env::var_os("ZHINAO_REPORT").is_some() {
        eprintln!("{what} [{}]: worst nmse {worst:.3e}", tier_name(ctx));
    }
}

#[test]
fn dense_all_dtypes_tokens_and_fusions() {
    // (N, K): K % 8 == 0 takes 16-byte loads, K % 4 == 0 with an odd word count 8-byte loads,
    // K odd or ≡ 2 mod 4 the scalar path with a bound check; N is never a multiple of 4 rows.
    let shapes: [(usize, usize); 7] = [(48, 64), (33, 67), (6, 1), (130, 256), (10, 44), (302, 1024), (14, 6)];
    for ctx in tiers() {
        let mut worst = 0f64;
        for d in [DType::F32, DType::F16, DType::BF16] {
            for t in 1..=4 {
                for (i, &(n, k)) in shapes.iter().enumerate() {
                    let (bias, acc, norm, silu) = FLAGS[(i + t) % FLAGS.len()];
                    let flags = (bias, acc, norm, silu && n.is_multiple_of(2));
                    let mut rng = Rng::new(100 * t as u64 + i as u64);
                    let (w, wf) = dense(&ctx, &mut rng, d, n, k);
                    let c = Case { x_row0: i % 2, ..Case::new(t, flags) };
                    worst = worst.max(run(&ctx, GemvWeight::Dense(&w), &wf, c, None, 7 + i as u64, &format!("{d}")));
                }
            }
        }
        report("dense", &ctx, worst);
    }
}

#[test]
fn int4_sequential_and_act_order() {
    // (K, N, gs): K % 32 == 0 with gs 32/128 takes four-word loads, gs = 16 two-word loads, K = 72
    // one word; gs = 12 is not a multiple of 8 and keeps a g_idx table.
    let shapes = [(64, 48, 32), (256, 8, 128), (128, 72, 16), (72, 16, 24), (48, 24, 12), (1024, 200, 128)];
    for ctx in tiers() {
        let mut worst = 0f64;
        for t in 1..=4 {
            for (i, &(k, n, gs)) in shapes.iter().enumerate() {
                for shuffled in [false, true] {
                    let flags = FLAGS[(i + t + shuffled as usize) % FLAGS.len()];
                    let mut rng = Rng::new(1000 + 10 * t as u64 + i as u64);
                    let (w, wf) = q4(&ctx, &mut rng, k, n, gs, shuffled);
                    let c = Case { x_row0: t % 2, ..Case::new(t, flags) };
                    let what = format!("int4 gs={gs} act-order={shuffled}");
                    worst = worst.max(run(&ctx, GemvWeight::Q4(&w), &wf, c, None, 9 + i as u64, &what));
                }
            }
        }
        report("int4", &ctx, worst);
    }
}

/// The gate/up helpers interleave rows so that the SILU epilogue sees (gate_i, up_i) pairs, and
/// the result is silu(gate·x)·(up·x).
#[test]
fn silu_over_interleaved_gate_up() {
    for ctx in tiers() {
        let mut rng = Rng::new(5);
        for (i, d) in [DType::BF16, DType::F16, DType::F32].into_iter().enumerate() {
            let (n, k) = (21, 40 + 4 * i);
            let a = from_f32(d, &rng.normals(n * k, 0.5));
            let b = from_f32(d, &rng.normals(n * k, 0.5));
            let w = Weight::upload_interleaved(&ctx, "gate_up", d, n, k, &a, &b).unwrap();
            let wf = interleave(&to_f32(d, &a), &to_f32(d, &b), k);
            for t in 1..=4 {
                let c = Case { bias: t % 2 == 0, acc: t == 3, ..Case::new(t, (false, false, t != 2, true)) };
                run(&ctx, GemvWeight::Dense(&w), &wf, c, None, 50 + t as u64, &format!("silu {d}"));
            }
        }
        for (k, n, gs, shuffled) in [(256, 24, 128, false), (128, 16, 32, true), (96, 8, 16, false)] {
            let (ta, gi) = gptq(&mut rng, k, n, gs, shuffled);
            let (tb, _) = gptq(&mut rng, k, n, gs, false);
            let w = QWeight::upload_interleaved(
                &ctx,
                "gate_up",
                k,
                n,
                gs,
                parts(&ta, gi.as_deref()),
                parts(&tb, gi.as_deref()),
            )
            .unwrap();
            let deq = |t: &Gptq| dequantize(k, n, gs, &t.qweight, &t.qzeros, &t.scales, gi.as_deref());
            let wf = interleave(&deq(&ta), &deq(&tb), k);
            for t in 1..=4 {
                let c = Case::new(t, (t == 4, false, t % 2 == 1, true));
                run(&ctx, GemvWeight::Q4(&w), &wf, c, None, 60 + t as u64, &format!("silu int4 gs={gs}"));
            }
        }
    }
}

/// Different act-order g_idx in the two halves cannot share a kernel's groups: an error, not a
/// wrong result. A sequential g_idx on one side and none on the other is the same mapping.
#[test]
fn interleave_needs_one_group_mapping() {
    let ctx = ctx();
    let mut rng = Rng::new(6);
    let (k, n, gs) = (64, 8, 16);
    let (ta, ga) = gptq(&mut rng, k, n, gs, true);
    let (tb, gb) = gptq(&mut rng, k, n, gs, true);
    let r = QWeight::upload_interleaved(&ctx, "gu", k, n, gs, parts(&ta, ga.as_deref()), parts(&tb, gb.as_deref()));
    assert!(matches!(r, Err(zhinao::Error::Unsupported(_))), "{r:?}");
    let r = QWeight::upload_interleaved(&ctx, "gu", k, n, gs, parts(&ta, ga.as_deref()), parts(&tb, None));
    assert!(matches!(r, Err(zhinao::Error::Unsupported(_))), "{r:?}");
    let seq = g_idx_bytes(&(0..k as u32).map(|i| i / gs as u32).collect::<Vec<_>>());
    let w = QWeight::upload_interleaved(&ctx, "gu", k, n, gs, parts(&ta, Some(&seq)), parts(&tb, None)).unwrap();
    assert_eq!((w.rows, w.cols), (2 * n, k));
    assert!(QWeight::upload_interleaved(&ctx, "gu", k, n, gs, parts(&ta, None), parts(&tb, Some(&seq[4..]))).is_err());
    let a = vec![0u8; 4 * 6 * 2];
    assert!(Weight::upload_interleaved(&ctx, "gu", DType::BF16, 4, 6, &a, &a[2..]).is_err());
}

/// Weights larger than one binding are split by rows (interleaved ones into whole pairs); force a
/// small binding limit.
#[test]
fn split_weights_across_bindings() {
    let ctx = Context::new(&GpuOptions { max_binding: Some(4096), ..Default::default() }).unwrap();
    let mut rng = Rng::new(8);
    let mut worst = 0f64;
    let (w, wf) = dense(&ctx, &mut rng, DType::BF16, 300, 64);
    assert_eq!(w.chunks.len(), 10, "300 rows of 128 B in 4 KiB bindings");
    for t in [1, 3] {
        for flags in [FLAGS[3], FLAGS[5]] {
            worst = worst.max(run(&ctx, GemvWeight::Dense(&w), &wf, Case::new(t, flags), None, 3, "split bf16"));
        }
    }
    // Rows of 2 KiB: one gate/up pair per 4 KiB chunk, never half of one.
    let (k, n) = (512, 15);
    let a = from_f32(DType::F32, &rng.normals(n * k, 0.5));
    let b = from_f32(DType::F32, &rng.normals(n * k, 0.5));
    let w = Weight::upload_interleaved(&ctx, "gu", DType::F32, n, k, &a, &b).unwrap();
    assert!(w.chunks.len() > 1 && w.chunks.iter().all(|c| c.rows % 2 == 0 && c.row0 % 2 == 0));
    let wf = interleave(&to_f32(DType::F32, &a), &to_f32(DType::F32, &b), k);
    worst = worst.max(run(&ctx, GemvWeight::Dense(&w), &wf, Case::new(2, FLAGS[6]), None, 4, "split silu f32"));
    for (k, n, gs, shuffled) in [(256, 136, 128, false), (192, 136, 64, true)] {
        let (w, wf) = q4(&ctx, &mut rng, k, n, gs, shuffled);
        assert!(w.chunks.len() > 1);
        for t in [1, 4] {
            worst = worst.max(run(&ctx, GemvWeight::Q4(&w), &wf, Case::new(t, FLAGS[t]), None, 5, "split int4"));
        }
    }
    let (k, n, gs) = (1024, 24, 128);
    let (ta, _) = gptq(&mut rng, k, n, gs, false);
    let (tb, _) = gptq(&mut rng, k, n, gs, false);
    let w = QWeight::upload_interleaved(&ctx, "gu", k, n, gs, parts(&ta, None), parts(&tb, None)).unwrap();
    assert!(w.chunks.len() > 1 && w.chunks.iter().all(|c| c.rows % 2 == 0 && c.row0 % 2 == 0));
    let deq = |t: &Gptq| dequantize(k, n, gs, &t.qweight, &t.qzeros, &t.scales, None);
    let wf = interleave(&deq(&ta), &deq(&tb), k);
    worst = worst.max(run(&ctx, GemvWeight::Q4(&w), &wf, Case::new(1, FLAGS[6]), None, 6, "split silu int4"));
    report("split", &ctx, worst);
}

/// Every workgroup shape `zhinao bench ops --sweep` times computes the same product.
#[test]
fn every_tune_is_correct() {
    for ctx in tiers() {
        let mut rng = Rng::new(9);
        let (wd, wdf) = dense(&ctx, &mut rng, DType::BF16, 22, 256);
        let (wq, wqf) = q4(&ctx, &mut rng, 256, 24, 64, false);
        for (i, tune) in Tune::sweep().into_iter().enumerate() {
            let t = 1 + i % 4;
            let flags = FLAGS[i % FLAGS.len()];
            run(&ctx, GemvWeight::Dense(&wd), &wdf, Case::new(t, flags), Some(tune), i as u64, "tune bf16");
            run(&ctx, GemvWeight::Q4(&wq), &wqf, Case::new(t, flags), Some(tune), i as u64, "tune int4");
        }
    }
}

/// The engine's matmul entry points take the GEMV for T ≤ 4, including a row offset into x.
#[test]
fn matmul_routes_small_t_here() {
    let ctx = ctx();
    let mut rng = Rng::new(10);
    let (k, n) = (64, 40);
    let (w, wf) = dense(&ctx, &mut rng, DType::BF16, n, k);
    let x = rng.normals(5 * k, 1.0);
    let gx = ctx.upload_f32("x", &x).unwrap();
    let gy = poisoned(&ctx, 2 * n);
    let ds = zhinao::ops::matmul::matmul_rows(&ctx, &gx, 3, 2, &w, None, &gy, false).unwrap();
    ctx.run(&ds.iter().collect::<Vec<_>>()).unwrap();
    let want = zhinao::cpu::matmul::matmul(&x[3 * k..], 2, k, &wf, n, None);
    check("matmul_rows x_row0=3 T=2", &ctx.read_f32(&gy, 0, 2 * n).unwrap(), &want, BOUND);
    let (wq, wqf) = q4(&ctx, &mut rng, k, n, 32, false);
    let gy = poisoned(&ctx, 4 * n);
    let ds = zhinao::ops::matmul_q4::matmul_q4(&ctx, &gx, 4, &wq, None, &gy, false).unwrap();
    ctx.run(&ds.iter().collect::<Vec<_>>()).unwrap();
    let want = zhinao::cpu::matmul::matmul(&x, 4, k, &wqf, n, None);
    check("matmul_q4 T=4", &ctx.read_f32(&gy, 0, 4 * n).unwrap(), &want, BOUND);
}

#[test]
fn shape_errors_are_errors() {
    let ctx = ctx();
    let mut rng = Rng::new(11);
    let (w, _) = dense(&ctx, &mut rng, DType::BF16, 7, 16);
    let x = ctx.upload_f32("x", &[1.0; 5 * 16]).unwrap();
    let y = ctx.buffer("y", 4 * 7 * 5).unwrap();
    let dw = GemvWeight::Dense(&w);
    let plain = GemvOpts::default();
    assert!(gemv(&ctx, &x, 1, dw, &plain, &y).is_ok());
    assert!(gemv(&ctx, &x, 0, dw, &plain, &y).is_err(), "T = 0");
    assert!(gemv(&ctx, &x, 5, dw, &plain, &y).is_err(), "T = 5 is a GEMM");
    assert!(gemv(&ctx, &x, 1, dw, &GemvOpts { silu: true, ..plain }, &y).is_err(), "odd N with SILU");
    assert!(gemv(&ctx, &x, 2, dw, &GemvOpts { x_row0: 4, ..plain }, &y).is_err(), "x too short");
    let small = ctx.buffer("b", 8).unwrap();
    assert!(gemv(&ctx, &x, 1, dw, &GemvOpts { bias: Some(&small), ..plain }, &y).is_err(), "bias [N]");
    assert!(gemv(&ctx, &x, 1, dw, &GemvOpts { norm: Some((&small, 1e-6)), ..plain }, &y).is_err(), "g [K]");
    let g = ctx.upload_f32("g", &[1.0; 16]).unwrap();
    assert!(gemv(&ctx, &x, 1, dw, &GemvOpts { norm: Some((&g, f32::NAN)), ..plain }, &y).is_err(), "eps");
    let bad = Tune { wg: 96, rows: 4, vec: 4 };
    assert!(gemv_tuned(&ctx, &x, 1, dw, &plain, &y, bad).is_err(), "wg 96");
    // A stacked (not interleaved) weight whose chunk splits a pair is refused under SILU.
    let c2 = Context::new(&GpuOptions { max_binding: Some(256), ..Default::default() }).unwrap();
    let w = Weight::upload(&c2, "w", DType::F32, 8, 64, &vec![0u8; 8 * 64 * 4]).unwrap();
    assert_eq!(w.chunks.len(), 8);
    let x = c2.upload_f32("x", &[1.0; 64]).unwrap();
    let y = c2.buffer("y", 4 * 4).unwrap();
    let r = gemv(&c2, &x, 1, GemvWeight::Dense(&w), &GemvOpts { silu: true, ..plain }, &y);
    assert!(r.is_err(), "a chunk of one row splits a gate/up pair");
}

#[test]
fn variants_cover_every_path() {
    let v = zhinao::ops::gemv::variants();
    let has = |f: &str| v.iter().any(|k| k.defines.iter().any(|(d, _)| d == f));
    for f in ["W_F32", "W_F16", "W_BF16", "Q4", "GIDX", "XS", "VEC2", "VEC4", "TOK4", "R8", "NORM", "SILU", "SG_TREE"] {
        assert!(has(f), "no variant defines {f}");
    }
    assert!(v.len() > 150, "{} variants", v.len());
}
