//! Weight loading: checkpoint files (safetensors, sharded or single, and PyTorch `.bin` read by a
//! safe pickle subset), a prefix-path `VarBuilder`, the `config.json` family, and the
//! de-interleaving of Zhinao's fused `qkv_proj` (spec §2.3, also for GPTQ tensors, §5).

pub mod config;
pub mod model_dir;
pub mod pickle;
pub mod qkv;
pub mod safetensors;
pub mod var_builder;
mod zip;

pub use config::{BertConfig, GenerationConfig, Pooling, PoolingConfig, QuantizeConfig, ZhinaoConfig};
pub use model_dir::{bert_max_len, check_model_dir, ModelKind, SentenceBertConfig};
pub use qkv::QkvHeads;
pub use safetensors::{TensorView, WeightFiles};
pub use var_builder::VarBuilder;
