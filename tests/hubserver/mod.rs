//! A model hub on 127.0.0.1 for the download tests: the Hugging Face file API (repo listing with
//! `?blobs=true`, `/resolve/` with `Range`, the `x-repo-commit` / `ETag` / `x-linked-etag` headers) and
//! ModelScope's (`/api/v1/models/…/repo/files`, `/api/v1/models/…/repo?FilePath=`), serving repositories
//! read from fixture directories. Faults on request: a transfer cut mid-body (once) or stalled mid-body
//! (once), a corrupted or shortened file, a listed file that answers 404, hostile `ETag` /
//! `x-linked-etag` / `x-repo-commit` headers, a listing patched by the test (hostile commit, checksums),
//! file requests redirected (to another hub, or a 3xx without `Location`). Hostile paths are simply
//! added to a repository's files. Every request is logged with the headers that matter. Plain
//! std::net, one thread per connection, `Connection: close`; the server stops when dropped.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::Digest;

pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct Logged {
    pub target: String,
    pub range: Option<String>,
    pub auth: Option<String>,
}

#[derive(Default)]
pub struct State {
    /// repo id → (path → content).
    pub repos: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    pub log: Vec<Logged>,
    /// Paths whose next full transfer sends half the body, then closes the connection.
    pub cut_once: HashSet<String>,
    /// Paths served with one byte changed (same size).
    pub corrupt: HashSet<String>,
    /// Paths served 100 bytes short (consistently in their headers).
    pub short: HashSet<String>,
    /// Paths that are listed but answer 404.
    pub missing: HashSet<String>,
    /// Paths whose next full or resumed transfer sends half the body, then nothing more (the
    /// connection stays open until the hub is dropped, or 30 s).
    pub stall_once: HashSet<String>,
    /// Paths whose next request gets no answer at all (held open as for `stall_once`).
    pub silent_once: HashSet<String>,
    /// File answers carry a path-traversal `ETag` and `x-linked-etag`.
    pub hostile_etag: bool,
    /// File answers carry a path-traversal `x-repo-commit`.
    pub hostile_commit: bool,
    /// Applied to every listing (both APIs) before it is sent.
    pub listing_patch: Option<fn(&mut serde_json::Value)>,
    /// File requests answer `302 Location: <this><path>?redirected=1` (unless already redirected).
    pub redirect_to: Option<String>,
    /// File requests answer `302 Found` without a `Location` header.
    pub redirect_without_location: bool,
}

pub struct Hub {
    pub url: String,
    pub state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    ip: String,
    port: u16,
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect((self.ip.as_str(), self.port));
    }
}

/// Every file under `dir`, keyed by its `/`-separated relative path.
pub fn read_tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p
                    .strip_prefix(root)
                    .unwrap()
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>();
                out.insert(rel.join("/"), std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

pub fn sha256_hex(b: &[u8]) -> String {
    hex(&sha2::Sha256::digest(b))
}

pub fn git_blob_id(b: &[u8]) -> String {
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {}\0", b.len()).as_bytes());
    h.update(b);
    hex(&h.finalize())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Weights are LFS files on the hub (sha256 etag); the rest are plain git blobs.
fn is_lfs(path: &str) -> bool {
    path.ends_with(".safetensors") || path.ends_with(".bin")
}

impl Hub {
    pub fn start(repos: &[(&str, &Path)]) -> Hub {
        Self::start_on("127.0.0.1", repos)
    }

    /// A hub on another loopback address (e.g. 127.0.0.2: another host for the client); 127.0.0.1
    /// where that address cannot be bound (then only the port differs).
    pub fn start_on(ip: &str, repos: &[(&str, &Path)]) -> Hub {
        let listener = TcpListener::bind((ip, 0)).or_else(|_| TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let (ip, port) = (addr.ip(), addr.port());
        let mut st = State::default();
        for (id, dir) in repos {
            st.repos.insert(id.to_string(), read_tree(dir));
        }
        let state = Arc::new(Mutex::new(st));
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, stop2) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(c) = conn {
                    let (s, stop) = (s2.clone(), stop2.clone());
                    std::thread::spawn(move || {
                        let _ = handle(c, &s, &stop);
                    });
                }
            }
        });
        Hub { url: format!("http://{ip}:{port}"), state, stop, ip: ip.to_string(), port }
    }

    pub fn log(&self) -> Vec<Logged> {
        self.state.lock().unwrap().log.clone()
    }
}

fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query(q: &str, key: &str) -> Option<String> {
    q.split('&').find_map(|kv| kv.split_once('=').filter(|(k, _)| *k == key).map(|(_, v)| pct_decode(v)))
}

fn respond(c: &mut TcpStream, status: &str, headers: &[(&str, String)], body: &[u8]) -> std::io::Result<()> {
    let mut h = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
    for (k, v) in headers {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    h.push_str("\r\n");
    c.write_all(h.as_bytes())?;
    c.write_all(body)?;
    c.flush()
}

fn handle(mut c: TcpStream, state: &Mutex<State>, stop: &AtomicBool) -> std::io::Result<()> {
    let mut r = BufReader::new(c.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let target = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let (mut range, mut auth) = (None, None);
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "range" => range = Some(v.trim().to_string()),
                "authorization" => auth = Some(v.trim().to_string()),
                _ => {}
            }
        }
    }
    let mut st = state.lock().unwrap();
    st.log.push(Logged { target: target.clone(), range: range.clone(), auth });
    let (path, q) = target.split_once('?').unwrap_or((&target, ""));
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    // Hugging Face listing: /api/models/ORG/NAME/revision/REV
    if parts.len() == 6 && parts[0] == "api" && parts[1] == "models" && parts[4] == "revision" {
        let id = format!("{}/{}", parts[2], parts[3]);
        let Some(files) = st.repos.get(&id) else {
            let body = br#"{"error":"Repository not found"}"#;
            return respond(&mut c, "401 Unauthorized", &[("x-error-code", "RepoNotFound".into())], body);
        };
        let siblings: Vec<serde_json::Value> = files
            .iter()
            .map(|(p, b)| {
                let mut v = serde_json::json!({"rfilename": p, "size": b.len(), "blobId": git_blob_id(b)});
                if is_lfs(p) {
                    v["lfs"] = serde_json::json!({"sha256": sha256_hex(b), "size": b.len(), "pointerSize": 134});
                }
                v
            })
            .collect();
        let mut listing = serde_json::json!({"id": id, "sha": COMMIT, "siblings": siblings});
        if let Some(patch) = st.listing_patch {
            patch(&mut listing);
        }
        let body = listing.to_string();
        return respond(&mut c, "200 OK", &[("Content-Type", "application/json".into())], body.as_bytes());
    }
    // ModelScope listing: /api/v1/models/ORG/NAME/repo/files
    if parts.len() == 7 && parts[..3] == ["api", "v1", "models"] && parts[5..] == ["repo", "files"] {
        let id = format!("{}/{}", parts[3], parts[4]);
        let Some(files) = st.repos.get(&id) else {
            let body = br#"{"Code":10010205001,"Message":"model not found"}"#;
            return respond(&mut c, "404 Not Found", &[], body);
        };
        let list: Vec<serde_json::Value> = files
            .iter()
            .map(|(p, b)| {
                let name = p.rsplit('/').next().unwrap();
                serde_json::json!({"Name": name, "Path": p, "Size": b.len(), "Sha256": sha256_hex(b), "Type": "blob", "Revision": COMMIT})
            })
            .collect();
        let mut listing = serde_json::json!({"Code": 200, "Data": {"Files": list}, "Success": true});
        if let Some(patch) = st.listing_patch {
            patch(&mut listing);
        }
        let body = listing.to_string();
        return respond(&mut c, "200 OK", &[], body.as_bytes());
    }
    // Files: /ORG/NAME/resolve/REV/PATH… (Hugging Face) or /api/v1/models/ORG/NAME/repo?FilePath= (ModelScope)
    let (id, file) = if parts.len() >= 5 && parts[2] == "resolve" {
        (format!("{}/{}", parts[0], parts[1]), parts[4..].iter().map(|p| pct_decode(p)).collect::<Vec<_>>().join("/"))
    } else if parts.len() == 6 && parts[..3] == ["api", "v1", "models"] && parts[5] == "repo" {
        (format!("{}/{}", parts[3], parts[4]), query(q, "FilePath").unwrap_or_default())
    } else {
        return respond(&mut c, "404 Not Found", &[], b"no such route");
    };
    let content = st.repos.get(&id).and_then(|f| f.get(&file)).cloned();
    let Some(mut content) = content.filter(|_| !st.missing.contains(&file)) else {
        return respond(&mut c, "404 Not Found", &[("x-error-code", "EntryNotFound".into())], b"Entry not found");
    };
    let etag = if is_lfs(&file) { sha256_hex(&content) } else { git_blob_id(&content) };
    if st.silent_once.remove(&file) {
        drop(st);
        hold(stop);
        return Ok(());
    }
    // huggingface.co's redirect to its CDN carries the file's commit and etag headers.
    let mut redirect_headers = vec![
        ("x-repo-commit", COMMIT.to_string()),
        ("ETag", format!("\"{etag}\"")),
        ("x-linked-etag", format!("\"{etag}\"")),
    ];
    if st.redirect_without_location {
        return respond(&mut c, "302 Found", &redirect_headers, b"");
    }
    if let Some(to) = st.redirect_to.clone().filter(|_| query(q, "redirected").is_none()) {
        let sep = if q.is_empty() { "?" } else { "&" };
        redirect_headers.push(("Location", format!("{to}{target}{sep}redirected=1")));
        return respond(&mut c, "302 Found", &redirect_headers, b"");
    }
    if st.corrupt.contains(&file) {
        let mid = content.len() / 2;
        content[mid] ^= 0x5a;
    }
    if st.short.contains(&file) {
        content.truncate(content.len().saturating_sub(100));
    }
    let total = content.len();
    let (start, end) = match range.as_deref().and_then(|r| r.strip_prefix("bytes=")) {
        Some(r) => {
            let (a, b) = r.split_once('-').unwrap_or((r, ""));
            let a: usize = a.parse().unwrap_or(0);
            let b: usize = if b.is_empty() { total.saturating_sub(1) } else { b.parse().unwrap_or(total - 1) };
            (a, b.min(total.saturating_sub(1)))
        }
        None => (0, total.saturating_sub(1)),
    };
    let mut headers = vec![
        ("x-repo-commit", COMMIT.to_string()),
        ("ETag", format!("\"{etag}\"")),
        ("Accept-Ranges", "bytes".to_string()),
    ];
    if is_lfs(&file) {
        headers.push(("x-linked-etag", format!("\"{etag}\"")));
    }
    for (k, v) in headers.iter_mut() {
        match *k {
            "ETag" | "x-linked-etag" if st.hostile_etag => *v = "\"../../../../victim/planted.sh\"".to_string(),
            "x-repo-commit" if st.hostile_commit => *v = "../../../../victim".to_string(),
            _ => {}
        }
    }
    if st.hostile_etag && !is_lfs(&file) {
        headers.push(("x-linked-etag", "\"../../../../victim/planted.sh\"".to_string()));
    }
    let status = if range.is_some() {
        if start >= total && total > 0 {
            return respond(&mut c, "416 Range Not Satisfiable", &[], b"");
        }
        headers.push(("Content-Range", format!("bytes {start}-{end}/{total}")));
        "206 Partial Content"
    } else {
        "200 OK"
    };
    let body = if total == 0 { &content[..] } else { &content[start..=end] };
    // The metadata probe (bytes=0-0) is never cut; the first real transfer of a cut_once file is.
    let probe = range.as_deref() == Some("bytes=0-0");
    if !probe && st.cut_once.remove(&file) {
        drop(st);
        let mut h = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
        for (k, v) in &headers {
            h.push_str(&format!("{k}: {v}\r\n"));
        }
        h.push_str("\r\n");
        c.write_all(h.as_bytes())?;
        c.write_all(&body[..body.len() / 2])?;
        c.flush()?;
        return c.shutdown(std::net::Shutdown::Both);
    }
    if !probe && st.stall_once.remove(&file) {
        drop(st);
        let mut h = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
        for (k, v) in &headers {
            h.push_str(&format!("{k}: {v}\r\n"));
        }
        h.push_str("\r\n");
        c.write_all(h.as_bytes())?;
        c.write_all(&body[..body.len() / 2])?;
        c.flush()?;
        hold(stop);
        return Ok(());
    }
    drop(st);
    respond(&mut c, status, &headers, body)
}

/// Keep a connection open, sending nothing, until the hub is dropped (or 30 s).
fn hold(stop: &AtomicBool) {
    let t0 = Instant::now();
    while !stop.load(Ordering::SeqCst) && t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(50));
    }
}
