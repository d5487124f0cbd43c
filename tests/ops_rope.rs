//! NeoX RoPE in place on fused QKV rows against `cpu::rope`, including large positions, and the fused
//! RoPE + KV-cache write (`rope_kv_write`) against its CPU twin.

mod common;
use common::*;
use zhinao::gpu::Context;
use zhinao::ops::rope::{inv_freq, rope_kv_write, rope_qkv};

/// The shader's own sin/cos (range reduction + minimax) are within ≈1.1e-7 absolute of f64 for
/// every angle below 411774; rotating f32 values adds f32 rounding. Measured ≤ 2.2e-15 (max abs
/// error 4.8e-7) for positions up to 360000 with theta 5e7 and 1e4; bound with margin.
const BOUND: f64 = 1e-12;

#[allow(clippy::too_many_arguments)]
fn case(ctx: &Context, t: usize, h: usize, hkv: usize, d: usize, pos0: usize, theta: f32, seed: u64) {
    let mut rng = Rng::new(seed);
    let stride = (h + 2 * hkv) * d;
    let x = rng.normals(t * stride, 1.0);
    let freq = inv_freq(theta, d);
    let gx = ctx.upload_f32("qkv", &x).unwrap();
    let gf = ctx.upload_f32("inv_freq", &freq).unwrap();
    let disp = rope_qkv(ctx, &gx, t, h, hkv, d, pos0, &gf).unwrap();
    ctx.run(&[&disp]).unwrap();
    let mut want = x.clone();
    zhinao::cpu::rope::rope_qkv(&mut want, t, h, hkv, d, pos0, &freq);
    let got = ctx.read_f32(&gx, 0, t * stride).unwrap();
    let name = format!("T={t} H={h} Hkv={hkv} D={d} pos0={pos0} theta={theta} [{}]", tier_name(ctx));
    if std::env::var("ZHINAO_PRINT_NMSE").is_ok() {
        eprintln!("{name}: nmse {:.2e} max abs {:.2e}", nmse(&got, &want), max_abs(&got, &want));
    }
    check(&name, &got, &want, BOUND);
    // V is untouched, bit for bit.
    for ti in 0..t {
        let v = ti * stride + (h + hkv) * d..(ti + 1) * stride;
        assert_eq!(got[v.clone()], x[v], "{name}: V changed");
    }
}

#[test]
fn rope_small_positions_all_tiers() {
    for ctx in tiers() {
        case(&ctx, 1, 1, 1, 2, 0, 1e4, 1);
        case(&ctx, 7, 4, 2, 16, 3, 1e4, 2);
        case(&ctx, 5, 3, 3, 128, 0, 1e4, 3);
        case(&ctx, 2, 2, 1, 6, 11, 5e7, 4);
    }
}

#[test]
fn rope_large_positions() {
    let ctx = ctx();
    for theta in [5e7, 1e4] {
        case(&ctx, 4, 2, 2, 128, 100_000 - 4, theta, 5);
        case(&ctx, 3, 1, 1, 128, 359_997, theta, 6);
        case(&ctx, 64, 1, 1, 128, 65_500, theta, 7);
    }
}

#[test]
fn rope_many_pairs_fold_the_grid() {
    // 131072 tokens × 128 heads × 1 pair = 2^24 threads = 65536 workgroups (> 65535: folded);
    // the buffer is exactly 128 MiB, the binding limit. Hkv = 0: no K or V heads.
    let ctx = ctx();
    case(&ctx, 131072, 128, 0, 2, 7, 5e7, 8);
    case(&ctx, 1100, 32, 32, 128, 7, 5e7, 9);
}

#[test]
fn shape_errors_are_errors() {
    let ctx = ctx();
    let x = ctx.upload_f32("x", &[1.0; 48]).unwrap();
    let f = ctx.upload_f32("f", &[1.0; 4]).unwrap();
    assert!(rope_qkv(&ctx, &x, 1, 2, 1, 7, 0, &f).is_err()); // odd D
    assert!(rope_qkv(&ctx, &x, 2, 2, 2, 8, 0, &f).is_err()); // qkv too small
    assert!(rope_qkv(&ctx, &x, 1, 2, 1, 8, 500_000, &f).is_err()); // position out of range
}

/// Sentinel in cache words a `rope_kv_write` must not touch.
const UNTOUCHED: u32 = 0xdead_beef;

/// Run `rope_kv_write` over T fused rows at pos0 (or a batch of sequences of `seq` rows, pos0 = 0)
/// and check against the CPU twin:
/// - Q (rotated in place): NMSE <= BOUND (1e-12, as `rope_qkv`);
/// - K and V in `qkv`: unchanged, bit for bit;
/// - cache rows pos0 .. pos0 + T: every f16 word within one ulp of the CPU's round-to-nearest-even
///   of its f64-rotated value (the GPU rounds its f32 rotation, ≈1e-7 away), and the decoded K within
///   NMSE 1e-6 of the unrounded CPU rotation (f16 rounding is ≤ 2^-11 relative: NMSE ≲ 1e-7);
/// - every other cache word unchanged (rows past ctx_len are skipped).
#[allow(clippy::too_many_arguments)]
fn kv_case(
    ctx: &Context,
    t: usize,
    h: usize,
    hkv: usize,
    d: usize,
    pos0: usize,
    seq: usize,
    ctx_len: usize,
    seed: u64,
) {
    let mut rng = Rng::new(seed);
    let stride = (h + 2 * hkv) * d;
    let x = rng.normals(t * stride, 1.0);
    let freq = inv_freq(5e7, d);
    let gx = ctx.upload_f32("qkv", &x).unwrap();
    let gf = ctx.upload_f32("inv_freq", &freq).unwrap();
    let gp = ctx.upload_u32("pos", &[pos0 as u32]).unwrap();
    let words = ctx_len * hkv * d / 2;
    let ck = ctx.buffer("ck", (words * 4) as u64).unwrap();
    let cv = ctx.buffer("cv", (words * 4) as u64).unwrap();
    ctx.fill_u32(&ck, UNTOUCHED);
    ctx.fill_u32(&cv, UNTOUCHED);
    let disp = rope_kv_write(ctx, &gx, t, h, hkv, d, seq, &gf, &gp, &ck, &cv, ctx_len).unwrap();
    ctx.run(&[&disp]).unwrap();
    let name =
        format!("rope_kv_write T={t} H={h} Hkv={hkv} D={d} pos0={pos0} seq={seq} ctx={ctx_len} [{}]", tier_name(ctx));

    // CPU twin, per sequence when batched (positions restart, rows continue).
    let sentinel = [0xbeefu16, 0xdead];
    let mut want_q = x.clone();
    let mut want_k: Vec<u16> = (0..2 * words).map(|i| sentinel[i % 2]).collect();
    let mut want_v = want_k.clone();
    let mut rot = x.clone(); // every head rotated, for the unrounded K
    let seqs: Vec<(usize, usize, usize)> =
        if seq > 0 { (0..t).step_by(seq).map(|r0| (r0, seq, 0)).collect() } else { vec![(0, t, pos0)] };
    let row = hkv * d;
    for &(r0, n, p) in &seqs {
        // The twin writes rows p .. p + n of its own cache; they go to rows row0 + i of this one.
        let mut big_k = vec![0u16; (p + n) * row];
        let mut big_v = big_k.clone();
        let qkv_rows = &mut want_q[r0 * stride..(r0 + n) * stride];
        zhinao::cpu::rope::rope_kv_write(qkv_rows, n, h, hkv, d, p, &freq, &mut big_k, &mut big_v);
        zhinao::cpu::rope::rope_qkv(&mut rot[r0 * stride..(r0 + n) * stride], n, h, hkv, d, p, &freq);
        let row0 = if seq > 0 { r0 } else { pos0 };
        for i in (0..n).filter(|i| row0 + i < ctx_len) {
            let (dst, src) = ((row0 + i) * row, (p + i) * row);
            want_k[dst..dst + row].copy_from_slice(&big_k[src..src + row]);
            want_v[dst..dst + row].copy_from_slice(&big_v[src..src + row]);
        }
    }
    let got = ctx.read_f32(&gx, 0, t * stride).unwrap();
    let (mut gq, mut wq) = (Vec::new(), Vec::new());
    for ti in 0..t {
        let r = ti * stride;
        gq.extend_from_slice(&got[r..r + h * d]);
        wq.extend_from_slice(&want_q[r..r + h * d]);
        assert_eq!(got[r + h * d..r + stride], x[r + h * d..r + stride], "{name}: K or V in qkv changed");
    }
    check(&format!("{name} Q"), &gq, &wq, BOUND);
    let mut diffs = 0;
    let (mut gk_f, mut wk_f) = (Vec::new(), Vec::new());
    for (what, buf, want) in [("K", &ck, &want_k), ("V", &cv, &want_v)] {
        let halves: Vec<u16> = bytemuck::cast_slice(&ctx.read_u32(buf, 0, words).unwrap()).to_vec();
        for (i, (g, w)) in halves.iter().zip(want.iter()).enumerate() {
            let r = i / row;
            let written = if seq > 0 { r < t } else { (pos0..pos0 + t).contains(&r) } && r < ctx_len;
            if written {
                assert!(
                    (*g as i32 - *w as i32).abs() <= 1,
                    "{name}: {what} row {r} elem {}: {g:#06x} vs {w:#06x}",
                    i % row
                );
                diffs += (g != w) as usize;
                if what == "K" {
                    gk_f.push(half::f16::from_bits(*g).to_f32());
                    let ti = if seq > 0 { r } else { r - pos0 };
                    wk_f.push(rot[ti * stride + h * d + i % row]);
                }
            } else {
                assert_eq!(g, w, "{name}: {what} row {r} elem {} was written", i % row);
            }
        }
    }
    check(&format!("{name} K cache vs unrounded rotation"), &gk_f, &wk_f, 1e-6);
    if std::env::var("ZHINAO_PRINT_NMSE").is_ok() {
        eprintln!("{name}: {diffs} cache words one ulp from the CPU's rounding");
    }
}

#[test]
fn rope_kv_write_matches_cpu() {
    for ctx in tiers() {
        kv_case(&ctx, 1, 4, 1, 128, 0, 0, 8, 20);
        kv_case(&ctx, 7, 4, 2, 64, 3, 0, 16, 21);
        kv_case(&ctx, 3, 2, 2, 6, 5, 0, 9, 22); // D/2 odd: a cache word straddles the two halves
        kv_case(&ctx, 2, 1, 1, 2, 0, 0, 2, 23);
        // Large positions (cache rows up to 400K: one kv head keeps them within 128 MiB).
        kv_case(&ctx, 1, 4, 1, 128, 300_000, 0, 300_001, 24);
        kv_case(&ctx, 5, 4, 1, 128, 359_990, 0, 360_000, 25);
        kv_case(&ctx, 4, 4, 1, 128, 400_000, 0, 400_010, 26);
    }
}

#[test]
fn rope_kv_write_batch_and_cache_end() {
    for ctx in tiers() {
        // A right-padded batch of 3 sequences of 5 rows: positions restart, rows continue.
        kv_case(&ctx, 15, 4, 2, 64, 0, 5, 15, 30);
        // pos0 + T past the cache: rows >= ctx_len are skipped, not written out of bounds.
        kv_case(&ctx, 4, 2, 1, 64, 10, 0, 12, 31);
    }
}

/// One recorded dispatch, replayed at a new position after writing pos[0] only.
#[test]
fn rope_kv_write_replays_with_new_pos() {
    let ctx = ctx();
    let (h, hkv, d, ctx_len) = (2, 1, 64, 16);
    let stride = (h + 2 * hkv) * d;
    let freq = inv_freq(1e4, d);
    let gf = ctx.upload_f32("inv_freq", &freq).unwrap();
    let qkv = ctx.buffer("qkv", (stride * 4) as u64).unwrap();
    let pos = ctx.upload_u32("pos", &[0]).unwrap();
    let (ck, cv) = (
        ctx.buffer("ck", (ctx_len * hkv * d * 2) as u64).unwrap(),
        ctx.buffer("cv", (ctx_len * hkv * d * 2) as u64).unwrap(),
    );
    let disp = rope_kv_write(&ctx, &qkv, 1, h, hkv, d, 0, &gf, &pos, &ck, &cv, ctx_len).unwrap();
    let mut cpu_k = vec![0u16; ctx_len * hkv * d];
    let mut cpu_v = cpu_k.clone();
    let mut rng = Rng::new(40);
    for p in [0usize, 9, 15, 3] {
        let x = rng.normals(stride, 1.0);
        ctx.write(&qkv, 0, bytemuck::cast_slice(&x));
        ctx.write(&pos, 0, &(p as u32).to_le_bytes());
        ctx.run(&[&disp]).unwrap();
        let mut want = x.clone();
        zhinao::cpu::rope::rope_kv_write(&mut want, 1, h, hkv, d, p, &freq, &mut cpu_k, &mut cpu_v);
        let got = ctx.read_f32(&qkv, 0, h * d).unwrap();
        check(&format!("replay at {p}: Q"), &got, &want[..h * d], BOUND);
    }
    for (g, w) in [(&ck, &cpu_k), (&cv, &cpu_v)] {
        let halves: Vec<u16> = bytemuck::cast_slice(&ctx.read_u32(g, 0, ctx_len * hkv * d / 2).unwrap()).to_vec();
        for (i, (a, b)) in halves.iter().zip(w.iter()).enumerate() {
            assert!((*a as i32 - *b as i32).abs() <= 1, "replayed cache element {i}: {a:#06x} vs {b:#06x}");
        }
    }
}

#[test]
fn rope_kv_write_shape_errors_are_errors() {
    let ctx = ctx();
    let b = ctx.buffer("b", 1 << 16).unwrap();
    let small = ctx.buffer("small", 64).unwrap();
    assert!(rope_kv_write(&ctx, &b, 1, 2, 1, 7, 0, &b, &b, &b, &b, 8).is_err(), "odd D");
    assert!(rope_kv_write(&ctx, &b, 1, 3, 2, 8, 0, &b, &b, &b, &b, 8).is_err(), "H not a multiple of Hkv");
    assert!(rope_kv_write(&ctx, &b, 6, 2, 1, 8, 4, &b, &b, &b, &b, 8).is_err(), "T not whole sequences");
    assert!(rope_kv_write(&ctx, &b, 9, 2, 1, 8, 0, &b, &b, &b, &b, 8).is_err(), "T > ctx");
    assert!(rope_kv_write(&ctx, &small, 2, 2, 1, 8, 0, &b, &b, &b, &b, 8).is_err(), "qkv too small");
    assert!(rope_kv_write(&ctx, &b, 1, 2, 1, 64, 0, &b, &b, &small, &b, 8).is_err(), "cache too small");
    assert!(rope_kv_write(&ctx, &b, 1, 2, 1, 64, 0, &b, &b, &b, &b, 8).is_ok());
}
