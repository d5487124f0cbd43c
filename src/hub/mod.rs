//! Getting published models: `zhinao download` and `--model ORG/NAME`.
//!
//! Both hubs are untrusted (mirrors through `HF_ENDPOINT` are the norm): their listing (`hf.rs`,
//! `modelscope.rs`) gives each file's path, size and checksum, which are checked before anything is
//! named after them, and one transfer of our own on ureq (`transfer.rs`) fetches every file: redirects
//! followed by hand (the token never leaves the endpoint's origin), connect and idle-read timeouts,
//! `Range` resumption into `blobs/<checksum>.part`, verification against the listing (sha256 of LFS
//! files, the git blob id of the others: a mismatch is refused and the file removed) before the
//! snapshot entry exists. The cache layout is huggingface_hub's
//! (`$HF_HOME/hub/models--org--name/{blobs,snapshots/<commit>,refs/<revision>}`, shared with Python
//! both ways); files already complete are skipped; `--dir` places the files in a plain directory.
//!
//! Nothing here touches the network except [`download`]; [`resolve_model`] only reads the cache.

mod hf;
mod modelscope;
mod transfer;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::Digest;

use crate::{Error, Result};

/// The 360Zhinao repositories published on the Hugging Face hub (the README's model table).
pub const KNOWN_REPOS: &[&str] = &[
    "qihoo360/360Zhinao-7B-Base",
    "qihoo360/360Zhinao-7B-Chat-4K",
    "qihoo360/360Zhinao-7B-Chat-32K",
    "qihoo360/360Zhinao-7B-Chat-360K",
    "qihoo360/360Zhinao-7B-Chat-4K-Int4",
    "qihoo360/360Zhinao-7B-Chat-32K-Int4",
    "qihoo360/360Zhinao-7B-Chat-360K-Int4",
    "qihoo360/360Zhinao-1.8B-Reranking",
];

pub const DEFAULT_HF_ENDPOINT: &str = "https://huggingface.co";
pub const DEFAULT_MODELSCOPE_ENDPOINT: &str = "https://www.modelscope.cn";

/// Where a repository is fetched from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    HuggingFace,
    ModelScope,
}

/// One `zhinao download`.
#[derive(Clone, Debug)]
pub struct DownloadRequest {
    /// `org/name`.
    pub repo_id: String,
    /// Branch, tag or commit (default: `main` on Hugging Face, `master` on ModelScope).
    pub revision: Option<String>,
    /// Only files whose repository path matches one of these globs (`*` also crosses `/`); all if empty.
    pub include: Vec<String>,
    /// Also place the files, as published, in this plain directory (usable as `--model DIR`). The
    /// transfer state then lives in `DIR/.cache/huggingface/hub` instead of the shared cache.
    pub dir: Option<PathBuf>,
    pub source: Source,
    /// Overrides `HF_ENDPOINT` / `MODELSCOPE_DOMAIN`.
    pub endpoint: Option<String>,
    /// Overrides the hub cache directory (default: [`hub_cache_dir`]).
    pub cache_dir: Option<PathBuf>,
    /// Overrides the token (default: [`hf_token`]).
    pub token: Option<String>,
    /// Attempts after an interrupted transfer within this run (each resumes where the last stopped).
    pub retries: usize,
    /// Bounds connecting and each wait for data; a transfer that stalls longer is resumed (`retries`).
    pub timeout: Duration,
}

impl DownloadRequest {
    pub fn new(repo_id: &str) -> Self {
        DownloadRequest {
            repo_id: repo_id.to_string(),
            revision: None,
            include: Vec::new(),
            dir: None,
            source: Source::HuggingFace,
            endpoint: None,
            cache_dir: None,
            token: None,
            retries: 5,
            timeout: Duration::from_secs(60),
        }
    }
}

/// The checksum a file must have, as the hub lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Checksum {
    /// Hex sha256 of the content (LFS files on Hugging Face, every file on ModelScope).
    Sha256(String),
    /// Hex git blob id: sha1 of `"blob {len}\0"` followed by the content (small files on Hugging Face).
    GitBlob(String),
    None,
}

/// One file of a repository listing.
#[derive(Clone, Debug)]
pub struct RemoteFile {
    /// Path inside the repository (`vocab/360.tiktoken`).
    pub path: String,
    pub size: Option<u64>,
    pub checksum: Checksum,
}

/// What the CLI shows while downloading (per file and overall).
pub trait DownloadProgress {
    /// After the listing: the files that will be considered, in order.
    fn plan(&mut self, files: &[RemoteFile]) {
        let _ = files;
    }
    /// A file starts (or is found complete, then `file_done` follows at once with `fetched == false`).
    fn file_start(&mut self, file: &RemoteFile) {
        let _ = file;
    }
    /// Bytes of the current file now on disk (including a resumed part).
    fn file_bytes(&mut self, done: u64) {
        let _ = done;
    }
    fn file_done(&mut self, file: &RemoteFile, fetched: bool) {
        let _ = (file, fetched);
    }
    /// Something the user should know (e.g. a token about to be sent over plain http).
    fn warn(&mut self, msg: &str) {
        eprintln!("warning: {msg}");
    }
}

impl DownloadProgress for () {}

/// The result of [`download`].
#[derive(Clone, Debug)]
pub struct Downloaded {
    /// The directory to pass as `--model`: the snapshot in the cache, or `--dir`.
    pub dir: PathBuf,
    /// The commit the files belong to.
    pub commit: String,
    /// Every selected file with its size.
    pub files: Vec<(String, u64)>,
    /// Files transferred in this run (the others were already complete).
    pub fetched: usize,
}

/// Download a repository (or the files matching `include`) and verify every file.
pub fn download(req: &DownloadRequest, progress: &mut dyn DownloadProgress) -> Result<Downloaded> {
    check_repo_id(&req.repo_id)?;
    let cache = match (&req.cache_dir, &req.dir) {
        (Some(c), _) => c.clone(),
        (None, Some(d)) => d.join(".cache").join("huggingface").join("hub"),
        (None, None) => hub_cache_dir()?,
    };
    let out = match req.source {
        Source::HuggingFace => hf::download(req, &cache, progress)?,
        Source::ModelScope => modelscope::download(req, &cache, progress)?,
    };
    match &req.dir {
        Some(dir) => {
            for (path, _) in &out.files {
                link_or_copy(&out.dir.join(path), &dir.join(path))?;
            }
            Ok(Downloaded { dir: dir.clone(), ..out })
        }
        None => Ok(out),
    }
}

/// `--model` accepts a directory, or a repository id (`org/name`, optionally `@revision`) that is
/// already in the local cache. Anything that is neither a path that exists nor shaped like a repo id
/// is returned unchanged, so the loaders report the missing path.
pub fn resolve_model(arg: &str) -> Result<PathBuf> {
    let path = Path::new(arg);
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    let (id, revision) = match arg.split_once('@') {
        Some((id, rev)) => (id, Some(rev)),
        None => (arg, None),
    };
    if check_repo_id(id).is_err() || revision.is_some_and(str::is_empty) {
        return Ok(path.to_path_buf());
    }
    let cache = hub_cache_dir()?;
    cached_snapshot(&cache, id, revision).ok_or_else(|| Error::Hub {
        repo: arg.to_string(),
        msg: format!(
            "not a directory, and not in the local model cache {} (fetch it with `zhinao download {id}{}`)",
            cache.display(),
            revision.map(|r| format!(" --revision {r}")).unwrap_or_default()
        ),
    })
}

/// The snapshot directory of a cached repository: `refs/<revision>` (default `main`, then ModelScope's
/// `master`), a snapshot named by a commit, or the only snapshot when no revision was asked for.
pub fn cached_snapshot(cache: &Path, repo_id: &str, revision: Option<&str>) -> Option<PathBuf> {
    let root = cache.join(repo_folder(repo_id));
    let snapshots = root.join("snapshots");
    let revs = match revision {
        Some(r) => vec![r],
        None => vec!["main", "master"],
    };
    for r in revs {
        if let Ok(commit) = std::fs::read_to_string(root.join("refs").join(r)) {
            let d = snapshots.join(commit.trim());
            if check_path_component(commit.trim()) && d.is_dir() {
                return Some(d);
            }
        }
        let d = snapshots.join(r);
        if check_path_component(r) && d.is_dir() {
            return Some(d);
        }
    }
    if revision.is_none() {
        let dirs: Vec<PathBuf> = std::fs::read_dir(&snapshots)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        if dirs.len() == 1 {
            return dirs.into_iter().next();
        }
    }
    None
}

/// The hub cache: `HF_HUB_CACHE`, else `HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else
/// `~/.cache/huggingface/hub` (the same rules as Python's huggingface_hub).
pub fn hub_cache_dir() -> Result<PathBuf> {
    if let Some(p) = env_nonempty("HF_HUB_CACHE") {
        return Ok(PathBuf::from(p));
    }
    Ok(hf_home()?.join("hub"))
}

fn hf_home() -> Result<PathBuf> {
    if let Some(p) = env_nonempty("HF_HOME") {
        return Ok(PathBuf::from(p));
    }
    if let Some(p) = env_nonempty("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(p).join("huggingface"));
    }
    let home = dirs::home_dir()
        .ok_or_else(|| Error::Config("no home directory for the model cache: set HF_HOME".to_string()))?;
    Ok(home.join(".cache").join("huggingface"))
}

/// The Hugging Face token: `HF_TOKEN`, else `HUGGING_FACE_HUB_TOKEN`, else the file `HF_TOKEN_PATH`,
/// else `HF_HOME/token` (where `huggingface-cli login` writes it).
pub fn hf_token() -> Option<String> {
    if let Some(t) = env_nonempty("HF_TOKEN").or_else(|| env_nonempty("HUGGING_FACE_HUB_TOKEN")) {
        return Some(t.trim().to_string());
    }
    let file = match env_nonempty("HF_TOKEN_PATH") {
        Some(p) => PathBuf::from(p),
        None => hf_home().ok()?.join("token"),
    };
    let t = std::fs::read_to_string(file).ok()?;
    let t = t.trim();
    (!t.is_empty()).then(|| t.to_string())
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// `models--org--name`, the cache folder of a model repository.
pub fn repo_folder(repo_id: &str) -> String {
    format!("models--{}", repo_id.replace('/', "--"))
}

/// `org/name` with the hub's characters (letters, digits, `-`, `_`, `.`; no `--` or `..`).
pub fn check_repo_id(id: &str) -> Result<()> {
    let ok = id.split_once('/').is_some_and(|(org, name)| {
        [org, name].iter().all(|p| {
            !p.is_empty()
                && p.len() <= 96
                && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                && p.starts_with(|c: char| c.is_ascii_alphanumeric())
                && !p.contains("--")
                && !p.contains("..")
        })
    });
    if ok {
        Ok(())
    } else {
        Err(Error::Input(format!(
            "'{id}' is not a repository id (ORG/NAME, e.g. {}); known 360Zhinao repositories: {}",
            KNOWN_REPOS[4],
            KNOWN_REPOS.join(", ")
        )))
    }
}

/// A revision or file path component that may be joined to a cache path.
fn check_path_component(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains(['/', '\\'])
}

/// A repository file path that stays inside the directory it is joined to (relative, no `.`/`..`
/// component, no `\` or NUL), and is not git's or huggingface_hub's own state there: no `.git`
/// component, nothing under `.cache/huggingface/` (where `--dir` keeps the transfer state). Case is
/// ignored for these, as on case-insensitive file systems.
fn check_repo_path(repo: &str, path: &str) -> Result<()> {
    let parts: Vec<&str> = path.split('/').collect();
    let plain = !path.is_empty() && parts.iter().all(|p| check_path_component(p) && !p.contains('\0'));
    let git = parts.iter().any(|p| p.eq_ignore_ascii_case(".git"));
    let state =
        parts.len() >= 2 && parts[0].eq_ignore_ascii_case(".cache") && parts[1].eq_ignore_ascii_case("huggingface");
    let why = if !plain {
        "not a plain relative path"
    } else if git {
        "inside a .git directory"
    } else if state {
        "inside .cache/huggingface, the download state"
    } else {
        return Ok(());
    };
    Err(Error::Hub { repo: repo.to_string(), msg: format!("the listing names an unsafe file path {path:?} ({why})") })
}

/// A snapshot entry that is already complete (its size matches the listing). Entries are only
/// created after a verified transfer, so the size check is enough here.
fn is_complete(pointer: &Path, size: Option<u64>) -> bool {
    match (std::fs::metadata(pointer), size) {
        (Ok(m), Some(s)) => m.is_file() && m.len() == s,
        (Ok(m), None) => m.is_file(),
        _ => false,
    }
}

/// `refs/<revision>` = `commit`, as huggingface_hub writes it (not for a revision that is the commit
/// itself, nor one that would leave `refs/`).
fn write_ref(root: &Path, revision: &str, commit: &str) -> Result<()> {
    if revision.eq_ignore_ascii_case(commit) || !revision.split('/').all(check_path_component) {
        return Ok(());
    }
    let file = root.join("refs").join(revision);
    if let Some(parent) = file.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    std::fs::write(&file, commit).map_err(|e| Error::io(&file, e))
}

/// Keep the files matching any of `include` (all when empty).
fn select(repo: &str, files: Vec<RemoteFile>, include: &[String]) -> Result<Vec<RemoteFile>> {
    if include.is_empty() {
        return Ok(files);
    }
    let mut b = globset::GlobSetBuilder::new();
    for g in include {
        b.add(globset::Glob::new(g).map_err(|e| Error::Input(format!("--include '{g}': {e}")))?);
    }
    let set = b.build().map_err(|e| Error::Input(format!("--include: {e}")))?;
    let total = files.len();
    let kept: Vec<RemoteFile> = files.into_iter().filter(|f| set.is_match(&f.path)).collect();
    if kept.is_empty() {
        return Err(Error::Hub {
            repo: repo.to_string(),
            msg: format!("none of its {total} files matches --include {}", include.join(" ")),
        });
    }
    Ok(kept)
}

/// Check a downloaded file against the listing: size first, then the checksum.
pub fn verify_file(path: &Path, size: Option<u64>, checksum: &Checksum) -> std::result::Result<(), String> {
    let len = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?.len();
    if let Some(want) = size {
        if len != want {
            return Err(format!("size mismatch: the hub lists {want} bytes, received {len}"));
        }
    }
    let (kind, want, got) = match checksum {
        Checksum::None => return Ok(()),
        Checksum::Sha256(want) => ("sha256", want, hash_file::<sha2::Sha256>(path, b"")?),
        Checksum::GitBlob(want) => {
            ("git blob id", want, hash_file::<sha1::Sha1>(path, format!("blob {len}\0").as_bytes())?)
        }
    };
    if got.eq_ignore_ascii_case(want) {
        Ok(())
    } else {
        Err(format!("checksum mismatch: the hub lists {kind} {want}, received {got}"))
    }
}

/// Hex digest of `prefix` followed by the file's content, read in 1 MiB pieces.
fn hash_file<D: Digest>(path: &Path, prefix: &[u8]) -> std::result::Result<String, String> {
    let mut h = D::new();
    h.update(prefix);
    let mut f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| format!("{}: {e}", path.display()))?;
        if n == 0 {
            return Ok(hex(&h.finalize()));
        }
        h.update(&buf[..n]);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Make `dst` the same file as `src`: a hard link when the file system allows, else a copy.
fn link_or_copy(src: &Path, dst: &Path) -> Result<()> {
    let same = |a: &Path, b: &Path| match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.len() == y.len() && std::fs::canonicalize(a).ok() == std::fs::canonicalize(b).ok(),
        _ => false,
    };
    if same(src, dst) {
        return Ok(());
    }
    if let Some(parent) = dst.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    if dst.symlink_metadata().is_ok() {
        std::fs::remove_file(dst).map_err(|e| Error::io(dst, e))?;
    }
    let real = std::fs::canonicalize(src).map_err(|e| Error::io(src, e))?;
    if std::fs::hard_link(&real, dst).is_err() {
        std::fs::copy(&real, dst).map_err(|e| Error::io(dst, e))?;
    }
    Ok(())
}

/// Turn a ureq failure into the crate's error: unreachable hosts, missing repositories or files,
/// access refused, anything else with its HTTP status and URL.
fn http_error(e: ureq::Error, endpoint: &str, repo: &str, what: &str, hint: &str) -> Error {
    match e {
        ureq::Error::Status(code, resp) => {
            let url = resp.get_url().to_string();
            let kind = resp.header("x-error-code").map(|c| format!(" {c}")).unwrap_or_default();
            let msg = match code {
                404 => format!("{what} not found (HTTP 404{kind} from {url})"),
                401 | 403 => format!(
                    "{what}: access refused (HTTP {code}{kind} from {url}): the repository does not exist, or it \
                     is gated/private and needs a token (HF_TOKEN, or `huggingface-cli login`)"
                ),
                _ => format!("{what}: HTTP {code}{kind} from {url}"),
            };
            Error::Hub { repo: repo.to_string(), msg }
        }
        ureq::Error::Transport(t) => match t.kind() {
            ureq::ErrorKind::Dns | ureq::ErrorKind::ConnectionFailed | ureq::ErrorKind::ProxyConnect => {
                Error::HubUnreachable { endpoint: endpoint.to_string(), msg: format!("{t}. {hint}") }
            }
            _ => Error::Hub { repo: repo.to_string(), msg: format!("{what}: {t}") },
        },
    }
}

/// What to tell a user who cannot reach the hub.
fn offline_hint(source: Source, cache: &Path, repo: &str, revision: Option<&str>) -> String {
    let mut s = match source {
        Source::HuggingFace => "Offline? A mirror can be set with HF_ENDPOINT, or try --source modelscope".to_string(),
        Source::ModelScope => "Offline? Set MODELSCOPE_DOMAIN for another ModelScope host".to_string(),
    };
    if let Some(dir) = cached_snapshot(cache, repo, revision) {
        s.push_str(&format!("; a copy is already in the cache ({}): use --model {repo}", dir.display()));
    }
    s
}
