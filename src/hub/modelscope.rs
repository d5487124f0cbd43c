//! ModelScope (`--source modelscope`): its listing
//! (`/api/v1/models/ORG/NAME/repo/files?Revision=R&Recursive=true`, with each file's size, sha256 and
//! commit) and its file API (`/api/v1/models/ORG/NAME/repo?Revision=R&FilePath=P`), through the same
//! transfer as Hugging Face (`transfer.rs`) into the same cache layout (`blobs/<sha256>`,
//! `snapshots/<commit>/…`, `refs/<revision>`), so `--model ORG/NAME` finds them. No token is sent.

use std::path::Path;

use serde::Deserialize;

use super::transfer::{fetch_snapshot, parse_endpoint, url_with, Http, Snapshot};
use super::{
    check_repo_path, offline_hint, select, Checksum, DownloadProgress, DownloadRequest, Downloaded, RemoteFile, Source,
    DEFAULT_MODELSCOPE_ENDPOINT,
};
use crate::{Error, Result};

#[derive(Deserialize)]
struct Listing {
    #[serde(rename = "Code", default)]
    code: Option<i64>,
    #[serde(rename = "Message", default)]
    message: Option<String>,
    #[serde(rename = "Data", default)]
    data: Option<ListingData>,
}

#[derive(Deserialize)]
struct ListingData {
    #[serde(rename = "Files", default)]
    files: Vec<MsFile>,
}

#[derive(Deserialize)]
struct MsFile {
    #[serde(rename = "Path")]
    path: String,
    #[serde(rename = "Size", default)]
    size: Option<u64>,
    #[serde(rename = "Sha256", default)]
    sha256: Option<String>,
    #[serde(rename = "Type", default)]
    kind: Option<String>,
    #[serde(rename = "Revision", default)]
    revision: Option<String>,
}

/// `MODELSCOPE_DOMAIN` (a host, as the Python client takes it, or a URL), else www.modelscope.cn.
fn endpoint(req: &DownloadRequest) -> String {
    let e = req
        .endpoint
        .clone()
        .or_else(|| std::env::var("MODELSCOPE_DOMAIN").ok().filter(|d| !d.trim().is_empty()))
        .unwrap_or_else(|| DEFAULT_MODELSCOPE_ENDPOINT.to_string());
    let e = e.trim();
    let e = if e.contains("://") { e.to_string() } else { format!("https://{e}") };
    e.trim_end_matches('/').to_string()
}

/// A commit id the server gives, safe as a directory name: letters, digits, `-`, `_`, `.`.
fn is_commit_like(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && s.chars().any(|c| c != '.')
}

pub(super) fn download(req: &DownloadRequest, cache: &Path, progress: &mut dyn DownloadProgress) -> Result<Downloaded> {
    let repo_id = req.repo_id.as_str();
    let (org, name) = repo_id.split_once('/').unwrap_or((repo_id, ""));
    let revision = req.revision.clone().unwrap_or_else(|| "master".to_string());
    let endpoint = endpoint(req);
    let base = parse_endpoint(&endpoint)?;
    let http = Http::new(req.timeout, None, &base);
    let hint = || offline_hint(Source::ModelScope, cache, repo_id, req.revision.as_deref());
    let what = format!("revision '{revision}'");
    let mut url = url_with(&base, &["api", "v1", "models", org, name, "repo", "files"]);
    url.query_pairs_mut().append_pair("Revision", &revision).append_pair("Recursive", "true");
    let listing: Listing =
        http.get(&url, 0).map_err(|e| e.into_error(&endpoint, repo_id, &what, &hint()))?.into_json().map_err(|e| {
            Error::Hub {
                repo: repo_id.to_string(),
                msg: format!("the listing from {endpoint} is not ModelScope's JSON: {e}"),
            }
        })?;
    let data = match (listing.code, listing.data) {
        (Some(200) | None, Some(d)) => d,
        (code, _) => {
            return Err(Error::Hub {
                repo: repo_id.to_string(),
                msg: format!(
                    "{what}: ModelScope answered code {} ({})",
                    code.map(|c| c.to_string()).unwrap_or_else(|| "none".into()),
                    listing.message.unwrap_or_default()
                ),
            })
        }
    };
    let blobs: Vec<MsFile> = data.files.into_iter().filter(|f| f.kind.as_deref() != Some("tree")).collect();
    let commit = blobs.iter().find_map(|f| f.revision.clone()).unwrap_or_else(|| revision.clone());
    if !is_commit_like(&commit) {
        return Err(Error::Hub {
            repo: repo_id.to_string(),
            msg: format!("the listing from {endpoint} gives {commit:?} as the commit, not a commit id"),
        });
    }
    let mut files = Vec::new();
    for f in blobs {
        check_repo_path(repo_id, &f.path)?;
        let checksum = match f.sha256.filter(|h| !h.is_empty()) {
            Some(h) if h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()) => {
                Checksum::Sha256(h.to_ascii_lowercase())
            }
            Some(h) => {
                return Err(Error::Hub {
                    repo: repo_id.to_string(),
                    msg: format!("the listing gives '{}' a sha256 that is not 64 hex digits ({h:?})", f.path),
                })
            }
            None => Checksum::None,
        };
        files.push(RemoteFile { path: f.path, size: f.size, checksum });
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
            let mut url = url_with(&base, &["api", "v1", "models", org, name, "repo"]);
            url.query_pairs_mut().append_pair("Revision", &commit).append_pair("FilePath", &f.path);
            url
        },
        progress,
    )
}
