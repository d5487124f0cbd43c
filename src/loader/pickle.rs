//! Safe reading of PyTorch `pytorch_model.bin` checkpoints (the zip format of `torch.save`,
//! PyTorch ≥ 1.6) without Python and without executing anything.
//!
//! The archive holds `<prefix>/data.pkl` (a pickle of the state dict) and `<prefix>/data/<key>`
//! (one raw little-endian storage per key). `data.pkl` is interpreted by a tiny pickle VM that
//! knows only the opcodes a state dict needs and an allow-list of globals: `collections.OrderedDict`,
//! `torch._utils._rebuild_tensor_v2`, `torch._utils._rebuild_parameter` and the `torch.*Storage`
//! type tags. Any other global (`os.system`, `builtins.eval`, …) or opcode is refused with
//! `Error::BadFile` before anything could be called. Tensors must be contiguous (row-major strides);
//! their bytes are sliced from the storage entry at the storage offset, never copied.
//!
//! Memory is bounded: the values held at once (stack, marks, memo, tuple/list/dict arenas and their
//! items) may not exceed [`MAX_VALUES`], each a few dozen bytes, so a hostile `data.pkl` (millions
//! of `BINGET`s, marks or empty tuples, 1 or 2 bytes each) is refused at the budget, not after
//! growing to tens of times its size. Strings are bounded by the pickle's own bytes (a `BINGET` shares, not copies).

use super::zip::{read_entries, ZipEntry};
use crate::error::{Error, Result};
use crate::tensor::DType;
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::rc::Rc;

/// The most values `data.pkl` may hold at once: stack entries, marks, memo entries, tuple/list/dict
/// arena entries and their items (a dict item counts twice), rebuilt tensors' dimensions. A state
/// dict needs about 40 per tensor (a 7B checkpoint: ~12 000 in all), so 2^19 leaves room for
/// ~13 000 tensors while a hostile pickle stays under ~40 MB (a value takes 24 to ~48 bytes, twice
/// that while a `Vec` grows).
pub const MAX_VALUES: usize = 1 << 19;

/// One tensor of the state dict: its dtype (`Err(name)` for a storage type the engine does not
/// support, e.g. `"i64"`), shape, and the byte range of its elements inside the archive buffer.
#[derive(Clone, Debug)]
pub struct PickledTensor {
    pub name: String,
    pub dtype: std::result::Result<DType, String>,
    pub shape: Vec<usize>,
    pub data: Range<usize>,
}

/// The globals `data.pkl` may name. Storage types are only type tags: nothing is ever called.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildParameter,
    /// A `torch.<X>Storage` tag: the element dtype (or the name of an unsupported one) and its size.
    Storage(std::result::Result<DType, &'static str>, usize),
}

fn allowed_global(module: &str, name: &str) -> Option<Global> {
    let storage = |d, s| Some(Global::Storage(d, s));
    match (module, name) {
        ("collections", "OrderedDict") => Some(Global::OrderedDict),
        ("torch._utils", "_rebuild_tensor_v2") => Some(Global::RebuildTensorV2),
        ("torch._utils", "_rebuild_parameter") => Some(Global::RebuildParameter),
        ("torch", "FloatStorage") => storage(Ok(DType::F32), 4),
        ("torch", "HalfStorage") => storage(Ok(DType::F16), 2),
        ("torch", "BFloat16Storage") => storage(Ok(DType::BF16), 2),
        ("torch", "IntStorage") => storage(Ok(DType::I32), 4),
        // Loadable (so a checkpoint with such buffers opens), but `get` refuses their dtype.
        ("torch", "LongStorage") => storage(Err("i64"), 8),
        ("torch", "DoubleStorage") => storage(Err("f64"), 8),
        ("torch", "ShortStorage") => storage(Err("i16"), 2),
        ("torch", "CharStorage") => storage(Err("i8"), 1),
        ("torch", "ByteStorage") => storage(Err("u8"), 1),
        ("torch", "BoolStorage") => storage(Err("bool"), 1),
        _ => None,
    }
}

/// A pickle value. Containers are indices into the VM's arenas, so the memo aliases them as
/// Python does, and dropping a deeply nested (hostile) structure cannot overflow the stack.
#[derive(Clone, Debug)]
#[allow(dead_code)] // scalar payloads are only read through `Debug` in error messages
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Rc<str>),
    /// Index into `Vm::seqs`.
    Tuple(usize),
    /// Index into `Vm::seqs`.
    List(usize),
    /// Index into `Vm::dicts`.
    Dict(usize),
    Global(Global),
    /// Boxed (as `Tensor`) so a value stays 24 bytes: the stack and the memo are mostly values.
    Storage(Rc<StorageRef>),
    Tensor(Rc<RawTensor>),
}

/// A persistent id `('storage', torch.<X>Storage, key, location, numel)`.
#[derive(Debug)]
struct StorageRef {
    dtype: std::result::Result<DType, &'static str>,
    elem: usize,
    key: Rc<str>,
    numel: usize,
}

/// A rebuilt tensor before its storage is resolved: `bytes` is relative to storage `key`.
#[derive(Debug)]
struct RawTensor {
    key: Rc<str>,
    dtype: std::result::Result<DType, &'static str>,
    shape: Vec<usize>,
    bytes: Range<usize>,
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global(_) => "global",
            Value::Storage(_) => "storage",
            Value::Tensor(_) => "tensor",
        }
    }
}

/// Reads the state dict of a `torch.save` zip archive held in `buf` (the whole file, usually an
/// mmap). `file` names the archive in errors. Non-tensor values of the dict are skipped.
pub fn read_state_dict(buf: &[u8], file: &str) -> Result<Vec<PickledTensor>> {
    let entries = read_entries(buf, file)?;
    let pkl = entries
        .iter()
        .find(|e| e.name == "data.pkl" || e.name.ends_with("/data.pkl"))
        .ok_or_else(|| Error::bad_file(file, "no data.pkl in the archive: not a torch.save checkpoint"))?;
    let prefix = &pkl.name[..pkl.name.len() - "data.pkl".len()];
    if let Some(order) = entries.iter().find(|e| e.name == format!("{prefix}byteorder")) {
        if &buf[order.data.clone()] != b"little" {
            return Err(Error::Unsupported(format!("{file}: big-endian torch checkpoint")));
        }
    }
    let storages: HashMap<&str, &ZipEntry> =
        entries.iter().filter_map(|e| Some((e.name.strip_prefix(prefix)?.strip_prefix("data/")?, e))).collect();
    let mut vm = Vm::new(&buf[pkl.data.clone()], file);
    let root = vm.run()?;
    let Value::Dict(items) = root else {
        return Err(Error::bad_file(file, format!("data.pkl holds a {}, not a state dict", root.kind())));
    };
    let mut out = Vec::new();
    for (k, v) in &vm.dicts[items] {
        let (Value::Str(name), Value::Tensor(t)) = (k, v) else {
            continue;
        };
        let key = &*t.key;
        let entry = storages.get(key).ok_or_else(|| {
            Error::bad_file(file, format!("tensor '{name}': storage data/{key} missing from the archive"))
        })?;
        if t.bytes.end > entry.data.len() {
            return Err(Error::bad_file(
                file,
                format!("tensor '{name}': storage data/{key} has {} bytes, needs {}", entry.data.len(), t.bytes.end),
            ));
        }
        out.push(PickledTensor {
            name: name.to_string(),
            dtype: t.dtype.map_err(str::to_string),
            shape: t.shape.clone(),
            data: entry.data.start + t.bytes.start..entry.data.start + t.bytes.end,
        });
    }
    Ok(out)
}

/// The pickle opcodes this VM accepts (names as in CPython's `pickletools`).
mod op {
    pub const PROTO: u8 = 0x80;
    pub const FRAME: u8 = 0x95;
    pub const STOP: u8 = b'.';
    pub const MARK: u8 = b'(';
    pub const NONE: u8 = b'N';
    pub const NEWTRUE: u8 = 0x88;
    pub const NEWFALSE: u8 = 0x89;
    pub const EMPTY_DICT: u8 = b'}';
    pub const EMPTY_LIST: u8 = b']';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const BININT: u8 = b'J';
    pub const BININT1: u8 = b'K';
    pub const BININT2: u8 = b'M';
    pub const LONG1: u8 = 0x8a;
    pub const BINFLOAT: u8 = b'G';
    pub const BINUNICODE: u8 = b'X';
    pub const SHORT_BINUNICODE: u8 = 0x8c;
    pub const TUPLE: u8 = b't';
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE2: u8 = 0x86;
    pub const TUPLE3: u8 = 0x87;
    pub const LIST: u8 = b'l';
    pub const DICT: u8 = b'd';
    pub const SETITEM: u8 = b's';
    pub const SETITEMS: u8 = b'u';
    pub const APPEND: u8 = b'a';
    pub const APPENDS: u8 = b'e';
    pub const BINPUT: u8 = b'q';
    pub const LONG_BINPUT: u8 = b'r';
    pub const MEMOIZE: u8 = 0x94;
    pub const BINGET: u8 = b'h';
    pub const LONG_BINGET: u8 = b'j';
    pub const GLOBAL: u8 = b'c';
    pub const STACK_GLOBAL: u8 = 0x93;
    pub const BINPERSID: u8 = b'Q';
    pub const REDUCE: u8 = b'R';
    pub const BUILD: u8 = b'b';
}

/// The pickle machine: a value stack, a mark stack and a memo.
struct Vm<'a> {
    code: &'a [u8],
    pos: usize,
    file: &'a str,
    stack: Vec<Value>,
    marks: Vec<usize>,
    /// A B-tree rather than a hash table: no doubling spike when it grows (a memo entry ~40 bytes).
    memo: BTreeMap<u32, Value>,
    /// Elements of every tuple and list.
    seqs: Vec<Vec<Value>>,
    /// Items of every dict, in insertion order.
    dicts: Vec<Vec<(Value, Value)>>,
    /// Arena entries and items of `seqs` and `dicts` (a dict item counts twice): with the stack
    /// and the memo, what [`MAX_VALUES`] bounds.
    held: usize,
}

impl<'a> Vm<'a> {
    fn new(code: &'a [u8], file: &'a str) -> Self {
        let (stack, marks, memo, seqs, dicts) = Default::default();
        Vm { code, pos: 0, file, stack, marks, memo, seqs, dicts, held: 0 }
    }

    /// Values held now: the stack, the marks, the memo, the arenas and their items.
    fn values(&self) -> usize {
        self.stack.len() + self.marks.len() + self.memo.len() + self.held
    }
    /// Refuses before `extra` more values would pass [`MAX_VALUES`].
    fn reserve(&self, extra: usize) -> Result<()> {
        if self.values().saturating_add(extra) > MAX_VALUES {
            return Err(self.err(format!(
                "more than {MAX_VALUES} values at once (stack, memo, containers): not a state dict this reader accepts"
            )));
        }
        Ok(())
    }
    fn push(&mut self, v: Value) -> Result<()> {
        self.reserve(1)?;
        self.stack.push(v);
        Ok(())
    }

    /// A tuple or list of `items` (already counted: they come off the stack).
    fn new_seq(&mut self, items: Vec<Value>) -> Result<usize> {
        self.reserve(1)?;
        self.held += 1 + items.len();
        self.seqs.push(items);
        Ok(self.seqs.len() - 1)
    }
    fn new_tuple(&mut self, items: Vec<Value>) -> Result<Value> {
        self.new_seq(items).map(Value::Tuple)
    }
    fn new_list(&mut self, items: Vec<Value>) -> Result<Value> {
        self.new_seq(items).map(Value::List)
    }
    fn new_dict(&mut self) -> Result<Value> {
        self.reserve(1)?;
        self.held += 1;
        self.dicts.push(Vec::new());
        Ok(Value::Dict(self.dicts.len() - 1))
    }
    /// The elements of a tuple value.
    fn tuple(&self, v: &Value, what: &str) -> Result<&[Value]> {
        match v {
            Value::Tuple(i) => Ok(&self.seqs[*i]),
            other => Err(self.err(format!("{what} is a {}, not a tuple", other.kind()))),
        }
    }

    fn err(&self, msg: impl std::fmt::Display) -> Error {
        Error::bad_file(self.file, format!("data.pkl at byte {}: {msg}", self.pos))
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let code = self.code;
        let s = self.pos.checked_add(n).and_then(|end| code.get(self.pos..end));
        let s = s.ok_or_else(|| self.err("truncated pickle"))?;
        self.pos += n;
        Ok(s)
    }
    fn skip(&mut self, n: usize) -> Result<()> {
        self.take(n).map(|_| ())
    }
    fn uint(&mut self, n: usize) -> Result<u64> {
        Ok(self.take(n)?.iter().rev().fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
    }
    fn line(&mut self) -> Result<&'a str> {
        let rest = self.code.get(self.pos..).unwrap_or(&[]);
        let n = rest.iter().position(|&b| b == b'\n').ok_or_else(|| self.err("unterminated GLOBAL"))?;
        let s = std::str::from_utf8(&rest[..n]).map_err(|_| self.err("GLOBAL name is not UTF-8"))?;
        self.pos += n + 1;
        Ok(s)
    }
    fn string(&mut self, n: usize) -> Result<Value> {
        let b = self.take(n)?;
        let s = std::str::from_utf8(b).map_err(|_| self.err("string is not UTF-8"))?;
        Ok(Value::Str(s.into()))
    }
    fn pop(&mut self) -> Result<Value> {
        self.stack.pop().ok_or_else(|| self.err("stack underflow"))
    }
    fn top(&self) -> Result<Value> {
        self.stack.last().cloned().ok_or_else(|| self.err("stack underflow"))
    }
    /// Pops everything above the last MARK.
    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let m = self.marks.pop().ok_or_else(|| self.err("no MARK on the stack"))?;
        if m > self.stack.len() {
            return Err(self.err("MARK above the stack"));
        }
        Ok(self.stack.split_off(m))
    }
    fn global(&self, module: &str, name: &str) -> Result<Value> {
        allowed_global(module, name).map(Value::Global).ok_or_else(|| {
            self.err(format!("refusing pickle global {module}.{name} (only torch state dicts of tensors are accepted)"))
        })
    }
    fn set_items(&mut self, target: Value, kv: Vec<Value>) -> Result<()> {
        let Value::Dict(d) = target else {
            return Err(self.err(format!("SETITEM on a {}", target.kind())));
        };
        if !kv.len().is_multiple_of(2) {
            return Err(self.err("SETITEMS with an odd number of values"));
        }
        // The items come off the stack, so the count of values held does not grow.
        self.held += kv.len();
        let mut it = kv.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            self.dicts[d].push((k, v));
        }
        Ok(())
    }
    fn append(&mut self, target: Value, items: Vec<Value>) -> Result<()> {
        let Value::List(l) = target else {
            return Err(self.err(format!("APPEND on a {}", target.kind())));
        };
        self.held += items.len();
        self.seqs[l].extend(items);
        Ok(())
    }

    /// Runs until STOP and returns the pickled object.
    fn run(&mut self) -> Result<Value> {
        loop {
            let op = self.take(1)?[0];
            match op {
                op::PROTO => self.skip(1)?, // the protocol version
                op::FRAME => self.skip(8)?, // frame length: frames need no special handling
                op::STOP => return self.pop(),
                op::MARK => {
                    self.reserve(1)?;
                    self.marks.push(self.stack.len());
                }
                op::NONE => self.push(Value::None)?,
                op::NEWTRUE => self.push(Value::Bool(true))?,
                op::NEWFALSE => self.push(Value::Bool(false))?,
                op::EMPTY_DICT => {
                    let d = self.new_dict()?;
                    self.push(d)?;
                }
                op::EMPTY_LIST => {
                    let l = self.new_list(Vec::new())?;
                    self.push(l)?;
                }
                op::EMPTY_TUPLE => {
                    let t = self.new_tuple(Vec::new())?;
                    self.push(t)?;
                }
                op::BININT1 | op::BININT2 => {
                    let v = self.uint(if op == op::BININT1 { 1 } else { 2 })?;
                    self.push(Value::Int(v as i64))?;
                }
                op::BININT => {
                    let v = self.uint(4)? as u32 as i32;
                    self.push(Value::Int(v.into()))?;
                }
                op::LONG1 => {
                    let n = self.uint(1)? as usize;
                    if n > 8 {
                        return Err(self.err(format!("LONG1 of {n} bytes is too large")));
                    }
                    let b = self.take(n)?;
                    let mut v = b.iter().rev().fold(0i64, |acc, &x| (acc << 8) | i64::from(x));
                    if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n); // two's complement sign
                    }
                    self.push(Value::Int(v))?;
                }
                op::BINFLOAT => {
                    let b = self.take(8)?;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    self.push(Value::Float(f64::from_be_bytes(a)))?; // big-endian
                }
                op::BINUNICODE | op::SHORT_BINUNICODE => {
                    let n = self.uint(if op == op::BINUNICODE { 4 } else { 1 })? as usize;
                    let s = self.string(n)?;
                    self.push(s)?;
                }
                op::TUPLE => {
                    let v = self.pop_mark()?;
                    let t = self.new_tuple(v)?;
                    self.push(t)?;
                }
                op::TUPLE1 | op::TUPLE2 | op::TUPLE3 => {
                    let n = usize::from(op - op::TUPLE1 + 1);
                    if self.stack.len() < n {
                        return Err(self.err("stack underflow"));
                    }
                    let v = self.stack.split_off(self.stack.len() - n);
                    let t = self.new_tuple(v)?;
                    self.push(t)?;
                }
                op::LIST => {
                    let v = self.pop_mark()?;
                    let l = self.new_list(v)?;
                    self.push(l)?;
                }
                op::DICT => {
                    let kv = self.pop_mark()?;
                    let d = self.new_dict()?;
                    self.set_items(d.clone(), kv)?;
                    self.push(d)?;
                }
                op::SETITEM => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let d = self.top()?;
                    self.set_items(d, vec![k, v])?;
                }
                op::SETITEMS => {
                    let kv = self.pop_mark()?;
                    let d = self.top()?;
                    self.set_items(d, kv)?;
                }
                op::APPEND => {
                    let v = self.pop()?;
                    let l = self.top()?;
                    self.append(l, vec![v])?;
                }
                op::APPENDS => {
                    let v = self.pop_mark()?;
                    let l = self.top()?;
                    self.append(l, v)?;
                }
                op::BINPUT | op::LONG_BINPUT | op::MEMOIZE => {
                    let key = match op {
                        op::BINPUT => self.uint(1)? as u32,
                        op::LONG_BINPUT => self.uint(4)? as u32,
                        _ => self.memo.len() as u32,
                    };
                    let v = self.top()?;
                    if !self.memo.contains_key(&key) {
                        self.reserve(1)?;
                    }
                    self.memo.insert(key, v);
                }
                op::BINGET | op::LONG_BINGET => {
                    let key = self.uint(if op == op::BINGET { 1 } else { 4 })? as u32;
                    let v = self.memo.get(&key).cloned().ok_or_else(|| self.err(format!("memo key {key} unset")))?;
                    self.push(v)?;
                }
                op::GLOBAL => {
                    // "module\nname\n"
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = self.global(module, name)?;
                    self.push(g)?;
                }
                op::STACK_GLOBAL => {
                    let (name, module) = (self.pop()?, self.pop()?);
                    let (Value::Str(m), Value::Str(n)) = (&module, &name) else {
                        return Err(self.err("STACK_GLOBAL needs two strings"));
                    };
                    let g = self.global(m, n)?;
                    self.push(g)?;
                }
                op::BINPERSID => {
                    let pid = self.pop()?;
                    let s = self.persistent_load(pid)?;
                    self.push(s)?;
                }
                op::REDUCE => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    let v = self.reduce(func, args)?;
                    self.push(v)?;
                }
                op::BUILD => {
                    // The state of an OrderedDict (torch's `_metadata`) or a tensor: ignored.
                    self.pop()?;
                    match self.top()? {
                        Value::Dict(_) | Value::Tensor(_) => {}
                        other => return Err(self.err(format!("BUILD on a {}", other.kind()))),
                    }
                }
                _ => return Err(self.err(format!("unsupported pickle opcode 0x{op:02x}"))),
            }
        }
    }

    /// `('storage', torch.XStorage, key, location, numel)` → a storage reference.
    fn persistent_load(&self, pid: Value) -> Result<Value> {
        match self.tuple(&pid, "persistent id")? {
            [Value::Str(tag), Value::Global(Global::Storage(dtype, elem)), Value::Str(key), _location, Value::Int(numel)]
                if &**tag == "storage" && *numel >= 0 =>
            {
                Ok(Value::Storage(Rc::new(StorageRef {
                    dtype: *dtype,
                    elem: *elem,
                    key: key.clone(),
                    numel: *numel as usize,
                })))
            }
            _ => Err(self.err("persistent id is not ('storage', torch.<X>Storage, key, location, numel)")),
        }
    }

    fn reduce(&mut self, func: Value, args: Value) -> Result<Value> {
        let args = self.tuple(&args, "REDUCE argument")?;
        match func {
            Value::Global(Global::OrderedDict) if args.is_empty() => self.new_dict(),
            Value::Global(Global::RebuildTensorV2) => {
                let t = self.rebuild_tensor(args)?;
                if let Value::Tensor(raw) = &t {
                    // Its shape is a copy: a memoized size tuple rebuilt again and again counts each time.
                    self.reserve(raw.shape.len())?;
                    self.held += raw.shape.len();
                }
                Ok(t)
            }
            Value::Global(Global::RebuildParameter) => match args.first() {
                Some(t @ Value::Tensor(_)) => Ok(t.clone()),
                _ => Err(self.err("_rebuild_parameter without a tensor")),
            },
            other => Err(self.err(format!("refusing to call a {} ({other:?})", other.kind()))),
        }
    }

    /// `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, hooks[, metadata])`.
    fn rebuild_tensor(&self, args: &[Value]) -> Result<Value> {
        let [Value::Storage(s), Value::Int(offset), size, stride, ..] = args else {
            return Err(self.err("_rebuild_tensor_v2 arguments are not (storage, offset, size, stride, …)"))?;
        };
        let ints = |t: &Value| -> Result<Vec<usize>> {
            self.tuple(t, "tensor size/stride")?
                .iter()
                .map(|v| match v {
                    Value::Int(i) if *i >= 0 => Ok(*i as usize),
                    _ => Err(self.err("tensor size/stride is not a tuple of non-negative ints")),
                })
                .collect()
        };
        let StorageRef { dtype, elem, key, numel } = &**s;
        let (shape, stride) = (ints(size)?, ints(stride)?);
        if shape.len() != stride.len() {
            return Err(self.err("tensor size and stride have different lengths"));
        }
        // Row-major contiguity; a dimension of size 1 may carry any stride.
        let mut expect = 1usize;
        for (&n, &s) in shape.iter().zip(&stride).rev() {
            if n != 1 && s != expect {
                return Err(self.err(format!(
                    "tensor of storage {key} is not contiguous (size {shape:?}, stride {stride:?}); save it with .contiguous()"
                )));
            }
            expect = expect.checked_mul(n).ok_or_else(|| self.err("tensor size overflows"))?;
        }
        let count = expect;
        let offset = usize::try_from(*offset).map_err(|_| self.err("negative storage offset"))?;
        let end = offset.checked_add(count).filter(|&e| e <= *numel).ok_or_else(|| {
            self.err(format!(
                "tensor of storage {key} (offset {offset}, {count} elements) exceeds its {numel} elements"
            ))
        })?;
        let bytes = |n: usize| n.checked_mul(*elem).ok_or_else(|| self.err("tensor byte size overflows"));
        let bytes = bytes(offset)?..bytes(end)?;
        Ok(Value::Tensor(Rc::new(RawTensor { key: key.clone(), dtype: *dtype, shape, bytes })))
    }
}
