//! GPTQ int4 weights on the GPU (AutoGPTQ `QuantLinear`, spec §5), repacked at load for
//! `shaders/matmul_q4.wgsl`. Nothing is dequantized here: the kernels dequantize in registers.
//!
//! AutoGPTQ stores, for a Linear with in = K, out = N: `qweight` i32 [K/8, N] (nibbles packed
//! along K), `qzeros` i32 [G, N/8] (nibbles packed along N, stored value = zero − 1), `scales` f16
//! [G, N], `g_idx` i32 [K] (group of input k). On the device, per chunk of output rows:
//! - `qweight` u32 [rows, K/8]: the transpose of AutoGPTQ's, so one output row is contiguous.
//! - `groups` u32 [rows, G]: one record per (row, group): the f16 scale in the low half and the
//!   zero (z_stored + 1, 1..16) in bits 16.. .
//!
//! A sequential `g_idx` (g_idx[k] = k / group_size, desc_act = false) is dropped and the kernels
//! compute the group; any other assignment (desc_act = true) is kept as u32 [K].

use crate::error::{Error, Result};
use crate::gpu::{Context, GpuBuffer};
use crate::tensor::rows_per_chunk;

/// One range of output rows of a split GPTQ weight.
#[derive(Clone, Debug)]
pub struct QChunk {
    /// u32 [rows, K/8]: nibble j of word r is q[row, 8r + j].
    pub qweight: GpuBuffer,
    /// u32 [rows, G]: f16 scale | (zero << 16).
    pub groups: GpuBuffer,
    pub row0: usize,
    pub rows: usize,
    /// u32 [K] group of each input, or `None` when groups are sequential (k / group_size).
    /// Chunks of one weight share it; stacked weights (gate|up) may differ (act-order).
    pub g_idx: Option<GpuBuffer>,
}

/// The AutoGPTQ tensors of one Linear (in = K, out = N) as little-endian bytes: `qweight` i32
/// [K/8, N], `qzeros` i32 [K/gs, N/8], `scales` f16 [K/gs, N], `g_idx` i32 [K] (`None` = sequential).
#[derive(Clone, Copy, Debug)]
pub struct GptqParts<'a> {
    pub qweight: &'a [u8],
    pub qzeros: &'a [u8],
    pub scales: &'a [u8],
    pub g_idx: Option<&'a [u8]>,
}

/// A GPTQ int4 weight `[N, K]` (out, in), split by output rows into chunks that fit one binding.
#[derive(Clone, Debug)]
pub struct QWeight {
    /// Output features N.
    pub rows: usize,
    /// Input features K.
    pub cols: usize,
    pub group_size: usize,
    /// Groups per row G = K / group_size.
    pub groups: usize,
    pub chunks: Vec<QChunk>,
    /// The power of two the cooperative-matrix GEMM multiplies dequantized weights by before
    /// rounding them to f16 (undone exactly on the f32 result): from the largest scale, as
    /// |q − zero| ≤ 16. `None`: f32 path only (a non-finite scale, or the coop path is off).
    pub f16_scale: Option<f32>,
}

/// The coop scale of a GPTQ weight from its f16 scale bits: |w| = s·|q − zero| ≤ 16·max s.
fn q4_f16_scale(scales: &[u16]) -> Option<f32> {
    let m = scales.iter().map(|b| b & 0x7fff).max().unwrap_or(0);
    if m >= 0x7c00 {
        return None;
    }
    crate::tensor::pow2_scale(16.0 * half::f16::from_bits(m).to_f32())
}

fn words_le(data: &[u8]) -> impl Iterator<Item = u32> + '_ {
    data.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

impl QWeight {
    /// Upload the AutoGPTQ tensors of one Linear (in = `k`, out = `n`), as little-endian bytes:
    /// `qweight` i32 [K/8, N], `qzeros` i32 [K/gs, N/8], `scales` f16 [K/gs, N], `g_idx` i32 [K]
    /// (`None` = sequential, k / group_size).
    #[allow(clippy::too_many_arguments)]
    pub fn upload(
        ctx: &Context,
        label: &str,
        k: usize,
        n: usize,
        group_size: usize,
        qweight: &[u8],
        qzeros: &[u8],
        scales: &[u8],
        g_idx: Option<&[u8]>,
    ) -> Result<QWeight> {
        let parts = GptqParts { qweight, qzeros, scales, g_idx };
        QWeight::upload_aligned(ctx, label, k, n, group_size, parts, 1)
    }

    /// Two GPTQ Linears `a`, `b` (in = `k`, out = `n` each) as one [2n, k] weight with interleaved
    /// output rows (row 2i = a_i, row 2i+1 = b_i), every chunk holding whole pairs: the gate/up
    /// layout of the GEMV's SiLU·mul epilogue (`ops::gemv`, `silu`). Both must map inputs to groups
    /// the same way (no g_idx, or equal ones); otherwise `Error::Unsupported`, and the caller keeps
    /// the two projections unfused.
    pub fn upload_interleaved(
        ctx: &Context,
        label: &str,
        k: usize,
        n: usize,
        group_size: usize,
        a: GptqParts<'_>,
        b: GptqParts<'_>,
    ) -> Result<QWeight> {
        let bad = |msg: String| Error::shape("QWeight::upload_interleaved", format!("{label}: {msg}"));
        if k == 0
            || n == 0
            || !k.is_multiple_of(8)
            || !n.is_multiple_of(8)
            || group_size == 0
            || !k.is_multiple_of(group_size)
        {
            return Err(bad(format!("K = {k}, N = {n}, group size {group_size}: K and N multiples of 8, gs | K")));
        }
        let groups = k / group_size;
        for (name, p) in [("a", &a), ("b", &b)] {
            let ok = p.qweight.len() == k / 8 * n * 4
                && p.qzeros.len() == groups * n / 8 * 4
                && p.scales.len() == groups * n * 2
                && p.g_idx.is_none_or(|g| g.len() == k * 4);
            if !ok {
                return Err(bad(format!("{name}: tensor sizes do not match in = {k}, out = {n}, group {group_size}")));
            }
        }
        let mapping = |g: Option<&[u8]>| -> Vec<u32> {
            match g {
                Some(b) => words_le(b).collect(),
                None => (0..k).map(|i| (i / group_size) as u32).collect(),
            }
        };
        if mapping(a.g_idx) != mapping(b.g_idx) {
            return Err(Error::Unsupported(format!(
                "{label}: the two halves have different g_idx (act-order), so their rows cannot share one kernel's groups"
            )));
        }
        // qweight [K/8, N] and scales [G, N]: interleave elements along N; qzeros [G, N/8]: nibbles.
        let pairs = |x: &[u8], y: &[u8], elem: usize, row: usize| -> Vec<u8> {
            let mut out = Vec::with_capacity(x.len() * 2);
            for (rx, ry) in x.chunks_exact(row).zip(y.chunks_exact(row)) {
                out.extend(super::interleave_rows(rx, ry, elem));
            }
            out
        };
        let qweight = pairs(a.qweight, b.qweight, 4, n * 4);
        let scales = pairs(a.scales, b.scales, 2, n * 2);
        let (za, zb): (Vec<u32>, Vec<u32>) = (words_le(a.qzeros).collect(), words_le(b.qzeros).collect());
        let mut qzeros = vec![0u32; groups * n / 4];
        for g in 0..groups {
            for i in 0..n {
                let nib = |z: &[u32]| (z[g * (n / 8) + i / 8] >> (4 * (i % 8))) & 15;
                for (j, v) in [(2 * i, nib(&za)), (2 * i + 1, nib(&zb))] {
                    qzeros[g * (n / 4) + j / 8] |= v << (4 * (j % 8));
                }
            }
        }
        let qzeros: Vec<u8> = qzeros.iter().flat_map(|v| v.to_le_bytes()).collect();
        let parts = GptqParts { qweight: &qweight, qzeros: &qzeros, scales: &scales, g_idx: a.g_idx };
        QWeight::upload_aligned(ctx, label, k, 2 * n, group_size, parts, 2)
    }

    /// As [`QWeight::upload`], every chunk's row count a multiple of `row_align`.
    fn upload_aligned(
        ctx: &Context,
        label: &str,
        k: usize,
        n: usize,
        group_size: usize,
        parts: GptqParts<'_>,
        row_align: usize,
    ) -> Result<QWeight> {
        let GptqParts { qweight, qzeros, scales, g_idx } = parts;
        let bad = |msg: String| Error::shape("QWeight::upload", format!("{label}: {msg}"));
        if k == 0 || n == 0 {
            return Err(bad(format!("empty weight K = {k}, N = {n}")));
        }
        if !k.is_multiple_of(8) {
            return Err(bad(format!(
                "qweight: K = {k} is not a multiple of 8 (eight nibbles per i32, packed along K)"
            )));
        }
        if !n.is_multiple_of(8) {
            return Err(bad(format!("qzeros: N = {n} is not a multiple of 8 (eight nibbles per i32, packed along N)")));
        }
        if group_size == 0 || !k.is_multiple_of(group_size) {
            return Err(bad(format!("group size {group_size} does not divide K = {k}")));
        }
        let groups = k / group_size;
        let expect = |what: &str, got: usize, shape: String, want: usize| -> Result<()> {
            if got != want {
                return Err(bad(format!("{what}: {got} bytes for {shape} ({want} expected)")));
            }
            Ok(())
        };
        expect("qweight", qweight.len(), format!("i32 [{}, {n}]", k / 8), k / 8 * n * 4)?;
        expect("qzeros", qzeros.len(), format!("i32 [{groups}, {}]", n / 8), groups * n / 8 * 4)?;
        expect("scales", scales.len(), format!("f16 [{groups}, {n}]"), groups * n * 2)?;
        let gi: Option<Vec<u32>> = match g_idx {
            None => None,
            Some(b) => {
                expect("g_idx", b.len(), format!("i32 [{k}]"), k * 4)?;
                let v: Vec<u32> = words_le(b).collect();
                if let Some(i) = v.iter().position(|&g| g as usize >= groups) {
                    return Err(bad(format!("g_idx[{i}] = {} outside 0..{groups}", v[i] as i32)));
                }
                Some(v)
            }
        };
        // Sequential groups of a multiple of 8 need no table: the kernels compute k / group_size.
        let sequential = gi.as_ref().is_none_or(|v| v.iter().enumerate().all(|(i, &g)| g as usize == i / group_size));
        let g_idx = if sequential && group_size.is_multiple_of(8) {
            None
        } else {
            let v = gi.unwrap_or_else(|| (0..k).map(|i| (i / group_size) as u32).collect());
            if (k * 4) as u64 > ctx.limits.max_binding {
                return Err(Error::LimitTooSmall {
                    what: format!("g_idx of {label}"),
                    requested: (k * 4) as u64,
                    available: ctx.limits.max_binding,
                });
            }
            Some(ctx.upload_u32(&format!("{label}.g_idx"), &v)?)
        };

        let words = k / 8;
        let row_bytes = (words * 4).max(groups * 4) as u64;
        if row_align as u64 * row_bytes > ctx.limits.max_binding {
            return Err(Error::LimitTooSmall {
                what: format!("{row_align} row(s) of {label}"),
                requested: row_align as u64 * row_bytes,
                available: ctx.limits.max_binding,
            });
        }
        let qw: Vec<u32> = words_le(qweight).collect();
        let qz: Vec<u32> = words_le(qzeros).collect();
        let sc: Vec<u16> = scales.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect();
        let f16_scale = if ctx.caps.coop_f16() { q4_f16_scale(&sc) } else { None };
        let per_chunk = (rows_per_chunk(ctx, row_bytes) / row_align).max(1) * row_align;
        let mut chunks = Vec::new();
        let mut row0 = 0;
        while row0 < n {
            let rows = per_chunk.min(n - row0);
            let mut tw = vec![0u32; rows * words];
            let mut tg = vec![0u32; rows * groups];
            for r in 0..rows {
                let col = row0 + r;
                for w in 0..words {
                    tw[r * words + w] = qw[w * n + col];
                }
                for g in 0..groups {
                    let z_stored = (qz[g * (n / 8) + col / 8] >> (4 * (col % 8))) & 15;
                    tg[r * groups + g] = sc[g * n + col] as u32 | ((z_stored + 1) << 16);
                }
            }
            chunks.push(QChunk {
                qweight: ctx.upload_u32(&format!("{label}.qweight"), &tw)?,
                groups: ctx.upload_u32(&format!("{label}.groups"), &tg)?,
                row0,
                rows,
                g_idx: g_idx.clone(),
            });
            row0 += rows;
        }
        Ok(QWeight { rows: n, cols: k, group_size, groups, chunks, f16_scale })
    }

    /// Stack weights with the same input size along the output dimension (e.g. gate_proj and
    /// up_proj into one [2I, K] weight); each part keeps its own g_idx.
    pub fn stack(parts: Vec<QWeight>) -> Result<QWeight> {
        let first = parts.first().ok_or_else(|| Error::shape("QWeight::stack", "no parts"))?;
        let (cols, group_size, groups) = (first.cols, first.group_size, first.groups);
        let mut chunks = Vec::new();
        let mut rows = 0;
        // One scale for the stacked weight: the smallest keeps every part in range.
        let mut f16_scale = parts.iter().map(|p| p.f16_scale).try_fold(f32::INFINITY, |a, s| s.map(|s| a.min(s)));
        if f16_scale == Some(f32::INFINITY) {
            f16_scale = None;
        }
        for p in parts {
            if p.cols != cols || p.group_size != group_size {
                return Err(Error::shape(
                    "QWeight::stack",
                    format!("K {} / group {} vs K {cols} / group {group_size}", p.cols, p.group_size),
                ));
            }
            for mut c in p.chunks {
                c.row0 += rows;
                chunks.push(c);
            }
            rows += p.rows;
        }
        Ok(QWeight { rows, cols, group_size, groups, chunks, f16_scale })
    }

    /// Bytes this weight occupies on the device.
    pub fn bytes(&self) -> u64 {
        let mut tables: Vec<&GpuBuffer> = Vec::new();
        for g in self.chunks.iter().filter_map(|c| c.g_idx.as_ref()) {
            if !tables.contains(&g) {
                tables.push(g);
            }
        }
        tables.iter().map(|b| b.size).sum::<u64>()
            + self.chunks.iter().map(|c| c.qweight.size + c.groups.size).sum::<u64>()
    }
}
