//! The WGSL sources (real files under `shaders/`, embedded at build time) and a tiny
//! preprocessor: `#include "file.wgsl"`, `#ifdef X` / `#ifndef X` / `#else` / `#endif`, and
//! defines with a value, which become `const X = value;` lines after the `enable` directives.

use crate::error::{Error, Result};

/// Every shader file, by stem. A file's stem matches its host module in `src/ops/`.
pub const SOURCES: &[(&str, &str)] = &[
    ("common", include_str!("../../shaders/common.wgsl")),
    ("reduce", include_str!("../../shaders/reduce.wgsl")),
    ("kv_cache", include_str!("../../shaders/kv_cache.wgsl")),
    ("kv", include_str!("../../shaders/kv.wgsl")),
    ("attention_paged", include_str!("../../shaders/attention_paged.wgsl")),
    ("matmul", include_str!("../../shaders/matmul.wgsl")),
    ("matmul_q4", include_str!("../../shaders/matmul_q4.wgsl")),
    ("matmul_store", include_str!("../../shaders/matmul_store.wgsl")),
    ("gemv", include_str!("../../shaders/gemv.wgsl")),
    ("gemm_simt", include_str!("../../shaders/gemm_simt.wgsl")),
    ("q4", include_str!("../../shaders/q4.wgsl")),
    ("matmul_coop", include_str!("../../shaders/matmul_coop.wgsl")),
    ("attention_coop", include_str!("../../shaders/attention_coop.wgsl")),
    ("norm", include_str!("../../shaders/norm.wgsl")),
    ("rope", include_str!("../../shaders/rope.wgsl")),
    ("elementwise", include_str!("../../shaders/elementwise.wgsl")),
    ("embedding", include_str!("../../shaders/embedding.wgsl")),
    ("softmax", include_str!("../../shaders/softmax.wgsl")),
    ("attention", include_str!("../../shaders/attention.wgsl")),
    ("sample", include_str!("../../shaders/sample.wgsl")),
    ("sampler", include_str!("../../shaders/sampler.wgsl")),
];

pub fn source(name: &str) -> Result<&'static str> {
    let stem = name.trim_end_matches(".wgsl");
    SOURCES
        .iter()
        .find(|(n, _)| *n == stem)
        .map(|(_, s)| *s)
        .ok_or_else(|| Error::Shader { shader: name.into(), msg: "no such shader file".into() })
}

/// Expand `src` with `defines` (name, value); an empty value defines a flag only.
pub fn preprocess(shader: &str, defines: &[(String, String)]) -> Result<String> {
    let mut body = String::new();
    expand(shader, source(shader)?, defines, &mut body, 0)?;
    // `enable` directives must precede every declaration, so hoist them above the consts.
    let mut out = String::new();
    let mut rest = String::new();
    for line in body.lines() {
        if line.trim_start().starts_with("enable ") {
            if !out.contains(line.trim()) {
                out.push_str(line.trim());
                out.push('\n');
            }
        } else {
            rest.push_str(line);
            rest.push('\n');
        }
    }
    for (name, value) in defines {
        if !value.is_empty() {
            out.push_str(&format!("const {name} = {value};\n"));
        }
    }
    out.push_str(&rest);
    Ok(out)
}

fn expand(name: &str, src: &str, defines: &[(String, String)], out: &mut String, depth: usize) -> Result<()> {
    let err = |line: usize, msg: &str| Error::Shader { shader: format!("{name}.wgsl:{}", line + 1), msg: msg.into() };
    if depth > 4 {
        return Err(err(0, "#include nested too deeply"));
    }
    let defined = |n: &str| defines.iter().any(|(d, _)| d == n);
    // Stack of (this branch active, any branch taken, parent active).
    let mut stack: Vec<(bool, bool)> = Vec::new();
    let active = |stack: &Vec<(bool, bool)>| stack.iter().all(|(a, _)| *a);
    for (i, line) in src.lines().enumerate() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("#ifdef ") {
            let on = defined(rest.trim());
            stack.push((on, on));
        } else if let Some(rest) = t.strip_prefix("#ifndef ") {
            let on = !defined(rest.trim());
            stack.push((on, on));
        } else if t == "#else" {
            let top = stack.last_mut().ok_or_else(|| err(i, "#else without #ifdef"))?;
            *top = (!top.1, true);
        } else if t == "#endif" {
            stack.pop().ok_or_else(|| err(i, "#endif without #ifdef"))?;
        } else if let Some(rest) = t.strip_prefix("#include ") {
            if active(&stack) {
                let inc = rest.trim().trim_matches('"').trim_end_matches(".wgsl");
                expand(inc, source(inc)?, defines, out, depth + 1)?;
            }
        } else if t.starts_with('#') {
            return Err(err(i, &format!("unknown directive '{t}'")));
        } else if active(&stack) {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !stack.is_empty() {
        return Err(err(src.lines().count(), "unterminated #ifdef"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branches_and_defines() {
        let d = vec![("A".to_string(), String::new()), ("WG".to_string(), "64".to_string())];
        let mut out = String::new();
        expand("t", "x\n#ifdef A\na\n#ifdef B\nb\n#else\nnb\n#endif\n#else\nna\n#endif\ny", &d, &mut out, 0).unwrap();
        assert_eq!(out, "x\na\nnb\ny\n");
        assert!(expand("t", "#ifdef A\n", &d, &mut String::new(), 0).is_err());
        assert!(expand("t", "#endif\n", &d, &mut String::new(), 0).is_err());
    }
}
