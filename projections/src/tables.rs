//! How projections read and write view tables: through [`ViewTables`].
//!
//! `views::apply_tracking` (and every module it calls) never opens redb tables itself; it calls
//! `get` / `contains` / `insert` / `remove` / `prefix` on a [`ViewTables`], so the same code
//! runs against two stores:
//!
//! - a redb [`WriteTransaction`] while following the log (each batch one transaction, readers
//!   see every commit);
//! - [`crate::overlay::Overlay`] during a rebuild or a large backlog: rows live in sorted
//!   in-memory maps over the last committed state, and are written into redb in key order, in
//!   large transactions, when memory grows and at the end. Nothing reads a build being rebuilt,
//!   so intermediate states need not be in redb, and the final rows are byte for byte the ones
//!   the live path writes (the per-table digests of `atcr replay --verify` compare them).
//!
//! Tables are declared as usual (`TableDefinition<&str, V>`) with string keys (their byte order
//! is redb's order for `&str`, which the in-memory maps rely on) and a [`ViewValue`] value
//! type: `&[u8]`, `&str`, `u64`, `u32` or `()`.

use redb::{ReadableTable, TableDefinition, WriteTransaction};

use crate::ProjectionError;
use crate::digest::ColumnType;
use crate::fanout::FanOut;

/// A view table: string keys, a [`ViewValue`] value.
pub type ViewTable<V> = TableDefinition<'static, &'static str, V>;

/// A value type view tables hold, and its owned form when read back.
pub trait ViewValue: redb::Value + 'static {
    type Owned;
    /// How the snapshot and overlay code open a table of this type.
    const COLUMN: ColumnType;
    fn to_owned_value(value: Self::SelfType<'_>) -> Self::Owned;
}

impl ViewValue for &'static [u8] {
    type Owned = Vec<u8>;
    const COLUMN: ColumnType = ColumnType::Bytes;
    fn to_owned_value(value: &[u8]) -> Vec<u8> {
        value.to_vec()
    }
}

impl ViewValue for &'static str {
    type Owned = String;
    const COLUMN: ColumnType = ColumnType::Str;
    fn to_owned_value(value: &str) -> String {
        value.to_string()
    }
}

impl ViewValue for u64 {
    type Owned = u64;
    const COLUMN: ColumnType = ColumnType::U64;
    fn to_owned_value(value: u64) -> u64 {
        value
    }
}

impl ViewValue for u32 {
    type Owned = u32;
    const COLUMN: ColumnType = ColumnType::U32;
    fn to_owned_value(value: u32) -> u32 {
        value
    }
}

impl ViewValue for () {
    type Owned = ();
    const COLUMN: ColumnType = ColumnType::Unit;
    fn to_owned_value(_: ()) {}
}

/// Point reads and writes of view tables, plus prefix scans. Implemented by a redb
/// [`WriteTransaction`] and by the rebuild [`Overlay`](crate::overlay::Overlay).
pub trait ViewTables {
    fn get<V: ViewValue>(&self, table: ViewTable<V>, key: &str) -> Result<Option<V::Owned>, ProjectionError>;

    fn contains<V: ViewValue>(&self, table: ViewTable<V>, key: &str) -> Result<bool, ProjectionError>;

    fn insert<'v, V: ViewValue>(
        &self,
        table: ViewTable<V>,
        key: &str,
        value: V::SelfType<'v>,
    ) -> Result<(), ProjectionError>;

    /// Writes `row` encoded (`views::encode`'s format) under `key`.
    fn insert_row<T: serde::Serialize>(
        &self,
        table: ViewTable<&'static [u8]>,
        key: &str,
        row: &T,
    ) -> Result<(), ProjectionError>
    where
        Self: Sized,
    {
        crate::views::with_encoded(row, |bytes| self.insert(table, key, bytes))
    }

    /// Removes a row, returning what it held.
    fn remove<V: ViewValue>(&self, table: ViewTable<V>, key: &str) -> Result<Option<V::Owned>, ProjectionError>;

    /// Every row whose key starts with `prefix`, in key order.
    fn prefix<V: ViewValue>(
        &self,
        table: ViewTable<V>,
        prefix: &str,
    ) -> Result<Vec<(String, V::Owned)>, ProjectionError>;

    /// Whether the ranking tables (`repos_by_push`, `repos_by_first`, `repos_by_stars`) are
    /// left to [`crate::views::derive_rankings`] instead of being kept up to date by each change:
    /// a fresh rebuild's overlay derives them once from the final rows.
    fn derives_rankings(&self) -> bool {
        false
    }

    /// Applies a change of the manifest fan-out indexes (`fanout`): at once, unless the
    /// implementation hands it on (a rebuild overlay can, see [`Overlay::deferring_fan_out`]).
    ///
    /// [`Overlay::deferring_fan_out`]: crate::overlay::Overlay::deferring_fan_out
    fn fan_out(&self, change: FanOut) -> Result<(), ProjectionError>
    where
        Self: Sized,
    {
        change.apply(self)
    }
}

impl ViewTables for WriteTransaction {
    fn get<V: ViewValue>(&self, table: ViewTable<V>, key: &str) -> Result<Option<V::Owned>, ProjectionError> {
        let table = self.open_table(table)?;
        Ok(table.get(key)?.map(|value| V::to_owned_value(value.value())))
    }

    fn contains<V: ViewValue>(&self, table: ViewTable<V>, key: &str) -> Result<bool, ProjectionError> {
        Ok(self.open_table(table)?.get(key)?.is_some())
    }

    fn insert<'v, V: ViewValue>(
        &self,
        table: ViewTable<V>,
        key: &str,
        value: V::SelfType<'v>,
    ) -> Result<(), ProjectionError> {
        self.open_table(table)?.insert(key, value)?;
        Ok(())
    }

    fn remove<V: ViewValue>(&self, table: ViewTable<V>, key: &str) -> Result<Option<V::Owned>, ProjectionError> {
        let mut table = self.open_table(table)?;
        let removed = table.remove(key)?.map(|value| V::to_owned_value(value.value()));
        Ok(removed)
    }

    fn prefix<V: ViewValue>(
        &self,
        table: ViewTable<V>,
        prefix: &str,
    ) -> Result<Vec<(String, V::Owned)>, ProjectionError> {
        let table = self.open_table(table)?;
        let mut out = Vec::new();
        for entry in table.range(prefix..)? {
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
