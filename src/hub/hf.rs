//! Hugging Face: the listing through the hub API (`/api/models/ORG/NAME/revision/REV?blobs=true`, which
//! gives the commit and each file's size and checksum), then each file from
//! `/ORG/NAME/resolve/<commit>/<path>` through the shared transfer (`transfer.rs`). Nothing the server
//! sends besides the listing names anything on disk: the `ETag`, `x-linked-etag` and `x-repo-commit`
//! headers are not read. The listing itself is checked: the commit must be 40 hex digits, each checksum
//! hex, each path a plain relative path.

use std::path::Path;

use serde::Deserialize;

use super::transfer::{fetch_snapshot, parse_endpoint, url_with, Http, Snapshot};
use super::{
    check_repo_path, offline_hint, select, Checksum, DownloadProgress, DownloadRequest, Downloaded, RemoteFile, Source,
    DEFAULT_HF_ENDPOINT,
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

/// `len` hex digits.
fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.chars().all(|c| c.is_ascii_hexdigit())
}

pub(super) fn download(req: &DownloadRequest, cache: &Path, progress: &mut dyn DownloadProgress) -> Result<Downloaded> {
    let repo_id = req.repo_id.as_str();
    let (org, name) = repo_id.split_once('/').unwrap_or((repo_id, ""));
    let revision = req.revision.clone().unwrap_or_else(|| "main".to_string());
    let endpoint = req
        .endpoint
        .clone()
        .or_else(|| std::env::var("HF_ENDPOINT").ok().filter(|e| !e.trim().is_empty()))
        .unwrap_or_else(|| DEFAULT_HF_ENDPOINT.to_string())
        .trim()
        .trim_end_matches('/')
        .to_string();
    let base = parse_endpoint(&endpoint)?;
    let token = req.token.clone().or_else(super::hf_token);
    if token.is_some() && base.scheme() == "http" {
        progress.warn(&format!(
            "the Hugging Face token is sent to {endpoint} over plain http, readable by anyone on the way; use an \
             https endpoint, or unset HF_TOKEN for a public repository"
        ));
    }
    let http = Http::new(req.timeout, token, &base);
    let hint = || offline_hint(Source::HuggingFace, cache, repo_id, req.revision.as_deref());

    // The listing, with sizes and checksums.
    let mut url = url_with(&base, &["api", "models", org, name, "revision", &revision]);
    url.query_pairs_mut().append_pair("blobs", "true");
    let what = format!("revision '{revision}'");
    let info: RepoInfo =
        http.get(&url, 0).map_err(|e| e.into_error(&endpoint, repo_id, &what, &hint()))?.into_json().map_err(|e| {
            Error::Hub {
                repo: repo_id.to_string(),
                msg: format!("the listing from {endpoint} is not the hub's JSON: {e}"),
            }
        })?;
    if !is_hex(&info.sha, 40) {
        return Err(Error::Hub {
            repo: repo_id.to_string(),
            msg: format!("the listing from {endpoint} gives {:?} as the commit, not 40 hex digits", info.sha),
        });
    }
    let commit = info.sha.to_ascii_lowercase();
    let mut files = Vec::new();
    for s in info.siblings {
        check_repo_path(repo_id, &s.rfilename)?;
        let (size, checksum) = match (s.lfs, s.blob_id) {
            (Some(lfs), _) if is_hex(&lfs.sha256, 64) => (Some(lfs.size), Checksum::Sha256(lfs.sha256)),
            (None, Some(id)) if is_hex(&id, 40) => (s.size, Checksum::GitBlob(id)),
            (None, None) => (s.size, Checksum::None),
            (lfs, id) => {
                return Err(Error::Hub {
                    repo: repo_id.to_string(),
                    msg: format!(
                        "the listing gives '{}' a checksum that is not a hex digest ({:?})",
                        s.rfilename,
                        lfs.map(|l| l.sha256).or(id).unwrap_or_default()
                    ),
                })
            }
        };
        files.push(RemoteFile { path: s.rfilename, size, checksum });
    }
    let files = select(repo_id, files, &req.include)?;
    let hint = hint();
    let snapshot = Snapshot {
        http: &http,
        repo: repo_id,
        endpoint: &endpoint,
        hint: &hint,
        retries: req.retries,
        cache,
        revision: &revision,
        commit: commit.clone(),
    };
    fetch_snapshot(
        snapshot,
        files,
        |f| {
            let mut segments = vec![org, name, "resolve", commit.as_str()];
            segments.extend(f.path.split('/'));
            url_with(&base, &segments)
        },
        progress,
    )
}
