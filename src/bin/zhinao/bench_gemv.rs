//! `zhinao bench ops` GEMV rows: the decode GEMVs the 7B runs (`ops::gemv`, with the fusions the
//! decode graph uses), weights streamed from memory: each weight is duplicated on the device until
//! the copies exceed `--stream-mb` (by default 256 MB, ~5× the H100's 50 MB L2) and the timed pass
//! rotates through them, so no copy is still in L2 when it is read again. GB/s counts the weight
//! bytes read (int4: packed nibbles + the scale/zero records). Times are the pass's GPU timestamps
//! where the adapter has them (a wall clock would add the CPU's encoding of every dispatch, which
//! is comparable to a 5 µs kernel), else wall clock. `--sweep` times every `Tune`.

use anyhow::Result;
use zhinao::gpu::{Context, Dispatch, GpuBuffer};
use zhinao::ops::gemv::{gemv_tuned, GemvOpts, GemvWeight, Tune};
use zhinao::rng::Rng;
use zhinao::tensor::{from_f32, Chunk, DType, GptqParts, QChunk, QWeight, Weight};

use crate::bench::time_gpu;

/// How the bench rows run.
pub struct GemvBench {
    pub shrink: usize,
    pub iters: usize,
    /// Token rows T (1 = decode).
    pub tokens: usize,
    /// Total bytes of weight copies to rotate through.
    pub stream_bytes: u64,
    pub sweep: bool,
    pub json: bool,
    /// Only rows whose id contains this.
    pub filter: Option<String>,
}

/// The fusions of a row: what the decode graph runs at that projection.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fusion {
    /// Fused QKV: RMSNorm prologue and bias.
    NormBias,
    /// o_proj, down_proj: added into the residual stream.
    Acc,
    /// gate|up interleaved: RMSNorm prologue and SiLU·mul epilogue.
    NormSilu,
    /// lm_head after the final RMSNorm.
    Norm,
}

impl Fusion {
    fn name(self) -> &'static str {
        match self {
            Fusion::NormBias => "norm+bias",
            Fusion::Acc => "acc",
            Fusion::NormSilu => "norm+silu",
            Fusion::Norm => "norm",
        }
    }
}

/// (N, K, fusion, int4 too): the 7B decode shapes (C 4096, I 11008, V 158464).
const SHAPES: [(usize, usize, Fusion, bool); 5] = [
    (12288, 4096, Fusion::NormBias, true),
    (4096, 4096, Fusion::Acc, true),
    (22016, 4096, Fusion::NormSilu, true),
    (4096, 11008, Fusion::Acc, true),
    (158464, 4096, Fusion::Norm, false),
];

enum Copies {
    Dense(Vec<Weight>),
    Q4(Vec<QWeight>),
}

/// A fresh device copy of every buffer of a weight (same layout).
fn copy_buf(ctx: &Context, b: &GpuBuffer) -> Result<GpuBuffer> {
    let c = ctx.buffer("weight copy", b.size)?;
    ctx.copy(b, 0, &c, 0, b.size);
    Ok(c)
}

fn dense_copies(ctx: &Context, w: Weight, count: usize) -> Result<Vec<Weight>> {
    let mut v = Vec::with_capacity(count);
    for _ in 1..count {
        let chunks = w
            .chunks
            .iter()
            .map(|c| Ok(Chunk { buf: copy_buf(ctx, &c.buf)?, ..c.clone() }))
            .collect::<Result<Vec<_>>>()?;
        v.push(Weight { chunks, ..w.clone() });
    }
    v.push(w);
    Ok(v)
}

fn q4_copies(ctx: &Context, w: QWeight, count: usize) -> Result<Vec<QWeight>> {
    let mut v = Vec::with_capacity(count);
    for _ in 1..count {
        let chunks = w
            .chunks
            .iter()
            .map(|c| Ok(QChunk { qweight: copy_buf(ctx, &c.qweight)?, groups: copy_buf(ctx, &c.groups)?, ..c.clone() }))
            .collect::<Result<Vec<_>>>()?;
        v.push(QWeight { chunks, ..w.clone() });
    }
    v.push(w);
    Ok(v)
}

/// Random AutoGPTQ tensors (in = k, out = n, group 128 at the real shapes, zero 8).
fn gptq_bytes(rng: &mut Rng, k: usize, n: usize, gs: usize) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let words: Vec<u32> = (0..k / 8 * n).map(|_| rng.next_u64() as u32).collect();
    let zeros = vec![0x7777_7777u32; k / gs * n / 8];
    let scales = from_f32(DType::F16, &vec![0.01; k / gs * n]);
    (bytemuck::cast_slice(&words).to_vec(), bytemuck::cast_slice(&zeros).to_vec(), scales)
}

/// Print the GEMV rows; `copy` is the copy-engine bandwidth in GB/s (read + written).
pub fn rows(ctx: &Context, b: &GemvBench, copy: f64) -> Result<()> {
    if !b.json {
        println!(
            "GEMV, weights streamed ({} MB of copies per row), T = {}; % of the {copy:.1} GB/s copy bandwidth",
            b.stream_bytes / 1_000_000,
            b.tokens
        );
        println!("{:<28} {:>10} {:>10} {:>8}  variant", "id", "time", "GB/s", "% copy");
    }
    let mut rng = Rng::new(3);
    let s = b.shrink;
    for q4 in [false, true] {
        for &(n_full, k_full, fusion, has_q4) in &SHAPES {
            if q4 && !has_q4 {
                continue;
            }
            let (n, k) = ((n_full / s).div_ceil(16) * 16, (k_full / s).div_ceil(8) * 8);
            let id = format!("gemv.{}.{n}x{k}", if q4 { "int4" } else { "bf16" });
            if b.filter.as_ref().is_some_and(|f| !id.contains(f.as_str())) {
                continue;
            }
            let silu = fusion == Fusion::NormSilu;
            let copies = if q4 {
                let gs = [128, 64, 32, 16, 8].into_iter().find(|g| k.is_multiple_of(*g)).unwrap_or(8);
                let w = if silu {
                    let (qa, za, sa) = gptq_bytes(&mut rng, k, n / 2, gs);
                    let (qb, zb, sb) = gptq_bytes(&mut rng, k, n / 2, gs);
                    let pa = GptqParts { qweight: &qa, qzeros: &za, scales: &sa, g_idx: None };
                    let pb = GptqParts { qweight: &qb, qzeros: &zb, scales: &sb, g_idx: None };
                    QWeight::upload_interleaved(ctx, &id, k, n / 2, gs, pa, pb)?
                } else {
                    let (qw, qz, sc) = gptq_bytes(&mut rng, k, n, gs);
                    QWeight::upload(ctx, &id, k, n, gs, &qw, &qz, &sc, None)?
                };
                let count = (b.stream_bytes.div_ceil(w.bytes()) as usize).max(1);
                Copies::Q4(q4_copies(ctx, w, count)?)
            } else {
                let pool = from_f32(DType::BF16, &rng.normals(1 << 20, 0.02));
                let data: Vec<u8> = pool.iter().copied().cycle().take(n * k * 2).collect();
                let w = if silu {
                    let half = n / 2 * k * 2;
                    Weight::upload_interleaved(ctx, &id, DType::BF16, n / 2, k, &data[..half], &data[half..])?
                } else {
                    Weight::upload(ctx, &id, DType::BF16, n, k, &data)?
                };
                let count = (b.stream_bytes.div_ceil(w.bytes()) as usize).max(1);
                Copies::Dense(dense_copies(ctx, w, count)?)
            };
            let t = b.tokens;
            let n_out = if silu { n / 2 } else { n };
            let x = ctx.upload_f32("x", &rng.normals(t * k, 1.0))?;
            let y = ctx.buffer("y", (t * n_out * 4) as u64)?;
            let bias = ctx.upload_f32("bias", &rng.normals(n, 0.02))?;
            let g = ctx.upload_f32("g", &vec![1.0; k])?;
            let opts = GemvOpts {
                bias: (fusion == Fusion::NormBias).then_some(&bias),
                acc: fusion == Fusion::Acc,
                norm: (fusion != Fusion::Acc).then_some((&g, 1e-6)),
                silu,
                x_row0: 0,
            };
            let (count, bytes, default) = match &copies {
                Copies::Dense(v) => (v.len(), v[0].bytes(), Tune::DENSE),
                Copies::Q4(v) => (v.len(), v[0].bytes(), Tune::Q4),
            };
            let tunes = if b.sweep { Tune::sweep() } else { vec![default] };
            let mut best: Option<(f64, Tune)> = None;
            for tune in tunes {
                if silu && tune.rows == 1 {
                    continue; // runs as rows = 2
                }
                let mut ds: Vec<Dispatch> = Vec::new();
                let recorded: Result<()> = (|| {
                    match &copies {
                        Copies::Dense(v) => {
                            for w in v {
                                ds.extend(gemv_tuned(ctx, &x, t, GemvWeight::Dense(w), &opts, &y, tune)?);
                            }
                        }
                        Copies::Q4(v) => {
                            for w in v {
                                ds.extend(gemv_tuned(ctx, &x, t, GemvWeight::Q4(w), &opts, &y, tune)?);
                            }
                        }
                    }
                    Ok(())
                })();
                if let Err(e) = recorded {
                    eprintln!("{id} {}: skipped ({e})", tune.name());
                    continue;
                }
                let (gpu, wall) = time_gpu(ctx, &ds, (b.iters / count).max(2))?;
                let clock = if gpu.is_some() { "gpu" } else { "wall" };
                let secs = gpu.unwrap_or(wall) / count as f64;
                let gbps = bytes as f64 / secs / 1e9;
                let variant = format!("t={t},{},{}", fusion.name(), tune.name());
                if b.json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "id": id, "gbps": gbps, "us": secs * 1e6, "variant": variant,
                            "pct_copy": 100.0 * gbps / copy, "weight_bytes": bytes, "copies": count,
                            "clock": clock, "wall_us": wall / count as f64 * 1e6,
                        })
                    );
                } else {
                    println!(
                        "{id:<28} {:>8.1}us {gbps:>10.1} {:>7.0}%  {variant} ({clock} clock)",
                        secs * 1e6,
                        100.0 * gbps / copy
                    );
                }
                if best.is_none_or(|(s, _)| secs < s) {
                    best = Some((secs, tune));
                }
            }
            if let (true, false, Some((secs, tune))) = (b.sweep, b.json, best) {
                println!("{id:<28} best {} ({:.1} GB/s)", tune.name(), bytes as f64 / secs / 1e9);
            }
        }
    }
    Ok(())
}
