//! Plain scalar references for every GPU op: the test oracle. Written for clarity, not speed.

pub mod attention;
pub mod elementwise;
pub mod embedding;
pub mod gemv;
pub mod kv;
pub mod matmul;
pub mod matmul_q4;
pub mod norm;
pub mod rope;
pub mod sample;
pub mod softmax;
