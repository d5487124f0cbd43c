//! Model definitions, one architecture per file.

pub mod bert;
pub mod reranker;
pub mod zhinao;
