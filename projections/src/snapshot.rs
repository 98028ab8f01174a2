//! Snapshots: a projection's rows at one checkpoint in a single file, and back into a build.
//!
//! A new node, or a rebuild, can start from a snapshot's checkpoint instead of offset 0: the
//! runner then applies only the events after it. Restoring must be fast (seconds for millions
//! of rows), and inserting rows into redb one by one is not, so a snapshot carries a ready views
//! database: every table of the live views copied, in key order, into a fresh redb file
//! (appended through a cursor, so pages come out full), which is then compressed in independent
//! zstd frames of [`FRAME_BYTES`], each with zstd's content checksum. Restoring decompresses the
//! frames on every core, each written at its offset of the new build's file.
//!
//! ```text
//! "ATCRSNAP" u8 format(3) u32 LE header length, postcard header { projection, version,
//!   checkpoint, tables: [(name, rows, sha256)] }
//!   then frames: u32 LE compressed length, u32 LE raw length, one zstd frame; length 0 ends
//! ```
//!
//! Format 2 (the same header, then the whole image as one zstd stream) is still restored.
//!
//! Every table is included (found with `list_tables`), bookkeeping tables too: the checkpoint
//! travels inside the rows it belongs to, read in the same transaction. The header's per-table
//! digests (see `digest`) let `compare` or a later check prove a restore equals its source.

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use redb::{
    Database, Durability, Key, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, Value,
    WriteTransaction,
};
use serde::{Deserialize, Serialize};

use crate::digest::{ColumnType, DigestBuilder, scan_table, table_names, table_types, with_types};
use crate::{CHECKPOINTS, ProjectionError, REGISTRY, REGISTRY_VERSION, VERSIONS, Views};

const MAGIC: &[u8; 8] = b"ATCRSNAP";
const FORMAT: u8 = 3;
/// The single-stream format before frames; still restored.
const FORMAT_SINGLE_STREAM: u8 = 2;
/// Raw bytes of the image per zstd frame: frames are compressed and decompressed in parallel.
pub const FRAME_BYTES: usize = 16 << 20;
/// A frame's lengths may not exceed this (a damaged length must not allocate gigabytes).
const MAX_FRAME_BYTES: usize = 256 << 20;
/// Rows copied per table open.
const COPY_ROWS: usize = 65_536;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotHeader {
    pub projection: String,
    /// The projection's code version the rows were built by.
    pub version: u32,
    /// The next log offset to apply after restoring.
    pub checkpoint: u64,
    /// Every table: name, rows, sha256 of its rows (the `digest` module's definition).
    pub tables: Vec<(String, u64, [u8; 32])>,
}

/// What a snapshot held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotSummary {
    pub header: SnapshotHeader,
    pub tables: u64,
    pub rows: u64,
}

impl SnapshotSummary {
    fn of(header: SnapshotHeader) -> Self {
        let rows = header.tables.iter().map(|(_, rows, _)| rows).sum();
        SnapshotSummary { tables: header.tables.len() as u64, rows, header }
    }
}

fn corrupt(reason: impl std::fmt::Display) -> ProjectionError {
    ProjectionError::Snapshot(reason.to_string())
}

/// Copies every table of `read` into a new database at `staging`; returns the header.
fn copy_tables(read: &ReadTransaction, staging: &Path) -> Result<SnapshotHeader, ProjectionError> {
    let version = read.open_table(VERSIONS)?.get(REGISTRY)?.map(|value| value.value()).unwrap_or(REGISTRY_VERSION);
    let checkpoint = read.open_table(CHECKPOINTS)?.get(REGISTRY)?.map(|value| value.value()).unwrap_or(0);
    let database = Database::builder().create(staging)?;
    let mut txn = database.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    let mut tables = Vec::new();
    for name in table_names(read)? {
        let (key, value) = table_types(read, &name)?;
        // Create the table even when it has no rows.
        with_types!(key, value, insert_rows(&txn, &name, &[]))?;
        let mut builder = DigestBuilder::default();
        let mut chunk: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(COPY_ROWS);
        scan_table(read, &name, &mut |row_key, row_value| {
            builder.row(row_key, row_value);
            chunk.push((row_key.to_vec(), row_value.to_vec()));
            if chunk.len() == COPY_ROWS {
                with_types!(key, value, insert_rows(&txn, &name, &chunk))?;
                chunk.clear();
            }
            Ok(())
        })?;
        with_types!(key, value, insert_rows(&txn, &name, &chunk))?;
        let digest = builder.finish();
        tables.push((name, digest.rows, digest.sha256));
    }
    txn.commit()?;
    Ok(SnapshotHeader { projection: REGISTRY.into(), version, checkpoint, tables })
}

/// Writes every table of the views in `read` (one consistent state) to `out`, staging the
/// database image at `staging` (a path that must not exist; removed afterwards).
pub fn write_snapshot(
    read: &ReadTransaction,
    staging: &Path,
    out: impl Write,
) -> Result<SnapshotSummary, ProjectionError> {
    let result = write_snapshot_staged(read, staging, out);
    let _ = std::fs::remove_file(staging);
    result
}

fn write_snapshot_staged(
    read: &ReadTransaction,
    staging: &Path,
    out: impl Write,
) -> Result<SnapshotSummary, ProjectionError> {
    if staging.exists() {
        return Err(corrupt(format!("{} exists already", staging.display())));
    }
    let header = copy_tables(read, staging)?;
    let io = ProjectionError::io;
    let header_bytes = postcard::to_stdvec(&header).map_err(corrupt)?;
    let mut out = BufWriter::with_capacity(1 << 20, out);
    out.write_all(MAGIC).map_err(io("snapshot write"))?;
    out.write_all(&[FORMAT]).map_err(io("snapshot write"))?;
    let length = u32::try_from(header_bytes.len()).map_err(|_| corrupt("header over 4 GiB"))?;
    out.write_all(&length.to_le_bytes()).map_err(io("snapshot write"))?;
    out.write_all(&header_bytes).map_err(io("snapshot write"))?;
    let mut image =
        std::fs::File::open(staging).map_err(ProjectionError::io(format!("cannot read {}", staging.display())))?;
    write_frames(&mut image, &mut out)?;
    out.flush().map_err(io("snapshot write"))?;
    Ok(SnapshotSummary::of(header))
}

fn staging_path(path: &Path) -> PathBuf {
    path.with_extension("staging.redb")
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
    let summary = write_snapshot(read, &staging_path(path), &file)?;
    file.sync_all().map_err(ProjectionError::io("snapshot sync"))?;
    std::fs::rename(&temporary, path).map_err(ProjectionError::io(format!("cannot write {}", path.display())))?;
    Ok(summary)
}

/// Restores a snapshot into a new views database at `path` (which must not exist). Refuses a
/// snapshot built by another version of the code (such views would be rebuilt at once anyway)
/// and a damaged one (zstd's checksum, then redb's own checks on open, then the checkpoint and
/// table list against the header).
pub fn restore_snapshot(input: impl Read, path: &Path) -> Result<SnapshotSummary, ProjectionError> {
    if path.exists() {
        return Err(corrupt(format!("{} exists already; restore into a fresh build", path.display())));
    }
    let result = restore_into(input, path);
    if result.is_err() {
        let _ = std::fs::remove_file(path);
    }
    result
}

fn restore_into(input: impl Read, path: &Path) -> Result<SnapshotSummary, ProjectionError> {
    let mut input = BufReader::with_capacity(1 << 20, input);
    let mut magic = [0u8; 13];
    input.read_exact(&mut magic).map_err(|error| corrupt(format!("not a snapshot: {error}")))?;
    if &magic[..8] != MAGIC {
        return Err(corrupt("not an atcr snapshot"));
    }
    let format = magic[8];
    if format != FORMAT && format != FORMAT_SINGLE_STREAM {
        return Err(corrupt(format!("snapshot format {format} is not supported")));
    }
    let length = u32::from_le_bytes([magic[9], magic[10], magic[11], magic[12]]) as usize;
    if length > 64 << 20 {
        return Err(corrupt("snapshot header too large"));
    }
    let mut header_bytes = vec![0u8; length];
    input.read_exact(&mut header_bytes).map_err(|error| corrupt(format!("truncated header: {error}")))?;
    let header: SnapshotHeader = postcard::from_bytes(&header_bytes).map_err(corrupt)?;
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
    let mut file =
        std::fs::File::create(path).map_err(ProjectionError::io(format!("cannot create {}", path.display())))?;
    let started = std::time::Instant::now();
    if format == FORMAT_SINGLE_STREAM {
        let mut decoder = zstd::Decoder::new(input).map_err(ProjectionError::io("zstd"))?;
        std::io::copy(&mut decoder, &mut file).map_err(|error| corrupt(format!("damaged snapshot: {error}")))?;
    } else {
        read_frames(&mut input, &file)?;
    }
    let written = started.elapsed();
    file.sync_all().map_err(ProjectionError::io("restore sync"))?;
    drop(file);
    tracing::debug!(
        write_ms = written.as_millis() as u64,
        sync_ms = (started.elapsed() - written).as_millis() as u64,
        "snapshot image restored"
    );
    let database = Database::builder().create(path)?;
    let read = database.begin_read()?;
    let checkpoint = read.open_table(CHECKPOINTS)?.get(REGISTRY)?.map(|value| value.value()).unwrap_or(0);
    let names = table_names(&read)?;
    let announced: Vec<&str> = header.tables.iter().map(|(name, _, _)| name.as_str()).collect();
    if checkpoint != header.checkpoint || names.iter().map(String::as_str).ne(announced.iter().copied()) {
        return Err(corrupt("the restored database does not match the snapshot header"));
    }
    Ok(SnapshotSummary::of(header))
}

fn compress_frame(raw: &[u8]) -> Result<Vec<u8>, ProjectionError> {
    let mut encoder = zstd::Encoder::new(Vec::with_capacity(raw.len() / 3), 3).map_err(ProjectionError::io("zstd"))?;
    encoder.include_checksum(true).map_err(ProjectionError::io("zstd"))?;
    encoder.write_all(raw).map_err(ProjectionError::io("zstd"))?;
    encoder.finish().map_err(ProjectionError::io("zstd"))
}

/// Reads up to `FRAME_BYTES` (fewer only at the end of `image`).
fn read_frame(image: &mut impl Read) -> Result<Vec<u8>, ProjectionError> {
    let mut raw = Vec::with_capacity(FRAME_BYTES);
    image.take(FRAME_BYTES as u64).read_to_end(&mut raw).map_err(ProjectionError::io("snapshot image read"))?;
    Ok(raw)
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |count| count.get()).clamp(1, 8)
}

/// Compresses `image` in frames, a few at a time in parallel, and writes them in order.
fn write_frames(image: &mut impl Read, out: &mut impl Write) -> Result<(), ProjectionError> {
    let io = ProjectionError::io;
    loop {
        let mut batch = Vec::new();
        for _ in 0..threads() {
            let raw = read_frame(image)?;
            if raw.is_empty() {
                break;
            }
            batch.push(raw);
        }
        if batch.is_empty() {
            break;
        }
        let compressed: Vec<Result<Vec<u8>, ProjectionError>> = std::thread::scope(|scope| {
            let workers: Vec<_> = batch.iter().map(|raw| scope.spawn(|| compress_frame(raw))).collect();
            workers
                .into_iter()
                .map(|worker| worker.join().unwrap_or_else(|_| Err(corrupt("a compression thread panicked"))))
                .collect()
        });
        for (raw, frame) in batch.iter().zip(compressed) {
            let frame = frame?;
            let frame_length = u32::try_from(frame.len()).map_err(|_| corrupt("frame over 4 GiB"))?;
            let raw_length = u32::try_from(raw.len()).map_err(|_| corrupt("frame over 4 GiB"))?;
            out.write_all(&frame_length.to_le_bytes()).map_err(io("snapshot write"))?;
            out.write_all(&raw_length.to_le_bytes()).map_err(io("snapshot write"))?;
            out.write_all(&frame).map_err(io("snapshot write"))?;
        }
    }
    out.write_all(&0u32.to_le_bytes()).map_err(io("snapshot write"))?;
    Ok(())
}

/// Reads the frames of `input` and decompresses them on every core, each written at its offset
/// of `file`.
fn read_frames(input: &mut impl Read, file: &std::fs::File) -> Result<(), ProjectionError> {
    let (sender, receiver) = std::sync::mpsc::sync_channel::<(u64, usize, Vec<u8>)>(threads() * 2);
    let receiver = std::sync::Mutex::new(receiver);
    // Frames written, in bytes, for the thread that starts their writeback.
    let (written_sender, written) = std::sync::mpsc::channel::<usize>();
    let decompress = |written_sender: std::sync::mpsc::Sender<usize>| -> Result<(), ProjectionError> {
        loop {
            let next = match receiver.lock() {
                Ok(receiver) => receiver.recv(),
                Err(_) => return Err(corrupt("a restore thread panicked")),
            };
            let Ok((offset, raw_length, frame)) = next else { return Ok(()) };
            let raw = zstd::bulk::decompress(&frame, raw_length)
                .map_err(|error| corrupt(format!("damaged snapshot frame at {offset}: {error}")))?;
            if raw.len() != raw_length {
                return Err(corrupt(format!("damaged snapshot frame at {offset}: wrong length")));
            }
            write_sparse(file, &raw, offset)?;
            let _ = written_sender.send(raw_length);
        }
    };
    std::thread::scope(|scope| {
        // Twice the cores: a worker also waits on writes.
        let workers: Vec<_> = (0..threads() * 2)
            .map(|_| {
                let written_sender = written_sender.clone();
                scope.spawn(move || decompress(written_sender))
            })
            .collect();
        drop(written_sender);
        // Writeback while decompressing: the final sync then waits for the tail only, not for
        // gigabytes at once (it was half of a restore).
        let writeback = scope.spawn(move || {
            let mut unsynced = 0usize;
            for bytes in written {
                unsynced += bytes;
                if unsynced >= WRITEBACK_BYTES {
                    unsynced = 0;
                    if let Err(error) = file.sync_data() {
                        return Err(ProjectionError::io("restore writeback")(error));
                    }
                }
            }
            Ok(())
        });
        // Takes the sender: once it returns, the workers finish the frames queued and stop.
        let mut outcome = send_frames(input, sender).and_then(|length| {
            // Trailing zero pages were skipped: the file still has the image's length.
            file.set_len(length).map_err(ProjectionError::io("restore length"))
        });
        for worker in workers {
            let result = worker.join().unwrap_or_else(|_| Err(corrupt("a restore thread panicked")));
            if outcome.is_ok() {
                outcome = result;
            }
        }
        let synced = writeback.join().unwrap_or_else(|_| Err(corrupt("the restore writeback thread panicked")));
        outcome.and(synced)
    })
}

/// Bytes restored between two syncs of the file while restoring.
const WRITEBACK_BYTES: usize = 64 << 20;
/// Pages of zeros are not written: the file is new, so a hole reads as zeros, and an image has
/// many (a fifth of a 2 GiB build: free pages).
const SPARSE_BLOCK: usize = 4096;
static ZEROS: [u8; SPARSE_BLOCK] = [0; SPARSE_BLOCK];

/// Writes `raw` at `offset`, skipping the blocks that are all zeros.
fn write_sparse(file: &std::fs::File, raw: &[u8], offset: u64) -> Result<(), ProjectionError> {
    use std::os::unix::fs::FileExt;
    let mut run_start: Option<usize> = None;
    let mut position = 0;
    while position < raw.len() {
        let end = (position + SPARSE_BLOCK).min(raw.len());
        let zero = raw[position..end] == ZEROS[..end - position];
        match (zero, run_start) {
            (false, None) => run_start = Some(position),
            (true, Some(start)) => {
                file.write_all_at(&raw[start..position], offset + start as u64)
                    .map_err(ProjectionError::io("restore write"))?;
                run_start = None;
            }
            _ => {}
        }
        position = end;
    }
    if let Some(start) = run_start {
        file.write_all_at(&raw[start..], offset + start as u64).map_err(ProjectionError::io("restore write"))?;
    }
    Ok(())
}

/// Reads frames and queues them with their offsets in the image; returns the image's length.
fn send_frames(input: &mut impl Read, sender: FrameSender) -> Result<u64, ProjectionError> {
    let mut offset = 0u64;
    loop {
        let frame_length = read_u32(input)? as usize;
        if frame_length == 0 {
            return Ok(offset);
        }
        let raw_length = read_u32(input)? as usize;
        if raw_length > MAX_FRAME_BYTES || frame_length > MAX_FRAME_BYTES {
            return Err(corrupt("damaged snapshot: a frame length is out of range"));
        }
        let mut frame = vec![0u8; frame_length];
        input.read_exact(&mut frame).map_err(|error| corrupt(format!("truncated snapshot: {error}")))?;
        if sender.send((offset, raw_length, frame)).is_err() {
            // Every worker stopped on an error; it is reported by the caller.
            return Ok(offset);
        }
        offset += raw_length as u64;
    }
}

type FrameSender = std::sync::mpsc::SyncSender<(u64, usize, Vec<u8>)>;

fn read_u32(input: &mut impl Read) -> Result<u32, ProjectionError> {
    let mut bytes = [0u8; 4];
    input.read_exact(&mut bytes).map_err(|error| corrupt(format!("truncated snapshot: {error}")))?;
    Ok(u32::from_le_bytes(bytes))
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
    // Rows arrive in key order after every row already copied: append them through one cursor
    // at the end of the table (redb buffers such runs and fills pages instead of splitting them).
    let mut cursor = table.upper_bound_mut(std::ops::Bound::<K::SelfType<'_>>::Unbounded)?;
    for (key, value) in rows {
        check_width::<K>(key)?;
        check_width::<V>(value)?;
        cursor.insert_before(K::from_bytes(key), V::from_bytes(value)).map_err(|error| match error {
            redb::CursorError::Storage(error) => ProjectionError::Storage(error),
            _ => corrupt(format!("{name}: rows out of key order")),
        })?;
    }
    cursor.close()?;
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
        let staging = directory.path().join("staging.redb");
        write_snapshot(&views.database().begin_read().unwrap(), &staging, &mut bytes).unwrap();
        assert!(!staging.exists(), "the staging image is removed");
        let truncated = &bytes[..bytes.len() - 10];
        assert!(restore_snapshot(truncated, &directory.path().join("b/views.redb")).is_err());
        assert!(!directory.path().join("b/views.redb").exists(), "a failed restore leaves nothing behind");
        let mut flipped = bytes.clone();
        let middle = flipped.len() / 2;
        flipped[middle] ^= 0x40;
        assert!(restore_snapshot(flipped.as_slice(), &directory.path().join("d/views.redb")).is_err());
        assert!(restore_snapshot(&b"not a snapshot at all"[..], &directory.path().join("c/views.redb")).is_err());
        // A restore never writes over an existing build.
        let existing = directory.path().join("a/views.redb");
        drop(views);
        assert!(restore_snapshot(bytes.as_slice(), &existing).is_err());
    }
}
