//! `WeightFiles`: every tensor of a checkpoint, by name, borrowed from memory-mapped files.
//!
//! A model directory holds one of: `model.safetensors.index.json` + shards (safetensors or
//! `pytorch_model-*.bin`), a single `*.safetensors` (preferably `model.safetensors`), or a
//! `pytorch_model.bin` (read by [`super::pickle`]). Each file is mapped once; headers are parsed
//! and validated up front (offsets inside the file, sizes matching shapes), so `get` only looks
//! up a name and slices. Unsupported dtypes are reported by `get`, not by `open`, so a checkpoint
//! with an unused i64 buffer (e.g. BERT's `position_ids`) still opens.

use crate::error::{Error, Result};
use crate::tensor::DType;
use memmap2::Mmap;
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// A borrowed tensor: name, source file, dtype, shape and raw little-endian bytes (no copy).
#[derive(Clone, Debug)]
pub struct TensorView<'a> {
    pub name: &'a str,
    pub file: &'a Path,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: &'a [u8],
}

impl TensorView<'_> {
    /// Number of elements (product of the shape).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The elements widened to f32 (f32, f16 or bf16 tensors). For CPU references and tests.
    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        let d = self.data;
        Ok(match self.dtype {
            DType::F32 => d.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            DType::F16 => d.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            DType::BF16 => d.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            other => return Err(self.dtype_error(other)),
        })
    }

    /// The elements of an i32 tensor (GPTQ `qweight`, `qzeros`, `g_idx`).
    pub fn to_i32_vec(&self) -> Result<Vec<i32>> {
        match self.dtype {
            DType::I32 => Ok(self.data.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()),
            other => Err(self.dtype_error(other)),
        }
    }

    fn dtype_error(&self, found: DType) -> Error {
        Error::TensorDtype {
            name: self.name.to_string(),
            file: self.file.display().to_string(),
            dtype: found.to_string(),
        }
    }
}

/// The bytes of one file: memory-mapped, or owned (tests, in-memory checkpoints).
enum Backing {
    Mmap(Mmap),
    Owned(Vec<u8>),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Mmap(m) => m,
            Backing::Owned(v) => v,
        }
    }
}

struct File {
    path: PathBuf,
    data: Backing,
}

/// Where one tensor lives. `dtype` is `Err(name)` for a stored dtype the engine does not support.
struct Entry {
    file: usize,
    dtype: std::result::Result<DType, String>,
    shape: Vec<usize>,
    bytes: Range<usize>,
}

/// All tensors of a checkpoint, by name (sorted).
pub struct WeightFiles {
    files: Vec<File>,
    tensors: BTreeMap<String, Entry>,
}

impl std::fmt::Debug for WeightFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightFiles")
            .field("files", &self.files.iter().map(|f| &f.path).collect::<Vec<_>>())
            .field("tensors", &self.tensors.len())
            .field("bytes", &self.total_bytes())
            .finish()
    }
}

#[derive(serde::Deserialize)]
struct Index {
    weight_map: BTreeMap<String, String>,
}

fn map_file(path: &Path) -> Result<Backing> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    if len == 0 {
        return Err(Error::bad_file(path.display(), "empty file"));
    }
    // SAFETY: the map is read-only; a checkpoint must not be modified while the engine runs.
    let m = unsafe { Mmap::map(&f) }.map_err(|e| Error::io(path, e))?;
    Ok(Backing::Mmap(m))
}

fn is_zip(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06")
}

impl WeightFiles {
    /// Opens the checkpoint of a model directory (or a single weight file, see [`Self::open_file`]).
    pub fn open(dir: &Path) -> Result<WeightFiles> {
        if dir.is_file() {
            return Self::open_file(dir);
        }
        for index in ["model.safetensors.index.json", "pytorch_model.bin.index.json"] {
            let p = dir.join(index);
            if p.is_file() {
                return Self::open_index(&p);
            }
        }
        for single in ["model.safetensors", "pytorch_model.bin"] {
            let p = dir.join(single);
            if p.is_file() {
                return Self::open_file(&p);
            }
        }
        let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
        let mut found: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        found.sort();
        match found.as_slice() {
            [one] => Self::open_file(one),
            [] => Err(Error::bad_file(
                dir.display(),
                "no model.safetensors(.index.json), *.safetensors or pytorch_model.bin in this directory",
            )),
            many => Err(Error::bad_file(
                dir.display(),
                format!(
                    "several .safetensors files and no index ({}); name one with open_file",
                    many.iter()
                        .filter_map(|p| p.file_name())
                        .map(|n| n.to_string_lossy())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }

    /// Opens one weight file: safetensors (any name, e.g. `gptq_model-4bit-128g.safetensors`) or a
    /// `torch.save` zip (`.bin`, `.pt`, `.pth`); the format is recognised from the content.
    pub fn open_file(path: &Path) -> Result<WeightFiles> {
        let mut wf = WeightFiles { files: Vec::new(), tensors: BTreeMap::new() };
        wf.add_file(path.to_path_buf(), map_file(path)?)?;
        Ok(wf)
    }

    /// A checkpoint held in memory (tests, tiny models): the bytes of a safetensors file or a
    /// `torch.save` zip, recognised from the content; `name` stands for the file in errors.
    pub fn from_bytes(name: &str, bytes: Vec<u8>) -> Result<WeightFiles> {
        let mut wf = WeightFiles { files: Vec::new(), tensors: BTreeMap::new() };
        wf.add_file(PathBuf::from(name), Backing::Owned(bytes))?;
        Ok(wf)
    }

    /// Opens an index (`weight_map`: tensor → shard file) and its shards; every name in the index
    /// must be found in the shard it names.
    fn open_index(index_path: &Path) -> Result<WeightFiles> {
        let text = std::fs::read_to_string(index_path).map_err(|e| Error::io(index_path, e))?;
        let index: Index = serde_json::from_str(&text)
            .map_err(|e| Error::bad_file(index_path.display(), format!("bad index: {e}")))?;
        let dir = index_path.parent().unwrap_or(Path::new("."));
        let mut shards: Vec<&String> = index.weight_map.values().collect();
        shards.sort();
        shards.dedup();
        let mut wf = WeightFiles { files: Vec::new(), tensors: BTreeMap::new() };
        for shard in shards {
            // A plain file name: `../x`, `/abs`, `sub/x` would make the index open files outside the
            // model directory (or the directory itself).
            let mut parts = Path::new(shard.as_str()).components();
            let plain = matches!(parts.next(), Some(std::path::Component::Normal(_)))
                && parts.next().is_none()
                && !shard.contains(['/', '\\']);
            if !plain {
                return Err(Error::bad_file(
                    index_path.display(),
                    format!("shard {shard:?} named by the index is not a plain file name in the model directory"),
                ));
            }
            let p = dir.join(shard);
            if !p.is_file() {
                return Err(Error::bad_file(
                    index_path.display(),
                    format!("shard '{shard}' named by the index is missing"),
                ));
            }
            wf.add_file(p.clone(), map_file(&p)?)?;
        }
        for (name, shard) in &index.weight_map {
            let in_shard =
                wf.tensors.get(name).is_some_and(|e| wf.files[e.file].path.file_name() == Some(shard.as_ref()));
            if !in_shard {
                return Err(Error::bad_file(
                    index_path.display(),
                    format!("the index maps '{name}' to '{shard}', but that shard has no such tensor"),
                ));
            }
        }
        Ok(wf)
    }

    /// Parses one file's header and records its tensors.
    fn add_file(&mut self, path: PathBuf, data: Backing) -> Result<()> {
        let file_idx = self.files.len();
        let shown = path.display().to_string();
        let bytes = data.bytes();
        let mut found: Vec<(String, Entry)> = Vec::new();
        if is_zip(bytes) {
            for t in super::pickle::read_state_dict(bytes, &shown)? {
                found.push((t.name, Entry { file: file_idx, dtype: t.dtype, shape: t.shape, bytes: t.data }));
            }
        } else if bytes.first() == Some(&0x80) && bytes.get(8) != Some(&b'{') {
            // A pickle PROTO opcode; a safetensors header length may also start with 0x80, but its
            // JSON header begins at byte 8.
            return Err(Error::Unsupported(format!(
                "{shown}: legacy (pre-1.6) torch.save format; re-save with a recent torch or convert to safetensors"
            )));
        } else {
            let (n, meta) = ::safetensors::SafeTensors::read_metadata(bytes)
                .map_err(|e| Error::bad_file(&shown, format!("invalid safetensors file: {e}")))?;
            let base = 8 + n; // the data section follows the 8-byte length and the JSON header
            for (name, info) in meta.tensors() {
                let (s, e) = info.data_offsets;
                let range = base + s..base + e;
                if range.end > bytes.len() {
                    return Err(Error::bad_file(&shown, format!("tensor '{name}' extends past the end of the file")));
                }
                let dtype = match info.dtype {
                    ::safetensors::Dtype::F32 => Ok(DType::F32),
                    ::safetensors::Dtype::F16 => Ok(DType::F16),
                    ::safetensors::Dtype::BF16 => Ok(DType::BF16),
                    ::safetensors::Dtype::I32 => Ok(DType::I32),
                    other => Err(format!("{other:?}").to_lowercase()),
                };
                found.push((name, Entry { file: file_idx, dtype, shape: info.shape.clone(), bytes: range }));
            }
        }
        for (name, entry) in found {
            if let Some(prev) = self.tensors.get(&name) {
                return Err(Error::bad_file(
                    &shown,
                    format!("tensor '{name}' is also in {}", self.files[prev.file].path.display()),
                ));
            }
            self.tensors.insert(name, entry);
        }
        self.files.push(File { path, data });
        Ok(())
    }

    /// The tensor `name`, borrowed from its file. `MissingTensor` names the files looked in;
    /// `TensorDtype` is returned for dtypes other than f32, f16, bf16 and i32.
    pub fn get(&self, name: &str) -> Result<TensorView<'_>> {
        let Some((key, e)) = self.tensors.get_key_value(name) else {
            return Err(Error::MissingTensor { name: name.to_string(), looked_in: self.looked_in() });
        };
        let file = &self.files[e.file];
        let dtype = e.dtype.clone().map_err(|dtype| Error::TensorDtype {
            name: name.to_string(),
            file: file.path.display().to_string(),
            dtype,
        })?;
        let data = file.data.bytes().get(e.bytes.clone()).ok_or_else(|| {
            Error::bad_file(file.path.display(), format!("tensor '{name}' extends past the end of the file"))
        })?;
        Ok(TensorView { name: key, file: &file.path, dtype, shape: e.shape.clone(), data })
    }

    /// Whether the checkpoint holds a tensor called `name` (whatever its dtype).
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.tensors.keys().map(String::as_str)
    }

    /// The shape of `name` without checking its dtype (`None` if absent).
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|e| e.shape.as_slice())
    }

    /// Total bytes of all tensor data (not counting headers).
    pub fn total_bytes(&self) -> usize {
        self.tensors.values().map(|e| e.bytes.len()).sum()
    }

    /// The files this checkpoint was read from.
    pub fn files(&self) -> impl Iterator<Item = &Path> + '_ {
        self.files.iter().map(|f| f.path.as_path())
    }

    fn looked_in(&self) -> String {
        let names: Vec<String> = self.files.iter().map(|f| f.path.display().to_string()).collect();
        if names.is_empty() {
            "no files".to_string()
        } else {
            names.join(", ")
        }
    }
}
