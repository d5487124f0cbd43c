/// Element types of stored tensors. On the GPU, f16 and bf16 stay packed two to a u32 word
/// (element 2i in the low half), so no kernel needs `shader-f16`; arithmetic is f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
    I32,
    /// GPTQ packed nibbles: eight 4-bit values per i32 word.
    Q4,
}

impl DType {
    /// Size in bytes of one element (Q4: a packed i32 word is counted as one element of 4 bytes).
    pub fn size(self) -> usize {
        match self {
            DType::F32 | DType::I32 | DType::Q4 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I32 => "i32",
            DType::Q4 => "q4",
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
