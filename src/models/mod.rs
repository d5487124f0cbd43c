//! Model definitions, one architecture per file.

pub mod zhinao;
pub mod reranker;
