//! Host side of `shaders/gemv.wgsl`: the decode GEMV for T = 1..4 token rows,
//! y[T, N] (+)= x[T, K] · W[N, K]ᵀ with W dense (f32/f16/bf16 words, `tensor::Weight`) or GPTQ int4
//! (`tensor::QWeight`, sequential groups or an act-order g_idx), and the fusions the decode graph
//! uses: an RMSNorm prologue (`norm`), bias, accumulation into y (`acc`, the residual stream) and a
//! SiLU·mul epilogue over interleaved gate/up rows (`silu`, see `Weight::upload_interleaved`).
//!
//! A workgroup computes `rows` output rows for every token; the shape of that work (threads per
//! workgroup, rows per workgroup, u32 words per load) is a [`Tune`], swept on a GPU by
//! `zhinao bench ops --sweep`. [`Tune::DENSE`] and [`Tune::Q4`] are the defaults.

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::gpu::{grid, Context, Dispatch, GpuBuffer, Kernel, Slot};
use crate::graph::{Bound, Op, WeightRef, Weights};
use crate::tensor::{DType, Linear, QWeight, Weight};

/// The largest token count this kernel family takes (tokens are vector lanes in the shader).
pub const MAX_T: usize = 4;

/// The weight of one GEMV.
#[derive(Clone, Copy, Debug)]
pub enum GemvWeight<'a> {
    Dense(&'a Weight),
    Q4(&'a QWeight),
}

impl GemvWeight<'_> {
    /// (N, K): output rows, inputs.
    pub fn shape(&self) -> (usize, usize) {
        match self {
            GemvWeight::Dense(w) => (w.rows, w.cols),
            GemvWeight::Q4(w) => (w.rows, w.cols),
        }
    }
    /// The default [`Tune`] for this weight.
    pub fn default_tune(&self) -> Tune {
        match self {
            GemvWeight::Dense(_) => Tune::DENSE,
            GemvWeight::Q4(_) => Tune::Q4,
        }
    }
}

/// Fusions and options of one GEMV. `Default` is the plain y[T, N] = x · Wᵀ.
#[derive(Clone, Copy, Debug, Default)]
pub struct GemvOpts<'a> {
    /// bias [N] f32, added after the norm factor and before SiLU.
    pub bias: Option<&'a GpuBuffer>,
    /// Add the result to y instead of overwriting it (the residual stream).
    pub acc: bool,
    /// RMSNorm prologue (g [K] f32, eps): y = W · (x ⊙ g) / sqrt(mean(x²) + eps) per token row.
    pub norm: Option<(&'a GpuBuffer, f32)>,
    /// W's rows are gate and up interleaved (row 2i = gate_i, 2i+1 = up_i); y is [T, N/2] with
    /// y[t, i] = silu(gate_i · x_t) · (up_i · x_t). Every weight chunk must start and end on a pair.
    pub silu: bool,
    /// First row of x to read: x holds at least [x_row0 + T, K] f32.
    pub x_row0: usize,
}

/// The shape of one workgroup's work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tune {
    /// Threads per workgroup: 32, 64, 128 or 256.
    pub wg: u32,
    /// Output rows per workgroup: 1, 2, 4 or 8 (SILU takes at least 2).
    pub rows: u32,
    /// u32 words per weight load: 4 (16 bytes), 2 or 1. The largest that fits the shape is used up
    /// to this (dense: K % 4 == 0, 16-bit weights at least 2; int4: gs % (8·vec) == 0).
    pub vec: u32,
}

impl Tune {
    /// Dense default (before a sweep on the target GPU picks better).
    pub const DENSE: Tune = Tune { wg: 128, rows: 4, vec: 4 };
    /// Int4 default.
    pub const Q4: Tune = Tune { wg: 64, rows: 4, vec: 4 };

    /// Every combination `zhinao bench ops --sweep` times.
    pub fn sweep() -> Vec<Tune> {
        let mut v = Vec::new();
        for wg in [32, 64, 128, 256] {
            for rows in [1, 2, 4, 8] {
                for vec in [1, 2, 4] {
                    v.push(Tune { wg, rows, vec });
                }
            }
        }
        v
    }

    /// `wg=128,rows=4,vec=4`
    pub fn name(&self) -> String {
        format!("wg={},rows={},vec={}", self.wg, self.rows, self.vec)
    }

    fn check(&self) -> Result<()> {
        if ![32, 64, 128, 256].contains(&self.wg)
            || ![1, 2, 4, 8].contains(&self.rows)
            || ![1, 2, 4].contains(&self.vec)
        {
            return Err(Error::Input(format!(
                "gemv tune {}: wg 32..256, rows 1..8, vec 1|2|4 (powers of two)",
                self.name()
            )));
        }
        Ok(())
    }
}

/// What the weights are, as the shader is compiled for them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Dense(DType),
    /// GPTQ int4; `gidx`: the chunk keeps a g_idx table (act-order).
    Q4 {
        gidx: bool,
    },
}

/// One compiled variant of `gemv.wgsl`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Variant {
    pub kind: Kind,
    /// Token rows T, 1..=4.
    pub tokens: usize,
    pub wg: u32,
    pub rows: u32,
    /// u32 words per load actually used (1, 2, 4).
    pub vw: u32,
    /// Dense only, with vw = 1: activations read one by one with a bound check (K % 4 != 0).
    pub xs: bool,
    pub bias: bool,
    pub acc: bool,
    pub norm: bool,
    pub silu: bool,
    /// Reduce with the shared-memory tree even when subgroups exist (subgroups narrower than 4).
    pub sg_tree: bool,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    k: u32,
    row_words: u32,
    row0: u32,
    rows: u32,
    x_off: u32,
    y_stride: u32,
    groups: u32,
    gs: u32,
    eps: f32,
    _pad: [u32; 3],
}

/// Workgroup memory of a variant in bytes: the reduction slots and the totals.
fn workgroup_bytes(v: &Variant) -> u32 {
    let tv = [4, 8, 16, 16][v.tokens - 1];
    (red_len(v) + 9) * tv
}

/// Reduction slots: one per thread for the tree, [subgroups ≤ WG/4, NP] for subgroupAdd.
fn red_len(v: &Variant) -> u32 {
    let np = v.rows + v.norm as u32;
    v.wg.max(v.wg / 4 * np)
}

/// The kernel of a variant (also used by the shader validation test).
pub fn kernel(v: &Variant) -> Result<Kernel> {
    if !(1..=MAX_T).contains(&v.tokens) {
        return Err(Error::shape("gemv", format!("T = {} (1..={MAX_T})", v.tokens)));
    }
    Tune { wg: v.wg, rows: v.rows, vec: v.vw }.check()?;
    if v.silu && v.rows < 2 {
        return Err(Error::shape("gemv", "SILU needs at least 2 rows per workgroup (a gate/up pair)"));
    }
    if workgroup_bytes(v) > 16384 {
        return Err(Error::LimitTooSmall {
            what: format!("gemv workgroup memory for {v:?}"),
            requested: workgroup_bytes(v) as u64,
            available: 16384,
        });
    }
    let q4 = matches!(v.kind, Kind::Q4 { .. });
    let gidx = matches!(v.kind, Kind::Q4 { gidx: true });
    // x [T, K], w [rows, row_words], (sz [rows, G]), y [T, N'], (bias [N]), (g [K]), (g_idx [K])
    let mut slots = vec![Slot::Read, Slot::Read];
    let mut next = 3;
    let mut bind = |on: bool, slot: Slot, slots: &mut Vec<Slot>| {
        if !on {
            return 0;
        }
        slots.push(slot);
        next += 1;
        next - 1
    };
    let b_sz = bind(q4, Slot::Read, &mut slots);
    let b_y = bind(true, Slot::ReadWrite, &mut slots);
    let b_bias = bind(v.bias, Slot::Read, &mut slots);
    let b_norm = bind(v.norm, Slot::Read, &mut slots);
    let b_gidx = bind(gidx, Slot::Read, &mut slots);
    let mut k = Kernel::new("gemv", "gemv", &slots)
        .define("WG", format!("{}u", v.wg))
        .define("RED_LEN", format!("{}u", red_len(v)))
        .define("B_Y", b_y);
    k = match v.kind {
        Kind::Dense(DType::F32) => k.flag("W_F32"),
        Kind::Dense(DType::F16) => k.flag("W_F16"),
        Kind::Dense(DType::BF16) => k.flag("W_BF16"),
        Kind::Dense(other) => return Err(Error::Unsupported(format!("gemv of a {other} weight"))),
        Kind::Q4 { gidx } => k.flag("Q4").define("B_SZ", b_sz).flag_if(gidx, "GIDX"),
    };
    // Dense units: one word with scalar activations (XS), else whole vec4s of x: 4 f32 words or
    // 2 or 4 words of 16-bit pairs.
    let dense_ok = match v.kind {
        Kind::Dense(DType::F32) => v.xs == (v.vw == 1) && v.vw != 2,
        Kind::Dense(_) => v.xs == (v.vw == 1),
        Kind::Q4 { .. } => !v.xs,
    };
    if !dense_ok {
        return Err(Error::shape("gemv", format!("no unit of {} words (scalar x: {}) for {:?}", v.vw, v.xs, v.kind)));
    }
    k = k
        .flag_if(v.vw >= 2, "VEC2")
        .flag_if(v.vw == 4, "VEC4")
        .flag_if(v.xs, "XS")
        .flag_if(v.tokens >= 2, "TOK2")
        .flag_if(v.tokens >= 3, "TOK3")
        .flag_if(v.tokens >= 4, "TOK4")
        .flag_if(v.rows >= 2, "R2")
        .flag_if(v.rows >= 4, "R4")
        .flag_if(v.rows >= 8, "R8")
        .flag_if(v.bias, "BIAS")
        .flag_if(v.acc, "ACC")
        .flag_if(v.silu, "SILU")
        .flag_if(v.sg_tree, "SG_TREE");
    if v.bias {
        k = k.define("B_BIAS", b_bias);
    }
    if v.norm {
        k = k.flag("NORM").define("B_NORM", b_norm);
    }
    if gidx {
        k = k.define("B_GIDX", b_gidx);
    }
    Ok(k)
}

/// Every variant the engine requests with the default tunes, plus the other load widths and the
/// scalar-activation path (validated and translated by tests/shaders.rs).
pub fn variants() -> Vec<Kernel> {
    // (bias, acc, norm, silu): what the decode graph and the BERT/reranker matmuls use.
    let flags = [
        (false, false, false, false),
        (true, false, false, false),
        (false, true, false, false),
        (true, true, false, false),
        (false, false, true, false),
        (true, false, true, false),
        (false, false, true, true),
    ];
    let mut shapes = Vec::new();
    for d in [DType::F32, DType::F16, DType::BF16] {
        shapes.push((Kind::Dense(d), Tune::DENSE, 4, false));
        shapes.push((Kind::Dense(d), Tune::DENSE, 1, true));
        if d != DType::F32 {
            shapes.push((Kind::Dense(d), Tune::DENSE, 2, false));
        }
    }
    for gidx in [false, true] {
        for vw in [4, 2, 1] {
            shapes.push((Kind::Q4 { gidx }, Tune::Q4, vw, false));
        }
    }
    let mut v = Vec::new();
    for (kind, tune, vw, xs) in shapes {
        let main = vw == tune.vec || xs;
        for tokens in 1..=MAX_T {
            for (i, &(bias, acc, norm, silu)) in flags.iter().enumerate() {
                // Other load widths: every flag once, at T = 1 and 4.
                if !(main || i == 0 || i == 6 || tokens == 1 || tokens == 4) {
                    continue;
                }
                let var = Variant {
                    kind,
                    tokens,
                    wg: tune.wg,
                    rows: tune.rows,
                    vw,
                    xs,
                    bias,
                    acc,
                    norm,
                    silu,
                    sg_tree: false,
                };
                v.extend(kernel(&var).ok());
            }
        }
    }
    // The extremes of the sweep and the forced tree.
    for (wg, rows) in [(32, 1), (256, 8), (256, 2)] {
        let var = Variant {
            kind: Kind::Q4 { gidx: false },
            tokens: 4,
            wg,
            rows,
            vw: 4,
            xs: false,
            bias: true,
            acc: true,
            norm: true,
            silu: rows >= 2,
            sg_tree: rows == 2,
        };
        v.extend(kernel(&var).ok());
    }
    v
}

/// Record the GEMV with the default [`Tune`] of the weight: one dispatch per weight chunk.
/// `x` [x_row0 + T, K] f32, `y` [T, N] f32 ([T, N/2] with `silu`), T = 1..=4.
pub fn gemv(
    ctx: &Context,
    x: &GpuBuffer,
    t: usize,
    weight: GemvWeight<'_>,
    opts: &GemvOpts<'_>,
    y: &GpuBuffer,
) -> Result<Vec<Dispatch>> {
    gemv_tuned(ctx, x, t, weight, opts, y, weight.default_tune())
}

/// As [`gemv`] with an explicit [`Tune`] (benchmark sweeps).
pub fn gemv_tuned(
    ctx: &Context,
    x: &GpuBuffer,
    t: usize,
    weight: GemvWeight<'_>,
    opts: &GemvOpts<'_>,
    y: &GpuBuffer,
    tune: Tune,
) -> Result<Vec<Dispatch>> {
    const OP: &str = "gemv";
    tune.check()?;
    let (n, k) = weight.shape();
    if !(1..=MAX_T).contains(&t) {
        return Err(Error::shape(OP, format!("T = {t}: the GEMV takes 1..={MAX_T} token rows")));
    }
    if opts.silu && !n.is_multiple_of(2) {
        return Err(Error::shape(OP, format!("SILU over interleaved gate/up rows needs an even N, got {n}")));
    }
    let y_stride = if opts.silu { n / 2 } else { n };
    super::matmul::check_io(OP, x, opts.x_row0 + t, k, y, t, y_stride, None)?;
    if let Some(b) = opts.bias {
        if (b.size as usize) < n * 4 {
            return Err(Error::shape(OP, format!("bias [N]: buffer of {} bytes, need {}", b.size, n * 4)));
        }
    }
    if let Some((g, eps)) = opts.norm {
        if (g.size as usize) < k * 4 {
            return Err(Error::shape(OP, format!("norm weight [K]: buffer of {} bytes, need {}", g.size, k * 4)));
        }
        if !(eps.is_finite() && eps >= 0.0) {
            return Err(Error::shape(OP, format!("norm eps = {eps}")));
        }
    }
    let x_off = opts.x_row0 * k;
    if x_off > u32::MAX as usize || t * y_stride > u32::MAX as usize {
        return Err(Error::shape(OP, "x or y offsets beyond 2^32 elements"));
    }
    let rows = if opts.silu { tune.rows.max(2) } else { tune.rows };
    let sg_tree = ctx.caps.subgroups && ctx.caps.subgroup_min < 4;
    let base = Variant {
        kind: Kind::Q4 { gidx: false },
        tokens: t,
        wg: tune.wg,
        rows,
        vw: 1,
        xs: false,
        bias: opts.bias.is_some(),
        acc: opts.acc,
        norm: opts.norm.is_some(),
        silu: opts.silu,
        sg_tree,
    };
    let mut params = Params {
        k: k as u32,
        row_words: 0,
        row0: 0,
        rows: 0,
        x_off: x_off as u32,
        y_stride: y_stride as u32,
        groups: 0,
        gs: 0,
        eps: opts.norm.map_or(0.0, |n| n.1),
        _pad: [0; 3],
    };
    let x_bind = x.slice(0, ((opts.x_row0 + t) * k * 4) as u64);
    let y_bind = y.slice(0, (t * y_stride * 4) as u64);
    let tail = |bufs: &mut Vec<crate::gpu::BufSlice>| {
        if let Some(b) = opts.bias {
            bufs.push(b.slice(0, (n * 4) as u64));
        }
        if let Some((g, _)) = opts.norm {
            bufs.push(g.slice(0, (k * 4) as u64));
        }
    };
    let check_pair = |row0: usize, rows: usize| -> Result<()> {
        if opts.silu && !(row0.is_multiple_of(2) && rows.is_multiple_of(2)) {
            return Err(Error::shape(
                OP,
                format!("SILU: weight chunk rows {row0}..{} splits a gate/up pair", row0 + rows),
            ));
        }
        Ok(())
    };
    let mut out = Vec::new();
    match weight {
        GemvWeight::Dense(w) => {
            let per_word = if w.dtype == DType::F32 { 1 } else { 2 };
            // Vector loads need whole units and x in vec4s: K % 4 == 0 (so 16-bit rows are unpadded).
            let vw = if !k.is_multiple_of(4) {
                1
            } else if tune.vec >= 4 && w.row_words.is_multiple_of(4) {
                4
            } else if tune.vec >= 2 && per_word == 2 && w.row_words.is_multiple_of(2) {
                2
            } else {
                1
            };
            let var = Variant { kind: Kind::Dense(w.dtype), vw, xs: vw == 1, ..base };
            let kern = kernel(&var)?;
            params.row_words = w.row_words as u32;
            for c in &w.chunks {
                check_pair(c.row0, c.rows)?;
                let p = Params { row0: c.row0 as u32, rows: c.rows as u32, ..params };
                let mut bufs = vec![x_bind.clone(), c.buf.whole(), y_bind.clone()];
                tail(&mut bufs);
                let g = grid(ctx, c.rows.div_ceil(rows as usize) as u32);
                out.push(ctx.dispatch(&kern, bytemuck::bytes_of(&p), &bufs, g)?);
            }
        }
        GemvWeight::Q4(w) => {
            params.row_words = (k / 8) as u32;
            params.groups = w.groups as u32;
            params.gs = w.group_size as u32;
            for c in &w.chunks {
                check_pair(c.row0, c.rows)?;
                let gidx = c.g_idx.is_some();
                let vw = [4u32, 2, 1]
                    .into_iter()
                    .find(|&v| {
                        v <= tune.vec
                            && (k / 8).is_multiple_of(v as usize)
                            && (gidx || w.group_size.is_multiple_of(8 * v as usize))
                    })
                    .unwrap_or(1);
                if !gidx && !w.group_size.is_multiple_of(8) {
                    return Err(Error::shape(OP, format!("group size {} without a g_idx table", w.group_size)));
                }
                let var = Variant { kind: Kind::Q4 { gidx }, vw, ..base };
                let kern = kernel(&var)?;
                let p = Params { row0: c.row0 as u32, rows: c.rows as u32, ..params };
                let mut bufs = vec![x_bind.clone(), c.qweight.whole(), c.groups.whole(), y_bind.clone()];
                tail(&mut bufs);
                if let Some(gi) = &c.g_idx {
                    bufs.push(gi.whole());
                }
                let g = grid(ctx, c.rows.div_ceil(rows as usize) as u32);
                out.push(ctx.dispatch(&kern, bytemuck::bytes_of(&p), &bufs, g)?);
            }
        }
    }
    Ok(out)
}

impl<'a> From<&'a Linear> for GemvWeight<'a> {
    fn from(l: &'a Linear) -> GemvWeight<'a> {
        match l {
            Linear::Dense(w) => GemvWeight::Dense(w),
            Linear::Q4(w) => GemvWeight::Q4(w),
        }
    }
}

/// Which model weight a [`Gemv`] node multiplies by.
#[derive(Clone, Copy, Debug)]
pub enum GemvSource {
    /// A Linear (dense or GPTQ) of the model.
    Linear(WeightRef),
    /// A dense table (the vocabulary projection).
    Table(WeightRef),
}

/// Graph op, the decode GEMV with its fusions: `x [T, K] -> y [T, N]` (or `[T, N/2]` with `silu`);
/// with `acc`: `x, y -> y'` (in place, the residual stream). `norm` = (RMSNorm weight, eps) applied to
/// x first; `bias` added; `silu` for interleaved gate/up rows. T ≤ [`MAX_T`].
#[derive(Debug)]
pub struct Gemv {
    pub weight: GemvSource,
    pub bias: Option<WeightRef>,
    pub norm: Option<(WeightRef, f32)>,
    pub silu: bool,
    pub acc: bool,
    pub t: usize,
}

impl Op for Gemv {
    fn record(&self, ctx: &Context, io: &Bound, w: &dyn Weights) -> Result<Vec<Dispatch>> {
        let weight = match &self.weight {
            GemvSource::Linear(r) => GemvWeight::from(w.linear(r)?),
            GemvSource::Table(r) => GemvWeight::Dense(w.table(r)?),
        };
        let opts = GemvOpts {
            bias: self.bias.as_ref().map(|b| w.vector(b)).transpose()?,
            acc: self.acc,
            norm: self.norm.as_ref().map(|(g, eps)| w.vector(g).map(|g| (g, *eps))).transpose()?,
            silu: self.silu,
            x_row0: 0,
        };
        gemv(ctx, io.input(0)?, self.t, weight, &opts, io.output(0)?)
    }
}
