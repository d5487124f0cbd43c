//! Sharded inputs for `zhinao embed` and `zhinao rerank --pairs`: several `--input` files or globs
//! (`corpus/part-*.jsonl`), one output file per input shard in an `--output` directory, and
//! `--shard I/N` to split the shard list over N processes (one per GPU: `--device I --shard I/N`)
//! without any other coordination.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};

/// `I/N`: this process takes shards k with k % N == I.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

pub fn parse_shard(s: &str) -> Result<Shard, String> {
    let (i, n) = s.split_once('/').ok_or_else(|| format!("{s:?}: expected I/N, e.g. 0/4"))?;
    let index: usize = i.trim().parse().map_err(|_| format!("{s:?}: I is not a number"))?;
    let count: usize = n.trim().parse().map_err(|_| format!("{s:?}: N is not a number"))?;
    if count == 0 || index >= count {
        return Err(format!("{s:?}: need 0 <= I < N"));
    }
    Ok(Shard { index, count })
}

fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// The files of `inputs` in order: each a path, `-`, or a glob in its file name part
/// (`dir/part-*.jsonl`, expanded in sorted order; a glob that matches nothing is an error).
pub fn expand(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for p in inputs {
        let s = p.to_string_lossy();
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if !has_glob(&name) {
            if has_glob(&s) {
                bail!("{s}: a glob is allowed in the file name only (dir/part-*.jsonl)");
            }
            files.push(p.clone());
            continue;
        }
        let dir = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let glob = globset::Glob::new(&name).with_context(|| format!("--input {s}"))?.compile_matcher();
        let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("--input {s}: reading {}", dir.display()))?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()) && glob.is_match(e.file_name()))
            .map(|e| e.path())
            .collect();
        if found.is_empty() {
            bail!("--input {s}: no file matches");
        }
        found.sort();
        files.extend(found);
    }
    Ok(files)
}

/// Whether the inputs name several shards (then `--output` is a directory).
pub fn is_sharded(inputs: &[PathBuf]) -> bool {
    inputs.len() > 1 || inputs.iter().any(|p| p.file_name().is_some_and(|n| has_glob(&n.to_string_lossy())))
}

/// (input, output) for each shard this process takes: `out_dir/<input file name>` (extension
/// `.jsonl`), created if missing. Two inputs with one file name are refused.
pub fn plan(files: &[PathBuf], out_dir: &Path, shard: Option<Shard>) -> Result<Vec<(PathBuf, PathBuf)>> {
    if files.iter().any(|f| f.as_os_str() == "-") {
        bail!("stdin (-) cannot be one of several inputs");
    }
    if out_dir.as_os_str() == "-" || out_dir.is_file() {
        bail!("with several inputs, --output is a directory (one output file per input)");
    }
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let mut names = std::collections::HashSet::new();
    let mut out = Vec::new();
    for (k, f) in files.iter().enumerate() {
        let name = f.file_stem().map(|n| format!("{}.jsonl", n.to_string_lossy())).unwrap_or_default();
        if !names.insert(name.clone()) {
            bail!("two inputs would write {}: {} (give inputs with distinct file names)", name, f.display());
        }
        if shard.is_none_or(|s| k % s.count == s.index) {
            out.push((f.clone(), out_dir.join(name)));
        }
    }
    Ok(out)
}
