//! A minimal, read-only reader for *stored* (uncompressed) zip archives, enough for the
//! `torch.save` format (PyTorch ≥ 1.6): `<prefix>/data.pkl`, `<prefix>/data/<key>`, … .
//!
//! Only the central directory is trusted for names; every entry's data offset is taken from its
//! local header (PyTorch pads local headers with an extra field to align data to 64 bytes).
//! Zip64 records are understood, so files over 4 GiB work. Compressed entries are refused.
//! No bounds are assumed: every offset is checked against the buffer before slicing.

use crate::error::{Error, Result};
use std::ops::Range;

const EOCD_SIG: u32 = 0x0605_4b50;
const ZIP64_LOCATOR_SIG: u32 = 0x0706_4b50;
const ZIP64_EOCD_SIG: u32 = 0x0606_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const LOCAL_SIG: u32 = 0x0403_4b50;

/// One stored entry of the archive: its name and the byte range of its data in the archive.
#[derive(Clone, Debug)]
pub struct ZipEntry {
    pub name: String,
    pub data: Range<usize>,
}

/// Little-endian reads that fail (instead of panicking) when they run past the buffer.
struct Reader<'a> {
    buf: &'a [u8],
    file: &'a str,
}

impl Reader<'_> {
    fn bytes(&self, at: usize, len: usize, what: &str) -> Result<&[u8]> {
        at.checked_add(len)
            .and_then(|end| self.buf.get(at..end))
            .ok_or_else(|| Error::bad_file(self.file, format!("zip: truncated {what} at byte {at}")))
    }
    fn u16(&self, at: usize, what: &str) -> Result<u16> {
        let b = self.bytes(at, 2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&self, at: usize, what: &str) -> Result<u32> {
        let b = self.bytes(at, 4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&self, at: usize, what: &str) -> Result<u64> {
        let b = self.bytes(at, 8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn err(&self, msg: impl Into<String>) -> Error {
        Error::bad_file(self.file, format!("zip: {}", msg.into()))
    }
}

fn to_usize(v: u64, r: &Reader, what: &str) -> Result<usize> {
    usize::try_from(v).map_err(|_| r.err(format!("{what} {v} does not fit in memory")))
}

/// Lists the entries of a stored zip archive held in `buf`. `file` names the archive in errors.
pub fn read_entries(buf: &[u8], file: &str) -> Result<Vec<ZipEntry>> {
    let r = Reader { buf, file };
    // The end-of-central-directory record is 22 bytes plus a comment of up to 65535 bytes.
    if buf.len() < 22 {
        return Err(r.err("file too short to be a zip archive (truncated?)"));
    }
    let lowest = buf.len().saturating_sub(22 + 65535);
    let eocd = (lowest..=buf.len() - 22)
        .rev()
        .find(|&i| buf[i..i + 4] == EOCD_SIG.to_le_bytes())
        .ok_or_else(|| r.err("no end-of-central-directory record (truncated file?)"))?;

    let comment_len = usize::from(r.u16(eocd + 20, "end record")?);
    if eocd + 22 + comment_len != buf.len() {
        return Err(r.err("the end-of-central-directory record does not end the file (truncated?)"));
    }
    let mut count = u64::from(r.u16(eocd + 10, "end record")?);
    let mut cd_size = u64::from(r.u32(eocd + 12, "end record")?);
    let mut cd_offset = u64::from(r.u32(eocd + 16, "end record")?);
    // Zip64: the locator sits just before the classic record and points at the zip64 record.
    if eocd >= 20 && r.u32(eocd - 20, "zip64 locator")? == ZIP64_LOCATOR_SIG {
        let at = to_usize(r.u64(eocd - 20 + 8, "zip64 locator")?, &r, "zip64 record offset")?;
        if r.u32(at, "zip64 end record")? != ZIP64_EOCD_SIG {
            return Err(r.err("bad zip64 end-of-central-directory signature"));
        }
        count = r.u64(at + 32, "zip64 end record")?;
        cd_size = r.u64(at + 40, "zip64 end record")?;
        cd_offset = r.u64(at + 48, "zip64 end record")?;
    }
    let cd_offset = to_usize(cd_offset, &r, "central directory offset")?;
    let cd_end = to_usize(cd_size, &r, "central directory size")?
        .checked_add(cd_offset)
        .filter(|&e| e <= buf.len())
        .ok_or_else(|| r.err("central directory lies outside the file (truncated?)"))?;

    let mut entries = Vec::new();
    let mut at = cd_offset;
    for _ in 0..count {
        if at >= cd_end || r.u32(at, "central directory")? != CENTRAL_SIG {
            return Err(r.err(format!("bad central directory entry at byte {at}")));
        }
        let method = r.u16(at + 10, "central directory")?;
        let mut csize = u64::from(r.u32(at + 20, "central directory")?);
        let mut usize_ = u64::from(r.u32(at + 24, "central directory")?);
        let name_len = usize::from(r.u16(at + 28, "central directory")?);
        let extra_len = usize::from(r.u16(at + 30, "central directory")?);
        let comment_len = usize::from(r.u16(at + 32, "central directory")?);
        let mut local = u64::from(r.u32(at + 42, "central directory")?);
        let name_bytes = r.bytes(at + 46, name_len, "entry name")?;
        let name = String::from_utf8_lossy(name_bytes).into_owned();
        // Zip64 extended information: the fields present are those whose classic value is 0xFFFFFFFF.
        let extra = r.bytes(at + 46 + name_len, extra_len, "extra field")?;
        let mut e = 0;
        while e + 4 <= extra.len() {
            let id = u16::from_le_bytes([extra[e], extra[e + 1]]);
            let len = usize::from(u16::from_le_bytes([extra[e + 2], extra[e + 3]]));
            if id == 0x0001 {
                let x = Reader { buf: extra.get(e + 4..).unwrap_or(&[]), file };
                let mut p = 0;
                for field in [&mut usize_, &mut csize, &mut local] {
                    if *field == 0xFFFF_FFFF {
                        *field = x.u64(p, "zip64 extra field")?;
                        p += 8;
                    }
                }
            }
            e += 4 + len;
        }
        if method != 0 {
            return Err(r.err(format!(
                "entry '{name}' is compressed (method {method}); only stored entries are supported \
                 (torch.save writes them uncompressed)"
            )));
        }
        if csize != usize_ {
            return Err(r.err(format!("stored entry '{name}' has compressed size {csize} != size {usize_}")));
        }
        // The local header has its own name and extra lengths (PyTorch uses the extra for alignment).
        let local = to_usize(local, &r, "local header offset")?;
        if r.u32(local, "local header")? != LOCAL_SIG {
            return Err(r.err(format!("bad local header for entry '{name}'")));
        }
        let local_name = usize::from(r.u16(local + 26, "local header")?);
        let local_extra = usize::from(r.u16(local + 28, "local header")?);
        let start = local + 30 + local_name + local_extra;
        let len = to_usize(csize, &r, "entry size")?;
        r.bytes(start, len, &format!("data of entry '{name}'"))?;
        entries.push(ZipEntry { name, data: start..start + len });
        at += 46 + name_len + extra_len + comment_len;
    }
    Ok(entries)
}
