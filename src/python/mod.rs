//! The Python module `zhinao._zhinao` (feature `python`, built by maturin from `pyproject.toml`;
//! the package `python/zhinao/` re-exports it with type hints in `__init__.pyi`).
//!
//! A thin front end over the library API, like the CLI: `embed::Embedder`,
//! `models::reranker::Reranker`, `engine::{Lm, Session, generate, perplexity}`. Every call that
//! touches the GPU or reads a model releases the GIL (`Python::detach`), so other Python threads
//! run meanwhile; results are copied once, into the numpy array returned. Engine errors become
//! Python exceptions (the classes of `zhinao._errors`) carrying the engine's message; nothing
//! here panics on user input.

mod embed;
mod lm;

use std::ffi::CString;
use std::sync::Arc;

use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyUserWarning};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

use crate::error::Error;
use crate::gpu::{Context, GpuOptions};

/// The exception class of `zhinao._errors` an engine error is raised as.
fn error_class(e: &Error) -> &'static str {
    match e {
        Error::Input(_) | Error::ContextOverflow { .. } | Error::Tokenizer(_) | Error::Shape { .. } => "InputError",
        Error::Io { .. }
        | Error::ModelDir { .. }
        | Error::WrongModelKind { .. }
        | Error::MissingTensor { .. }
        | Error::TensorShape { .. }
        | Error::TensorDtype { .. }
        | Error::BadFile { .. }
        | Error::Config(_)
        | Error::Unsupported(_)
        | Error::Hub { .. }
        | Error::HubUnreachable { .. }
        | Error::Integrity { .. } => "ModelError",
        Error::NoAdapter(_)
        | Error::LimitTooSmall { .. }
        | Error::AllocationTooLarge { .. }
        | Error::Device(_)
        | Error::DeviceLost(_)
        | Error::Shader { .. } => "DeviceError",
        Error::Cancelled => "ZhinaoError",
    }
}

/// An engine error as a Python exception: `zhinao._errors.<class>(message)`.
pub(crate) fn py_err(e: Error) -> PyErr {
    let msg = e.to_string();
    Python::attach(|py| {
        let made = py
            .import("zhinao._errors")
            .and_then(|m| m.getattr(error_class(&e)))
            .and_then(|cls| cls.call1((msg.clone(),)));
        match made {
            Ok(exc) => PyErr::from_value(exc),
            Err(_) => PyRuntimeError::new_err(msg),
        }
    })
}

/// A `UserWarning` with `msg`, attributed to the caller's line.
pub(crate) fn warn(py: Python<'_>, msg: &str) -> PyResult<()> {
    let msg = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    PyErr::warn(py, &py.get_type::<PyUserWarning>(), &msg, 2)
}

/// The strings of a sequence (a list, a tuple, a numpy or pyarrow array of str, any iterable but a
/// bare `str`/`bytes`), refusing anything that is not a str with its position and type.
pub(crate) fn texts(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<String>> {
    if obj.is_instance_of::<PyString>() || obj.is_instance_of::<PyBytes>() {
        return Err(PyTypeError::new_err(format!("{what} must be a sequence of str, not a single str or bytes")));
    }
    let iter = obj.try_iter().map_err(|_| {
        let t = obj.get_type().name().map(|n| n.to_string()).unwrap_or_default();
        PyTypeError::new_err(format!("{what} must be a sequence of str, not {t}"))
    })?;
    let mut out = Vec::new();
    for (i, item) in iter.enumerate() {
        let item = item?;
        match item.cast::<PyString>() {
            Ok(s) => out.push(s.to_cow()?.into_owned()),
            Err(_) => {
                let t = item.get_type().name().map(|n| n.to_string()).unwrap_or_default();
                return Err(PyTypeError::new_err(format!("{what}[{i}] is {t}, not str")));
            }
        }
    }
    Ok(out)
}

/// A GPU context as the CLI makes one: `backend` (vulkan, metal, dx12, gl, auto; `None` reads
/// `WGPU_BACKEND`) and `device` (adapter index or name substring, as `zhinao devices` lists).
pub(crate) fn context(backend: Option<String>, device: Option<String>) -> crate::Result<Arc<Context>> {
    Context::new(&GpuOptions { backend, device, ..Default::default() })
}

/// The adapters this machine offers, as `zhinao devices` lists them (index, name, backend).
#[pyfunction]
#[pyo3(signature = (backend = None))]
fn devices(py: Python<'_>, backend: Option<String>) -> PyResult<Vec<(usize, String, String)>> {
    let list = py.detach(|| crate::gpu::list_adapters(backend.as_deref())).map_err(py_err)?;
    Ok(list.into_iter().map(|a| (a.index, a.name.clone(), a.backend_label())).collect())
}

#[pymodule]
fn _zhinao(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(devices, m)?)?;
    m.add_class::<embed::Embedder>()?;
    m.add_class::<embed::Reranker>()?;
    m.add_class::<lm::Generator>()?;
    m.add_class::<lm::TokenStream>()?;
    Ok(())
}
