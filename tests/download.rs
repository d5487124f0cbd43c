//! `zhinao download` against a hub on 127.0.0.1 (tests/hubserver) that serves `assets/tiny-zhinao`:
//! a normal download into a temporary HF_HOME with every file verified, a transfer cut mid-body that
//! resumes (within the run, and in the next run from the kept part), a 404, a checksum and a size
//! mismatch that are refused and leave nothing in the cache, an unreachable hub, `--include`/`--dir`,
//! the ModelScope source, and `--model ORG/NAME` resolved from the cache. A hostile or broken hub
//! (issue 24): path-traversal headers and listings write nothing outside the cache or `--dir`, the
//! token stays on the endpoint's host across redirects, a stalled transfer times out and resumes, an
//! oversized part restarts, a 3xx without `Location` is a clear error. No test leaves 127.0.0.x.

mod hubserver;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hubserver::{sha256_hex, Hub, COMMIT};

const REPO: &str = "test-org/tiny-zhinao";
const SHARD1: &str = "model-00001-of-00002.safetensors";
const SHARD2: &str = "model-00002-of-00002.safetensors";

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/tiny-zhinao")
}

fn temp_dir(tag: &str) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "zhinao-download-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The binary with a clean hub environment: HF_HOME = `home`, the given endpoint, no proxy, no token.
fn zhinao(home: &Path, endpoint: &str, args: &[&str]) -> Output {
    zhinao_env(home, endpoint, &[], args)
}

fn zhinao_env(home: &Path, endpoint: &str, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_zhinao"));
    c.current_dir(env!("CARGO_MANIFEST_DIR")).args(args).env("HF_HOME", home).env("HF_ENDPOINT", endpoint);
    for v in [
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_TOKEN_PATH",
        "HF_HUB_CACHE",
        "XDG_CACHE_HOME",
        "MODELSCOPE_DOMAIN",
        "RUST_BACKTRACE",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        c.env_remove(v);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn fails(out: &Output) -> String {
    assert!(!out.status.success(), "expected a failure; stdout: {}", String::from_utf8_lossy(&out.stdout));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    // ZHINAO_SHOW_ERRORS=1 prints each expected error, to review how it reads.
    if std::env::var_os("ZHINAO_SHOW_ERRORS").is_some() {
        eprintln!("--- expected error ---\n{err}");
    }
    err
}

fn repo_root(home: &Path) -> PathBuf {
    home.join("hub").join("models--test-org--tiny-zhinao")
}

/// Every fixture file is in `dir`, byte for byte.
fn assert_same_files(dir: &Path) {
    for (path, want) in hubserver::read_tree(&fixture()) {
        let got = std::fs::read(dir.join(&path)).unwrap_or_else(|e| panic!("{}: {e}", dir.join(&path).display()));
        assert!(got == want, "{path} differs from the fixture");
    }
}

/// Files in the blobs folder ending with `.part`.
fn parts(home: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(repo_root(home).join("blobs"))
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "part")).collect()
        })
        .unwrap_or_default()
}

fn tokenize(home: &Path, model: &str) -> Output {
    zhinao(home, "http://127.0.0.1:9", &["tokenize", "--model", model, "--json", "--text", "你好 hello <|im_start|>"])
}

#[test]
fn download_verifies_every_file_and_model_resolves_from_the_cache() {
    let hub = Hub::start(&[(REPO, &fixture())]);
    let home = temp_dir("normal");
    let out = zhinao_env(&home, &hub.url, &[("HF_TOKEN", "secret-token")], &["download", REPO]);
    let dir = PathBuf::from(ok(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("warning: the Hugging Face token is sent to") && err.contains("plain http"), "{err}");
    assert_eq!(dir, repo_root(&home).join("snapshots").join(COMMIT));
    assert_same_files(&dir);
    assert_eq!(std::fs::read_to_string(repo_root(&home).join("refs/main")).unwrap(), COMMIT);
    assert!(parts(&home).is_empty(), "no .part left: {:?}", parts(&home));
    let log = hub.log();
    assert!(
        log[0].target.contains("/api/models/test-org/tiny-zhinao/revision/main")
            && log[0].target.contains("blobs=true")
    );
    assert!(log.iter().all(|r| r.auth.as_deref() == Some("Bearer secret-token")), "HF_TOKEN sent: {log:?}");

    // `--model ORG/NAME` finds the snapshot, and the tokenizer there gives the same ids.
    let want = ok(&tokenize(&home, "assets/tiny-zhinao"));
    assert_eq!(ok(&tokenize(&home, REPO)), want);

    // A second run transfers nothing: the listing only.
    let before = hub.log().len();
    let err = String::from_utf8_lossy(&zhinao(&home, &hub.url, &["download", REPO]).stderr).into_owned();
    assert!(err.contains("0 fetched, 7 already complete"), "{err}");
    assert_eq!(hub.log().len(), before + 1, "{:?}", &hub.log()[before..]);

    // The token file (what `huggingface-cli login` writes) is used when HF_TOKEN is not set.
    std::fs::write(home.join("token"), "file-token\n").unwrap();
    ok(&zhinao(&home, &hub.url, &["download", REPO, "--include", "config.json"]));
    assert_eq!(hub.log().last().unwrap().auth.as_deref(), Some("Bearer file-token"));
}

#[test]
fn interrupted_transfer_resumes_within_the_run() {
    let hub = Hub::start(&[(REPO, &fixture())]);
    hub.state.lock().unwrap().cut_once.insert(SHARD1.to_string());
    let home = temp_dir("resume-run");
    let dir = PathBuf::from(ok(&zhinao(&home, &hub.url, &["download", REPO])));
    assert_same_files(&dir);
    let half = std::fs::metadata(fixture().join(SHARD1)).unwrap().len() / 2;
    let ranges: Vec<_> = hub.log().into_iter().filter(|r| r.target.ends_with(SHARD1)).filter_map(|r| r.range).collect();
    assert!(ranges.contains(&format!("bytes={half}-")), "resumed from the cut at {half}: {ranges:?}");
}

#[test]
fn interrupted_transfer_resumes_in_the_next_run() {
    let hub = Hub::start(&[(REPO, &fixture())]);
    hub.state.lock().unwrap().cut_once.insert(SHARD2.to_string());
    let home = temp_dir("resume-next");
    let err = fails(&zhinao(&home, &hub.url, &["download", REPO, "--retries", "0"]));
    assert!(err.contains(SHARD2) && err.contains("interrupted") && err.contains("resumes"), "{err}");
    let half = std::fs::metadata(fixture().join(SHARD2)).unwrap().len() / 2;
    let p = parts(&home);
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(std::fs::metadata(&p[0]).unwrap().len(), half);
    assert!(!repo_root(&home).join("snapshots").join(COMMIT).join(SHARD2).exists());

    let before = hub.log().len();
    let dir = PathBuf::from(ok(&zhinao(&home, &hub.url, &["download", REPO, "--retries", "0"])));
    assert_same_files(&dir);
    let resumed =
        hub.log()[before..].iter().any(|r| r.target.ends_with(SHARD2) && r.range == Some(format!("bytes={half}-")));
    assert!(resumed, "the second run asks for bytes={half}-: {:?}", &hub.log()[before..]);
    assert!(parts(&home).is_empty());
}

#[test]
fn missing_file_and_unknown_repo_are_clear_errors() {
    let hub = Hub::start(&[(REPO, &fixture())]);
    hub.state.lock().unwrap().missing.insert("generation_config.json".to_string());
    let home = temp_dir("404");
    let err = fails(&zhinao(&home, &hub.url, &["download", REPO]));
    assert!(err.contains(REPO) && err.contains("'generation_config.json' not found") && err.contains("404"), "{err}");

    let err = fails(&zhinao(&home, &hub.url, &["download", "test-org/no-such-model"]));
    assert!(err.contains("test-org/no-such-model") && err.contains("401") && err.contains("does not exist"), "{err}");

    let err = fails(&zhinao(&home, &hub.url, &["download", "not-a-repo-id"]));
    assert!(err.contains("not a repository id") && err.contains("qihoo360/360Zhinao-7B-Chat-4K-Int4"), "{err}");
}

#[test]
fn checksum_and_size_mismatch_are_refused_and_not_cached() {
    for (fault, file, msg) in [("corrupt", SHARD2, "checksum mismatch"), ("short", SHARD1, "size mismatch")] {
        let hub = Hub::start(&[(REPO, &fixture())]);
        {
            let mut st = hub.state.lock().unwrap();
            if fault == "corrupt" {
                st.corrupt.insert(file.to_string());
            } else {
                st.short.insert(file.to_string());
            }
        }
        let home = temp_dir(fault);
        let err = fails(&zhinao(&home, &hub.url, &["download", REPO]));
        assert!(err.contains(file) && err.contains(msg) && err.contains("refused"), "{fault}: {err}");
        // Nothing of the bad file is left: no snapshot entry, no blob, no part.
        assert!(!repo_root(&home).join("snapshots").join(COMMIT).join(file).exists(), "{fault}: snapshot entry kept");
        let good = sha256_hex(&std::fs::read(fixture().join(file)).unwrap());
        let blobs: Vec<String> = std::fs::read_dir(repo_root(&home).join("blobs"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!blobs.iter().any(|b| *b == good || *b == format!("{good}.part")), "{fault}: blob kept: {blobs:?}");
        assert!(parts(&home).is_empty(), "{fault}: part kept");
    }
}

#[test]
fn unreachable_hub_is_a_clear_error() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let home = temp_dir("offline");
    let err = fails(&zhinao(&home, &endpoint, &["download", REPO]));
    assert!(err.contains(&format!("cannot reach {endpoint}")) && err.contains("Offline?"), "{err}");
    let err = fails(&zhinao(&home, &endpoint, &["download", REPO, "--source", "modelscope", "--endpoint", &endpoint]));
    assert!(err.contains(&format!("cannot reach {endpoint}")) && err.contains("Offline?"), "{err}");

    // With a copy in the cache, the error says how to use it.
    populate(&home, "test-org/tiny-zhinao", "c0ffee");
    let err = fails(&zhinao(&home, &endpoint, &["download", REPO]));
    assert!(err.contains("already in the cache") && err.contains("--model test-org/tiny-zhinao"), "{err}");
}

/// A cache laid out as huggingface_hub does: `snapshots/<commit>/` with the files and `refs/main`.
fn populate(home: &Path, repo: &str, commit: &str) -> PathBuf {
    let root = home.join("hub").join(format!("models--{}", repo.replace('/', "--")));
    let snap = root.join("snapshots").join(commit);
    for (path, bytes) in hubserver::read_tree(&fixture()) {
        std::fs::create_dir_all(snap.join(&path).parent().unwrap()).unwrap();
        std::fs::write(snap.join(&path), bytes).unwrap();
    }
    std::fs::create_dir_all(root.join("refs")).unwrap();
    std::fs::write(root.join("refs/main"), commit).unwrap();
    snap
}

#[test]
fn model_repo_id_resolves_from_a_prepopulated_cache() {
    let home = temp_dir("cache");
    populate(&home, "qihoo360/360Zhinao-7B-Chat-4K", "abc123");
    let want = ok(&tokenize(&home, "assets/tiny-zhinao"));
    assert_eq!(ok(&tokenize(&home, "qihoo360/360Zhinao-7B-Chat-4K")), want);
    assert_eq!(ok(&tokenize(&home, "qihoo360/360Zhinao-7B-Chat-4K@abc123")), want);
    assert_eq!(ok(&tokenize(&home, "qihoo360/360Zhinao-7B-Chat-4K@main")), want);

    let err = fails(&tokenize(&home, "qihoo360/360Zhinao-7B-Chat-32K"));
    assert!(
        err.contains("not in the local model cache") && err.contains("zhinao download qihoo360/360Zhinao-7B-Chat-32K"),
        "{err}"
    );
    let err = fails(&tokenize(&home, "qihoo360/360Zhinao-7B-Chat-4K@other"));
    assert!(err.contains("--revision other"), "{err}");
    // HF_HUB_CACHE overrides HF_HOME/hub.
    let other = temp_dir("cache-other");
    let out = zhinao_env(
        &other,
        "http://127.0.0.1:9",
        &[("HF_HUB_CACHE", home.join("hub").to_str().unwrap())],
        &["tokenize", "--model", "qihoo360/360Zhinao-7B-Chat-4K", "--json", "--text", "你好 hello <|im_start|>"],
    );
    assert_eq!(ok(&out), want);
}

#[test]
fn include_and_dir() {
    let hub = Hub::start(&[(REPO, &fixture())]);
    let home = temp_dir("include");
    let dir = home.join("plain");
    let d = dir.to_str().unwrap();
    let out = zhinao(&home, &hub.url, &["download", REPO, "--include", "*.json", "--include", "vocab/*", "--dir", d]);
    assert_eq!(PathBuf::from(ok(&out)), dir);
    let mut got: Vec<String> = hubserver::read_tree(&dir).into_keys().filter(|p| !p.starts_with(".cache/")).collect();
    got.sort();
    let want: Vec<String> = hubserver::read_tree(&fixture())
        .into_keys()
        .filter(|p| p.ends_with(".json") || p.starts_with("vocab/"))
        .collect();
    assert_eq!(got, want);
    for p in &want {
        assert_eq!(std::fs::read(dir.join(p)).unwrap(), std::fs::read(fixture().join(p)).unwrap(), "{p}");
    }
    // The shared cache is untouched with --dir.
    assert!(!home.join("hub").exists());
    let err = fails(&zhinao(&home, &hub.url, &["download", REPO, "--include", "*.gguf"]));
    assert!(err.contains("none of its 7 files matches --include *.gguf"), "{err}");
}

#[test]
fn modelscope_source_downloads_resumes_and_verifies() {
    let hub = Hub::start(&[(REPO, &fixture())]);
    hub.state.lock().unwrap().cut_once.insert(SHARD1.to_string());
    let home = temp_dir("modelscope");
    let args = ["download", REPO, "--source", "modelscope", "--endpoint", &hub.url];
    let dir = PathBuf::from(ok(&zhinao(&home, "http://127.0.0.1:9", &args)));
    assert_eq!(dir, repo_root(&home).join("snapshots").join(COMMIT));
    assert_same_files(&dir);
    assert_eq!(std::fs::read_to_string(repo_root(&home).join("refs/master")).unwrap(), COMMIT);
    let half = std::fs::metadata(fixture().join(SHARD1)).unwrap().len() / 2;
    assert!(hub.log().iter().any(|r| r.target.contains("FilePath=") && r.range == Some(format!("bytes={half}-"))));
    assert_eq!(ok(&tokenize(&home, REPO)), ok(&tokenize(&home, "assets/tiny-zhinao")));

    // A corrupted file is refused here too, and leaves no part behind.
    let hub = Hub::start(&[(REPO, &fixture())]);
    hub.state.lock().unwrap().corrupt.insert("config.json".to_string());
    let home = temp_dir("modelscope-bad");
    let err = fails(&zhinao(
        &home,
        "http://127.0.0.1:9",
        &["download", REPO, "--source", "modelscope", "--endpoint", &hub.url],
    ));
    assert!(err.contains("config.json") && err.contains("checksum mismatch"), "{err}");
    assert!(parts(&home).is_empty() && !repo_root(&home).join("snapshots").join(COMMIT).join("config.json").exists());
}

/// Every file under `root`, as paths relative to it.
fn all_files(root: &Path) -> Vec<String> {
    hubserver::read_tree(root).into_keys().collect()
}

#[test]
fn hostile_headers_and_listing_write_nothing_outside_the_cache() {
    // The hub answers files with `ETag: "../../../../victim/planted.sh"` and a traversal
    // `x-repo-commit`: they must not name anything (the blob is named by the listing's checksum).
    for (etag, commit) in [(true, false), (false, true), (true, true)] {
        let hub = Hub::start(&[(REPO, &fixture())]);
        {
            let mut st = hub.state.lock().unwrap();
            st.hostile_etag = etag;
            st.hostile_commit = commit;
        }
        let base = temp_dir("hostile-headers");
        let home = base.join("home");
        let out = zhinao(&home, &hub.url, &["download", REPO]);
        let names: Vec<_> = std::fs::read_dir(&base).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["home"], "etag {etag}, commit {commit}: written beside HF_HOME");
        let dir = PathBuf::from(ok(&out));
        assert_eq!(dir, repo_root(&home).join("snapshots").join(COMMIT));
        assert_same_files(&dir);
        let blobs: Vec<String> = std::fs::read_dir(repo_root(&home).join("blobs"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(blobs.iter().all(|b| b.len() >= 40 && b.chars().all(|c| c.is_ascii_hexdigit())), "{blobs:?}");
    }

    // A listing whose commit or checksum is a path is refused before anything is written.
    type Patch = fn(&mut serde_json::Value);
    let patches: [(Patch, &str); 3] = [
        (|v| v["sha"] = "../../../../victim".into(), "not 40 hex digits"),
        (
            |v| {
                let s = v["siblings"].as_array_mut().unwrap().iter_mut().find(|s| s["lfs"].is_null()).unwrap();
                s["blobId"] = "../../../../victim/planted.sh".into();
            },
            "not a hex digest",
        ),
        (
            |v| {
                let s = v["siblings"].as_array_mut().unwrap().iter_mut().find(|s| !s["lfs"].is_null()).unwrap();
                s["lfs"]["sha256"] = "../../../../victim/planted.sh".into();
            },
            "not a hex digest",
        ),
    ];
    for (patch, msg) in patches {
        let hub = Hub::start(&[(REPO, &fixture())]);
        hub.state.lock().unwrap().listing_patch = Some(patch);
        let base = temp_dir("hostile-listing");
        let home = base.join("home");
        let err = fails(&zhinao(&home, &hub.url, &["download", REPO]));
        assert!(err.contains(msg) && err.contains("victim"), "{err}");
        assert!(!base.join("victim").exists());
        assert!(all_files(&base).is_empty(), "{:?}", all_files(&base));
    }
}

#[test]
fn token_is_not_sent_to_another_host_after_a_redirect() {
    // The second hub stands for a CDN on another host (127.0.0.2, or another port where that
    // address is not available): it records the headers it got.
    let cdn = Hub::start_on("127.0.0.2", &[(REPO, &fixture())]);
    let hub = Hub::start(&[(REPO, &fixture())]);
    hub.state.lock().unwrap().redirect_to = Some(cdn.url.clone());
    let home = temp_dir("redirect");
    let token = [("HF_TOKEN", "secret-token")];
    let dir = PathBuf::from(ok(&zhinao_env(&home, &hub.url, &token, &["download", REPO])));
    assert_same_files(&dir);
    let served: Vec<_> = cdn.log().into_iter().filter(|r| r.target.contains("/resolve/")).collect();
    assert!(
        !served.is_empty() && served.iter().all(|r| r.auth.is_none()),
        "the token reached the other host: {served:?}"
    );
    assert_eq!(served.len(), 7, "{served:?}");
    assert!(hub.log().iter().all(|r| r.auth.as_deref() == Some("Bearer secret-token")), "{:?}", hub.log());

    // A redirect on the same host keeps it (huggingface.co redirects renamed repositories so).
    let hub = Hub::start(&[(REPO, &fixture())]);
    let own = hub.url.clone();
    hub.state.lock().unwrap().redirect_to = Some(own);
    let home = temp_dir("redirect-same");
    assert_same_files(&PathBuf::from(ok(&zhinao_env(&home, &hub.url, &token, &["download", REPO]))));
    let redirected: Vec<_> = hub.log().into_iter().filter(|r| r.target.contains("redirected=1")).collect();
    assert_eq!(redirected.len(), 7, "{redirected:?}");
    assert!(redirected.iter().all(|r| r.auth.as_deref() == Some("Bearer secret-token")), "{redirected:?}");
}

#[test]
fn redirect_without_location_is_a_clear_error() {
    let hub = Hub::start(&[(REPO, &fixture())]);
    hub.state.lock().unwrap().redirect_without_location = true;
    let home = temp_dir("no-location");
    let out = zhinao(&home, &hub.url, &["download", REPO]);
    let err = fails(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("302") && err.contains("without a Location header") && err.contains(REPO), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn stalled_transfer_times_out_and_resumes() {
    let hub = Hub::start(&[(REPO, &fixture())]);
    hub.state.lock().unwrap().stall_once.insert(SHARD1.to_string());
    // And a request that gets no answer at all.
    hub.state.lock().unwrap().silent_once.insert("config.json".to_string());
    let home = temp_dir("stall");
    let t0 = std::time::Instant::now();
    let dir = PathBuf::from(ok(&zhinao(&home, &hub.url, &["download", REPO, "--timeout", "2"])));
    // The hub holds the stalled connection for 30 s: ending well before that means the timeout did it.
    assert!(t0.elapsed() < std::time::Duration::from_secs(20), "took {:?}", t0.elapsed());
    assert_same_files(&dir);
    let half = std::fs::metadata(fixture().join(SHARD1)).unwrap().len() / 2;
    let ranges: Vec<_> = hub.log().into_iter().filter(|r| r.target.ends_with(SHARD1)).filter_map(|r| r.range).collect();
    assert!(ranges.contains(&format!("bytes={half}-")), "resumed from the stall: {ranges:?}");
    let config = hub.log().into_iter().filter(|r| r.target.ends_with("/config.json")).count();
    assert!(config >= 2, "asked again after no answer");

    // Without retries: a clear error naming the file and the kept part, in bounded time.
    let hub = Hub::start(&[(REPO, &fixture())]);
    hub.state.lock().unwrap().stall_once.insert(SHARD2.to_string());
    let home = temp_dir("stall-fail");
    let t0 = std::time::Instant::now();
    let err = fails(&zhinao(&home, &hub.url, &["download", REPO, "--timeout", "2", "--retries", "0"]));
    assert!(t0.elapsed() < std::time::Duration::from_secs(20), "took {:?}", t0.elapsed());
    assert!(err.contains(SHARD2) && err.contains("no data for 2.0 s") && err.contains("resumes"), "{err}");
    assert_eq!(parts(&home).len(), 1);
}

#[test]
fn part_larger_than_the_file_or_not_checking_out_is_restarted() {
    let hub = Hub::start(&[(REPO, &fixture())]);
    let home = temp_dir("oversized");
    let content = std::fs::read(fixture().join(SHARD1)).unwrap();
    let blobs = repo_root(&home).join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let part = blobs.join(format!("{}.part", sha256_hex(&content)));
    std::fs::write(&part, vec![7u8; content.len() + 10]).unwrap();
    let dir = PathBuf::from(ok(&zhinao(&home, &hub.url, &["download", REPO])));
    assert_same_files(&dir);
    assert!(parts(&home).is_empty(), "{:?}", parts(&home));
    let shard: Vec<_> = hub.log().into_iter().filter(|r| r.target.ends_with(SHARD1)).collect();
    assert!(shard.len() == 1 && shard[0].range.is_none(), "one full transfer: {shard:?}");

    // A complete part that does not check out (left by a run killed while verifying it) is not
    // trusted on its size: it is fetched again.
    let hub = Hub::start(&[(REPO, &fixture())]);
    let home = temp_dir("bad-complete-part");
    let blobs = repo_root(&home).join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(blobs.join(format!("{}.part", sha256_hex(&content))), vec![7u8; content.len()]).unwrap();
    assert_same_files(&PathBuf::from(ok(&zhinao(&home, &hub.url, &["download", REPO]))));
    let shard: Vec<_> = hub.log().into_iter().filter(|r| r.target.ends_with(SHARD1)).collect();
    assert!(shard.len() == 1 && shard[0].range.is_none(), "one full transfer: {shard:?}");
}

#[test]
fn unsafe_listing_paths_are_refused_with_dir() {
    for path in [
        ".git/hooks/post-checkout",
        "sub/.GIT/config",
        ".cache/huggingface/hub/models--test-org--tiny-zhinao/refs/main",
        "../outside.sh",
        "sub/../../outside.sh",
        "/tmp/outside.sh",
        "a\\..\\..\\outside.sh",
    ] {
        let hub = Hub::start(&[(REPO, &fixture())]);
        hub.state.lock().unwrap().repos.get_mut(REPO).unwrap().insert(path.to_string(), b"#!/bin/sh\n".to_vec());
        let base = temp_dir("unsafe-path");
        let (home, plain) = (base.join("home"), base.join("plain"));
        let err = fails(&zhinao(&home, &hub.url, &["download", REPO, "--dir", plain.to_str().unwrap()]));
        let name = path.rsplit(['/', '\\']).next().unwrap();
        assert!(err.contains("unsafe file path") && err.contains(name), "{path}: {err}");
        assert!(all_files(&base).is_empty(), "{path}: {:?}", all_files(&base));
    }
}
