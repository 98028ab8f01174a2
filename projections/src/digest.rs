//! Content digests of views, table by table, to prove a rebuild equals the live views.
//!
//! Every table of the database is covered, found with `list_tables` rather than a fixed list,
//! so tables added later are checked without touching this file. A table's digest is sha256
//! over its rows in key order, each row as `u32 LE key length, key bytes, u32 LE value length,
//! value bytes` (redb's own byte encoding of each key and value). No table is excluded: the
//! bookkeeping tables (`checkpoints`, `versions`, `did_revs`) must match too when both sides
//! stand at the same offset.
//!
//! redb only iterates typed tables, so each table is opened with the first key/value type pair
//! from [`column types`](ColumnType) that it was created with. A table of another type is
//! reported as an error naming it, never skipped silently.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use redb::{Key, ReadTransaction, ReadableTable, TableDefinition, TableError, TableHandle, Value};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ProjectionError;

/// The key and value types view tables are made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ColumnType {
    Str,
    Bytes,
    U64,
    U32,
    Unit,
}

/// One table's rows read as raw bytes: its column types and a visitor over its rows.
pub(crate) type RowVisitor<'a> = &'a mut dyn FnMut(&[u8], &[u8]) -> Result<(), ProjectionError>;

/// Calls `$body` with the table opened as the key/value types named by `$key`/`$value`.
macro_rules! with_types {
    ($key:expr, $value:expr, $function:ident ( $($argument:expr),* )) => {
        match ($key, $value) {
            (ColumnType::Str, ColumnType::Bytes) => $function::<&str, &[u8]>($($argument),*),
            (ColumnType::Str, ColumnType::Str) => $function::<&str, &str>($($argument),*),
            (ColumnType::Str, ColumnType::U64) => $function::<&str, u64>($($argument),*),
            (ColumnType::Str, ColumnType::U32) => $function::<&str, u32>($($argument),*),
            (ColumnType::Str, ColumnType::Unit) => $function::<&str, ()>($($argument),*),
            (ColumnType::Bytes, ColumnType::Bytes) => $function::<&[u8], &[u8]>($($argument),*),
            (ColumnType::Bytes, ColumnType::Str) => $function::<&[u8], &str>($($argument),*),
            (ColumnType::Bytes, ColumnType::U64) => $function::<&[u8], u64>($($argument),*),
            (ColumnType::Bytes, ColumnType::U32) => $function::<&[u8], u32>($($argument),*),
            (ColumnType::Bytes, ColumnType::Unit) => $function::<&[u8], ()>($($argument),*),
            (ColumnType::U64, ColumnType::Bytes) => $function::<u64, &[u8]>($($argument),*),
            (ColumnType::U64, ColumnType::Str) => $function::<u64, &str>($($argument),*),
            (ColumnType::U64, ColumnType::U64) => $function::<u64, u64>($($argument),*),
            (ColumnType::U64, ColumnType::U32) => $function::<u64, u32>($($argument),*),
            (ColumnType::U64, ColumnType::Unit) => $function::<u64, ()>($($argument),*),
            (ColumnType::U32, ColumnType::Bytes) => $function::<u32, &[u8]>($($argument),*),
            (ColumnType::U32, ColumnType::Str) => $function::<u32, &str>($($argument),*),
            (ColumnType::U32, ColumnType::U64) => $function::<u32, u64>($($argument),*),
            (ColumnType::U32, ColumnType::U32) => $function::<u32, u32>($($argument),*),
            (ColumnType::U32, ColumnType::Unit) => $function::<u32, ()>($($argument),*),
            (key, value) => Err(ProjectionError::Corrupt(format!("unsupported key type {key:?} with value type {value:?}"))),
        }
    };
}
pub(crate) use with_types;

const KEY_TYPES: [ColumnType; 4] = [ColumnType::Str, ColumnType::Bytes, ColumnType::U64, ColumnType::U32];
const VALUE_TYPES: [ColumnType; 5] =
    [ColumnType::Bytes, ColumnType::Str, ColumnType::U64, ColumnType::U32, ColumnType::Unit];

/// Names of every (non-multimap) table, sorted.
pub(crate) fn table_names(read: &ReadTransaction) -> Result<Vec<String>, ProjectionError> {
    let mut names: Vec<String> = read.list_tables()?.map(|table| table.name().to_string()).collect();
    names.sort();
    Ok(names)
}

/// The key and value types `name` was created with (tried in turn: opening a table with other
/// types fails without touching it).
pub(crate) fn table_types(read: &ReadTransaction, name: &str) -> Result<(ColumnType, ColumnType), ProjectionError> {
    for key in KEY_TYPES {
        for value in VALUE_TYPES {
            if with_types!(key, value, has_types(read, name))? {
                return Ok((key, value));
            }
        }
    }
    Err(ProjectionError::Corrupt(format!(
        "table {name} has key/value types the digest does not know: add them to ColumnType"
    )))
}

fn has_types<K: Key + 'static, V: Value + 'static>(
    read: &ReadTransaction,
    name: &str,
) -> Result<bool, ProjectionError> {
    match read.open_table(TableDefinition::<K, V>::new(name)) {
        Ok(_) => Ok(true),
        Err(TableError::TableTypeMismatch(_) | TableError::TypeDefinitionChanged(_)) => Ok(false),
        Err(error) => Err(error.into()),
    }
}

/// Reads every row of `name` as raw bytes, in key order; returns the table's column types.
pub(crate) fn scan_table(
    read: &ReadTransaction,
    name: &str,
    visit: RowVisitor<'_>,
) -> Result<(ColumnType, ColumnType), ProjectionError> {
    let (key, value) = table_types(read, name)?;
    with_types!(key, value, scan_typed(read, name, visit))?;
    Ok((key, value))
}

fn scan_typed<K: Key + 'static, V: Value + 'static>(
    read: &ReadTransaction,
    name: &str,
    visit: RowVisitor<'_>,
) -> Result<(), ProjectionError> {
    let table = read.open_table(TableDefinition::<K, V>::new(name))?;
    for entry in table.iter()? {
        let (key, value) = entry?;
        visit(K::as_bytes(&key.value()).as_ref(), V::as_bytes(&value.value()).as_ref())?;
    }
    Ok(())
}

/// What a table holds, summarized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableDigest {
    pub rows: u64,
    pub sha256: [u8; 32],
}

impl TableDigest {
    pub fn hex(&self) -> String {
        self.sha256.iter().fold(String::with_capacity(64), |mut out, byte| {
            let _ = write!(out, "{byte:02x}");
            out
        })
    }
}

/// Accumulates a table digest row by row (shared with the snapshot format's checks).
#[derive(Default)]
pub(crate) struct DigestBuilder {
    hasher: Sha256,
    rows: u64,
}

impl DigestBuilder {
    pub(crate) fn row(&mut self, key: &[u8], value: &[u8]) {
        // Rows are far below 4 GiB; the length prefix keeps (key, value) boundaries unambiguous.
        self.hasher.update((key.len() as u32).to_le_bytes());
        self.hasher.update(key);
        self.hasher.update((value.len() as u32).to_le_bytes());
        self.hasher.update(value);
        self.rows += 1;
    }

    pub(crate) fn finish(self) -> TableDigest {
        TableDigest { rows: self.rows, sha256: self.hasher.finalize().into() }
    }
}

/// The digest of every table in one consistent read.
pub fn digest_all(read: &ReadTransaction) -> Result<BTreeMap<String, TableDigest>, ProjectionError> {
    let mut out = BTreeMap::new();
    for name in table_names(read)? {
        let mut builder = DigestBuilder::default();
        scan_table(read, &name, &mut |key, value| {
            builder.row(key, value);
            Ok(())
        })?;
        out.insert(name, builder.finish());
    }
    Ok(out)
}

/// How one table compares between the live views and a rebuild.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableComparison {
    Same { rows: u64 },
    Different { live_rows: u64, rebuilt_rows: u64, first_difference: String },
    MissingLive { rebuilt_rows: u64 },
    MissingRebuilt { live_rows: u64 },
}

impl TableComparison {
    pub fn is_same(&self) -> bool {
        matches!(self, TableComparison::Same { .. })
    }
}

impl std::fmt::Display for TableComparison {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TableComparison::Same { rows } => write!(formatter, "ok ({rows} rows)"),
            TableComparison::Different { live_rows, rebuilt_rows, first_difference } => write!(
                formatter,
                "DIFFERENT (live {live_rows} rows, rebuilt {rebuilt_rows} rows, first differing key {first_difference})"
            ),
            TableComparison::MissingLive { rebuilt_rows } => {
                write!(formatter, "DIFFERENT (missing from the live views; rebuilt {rebuilt_rows} rows)")
            }
            TableComparison::MissingRebuilt { live_rows } => {
                write!(formatter, "DIFFERENT (missing from the rebuild; live {live_rows} rows)")
            }
        }
    }
}

/// Compares every table of two databases; a differing table is walked to its first differing key.
pub fn compare(
    live: &ReadTransaction,
    rebuilt: &ReadTransaction,
) -> Result<BTreeMap<String, TableComparison>, ProjectionError> {
    let live_digests = digest_all(live)?;
    let rebuilt_digests = digest_all(rebuilt)?;
    let mut names: Vec<&String> = live_digests.keys().chain(rebuilt_digests.keys()).collect();
    names.sort();
    names.dedup();
    let mut out = BTreeMap::new();
    for name in names {
        let comparison = match (live_digests.get(name), rebuilt_digests.get(name)) {
            (Some(left), Some(right)) if left == right => TableComparison::Same { rows: left.rows },
            (Some(left), Some(right)) => TableComparison::Different {
                live_rows: left.rows,
                rebuilt_rows: right.rows,
                first_difference: first_difference(live, rebuilt, name)?,
            },
            (None, Some(right)) => TableComparison::MissingLive { rebuilt_rows: right.rows },
            (Some(left), None) => TableComparison::MissingRebuilt { live_rows: left.rows },
            (None, None) => continue,
        };
        out.insert(name.clone(), comparison);
    }
    Ok(out)
}

/// [`compare`] for two views files no process has open for writing.
pub fn compare_files(
    live: &std::path::Path,
    rebuilt: &std::path::Path,
) -> Result<BTreeMap<String, TableComparison>, ProjectionError> {
    use redb::ReadableDatabase;
    let live = redb::Builder::new().open_read_only(live)?;
    let rebuilt = redb::Builder::new().open_read_only(rebuilt)?;
    compare(&live.begin_read()?, &rebuilt.begin_read()?)
}

type Rows = Vec<(Vec<u8>, Vec<u8>)>;

fn rows(read: &ReadTransaction, name: &str) -> Result<Rows, ProjectionError> {
    let mut out = Vec::new();
    scan_table(read, name, &mut |key, value| {
        out.push((key.to_vec(), value.to_vec()));
        Ok(())
    })?;
    Ok(out)
}

/// The first key (in table order) whose row differs or exists on one side only, printable.
fn first_difference(live: &ReadTransaction, rebuilt: &ReadTransaction, name: &str) -> Result<String, ProjectionError> {
    let (left, right) = (rows(live, name)?, rows(rebuilt, name)?);
    for index in 0..left.len().max(right.len()) {
        match (left.get(index), right.get(index)) {
            (Some(a), Some(b)) if a == b => continue,
            (Some((key_a, value_a)), Some((key_b, _))) if key_a == key_b => {
                return Ok(format!("{} (values differ, live value {} bytes)", printable(key_a), value_a.len()));
            }
            (Some((key_a, _)), Some((key_b, _))) => {
                let (first, side) = if key_a < key_b { (key_a, "live") } else { (key_b, "rebuilt") };
                return Ok(format!("{} (only in the {side} views)", printable(first)));
            }
            (Some((key, _)), None) => return Ok(format!("{} (only in the live views)", printable(key))),
            (None, Some((key, _))) => return Ok(format!("{} (only in the rebuilt views)", printable(key))),
            (None, None) => break,
        }
    }
    Ok("(rows equal, digest differs)".into())
}

/// A key for people: UTF-8 with NUL separators shown as `␀`, else hex.
fn printable(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(text) => format!("{:?}", text.replace('\0', "␀")),
        Err(_) => key.iter().fold(String::from("0x"), |mut out, byte| {
            let _ = write!(out, "{byte:02x}");
            out
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{Database, ReadableDatabase};

    const NAMES: TableDefinition<&str, &[u8]> = TableDefinition::new("names");
    const COUNTS: TableDefinition<u64, u32> = TableDefinition::new("counts");

    fn database(rows: &[(&str, &[u8])], counts: &[(u64, u32)]) -> (tempfile::TempDir, Database) {
        let directory = tempfile::tempdir().unwrap();
        let database = Database::create(directory.path().join("db.redb")).unwrap();
        let write = database.begin_write().unwrap();
        {
            let mut names = write.open_table(NAMES).unwrap();
            for (key, value) in rows {
                names.insert(*key, *value).unwrap();
            }
            let mut table = write.open_table(COUNTS).unwrap();
            for (key, value) in counts {
                table.insert(key, value).unwrap();
            }
        }
        write.commit().unwrap();
        (directory, database)
    }

    #[test]
    fn equal_content_gives_equal_digests_whatever_the_insert_order() {
        let (_a, left) = database(&[("a", b"1"), ("b", b"2")], &[(1, 10), (2, 20)]);
        let (_b, right) = database(&[("b", b"2"), ("a", b"1")], &[(2, 20), (1, 10)]);
        let comparison = compare(&left.begin_read().unwrap(), &right.begin_read().unwrap()).unwrap();
        assert_eq!(comparison["names"], TableComparison::Same { rows: 2 });
        assert_eq!(comparison["counts"], TableComparison::Same { rows: 2 });
    }

    #[test]
    fn a_difference_is_reported_with_its_first_key() {
        let (_a, left) = database(&[("a", b"1"), ("b\0x", b"2")], &[(1, 10)]);
        let (_b, right) = database(&[("a", b"1"), ("b\0x", b"3"), ("c", b"4")], &[(1, 10)]);
        let comparison = compare(&left.begin_read().unwrap(), &right.begin_read().unwrap()).unwrap();
        assert!(comparison["counts"].is_same());
        let TableComparison::Different { live_rows, rebuilt_rows, first_difference } = &comparison["names"] else {
            panic!("names should differ: {:?}", comparison["names"])
        };
        assert_eq!((*live_rows, *rebuilt_rows), (2, 3));
        assert!(first_difference.starts_with("\"b␀x\" (values differ"), "{first_difference}");
        // Another digest for a one-byte change, and a known digest for the empty table.
        let left_digest = digest_all(&left.begin_read().unwrap()).unwrap();
        let right_digest = digest_all(&right.begin_read().unwrap()).unwrap();
        assert_ne!(left_digest["names"], right_digest["names"]);
        assert_eq!(DigestBuilder::default().finish().hex(), format!("{:x}", Sha256::digest(b"")));
    }
}
