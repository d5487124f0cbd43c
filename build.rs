//! Sets `ZHINAO_GIT_COMMIT` for `zhinao --version`: the commit of the source tree (`git rev-parse`,
//! 12 hex digits, and its date), or "unknown" where there is no git (a source tarball, a vendored
//! copy). A packager can set `ZHINAO_GIT_COMMIT` in the environment instead.

use std::path::{Path, PathBuf};
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=ZHINAO_GIT_COMMIT");
    let commit = match std::env::var("ZHINAO_GIT_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_string(),
        _ => describe().unwrap_or_else(|| "unknown".to_string()),
    };
    println!("cargo:rustc-env=ZHINAO_GIT_COMMIT={commit}");
}

/// `<12 hex digits> <date>` of HEAD, and the files whose change means a new HEAD.
fn describe() -> Option<String> {
    // Only the repository this package sits at the top of: not a parent repository that vendors it.
    let top = PathBuf::from(git(&["rev-parse", "--show-toplevel"])?);
    let here = std::env::var("CARGO_MANIFEST_DIR").ok()?;
    if std::fs::canonicalize(&top).ok()? != std::fs::canonicalize(&here).ok()? {
        return None;
    }
    let hash = git(&["rev-parse", "--short=12", "HEAD"])?;
    let date = git(&["log", "-1", "--format=%cs", "HEAD"]).unwrap_or_default();
    // HEAD (per worktree), the branch it names and packed-refs (shared) move when a commit is made.
    let git_dir = absolute(&top, &git(&["rev-parse", "--git-dir"])?);
    let common = absolute(&top, &git(&["rev-parse", "--git-common-dir"])?);
    // (Only files that exist: Cargo reruns the script on every build for a missing one.)
    let mut watch = vec![git_dir.join("HEAD"), common.join("packed-refs")];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watch.push(common.join(branch));
    }
    for f in watch.iter().filter(|f| f.is_file()) {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    Some(format!("{hash} {date}").trim().to_string())
}

fn absolute(top: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        top.join(p)
    }
}
