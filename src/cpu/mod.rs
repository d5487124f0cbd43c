//! Plain scalar references for every GPU op: the test oracle. Written for clarity, not speed.

pub mod attention;
pub mod matmul;
pub mod norm;
pub mod rope;
pub mod elementwise;
pub mod embedding;
pub mod softmax;
pub mod sample;
