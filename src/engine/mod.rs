//! What front ends (the CLI, `examples/`, the server, the app) call: load a causal LM with its
//! tokenizer and defaults, fit its context to the device, run sessions (prefill, decode, generate
//! with streaming and cancellation), perplexity. Embeddings and reranking are `embed::Embedder` and
//! `models::reranker::Reranker`. Nothing here names a wgpu type or a graph node.

pub mod batch;
pub mod generate;
pub mod kv;
pub mod lm;
pub mod perplexity;
pub mod session;

pub use crate::ops::kv::KvFormat;
pub use batch::{generate_batch, Batch, BatchJob, BatchOptions, BatchOutput, Produced, SeqId};
pub use generate::{generate, GenOptions, Generation, StepStats, StopReason, LOOKAHEAD};
pub use kv::KvCache;
pub use lm::{estimate, fit_context, Lm, LmOptions, MemoryEstimate};
pub use perplexity::{perplexity, perplexity_vs, Agreement, Perplexity, PositionScore};
pub use session::{Session, Step};
