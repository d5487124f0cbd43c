//! The paged, quantized KV cache (`ops::kv`, `ops::attention_paged`) against its CPU twin
//! (`cpu::kv`): the append kernel against the CPU packer, and prefill / decode attention over many
//! arenas in every format (f16, q8, q4 with rotated keys; the quantized ones with and without an
//! f16 sink of the first positions) against f64 attention on the same dequantized cache, up to
//! 131K positions in arenas of a forced 1 MiB binding. Cache rows the kernels must not read are
//! f16 NaN (values and scales); outputs are poisoned first.

mod common;
use common::*;
use zhinao::cpu::kv::{attention, pack_arena, unpack_arena, unrotate_keys, NAN_WORD};
use zhinao::gpu::{Context, GpuBuffer};
use zhinao::ops::attention_paged::{decode, decode_scratch_len, prefill, prefill_state_len};
use zhinao::ops::kv::{append, KvFormat, KvLayout, KvSource};

/// f32 accumulation and f32 exp against an f64 reference on exactly the values the kernels read.
const BOUND: f64 = 1e-8;

/// Upload every arena of `vals [positions, Hkv, D]` (positions >= `valid` poisoned).
fn upload_arenas(ctx: &Context, layout: &KvLayout, n: usize, keys: bool, vals: &[f32], valid: usize) -> Vec<GpuBuffer> {
    layout
        .spans(n)
        .iter()
        .enumerate()
        .map(|(a, s)| {
            let row = layout.hkv * layout.d;
            let end = ((s.row0 + s.rows) * row).min(vals.len());
            let part = if s.row0 * row < end { &vals[s.row0 * row..end] } else { &[][..] };
            ctx.upload("arena", bytemuck::cast_slice(&pack_arena(layout, a, keys, part, valid))).unwrap()
        })
        .collect()
}

/// The dequantized cache the kernels see: arenas concatenated, [positions, Hkv, D], as stored
/// (rotated keys rotated) or in the model's basis.
fn dequantized(layout: &KvLayout, n: usize, keys: bool, vals: &[f32], valid: usize, model_basis: bool) -> Vec<f32> {
    let row = layout.hkv * layout.d;
    let mut out = Vec::new();
    for (a, s) in layout.spans(n).iter().enumerate() {
        let end = ((s.row0 + s.rows) * row).min(vals.len());
        let part = if s.row0 * row < end { &vals[s.row0 * row..end] } else { &[][..] };
        let mut x = unpack_arena(layout, a, &pack_arena(layout, a, keys, part, valid));
        if keys && model_basis {
            unrotate_keys(layout, a, &mut x);
        }
        out.extend(x);
    }
    out
}

#[derive(Clone, Copy)]
struct Case {
    fmt: KvFormat,
    t: usize,
    h: usize,
    hkv: usize,
    d: usize,
    pos0: usize,
    first: usize,
    max: usize,
    fused: bool,
    /// f16 positions at the start (quantized formats).
    sink: usize,
}

/// Prefill (T > 0 queries at pos0) or decode (T = 1 through the decode kernels).
fn run_case(ctx: &Context, c: &Case, decode_path: bool, seed: u64) -> f64 {
    let layout = KvLayout::with_rows(c.fmt, c.hkv, c.d, c.first, c.max).unwrap().with_sink(c.sink).unwrap();
    run_layout(ctx, &layout, c, decode_path, seed)
}

fn run_layout(ctx: &Context, layout: &KvLayout, c: &Case, decode_path: bool, seed: u64) -> f64 {
    let mut rng = Rng::new(seed);
    let valid = c.pos0 + c.t;
    let n = layout.arenas_for(valid);
    let row = c.hkv * c.d;
    let k = rng.normals(valid * row, 1.0);
    let v = rng.normals(valid * row, 1.0);
    let q = rng.normals(c.t * c.h * c.d, 1.0);
    let kd = dequantized(layout, n, true, &k, valid, true);
    let vd = dequantized(layout, n, false, &v, valid, true);
    let want = attention(&q, c.t, c.h, c.hkv, c.d, &kd, &vd, c.pos0);

    let (kc, vc) = (upload_arenas(ctx, layout, n, true, &k, valid), upload_arenas(ctx, layout, n, false, &v, valid));
    let q_stride = if c.fused { (c.h + 2 * c.hkv) * c.d } else { c.h * c.d };
    let mut rows = vec![f32::NAN; c.t * q_stride];
    for (t, qr) in q.chunks_exact(c.h * c.d).enumerate() {
        rows[t * q_stride..][..c.h * c.d].copy_from_slice(qr);
    }
    let gq = ctx.upload_f32("q", &rows).unwrap();
    let out = poisoned(ctx, want.len());
    let ds = if decode_path {
        assert_eq!(c.t, 1);
        let scratch = poisoned(ctx, decode_scratch_len(c.h, layout, n));
        decode(ctx, &gq, c.h, layout, &kc, &vc, &pos_buffer(ctx, c.pos0), &scratch, &out).unwrap()
    } else {
        let ml = poisoned(ctx, prefill_state_len(c.t, c.h));
        prefill(ctx, &gq, q_stride, c.t, c.h, layout, &kc, &vc, &pos_buffer(ctx, c.pos0), &out, &ml).unwrap()
    };
    ctx.run(&ds.iter().collect::<Vec<_>>()).unwrap();
    let got = ctx.read_f32(&out, 0, want.len()).unwrap();
    let name = format!(
        "{} {} sink={} T={} H={} Hkv={} D={} pos0={} arenas={} ({}..{} rows) fused={} [{}]",
        if decode_path { "decode" } else { "prefill" },
        c.fmt,
        layout.sink,
        c.t,
        c.h,
        c.hkv,
        c.d,
        c.pos0,
        n,
        layout.first_rows,
        layout.max_rows,
        c.fused,
        tier_name(ctx)
    );
    check(&name, &got, &want, BOUND);
    nmse(&got, &want)
}

#[allow(clippy::too_many_arguments)]
fn case(fmt: KvFormat, t: usize, h: usize, hkv: usize, d: usize, pos0: usize, first: usize, max: usize) -> Case {
    Case { fmt, t, h, hkv, d, pos0, first, max, fused: false, sink: 0 }
}

/// The quantized formats' cases again with f16 sinks of awkward sizes: queries before, across and
/// after the sink's end.
fn with_sinks(fmt: KvFormat, cases: &[Case]) -> Vec<Case> {
    if !fmt.quantized() {
        return Vec::new();
    }
    cases.iter().zip([1, 4, 16, 5, 3, 9, 16]).map(|(c, sink)| Case { sink, ..*c }).collect()
}

#[test]
fn paged_prefill_matches_cpu_in_every_format() {
    for ctx in tiers() {
        for fmt in KvFormat::ALL {
            let mut worst = 0f64;
            let cases = [
                case(fmt, 1, 2, 2, 64, 0, 16, 64),
                case(fmt, 7, 4, 2, 64, 0, 3, 5),        // many arenas of odd sizes
                case(fmt, 37, 2, 1, 128, 11, 13, 40),   // chunk crossing arena boundaries
                case(fmt, 19, 4, 1, 64, 300, 100, 100), // fixed-size arenas, GQA
                case(fmt, 10, 2, 2, 256, 5, 8, 64),
                Case { fused: true, ..case(fmt, 9, 2, 1, 64, 40, 32, 128) },
                case(fmt, 33, 2, 2, 64, 0, 4096, 4096), // one arena (f16: the ops::attention kernels)
            ];
            for (i, c) in cases.iter().chain(&with_sinks(fmt, &cases)).enumerate() {
                worst = worst.max(run_case(&ctx, c, false, 100 + i as u64));
            }
            println!("paged prefill {fmt} [{}]: worst nmse {worst:.2e}", tier_name(&ctx));
        }
    }
}

#[test]
fn paged_decode_matches_cpu_in_every_format() {
    for ctx in tiers() {
        for fmt in KvFormat::ALL {
            let mut worst = 0f64;
            let cases = [
                case(fmt, 1, 2, 2, 64, 0, 16, 64),
                case(fmt, 1, 4, 2, 64, 16, 3, 5),
                case(fmt, 1, 8, 1, 64, 1000, 37, 300),
                case(fmt, 1, 2, 2, 128, 777, 64, 64),
                case(fmt, 1, 4, 4, 256, 90, 32, 64),
                Case { fused: true, ..case(fmt, 1, 2, 1, 64, 63, 64, 64) }, // exactly one full arena
                case(fmt, 1, 2, 2, 64, 4000, 4096, 4096),
            ];
            for (i, c) in cases.iter().chain(&with_sinks(fmt, &cases)).enumerate() {
                worst = worst.max(run_case(&ctx, c, true, 200 + i as u64));
            }
            println!("paged decode {fmt} [{}]: worst nmse {worst:.2e}", tier_name(&ctx));
        }
    }
}

/// At 131_089 positions, with the arenas a 1 MiB binding allows (many of them), for every format:
/// decode of the last token, and a prefill chunk of 5 queries at the end.
#[test]
fn long_context_over_many_arenas_of_a_small_binding() {
    let ctx = ctx();
    let (h, hkv, d) = (2, 1, 64);
    for fmt in KvFormat::ALL {
        let layout = KvLayout::for_binding(fmt, hkv, d, None, 1 << 20).unwrap();
        let kv_len = 131_072 + 17;
        let n = layout.arenas_for(kv_len);
        assert!(n >= 6, "{fmt}: only {n} arenas");
        let dec = Case { fmt, t: 1, h, hkv, d, pos0: kv_len - 1, first: 0, max: 0, fused: false, sink: layout.sink };
        let e1 = run_layout(&ctx, &layout, &dec, true, 300);
        let pre = Case { t: 5, pos0: kv_len - 5, ..dec };
        let e2 = run_layout(&ctx, &layout, &pre, false, 301);
        println!(
            "{fmt} (sink {}) at {kv_len} positions, {n} arenas of <= {} rows: decode nmse {e1:.2e}, prefill {e2:.2e}",
            layout.sink, layout.max_rows
        );
    }
}

/// kv_append writes rows pos0 .. pos0 + T across arena boundaries exactly as the CPU packer does
/// (f16: bit for bit up to pack2x16float's rounding; q8/q4: codes may differ by one where the
/// GPU's f32 division lands on the other side of a rounding tie), and leaves other rows alone.
#[test]
fn append_matches_the_cpu_packer() {
    let ctx = ctx();
    for fmt in KvFormat::ALL {
        let cases = [(1, 0, false), (13, 5, true), (1, 20, false), (40, 2, false), (2, 2, false)];
        for ((t, pos0, fused), sink) in cases.into_iter().flat_map(|c| [(c, 0), (c, 3)]) {
            let (h, hkv, d) = (2, 2, 64);
            let layout = KvLayout::with_rows(fmt, hkv, d, 4, 16).unwrap().with_sink(sink).unwrap();
            let n = layout.arenas_for(pos0 + t);
            let mut rng = Rng::new(7 + t as u64);
            let row = hkv * d;
            let (k, v) = (rng.normals(t * row, 1.5), rng.normals(t * row, 0.5));
            // Source rows: separate [T, Hkv·D] or fused qkv rows [T, (H + 2Hkv)·D].
            let (src, kb, vb) = if fused {
                let stride = (h + 2 * hkv) * d;
                let mut rows = vec![f32::NAN; t * stride];
                for i in 0..t {
                    rows[i * stride + h * d..][..row].copy_from_slice(&k[i * row..][..row]);
                    rows[i * stride + (h + hkv) * d..][..row].copy_from_slice(&v[i * row..][..row]);
                }
                let b = ctx.upload_f32("qkv", &rows).unwrap();
                (KvSource { k_off: h * d, k_stride: stride, v_off: (h + hkv) * d, v_stride: stride }, b.clone(), b)
            } else {
                (KvSource::separate(hkv, d), ctx.upload_f32("k", &k).unwrap(), ctx.upload_f32("v", &v).unwrap())
            };
            let arenas = |_: bool| -> Vec<GpuBuffer> {
                (0..n)
                    .map(|a| {
                        let b = ctx.buffer("arena", layout.arena_bytes(a)).unwrap();
                        ctx.fill_u32(&b, NAN_WORD);
                        b
                    })
                    .collect()
            };
            let (kc, vc) = (arenas(true), arenas(false));
            let ds = append(&ctx, &kb, &vb, &src, t, &layout, &pos_buffer(&ctx, pos0), &kc, &vc).unwrap();
            ctx.run(&ds.iter().collect::<Vec<_>>()).unwrap();
            for (keys, bufs, vals) in [(true, &kc, &k), (false, &vc, &v)] {
                let mut full = vec![0f32; pos0 * row];
                full.extend_from_slice(vals);
                let want = dequantized(&layout, n, keys, &full, pos0 + t, false);
                let mut got = Vec::new();
                for (a, b) in bufs.iter().enumerate() {
                    let words = ctx.read_u32(b, 0, (layout.arena_bytes(a) / 4) as usize).unwrap();
                    got.extend(unpack_arena(&layout, a, &words));
                }
                let (mut off, mut total) = (0usize, 0usize);
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    let p = i / row;
                    if p < pos0 || p >= pos0 + t {
                        assert!(g.is_nan(), "{fmt} sink {sink} T={t} pos0={pos0}: position {p} written");
                        continue;
                    }
                    total += 1;
                    let grp = &want[i / 32 * 32..][..32];
                    let range =
                        grp.iter().cloned().fold(f32::MIN, f32::max) - grp.iter().cloned().fold(f32::MAX, f32::min);
                    let step = if fmt.quantized() { range / fmt.qmax() as f32 } else { 0.0 };
                    let tol = 1.01 * step + 1e-3 * w.abs().max(1e-3);
                    assert!(
                        (g - w).abs() <= tol,
                        "{fmt} sink {sink} keys={keys} T={t} pos0={pos0} elem {i}: {g} vs {w}"
                    );
                    off += usize::from(g != w);
                }
                assert!(off * 100 <= total, "{fmt} keys={keys}: {off} of {total} values differ from the CPU packer");
            }
        }
    }
}

#[test]
fn shape_errors_are_errors() {
    let ctx = ctx();
    let b = ctx.buffer("b", 1 << 16).unwrap();
    let layout = KvLayout::with_rows(KvFormat::Q4, 2, 64, 8, 8).unwrap();
    let arena = vec![ctx.buffer("a", layout.arena_bytes(0)).unwrap()];
    let small = vec![ctx.buffer("s", 16).unwrap()];
    // Head dims: quantized formats need a multiple of 32.
    assert!(KvLayout::with_rows(KvFormat::Q8, 2, 48, 8, 8).is_err());
    assert!(KvLayout::with_rows(KvFormat::F16, 2, 48, 8, 8).is_ok());
    assert!(KvLayout::for_binding(KvFormat::F16, 32, 128, None, 1024).is_err(), "binding below one page");
    // Sinks: the quantized formats' default; f16 has none; one past a binding or 4 GiB is refused.
    let for_binding = |fmt, sink| KvLayout::for_binding(fmt, 2, 64, sink, 1 << 20);
    assert_eq!(for_binding(KvFormat::Q4, None).unwrap().sink, zhinao::ops::kv::SINK);
    assert_eq!(for_binding(KvFormat::Q8, Some(0)).unwrap().sink, 0);
    assert_eq!(for_binding(KvFormat::F16, Some(4)).unwrap().sink, 0);
    assert_eq!(for_binding(KvFormat::Q4, Some(4096)).unwrap().sink, 4096, "1 MiB of f16 rows fits");
    assert!(for_binding(KvFormat::Q4, Some(4097)).is_err());
    assert!(layout.with_sink(usize::MAX / 2).is_err());
    // H not a multiple of Hkv; arena too small; K/V arena counts differ; T = 0.
    assert!(decode(&ctx, &b, 3, &layout, &arena, &arena, &b, &b, &b).is_err());
    assert!(decode(&ctx, &b, 2, &layout, &small, &small, &b, &b, &b).is_err());
    assert!(prefill(&ctx, &b, 128, 1, 2, &layout, &arena, &[], &b, &b, &b).is_err());
    assert!(prefill(&ctx, &b, 128, 0, 2, &layout, &arena, &arena, &b, &b, &b).is_err());
    assert!(prefill(&ctx, &b, 128, 1, 2, &layout, &arena, &arena, &b, &b, &b).is_ok());
    let src = KvSource::separate(2, 64);
    assert!(append(&ctx, &b, &b, &src, 1, &layout, &b, &small, &small).is_err());
    assert!(append(&ctx, &b, &b, &src, 1, &layout, &b, &arena, &arena).is_ok());
    assert!(KvFormat::parse("q3").is_err());
}
