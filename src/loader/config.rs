//! The `config.json` family. Field names are the JSON names (spec §2.1, §4.3, §5, §6).
//!
//! - [`ZhinaoConfig`]: `config.json` of a ZhinaoForCausalLM (chat, base, Int4, reranker backbone).
//! - [`GenerationConfig`]: `generation_config.json`, spec §4.3 defaults when absent.
//! - [`QuantizeConfig`]: GPTQ `quantize_config.json` or `config.json`'s `quantization_config`.
//! - [`BertConfig`], [`PoolingConfig`]: the BERT embedding model and its sentence-transformers pooling.
//!
//! Every `load` parses and then `validate`s, so a bad value is an `Error::Config` or
//! `Error::Unsupported` naming the field and the value.

use crate::error::{Error, Result};
use crate::loader::model_dir::{check_model_dir, ModelKind};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::path::Path;

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
        let mut cfg: ZhinaoConfig = from_value(&dir.join("config.json"), value)?;
        if cfg.quantization_config.is_none() {
            cfg.quantization_config = read_json_opt(&dir.join("quantize_config.json"))?;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses a `config.json` text and validates it.
    pub fn from_json(text: &str) -> Result<Self> {
        let cfg: ZhinaoConfig = serde_json::from_str(text).map_err(|e| Error::Config(format!("config.json: {e}")))?;
        cfg.validate()?;
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

    /// Checks the values the engine relies on.
    pub fn validate(&self) -> Result<()> {
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
        if !(self.rms_norm_eps > 0.0 && self.rms_norm_eps.is_finite()) {
            return Err(Error::Config(format!("rms_norm_eps must be positive, got {}", self.rms_norm_eps)));
        }
        if !(self.rope_theta > 0.0 && self.rope_theta.is_finite()) {
            return Err(Error::Config(format!("rope_theta must be positive, got {}", self.rope_theta)));
        }
        if self.hidden_act != "silu" {
            return Err(Error::Unsupported(format!("hidden_act '{}' (only silu)", self.hidden_act)));
        }
        if let Some(s) = self.rope_scaling.as_ref().filter(|v| !v.is_null()) {
            return Err(Error::Unsupported(format!("rope_scaling {s} (only null is implemented)")));
        }
        if let Some(q) = &self.quantization_config {
            q.validate()?;
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
    /// Reads `dir/generation_config.json`, or the defaults when the file is absent.
    pub fn load(dir: &Path) -> Result<Self> {
        Ok(read_json_opt(&dir.join("generation_config.json"))?.unwrap_or_default())
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
        let cfg: BertConfig = from_value(&dir.join("config.json"), value)?;
        cfg.validate()?;
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
