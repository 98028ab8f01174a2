//! Deep layer inspection: what a layer tarball holds, read once by enrichment and kept as a
//! [`LayerFiles`] list (the layer's bytes are never stored).
//!
//! The blob is decompressed as a stream (gzip, zstd, or an uncompressed tar, told apart by
//! their magic bytes) with a cap on the uncompressed bytes, so a decompression bomb stops at the
//! cap with a reason instead of filling memory or the disk. Whiteouts (`.wh.<name>`) and opaque
//! directory markers (`.wh..wh..opq`) are kept as entries of their own kind: whether a path is
//! added or modified depends on the lower layers of each image, which the query computes.

use std::io::{self, Read};

use atcr_storage::image::{FileKind, LayerEntry, LayerFiles};

/// At most this many entries are listed per layer; the rest are only counted.
pub const MAX_LISTED_ENTRIES: usize = 50_000;

/// Reads `bytes` (a layer blob whose digest was already checked) as a tar archive, compressed
/// or not. `max_uncompressed` caps the bytes the decompressor may produce.
pub fn inspect_layer(digest: &str, bytes: &[u8], max_uncompressed: u64) -> Result<LayerFiles, String> {
    let compression = if bytes.starts_with(&[0x1f, 0x8b]) {
        "gzip"
    } else if bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        "zstd"
    } else {
        "none"
    };
    let reader: Box<dyn Read> = match compression {
        "gzip" => Box::new(flate2::read::MultiGzDecoder::new(bytes)),
        "zstd" => Box::new(zstd::stream::read::Decoder::new(bytes).map_err(|error| format!("zstd: {error}"))?),
        _ => Box::new(bytes),
    };
    let mut counted = Capped { inner: reader, read: 0, cap: max_uncompressed };
    let mut files = LayerFiles {
        layer: digest.to_string(),
        compression: compression.to_string(),
        compressed_size: bytes.len() as u64,
        ..LayerFiles::default()
    };
    {
        let mut archive = tar::Archive::new(&mut counted);
        let entries = archive.entries().map_err(|error| describe(&error, "reading the layer as tar"))?;
        for entry in entries {
            let entry = entry.map_err(|error| describe(&error, "reading a tar entry"))?;
            let path = entry.path().map_err(|error| describe(&error, "a tar entry path"))?;
            let raw = path.to_string_lossy().into_owned();
            let header = entry.header();
            let size = header.size().unwrap_or(0);
            let kind = match header.entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => FileKind::File,
                tar::EntryType::Directory => FileKind::Directory,
                tar::EntryType::Symlink => FileKind::Symlink,
                tar::EntryType::Link => FileKind::Hardlink,
                // pax and GNU long-name headers are folded into the entry by the tar crate
                _ => FileKind::Other,
            };
            let Some(entry) = classify(&raw, kind, size) else { continue };
            if files.entries.len() < MAX_LISTED_ENTRIES {
                files.entries.push(entry);
            } else {
                files.truncated += 1;
            }
            // the entry's data is skipped (read and dropped) by the iterator
        }
    }
    // The tar reader stops at the end-of-archive blocks; the padding after them still counts.
    io::copy(&mut counted, &mut io::sink()).map_err(|error| describe(&error, "reading past the archive's end"))?;
    files.uncompressed_size = counted.read;
    Ok(files)
}

/// The entry for one tar path, or `None` for the root directory itself.
fn classify(raw: &str, kind: FileKind, size: u64) -> Option<LayerEntry> {
    let path = normalize(raw);
    if path.is_empty() {
        return None;
    }
    let (directory, name) = match path.rsplit_once('/') {
        Some((directory, name)) => (directory.to_string(), name),
        None => (String::new(), path.as_str()),
    };
    if name == ".wh..wh..opq" {
        return Some(LayerEntry { path: directory, kind: FileKind::OpaqueDirectory, size: 0 });
    }
    if let Some(deleted) = name.strip_prefix(".wh.") {
        let path = if directory.is_empty() { deleted.to_string() } else { format!("{directory}/{deleted}") };
        return Some(LayerEntry { path, kind: FileKind::Whiteout, size: 0 });
    }
    let size = if kind == FileKind::File { size } else { 0 };
    Some(LayerEntry { path, kind, size })
}

/// `./a/b/` → `a/b`; `/a` → `a`; `.` → ``.
fn normalize(raw: &str) -> String {
    let mut path = raw.trim_start_matches("./").trim_start_matches('/');
    path = path.trim_end_matches('/');
    if path == "." { String::new() } else { path.to_string() }
}

fn describe(error: &io::Error, what: &str) -> String {
    if error.kind() == io::ErrorKind::FileTooLarge {
        return error.to_string();
    }
    format!("{what}: {error}")
}

/// Counts what it reads and fails once past the cap.
struct Capped<R> {
    inner: R,
    read: u64,
    cap: u64,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let count = self.inner.read(buffer)?;
        self.read += count as u64;
        if self.read > self.cap {
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                format!("layer decompresses to more than {} bytes", self.cap),
            ));
        }
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut header = tar::Header::new_gnu();
            if path.ends_with('/') {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                header.set_mode(0o755);
                header.set_cksum();
                builder.append_data(&mut header, path, io::empty()).unwrap();
            } else {
                header.set_size(data.len() as u64);
                header.set_mode(0o644);
                header.set_cksum();
                builder.append_data(&mut header, path, *data).unwrap();
            }
        }
        builder.into_inner().unwrap()
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn entries_whiteouts_and_sizes_are_listed() {
        let tar = tar_of(&[
            ("./etc/", b""),
            ("./etc/motd", b"hello"),
            ("etc/.wh.old.conf", b""),
            ("var/cache/.wh..wh..opq", b""),
        ]);
        let blob = gzip(&tar);
        let files = inspect_layer("sha256:x", &blob, 1 << 20).unwrap();
        assert_eq!(files.compression, "gzip");
        assert_eq!(files.compressed_size, blob.len() as u64);
        assert_eq!(files.uncompressed_size, tar.len() as u64);
        let listed: Vec<(&str, FileKind, u64)> =
            files.entries.iter().map(|entry| (entry.path.as_str(), entry.kind, entry.size)).collect();
        assert_eq!(
            listed,
            vec![
                ("etc", FileKind::Directory, 0),
                ("etc/motd", FileKind::File, 5),
                ("etc/old.conf", FileKind::Whiteout, 0),
                ("var/cache", FileKind::OpaqueDirectory, 0),
            ]
        );
        let plain = inspect_layer("sha256:x", &tar, 1 << 20).unwrap();
        assert_eq!((plain.compression.as_str(), plain.entries.len()), ("none", 4));
        let zstd = zstd::encode_all(&tar[..], 3).unwrap();
        assert_eq!(inspect_layer("sha256:x", &zstd, 1 << 20).unwrap().entries, files.entries);
    }

    #[test]
    fn a_bomb_stops_at_the_cap_and_garbage_is_refused() {
        let tar = tar_of(&[("big", &vec![0u8; 1 << 20])]);
        let error = inspect_layer("sha256:x", &gzip(&tar), 64 * 1024).unwrap_err();
        assert!(error.contains("more than 65536 bytes"), "{error}");
        let error = inspect_layer("sha256:x", &gzip(b"not a tar archive at all, just words"), 1 << 20).unwrap_err();
        assert!(!error.is_empty());
        assert!(inspect_layer("sha256:x", &[0x1f, 0x8b, 0, 1, 2], 1 << 20).is_err());
    }
}
