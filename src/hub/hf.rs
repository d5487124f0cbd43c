//! Hugging Face: listing through the hub API (`/api/models/ORG/NAME/revision/REV?blobs=true`, which
//! gives each file's size and checksum), transfer through `hf-hub` (resumable `.part` files, the cache
//! layout, `refs/<revision>`), then verification of each file against the listing.

use std::path::Path;

use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};
use serde::Deserialize;

use super::{
    check_repo_path, discard, http_error, offline_hint, select, verify_file, Checksum, DownloadProgress,
    DownloadRequest, Downloaded, RemoteFile, Source, DEFAULT_HF_ENDPOINT,
};
use crate::{Error, Result};

#[derive(Deserialize)]
struct RepoInfo {
    sha: String,
    siblings: Vec<Sibling>,
}

#[derive(Deserialize)]
struct Sibling {
    rfilename: String,
    size: Option<u64>,
    #[serde(rename = "blobId")]
    blob_id: Option<String>,
    lfs: Option<Lfs>,
}

#[derive(Deserialize)]
struct Lfs {
    sha256: String,
    size: u64,
}

/// Forwards hf-hub's per-transfer callbacks (which restart at 0 on each resumed attempt and then add
/// the resumed offset) as "bytes of this file on disk".
struct Forward<'a> {
    inner: &'a mut dyn DownloadProgress,
    done: u64,
}

impl hf_hub::api::Progress for Forward<'_> {
    fn init(&mut self, _size: usize, _filename: &str) {
        self.done = 0;
    }
    fn update(&mut self, n: usize) {
        self.done += n as u64;
        self.inner.file_bytes(self.done);
    }
    fn finish(&mut self) {}
}

pub(super) fn download(req: &DownloadRequest, cache: &Path, progress: &mut dyn DownloadProgress) -> Result<Downloaded> {
    let repo_id = req.repo_id.as_str();
    let revision = req.revision.clone().unwrap_or_else(|| "main".to_string());
    let endpoint = req
        .endpoint
        .clone()
        .or_else(|| std::env::var("HF_ENDPOINT").ok().filter(|e| !e.is_empty()))
        .unwrap_or_else(|| DEFAULT_HF_ENDPOINT.to_string())
        .trim_end_matches('/')
        .to_string();
    let token = req.token.clone().or_else(super::hf_token);
    let api = ApiBuilder::from_cache(Cache::new(cache.to_path_buf()))
        .with_endpoint(endpoint.clone())
        .with_token(token)
        .with_progress(false)
        .with_retries(req.retries)
        .with_user_agent("zhinao", env!("CARGO_PKG_VERSION"))
        .build()
        .map_err(|e| Error::Hub { repo: repo_id.to_string(), msg: format!("hub client: {e}") })?;
    let repo = Repo::with_revision(repo_id.to_string(), RepoType::Model, revision.clone());
    let api_repo = api.repo(repo.clone());
    let hint = || offline_hint(Source::HuggingFace, cache, repo_id, req.revision.as_deref());

    // The listing, with sizes and checksums.
    let info: RepoInfo = api_repo
        .info_request()
        .query("blobs", "true")
        .call()
        .map_err(|e| http_error(e, &endpoint, repo_id, &format!("revision '{revision}'"), &hint()))?
        .into_json()
        .map_err(|e| Error::Hub {
            repo: repo_id.to_string(),
            msg: format!("the listing from {endpoint} is not the hub's JSON: {e}"),
        })?;
    let mut files = Vec::new();
    for s in info.siblings {
        check_repo_path(repo_id, &s.rfilename)?;
        let (size, checksum) = match (s.lfs, s.blob_id) {
            (Some(lfs), _) => (Some(lfs.size), Checksum::Sha256(lfs.sha256)),
            (None, Some(id)) => (s.size, Checksum::GitBlob(id)),
            (None, None) => (s.size, Checksum::None),
        };
        files.push(RemoteFile { path: s.rfilename, size, checksum });
    }
    let files = select(repo_id, files, &req.include)?;
    if !super::check_path_component(&info.sha) {
        return Err(Error::Hub { repo: repo_id.to_string(), msg: format!("bad commit id '{}'", info.sha) });
    }
    let snapshot = cache.join(super::repo_folder(repo_id)).join("snapshots").join(&info.sha);
    progress.plan(&files);

    let mut fetched = 0;
    for f in &files {
        progress.file_start(f);
        let pointer = snapshot.join(&f.path);
        if is_complete(&pointer, f.size) {
            progress.file_done(f, false);
            continue;
        }
        let got = api_repo.download_with_progress(&f.path, Forward { inner: &mut *progress, done: 0 });
        let got = got.map_err(|e| api_error(e, &endpoint, repo_id, f, cache, &hint()))?;
        if got != pointer {
            discard(&got);
            return Err(Error::Hub {
                repo: repo_id.to_string(),
                msg: format!(
                    "the repository moved during the download (listing at commit {}, {} served from {}); run the \
                     command again",
                    info.sha,
                    f.path,
                    got.parent().map(|p| p.display().to_string()).unwrap_or_default()
                ),
            });
        }
        if let Err(msg) = verify_file(&pointer, f.size, &f.checksum) {
            discard(&pointer);
            return Err(Error::Integrity { file: format!("{repo_id}/{}", f.path), msg });
        }
        fetched += 1;
        progress.file_done(f, true);
    }
    // hf-hub writes refs/<revision> after each file; write it also when every file was already there.
    let refs = cache.join(super::repo_folder(repo_id)).join("refs");
    Cache::new(cache.to_path_buf()).repo(repo).create_ref(&info.sha).map_err(|e| Error::io(refs, e))?;
    Ok(Downloaded {
        dir: snapshot,
        commit: info.sha,
        files: files.iter().map(|f| (f.path.clone(), f.size.unwrap_or(0))).collect(),
        fetched,
    })
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

fn api_error(e: ApiError, endpoint: &str, repo: &str, f: &RemoteFile, cache: &Path, hint: &str) -> Error {
    let what = format!("file '{}'", f.path);
    match e {
        ApiError::RequestError(e) => http_error(*e, endpoint, repo, &what, hint),
        ApiError::TooManyRetries(inner) => interrupted(repo, f, cache, &inner.to_string()),
        ApiError::IoError(io) => interrupted(repo, f, cache, &io.to_string()),
        ApiError::MissingHeader(h) => Error::Hub {
            repo: repo.to_string(),
            msg: format!("{what}: {endpoint} sent no '{h}' header (is it a Hugging Face hub endpoint?)"),
        },
        ApiError::LockAcquisition(p) => {
            Error::Hub { repo: repo.to_string(), msg: format!("{what}: another download holds {}", p.display()) }
        }
        other => Error::Hub { repo: repo.to_string(), msg: format!("{what}: {other}") },
    }
}

fn interrupted(repo: &str, f: &RemoteFile, cache: &Path, cause: &str) -> Error {
    // hf-hub names the part after the etag, which the hub sets to the checksum the listing gives.
    let part = match &f.checksum {
        Checksum::Sha256(h) | Checksum::GitBlob(h) => {
            Some(cache.join(super::repo_folder(repo)).join("blobs").join(format!("{h}.part")))
        }
        Checksum::None => None,
    };
    Error::Hub {
        repo: repo.to_string(),
        msg: format!(
            "transfer of '{}' interrupted ({cause}); the received part is kept{} and the next run resumes it",
            f.path,
            part.filter(|p| p.exists()).map(|p| format!(" in {}", p.display())).unwrap_or_default()
        ),
    }
}
