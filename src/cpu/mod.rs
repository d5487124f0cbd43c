//! Plain scalar references for every GPU op: the test oracle. Written for clarity, not speed.

pub mod matmul;
pub mod matmul_q4;
