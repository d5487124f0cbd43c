//! The transfer both hubs share, on a ureq client of our own: every server answer is untrusted.
//!
//! * Redirects are followed here (ureq's own following is off): a 3xx without `Location` or to a
//!   non-http(s) URL is an error, and the token goes only to the endpoint's origin (scheme, host and
//!   port): a redirect to any other origin drops it for the rest of the chain.
//! * Connect and idle-read timeouts ([`DownloadRequest::timeout`](super::DownloadRequest)): a stalled
//!   transfer is resumed, a bounded number of times, then a clear error.
//! * Files go into `blobs/<name>.part` with `Range` resumption, where `name` is the listing's hex
//!   checksum (never a response header); a part larger than the file is restarted; the part is verified
//!   against the listing, renamed to `blobs/<name>`, and only then does the snapshot entry
//!   (`snapshots/<commit>/<path>`, a relative symlink as huggingface_hub makes) appear. A kill at any
//!   point leaves no entry that a later run would trust on its size alone.
//! * `.locks/models--org--name/<name>.lock` (huggingface_hub's lock files, also a `flock`) keeps two
//!   downloads of the same file from writing one part.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use url::Url;

use super::{http_error, link_or_copy, verify_file, Checksum, DownloadProgress, RemoteFile};
use crate::{Error, Result};

/// Redirects followed for one request (the hub sends one or two).
const MAX_REDIRECTS: usize = 10;

/// A request that failed: ureq's error (an HTTP status or the transport), or the redirect chain.
pub(super) enum Failure {
    Ureq(Box<ureq::Error>),
    Redirect(String),
}

impl Failure {
    /// The crate's error for a request about `what` (`file 'config.json'`, `revision 'main'`).
    pub(super) fn into_error(self, endpoint: &str, repo: &str, what: &str, hint: &str) -> Error {
        match self {
            Failure::Ureq(e) => http_error(*e, endpoint, repo, what, hint),
            Failure::Redirect(msg) => Error::Hub { repo: repo.to_string(), msg: format!("{what}: {msg}") },
        }
    }

    /// Worth another attempt: the connection broke or timed out, or the server had a passing error.
    fn transient(&self) -> bool {
        let Failure::Ureq(e) = self else { return false };
        match &**e {
            ureq::Error::Status(code, _) => matches!(code, 429 | 500 | 502 | 503 | 504),
            ureq::Error::Transport(t) => matches!(
                t.kind(),
                ureq::ErrorKind::Io
                    | ureq::ErrorKind::ConnectionFailed
                    | ureq::ErrorKind::BadStatus
                    | ureq::ErrorKind::BadHeader
            ),
        }
    }
}

/// The endpoint as a URL: `http` or `https`, no query.
pub(super) fn parse_endpoint(endpoint: &str) -> Result<Url> {
    let url = Url::parse(endpoint).map_err(|e| Error::Input(format!("hub endpoint '{endpoint}' is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() || url.host().is_none() {
        return Err(Error::Input(format!("hub endpoint '{endpoint}' is not an http(s) URL")));
    }
    Ok(url)
}

/// `base` with these path segments appended (each percent-encoded as one segment).
pub(super) fn url_with(base: &Url, segments: &[&str]) -> Url {
    let mut u = base.clone();
    if let Ok(mut p) = u.path_segments_mut() {
        p.pop_if_empty().extend(segments);
    }
    u
}

/// The HTTP client of one download.
pub(super) struct Http {
    agent: ureq::Agent,
    /// The token and the only origin it is sent to.
    token: Option<(String, url::Origin)>,
    pub(super) timeout: Duration,
}

impl Http {
    /// `timeout` bounds connecting and each wait for data; `token` goes to `endpoint`'s origin only.
    pub(super) fn new(timeout: Duration, token: Option<String>, endpoint: &Url) -> Http {
        let agent = ureq::AgentBuilder::new()
            .try_proxy_from_env(true)
            .redirects(0)
            .timeout_connect(timeout)
            .timeout_read(timeout)
            .user_agent(concat!("zhinao/", env!("CARGO_PKG_VERSION")))
            .build();
        Http { agent, token: token.map(|t| (t, endpoint.origin())), timeout }
    }

    /// GET `url` (from byte `from` on, when above 0), following redirects.
    pub(super) fn get(&self, url: &Url, from: u64) -> std::result::Result<ureq::Response, Failure> {
        let mut url = url.clone();
        let mut token = self.token.as_ref().filter(|(_, origin)| url.origin() == *origin).map(|(t, _)| t.as_str());
        for _ in 0..=MAX_REDIRECTS {
            let mut r = self.agent.request_url("GET", &url);
            if let Some(t) = token {
                r = r.set("Authorization", &format!("Bearer {t}"));
            }
            if from > 0 {
                r = r.set("Range", &format!("bytes={from}-"));
            }
            let resp = r.call().map_err(|e| Failure::Ureq(Box::new(e)))?;
            let status = resp.status();
            if !(300..400).contains(&status) {
                return Ok(resp);
            }
            let Some(location) = resp.header("Location") else {
                return Err(Failure::Redirect(format!("HTTP {status} from {url} without a Location header")));
            };
            let next = url.join(location).ok().filter(|u| matches!(u.scheme(), "http" | "https")).ok_or_else(|| {
                Failure::Redirect(format!("HTTP {status} from {url} redirects to {location:?}, not an http(s) URL"))
            })?;
            if next.origin() != url.origin() {
                token = None;
            }
            url = next;
        }
        Err(Failure::Redirect(format!("more than {MAX_REDIRECTS} redirects (the last to {url})")))
    }
}

/// One file of a [`Snapshot`] to bring into the cache (`root` = `models--org--name`).
pub(super) struct Fetch<'a> {
    pub snap: &'a Snapshot<'a>,
    pub root: &'a Path,
    /// `.locks/models--org--name`.
    pub locks: &'a Path,
    pub file: &'a RemoteFile,
    /// Where the file is served (the server may redirect).
    pub url: Url,
    /// The snapshot entry to create: `snapshots/<commit>/<path>`.
    pub pointer: PathBuf,
}

/// One listed repository at one commit, to be placed in the cache.
pub(super) struct Snapshot<'a> {
    pub http: &'a Http,
    pub repo: &'a str,
    pub endpoint: &'a str,
    pub hint: &'a str,
    pub retries: usize,
    /// The cache (`…/hub`).
    pub cache: &'a Path,
    pub revision: &'a str,
    /// Checked by the caller to be safe as a directory name.
    pub commit: String,
}

/// Fetch every file of `files` that the snapshot lacks (each from `url_for(file)`), then point the
/// revision at the commit.
pub(super) fn fetch_snapshot(
    s: Snapshot,
    files: Vec<RemoteFile>,
    url_for: impl Fn(&RemoteFile) -> Url,
    progress: &mut dyn DownloadProgress,
) -> Result<super::Downloaded> {
    let root = s.cache.join(super::repo_folder(s.repo));
    let locks = s.cache.join(".locks").join(super::repo_folder(s.repo));
    let snapshot = root.join("snapshots").join(&s.commit);
    progress.plan(&files);
    let mut fetched = 0;
    for f in &files {
        progress.file_start(f);
        let pointer = snapshot.join(&f.path);
        if super::is_complete(&pointer, f.size) {
            progress.file_done(f, false);
            continue;
        }
        let job = Fetch { snap: &s, root: &root, locks: &locks, file: f, url: url_for(f), pointer };
        let got = fetch_file(&job, progress)?;
        fetched += usize::from(got);
        progress.file_done(f, got);
    }
    super::write_ref(&root, s.revision, &s.commit)?;
    Ok(super::Downloaded {
        dir: snapshot,
        files: files.iter().map(|f| (f.path.clone(), f.size.unwrap_or(0))).collect(),
        commit: s.commit,
        fetched,
    })
}

/// The blob name of a file: its hex checksum from the listing (checked to be hex), else a hex digest
/// of the commit and path (stable, so a part still resumes).
pub(super) fn blob_name(file: &RemoteFile, commit: &str) -> String {
    use sha2::Digest;
    match &file.checksum {
        Checksum::Sha256(h) | Checksum::GitBlob(h) => h.to_ascii_lowercase(),
        Checksum::None => super::hex(&sha2::Sha256::digest(format!("{commit}/{}", file.path).as_bytes())),
    }
}

/// Bring one file into the cache (a verified blob and its snapshot entry); whether it was transferred
/// (false: the blob was already there, from another revision or an interrupted run).
pub(super) fn fetch_file(f: &Fetch, progress: &mut dyn DownloadProgress) -> Result<bool> {
    let name = blob_name(f.file, &f.snap.commit);
    if !name.chars().all(|c| c.is_ascii_hexdigit()) || name.is_empty() {
        // `RemoteFile`s are built from checked listings; this guards the invariant the paths rely on.
        return Err(Error::Hub { repo: f.snap.repo.to_string(), msg: format!("bad blob name {name:?}") });
    }
    let blobs = f.root.join("blobs");
    for d in [&blobs, &f.locks.to_path_buf()] {
        std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
    }
    let lock_path = f.locks.join(format!("{name}.lock"));
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| Error::io(&lock_path, e))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(Error::Hub {
                repo: f.snap.repo.to_string(),
                msg: format!("'{}': another download is writing it (lock {})", f.file.path, lock_path.display()),
            })
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&lock_path, e)),
    }
    let blob = blobs.join(&name);
    let part = blobs.join(format!("{name}.part"));
    let mut fetched = false;
    if blob.is_file() && verify_file(&blob, f.file.size, &f.file.checksum).is_err() {
        std::fs::remove_file(&blob).map_err(|e| Error::io(&blob, e))?;
    }
    if !blob.is_file() {
        let received = fetch_resumable(f, &part, progress)?;
        let mut verdict = verify_file(&part, f.file.size, &f.file.checksum);
        if verdict.is_err() && !received {
            // A complete part from an earlier run (killed while verifying, say) that does not check
            // out: fetched again, once.
            std::fs::remove_file(&part).map_err(|e| Error::io(&part, e))?;
            fetch_resumable(f, &part, progress)?;
            verdict = verify_file(&part, f.file.size, &f.file.checksum);
        }
        if let Err(msg) = verdict {
            let _ = std::fs::remove_file(&part);
            return Err(Error::Integrity { file: format!("{}/{}", f.snap.repo, f.file.path), msg });
        }
        std::fs::rename(&part, &blob).map_err(|e| Error::io(&blob, e))?;
        fetched = true;
    }
    make_pointer(&blob, &name, &f.pointer, &f.file.path)?;
    drop(lock);
    Ok(fetched)
}

/// `snapshots/<commit>/<path>` → `blobs/<name>`: a relative symlink (as huggingface_hub makes them),
/// else a hard link or a copy.
fn make_pointer(blob: &Path, name: &str, pointer: &Path, path: &str) -> Result<()> {
    if let Some(parent) = pointer.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    if pointer.symlink_metadata().is_ok() {
        std::fs::remove_file(pointer).map_err(|e| Error::io(pointer, e))?;
    }
    #[cfg(unix)]
    {
        // From snapshots/<commit>/<dirs…>/ up to the repository folder.
        let up = "../".repeat(path.split('/').count() + 1);
        if std::os::unix::fs::symlink(format!("{up}blobs/{name}"), pointer).is_ok() {
            return Ok(());
        }
    }
    let _ = (name, path);
    link_or_copy(blob, pointer)
}

/// Bring `part` to the file's full size: resume with `Range: bytes=<have>-` when part of it is there,
/// start over when the server ignores the range or the part is larger than the file, and retry an
/// interrupted, stalled or refused (5xx) transfer `retries` times. Whether any byte was received.
fn fetch_resumable(f: &Fetch, part: &Path, progress: &mut dyn DownloadProgress) -> Result<bool> {
    let size = f.file.size;
    let what = format!("file '{}'", f.file.path);
    let mut received = false;
    let mut failures = 0;
    let mut restarted = false;
    loop {
        let have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
        if size.is_some_and(|s| have > s) {
            // Larger than the file: not a prefix of it. Start over.
            std::fs::remove_file(part).map_err(|e| Error::io(part, e))?;
            continue;
        }
        if size == Some(have) {
            std::fs::OpenOptions::new().create(true).append(true).open(part).map_err(|e| Error::io(part, e))?;
            return Ok(received);
        }
        let resp = match f.snap.http.get(&f.url, have) {
            Ok(resp) => resp,
            Err(Failure::Ureq(e)) if matches!(*e, ureq::Error::Status(416, _)) && have > 0 && !restarted => {
                // The part is not a prefix of what the server has (it is as long or longer): start over.
                restarted = true;
                std::fs::remove_file(part).map_err(|e| Error::io(part, e))?;
                continue;
            }
            Err(e) if e.transient() && failures < f.snap.retries => {
                failures += 1;
                std::thread::sleep(Duration::from_millis(200 * failures as u64));
                continue;
            }
            Err(e) => return Err(e.into_error(f.snap.endpoint, f.snap.repo, &what, f.snap.hint)),
        };
        let resumed = have > 0
            && resp.status() == 206
            && resp
                .header("Content-Range")
                .is_some_and(|c| c.trim_start_matches("bytes ").starts_with(&format!("{have}-")));
        if resp.status() == 206 && !resumed {
            // A range that was not asked for: start over once without one, then give up.
            if have > 0 && !restarted {
                restarted = true;
                std::fs::remove_file(part).map_err(|e| Error::io(part, e))?;
                continue;
            }
            return Err(Error::Hub {
                repo: f.snap.repo.to_string(),
                msg: format!(
                    "{what}: {} answered a byte range that was not asked for ({:?})",
                    f.snap.endpoint,
                    resp.header("Content-Range").unwrap_or("no Content-Range")
                ),
            });
        }
        let mut out =
            if resumed { std::fs::OpenOptions::new().append(true).open(part) } else { std::fs::File::create(part) }
                .map_err(|e| Error::io(part, e))?;
        let mut done = if resumed { have } else { 0 };
        progress.file_bytes(done);
        let mut body = resp.into_reader();
        let mut buf = vec![0u8; 256 << 10];
        let cut = loop {
            match body.read(&mut buf) {
                // The end of the body by its own measure (a short one then fails verification; a
                // connection cut before the announced length is an error below, and resumed).
                Ok(0) => break None,
                Ok(n) => {
                    out.write_all(&buf[..n]).map_err(|e| Error::io(part, e))?;
                    received = true;
                    done += n as u64;
                    progress.file_bytes(done);
                    if let Some(s) = size.filter(|&s| done > s) {
                        drop(out);
                        let _ = std::fs::remove_file(part);
                        return Err(Error::Integrity {
                            file: format!("{}/{}", f.snap.repo, f.file.path),
                            msg: format!("the server sent more than the {s} bytes the listing gives"),
                        });
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock) => {
                    break Some(format!("no data for {:.1} s", f.snap.http.timeout.as_secs_f64()))
                }
                Err(e) => break Some(e.to_string()),
            }
        };
        out.flush().map_err(|e| Error::io(part, e))?;
        match cut {
            None => return Ok(received),
            Some(cause) if failures >= f.snap.retries => {
                return Err(Error::Hub {
                    repo: f.snap.repo.to_string(),
                    msg: format!(
                        "transfer of '{}' interrupted at {done} bytes ({cause}) after {} attempt(s); the part is \
                         kept in {} and the next run resumes it",
                        f.file.path,
                        failures + 1,
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
