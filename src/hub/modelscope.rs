//! ModelScope (`--source modelscope`), which `hf-hub` does not speak: its listing
//! (`/api/v1/models/ORG/NAME/repo/files?Revision=R&Recursive=true`, with each file's size, sha256 and
//! commit) and its file API (`/api/v1/models/ORG/NAME/repo?Revision=R&FilePath=P`), on the ureq client
//! that hf-hub already brings. Files go into the same cache layout as Hugging Face downloads
//! (`blobs/<sha256>`, `snapshots/<commit>/…`, `refs/<revision>`), so `--model ORG/NAME` finds them;
//! transfers resume from `blobs/<sha256>.part` with a `Range` request.

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::{
    check_path_component, check_repo_path, http_error, link_or_copy, offline_hint, select, verify_file, Checksum,
    DownloadProgress, DownloadRequest, Downloaded, RemoteFile, Source, DEFAULT_MODELSCOPE_ENDPOINT,
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
    let e = if e.contains("://") { e } else { format!("https://{e}") };
    e.trim_end_matches('/').to_string()
}

pub(super) fn download(req: &DownloadRequest, cache: &Path, progress: &mut dyn DownloadProgress) -> Result<Downloaded> {
    let repo_id = req.repo_id.as_str();
    let revision = req.revision.clone().unwrap_or_else(|| "master".to_string());
    let endpoint = endpoint(req);
    let agent = ureq::AgentBuilder::new()
        .try_proxy_from_env(true)
        .timeout_connect(Duration::from_secs(30))
        .timeout_read(Duration::from_secs(120))
        .user_agent(concat!("zhinao/", env!("CARGO_PKG_VERSION")))
        .build();
    let hint = || offline_hint(Source::ModelScope, cache, repo_id, req.revision.as_deref());
    let what = format!("revision '{revision}'");
    let listing: Listing = agent
        .get(&format!("{endpoint}/api/v1/models/{repo_id}/repo/files"))
        .query("Revision", &revision)
        .query("Recursive", "true")
        .call()
        .map_err(|e| http_error(e, &endpoint, repo_id, &what, &hint()))?
        .into_json()
        .map_err(|e| Error::Hub {
            repo: repo_id.to_string(),
            msg: format!("the listing from {endpoint} is not ModelScope's JSON: {e}"),
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
    if !check_path_component(&commit) {
        return Err(Error::Hub { repo: repo_id.to_string(), msg: format!("bad revision '{commit}'") });
    }
    let mut files = Vec::new();
    for f in blobs {
        check_repo_path(repo_id, &f.path)?;
        let checksum = match f.sha256.filter(|h| h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit())) {
            Some(h) => Checksum::Sha256(h.to_ascii_lowercase()),
            None => Checksum::None,
        };
        files.push(RemoteFile { path: f.path, size: f.size, checksum });
    }
    let files = select(repo_id, files, &req.include)?;
    let root = cache.join(super::repo_folder(repo_id));
    let snapshot = root.join("snapshots").join(&commit);
    std::fs::create_dir_all(root.join("blobs")).map_err(|e| Error::io(root.join("blobs"), e))?;
    progress.plan(&files);

    let mut fetched = 0;
    for f in &files {
        progress.file_start(f);
        let pointer = snapshot.join(&f.path);
        if std::fs::metadata(&pointer).is_ok_and(|m| m.is_file() && f.size.is_none_or(|s| m.len() == s)) {
            progress.file_done(f, false);
            continue;
        }
        let blob = root.join("blobs").join(match &f.checksum {
            Checksum::Sha256(h) | Checksum::GitBlob(h) => h.clone(),
            Checksum::None => format!("{commit}--{}", f.path.replace('/', "--")),
        });
        let part = blob.with_extension("part");
        let request = || {
            agent
                .get(&format!("{endpoint}/api/v1/models/{repo_id}/repo"))
                .query("Revision", &commit)
                .query("FilePath", &f.path)
        };
        let ctx = Ctx { repo: repo_id, endpoint: &endpoint, file: f, hint: &hint() };
        fetch_resumable(&ctx, &request, &part, req.retries, progress)?;
        if let Err(msg) = verify_file(&part, f.size, &f.checksum) {
            let _ = std::fs::remove_file(&part);
            return Err(Error::Integrity { file: format!("{repo_id}/{}", f.path), msg });
        }
        std::fs::rename(&part, &blob).map_err(|e| Error::io(&blob, e))?;
        link_or_copy(&blob, &pointer)?;
        fetched += 1;
        progress.file_done(f, true);
    }
    let refs = root.join("refs");
    std::fs::create_dir_all(&refs).map_err(|e| Error::io(&refs, e))?;
    if check_path_component(&revision) {
        std::fs::write(refs.join(&revision), &commit).map_err(|e| Error::io(refs.join(&revision), e))?;
    }
    Ok(Downloaded {
        dir: snapshot,
        commit,
        files: files.iter().map(|f| (f.path.clone(), f.size.unwrap_or(0))).collect(),
        fetched,
    })
}

struct Ctx<'a> {
    repo: &'a str,
    endpoint: &'a str,
    file: &'a RemoteFile,
    hint: &'a str,
}

/// Bring `part` to the file's full size: resume with `Range: bytes=<have>-` when part of it is there,
/// start over when the server ignores the range, and retry an interrupted transfer `retries` times.
fn fetch_resumable(
    ctx: &Ctx,
    request: &dyn Fn() -> ureq::Request,
    part: &Path,
    retries: usize,
    progress: &mut dyn DownloadProgress,
) -> Result<()> {
    let size = ctx.file.size;
    let mut failures = 0;
    loop {
        let have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
        if size.is_some_and(|s| have > s) {
            std::fs::remove_file(part).map_err(|e| Error::io(part, e))?;
            continue;
        }
        if size == Some(have) {
            std::fs::OpenOptions::new().create(true).append(true).open(part).map_err(|e| Error::io(part, e))?;
            return Ok(());
        }
        let mut r = request();
        if have > 0 {
            r = r.set("Range", &format!("bytes={have}-"));
        }
        let resp = match r.call() {
            Ok(resp) => resp,
            Err(ureq::Error::Status(416, _)) if have > 0 && failures < retries => {
                failures += 1;
                std::fs::remove_file(part).map_err(|e| Error::io(part, e))?;
                continue;
            }
            Err(e) => {
                return Err(http_error(e, ctx.endpoint, ctx.repo, &format!("file '{}'", ctx.file.path), ctx.hint))
            }
        };
        let resumed = resp.status() == 206
            && resp
                .header("Content-Range")
                .is_some_and(|c| c.trim_start_matches("bytes ").starts_with(&format!("{have}-")));
        let mut out =
            if resumed { std::fs::OpenOptions::new().append(true).open(part) } else { std::fs::File::create(part) }
                .map_err(|e| Error::io(part, e))?;
        let mut done = if resumed { have } else { 0 };
        progress.file_bytes(done);
        let mut body = resp.into_reader();
        let mut buf = vec![0u8; 256 << 10];
        let cut = loop {
            match body.read(&mut buf) {
                Ok(0) => break None,
                Ok(n) => {
                    out.write_all(&buf[..n]).map_err(|e| Error::io(part, e))?;
                    done += n as u64;
                    progress.file_bytes(done);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => break Some(e),
            }
        };
        out.flush().map_err(|e| Error::io(part, e))?;
        match cut {
            None => return Ok(()),
            Some(e) if failures >= retries => {
                return Err(Error::Hub {
                    repo: ctx.repo.to_string(),
                    msg: format!(
                        "transfer of '{}' interrupted at {done} bytes ({e}); the part is kept in {} and the next \
                         run resumes it",
                        ctx.file.path,
                        part.display()
                    ),
                })
            }
            Some(_) => {
                failures += 1;
                std::thread::sleep(Duration::from_millis(200 * failures as u64));
            }
        }
    }
}
