//! The `config.json` family. Field names are the JSON names (spec §2.1, §4.3, §5, §6).
//!
//! - [`ZhinaoConfig`]: `config.json` of a ZhinaoForCausalLM (chat, base, Int4, reranker backbone).
//! - [`GenerationConfig`]: `generation_config.json`, spec §4.3 defaults when absent.
//! - [`QuantizeConfig`]: GPTQ `quantize_config.json` or `config.json`'s `quantization_config`.
//! - [`BertConfig`], [`PoolingConfig`]: the BERT embedding model and its sentence-transformers pooling.
//!
//! Every `load` parses and then `validate`s, so a bad value is an `Error::Config` or
//! `Error::Unsupported` naming the file, the field and the value, at load rather than on the first
//! request: floats the device uses as f32 must be finite there, positions must stay within what
//! RoPE computes exactly ([`MAX_POSITIONS`]), sampling defaults must be ones the sampler accepts.

use crate::error::{Error, Result};
use crate::loader::model_dir::{check_model_dir, ModelKind};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::path::Path;

/// The most positions a causal LM may declare: RoPE angles pos · θ^(−2i/D) ≤ pos are reduced
/// exactly only below `ops::rope::MAX_ANGLE` (≈ 411 774, see `shaders/rope.wgsl`), and the prefill
/// refuses positions beyond it; positions are u32 and exact in f32 far beyond that. The KV cache is
/// paged (no single binding limits the context); what the device can hold is checked when a
/// session is sized.
pub const MAX_POSITIONS: usize = crate::ops::rope::MAX_ANGLE as usize + 1;

/// `e` with the file it came from: `Config` and `Unsupported` messages name it.
fn in_file(path: &Path, e: Error) -> Error {
    match e {
        Error::Config(m) => Error::Config(format!("{}: {m}", path.display())),
        Error::Unsupported(m) => Error::Unsupported(format!("{}: {m}", path.display())),
        other => other,
    }
}

/// A float the device uses as f32 must be finite and positive there (1e39 is a finite f64 but
/// infinite as f32; 1e-50 rounds to 0).
fn positive_f32(name: &str, v: f64) -> Result<()> {
    let x = v as f32;
    if x.is_finite() && x > 0.0 {
        Ok(())
    } else {
        Err(Error::Config(format!("{name} must be positive and finite as f32, got {v}")))
    }
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
}

/// `dir/config.json` as JSON, after checking that `dir` is a model directory holding a model of
/// kind `want` (or of no declared family).
fn read_model_config(dir: &Path, want: ModelKind) -> Result<serde_json::Value> {
    check_model_dir(dir)?;
    let path = dir.join("config.json");
    if !path.is_file() {
        return Err(Error::ModelDir {
            path: dir.to_path_buf(),
            msg: format!("no config.json: not a model directory (expected {})", want.describe()),
        });
    }
    let value: serde_json::Value = read_json(&path)?;
    ModelKind::expect(dir, &value, want)?;
    Ok(value)
}

fn from_value<T: DeserializeOwned>(path: &Path, value: serde_json::Value) -> Result<T> {
    serde_json::from_value(value).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
}

fn read_json_opt<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    if path.is_file() {
        read_json(path).map(Some)
    } else {
        Ok(None)
    }
}

fn default_rms_norm_eps() -> f64 {
    1e-6
}
fn default_rope_theta() -> f64 {
    10000.0
}
fn default_max_positions() -> usize {
    4096
}
fn default_silu() -> String {
    "silu".to_string()
}

/// `config.json` of ZhinaoForCausalLM. Defaults are those of `configuration_zhinao.py`.
#[derive(Clone, Debug, Deserialize)]
pub struct ZhinaoConfig {
    /// C: 4096 (7B), 2048 (1.8B).
    pub hidden_size: usize,
    /// L.
    pub num_hidden_layers: usize,
    /// H.
    pub num_attention_heads: usize,
    /// Hkv; `None` means MHA (= H). Use [`Self::num_kv_heads`].
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    pub intermediate_size: usize,
    /// V: embedding rows (158464, including padding rows).
    pub vocab_size: usize,
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub model_max_length: Option<usize>,
    #[serde(default = "default_silu")]
    pub hidden_act: String,
    /// `"bfloat16"` (chat/base) or `"float16"` (Int4).
    #[serde(default)]
    pub torch_dtype: Option<String>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub quantization_config: Option<QuantizeConfig>,
    /// Must be null: no RoPE scaling is implemented (spec §2.4).
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
}

impl ZhinaoConfig {
    /// Reads `dir/config.json`; when it has no `quantization_config`, `dir/quantize_config.json`
    /// is used if present. The result is validated.
    /// A missing directory, or a BERT `config.json`, is refused as such.
    pub fn load(dir: &Path) -> Result<Self> {
        let value = read_model_config(dir, ModelKind::CausalLm)?;
        let path = dir.join("config.json");
        let mut cfg: ZhinaoConfig = from_value(&path, value)?;
        cfg.validate_model().map_err(|e| in_file(&path, e))?;
        let quant_path = if cfg.quantization_config.is_none() {
            cfg.quantization_config = read_json_opt(&dir.join("quantize_config.json"))?;
            dir.join("quantize_config.json")
        } else {
            path
        };
        if let Some(q) = &cfg.quantization_config {
            q.validate().map_err(|e| in_file(&quant_path, e))?;
        }
        Ok(cfg)
    }

    /// Parses a `config.json` text and validates it.
    pub fn from_json(text: &str) -> Result<Self> {
        let cfg: ZhinaoConfig = serde_json::from_str(text).map_err(|e| Error::Config(format!("config.json: {e}")))?;
        cfg.validate().map_err(|e| in_file(Path::new("config.json"), e))?;
        Ok(cfg)
    }

    /// Hkv (= H when absent).
    pub fn num_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// D = C / H.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    /// Usable context: `model_max_length` if set, else `max_position_embeddings`.
    pub fn context_length(&self) -> usize {
        self.model_max_length.unwrap_or(self.max_position_embeddings)
    }

    /// Checks the values the engine relies on (the quantization settings included).
    pub fn validate(&self) -> Result<()> {
        self.validate_model()?;
        if let Some(q) = &self.quantization_config {
            q.validate()?;
        }
        Ok(())
    }

    /// [`Self::validate`] without the quantization settings (which may come from another file).
    fn validate_model(&self) -> Result<()> {
        let (c, h, kv) = (self.hidden_size, self.num_attention_heads, self.num_kv_heads());
        let positive = [
            ("hidden_size", c),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", h),
            ("num_key_value_heads", kv),
            ("intermediate_size", self.intermediate_size),
            ("vocab_size", self.vocab_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(Error::Config(format!("{name} must be positive, got 0")));
            }
        }
        if c % h != 0 {
            return Err(Error::Config(format!("num_attention_heads {h} does not divide hidden_size {c}")));
        }
        if h % kv != 0 {
            return Err(Error::Config(format!("num_key_value_heads {kv} does not divide num_attention_heads {h}")));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(Error::Config(format!("head_dim {} must be even for RoPE", self.head_dim())));
        }
        if self.head_dim() > crate::ops::attention::MAX_D {
            return Err(Error::Unsupported(format!(
                "head_dim {} (hidden_size / num_attention_heads): the attention kernels take at most {}",
                self.head_dim(),
                crate::ops::attention::MAX_D
            )));
        }
        positive_f32("rms_norm_eps", self.rms_norm_eps)?;
        // θ < 1 would make frequencies above 1 per position: angles past the exactly reduced range.
        if !((self.rope_theta as f32).is_finite() && self.rope_theta >= 1.0) {
            return Err(Error::Config(format!(
                "rope_theta must be at least 1 and finite as f32, got {}",
                self.rope_theta
            )));
        }
        for (name, n) in [
            ("max_position_embeddings", Some(self.max_position_embeddings)),
            ("model_max_length", self.model_max_length),
        ] {
            match n {
                Some(0) => return Err(Error::Config(format!("{name} must be positive, got 0"))),
                Some(n) if n > MAX_POSITIONS => {
                    let why = "the f32 angle reduction of rope.wgsl";
                    return Err(Error::Unsupported(format!(
                        "{name} {n}: RoPE positions are exact up to {MAX_POSITIONS} ({why})"
                    )));
                }
                _ => {}
            }
        }
        if self.hidden_act != "silu" {
            return Err(Error::Unsupported(format!("hidden_act '{}' (only silu)", self.hidden_act)));
        }
        if let Some(s) = self.rope_scaling.as_ref().filter(|v| !v.is_null()) {
            return Err(Error::Unsupported(format!("rope_scaling {s} (only null is implemented)")));
        }
        Ok(())
    }
}

/// `eos_token_id` may be one id or a list.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Vec<u32>, D::Error> {
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(x) => vec![x],
        OneOrMany::Many(v) => v,
    })
}

fn d_true() -> bool {
    true
}
fn d_top_p() -> f32 {
    0.8
}
fn d_one() -> f32 {
    1.0
}
fn d_max_new() -> usize {
    1024
}
fn d_pad() -> Option<u32> {
    Some(158326)
}
fn d_eos() -> Vec<u32> {
    vec![158326, 158332, 158333]
}

/// `generation_config.json`. Missing fields (or a missing file) take the spec §4.3 values:
/// sampling on, top_k 0 (off), top_p 0.8, temperature 1, no repetition penalty, 1024 new tokens,
/// pad `<eod>` 158326, stop on 158326 / 158332 / 158333.
#[derive(Clone, Debug, Deserialize)]
pub struct GenerationConfig {
    #[serde(default = "d_true")]
    pub do_sample: bool,
    #[serde(default)]
    pub top_k: usize,
    #[serde(default = "d_top_p")]
    pub top_p: f32,
    #[serde(default = "d_one")]
    pub temperature: f32,
    #[serde(default = "d_one")]
    pub repetition_penalty: f32,
    #[serde(default = "d_max_new")]
    pub max_new_tokens: usize,
    #[serde(default = "d_eos", deserialize_with = "one_or_many")]
    pub eos_token_id: Vec<u32>,
    #[serde(default = "d_pad")]
    pub pad_token_id: Option<u32>,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        GenerationConfig {
            do_sample: true,
            top_k: 0,
            top_p: d_top_p(),
            temperature: 1.0,
            repetition_penalty: 1.0,
            max_new_tokens: d_max_new(),
            eos_token_id: d_eos(),
            pad_token_id: d_pad(),
        }
    }
}

impl GenerationConfig {
    /// Reads and validates `dir/generation_config.json`, or the defaults when the file is absent.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("generation_config.json");
        let g: GenerationConfig = read_json_opt(&path)?.unwrap_or_default();
        g.validate().map_err(|e| in_file(&path, e))?;
        Ok(g)
    }

    /// The defaults every request starts from must be ones the sampler accepts (what a request
    /// may set, see `serve::routes`): otherwise every request that leaves them out fails.
    pub fn validate(&self) -> Result<()> {
        let t = self.temperature;
        // 0 is greedy; a positive temperature is divided by, in f32.
        if !(t.is_finite() && t >= 0.0 && (t == 0.0 || (1.0 / t).is_finite())) {
            return Err(Error::Config(format!("temperature must be 0 (greedy) or a positive finite number, got {t}")));
        }
        if !(0.0..=1.0).contains(&self.top_p) {
            return Err(Error::Config(format!("top_p must be between 0 and 1, got {}", self.top_p)));
        }
        let r = self.repetition_penalty;
        if !(r.is_finite() && r > 0.0 && (1.0 / r).is_finite()) {
            return Err(Error::Config(format!("repetition_penalty must be positive and finite (1 = off), got {r}")));
        }
        if self.max_new_tokens == 0 {
            return Err(Error::Config("max_new_tokens must be at least 1, got 0".into()));
        }
        Ok(())
    }
}

fn d_gptq() -> String {
    "gptq".to_string()
}

/// GPTQ settings (spec §5): `quantize_config.json` or `config.json`'s `quantization_config`.
#[derive(Clone, Debug, Deserialize)]
pub struct QuantizeConfig {
    pub bits: u32,
    /// Inputs per scale/zero group (128). A non-positive value (-1: one group) is unsupported.
    pub group_size: i64,
    #[serde(default = "d_true")]
    pub sym: bool,
    #[serde(default)]
    pub desc_act: bool,
    #[serde(default = "d_gptq")]
    pub checkpoint_format: String,
    #[serde(default = "d_gptq")]
    pub quant_method: String,
    /// Stem of the weight file, e.g. `gptq_model-4bit-128g` (→ `.safetensors`).
    #[serde(default)]
    pub model_file_base_name: Option<String>,
}

impl QuantizeConfig {
    /// Reads `dir/quantize_config.json` if present, else `config.json`'s `quantization_config`;
    /// `Ok(None)` for an unquantized model. The result is validated.
    pub fn load(dir: &Path) -> Result<Option<Self>> {
        let q: Option<QuantizeConfig> = match read_json_opt(&dir.join("quantize_config.json"))? {
            Some(q) => Some(q),
            None => {
                #[derive(Deserialize)]
                struct Outer {
                    #[serde(default)]
                    quantization_config: Option<QuantizeConfig>,
                }
                read_json_opt::<Outer>(&dir.join("config.json"))?.and_then(|o| o.quantization_config)
            }
        };
        if let Some(q) = &q {
            q.validate()?;
        }
        Ok(q)
    }

    /// Only 4-bit GPTQ in the v1 "gptq" checkpoint format with a positive group size is
    /// implemented (desc_act true is fine: the kernels honour an arbitrary g_idx).
    pub fn validate(&self) -> Result<()> {
        if self.bits != 4 {
            return Err(Error::Unsupported(format!("GPTQ bits {} (only 4-bit is implemented)", self.bits)));
        }
        if self.quant_method != "gptq" {
            return Err(Error::Unsupported(format!("quant_method '{}' (only gptq)", self.quant_method)));
        }
        if self.checkpoint_format != "gptq" {
            return Err(Error::Unsupported(format!(
                "GPTQ checkpoint_format '{}' (only \"gptq\", the AutoGPTQ v1 layout)",
                self.checkpoint_format
            )));
        }
        if self.group_size <= 0 || self.group_size % 8 != 0 {
            return Err(Error::Unsupported(format!(
                "GPTQ group_size {} (need a positive multiple of 8)",
                self.group_size
            )));
        }
        Ok(())
    }

    /// The weight file name, `<model_file_base_name>.safetensors`, if named.
    pub fn model_file_name(&self) -> Option<String> {
        self.model_file_base_name.as_ref().map(|b| format!("{b}.safetensors"))
    }
}

fn d_bert_vocab() -> usize {
    30522
}
fn d_768() -> usize {
    768
}
fn d_12() -> usize {
    12
}
fn d_3072() -> usize {
    3072
}
fn d_gelu() -> String {
    "gelu".to_string()
}
fn d_512() -> usize {
    512
}
fn d_2() -> usize {
    2
}
fn d_ln_eps() -> f64 {
    1e-12
}
fn d_absolute() -> String {
    "absolute".to_string()
}

/// HF `BertModel` `config.json` (defaults: `transformers.BertConfig`).
#[derive(Clone, Debug, Deserialize)]
pub struct BertConfig {
    #[serde(default = "d_bert_vocab")]
    pub vocab_size: usize,
    #[serde(default = "d_768")]
    pub hidden_size: usize,
    #[serde(default = "d_12")]
    pub num_hidden_layers: usize,
    #[serde(default = "d_12")]
    pub num_attention_heads: usize,
    #[serde(default = "d_3072")]
    pub intermediate_size: usize,
    #[serde(default = "d_gelu")]
    pub hidden_act: String,
    #[serde(default = "d_512")]
    pub max_position_embeddings: usize,
    #[serde(default = "d_2")]
    pub type_vocab_size: usize,
    #[serde(default = "d_ln_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: u32,
    #[serde(default = "d_absolute")]
    pub position_embedding_type: String,
}

impl BertConfig {
    /// Reads and validates `dir/config.json`. A missing directory, or the `config.json` of a
    /// causal LM, is refused as such.
    pub fn load(dir: &Path) -> Result<Self> {
        let value = read_model_config(dir, ModelKind::Bert)?;
        let path = dir.join("config.json");
        let cfg: BertConfig = from_value(&path, value)?;
        cfg.validate().map_err(|e| in_file(&path, e))?;
        Ok(cfg)
    }

    /// D = C / H.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    pub fn validate(&self) -> Result<()> {
        let (c, h) = (self.hidden_size, self.num_attention_heads);
        if c == 0 || h == 0 || self.num_hidden_layers == 0 || self.vocab_size == 0 || self.max_position_embeddings == 0
        {
            return Err(Error::Config("BERT sizes must be positive".into()));
        }
        if c % h != 0 {
            return Err(Error::Config(format!("num_attention_heads {h} does not divide hidden_size {c}")));
        }
        positive_f32("layer_norm_eps", self.layer_norm_eps)?;
        if !matches!(self.hidden_act.as_str(), "gelu" | "gelu_new" | "gelu_pytorch_tanh" | "relu") {
            return Err(Error::Unsupported(format!("BERT hidden_act '{}'", self.hidden_act)));
        }
        if self.position_embedding_type != "absolute" {
            return Err(Error::Unsupported(format!("position_embedding_type '{}'", self.position_embedding_type)));
        }
        Ok(())
    }
}

/// sentence-transformers `1_Pooling/config.json`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct PoolingConfig {
    #[serde(default)]
    pub word_embedding_dimension: Option<usize>,
    #[serde(default)]
    pub pooling_mode_cls_token: bool,
    #[serde(default)]
    pub pooling_mode_mean_tokens: bool,
}

/// How token states become one embedding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooling {
    /// The first (`[CLS]`) token's state (spec §6: what 360Zhinao-search uses).
    Cls,
    /// The mean over non-padding tokens.
    Mean,
}

impl PoolingConfig {
    /// Reads `dir/1_Pooling/config.json`; `Ok(None)` when absent.
    pub fn load(dir: &Path) -> Result<Option<Self>> {
        read_json_opt(&dir.join("1_Pooling").join("config.json"))
    }

    /// The single pooling mode set (CLS when none is set); several → `Unsupported`.
    pub fn mode(&self) -> Result<Pooling> {
        match (self.pooling_mode_cls_token, self.pooling_mode_mean_tokens) {
            (true, true) => Err(Error::Unsupported("pooling with both cls and mean modes".into())),
            (false, true) => Ok(Pooling::Mean),
            _ => Ok(Pooling::Cls),
        }
    }
}
