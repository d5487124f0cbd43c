//! Integration tests of `zhinao::loader` on PyTorch checkpoints: `torch.save` zips built by hand with
//! a tiny pickle writer, the safe unpickler's refusals (hostile opcodes, broken archives, value
//! floods within a memory bound) and mutation fuzz of a valid checkpoint.

use std::path::{Path, PathBuf};
use zhinao::error::Error;
use zhinao::loader::{VarBuilder, WeightFiles};
use zhinao::tensor::DType;

mod common;
use common::{bf16s, f16s, f32s, i32s, temp_dir};

// ---- helpers -------------------------------------------------------------------------------

/// The global allocator of this test binary: the system's, counting the bytes each thread holds
/// and their peak, so a test bounds what one call allocates (other test threads do not count).
struct CountingAlloc;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

thread_local! {
    static LIVE: std::cell::Cell<isize> = const { std::cell::Cell::new(0) };
    static PEAK: std::cell::Cell<isize> = const { std::cell::Cell::new(0) };
}

fn track(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        let p = unsafe { std::alloc::System.alloc(layout) };
        if !p.is_null() {
            track(layout.size() as isize);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        let p = unsafe { std::alloc::System.alloc_zeroed(layout) };
        if !p.is_null() {
            track(layout.size() as isize);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        unsafe { std::alloc::System.dealloc(ptr, layout) };
        track(-(layout.size() as isize));
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { std::alloc::System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            track(new_size as isize - layout.size() as isize);
        }
        p
    }
}

/// `f()` and the most bytes this thread held during it beyond what it held before.
fn peak_alloc<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let start = LIVE.with(|l| l.get());
    PEAK.with(|p| p.set(start));
    let r = f();
    (r, (PEAK.with(|p| p.get()) - start).max(0) as usize)
}

fn msg(e: Error) -> String {
    e.to_string()
}

// ---- pickle fixtures ---------------------------------------------------------------------------

/// A minimal pickle writer emitting what `torch.save` (protocol 2) emits.
#[derive(Default)]
struct Pkl(Vec<u8>);

impl Pkl {
    fn op(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
    fn global(&mut self, module: &str, name: &str) -> &mut Self {
        self.op(b"c").op(module.as_bytes()).op(b"\n").op(name.as_bytes()).op(b"\n")
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.op(b"X").op(&(s.len() as u32).to_le_bytes()).op(s.as_bytes())
    }
    fn int(&mut self, v: usize) -> &mut Self {
        if v < 256 {
            self.op(&[b'K', v as u8])
        } else {
            self.op(b"J").op(&(v as u32).to_le_bytes())
        }
    }
    fn ints(&mut self, v: &[usize]) -> &mut Self {
        self.op(b"(");
        for &x in v {
            self.int(x);
        }
        self.op(b"t")
    }
    /// `_rebuild_tensor_v2(persistent(('storage', torch.<storage>, key, 'cpu', numel)), offset, size, stride, False, OrderedDict())`
    fn tensor(
        &mut self,
        storage: &str,
        key: &str,
        numel: usize,
        offset: usize,
        shape: &[usize],
        stride: &[usize],
    ) -> &mut Self {
        self.global("torch._utils", "_rebuild_tensor_v2").op(b"(");
        self.op(b"(").str("storage").global("torch", storage).str(key).str("cpu").int(numel).op(b"tQ");
        self.int(offset).ints(shape).ints(stride).op(b"\x89");
        self.global("collections", "OrderedDict").op(b")R").op(b"tR")
    }
}

/// A tensor of the fixture: name, storage type, storage key, offset, shape.
struct PT {
    name: &'static str,
    storage: &'static str,
    key: &'static str,
    offset: usize,
    shape: Vec<usize>,
}

fn contiguous_stride(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// The state-dict pickle of `tensors` (`storages`: key → (element size, numel)).
fn state_dict_pickle(tensors: &[PT], numel: impl Fn(&str) -> usize) -> Vec<u8> {
    let mut p = Pkl::default();
    p.op(b"\x80\x02").global("collections", "OrderedDict").op(b"q\x00)Rq\x01(");
    for t in tensors {
        p.str(t.name).tensor(t.storage, t.key, numel(t.key), t.offset, &t.shape, &contiguous_stride(&t.shape));
    }
    p.op(b"u").op(b"}bh\x01."); // BUILD with an empty state (as torch does for _metadata), return memo 1
    p.0
}

/// A stored zip with 64-byte aligned data (like PyTorch's writer). `method` is written as given.
fn zip(entries: &[(&str, &[u8])], method: u16) -> Vec<u8> {
    zip_with(entries, method, false)
}

/// With `zip64`, like `torch.save`: zip64 end records, and the local header offsets only in the
/// zip64 extra field of each central entry (the classic fields hold 0xFFFFFFFF).
fn zip_with(entries: &[(&str, &[u8])], method: u16, zip64: bool) -> Vec<u8> {
    let (mut out, mut central) = (Vec::new(), Vec::new());
    for (name, data) in entries {
        let offset = out.len() as u32;
        let pad = (64 - (out.len() + 30 + name.len() + 4) % 64) % 64;
        out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        out.extend_from_slice(&[0, 0, 0, 0]); // version, flags
        out.extend_from_slice(&method.to_le_bytes());
        out.extend_from_slice(&[0; 8]); // time, date, crc
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(&((pad + 4) as u16).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&0x4246u16.to_le_bytes()); // "FB" padding field
        out.extend_from_slice(&(pad as u16).to_le_bytes());
        out.extend(std::iter::repeat_n(b'Z', pad));
        assert_eq!(out.len() % 64, 0);
        out.extend_from_slice(data);
        central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        central.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // made by, needed, flags
        central.extend_from_slice(&method.to_le_bytes());
        central.extend_from_slice(&[0; 8]);
        central.extend_from_slice(&(data.len() as u32).to_le_bytes());
        central.extend_from_slice(&(data.len() as u32).to_le_bytes());
        central.extend_from_slice(&(name.len() as u16).to_le_bytes());
        central.extend_from_slice(&(if zip64 { 12u16 } else { 0 }).to_le_bytes()); // extra length
        central.extend_from_slice(&[0; 10]); // comment, disk, attrs
        central.extend_from_slice(&(if zip64 { u32::MAX } else { offset }).to_le_bytes());
        central.extend_from_slice(name.as_bytes());
        if zip64 {
            central.extend_from_slice(&[1, 0, 8, 0]); // zip64 extended information, 8 bytes
            central.extend_from_slice(&u64::from(offset).to_le_bytes());
        }
    }
    let cd_offset = out.len() as u32;
    out.extend_from_slice(&central);
    if zip64 {
        let record = out.len() as u64;
        out.extend_from_slice(&0x0606_4b50u32.to_le_bytes());
        out.extend_from_slice(&44u64.to_le_bytes());
        out.extend_from_slice(&[45, 0, 45, 0, 0, 0, 0, 0, 0, 0, 0, 0]); // versions, disks
        out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
        out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
        out.extend_from_slice(&(central.len() as u64).to_le_bytes());
        out.extend_from_slice(&u64::from(cd_offset).to_le_bytes());
        out.extend_from_slice(&0x0706_4b50u32.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&record.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&[0xff; 12]); // counts, size and offset: see the zip64 record
        out.extend_from_slice(&[0, 0]);
        return out;
    }
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    out.extend_from_slice(&(central.len() as u32).to_le_bytes());
    out.extend_from_slice(&cd_offset.to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    out
}

/// A torch-format checkpoint: f32 storage "0" shared by two tensors (offset view), bf16, f16, i32.
fn torch_checkpoint(pkl: &[u8]) -> Vec<u8> {
    let s0 = f32s(&[1., 2., 3., 4., 5., 6., 7., 8.]);
    let s1 = bf16s(&[0.5, -0.5, 1.5, -1.5]);
    let s2 = f16s(&[10., 20.]);
    let s3 = i32s(&[7, -7, 0x7777_7777]);
    zip_with(
        &[
            ("pytorch_model/data.pkl", pkl),
            ("pytorch_model/byteorder", b"little"),
            ("pytorch_model/data/0", &s0),
            ("pytorch_model/data/1", &s1),
            ("pytorch_model/data/2", &s2),
            ("pytorch_model/data/3", &s3),
            ("pytorch_model/version", b"3\n"),
        ],
        0,
        true,
    )
}

fn good_tensors() -> Vec<PT> {
    vec![
        PT { name: "model.norm.weight", storage: "FloatStorage", key: "0", offset: 0, shape: vec![2, 3] },
        PT { name: "model.tail", storage: "FloatStorage", key: "0", offset: 6, shape: vec![2] },
        PT { name: "model.embed_tokens.weight", storage: "BFloat16Storage", key: "1", offset: 0, shape: vec![2, 2] },
        PT { name: "linear.weight", storage: "HalfStorage", key: "2", offset: 0, shape: vec![1, 2] },
        PT { name: "g_idx", storage: "IntStorage", key: "3", offset: 1, shape: vec![2] },
    ]
}

fn numel(key: &str) -> usize {
    match key {
        "0" => 8,
        "1" => 4,
        "2" => 2,
        _ => 3,
    }
}

fn write_bin(tag: &str, bytes: &[u8]) -> PathBuf {
    let dir = temp_dir(tag);
    std::fs::write(dir.join("pytorch_model.bin"), bytes).unwrap();
    dir
}

#[test]
fn pickle_state_dict_loads() {
    // A classic (non-zip64) archive too.
    let pkl = state_dict_pickle(&good_tensors(), numel);
    let z = zip(
        &[
            ("archive/data.pkl", &pkl[..]),
            ("archive/data/0", &f32s(&[0.; 8])),
            ("archive/data/1", &[0; 8]),
            ("archive/data/2", &[0; 4]),
            ("archive/data/3", &[0; 12]),
        ],
        0,
    );
    assert_eq!(WeightFiles::open(&write_bin("pkl-classic", &z)).unwrap().names().count(), 5);
    assert_eq!(WeightFiles::from_bytes("in-memory.bin", z).unwrap().get("g_idx").unwrap().shape, [2]);

    let pkl = state_dict_pickle(&good_tensors(), numel);
    let dir = write_bin("pkl-good", &torch_checkpoint(&pkl));
    let wf = WeightFiles::open(&dir).unwrap();
    assert_eq!(wf.names().count(), 5);
    let t = wf.get("model.norm.weight").unwrap();
    assert_eq!((t.dtype, t.shape.clone()), (DType::F32, vec![2, 3]));
    assert_eq!(t.to_f32_vec().unwrap(), [1., 2., 3., 4., 5., 6.]);
    assert_eq!(wf.get("model.tail").unwrap().to_f32_vec().unwrap(), [7., 8.]);
    let e = wf.get("model.embed_tokens.weight").unwrap();
    assert_eq!((e.dtype, e.to_f32_vec().unwrap()), (DType::BF16, vec![0.5, -0.5, 1.5, -1.5]));
    let l = wf.get("linear.weight").unwrap();
    assert_eq!((l.dtype, l.to_f32_vec().unwrap()), (DType::F16, vec![10., 20.]));
    assert_eq!(wf.get("g_idx").unwrap().to_i32_vec().unwrap(), [-7, 0x7777_7777]);
    // The VarBuilder works the same over a .bin.
    let vb = VarBuilder::new(&wf);
    assert!(vb.pp("linear").get(&[1, 2], "weight").is_ok());
    let err = msg(vb.pp("linear").get(&[2], "weight").unwrap_err());
    assert!(err.contains("pytorch_model.bin") && err.contains("linear.weight"), "{err}");
}

#[test]
fn pickle_parameter_wrapper_and_empty_dict_root() {
    // {'w': _rebuild_parameter(_rebuild_tensor_v2(...), True, OrderedDict())} with EMPTY_DICT + SETITEM.
    let mut p = Pkl::default();
    p.op(b"\x80\x02}q\x00").str("w").global("torch._utils", "_rebuild_parameter").op(b"(");
    p.tensor("FloatStorage", "0", 8, 2, &[3], &[1]).op(b"\x88").global("collections", "OrderedDict").op(b")RtRs.");
    let wf = WeightFiles::open(&write_bin("pkl-param", &torch_checkpoint(&p.0))).unwrap();
    assert_eq!(wf.get("w").unwrap().to_f32_vec().unwrap(), [3., 4., 5.]);
}

fn open_err(tag: &str, bytes: &[u8]) -> String {
    match WeightFiles::open(&write_bin(tag, bytes)) {
        Ok(_) => panic!("{tag}: a bad checkpoint was accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn malicious_pickles_are_refused() {
    // GLOBAL os.system + REDUCE ('echo pwned',)
    let mut p = Pkl::default();
    p.op(b"\x80\x02").global("os", "system").op(b"(").str("touch /tmp/zhinao-pwned").op(b"tR.");
    let e = open_err("pkl-os", &torch_checkpoint(&p.0));
    assert!(e.contains("refusing pickle global os.system"), "{e}");
    assert!(!Path::new("/tmp/zhinao-pwned").exists());

    // STACK_GLOBAL builtins.eval, inside an otherwise valid state dict.
    let mut p = Pkl::default();
    p.op(b"\x80\x04}").str("x").str("builtins").str("eval").op(b"\x93").op(b"(").str("1").op(b"tRs.");
    let e = open_err("pkl-eval", &torch_checkpoint(&p.0));
    assert!(e.contains("builtins.eval"), "{e}");

    // A storage type that is not on the list.
    let mut p = Pkl::default();
    p.op(b"\x80\x02").global("__builtin__", "exec").op(b".");
    assert!(open_err("pkl-exec", &torch_checkpoint(&p.0)).contains("__builtin__.exec"));

    // Unknown opcodes: INST ('i') and an undefined byte.
    for op in [&b"i"[..], &b"\xff"[..]] {
        let mut p = Pkl::default();
        p.op(b"\x80\x02").op(op).op(b"os\nsystem\n.");
        let e = open_err("pkl-opcode", &torch_checkpoint(&p.0));
        assert!(e.contains("unsupported pickle opcode"), "{e}");
    }

    // A truncated pickle.
    let pkl = state_dict_pickle(&good_tensors(), numel);
    let e = open_err("pkl-trunc", &torch_checkpoint(&pkl[..pkl.len() / 2]));
    assert!(e.contains("data.pkl"), "{e}");
}

#[test]
fn broken_torch_archives_are_refused() {
    let pkl = state_dict_pickle(&good_tensors(), numel);
    let good = torch_checkpoint(&pkl);
    // Truncated zip: the central directory is cut off.
    for cut in [10, good.len() / 2, good.len() - 3] {
        let e = open_err("zip-trunc", &good[..cut]);
        assert!(e.contains("pytorch_model.bin"), "{e}");
    }
    // Compressed entries.
    let z = zip(&[("archive/data.pkl", &pkl[..])], 8);
    assert!(open_err("zip-deflate", &z).contains("compressed"));
    // No data.pkl.
    assert!(open_err("zip-nopkl", &zip(&[("archive/x", b"1")], 0)).contains("data.pkl"));
    // Storage smaller than the tensor claims.
    let big = [PT { name: "w", storage: "FloatStorage", key: "0", offset: 0, shape: vec![4, 4] }];
    let e = open_err("pkl-oob", &torch_checkpoint(&state_dict_pickle(&big, |_| 16)));
    assert!(e.contains("'w'") || e.contains("storage"), "{e}");
    // Offset past the storage's numel.
    let off = [PT { name: "w", storage: "FloatStorage", key: "0", offset: 7, shape: vec![2] }];
    assert!(open_err("pkl-off", &torch_checkpoint(&state_dict_pickle(&off, numel))).contains("exceeds"));
    // Missing storage entry.
    let miss = [PT { name: "w", storage: "FloatStorage", key: "9", offset: 0, shape: vec![1] }];
    assert!(open_err("pkl-miss", &torch_checkpoint(&state_dict_pickle(&miss, |_| 1))).contains("data/9"));
}

#[test]
fn non_contiguous_tensor_is_refused() {
    let mut p = Pkl::default();
    p.op(b"\x80\x02}").str("t").tensor("FloatStorage", "0", 8, 0, &[2, 3], &[1, 2]).op(b"s.");
    let e = open_err("pkl-stride", &torch_checkpoint(&p.0));
    assert!(e.contains("not contiguous"), "{e}");
}

/// Cross-check against a live `torch.save`. CI keeps Python out: there, the committed
/// `assets/tiny-bert/pytorch_model.bin` and `assets/tiny-reranker/pytorch_model.bin` (written by
/// torch.save in tools/fixtures) are read by tests/model_bert.rs and tests/model_reranker.rs.
/// Run this one by hand with `cargo test --release --test loader_torch -- --ignored`.
#[test]
#[ignore = "needs python3 with torch (kept out of CI); run with --ignored"]
fn torch_saved_checkpoint() {
    let dir = temp_dir("torch");
    let script = "import torch,sys,collections\n\
        b=torch.arange(12,dtype=torch.float32).reshape(3,4)\n\
        sd=collections.OrderedDict(a=b, b=b[1], c=torch.ones(2,3,dtype=torch.bfloat16), d=torch.tensor([1,2],dtype=torch.int32), e=torch.nn.Parameter(torch.zeros(2,dtype=torch.float16)))\n\
        torch.save(sd, sys.argv[1])\n";
    let out = std::process::Command::new("python3")
        .args(["-c", script, dir.join("pytorch_model.bin").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let wf = WeightFiles::open(&dir).unwrap();
    assert_eq!(wf.get("a").unwrap().to_f32_vec().unwrap(), (0..12).map(|x| x as f32).collect::<Vec<_>>());
    assert_eq!(wf.get("b").unwrap().to_f32_vec().unwrap(), [4., 5., 6., 7.]);
    assert_eq!(wf.get("c").unwrap().to_f32_vec().unwrap(), [1.; 6]);
    assert_eq!(wf.get("d").unwrap().to_i32_vec().unwrap(), [1, 2]);
    assert_eq!(wf.get("e").unwrap().dtype, DType::F16);

    // A module's state_dict (carries `_metadata`), and a transposed tensor that must be refused.
    let script = "import torch,sys\n\
        torch.manual_seed(0)\n\
        m=torch.nn.Sequential(torch.nn.Embedding(5,4),torch.nn.Linear(4,3)).to(torch.bfloat16)\n\
        torch.save(m.state_dict(), sys.argv[1]+'/pytorch_model.bin')\n\
        torch.save({'t': torch.zeros(2,3).t()}, sys.argv[1]+'/t.bin')\n\
        open(sys.argv[1]+'/w.txt','w').write(' '.join(str(x) for x in m[1].weight.float().flatten().tolist()))\n";
    let dir = temp_dir("torch-module");
    let out = std::process::Command::new("python3").args(["-c", script, dir.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let wf = WeightFiles::open(&dir).unwrap();
    assert_eq!(wf.names().collect::<Vec<_>>(), ["0.weight", "1.bias", "1.weight"]);
    let w = VarBuilder::new(&wf).pp(1).get(&[3, 4], "weight").unwrap();
    let want: Vec<f32> =
        std::fs::read_to_string(dir.join("w.txt")).unwrap().split(' ').map(|x| x.parse().unwrap()).collect();
    assert_eq!((w.dtype, w.to_f32_vec().unwrap()), (DType::BF16, want));
    let e = msg(WeightFiles::open_file(&dir.join("t.bin")).err().unwrap());
    assert!(e.contains("not contiguous"), "{e}");
}
// ---- robustness -----------------------------------------------------------------------------

#[test]
fn deeply_nested_pickle_does_not_overflow_the_stack() {
    let mut p = Pkl::default();
    p.op(b"\x80\x02)");
    p.0.extend(std::iter::repeat_n(0x85u8, 1_000_000)); // TUPLE1 a million times: ((((),),),)…
    p.op(b".");
    assert!(open_err("pkl-deep", &torch_checkpoint(&p.0)).contains("not a state dict"));
}

/// Pickles that make the VM hold millions of values (2 bytes or less each: memo gets, empty
/// tuples, marks, memo puts) are refused with `BadFile` at the value budget, long before their
/// end, and the reader's allocations stay under 64 MB (0.5.0 held every value, ~27× the pickle).
#[test]
fn value_flooding_pickles_are_refused_within_a_memory_bound() {
    let n = 3 << 20; // 3M opcodes: 0.5.0 grew a 4M-entry stack (~235 MB) for the gets alone
    /// Appends the `i`-th flooding opcode.
    type Flood = fn(&mut Pkl, usize);
    let floods: [(&str, Flood); 4] = [
        ("BINGET", |p, _| {
            p.op(b"h\x00");
        }),
        ("EMPTY_TUPLE", |p, _| {
            p.op(b")");
        }),
        ("MARK", |p, _| {
            p.op(b"(");
        }),
        ("LONG_BINPUT", |p, i| {
            p.op(b"r").op(&(i as u32).to_le_bytes());
        }),
    ];
    for (what, op) in floods {
        let mut p = Pkl::default();
        p.op(b"\x80\x02)q\x00"); // an empty tuple, memoized as 0
        for i in 0..n {
            op(&mut p, i);
        }
        p.op(b".");
        let bytes = torch_checkpoint(&p.0);
        let (r, peak) = peak_alloc(|| WeightFiles::from_bytes("flood.bin", bytes));
        let e = r.expect_err(what);
        assert!(matches!(e, Error::BadFile { .. }), "{what}: {e}");
        let m = msg(e);
        assert!(m.contains("values at once"), "{what}: {m}");
        assert!(peak < 64 << 20, "{what}: the reader allocated {} MB", peak >> 20);
    }
    // A real state dict is far below the budget.
    assert!(WeightFiles::from_bytes("ok.bin", torch_checkpoint(&state_dict_pickle(&good_tensors(), numel))).is_ok());
}

/// Random byte flips and truncations of a valid `torch.save` zip: `Ok` or `Err`, never a panic.
#[test]
fn mutated_torch_checkpoints_never_panic() {
    let torch = torch_checkpoint(&state_dict_pickle(&good_tensors(), numel));
    common::weight_file_mutations_never_panic("x.bin", &torch);
}
