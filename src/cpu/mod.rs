//! Plain scalar references for every GPU op: the test oracle. Written for clarity, not speed.

pub mod attention;
pub mod matmul;
