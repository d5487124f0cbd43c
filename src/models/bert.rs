//! BERT encoder (`BertModel`), the architecture of 360Zhinao-search (spec §6): word + position +
//! token-type embeddings and LayerNorm, then post-LN layers of bidirectional multi-head attention
//! with a padding mask (separate q/k/v Linear with bias) and a GELU(erf) feed-forward. The pooler is
//! not loaded (the embedding model takes the `[CLS]` state or a mean). Reference: transformers
//! `modeling_bert.py`; goldens from `tools/fixtures/make_fixtures.py` (`assets/goldens/tiny-bert.*`).
//!
//! A forward runs a padded batch `[B, S]` (`T = B·S` rows) as one graph through the executor,
//! recorded once per shape bucket (S rounded up to a multiple of 32, B to a power of two; pad
//! sequences have length 1 and are dropped) and replayed. Attention reuses the causal LM's flash
//! prefill kernel in its f32-K/V variant: the k, v projections `[B, S, H, D]` are read in place as
//! a cache of `T` rows with `kv_stride = S`, `causal = false` and the true lengths `lens[B]` (no
//! f16 rounding: the f16 cache put the hidden-state NMSE at ~2.5e-8 against PyTorch, f32 K/V at
//! the f32 noise floor). Padded query rows are junk (they are never pooled).
//!
//! Only token type 0 is used (single-sequence embedding), so `token_type_embeddings[0]` is folded
//! into the position table at load: one gather and one fused add + LayerNorm build the input.

use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::gpu::{Context, GpuBuffer};
use crate::graph::{ExeCache, Graph, WeightRef, Weights};
use crate::loader::config::BertConfig;
use crate::loader::{VarBuilder, WeightFiles};
use crate::models::decoder::unknown;
pub use crate::models::load::Progress;
use crate::models::load::Uploader;
use crate::ops;
use crate::ops::attention::AttnShape;
use crate::rng::Rng;
use crate::tensor::{from_f32, DType, Linear, Weight};

/// A Linear layer: weight `[out, in]` (f32/f16/bf16) and f32 bias `[out]`.
pub struct Dense {
    pub linear: Linear,
    pub bias: GpuBuffer,
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
    run: Mutex<Runner>,
}

/// The recorded forwards by (B, S) bucket and the external buffers they bind: ids, positions
/// and lens (u32) and the last hidden state `hidden` [T, C], for up to `rows` rows.
struct Runner {
    exes: ExeCache<(usize, usize)>,
    externals: Vec<(String, GpuBuffer)>,
    rows: usize,
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
        let mut ld = Uploader::new(&ctx, None, files.total_bytes() as u64, progress);
        let e = vb.pp("embeddings");
        let word_embeddings = ld.table(&e.pp("word_embeddings"), v, c)?;
        let pos = e.pp("position_embeddings").get(&[p, c], "weight")?.to_f32_vec()?;
        let tt = e.pp("token_type_embeddings").get(&[cfg.type_vocab_size, c], "weight")?.to_f32_vec()?;
        let pos_type: Vec<f32> = pos.iter().enumerate().map(|(j, x)| x + tt[j % c]).collect();
        ld.tick(pos.len() * 4 + tt.len() * 4);
        let position_type = Weight::from_f32(&ctx, "position + token type 0", p, c, &pos_type)?;
        let embed_norm = layer_norm(&mut ld, &e.pp("LayerNorm"), c)?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let lv = vb.pp("encoder").pp("layer").pp(l);
            let att = lv.pp("attention");
            let s = att.pp("self");
            layers.push(BertLayer {
                query: dense(&mut ld, &s.pp("query"), c, c)?,
                key: dense(&mut ld, &s.pp("key"), c, c)?,
                value: dense(&mut ld, &s.pp("value"), c, c)?,
                attn_out: dense(&mut ld, &att.pp("output").pp("dense"), c, c)?,
                attn_norm: layer_norm(&mut ld, &att.pp("output").pp("LayerNorm"), c)?,
                intermediate: dense(&mut ld, &lv.pp("intermediate").pp("dense"), i, c)?,
                output: dense(&mut ld, &lv.pp("output").pp("dense"), c, i)?,
                output_norm: layer_norm(&mut ld, &lv.pp("output").pp("LayerNorm"), c)?,
            });
        }
        ctx.sync()?;
        ld.finish();
        let dense = |d: &Dense| d.linear.bytes();
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
        let run = Mutex::new(Runner { exes: ExeCache::new(8), externals: Vec::new(), rows: 0 });
        Ok(Bert { cfg, ctx, word_embeddings, position_type, embed_norm, layers, weight_bytes, run })
    }

    /// Most rows (B·S) one forward can take: every activation must fit one storage binding.
    pub fn max_rows(&self) -> usize {
        let widest = self.cfg.hidden_size.max(self.cfg.intermediate_size) * 4;
        (self.ctx.limits.max_binding as usize / widest.max(1)).max(1)
    }

    /// How many forward graphs were recorded so far (each shape bucket once).
    pub fn recordings(&self) -> usize {
        self.run.lock().map(|r| r.exes.recordings()).unwrap_or(0)
    }

    /// The encoder over a padded batch [B, S] as a graph. External tensors: `ids`, `pos` [T] u32,
    /// `lens` [B] u32 and `hidden` [T, C] (last_hidden_state).
    fn graph(&self, b: usize, s: usize) -> Result<Graph> {
        let cfg = &self.cfg;
        let (c, h, d, i) = (cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim(), cfg.intermediate_size);
        let (t, eps) = (b * s, cfg.layer_norm_eps as f32);
        let f32s = |n: usize| (n * 4) as u64;
        let mut g = Graph::default();
        let (ids, pos, lens) = (g.external("ids", f32s(t)), g.external("pos", f32s(t)), g.external("lens", f32s(b)));
        let hidden = g.external("hidden", f32s(t * c));
        let layers = self.layers.len();
        // The last LayerNorm of the stack writes the external output.
        let out = |g: &mut Graph, name: &str, last: bool| if last { hidden } else { g.tensor(name, f32s(t * c)) };
        let (word, posv) = (g.tensor("word", f32s(t * c)), g.tensor("position", f32s(t * c)));
        g.node(
            "word_embeddings",
            ops::embedding::Embedding { table: WeightRef::global("word_embeddings"), t },
            &[ids],
            &[word],
        );
        g.node(
            "position_type",
            ops::embedding::Embedding { table: WeightRef::global("position_type"), t },
            &[pos],
            &[posv],
        );
        let word2 = g.in_place(word, "word+position");
        let mut hs = out(&mut g, "h.0", layers == 0);
        let ln = |weight, bias| ops::norm::LayerNorm { weight, bias, t, c, eps, residual: true };
        let embed_ln = ln(WeightRef::global("embed_norm.weight"), WeightRef::global("embed_norm.bias"));
        g.node("embeddings.LayerNorm", embed_ln, &[word, posv], &[word2, hs]);
        let shape = AttnShape { b, s, h, hkv: h, d, kv_stride: s, q_stride: c, causal: false };
        for l in 0..layers {
            let p = |name: &str| format!("layers.{l}.{name}");
            let w = |name: &'static str| WeightRef::layer(l, name);
            let lin = |weight: &'static str, bias: &'static str| ops::matmul::Linear {
                weight: WeightRef::layer(l, weight),
                bias: Some(WeightRef::layer(l, bias)),
                t,
                accumulate: false,
            };
            let (q, k, v) =
                (g.tensor(&p("q"), f32s(t * c)), g.tensor(&p("k"), f32s(t * c)), g.tensor(&p("v"), f32s(t * c)));
            g.node(p("query"), lin("query", "query.bias"), &[hs], &[q]);
            g.node(p("key"), lin("key", "key.bias"), &[hs], &[k]);
            g.node(p("value"), lin("value", "value.bias"), &[hs], &[v]);
            let attn = g.tensor(&p("attn"), f32s(t * c));
            // `pos` (the position ids, pos[0] = 0) gives attention its first position.
            let op = ops::attention::Prefill { shape, lens: true, kv_f32: true };
            g.node(p("attention"), op, &[q, k, v, pos, lens], &[attn]);
            // h2 = LayerNorm(attn · Woᵀ + bo + h).
            let o = g.tensor(&p("attn_out"), f32s(t * c));
            g.node(p("attention.output.dense"), lin("attn_out", "attn_out.bias"), &[attn], &[o]);
            let (o2, h2) = (g.in_place(o, &p("attn_out+h")), g.tensor(&p("h2"), f32s(t * c)));
            g.node(
                p("attention.output.LayerNorm"),
                ln(w("attn_norm.weight"), w("attn_norm.bias")),
                &[o, hs],
                &[o2, h2],
            );
            // h = LayerNorm(gelu(h2 · Wiᵀ + bi) · Wo2ᵀ + bo2 + h2).
            let inter = g.tensor(&p("intermediate"), f32s(t * i));
            g.node(p("intermediate.dense"), lin("intermediate", "intermediate.bias"), &[h2], &[inter]);
            let act = g.in_place(inter, &p("gelu"));
            g.node(p("gelu"), ops::elementwise::Gelu { n: t * i }, &[inter], &[act]);
            let o3 = g.tensor(&p("output"), f32s(t * c));
            g.node(p("output.dense"), lin("output", "output.bias"), &[act], &[o3]);
            let o4 = g.in_place(o3, &p("output+h2"));
            hs = out(&mut g, &p("h_out"), l + 1 == layers);
            g.node(p("output.LayerNorm"), ln(w("output_norm.weight"), w("output_norm.bias")), &[o3, h2], &[o4, hs]);
        }
        Ok(g)
    }

    /// Run one padded batch: last_hidden_state [B, S, C] (padded rows are not meaningful).
    pub fn forward(&self, batch: &Batch) -> Result<Vec<f32>> {
        let ctx = &*self.ctx;
        let cfg = &self.cfg;
        let (b, s, c) = (batch.b, batch.s, cfg.hidden_size);
        if batch.tokens() == 0 || batch.ids.len() != batch.tokens() || batch.lens.len() != b {
            return Err(Error::Input(format!(
                "batch of B = {b}, S = {s} with {} ids and {} lengths",
                batch.ids.len(),
                batch.lens.len()
            )));
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
        if let Some(id) = batch.ids.iter().find(|&&id| id as usize >= cfg.vocab_size) {
            return Err(Error::Input(format!("token id {id} outside the vocabulary of {}", cfg.vocab_size)));
        }
        let max_rows = self.max_rows();
        if b * s > max_rows {
            return Err(Error::LimitTooSmall {
                what: format!("a batch of {b}×{s} tokens (lower the batch token budget)"),
                requested: (b * s) as u64,
                available: max_rows as u64,
            });
        }
        // The shape bucket: S up to a multiple of 32 (within the positions), B up to a power of
        // two, while the rows fit. Pad sequences have length 1 and are dropped.
        let mut sb = (s.div_ceil(32) * 32).min(cfg.max_position_embeddings.max(s));
        if b * sb > max_rows {
            sb = s;
        }
        let mut bb = b.next_power_of_two();
        while bb > b && bb * sb > max_rows {
            bb /= 2;
        }
        let bb = bb.max(b);
        let t = bb * sb;
        let mut ids = vec![0u32; t];
        let mut lens = vec![1u32; bb];
        for r in 0..b {
            ids[r * sb..r * sb + s].copy_from_slice(&batch.ids[r * s..(r + 1) * s]);
            lens[r] = batch.lens[r];
        }
        let positions: Vec<u32> = (0..t).map(|r| (r % sb) as u32).collect();
        let mut run = self.run.lock().map_err(|_| Error::Device("BERT state poisoned".into()))?;
        if run.rows < t {
            let cap = t.max(max_rows.min(4096).min(4 * t));
            let f = |name: &str, n: usize| -> Result<(String, GpuBuffer)> {
                Ok((name.to_string(), ctx.buffer(name, (n * 4) as u64)?))
            };
            run.externals = vec![f("ids", cap)?, f("pos", cap)?, f("lens", cap)?, f("hidden", cap * c)?];
            run.rows = cap;
            run.exes.clear();
        }
        let run = &mut *run;
        let ext = |name: &str| run.externals.iter().find(|(n, _)| n == name).map(|(_, b)| b.clone());
        let (Some(ids_b), Some(pos_b), Some(lens_b), Some(out_b)) =
            (ext("ids"), ext("pos"), ext("lens"), ext("hidden"))
        else {
            return Err(Error::Device("BERT buffers missing".into()));
        };
        ctx.write(&ids_b, 0, bytemuck::cast_slice(&ids));
        ctx.write(&pos_b, 0, bytemuck::cast_slice(&positions));
        ctx.write(&lens_b, 0, bytemuck::cast_slice(&lens));
        if run.exes.get(&(bb, sb)).is_none() {
            let g = self.graph(bb, sb)?;
            run.exes.insert(ctx, (bb, sb), g, self, &run.externals)?;
        }
        let exe = run.exes.get(&(bb, sb)).ok_or_else(|| Error::Device("BERT executable missing".into()))?;
        exe.run(ctx)?;
        let hidden = ctx.read_f32(&out_b, 0, b * sb * c)?;
        if sb == s {
            return Ok(hidden);
        }
        Ok((0..b).flat_map(|r| hidden[r * sb * c..(r * sb + s) * c].iter().copied()).collect())
    }

    fn layer(&self, r: &WeightRef) -> Result<&BertLayer> {
        r.layer.and_then(|l| self.layers.get(l)).ok_or_else(|| unknown(r))
    }
}

impl Weights for Bert {
    fn linear(&self, r: &WeightRef) -> Result<&Linear> {
        let l = self.layer(r)?;
        Ok(match r.name {
            "query" => &l.query.linear,
            "key" => &l.key.linear,
            "value" => &l.value.linear,
            "attn_out" => &l.attn_out.linear,
            "intermediate" => &l.intermediate.linear,
            "output" => &l.output.linear,
            _ => return Err(unknown(r)),
        })
    }
    fn table(&self, r: &WeightRef) -> Result<&Weight> {
        match (r.layer, r.name) {
            (None, "word_embeddings") => Ok(&self.word_embeddings),
            (None, "position_type") => Ok(&self.position_type),
            _ => Err(unknown(r)),
        }
    }
    fn vector(&self, r: &WeightRef) -> Result<&GpuBuffer> {
        match (r.layer, r.name) {
            (None, "embed_norm.weight") => return Ok(&self.embed_norm.weight),
            (None, "embed_norm.bias") => return Ok(&self.embed_norm.bias),
            _ => {}
        }
        let l = self.layer(r)?;
        Ok(match r.name {
            "query.bias" => &l.query.bias,
            "key.bias" => &l.key.bias,
            "value.bias" => &l.value.bias,
            "attn_out.bias" => &l.attn_out.bias,
            "intermediate.bias" => &l.intermediate.bias,
            "output.bias" => &l.output.bias,
            "attn_norm.weight" => &l.attn_norm.weight,
            "attn_norm.bias" => &l.attn_norm.bias,
            "output_norm.weight" => &l.output_norm.weight,
            "output_norm.bias" => &l.output_norm.bias,
            _ => return Err(unknown(r)),
        })
    }
}

fn dense(up: &mut Uploader, vb: &VarBuilder, out: usize, inp: usize) -> Result<Dense> {
    let (linear, bias) = up.linear_b(vb, out, inp)?;
    let bias =
        bias.ok_or_else(|| Error::MissingTensor { name: vb.path("bias"), looked_in: "the BERT checkpoint".into() })?;
    Ok(Dense { linear, bias })
}

/// LayerNorm `weight`/`bias`, or the old TF-converted names `gamma`/`beta`.
fn layer_norm(up: &mut Uploader, vb: &VarBuilder, c: usize) -> Result<LayerNorm> {
    let (w, b) = if !vb.contains("weight") && vb.contains("gamma") { ("gamma", "beta") } else { ("weight", "bias") };
    Ok(LayerNorm { weight: up.vector(vb, c, w)?, bias: up.vector(vb, c, b)? })
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
    while !json.len().is_multiple_of(8) {
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
