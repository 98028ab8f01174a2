//! The rebuild store: view rows in in-memory maps over the last committed state.
//!
//! A redb point write costs 2–3 µs (page lookups, copy-on-write), and a manifest event makes
//! 25–30 of them; a hash map does the same in a fraction of that. During a rebuild (or a large
//! backlog) nothing reads the rows between commits, so [`Overlay`] keeps every change in memory
//! (a removal of a row the committed state has is kept as a tombstone; a table only ever
//! written keeps its rows in arrival order, see `Rows`) and [`Overlay::flush_into`] writes them
//! into redb table by table in key order: into an empty table through one cursor (redb buffers
//! runs of ordered inserts), into a non-empty one row by row. The rows that land in redb are
//! exactly the ones the same events applied through a [`redb::WriteTransaction`] leave, so the
//! per-table digests of a rebuild and of the live views agree.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::ops::Bound;

use foldhash::fast::RandomState;
use hashbrown::hash_table::Entry;

use redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableHandle, WriteTransaction,
};

use crate::ProjectionError;
use crate::digest::ColumnType;
use crate::fanout::FanOut;
use crate::tables::{ViewTable, ViewTables, ViewValue};

/// Bytes a row costs beyond its key and value (its share of the map, the key's hash, two
/// allocations).
const ROW_OVERHEAD: usize = 104;

/// Rows of one table changed since the last flush: `None` is a removal of a committed row.
///
/// - `Appended`: while a table over an empty committed one has only been written, its rows are
///   kept in arrival order, unhashed (history tables such as `record_history` and `activity`
///   get a row per event and are never read during a rebuild). A key written twice keeps its
///   last value when sorted. The first read turns the table into `Hashed`.
/// - `Hashed` while only point reads and writes happen (a sorted map compares long keys with
///   common prefixes at every level: the profile showed `memcmp` at 31 %); sorted once when
///   written out.
/// - `Sorted` for good as soon as a prefix scan needs order.
enum Rows {
    Appended(Vec<(Box<str>, Box<[u8]>)>),
    Hashed(HashedRows),
    Sorted(BTreeMap<Box<str>, Option<Box<[u8]>>>),
}

impl Rows {
    fn new(base_empty: bool) -> Rows {
        if base_empty { Rows::Appended(Vec::new()) } else { Rows::Hashed(HashedRows::with_capacity(0)) }
    }

    /// Rows that answer point reads: appended rows are hashed first (the last write of a key
    /// wins).
    fn readable(&mut self) -> &mut Rows {
        if let Rows::Appended(rows) = self {
            let mut hashed = HashedRows::with_capacity(rows.len());
            for (key, value) in std::mem::take(rows) {
                hashed.insert(key, Some(value));
            }
            *self = Rows::Hashed(hashed);
        }
        self
    }

    fn get(&mut self, key: &str) -> Option<&Option<Box<[u8]>>> {
        match self.readable() {
            Rows::Hashed(rows) => rows.get(key),
            Rows::Sorted(rows) => rows.get(key),
            Rows::Appended(_) => unreachable!("readable rows are not appended"),
        }
    }

    fn get_mut(&mut self, key: &str) -> Option<&mut Option<Box<[u8]>>> {
        match self.readable() {
            Rows::Hashed(rows) => rows.get_mut(key),
            Rows::Sorted(rows) => rows.get_mut(key),
            Rows::Appended(_) => unreachable!("readable rows are not appended"),
        }
    }

    /// Writes `value` under `key`, returning how many bytes the map grew by (a replaced value's
    /// bytes count negative): one hash probe for a hashed map.
    fn upsert(&mut self, key: &str, value: Box<[u8]>) -> isize {
        let added = value.len() as isize;
        let fresh = added + (key.len() + ROW_OVERHEAD) as isize;
        match self {
            Rows::Appended(rows) => {
                rows.push((key.into(), value));
                fresh
            }
            Rows::Hashed(rows) => match rows.entry(key) {
                (_, Entry::Occupied(mut slot)) => {
                    let row = slot.get_mut();
                    let removed = row.value.as_ref().map_or(0, |old| old.len()) as isize;
                    row.value = Some(value);
                    added - removed
                }
                (hash, Entry::Vacant(slot)) => {
                    slot.insert(HashedRow { hash, key: key.into(), value: Some(value) });
                    fresh
                }
            },
            Rows::Sorted(rows) => match rows.get_mut(key) {
                Some(slot) => {
                    let removed = slot.as_ref().map_or(0, |old| old.len()) as isize;
                    *slot = Some(value);
                    added - removed
                }
                None => {
                    rows.insert(key.into(), Some(value));
                    fresh
                }
            },
        }
    }

    /// Writes a row whose key is not in the map (the caller looked), or any row while appended.
    fn insert(&mut self, key: Box<str>, value: Option<Box<[u8]>>) {
        match (self, value) {
            (Rows::Appended(rows), Some(value)) => rows.push((key, value)),
            (rows @ Rows::Appended(_), None) => rows.readable().insert(key, None),
            (Rows::Hashed(rows), value) => {
                rows.insert(key, value);
            }
            (Rows::Sorted(rows), value) => {
                rows.insert(key, value);
            }
        }
    }

    fn remove_entry(&mut self, key: &str) -> Option<Row> {
        match self.readable() {
            Rows::Hashed(rows) => rows.remove_entry(key),
            Rows::Sorted(rows) => rows.remove_entry(key),
            Rows::Appended(_) => unreachable!("readable rows are not appended"),
        }
    }

    /// The rows in key order, switching to the sorted form first.
    fn sorted(&mut self) -> &BTreeMap<Box<str>, Option<Box<[u8]>>> {
        if let Rows::Hashed(rows) = self.readable() {
            *self = Rows::Sorted(std::mem::take(rows).into_rows().collect());
        }
        match self {
            Rows::Sorted(rows) => rows,
            Rows::Hashed(_) | Rows::Appended(_) => unreachable!("just sorted"),
        }
    }

    /// Every row in key order, consuming the map.
    fn into_sorted(self) -> SortedRows {
        match self {
            Rows::Appended(rows) => {
                let mut rows: SortedRows = rows.into_iter().map(|(key, value)| (key, Some(value))).collect();
                // Stable: a key's writes stay in arrival order; the last one is kept.
                rows.sort_by(|(a, _), (b, _)| a.cmp(b));
                rows.dedup_by(|later, kept| {
                    if later.0 != kept.0 {
                        return false;
                    }
                    std::mem::swap(&mut later.1, &mut kept.1);
                    true
                });
                rows
            }
            Rows::Hashed(rows) => {
                let mut rows: Vec<_> = rows.into_rows().collect();
                rows.sort_unstable_by(|(a, _), (b, _)| a.cmp(b));
                rows
            }
            Rows::Sorted(rows) => rows.into_iter().collect(),
        }
    }
}

/// A hashed table's row, with its key's hash: growing the table moves rows by their stored hash
/// and never reads or hashes a key again (rehashing millions of 100-byte keys was 5 % of the
/// applying thread and 17 % of the fan-out thread).
struct HashedRow {
    hash: u64,
    key: Box<str>,
    value: Option<Box<[u8]>>,
}

/// Rows by key in a hash table that keeps each key's hash (see [`HashedRow`]).
#[derive(Default)]
struct HashedRows {
    table: hashbrown::HashTable<HashedRow>,
    hasher: RandomState,
}

impl HashedRows {
    fn with_capacity(capacity: usize) -> HashedRows {
        HashedRows { table: hashbrown::HashTable::with_capacity(capacity), hasher: RandomState::default() }
    }

    fn get(&self, key: &str) -> Option<&Option<Box<[u8]>>> {
        let hash = self.hasher.hash_one(key);
        self.table.find(hash, |row| row.hash == hash && *row.key == *key).map(|row| &row.value)
    }

    fn get_mut(&mut self, key: &str) -> Option<&mut Option<Box<[u8]>>> {
        let hash = self.hasher.hash_one(key);
        self.table.find_mut(hash, |row| row.hash == hash && *row.key == *key).map(|row| &mut row.value)
    }

    /// The key's hash and its slot: one probe for a read-then-write.
    fn entry(&mut self, key: &str) -> (u64, Entry<'_, HashedRow>) {
        let hash = self.hasher.hash_one(key);
        (hash, self.table.entry(hash, |row| row.hash == hash && *row.key == *key, |row| row.hash))
    }

    /// Writes a row, replacing the key's earlier one.
    fn insert(&mut self, key: Box<str>, value: Option<Box<[u8]>>) {
        match self.entry(&key) {
            (_, Entry::Occupied(mut slot)) => slot.get_mut().value = value,
            (hash, Entry::Vacant(slot)) => {
                slot.insert(HashedRow { hash, key, value });
            }
        }
    }

    fn remove_entry(&mut self, key: &str) -> Option<Row> {
        let hash = self.hasher.hash_one(key);
        let (row, _) = self.table.find_entry(hash, |row| row.hash == hash && *row.key == *key).ok()?.remove();
        Some((row.key, row.value))
    }

    fn into_rows(self) -> impl Iterator<Item = Row> {
        self.table.into_iter().map(|row| (row.key, row.value))
    }
}

struct MemoryTable {
    value: ColumnType,
    /// Whether the committed state has no row in this table: then misses are not looked up
    /// there and removals need no tombstone.
    base_empty: bool,
    rows: Rows,
}

#[derive(Default)]
struct State {
    tables: Vec<(String, MemoryTable)>,
    /// Index into `tables` by the address of the name a table definition carries: every
    /// operation looks its table up, and the definitions are constants whose names are the same
    /// static string at every use (an address not seen yet falls back to `by_name`).
    by_address: HashMap<usize, usize, RandomState>,
    by_name: HashMap<String, usize, RandomState>,
    /// Rough heap bytes held by `tables`.
    bytes: usize,
}

impl State {
    fn position(&mut self, name: &str) -> Option<usize> {
        let address = name.as_ptr() as usize;
        if let Some(&index) = self.by_address.get(&address) {
            // The same address with another length is another (static) string.
            if self.tables.get(index).is_some_and(|(known, _)| known.len() == name.len()) {
                return Some(index);
            }
        }
        let index = *self.by_name.get(name)?;
        self.by_address.insert(address, index);
        Some(index)
    }
}

/// Changes to view tables held in memory over a committed redb state (see the module docs).
pub struct Overlay {
    base: ReadTransaction,
    state: RefCell<State>,
    /// Changes of the fan-out indexes kept for another overlay ([`Overlay::deferring_fan_out`]).
    deferred: Option<RefCell<Vec<FanOut>>>,
    /// Whether the ranking tables are derived once before the write-out
    /// ([`ViewTables::derives_rankings`]).
    derives_rankings: bool,
}

impl Overlay {
    /// An empty overlay over what `database` holds now.
    pub fn new(database: &Database) -> Result<Self, ProjectionError> {
        Ok(Overlay {
            base: database.begin_read()?,
            state: RefCell::new(State::default()),
            deferred: None,
            derives_rankings: false,
        })
    }

    /// An empty overlay that keeps the changes of the fan-out indexes (`fanout`) for
    /// [`Overlay::take_fan_out`] instead of applying them: another overlay applies them, in the
    /// same order, and is [absorbed](Overlay::absorb) before the rows are written. Touching a
    /// fan-out table in this one is an error: it would see a state the other overlay has not
    /// reached.
    pub fn deferring_fan_out(database: &Database) -> Result<Self, ProjectionError> {
        Ok(Overlay { deferred: Some(RefCell::new(Vec::new())), ..Overlay::new(database)? })
    }

    /// This overlay with the ranking tables derived once before its write-out
    /// ([`crate::views::derive_rankings`]) instead of kept up to date by each change. Only for an
    /// overlay over views without repositories or stars yet: the derivation sees only the
    /// overlay's rows.
    pub fn deriving_rankings(self) -> Self {
        Overlay { derives_rankings: true, ..self }
    }

    /// The fan-out changes deferred since the last call, in order.
    pub fn take_fan_out(&self) -> Vec<FanOut> {
        self.deferred.as_ref().map(|deferred| std::mem::take(&mut *deferred.borrow_mut())).unwrap_or_default()
    }

    /// Takes over the pending tables of `other`, which must be tables this overlay has not
    /// touched (the fan-out tables of a [deferring](Overlay::deferring_fan_out) overlay).
    pub fn absorb(&self, other: Overlay) -> Result<(), ProjectionError> {
        let mut state = self.state.borrow_mut();
        let other = other.state.into_inner();
        for (name, table) in other.tables {
            if state.by_name.contains_key(&name) {
                return Err(ProjectionError::Corrupt(format!("table {name} is pending in two overlays")));
            }
            state.tables.push((name.clone(), table));
            let index = state.tables.len() - 1;
            state.by_name.insert(name, index);
        }
        state.bytes = state.bytes.saturating_add(other.bytes);
        Ok(())
    }

    /// Rough bytes of memory the pending changes take.
    pub fn memory_bytes(&self) -> usize {
        self.state.borrow().bytes
    }

    /// Whether the committed table has no rows (or does not exist).
    pub(crate) fn base_is_empty<V: ViewValue>(&self, table: ViewTable<V>) -> Result<bool, ProjectionError> {
        match self.base.open_table(table) {
            Ok(opened) => Ok(opened.len()? == 0),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(true),
            Err(error) => Err(error.into()),
        }
    }

    /// Runs `work` on the table's pending rows, creating its entry on first use.
    fn with_table<V: ViewValue, T>(
        &self,
        table: ViewTable<V>,
        work: impl FnOnce(&mut MemoryTable, &mut usize) -> T,
    ) -> Result<T, ProjectionError> {
        let mut state = self.state.borrow_mut();
        let state = &mut *state;
        let name = table.name();
        let index = match state.position(name) {
            Some(index) => index,
            None => {
                if self.deferred.is_some() && crate::fanout::TABLES.contains(&name) {
                    return Err(ProjectionError::Corrupt(format!("table {name} is applied by another overlay")));
                }
                let base_empty = self.base_is_empty(table)?;
                let rows = Rows::new(base_empty);
                state.tables.push((name.to_string(), MemoryTable { value: V::COLUMN, base_empty, rows }));
                let index = state.tables.len() - 1;
                state.by_name.insert(name.to_string(), index);
                state.by_address.insert(name.as_ptr() as usize, index);
                index
            }
        };
        let Some((_, memory)) = state.tables.get_mut(index) else {
            return Err(ProjectionError::Corrupt(format!("overlay table {name} vanished")));
        };
        if memory.value != V::COLUMN {
            return Err(ProjectionError::Corrupt(format!("table {name} used with two value types")));
        }
        Ok(work(memory, &mut state.bytes))
    }

    fn base_get<V: ViewValue>(&self, table: ViewTable<V>, key: &str) -> Result<Option<V::Owned>, ProjectionError> {
        match self.base.open_table(table) {
            Ok(opened) => Ok(opened.get(key)?.map(|value| V::to_owned_value(value.value()))),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    /// Writes every pending change into `txn` (tables in name order, rows in key order) and
    /// empties the overlay. The caller commits `txn`, then starts a new overlay over it.
    pub fn flush_into(self, txn: &WriteTransaction) -> Result<(), ProjectionError> {
        self.write_tables(&|_| true, &mut |name, value, rows, _| write_table(txn, name, value, rows))
    }

    /// [`Overlay::flush_into`] in two transactions: the tables `first` picks go into `txn`
    /// first; then `between` commits `txn` (and starts what the committed tables allow, such as
    /// the search index reading them) and returns the transaction the other tables go into,
    /// which this returns uncommitted. The other tables are sorted meanwhile, so the only pause
    /// is the commit.
    pub fn flush_split(
        self,
        txn: WriteTransaction,
        first: &dyn Fn(&str) -> bool,
        between: impl FnOnce(WriteTransaction) -> Result<WriteTransaction, ProjectionError>,
    ) -> Result<WriteTransaction, ProjectionError> {
        let mut between = Some(between);
        let mut current = Some(txn);
        let mut split = |current: &mut Option<WriteTransaction>| -> Result<(), ProjectionError> {
            if let Some(between) = between.take() {
                let txn = current.take().ok_or_else(|| ProjectionError::Corrupt("no transaction to commit".into()))?;
                *current = Some(between(txn)?);
            }
            Ok(())
        };
        self.write_tables(first, &mut |name, value, rows, in_first| {
            if !in_first {
                split(&mut current)?;
            }
            let txn =
                current.as_ref().ok_or_else(|| ProjectionError::Corrupt("no transaction to write into".into()))?;
            write_table(txn, name, value, rows)
        })?;
        // Every pending table was one of the first (or there were none).
        split(&mut current)?;
        current.ok_or_else(|| ProjectionError::Corrupt("no transaction to write into".into()))
    }

    /// Hands every pending table to `write` with its rows in key order, the tables `first` picks
    /// before the others, each group in name order (`true` for the first group), and empties the
    /// overlay.
    fn write_tables(self, first: &dyn Fn(&str) -> bool, write: &mut TableWriter<'_>) -> Result<(), ProjectionError> {
        let started = std::time::Instant::now();
        let State { tables, .. } = self.state.into_inner();
        let mut tables: Vec<(bool, String, MemoryTable)> =
            tables.into_iter().map(|(name, table)| (first(&name), name, table)).collect();
        tables.sort_by(|(a_first, a, _), (b_first, b, _)| b_first.cmp(a_first).then_with(|| a.cmp(b)));
        // Three stages on their own threads: one sorts the tables in order, this one writes
        // each into redb as soon as it is sorted, one frees the rows written (millions of small
        // allocations). Writing is the longest; the other two hide behind it. The sorter runs as
        // far ahead as it can (an unbounded queue: a sorted table holds the rows its map held):
        // one table ahead, the writer waited ~1 s in all for the 1M-row history tables' sorts.
        std::thread::scope(|scope| {
            let (sorted_sender, sorted) = std::sync::mpsc::channel::<(bool, String, ColumnType, SortedRows)>();
            let (written_sender, written) = std::sync::mpsc::channel::<SortedRows>();
            scope.spawn(move || {
                for (in_first, name, table) in tables {
                    let sorting = std::time::Instant::now();
                    let rows = table.rows.into_sorted();
                    tracing::trace!(
                        table = name,
                        rows = rows.len(),
                        elapsed_ms = sorting.elapsed().as_millis() as u64,
                        "rebuild table sorted"
                    );
                    if sorted_sender.send((in_first, name, table.value, rows)).is_err() {
                        return;
                    }
                }
            });
            scope.spawn(move || {
                crate::rebuild::yield_to_the_writer();
                written.into_iter().for_each(free_rows)
            });
            for (in_first, name, value, rows) in sorted {
                let table_started = std::time::Instant::now();
                write(&name, value, &rows, in_first)?;
                tracing::debug!(
                    table = name,
                    rows = rows.len(),
                    key_bytes = rows.iter().map(|(key, _)| key.len()).sum::<usize>(),
                    value_bytes =
                        rows.iter().map(|(_, value)| value.as_ref().map_or(0, |value| value.len())).sum::<usize>(),
                    elapsed_ms = table_started.elapsed().as_millis() as u64,
                    "rebuild table written"
                );
                let _ = written_sender.send(rows);
            }
            tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, "rebuild tables sorted and written");
            Ok(())
        })
    }
}

/// A key and its value (`None`: removed).
type Row = (Box<str>, Option<Box<[u8]>>);
type SortedRows = Vec<Row>;
/// Writes one table's sorted rows; the flag says whether the table is one of the first group.
type TableWriter<'a> = dyn FnMut(&str, ColumnType, &SortedRows, bool) -> Result<(), ProjectionError> + 'a;

/// How many rows ahead [`prefetch_row`] is asked for, when rows are gone through in order.
const PREFETCH_AHEAD: usize = 8;

/// Starts loading a row's key and value into the CPU caches. A table's rows are millions of
/// separate allocations that sorting leaves in no memory order: writing or freeing them in key
/// order waits on a cache miss for nearly every key and value, one at a time, unless the next
/// ones are already on their way.
#[inline(always)]
fn prefetch_row(row: &Row) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let (key, value) = row;
        // SAFETY: a prefetch is a hint that reads nothing and cannot fault, whatever the
        // address; SSE, its target feature, is part of every x86_64 CPU.
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(key.as_ptr().cast());
            if key.len() > 64 {
                _mm_prefetch::<_MM_HINT_T0>(key.as_ptr().wrapping_add(64).cast());
            }
            if let Some(value) = value {
                _mm_prefetch::<_MM_HINT_T0>(value.as_ptr().cast());
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = row;
}

/// Frees written rows in order, each a few rows after its key and value were asked for.
fn free_rows(rows: SortedRows) {
    let mut rows = rows.into_iter();
    loop {
        if let Some(ahead) = rows.as_slice().get(PREFETCH_AHEAD) {
            prefetch_row(ahead);
        }
        let Some(row) = rows.next() else { break };
        drop(row);
    }
}

fn write_table(
    txn: &WriteTransaction,
    name: &str,
    value: ColumnType,
    rows: &SortedRows,
) -> Result<(), ProjectionError> {
    match value {
        ColumnType::Bytes => write_rows::<&[u8]>(txn, name, rows),
        ColumnType::Str => write_rows::<&str>(txn, name, rows),
        ColumnType::U64 => write_rows::<u64>(txn, name, rows),
        ColumnType::U32 => write_rows::<u32>(txn, name, rows),
        ColumnType::Unit => write_rows::<()>(txn, name, rows),
    }
}

fn write_rows<V: ViewValue>(txn: &WriteTransaction, name: &str, rows: &SortedRows) -> Result<(), ProjectionError> {
    let definition = redb::TableDefinition::<&str, V>::new(name);
    let mut opened = txn.open_table(definition)?;
    if opened.is_empty()? {
        // Ascending keys through the gap at the end: redb buffers the run.
        let mut cursor = opened.upper_bound_mut(Bound::<&str>::Unbounded)?;
        for (index, (key, value)) in rows.iter().enumerate() {
            if let Some(ahead) = rows.get(index + PREFETCH_AHEAD) {
                prefetch_row(ahead);
            }
            let Some(value) = value else { continue };
            cursor.insert_before(&**key, V::from_bytes(value)).map_err(|error| match error {
                redb::CursorError::Storage(error) => ProjectionError::Storage(error),
                _ => ProjectionError::Corrupt(format!("{name}: rows out of order while writing a rebuild")),
            })?;
        }
        cursor.close()?;
        return Ok(());
    }
    for (index, (key, value)) in rows.iter().enumerate() {
        if let Some(ahead) = rows.get(index + PREFETCH_AHEAD) {
            prefetch_row(ahead);
        }
        match value {
            Some(value) => {
                opened.insert(&**key, V::from_bytes(value))?;
            }
            None => {
                opened.remove(&**key)?;
            }
        }
    }
    Ok(())
}

fn owned<V: ViewValue>(bytes: &[u8]) -> V::Owned {
    V::to_owned_value(V::from_bytes(bytes))
}

impl ViewTables for Overlay {
    fn get<V: ViewValue>(&self, table: ViewTable<V>, key: &str) -> Result<Option<V::Owned>, ProjectionError> {
        let found = self.with_table(table, |memory, _| match memory.rows.get(key) {
            Some(Some(value)) => Some(Some(owned::<V>(value))),
            Some(None) => Some(None),
            None if memory.base_empty => Some(None),
            None => None,
        })?;
        match found {
            Some(found) => Ok(found),
            None => self.base_get(table, key),
        }
    }

    fn contains<V: ViewValue>(&self, table: ViewTable<V>, key: &str) -> Result<bool, ProjectionError> {
        let found = self.with_table(table, |memory, _| match memory.rows.get(key) {
            Some(value) => Some(value.is_some()),
            None if memory.base_empty => Some(false),
            None => None,
        })?;
        match found {
            Some(found) => Ok(found),
            None => Ok(self.base_get(table, key)?.is_some()),
        }
    }

    fn insert<'v, V: ViewValue>(
        &self,
        table: ViewTable<V>,
        key: &str,
        value: V::SelfType<'v>,
    ) -> Result<(), ProjectionError> {
        let bytes: Box<[u8]> = V::as_bytes(&value).as_ref().into();
        self.with_table(table, |memory, total| {
            let grown = memory.rows.upsert(key, bytes);
            *total = total.saturating_add_signed(grown);
        })
    }

    fn remove<V: ViewValue>(&self, table: ViewTable<V>, key: &str) -> Result<Option<V::Owned>, ProjectionError> {
        let previous = self.get(table, key)?;
        if previous.is_none() {
            return Ok(None);
        }
        self.with_table(table, |memory, total| {
            if memory.base_empty {
                if let Some((old_key, old)) = memory.rows.remove_entry(key) {
                    let freed = old_key.len() + old.map_or(0, |old| old.len()) + ROW_OVERHEAD;
                    *total = total.saturating_sub(freed);
                }
            } else {
                match memory.rows.get_mut(key) {
                    Some(slot) => {
                        *total = total.saturating_sub(slot.as_ref().map_or(0, |old| old.len()));
                        *slot = None;
                    }
                    None => {
                        *total = total.saturating_add(key.len() + ROW_OVERHEAD);
                        memory.rows.insert(key.into(), None);
                    }
                }
            }
        })?;
        Ok(previous)
    }

    fn prefix<V: ViewValue>(
        &self,
        table: ViewTable<V>,
        prefix: &str,
    ) -> Result<Vec<(String, V::Owned)>, ProjectionError> {
        let (pending, base_empty) = self.with_table(table, |memory, _| {
            let pending: Vec<(String, Option<V::Owned>)> = memory
                .rows
                .sorted()
                .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
                .take_while(|(key, _)| key.starts_with(prefix))
                .map(|(key, value)| (key.to_string(), value.as_deref().map(owned::<V>)))
                .collect();
            (pending, memory.base_empty)
        })?;
        let mut merged: BTreeMap<String, Option<V::Owned>> = BTreeMap::new();
        if !base_empty {
            for (key, value) in self.base_prefix(table, prefix)? {
                merged.insert(key, Some(value));
            }
        }
        for (key, value) in pending {
            merged.insert(key, value);
        }
        Ok(merged.into_iter().filter_map(|(key, value)| value.map(|value| (key, value))).collect())
    }

    fn derives_rankings(&self) -> bool {
        self.derives_rankings
    }

    fn fan_out(&self, change: FanOut) -> Result<(), ProjectionError> {
        match &self.deferred {
            Some(deferred) => {
                deferred.borrow_mut().push(change);
                Ok(())
            }
            None => change.apply(self),
        }
    }
}

impl Overlay {
    fn base_prefix<V: ViewValue>(
        &self,
        table: ViewTable<V>,
        prefix: &str,
    ) -> Result<Vec<(String, V::Owned)>, ProjectionError> {
        let opened = match self.base.open_table(table) {
            Ok(opened) => opened,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(error) => return Err(error.into()),
        };
        let mut out = Vec::new();
        for entry in opened.range(prefix..)? {
            let (key, value) = entry?;
            let key = key.value();
            if !key.starts_with(prefix) {
                break;
            }
            out.push((key.to_string(), V::to_owned_value(value.value())));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::TableDefinition;

    const BYTES: TableDefinition<&str, &[u8]> = TableDefinition::new("bytes");
    const COUNTS: TableDefinition<&str, u64> = TableDefinition::new("counts");
    const UNITS: TableDefinition<&str, ()> = TableDefinition::new("units");

    /// The same operations through redb and through an overlay (flushed twice, so the second
    /// flush writes into non-empty tables) leave the same rows.
    #[test]
    fn an_overlay_leaves_the_rows_a_write_transaction_leaves() {
        let directory = tempfile::tempdir().unwrap();
        let direct = Database::create(directory.path().join("direct.redb")).unwrap();
        let staged = Database::create(directory.path().join("staged.redb")).unwrap();
        fn step<T: ViewTables>(tables: &T, step: u32) -> Result<(), ProjectionError> {
            let key = format!("k{:04}", (step * 7919) % 1000);
            let count = tables.get(COUNTS, &key)?.unwrap_or(0);
            tables.insert(COUNTS, &key, count + 1)?;
            if step.is_multiple_of(3) {
                tables.remove(BYTES, &key)?;
                tables.insert(UNITS, &key, ())?;
            } else {
                tables.insert(BYTES, &key, step.to_le_bytes().as_slice())?;
                tables.remove(UNITS, &key)?;
            }
            let under = tables.prefix(COUNTS, "k00")?;
            assert!(under.iter().all(|(key, _)| key.starts_with("k00")));
            Ok(())
        }
        {
            let txn = direct.begin_write().unwrap();
            for index in 0..2000u32 {
                step(&txn, index).unwrap();
            }
            txn.commit().unwrap();
        }
        for half in [0..1000u32, 1000..2000] {
            let overlay = Overlay::new(&staged).unwrap();
            for index in half {
                step(&overlay, index).unwrap();
            }
            let txn = staged.begin_write().unwrap();
            overlay.flush_into(&txn).unwrap();
            txn.commit().unwrap();
        }
        let comparison = crate::digest::compare(&direct.begin_read().unwrap(), &staged.begin_read().unwrap()).unwrap();
        assert_eq!(comparison.len(), 3, "{comparison:?}");
        assert!(comparison.values().all(|table| table.is_same()), "{comparison:?}");
    }

    /// A split write-out commits the tables picked first before `between` runs (it sees them
    /// and none of the others), and leaves the rows one transaction leaves.
    #[test]
    fn a_split_write_out_commits_the_first_tables_before_the_others() {
        let directory = tempfile::tempdir().unwrap();
        let whole = Database::create(directory.path().join("whole.redb")).unwrap();
        let split = Database::create(directory.path().join("split.redb")).unwrap();
        fn write<T: ViewTables>(tables: &T) -> Result<(), ProjectionError> {
            for step in 0..300u32 {
                let key = format!("k{:03}", (step * 37) % 200);
                tables.insert(BYTES, &key, step.to_be_bytes().as_slice())?;
                tables.insert(COUNTS, &key, u64::from(step))?;
                tables.insert(UNITS, &key, ())?;
            }
            Ok(())
        }
        let overlay = Overlay::new(&whole).unwrap();
        write(&overlay).unwrap();
        let txn = whole.begin_write().unwrap();
        overlay.flush_into(&txn).unwrap();
        txn.commit().unwrap();

        let overlay = Overlay::new(&split).unwrap();
        write(&overlay).unwrap();
        let mut seen = None;
        let rest = overlay
            .flush_split(split.begin_write().unwrap(), &|name| name != "bytes", |first| {
                first.commit()?;
                let read = split.begin_read()?;
                seen = Some((
                    read.open_table(COUNTS)?.len()?,
                    read.open_table(UNITS)?.len()?,
                    read.open_table(BYTES).is_err(),
                ));
                Ok(split.begin_write()?)
            })
            .unwrap();
        rest.commit().unwrap();
        assert_eq!(seen, Some((200, 200, true)), "only the first tables were committed when `between` ran");
        let comparison = crate::digest::compare(&whole.begin_read().unwrap(), &split.begin_read().unwrap()).unwrap();
        assert_eq!(comparison.len(), 3, "{comparison:?}");
        assert!(comparison.values().all(|table| table.is_same()), "{comparison:?}");
    }

    /// A table only ever written keeps its rows appended, unhashed: a key written again keeps its
    /// last value, and a read in between (which hashes them) changes nothing.
    #[test]
    fn appended_rows_keep_the_last_write_of_a_key() {
        let directory = tempfile::tempdir().unwrap();
        let direct = Database::create(directory.path().join("direct.redb")).unwrap();
        let staged = Database::create(directory.path().join("staged.redb")).unwrap();
        fn write<T: ViewTables>(tables: &T, range: std::ops::Range<u32>) -> Result<(), ProjectionError> {
            for step in range {
                let key = format!("k{:03}", (step * 37) % 300);
                tables.insert(BYTES, &key, step.to_be_bytes().as_slice())?;
            }
            Ok(())
        }
        {
            let txn = direct.begin_write().unwrap();
            write(&txn, 0..1000).unwrap();
            assert_eq!(txn.get(BYTES, "k000").unwrap(), Some(900u32.to_be_bytes().to_vec()));
            write(&txn, 1000..1500).unwrap();
            txn.commit().unwrap();
        }
        let overlay = Overlay::new(&staged).unwrap();
        write(&overlay, 0..1000).unwrap();
        assert!(matches!(overlay.state.borrow().tables[0].1.rows, Rows::Appended(_)));
        assert_eq!(overlay.get(BYTES, "k000").unwrap(), Some(900u32.to_be_bytes().to_vec()));
        assert!(matches!(overlay.state.borrow().tables[0].1.rows, Rows::Hashed(_)));
        write(&overlay, 1000..1500).unwrap();
        let txn = staged.begin_write().unwrap();
        overlay.flush_into(&txn).unwrap();
        txn.commit().unwrap();
        // Never read: written out straight from the appended rows.
        let fresh = Database::create(directory.path().join("fresh.redb")).unwrap();
        let appended = Overlay::new(&fresh).unwrap();
        write(&appended, 0..1500).unwrap();
        assert!(matches!(appended.state.borrow().tables[0].1.rows, Rows::Appended(_)));
        let txn = fresh.begin_write().unwrap();
        appended.flush_into(&txn).unwrap();
        txn.commit().unwrap();
        for other in [&staged, &fresh] {
            let comparison =
                crate::digest::compare(&direct.begin_read().unwrap(), &other.begin_read().unwrap()).unwrap();
            assert!(comparison.values().all(|table| table.is_same()), "{comparison:?}");
            assert_eq!(comparison["bytes"], crate::digest::TableComparison::Same { rows: 300 });
        }
    }
}
