//! Model definitions, one architecture per file.

pub mod bert;
pub mod zhinao;
pub mod reranker;
