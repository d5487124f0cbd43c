//! The model family: the shared loader, the one decoder and what each checkpoint adds to it.

pub mod bert;
pub mod decoder;
pub mod kv;
pub mod load;
pub mod reranker;
pub mod zhinao;
