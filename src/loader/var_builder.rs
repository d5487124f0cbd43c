//! `VarBuilder`: fetch weights by prefix path with shape checks, after candle-nn's `var_builder.rs`.
//!
//! ```ignore
//! let vb = VarBuilder::new(&files).pp("model");
//! let layer = vb.pp("layers").pp(3);
//! let w = layer.pp("self_attn").pp("qkv_proj").get(&[3 * c, c], "weight")?; // [(H + 2·Hkv)·D, C]
//! let b = layer.pp("self_attn").pp("qkv_proj").get_opt(&[3 * c], "bias")?;  // Option<[(H + 2·Hkv)·D]>
//! ```
//! Model code never concatenates names: a wrong shape is `Error::TensorShape` naming the full
//! tensor name, both shapes and the file; an absent one is `Error::MissingTensor`.

use super::safetensors::{TensorView, WeightFiles};
use crate::error::{Error, Result};
use crate::tensor::DType;

/// A view of a [`WeightFiles`] under a dotted prefix (`model.layers.3.`). Cheap to clone.
#[derive(Clone)]
pub struct VarBuilder<'a> {
    files: &'a WeightFiles,
    prefix: Vec<String>,
}

impl<'a> VarBuilder<'a> {
    /// A builder at the root of the checkpoint (empty prefix).
    pub fn new(files: &'a WeightFiles) -> Self {
        VarBuilder { files, prefix: Vec::new() }
    }

    /// The builder one level down: `vb.pp("layers").pp(3)` reads `layers.3.*`.
    pub fn pp(&self, segment: impl ToString) -> VarBuilder<'a> {
        let mut prefix = self.prefix.clone();
        prefix.push(segment.to_string());
        VarBuilder { files: self.files, prefix }
    }

    /// The current prefix, dotted (`"model.layers.3"`; empty at the root).
    pub fn prefix(&self) -> String {
        self.prefix.join(".")
    }

    /// The full tensor name of `name` under this prefix.
    pub fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix())
        }
    }

    /// The underlying files.
    pub fn files(&self) -> &'a WeightFiles {
        self.files
    }

    /// Whether `name` exists under this prefix.
    pub fn contains(&self, name: &str) -> bool {
        self.files.contains(&self.path(name))
    }

    /// The tensor `name` under this prefix, whatever its shape.
    pub fn get_any_shape(&self, name: &str) -> Result<TensorView<'a>> {
        self.files.get(&self.path(name))
    }

    /// The tensor `name`, which must have exactly `shape`.
    pub fn get(&self, shape: &[usize], name: &str) -> Result<TensorView<'a>> {
        let t = self.get_any_shape(name)?;
        if t.shape != shape {
            return Err(Error::TensorShape {
                name: t.name.to_string(),
                file: t.file.display().to_string(),
                expected: shape.to_vec(),
                found: t.shape,
            });
        }
        Ok(t)
    }

    /// Like [`Self::get`], and the dtype must be `dtype` (e.g. i32 for GPTQ `qweight`).
    pub fn get_with_dtype(&self, shape: &[usize], dtype: DType, name: &str) -> Result<TensorView<'a>> {
        let t = self.get(shape, name)?;
        if t.dtype != dtype {
            return Err(Error::TensorDtype {
                name: t.name.to_string(),
                file: t.file.display().to_string(),
                dtype: format!("{} (expected {dtype})", t.dtype),
            });
        }
        Ok(t)
    }

    /// An optional tensor (e.g. `bias`): `Ok(None)` when absent, shape-checked when present.
    pub fn get_opt(&self, shape: &[usize], name: &str) -> Result<Option<TensorView<'a>>> {
        if self.contains(name) {
            self.get(shape, name).map(Some)
        } else {
            Ok(None)
        }
    }
}
