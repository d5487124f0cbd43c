//! `zhinao --version` prints the crate version and the git commit it was built from, and CHANGELOG.md's
//! newest entry is that version (a user-visible change raises both together).

use std::path::Path;
use std::process::Command;

#[test]
fn version_prints_the_changelog_release_and_the_commit() {
    let out = Command::new(env!("CARGO_BIN_EXE_zhinao")).arg("--version").output().unwrap();
    assert!(out.status.success());
    let line = String::from_utf8(out.stdout).unwrap();
    let prefix = format!("zhinao {} (commit ", env!("CARGO_PKG_VERSION"));
    assert!(line.starts_with(&prefix), "{line}");
    let commit = line[prefix.len()..].trim_end().trim_end_matches(')');

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let head = Command::new("git")
        .current_dir(root)
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    match head {
        // Built from a git checkout: the 12-digit commit, then its date.
        Some(h) if std::env::var_os("ZHINAO_GIT_COMMIT").is_none() && root.join(".git").exists() => {
            assert!(commit.starts_with(&h), "--version says {commit}, HEAD is {h}")
        }
        // A tarball build says so.
        _ => assert!(commit == "unknown" || commit.len() >= 7, "{commit}"),
    }

    let changelog = std::fs::read_to_string(root.join("CHANGELOG.md")).unwrap();
    let newest = changelog
        .lines()
        .find_map(|l| l.strip_prefix("## [").and_then(|r| r.split_once(']')).map(|(v, _)| v.to_string()))
        .expect("CHANGELOG.md has a `## [x.y.z]` entry");
    assert_eq!(newest, env!("CARGO_PKG_VERSION"), "CHANGELOG.md's newest entry must be Cargo.toml's version");
}
