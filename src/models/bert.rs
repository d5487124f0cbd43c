//! BERT encoder (`BertModel`), the architecture of 360Zhinao-search (spec §6): word + position +
//! token-type embeddings and LayerNorm, then post-LN layers of bidirectional multi-head attention
//! with a padding mask (separate q/k/v Linear with bias) and a GELU(erf) feed-forward. The pooler is
//! not loaded (the embedding model takes the `[CLS]` state or a mean). Reference: transformers
//! `modeling_bert.py`; goldens from `tools/fixtures/make_fixtures.py` (`assets/goldens/tiny-bert.*`).
//!
//! A forward runs a padded batch `[B, S]` (`T = B·S` rows) in one submission. Attention reuses the
//! causal LM's flash prefill kernel in its f32-K/V variant (`attention::prefill_kv_f32`): the k, v
//! projections `[B, S, H, D]` are read in place as a cache of `T` rows with `kv_stride = S`,
//! `causal = false` and the true lengths `lens[B]` (no f16 rounding: the f16 cache put the
//! hidden-state NMSE at ~2.5e-8 against PyTorch, f32 K/V at the f32 noise floor). Padded query rows
//! are junk (they are never pooled).
//!
//! Only token type 0 is used (single-sequence embedding), so `token_type_embeddings[0]` is folded
//! into the position table at load: one gather and one fused add + LayerNorm build the input.

use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gpu::{Context, Dispatch, GpuBuffer};
use crate::loader::config::BertConfig;
use crate::loader::{VarBuilder, WeightFiles};
use crate::ops;
use crate::ops::attention::{self, AttnShape};
use crate::rng::Rng;
use crate::tensor::{from_f32, DType, Weight};

pub use crate::models::zhinao::Progress;

/// A Linear layer: weight `[out, in]` (f32/f16/bf16) and f32 bias `[out]`.
pub struct Dense {
    pub weight: Weight,
    pub bias: GpuBuffer,
}

impl Dense {
    /// y[T, out] = x[T, in] · Wᵀ + b.
    fn record(&self, ctx: &Context, x: &GpuBuffer, t: usize, y: &GpuBuffer) -> Result<Vec<Dispatch>> {
        ops::matmul::matmul(ctx, x, t, &self.weight, Some(&self.bias), y, false)
    }
}

/// LayerNorm weight and bias, `[C]` f32.
pub struct LayerNorm {
    pub weight: GpuBuffer,
    pub bias: GpuBuffer,
}

/// One encoder layer (`encoder.layer.{i}`).
pub struct BertLayer {
    pub query: Dense,
    pub key: Dense,
    pub value: Dense,
    /// `attention.output.dense` and its LayerNorm.
    pub attn_out: Dense,
    pub attn_norm: LayerNorm,
    /// `intermediate.dense` [I, C].
    pub intermediate: Dense,
    /// `output.dense` [C, I] and its LayerNorm.
    pub output: Dense,
    pub output_norm: LayerNorm,
}

pub struct Bert {
    pub cfg: BertConfig,
    pub ctx: Arc<Context>,
    /// `word_embeddings` [V, C].
    pub word_embeddings: Weight,
    /// `position_embeddings + token_type_embeddings[0]` [P, C] f32.
    pub position_type: Weight,
    pub embed_norm: LayerNorm,
    pub layers: Vec<BertLayer>,
    /// Bytes of weights on the device.
    pub weight_bytes: u64,
}

/// A padded batch: `ids` [B, S] (padding with any valid id), `lens` [B] true lengths (1..=S).
#[derive(Clone, Debug)]
pub struct Batch {
    pub b: usize,
    pub s: usize,
    pub ids: Vec<u32>,
    pub lens: Vec<u32>,
}

impl Batch {
    /// Pads `seqs` to the longest with `pad`.
    pub fn pad(seqs: &[&[u32]], pad: u32) -> Result<Batch> {
        let s = seqs.iter().map(|q| q.len()).max().unwrap_or(0);
        if seqs.is_empty() || seqs.iter().any(|q| q.is_empty()) {
            return Err(Error::Input("a batch needs at least one sequence, each of at least one token".into()));
        }
        let mut ids = Vec::with_capacity(seqs.len() * s);
        for q in seqs {
            ids.extend_from_slice(q);
            ids.extend(std::iter::repeat_n(pad, s - q.len()));
        }
        Ok(Batch { b: seqs.len(), s, ids, lens: seqs.iter().map(|q| q.len() as u32).collect() })
    }

    /// Rows T = B·S.
    pub fn tokens(&self) -> usize {
        self.b * self.s
    }
}

/// Activation buffers for up to `cap` rows (T = B·S), reused by every layer and every batch.
pub struct Workspace {
    cap: usize,
    ids: GpuBuffer,   // [T] u32 token ids
    pos: GpuBuffer,   // [T] u32 position ids
    lens: GpuBuffer,  // [B] u32 (B ≤ T)
    h: GpuBuffer,     // [T, C] layer input / output
    h2: GpuBuffer,    // [T, C] after the attention block
    o: GpuBuffer,     // [T, C] sub-layer output before residual + LayerNorm
    q: GpuBuffer,     // [T, H·D]
    k: GpuBuffer,     // [T, H·D]
    v: GpuBuffer,     // [T, H·D]
    attn: GpuBuffer,  // [T, H·D]
    inter: GpuBuffer, // [T, I]
}

impl Workspace {
    pub fn capacity(&self) -> usize {
        self.cap
    }
}

impl Bert {
    /// Load a HF `BertModel` directory (`config.json`; `model.safetensors`, shards, or
    /// `pytorch_model.bin`; tensor names with or without the `bert.` prefix).
    pub fn load(ctx: Arc<Context>, dir: &Path, progress: Progress) -> Result<Bert> {
        let cfg = BertConfig::load(dir)?;
        let files = WeightFiles::open(dir)?;
        Bert::from_files(ctx, cfg, &files, progress)
    }

    pub fn from_files(ctx: Arc<Context>, cfg: BertConfig, files: &WeightFiles, progress: Progress) -> Result<Bert> {
        cfg.validate()?;
        if cfg.hidden_act != "gelu" {
            return Err(Error::Unsupported(format!(
                "BERT hidden_act '{}' (only 'gelu', the erf form, has a kernel)",
                cfg.hidden_act
            )));
        }
        let (c, i, v, p) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.max_position_embeddings);
        let mut vb = VarBuilder::new(files);
        if files.contains("bert.embeddings.word_embeddings.weight") {
            vb = vb.pp("bert");
        }
        let mut ld = Loader { ctx: &ctx, done: 0, total: files.total_bytes() as u64, progress };
        let e = vb.pp("embeddings");
        let word_embeddings = ld.matrix(&e.pp("word_embeddings"), v, c)?;
        let pos = e.pp("position_embeddings").get(&[p, c], "weight")?.to_f32_vec()?;
        let tt = e.pp("token_type_embeddings").get(&[cfg.type_vocab_size, c], "weight")?.to_f32_vec()?;
        let pos_type: Vec<f32> = pos.iter().enumerate().map(|(j, x)| x + tt[j % c]).collect();
        ld.tick(pos.len() * 4 + tt.len() * 4);
        let position_type = Weight::from_f32(&ctx, "position + token type 0", p, c, &pos_type)?;
        let embed_norm = ld.layer_norm(&e.pp("LayerNorm"), c)?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let lv = vb.pp("encoder").pp("layer").pp(l);
            let att = lv.pp("attention");
            let s = att.pp("self");
            layers.push(BertLayer {
                query: ld.dense(&s.pp("query"), c, c)?,
                key: ld.dense(&s.pp("key"), c, c)?,
                value: ld.dense(&s.pp("value"), c, c)?,
                attn_out: ld.dense(&att.pp("output").pp("dense"), c, c)?,
                attn_norm: ld.layer_norm(&att.pp("output").pp("LayerNorm"), c)?,
                intermediate: ld.dense(&lv.pp("intermediate").pp("dense"), i, c)?,
                output: ld.dense(&lv.pp("output").pp("dense"), c, i)?,
                output_norm: ld.layer_norm(&lv.pp("output").pp("LayerNorm"), c)?,
            });
        }
        ctx.sync()?;
        let dense = |d: &Dense| d.weight.bytes();
        let weight_bytes = word_embeddings.bytes()
            + position_type.bytes()
            + layers
                .iter()
                .map(|l| {
                    dense(&l.query)
                        + dense(&l.key)
                        + dense(&l.value)
                        + dense(&l.attn_out)
                        + dense(&l.intermediate)
                        + dense(&l.output)
                })
                .sum::<u64>();
        Ok(Bert { cfg, ctx, word_embeddings, position_type, embed_norm, layers, weight_bytes })
    }

    /// Activation buffers for batches of up to `cap` rows (B·S). Fails when one activation would
    /// not fit a storage binding (lower the token budget).
    pub fn workspace(&self, cap: usize) -> Result<Workspace> {
        let cfg = &self.cfg;
        let (c, i) = (cfg.hidden_size, cfg.intermediate_size);
        if cap == 0 {
            return Err(Error::Input("workspace of 0 tokens".into()));
        }
        let widest = (cap * c.max(i) * 4) as u64;
        if widest > self.ctx.limits.max_binding {
            return Err(Error::LimitTooSmall {
                what: format!("[{cap} tokens, {}] activations (lower the batch token budget)", c.max(i)),
                requested: widest,
                available: self.ctx.limits.max_binding,
            });
        }
        let ctx = &*self.ctx;
        let f = |label: &str, n: usize| ctx.buffer(label, (n * 4) as u64);
        Ok(Workspace {
            cap,
            ids: f("bert ids", cap)?,
            pos: f("bert positions", cap)?,
            lens: f("bert lens", cap)?,
            h: f("bert h", cap * c)?,
            h2: f("bert h2", cap * c)?,
            o: f("bert o", cap * c)?,
            q: f("bert q", cap * c)?,
            k: f("bert k", cap * c)?,
            v: f("bert v", cap * c)?,
            attn: f("bert attn", cap * c)?,
            inter: f("bert inter", cap * i)?,
        })
    }

    /// Upload `batch`'s ids, positions and lengths into `ws` and record the whole forward; after
    /// running, `ws.h` holds last_hidden_state [B, S, C] (see [`Bert::read_hidden`]).
    pub fn record(&self, ws: &Workspace, batch: &Batch) -> Result<Vec<Dispatch>> {
        let ctx = &*self.ctx;
        let cfg = &self.cfg;
        let (b, s, t) = (batch.b, batch.s, batch.tokens());
        let (c, h, d, i) = (cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim(), cfg.intermediate_size);
        let eps = cfg.layer_norm_eps as f32;
        if t == 0 || batch.ids.len() != t || batch.lens.len() != b {
            return Err(Error::Input(format!(
                "batch of B = {b}, S = {s} with {} ids and {} lengths",
                batch.ids.len(),
                batch.lens.len()
            )));
        }
        if t > ws.cap {
            return Err(Error::Input(format!("batch of {t} padded tokens exceeds the workspace of {}", ws.cap)));
        }
        if s > cfg.max_position_embeddings {
            return Err(Error::ContextOverflow {
                tokens: s,
                ctx: cfg.max_position_embeddings,
                hint: " (max_position_embeddings)".into(),
            });
        }
        if let Some(l) = batch.lens.iter().find(|&&l| l == 0 || l as usize > s) {
            return Err(Error::Input(format!("sequence length {l} outside 1..={s}")));
        }
        let positions: Vec<u32> = (0..t).map(|r| (r % s) as u32).collect();
        ctx.write(&ws.ids, 0, bytemuck::cast_slice(&batch.ids));
        ctx.write(&ws.pos, 0, bytemuck::cast_slice(&positions));
        ctx.write(&ws.lens, 0, bytemuck::cast_slice(&batch.lens));

        // Embeddings: h = LayerNorm(word[ids] + (position + type0)[pos]).
        let mut ds = ops::embedding::embedding(ctx, &self.word_embeddings, &batch.ids, &ws.ids, &ws.o)?;
        ds.extend(ops::embedding::embedding(ctx, &self.position_type, &positions, &ws.pos, &ws.h2)?);
        ds.push(ops::norm::layer_norm(
            ctx,
            &ws.o,
            Some(&ws.h2),
            t,
            c,
            &self.embed_norm.weight,
            &self.embed_norm.bias,
            eps,
            &ws.h,
        )?);

        let shape = AttnShape { b, s, h, hkv: h, d, kv_stride: s, q_stride: h * d, causal: false };
        for layer in &self.layers {
            // Self-attention over each sequence's first lens[b] keys.
            ds.extend(layer.query.record(ctx, &ws.h, t, &ws.q)?);
            ds.extend(layer.key.record(ctx, &ws.h, t, &ws.k)?);
            ds.extend(layer.value.record(ctx, &ws.h, t, &ws.v)?);
            // ws.pos[0] = 0 (position ids restart per sequence): the attention's pos0.
            ds.push(attention::prefill_kv_f32(ctx, &ws.q, &ws.k, &ws.v, &ws.pos, &ws.attn, &shape, Some(&ws.lens))?);
            // h2 = LayerNorm(attn · Woᵀ + bo + h).
            ds.extend(layer.attn_out.record(ctx, &ws.attn, t, &ws.o)?);
            ds.push(ops::norm::layer_norm(
                ctx,
                &ws.o,
                Some(&ws.h),
                t,
                c,
                &layer.attn_norm.weight,
                &layer.attn_norm.bias,
                eps,
                &ws.h2,
            )?);
            // h = LayerNorm(gelu(h2 · Wiᵀ + bi) · Wo2ᵀ + bo2 + h2).
            ds.extend(layer.intermediate.record(ctx, &ws.h2, t, &ws.inter)?);
            ds.push(ops::elementwise::gelu(ctx, &ws.inter, t * i)?);
            ds.extend(layer.output.record(ctx, &ws.inter, t, &ws.o)?);
            ds.push(ops::norm::layer_norm(
                ctx,
                &ws.o,
                Some(&ws.h2),
                t,
                c,
                &layer.output_norm.weight,
                &layer.output_norm.bias,
                eps,
                &ws.h,
            )?);
        }
        Ok(ds)
    }

    /// last_hidden_state [B, S, C] of the batch last run in `ws` (padded rows are not meaningful).
    pub fn read_hidden(&self, ws: &Workspace, batch: &Batch) -> Result<Vec<f32>> {
        self.ctx.read_f32(&ws.h, 0, batch.tokens() * self.cfg.hidden_size)
    }

    /// Run one padded batch: last_hidden_state [B, S, C].
    pub fn forward(&self, ws: &Workspace, batch: &Batch) -> Result<Vec<f32>> {
        let ds = self.record(ws, batch)?;
        self.ctx.run(&ds.iter().collect::<Vec<_>>())?;
        self.read_hidden(ws, batch)
    }
}

/// Loading progress and uploads.
struct Loader<'a> {
    ctx: &'a Context,
    done: u64,
    total: u64,
    progress: Progress<'a>,
}

impl Loader<'_> {
    fn tick(&mut self, bytes: usize) {
        self.done += bytes as u64;
        (self.progress)(self.done.min(self.total), self.total);
    }

    /// An f32 vector `[n]` named `name` under `vb`.
    fn vector(&mut self, vb: &VarBuilder, n: usize, name: &str) -> Result<GpuBuffer> {
        let t = vb.get(&[n], name)?;
        self.tick(t.data.len());
        self.ctx.upload_f32(&vb.path(name), &t.to_f32_vec()?)
    }

    /// `vb.weight` `[rows, cols]`, uploaded in its own dtype.
    fn matrix(&mut self, vb: &VarBuilder, rows: usize, cols: usize) -> Result<Weight> {
        let w = vb.get(&[rows, cols], "weight")?;
        self.tick(w.data.len());
        Weight::upload(self.ctx, w.name, w.dtype, rows, cols, w.data)
    }

    fn dense(&mut self, vb: &VarBuilder, out: usize, inp: usize) -> Result<Dense> {
        Ok(Dense { weight: self.matrix(vb, out, inp)?, bias: self.vector(vb, out, "bias")? })
    }

    /// LayerNorm `weight`/`bias`, or the old TF-converted names `gamma`/`beta`.
    fn layer_norm(&mut self, vb: &VarBuilder, c: usize) -> Result<LayerNorm> {
        let (w, b) =
            if !vb.contains("weight") && vb.contains("gamma") { ("gamma", "beta") } else { ("weight", "bias") };
        Ok(LayerNorm { weight: self.vector(vb, c, w)?, bias: self.vector(vb, c, b)? })
    }
}

/// An in-memory `BertModel` checkpoint of random weights (normal, std 0.02; LayerNorm weight 1,
/// bias 0) in `dtype` for matrices and f32 for vectors: benchmarks and tests without a file.
pub fn random_checkpoint(cfg: &BertConfig, dtype: DType, seed: u64) -> Result<WeightFiles> {
    let (c, i) = (cfg.hidden_size, cfg.intermediate_size);
    let mut rng = Rng::new(seed);
    let mut tensors: Vec<(String, DType, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut matrix = |name: String, rows: usize, cols: usize, dt: DType| {
        let v = rng.normals(rows * cols, 0.02);
        (name, dt, vec![rows, cols], from_f32(dt, &v))
    };
    tensors.push(matrix("embeddings.word_embeddings.weight".into(), cfg.vocab_size, c, dtype));
    tensors.push(matrix("embeddings.position_embeddings.weight".into(), cfg.max_position_embeddings, c, DType::F32));
    tensors.push(matrix("embeddings.token_type_embeddings.weight".into(), cfg.type_vocab_size, c, DType::F32));
    let mut norms = vec!["embeddings.LayerNorm".to_string()];
    let mut biases = Vec::new();
    for l in 0..cfg.num_hidden_layers {
        let p = format!("encoder.layer.{l}");
        for (name, rows, cols) in [
            ("attention.self.query", c, c),
            ("attention.self.key", c, c),
            ("attention.self.value", c, c),
            ("attention.output.dense", c, c),
            ("intermediate.dense", i, c),
            ("output.dense", c, i),
        ] {
            tensors.push(matrix(format!("{p}.{name}.weight"), rows, cols, dtype));
            biases.push((format!("{p}.{name}.bias"), rows));
        }
        norms.push(format!("{p}.attention.output.LayerNorm"));
        norms.push(format!("{p}.output.LayerNorm"));
    }
    for (name, n) in biases {
        tensors.push((name, DType::F32, vec![n], from_f32(DType::F32, &rng.normals(n, 0.02))));
    }
    for n in norms {
        tensors.push((format!("{n}.weight"), DType::F32, vec![c], from_f32(DType::F32, &vec![1.0; c])));
        tensors.push((format!("{n}.bias"), DType::F32, vec![c], from_f32(DType::F32, &vec![0.0; c])));
    }
    WeightFiles::from_bytes("random BERT", safetensors_bytes(&tensors)?)
}

/// Serialise tensors as one safetensors file (header JSON, then the data in order).
fn safetensors_bytes(tensors: &[(String, DType, Vec<usize>, Vec<u8>)]) -> Result<Vec<u8>> {
    let mut header = serde_json::Map::new();
    let mut off = 0usize;
    for (name, dt, shape, data) in tensors {
        let dtype = match dt {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            other => return Err(Error::Unsupported(format!("random checkpoint in {other}"))),
        };
        header.insert(
            name.clone(),
            serde_json::json!({ "dtype": dtype, "shape": shape, "data_offsets": [off, off + data.len()] }),
        );
        off += data.len();
    }
    let mut json = serde_json::Value::Object(header).to_string().into_bytes();
    while json.len() % 8 != 0 {
        json.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + json.len() + off);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    for (_, _, _, data) in tensors {
        out.extend_from_slice(data);
    }
    Ok(out)
}
