//! silu_mul, exact-erf GELU, add and the row gather against `cpu::elementwise`, up to 2^25 elements (folded grid).

mod common;
use common::*;
use zhinao::cpu::elementwise as cpu;
use zhinao::gpu::Context;
use zhinao::ops::elementwise::{add, gather_rows, gelu, silu_mul, silu_mul_interleaved};

/// silu: f32 exp vs f64. Measured ≤ 3.8e-15 on lavapipe.
const BOUND: f64 = 1e-12;
/// GELU: the shader's erf (|error| ≤ 8e-8 measured) vs f64; 0.5·x·(1 + erf) cancels for x ≪ 0,
/// so a single negative element has a larger relative error. Measured ≤ 1.8e-15 on large
/// arrays, 3.4e-13 for n = 1.
const BOUND_GELU: f64 = 1e-11;

fn report(name: &str, got: &[f32], want: &[f32], bound: f64) {
    if std::env::var("ZHINAO_PRINT_NMSE").is_ok() {
        eprintln!("{name}: nmse {:.2e} max abs {:.2e}", nmse(got, want), max_abs(got, want));
    }
    check(name, got, want, bound);
}

fn silu_case(ctx: &Context, t: usize, i: usize, seed: u64) {
    let gu = Rng::new(seed).normals(t * 2 * i, 3.0);
    let g = ctx.upload_f32("gu", &gu).unwrap();
    let out = poisoned(ctx, t * i);
    ctx.run(&[&silu_mul(ctx, &g, t, i, &out).unwrap()]).unwrap();
    report(
        &format!("silu_mul T={t} I={i} [{}]", tier_name(ctx)),
        &ctx.read_f32(&out, 0, t * i).unwrap(),
        &cpu::silu_mul(&gu, t, i),
        BOUND,
    );
    let out = poisoned(ctx, t * i);
    ctx.run(&[&silu_mul_interleaved(ctx, &g, t, i, &out).unwrap()]).unwrap();
    report(
        &format!("silu_mul interleaved T={t} I={i} [{}]", tier_name(ctx)),
        &ctx.read_f32(&out, 0, t * i).unwrap(),
        &cpu::silu_mul_interleaved(&gu, t, i),
        BOUND,
    );
}

fn gelu_case(ctx: &Context, n: usize, seed: u64) {
    let x = Rng::new(seed).normals(n, 3.0);
    let g = ctx.upload_f32("x", &x).unwrap();
    ctx.run(&[&gelu(ctx, &g, n).unwrap()]).unwrap();
    report(&format!("gelu n={n} [{}]", tier_name(ctx)), &ctx.read_f32(&g, 0, n).unwrap(), &cpu::gelu(&x), BOUND_GELU);
}

fn add_case(ctx: &Context, n: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let x = rng.normals(n, 1.0);
    let y = rng.normals(n, 1.0);
    let gx = ctx.upload_f32("x", &x).unwrap();
    let gy = ctx.upload_f32("y", &y).unwrap();
    ctx.run(&[&add(ctx, &gx, &gy, n).unwrap()]).unwrap();
    // f32 addition is exact to the rounding of the CPU twin.
    assert_eq!(ctx.read_f32(&gy, 0, n).unwrap(), cpu::add(&x, &y), "add n={n} [{}]", tier_name(ctx));
}

#[test]
fn small_sizes_all_tiers() {
    for ctx in tiers() {
        for (i, &(t, n)) in [(1, 1), (1, 7), (3, 255), (5, 257), (2, 11008), (17, 33)].iter().enumerate() {
            silu_case(&ctx, t, n, i as u64);
            gelu_case(&ctx, t * n, 50 + i as u64);
            add_case(&ctx, t * n, 90 + i as u64);
        }
    }
}

/// erf itself over [−6, 6] in steps of 1e-4, through GELU: |gelu_gpu − gelu_f64| ≤ |x|/2·1.2e-7 + ulp.
#[test]
fn gelu_erf_accuracy_grid() {
    let ctx = ctx();
    let x: Vec<f32> = (-60000..=60000).map(|i| i as f32 * 1e-4).collect();
    let g = ctx.upload_f32("x", &x).unwrap();
    ctx.run(&[&gelu(&ctx, &g, x.len()).unwrap()]).unwrap();
    let got = ctx.read_f32(&g, 0, x.len()).unwrap();
    let want = cpu::gelu(&x);
    let mut worst = 0f64;
    for ((a, b), v) in got.iter().zip(&want).zip(&x) {
        let erf_err = (*a as f64 - *b as f64).abs() / (0.5 * (*v as f64).abs()).max(1e-30);
        if v.abs() > 1e-3 {
            worst = worst.max(erf_err - (*b as f64).abs() * 2f64.powi(-23) / (0.5 * (*v as f64).abs()));
        }
    }
    if std::env::var("ZHINAO_PRINT_NMSE").is_ok() {
        eprintln!("gelu grid: implied erf error ≤ {worst:.2e}");
    }
    assert!(worst <= 2e-7, "implied erf error {worst:.2e}");
}

/// 2^25 elements (128 MiB, one whole binding): 131072 workgroups fold into y.
#[test]
fn large_sizes_fold_the_grid() {
    let ctx = ctx();
    add_case(&ctx, 1 << 25, 7);
    gelu_case(&ctx, (1 << 24) + 3, 8);
    silu_case(&ctx, 4096, 4096, 9); // gu is exactly 128 MiB; 65536 workgroups
}

#[test]
fn shape_errors_are_errors() {
    let ctx = ctx();
    let x = ctx.upload_f32("x", &[1.0; 8]).unwrap();
    let y = ctx.upload_f32("y", &[1.0; 4]).unwrap();
    assert!(add(&ctx, &x, &y, 8).is_err());
    assert!(add(&ctx, &x, &x, 8).is_err());
    assert!(gelu(&ctx, &y, 5).is_err());
    assert!(gelu(&ctx, &y, 0).is_err());
    assert!(silu_mul(&ctx, &y, 1, 4, &x).is_err()); // gu too small
}

/// The row gather copies exactly (and writes zeros for an index past T); outputs poisoned first.
#[test]
fn gather_rows_copies_selected_rows() {
    for ctx in tiers() {
        for &(t, c, ref rows) in
            &[(1usize, 1usize, vec![0u32]), (7, 33, vec![6, 0, 3, 3]), (40, 257, vec![39, 1, 77, 20, 5])]
        {
            let x = Rng::new(t as u64).normals(t * c, 1.0);
            let gx = ctx.upload_f32("x", &x).unwrap();
            let gr = ctx.upload_u32("rows", rows).unwrap();
            let out = poisoned(&ctx, rows.len() * c);
            ctx.run(&[&gather_rows(&ctx, &gx, t, c, &gr, rows.len(), &out).unwrap()]).unwrap();
            let got = ctx.read_f32(&out, 0, rows.len() * c).unwrap();
            assert_eq!(got, cpu::gather_rows(&x, t, c, rows), "gather T={t} C={c} rows {rows:?} [{}]", tier_name(&ctx));
        }
    }
}
