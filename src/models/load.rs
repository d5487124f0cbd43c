//! The loader every model uses: tensors fetched by prefix path (`VarBuilder`, which checks names and
//! shapes) and uploaded to the device with a progress callback — candle's `VarBuilder` + `linear_b`.
//! A Linear is dense (f32/f16/bf16, kept in its dtype) or GPTQ int4 (repacked, never dequantized),
//! decided by the checkpoint's quantization config.

use crate::error::{Error, Result};
use crate::gpu::{Context, GpuBuffer};
use crate::loader::config::QuantizeConfig;
use crate::loader::qkv::{self, QkvHeads};
use crate::loader::{TensorView, VarBuilder};
use crate::tensor::{self, DType, GptqParts, Linear, QWeight, Weight};

/// Loading progress: (bytes uploaded, bytes total).
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

/// Uploads tensors and reports progress.
pub struct Uploader<'a> {
    pub ctx: &'a Context,
    /// GPTQ settings when the checkpoint's Linears are int4.
    pub quant: Option<QuantizeConfig>,
    done: u64,
    total: u64,
    progress: Progress<'a>,
}

impl<'a> Uploader<'a> {
    pub fn new(ctx: &'a Context, quant: Option<QuantizeConfig>, total: u64, progress: Progress<'a>) -> Uploader<'a> {
        Uploader { ctx, quant, done: 0, total, progress }
    }

    /// Count `bytes` as read from the checkpoint.
    pub fn tick(&mut self, bytes: usize) {
        self.done += bytes as u64;
        (self.progress)(self.done.min(self.total), self.total);
    }

    /// Report completion (tensors the model does not use still count in the total).
    pub fn finish(&mut self) {
        (self.progress)(self.total, self.total);
    }

    /// An f32 vector `[n]` named `name` under `vb` (any float dtype in the file).
    pub fn vector(&mut self, vb: &VarBuilder, n: usize, name: &str) -> Result<GpuBuffer> {
        let t = vb.get(&[n], name)?;
        self.tick(t.data.len());
        self.ctx.upload_f32(&vb.path(name), &t.to_f32_vec()?)
    }

    /// As [`Uploader::vector`], `None` when the tensor is absent.
    pub fn vector_opt(&mut self, vb: &VarBuilder, n: usize, name: &str) -> Result<Option<GpuBuffer>> {
        if vb.contains(name) {
            self.vector(vb, n, name).map(Some)
        } else {
            Ok(None)
        }
    }

    /// A dense table `vb.weight` `[rows, cols]`, uploaded in its own dtype (embeddings, lm_head).
    pub fn table(&mut self, vb: &VarBuilder, rows: usize, cols: usize) -> Result<Weight> {
        let w = vb.get(&[rows, cols], "weight")?;
        self.dense(&w, rows, cols, w.data)
    }

    fn dense(&mut self, t: &TensorView, rows: usize, cols: usize, data: &[u8]) -> Result<Weight> {
        self.tick(data.len());
        Weight::upload(self.ctx, t.name, t.dtype, rows, cols, data)
    }

    /// The Linear under `vb.pp(name)` for each of `names`, stacked along `out` (gate|up); each
    /// has weight `[out, in]`: dense `weight`, or GPTQ `qweight`/`qzeros`/`scales`/optional `g_idx`.
    pub fn linear(&mut self, vb: &VarBuilder, names: &[&str], out: usize, inp: usize) -> Result<Linear> {
        let parts: Vec<VarBuilder> = names.iter().map(|n| vb.pp(n)).collect();
        self.linear_parts(&parts, out, inp)
    }

    /// The Linear at `vb` (weight `[out, in]`) with its optional `bias` `[out]`.
    pub fn linear_b(&mut self, vb: &VarBuilder, out: usize, inp: usize) -> Result<(Linear, Option<GpuBuffer>)> {
        let w = self.linear_parts(std::slice::from_ref(vb), out, inp)?;
        Ok((w, self.vector_opt(vb, out, "bias")?))
    }

    fn linear_parts(&mut self, parts: &[VarBuilder], out: usize, inp: usize) -> Result<Linear> {
        let Some(q) = self.quant.clone() else {
            let mut data = Vec::new();
            let mut first: Option<TensorView> = None;
            for v in parts {
                let w = v.get(&[out, inp], "weight")?;
                if first.as_ref().is_some_and(|f| f.dtype != w.dtype) {
                    return Err(Error::Config(format!("{}: dtype differs from its sibling", w.name)));
                }
                data.extend_from_slice(w.data);
                first.get_or_insert(w);
            }
            let first = first.ok_or_else(|| Error::Config("a Linear of no parts".into()))?;
            return Ok(Linear::Dense(self.dense(&first, out * parts.len(), inp, &data)?));
        };
        let g = q.group_size as usize;
        let mut qs = Vec::new();
        for v in parts {
            let qw = v.get_with_dtype(&[inp / 8, out], DType::I32, "qweight")?;
            let qz = v.get_with_dtype(&[inp / g, out / 8], DType::I32, "qzeros")?;
            let sc = v.get_with_dtype(&[inp / g, out], DType::F16, "scales")?;
            let gi = v.get_opt(&[inp], "g_idx")?.map(|t| t.data);
            self.tick(qw.data.len() + qz.data.len() + sc.data.len());
            qs.push(QWeight::upload(self.ctx, qw.name, inp, out, g, qw.data, qz.data, sc.data, gi)?);
        }
        Ok(Linear::Q4(QWeight::stack(qs)?))
    }

    /// The fused `qkv_proj` of 360Zhinao (spec §2.3: rows interleaved per KV head, with bias) as one
    /// Linear `[(H + 2·Hkv)·D, C]` with rows Q | K | V (the checkpoint's per-KV-head interleave
    /// undone), and its optional bias in the same order.
    pub fn qkv(&mut self, vb: &VarBuilder, heads: &QkvHeads, c: usize) -> Result<(Linear, Option<GpuBuffer>)> {
        let n = heads.fused_dim();
        let bias = match vb.get_opt(&[n], "bias")? {
            Some(bias) => {
                self.tick(bias.data.len());
                let raw = qkv::deinterleave_bias(bias.data, bias.dtype.size(), heads)?;
                Some(self.ctx.upload_f32(&vb.path("bias"), &tensor::to_f32(bias.dtype, &raw))?)
            }
            None => None,
        };
        let linear = match self.quant.clone() {
            None => {
                let w = vb.get(&[n, c], "weight")?;
                let data = qkv::deinterleave_rows(w.data, c * w.dtype.size(), heads)?;
                Linear::Dense(self.dense(&w, n, c, &data)?)
            }
            Some(q) => {
                let g = q.group_size as usize;
                let qw = vb.get_with_dtype(&[c / 8, n], DType::I32, "qweight")?;
                let qz = vb.get_with_dtype(&[c / g, n / 8], DType::I32, "qzeros")?;
                let sc = vb.get_with_dtype(&[c / g, n], DType::F16, "scales")?;
                let gi = vb.get_opt(&[c], "g_idx")?;
                let qw_d = qkv::deinterleave_gptq_qweight(qw.data, heads)?;
                let qz_d = qkv::deinterleave_gptq_qzeros(qz.data, heads)?;
                let sc_d = qkv::deinterleave_gptq_scales(sc.data, heads)?;
                self.tick(qw.data.len() + qz.data.len() + sc.data.len());
                let gi = gi.as_ref().map(|t| t.data);
                Linear::Q4(QWeight::upload(self.ctx, qw.name, c, n, g, &qw_d, &qz_d, &sc_d, gi)?)
            }
        };
        Ok((linear, bias))
    }

    /// gate_proj and up_proj under `vb` (each `[out, in]`) as one `[2·out, in]` Linear with their rows
    /// interleaved (2i = gate_i, 2i + 1 = up_i: the layout of the fused SiLU·mul), and `true`; or,
    /// for GPTQ halves with different act-order group maps, stacked (gate | up) and `false`.
    pub fn gate_up<'f>(&mut self, vb: &VarBuilder<'f>, out: usize, inp: usize) -> Result<(Linear, bool)> {
        let (g, u) = (vb.pp("gate_proj"), vb.pp("up_proj"));
        let Some(q) = self.quant.clone() else {
            let (wg, wu) = (g.get(&[out, inp], "weight")?, u.get(&[out, inp], "weight")?);
            if wg.dtype != wu.dtype {
                return Err(Error::Config(format!("{}: dtype differs from its sibling", wu.name)));
            }
            self.tick(wg.data.len() + wu.data.len());
            let w = Weight::upload_interleaved(self.ctx, wg.name, wg.dtype, out, inp, wg.data, wu.data)?;
            return Ok((Linear::Dense(w), true));
        };
        let gs = q.group_size as usize;
        let parts = |v: &VarBuilder<'f>| -> Result<[Option<TensorView<'f>>; 4]> {
            Ok([
                Some(v.get_with_dtype(&[inp / 8, out], DType::I32, "qweight")?),
                Some(v.get_with_dtype(&[inp / gs, out / 8], DType::I32, "qzeros")?),
                Some(v.get_with_dtype(&[inp / gs, out], DType::F16, "scales")?),
                v.get_opt(&[inp], "g_idx")?,
            ])
        };
        let (pg, pu) = (parts(&g)?, parts(&u)?);
        let gptq = |p: &[Option<TensorView<'f>>; 4]| -> Option<GptqParts<'f>> {
            Some(GptqParts {
                qweight: p[0].as_ref()?.data,
                qzeros: p[1].as_ref()?.data,
                scales: p[2].as_ref()?.data,
                g_idx: p[3].as_ref().map(|t| t.data),
            })
        };
        let (a, b) = (
            gptq(&pg).ok_or_else(|| Error::Config("gate_proj".into()))?,
            gptq(&pu).ok_or_else(|| Error::Config("up_proj".into()))?,
        );
        let label = vb.path("gate_up");
        match QWeight::upload_interleaved(self.ctx, &label, inp, out, gs, a, b) {
            Ok(w) => {
                self.tick([&pg, &pu].iter().flat_map(|p| p.iter().take(3)).flatten().map(|t| t.data.len()).sum());
                Ok((Linear::Q4(w), true))
            }
            Err(Error::Unsupported(_)) => Ok((self.linear(vb, &["gate_proj", "up_proj"], out, inp)?, false)),
            Err(e) => Err(e),
        }
    }
}
