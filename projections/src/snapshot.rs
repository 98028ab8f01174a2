//! Snapshots: a projection's rows at one checkpoint in a single file, and back into a build.
//!
//! A new node, or a rebuild, can start from a snapshot's checkpoint instead of offset 0: the
//! runner then applies only the events after it. The format streams (constant memory both ways)
//! and is zstd-compressed:
//!
//! ```text
//! "ATCRSNAP" u8 format(1)   then a zstd stream of frames: u8 kind, u32 LE length, payload
//!   H  header      postcard { projection, version, checkpoint }
//!   T  table start postcard { name, key type, value type }
//!   R  row         u32 LE key length, key bytes, value bytes (redb's byte encodings)
//!   E  table end   postcard { rows, sha256 }: the table's digest (see `digest`), checked on restore
//!   Z  end         postcard { tables }
//! ```
//!
//! Every table is included (found with `list_tables`), bookkeeping tables too: the checkpoint
//! travels inside the rows it belongs to, read in the same transaction.

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use redb::{
    Database, Durability, Key, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, Value,
    WriteTransaction,
};
use serde::{Deserialize, Serialize};

use crate::digest::{ColumnType, DigestBuilder, scan_table, table_names, table_types, with_types};
use crate::{CHECKPOINTS, ProjectionError, REGISTRY, REGISTRY_VERSION, VERSIONS, Views};

const MAGIC: &[u8; 8] = b"ATCRSNAP";
const FORMAT: u8 = 1;
/// Rows inserted per table open on restore.
const RESTORE_ROWS: usize = 65_536;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotHeader {
    pub projection: String,
    /// The projection's code version the rows were built by.
    pub version: u32,
    /// The next log offset to apply after restoring.
    pub checkpoint: u64,
}

#[derive(Serialize, Deserialize)]
struct TableStart {
    name: String,
    key: ColumnType,
    value: ColumnType,
}

#[derive(Serialize, Deserialize)]
struct TableEnd {
    rows: u64,
    sha256: [u8; 32],
}

#[derive(Serialize, Deserialize)]
struct End {
    tables: u64,
}

/// What a snapshot held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotSummary {
    pub header: SnapshotHeader,
    pub tables: u64,
    pub rows: u64,
}

fn corrupt(reason: impl std::fmt::Display) -> ProjectionError {
    ProjectionError::Snapshot(reason.to_string())
}

fn write_frame(out: &mut impl Write, kind: u8, parts: &[&[u8]]) -> Result<(), ProjectionError> {
    let length: usize = parts.iter().map(|part| part.len()).sum();
    let length = u32::try_from(length).map_err(|_| corrupt("a row over 4 GiB"))?;
    let io = ProjectionError::io;
    out.write_all(&[kind]).map_err(io("snapshot write"))?;
    out.write_all(&length.to_le_bytes()).map_err(io("snapshot write"))?;
    for part in parts {
        out.write_all(part).map_err(io("snapshot write"))?;
    }
    Ok(())
}

fn postcard_frame<T: Serialize>(out: &mut impl Write, kind: u8, value: &T) -> Result<(), ProjectionError> {
    let bytes = postcard::to_stdvec(value).map_err(corrupt)?;
    write_frame(out, kind, &[&bytes])
}

/// Writes every table of the views in `read` (one consistent state) to `out`.
pub fn write_snapshot(read: &ReadTransaction, out: impl Write) -> Result<SnapshotSummary, ProjectionError> {
    let version = read.open_table(VERSIONS)?.get(REGISTRY)?.map(|value| value.value()).unwrap_or(REGISTRY_VERSION);
    let checkpoint = read.open_table(CHECKPOINTS)?.get(REGISTRY)?.map(|value| value.value()).unwrap_or(0);
    let header = SnapshotHeader { projection: REGISTRY.into(), version, checkpoint };
    let mut out = BufWriter::with_capacity(1 << 20, out);
    out.write_all(MAGIC).map_err(ProjectionError::io("snapshot write"))?;
    out.write_all(&[FORMAT]).map_err(ProjectionError::io("snapshot write"))?;
    let mut encoder = zstd::Encoder::new(out, 3).map_err(ProjectionError::io("zstd"))?;
    postcard_frame(&mut encoder, b'H', &header)?;
    let names = table_names(read)?;
    let mut rows = 0;
    for name in &names {
        let (key, value) = table_types(read, name)?;
        postcard_frame(&mut encoder, b'T', &TableStart { name: name.clone(), key, value })?;
        let mut builder = DigestBuilder::default();
        let mut row = Vec::new();
        scan_table(read, name, &mut |key, value| {
            builder.row(key, value);
            row.clear();
            row.extend_from_slice(&(key.len() as u32).to_le_bytes());
            row.extend_from_slice(key);
            row.extend_from_slice(value);
            write_frame(&mut encoder, b'R', &[&row])
        })?;
        let digest = builder.finish();
        rows += digest.rows;
        postcard_frame(&mut encoder, b'E', &TableEnd { rows: digest.rows, sha256: digest.sha256 })?;
    }
    postcard_frame(&mut encoder, b'Z', &End { tables: names.len() as u64 })?;
    let mut out = encoder.finish().map_err(ProjectionError::io("zstd"))?;
    out.flush().map_err(ProjectionError::io("snapshot write"))?;
    Ok(SnapshotSummary { header, tables: names.len() as u64, rows })
}

/// Writes a snapshot of the views to a file (replaced atomically: temporary file, fsync, rename).
pub fn write_snapshot_file(views: &Views, path: &Path) -> Result<SnapshotSummary, ProjectionError> {
    let read = views.database().begin_read()?;
    write_snapshot_file_from(&read, path)
}

/// [`write_snapshot_file`] from any read transaction over views (a read-only database, say).
pub fn write_snapshot_file_from(read: &ReadTransaction, path: &Path) -> Result<SnapshotSummary, ProjectionError> {
    let temporary = path.with_extension("partial");
    let file = std::fs::File::create(&temporary)
        .map_err(ProjectionError::io(format!("cannot create {}", temporary.display())))?;
    let summary = write_snapshot(read, &file)?;
    file.sync_all().map_err(ProjectionError::io("snapshot sync"))?;
    std::fs::rename(&temporary, path).map_err(ProjectionError::io(format!("cannot write {}", path.display())))?;
    Ok(summary)
}

struct FrameReader<R: Read> {
    input: R,
    buffer: Vec<u8>,
}

impl<R: Read> FrameReader<R> {
    fn next(&mut self) -> Result<(u8, &[u8]), ProjectionError> {
        let mut head = [0u8; 5];
        self.input.read_exact(&mut head).map_err(|error| corrupt(format!("truncated: {error}")))?;
        let length = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
        self.buffer.resize(length, 0);
        self.input.read_exact(&mut self.buffer).map_err(|error| corrupt(format!("truncated: {error}")))?;
        Ok((head[0], &self.buffer))
    }
}

fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ProjectionError> {
    postcard::from_bytes(bytes).map_err(corrupt)
}

/// Restores a snapshot into a new views database at `path` (which must not exist), checking
/// every table's digest. Refuses a snapshot built by another version of the code: such views
/// would be rebuilt at once anyway.
pub fn restore_snapshot(input: impl Read, path: &Path) -> Result<SnapshotSummary, ProjectionError> {
    if path.exists() {
        return Err(corrupt(format!("{} exists already; restore into a fresh build", path.display())));
    }
    let mut input = BufReader::with_capacity(1 << 20, input);
    let mut magic = [0u8; 9];
    input.read_exact(&mut magic).map_err(|error| corrupt(format!("not a snapshot: {error}")))?;
    if &magic[..8] != MAGIC {
        return Err(corrupt("not an atcr snapshot"));
    }
    if magic[8] != FORMAT {
        return Err(corrupt(format!("snapshot format {} is not supported", magic[8])));
    }
    let decoder = zstd::Decoder::new(input).map_err(ProjectionError::io("zstd"))?;
    let mut frames = FrameReader { input: decoder, buffer: Vec::new() };
    let (kind, payload) = frames.next()?;
    if kind != b'H' {
        return Err(corrupt("missing header"));
    }
    let header: SnapshotHeader = decode(payload)?;
    if header.projection != REGISTRY {
        return Err(corrupt(format!("snapshot of {:?}, not of the registry views", header.projection)));
    }
    if header.version != REGISTRY_VERSION {
        return Err(corrupt(format!(
            "snapshot built by registry version {}, this atcr is version {REGISTRY_VERSION}: replay instead",
            header.version
        )));
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(ProjectionError::io(format!("cannot create {}", parent.display())))?;
    }
    let database = Database::builder().create(path)?;
    let mut txn = database.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    let mut tables = 0u64;
    let mut total_rows = 0u64;
    loop {
        let (kind, payload) = frames.next()?;
        match kind {
            b'T' => {
                let start: TableStart = decode(payload)?;
                total_rows += restore_table(&mut frames, &txn, &start)?;
                tables += 1;
            }
            b'Z' => {
                let end: End = decode(payload)?;
                if end.tables != tables {
                    return Err(corrupt(format!("{} tables announced, {tables} read", end.tables)));
                }
                break;
            }
            other => return Err(corrupt(format!("unexpected frame {:?}", other as char))),
        }
    }
    txn.commit()?;
    drop(database);
    Ok(SnapshotSummary { header, tables, rows: total_rows })
}

/// Reads rows up to the table's end frame, inserting them in chunks; checks the digest.
fn restore_table<R: Read>(
    frames: &mut FrameReader<R>,
    txn: &WriteTransaction,
    start: &TableStart,
) -> Result<u64, ProjectionError> {
    let mut builder = DigestBuilder::default();
    let mut chunk: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(RESTORE_ROWS);
    // Create the table even when it has no rows.
    with_types!(start.key, start.value, insert_rows(txn, &start.name, &[]))?;
    loop {
        let (kind, payload) = frames.next()?;
        match kind {
            b'R' => {
                let (length, rest) = payload.split_at_checked(4).ok_or_else(|| corrupt("short row"))?;
                let key_length = u32::from_le_bytes([length[0], length[1], length[2], length[3]]) as usize;
                let (key, value) = rest.split_at_checked(key_length).ok_or_else(|| corrupt("short row key"))?;
                builder.row(key, value);
                chunk.push((key.to_vec(), value.to_vec()));
                if chunk.len() == RESTORE_ROWS {
                    with_types!(start.key, start.value, insert_rows(txn, &start.name, &chunk))?;
                    chunk.clear();
                }
            }
            b'E' => {
                let end: TableEnd = decode(payload)?;
                with_types!(start.key, start.value, insert_rows(txn, &start.name, &chunk))?;
                let digest = builder.finish();
                if digest.rows != end.rows || digest.sha256 != end.sha256 {
                    return Err(corrupt(format!("table {} does not match its digest", start.name)));
                }
                return Ok(digest.rows);
            }
            other => return Err(corrupt(format!("unexpected frame {:?} in table {}", other as char, start.name))),
        }
    }
}

fn check_width<T: Value>(bytes: &[u8]) -> Result<(), ProjectionError> {
    match T::fixed_width() {
        Some(width) if width != bytes.len() => Err(corrupt(format!("a fixed-width field of {} bytes", bytes.len()))),
        _ => Ok(()),
    }
}

fn insert_rows<K: Key + 'static, V: Value + 'static>(
    txn: &WriteTransaction,
    name: &str,
    rows: &[(Vec<u8>, Vec<u8>)],
) -> Result<(), ProjectionError> {
    let mut table = txn.open_table(TableDefinition::<K, V>::new(name))?;
    for (key, value) in rows {
        check_width::<K>(key)?;
        check_width::<V>(value)?;
        table.insert(K::from_bytes(key), V::from_bytes(value))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::compare_files;

    const EXTRA: TableDefinition<u64, &str> = TableDefinition::new("extra_u64_keys");

    fn views_with_rows(path: &Path) -> Views {
        let views = Views::open(path).unwrap();
        let write = views.database().begin_write().unwrap();
        {
            let mut tags = write.open_table(crate::views::TAGS).unwrap();
            for index in 0..1000u32 {
                tags.insert(format!("did:plc:a\0repo\0tag{index}").as_str(), index.to_le_bytes().as_slice()).unwrap();
            }
            write.open_table(crate::views::HANDLES).unwrap().insert("alice.test", "did:plc:a").unwrap();
            write.open_table(EXTRA).unwrap().insert(7, "seven").unwrap();
            write.open_table(CHECKPOINTS).unwrap().insert(REGISTRY, 1234).unwrap();
        }
        write.commit().unwrap();
        views
    }

    #[test]
    fn a_snapshot_restores_every_table_with_its_checkpoint() {
        let directory = tempfile::tempdir().unwrap();
        let original = directory.path().join("a/views.redb");
        let views = views_with_rows(&original);
        let file = directory.path().join("registry.snapshot");
        let written = write_snapshot_file(&views, &file).unwrap();
        assert_eq!(written.header.checkpoint, 1234);
        drop(views);

        let restored = directory.path().join("b/views.redb");
        let read = restore_snapshot(std::fs::File::open(&file).unwrap(), &restored).unwrap();
        assert_eq!(read, written);
        let comparison = compare_files(&original, &restored).unwrap();
        assert!(comparison.contains_key("extra_u64_keys") && comparison.contains_key("tags"));
        assert!(comparison.values().all(|table| table.is_same()), "{comparison:?}");
        let views = Views::open(&restored).unwrap();
        assert_eq!(views.checkpoint().unwrap(), 1234);
        assert_eq!(views.did_for_handle("alice.test").unwrap().as_deref(), Some("did:plc:a"));
    }

    #[test]
    fn a_damaged_or_foreign_snapshot_is_refused() {
        let directory = tempfile::tempdir().unwrap();
        let views = views_with_rows(&directory.path().join("a/views.redb"));
        let mut bytes = Vec::new();
        write_snapshot(&views.database().begin_read().unwrap(), &mut bytes).unwrap();
        let truncated = &bytes[..bytes.len() - 10];
        assert!(restore_snapshot(truncated, &directory.path().join("b/views.redb")).is_err());
        assert!(restore_snapshot(&b"not a snapshot at all"[..], &directory.path().join("c/views.redb")).is_err());
        // A restore never writes over an existing build.
        let existing = directory.path().join("a/views.redb");
        drop(views);
        assert!(restore_snapshot(bytes.as_slice(), &existing).is_err());
    }
}
