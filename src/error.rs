//! One error type for the whole crate. Variants carry the numbers a user needs to act on them
//! (requested vs available, expected vs found shape, the file and tensor involved). Binaries add
//! context with `anyhow`; the library never panics on user input.

use std::path::PathBuf;

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // ---- GPU runtime -------------------------------------------------------------------------
    #[error("no GPU adapter found{0}")]
    NoAdapter(String),
    #[error("adapter limit too small: {what} needs {requested}, the adapter allows {available}")]
    LimitTooSmall { what: String, requested: u64, available: u64 },
    #[error("allocation of {bytes} bytes for '{what}' exceeds the adapter limit of {limit} bytes")]
    AllocationTooLarge { what: String, bytes: u64, limit: u64 },
    #[error("GPU device error: {0}")]
    Device(String),
    #[error("GPU device lost: {0}")]
    DeviceLost(String),
    #[error("shader '{shader}' failed: {msg}")]
    Shader { shader: String, msg: String },

    // ---- shapes and ops ----------------------------------------------------------------------
    #[error("shape mismatch in {op}: {msg}")]
    Shape { op: String, msg: String },

    // ---- files, weights, configs -------------------------------------------------------------
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("tensor '{name}' not found (looked in {looked_in})")]
    MissingTensor { name: String, looked_in: String },
    #[error("tensor '{name}' in {file}: expected shape {expected:?}, found {found:?}")]
    TensorShape { name: String, file: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("tensor '{name}' in {file}: unsupported dtype {dtype}")]
    TensorDtype { name: String, file: String, dtype: String },
    #[error("{file}: {msg}")]
    BadFile { file: String, msg: String },
    #[error("config: {0}")]
    Config(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The model path is missing, not a directory, or holds no model.
    #[error("{path}: {msg}")]
    ModelDir { path: PathBuf, msg: String },
    /// A model of another family than the command runs (e.g. `embed` on a causal LM).
    #[error("{path} is {found}, not {wanted}{hint}")]
    WrongModelKind { path: PathBuf, found: String, wanted: String, hint: String },

    // ---- tokenizer, generation, user input ---------------------------------------------------
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("prompt of {tokens} tokens does not fit the context of {ctx} tokens{hint}")]
    ContextOverflow { tokens: usize, ctx: usize, hint: String },
    #[error("invalid input: {0}")]
    Input(String),
    #[error("cancelled")]
    Cancelled,

    // ---- model hub (`zhinao download`, `--model ORG/NAME`) -----------------------------------
    #[error("cannot reach {endpoint}: {msg}")]
    HubUnreachable { endpoint: String, msg: String },
    #[error("{repo}: {msg}")]
    Hub { repo: String, msg: String },
    #[error("{file}: refused: {msg}; the file was removed from the cache")]
    Integrity { file: String, msg: String },
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
    pub fn shape(op: &str, msg: impl Into<String>) -> Self {
        Error::Shape { op: op.to_string(), msg: msg.into() }
    }
    pub fn bad_file(file: impl std::fmt::Display, msg: impl Into<String>) -> Self {
        Error::BadFile { file: file.to_string(), msg: msg.into() }
    }
}
