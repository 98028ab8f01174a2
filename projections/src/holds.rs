//! Holds: the `io.atcr.hold.*` records a hold writes into its own repository (captain, crew,
//! layers, stats), and which repositories' manifests name each hold. Applied by
//! [`crate::views::apply_tracking`] through [`apply`] before the registry views see the event
//! (a manifest delete needs the row the views are about to remove).
//!
//! | table | key | value |
//! |---|---|---|
//! | `hold_captains` | hold did | [`CaptainRow`] |
//! | `hold_crew` | hold did `\0` rkey | [`CrewRow`] |
//! | `hold_layers` | hold did `\0` rkey | [`HoldLayerRow`] |
//! | `hold_layer_totals` | hold did | (layers, bytes) |
//! | `hold_stats` | hold did `\0` rkey | [`StatsRow`] |
//! | `repo_hold_stats` | owner did `\0` repo `\0` hold did `\0` rkey | () |
//! | `repo_stats_daily` | owner did `\0` repo `\0` day `\0` hold did `\0` rkey | (pulls, pushes) so far |
//! | `hold_stats_daily` | hold did `\0` day `\0` rkey | (pulls, pushes) so far |
//! | `hold_manifests` | hold did `\0` owner did `\0` repo `\0` digest | () |
//! | `hold_manifest_counts` | hold did | manifests naming the hold |
//!
//! The last two are fan-out indexes: [`crate::fanout::FanOut`] changes them.
//!
//! Stats records hold cumulative counters; each version is kept per day (the record's
//! `updatedAt`, else the commit's time), so a chart can show the counters over time. Their
//! history is kept when the record is deleted (the log keeps it too); the current counts go.

use std::collections::{BTreeMap, BTreeSet};

use redb::{ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use atcr_storage::records::{
    self, HoldCaptainRecord, HoldCrewRecord, HoldLayerRecord, HoldStatsRecord, ManifestRecord,
};
use atcr_storage::{Event, EventBody};

use crate::fanout::FanOut;
use crate::tables::ViewTables;
use crate::views::{MANIFEST_RKEYS, MANIFESTS, ManifestRow, decode, encode, key};
use crate::{ProjectionError, Views};

pub(crate) const HOLD_CAPTAINS: TableDefinition<&str, &[u8]> = TableDefinition::new("hold_captains");
pub(crate) const HOLD_CREW: TableDefinition<&str, &[u8]> = TableDefinition::new("hold_crew");
pub(crate) const HOLD_LAYERS: TableDefinition<&str, &[u8]> = TableDefinition::new("hold_layers");
pub(crate) const HOLD_LAYER_TOTALS: TableDefinition<&str, &[u8]> = TableDefinition::new("hold_layer_totals");
pub(crate) const HOLD_STATS: TableDefinition<&str, &[u8]> = TableDefinition::new("hold_stats");
pub(crate) const REPO_HOLD_STATS: TableDefinition<&str, ()> = TableDefinition::new("repo_hold_stats");
pub(crate) const REPO_STATS_DAILY: TableDefinition<&str, &[u8]> = TableDefinition::new("repo_stats_daily");
pub(crate) const HOLD_STATS_DAILY: TableDefinition<&str, &[u8]> = TableDefinition::new("hold_stats_daily");
pub(crate) const HOLD_MANIFESTS: TableDefinition<&str, ()> = TableDefinition::new("hold_manifests");
pub(crate) const HOLD_MANIFEST_COUNTS: TableDefinition<&str, u64> = TableDefinition::new("hold_manifest_counts");

/// `io.atcr.hold.captain`: who runs the hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptainRow {
    pub owner: String,
    pub public: bool,
    pub region: Option<String>,
    pub successor: Option<String>,
    pub deployed_at: Option<String>,
    pub allow_all_crew: bool,
}

/// One `io.atcr.hold.crew` member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrewRow {
    pub member: String,
    pub role: Option<String>,
    pub permissions: Vec<String>,
    pub tier: Option<String>,
    pub added_at: Option<String>,
}

/// One `io.atcr.hold.layer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldLayerRow {
    pub digest: String,
    pub size: u64,
    pub media_type: Option<String>,
    pub manifest: Option<String>,
    pub user_did: Option<String>,
}

/// One `io.atcr.hold.stats`: a hold's counters for one repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsRow {
    pub owner_did: String,
    pub repository: String,
    pub pull_count: u64,
    pub push_count: u64,
    pub last_pull: Option<String>,
    pub last_push: Option<String>,
    pub updated_at: Option<String>,
}

pub(crate) fn open_all(txn: &WriteTransaction) -> Result<(), ProjectionError> {
    txn.open_table(HOLD_CAPTAINS)?;
    txn.open_table(HOLD_CREW)?;
    txn.open_table(HOLD_LAYERS)?;
    txn.open_table(HOLD_LAYER_TOTALS)?;
    txn.open_table(HOLD_STATS)?;
    txn.open_table(REPO_HOLD_STATS)?;
    txn.open_table(REPO_STATS_DAILY)?;
    txn.open_table(HOLD_STATS_DAILY)?;
    txn.open_table(HOLD_MANIFESTS)?;
    txn.open_table(HOLD_MANIFEST_COUNTS)?;
    Ok(())
}

fn skip(offset: u64, reason: &str) -> Result<(), ProjectionError> {
    tracing::warn!(offset, %reason, "event skipped by the hold views");
    Ok(())
}

/// A `YYYY-MM-DD` day from an RFC 3339 time, when it starts with a valid date.
fn day_of(time: &str) -> Option<&str> {
    let day = time.get(..10)?;
    atcr_storage::pulls::days_from_string(day).map(|_| day)
}

/// Applies what an event means for the hold views. Idempotent, like every view. `manifest`: the
/// event's manifest record, decoded, when it is one and it decodes.
pub(crate) fn apply(
    txn: &impl ViewTables,
    offset: u64,
    event: &Event,
    manifest: Option<&ManifestRecord>,
) -> Result<(), ProjectionError> {
    let hold = event.did.as_str();
    match &event.body {
        EventBody::RecordPut { collection, rkey, record, .. } => match collection.as_str() {
            records::MANIFEST => index_manifest(txn, hold, record, manifest),
            records::HOLD_CAPTAIN => match HoldCaptainRecord::decode(record) {
                Ok(captain) if rkey == "self" => {
                    let row = CaptainRow {
                        owner: captain.owner,
                        public: captain.public,
                        region: captain.region,
                        successor: captain.successor,
                        deployed_at: captain.deployed_at,
                        allow_all_crew: captain.allow_all_crew,
                    };
                    txn.insert_row(HOLD_CAPTAINS, hold, &row)
                }
                Ok(_) => skip(offset, &format!("captain record under key {rkey:?}, not \"self\"")),
                Err(error) => skip(offset, &error.to_string()),
            },
            records::HOLD_CREW => match HoldCrewRecord::decode(record) {
                Ok(crew) => {
                    let row = CrewRow {
                        member: crew.member,
                        role: crew.role,
                        permissions: crew.permissions,
                        tier: crew.tier,
                        added_at: crew.added_at,
                    };
                    txn.insert_row(HOLD_CREW, key(&[hold, rkey]).as_str(), &row)
                }
                Err(error) => skip(offset, &error.to_string()),
            },
            records::HOLD_LAYER => match HoldLayerRecord::decode(record) {
                Ok(layer) => {
                    remove_layer(txn, hold, rkey)?;
                    let row = HoldLayerRow {
                        digest: layer.digest,
                        size: layer.size,
                        media_type: layer.media_type,
                        manifest: layer.manifest,
                        user_did: layer.user_did,
                    };
                    change_layer_totals(txn, hold, 1, i128::from(row.size))?;
                    txn.insert_row(HOLD_LAYERS, key(&[hold, rkey]).as_str(), &row)
                }
                Err(error) => skip(offset, &error.to_string()),
            },
            records::HOLD_STATS => match HoldStatsRecord::decode(record) {
                Ok(stats) => put_stats(txn, event, hold, rkey, stats),
                Err(error) => skip(offset, &error.to_string()),
            },
            _ => Ok(()),
        },
        EventBody::RecordDeleted { collection, rkey, .. } => match collection.as_str() {
            records::MANIFEST => unindex_manifest(txn, hold, rkey),
            records::HOLD_CAPTAIN => txn.remove(HOLD_CAPTAINS, hold).map(drop),
            records::HOLD_CREW => txn.remove(HOLD_CREW, key(&[hold, rkey]).as_str()).map(drop),
            records::HOLD_LAYER => remove_layer(txn, hold, rkey),
            records::HOLD_STATS => {
                if let Some(bytes) = txn.remove(HOLD_STATS, key(&[hold, rkey]).as_str())? {
                    let row: StatsRow = decode("hold_stats", &bytes)?;
                    txn.remove(REPO_HOLD_STATS, key(&[&row.owner_did, &row.repository, hold, rkey]).as_str())?;
                }
                Ok(())
            }
            _ => Ok(()),
        },
        _ => Ok(()),
    }
}

fn change_layer_totals(txn: &impl ViewTables, hold: &str, layers: i64, bytes: i128) -> Result<(), ProjectionError> {
    let (count, total): (u64, u64) = match txn.get(HOLD_LAYER_TOTALS, hold)? {
        Some(row) => decode("hold_layer_totals", &row)?,
        None => (0, 0),
    };
    let count = count.saturating_add_signed(layers);
    let total = u64::try_from((i128::from(total) + bytes).max(0)).unwrap_or(u64::MAX);
    if count == 0 {
        txn.remove(HOLD_LAYER_TOTALS, hold)?;
    } else {
        txn.insert_row(HOLD_LAYER_TOTALS, hold, &(count, total))?;
    }
    Ok(())
}

fn remove_layer(txn: &impl ViewTables, hold: &str, rkey: &str) -> Result<(), ProjectionError> {
    if let Some(bytes) = txn.remove(HOLD_LAYERS, key(&[hold, rkey]).as_str())? {
        let row: HoldLayerRow = decode("hold_layers", &bytes)?;
        change_layer_totals(txn, hold, -1, -i128::from(row.size))?;
    }
    Ok(())
}

fn put_stats(
    txn: &impl ViewTables,
    event: &Event,
    hold: &str,
    rkey: &str,
    stats: HoldStatsRecord,
) -> Result<(), ProjectionError> {
    let stats_key = key(&[hold, rkey]);
    // The same record key may have counted another repository before.
    if let Some(bytes) = txn.get(HOLD_STATS, stats_key.as_str())? {
        let previous: StatsRow = decode("hold_stats", &bytes)?;
        txn.remove(REPO_HOLD_STATS, key(&[&previous.owner_did, &previous.repository, hold, rkey]).as_str())?;
    }
    let row = StatsRow {
        owner_did: stats.owner_did,
        repository: stats.repository,
        pull_count: stats.pull_count,
        push_count: stats.push_count,
        last_pull: stats.last_pull,
        last_push: stats.last_push,
        updated_at: stats.updated_at,
    };
    txn.insert_row(HOLD_STATS, stats_key.as_str(), &row)?;
    txn.insert(REPO_HOLD_STATS, key(&[&row.owner_did, &row.repository, hold, rkey]).as_str(), ())?;
    let day = row.updated_at.as_deref().and_then(day_of).or_else(|| event.upstream_time.as_deref().and_then(day_of));
    if let Some(day) = day {
        let counts = encode(&(row.pull_count, row.push_count));
        txn.insert(
            REPO_STATS_DAILY,
            key(&[&row.owner_did, &row.repository, day, hold, rkey]).as_str(),
            counts.as_slice(),
        )?;
        txn.insert(HOLD_STATS_DAILY, key(&[hold, day, rkey]).as_str(), counts.as_slice())?;
    }
    Ok(())
}

/// `manifest`: the record already decoded, when it decodes (the views decode every manifest; the
/// few bytes the index needs are read from `record` only when it does not).
fn index_manifest(
    txn: &impl ViewTables,
    did: &str,
    record: &[u8],
    manifest: Option<&ManifestRecord>,
) -> Result<(), ProjectionError> {
    let found = match manifest {
        // What `records::manifest_hold` reads (decoding already checked the digest and the
        // media type).
        Some(manifest) => Some((
            manifest.digest.clone(),
            records::named_hold(Some(manifest.repository.clone()), manifest.hold_did.clone()),
        )),
        None => records::manifest_hold(record),
    };
    let Some((digest, named)) = found else { return Ok(()) };
    // An update of the same digest may name another hold, or none: the old entry goes first.
    if let Some(bytes) = txn.get(MANIFESTS, key(&[did, &digest]).as_str())? {
        let previous: ManifestRow = decode("manifests", &bytes)?;
        unindex(txn, did, &digest, &previous)?;
    }
    let Some((repository, hold)) = named else { return Ok(()) };
    txn.fan_out(FanOut::Hold { hold, did: did.to_string(), repository, digest, added: true })
}

/// The manifest `row` no longer names its hold (if it named one).
fn unindex(txn: &impl ViewTables, did: &str, digest: &str, row: &ManifestRow) -> Result<(), ProjectionError> {
    let Some(hold) = &row.hold_did else { return Ok(()) };
    txn.fan_out(FanOut::Hold {
        hold: hold.clone(),
        did: did.to_string(),
        repository: row.repository.clone(),
        digest: digest.to_string(),
        added: false,
    })
}

fn unindex_manifest(txn: &impl ViewTables, did: &str, rkey: &str) -> Result<(), ProjectionError> {
    let Some(digest) = txn.get(MANIFEST_RKEYS, key(&[did, rkey]).as_str())? else { return Ok(()) };
    let Some(bytes) = txn.get(MANIFESTS, key(&[did, &digest]).as_str())? else { return Ok(()) };
    let row: ManifestRow = decode("manifests", &bytes)?;
    unindex(txn, did, &digest, &row)
}

/// What the views know about one hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HoldFacts {
    pub captain: Option<CaptainRow>,
    /// Crew members in record-key order.
    pub crew: Vec<CrewRow>,
    pub layers: u64,
    pub layer_bytes: u64,
    /// (owner did, repository) → manifests of it naming this hold.
    pub repositories: BTreeMap<(String, String), u64>,
    /// The hold's counters per repository.
    pub stats: Vec<StatsRow>,
}

/// Cumulative (pulls, pushes) per day, summed over every counter that applies.
pub type CounterSeries = Vec<(String, u64, u64)>;

/// Sums cumulative counters kept per day and per counter: each counter keeps its last value
/// on the days it did not change.
fn cumulative(rows: Vec<(String, String, (u64, u64))>) -> CounterSeries {
    // rows: (day, counter id, (pulls, pushes)), in day order.
    let mut current: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut out: CounterSeries = Vec::new();
    for (day, counter, counts) in rows {
        current.insert(counter, counts);
        let (pulls, pushes) = current
            .values()
            .fold((0u64, 0u64), |(pulls, pushes), (p, q)| (pulls.saturating_add(*p), pushes.saturating_add(*q)));
        match out.last_mut() {
            Some(last) if last.0 == day => *last = (day, pulls, pushes),
            _ => out.push((day, pulls, pushes)),
        }
    }
    out
}

/// Every row of a table under a key prefix; a table missing from an older build reads empty.
fn scan<V: redb::Value + 'static, T>(
    read: &ReadTransaction,
    table: TableDefinition<&'static str, V>,
    prefix: &str,
    mut each: impl FnMut(&str, V::SelfType<'_>) -> Result<Option<T>, ProjectionError>,
) -> Result<Vec<T>, ProjectionError> {
    let table = match read.open_table(table) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(error) => return Err(error.into()),
    };
    let mut out = Vec::new();
    for entry in table.range(prefix..)? {
        let (key, value) = entry?;
        let Some(rest) = key.value().strip_prefix(prefix) else { break };
        if let Some(item) = each(rest, value.value())? {
            out.push(item);
        }
    }
    Ok(out)
}

/// One row's bytes; a table missing from an older build reads empty.
fn get(
    read: &ReadTransaction,
    table: TableDefinition<&'static str, &'static [u8]>,
    row_key: &str,
) -> Result<Option<Vec<u8>>, ProjectionError> {
    match read.open_table(table) {
        Ok(table) => Ok(table.get(row_key)?.map(|bytes| bytes.value().to_vec())),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(error) => Err(error.into()),
    }
}

impl Views {
    /// Every hold the views know: those with a captain record and those manifests name.
    pub fn hold_dids(&self) -> Result<Vec<(String, u64)>, ProjectionError> {
        let read = self.database().begin_read()?;
        let mut holds: BTreeMap<String, u64> = BTreeMap::new();
        for did in scan(&read, HOLD_CAPTAINS, "", |did, _| Ok(Some(did.to_string())))? {
            holds.insert(did, 0);
        }
        for (did, count) in scan(&read, HOLD_MANIFEST_COUNTS, "", |did, count| Ok(Some((did.to_string(), count))))? {
            holds.insert(did, count);
        }
        Ok(holds.into_iter().collect())
    }

    /// Whether the views know anything of a hold.
    pub fn hold_facts(&self, hold: &str) -> Result<Option<HoldFacts>, ProjectionError> {
        let read = self.database().begin_read()?;
        let prefix = format!("{hold}\0");
        let captain = match get(&read, HOLD_CAPTAINS, hold)? {
            Some(bytes) => Some(decode::<CaptainRow>("hold_captains", &bytes)?),
            None => None,
        };
        let crew = scan(&read, HOLD_CREW, &prefix, |_, bytes| Ok(Some(decode::<CrewRow>("hold_crew", bytes)?)))?;
        let (layers, layer_bytes) = match get(&read, HOLD_LAYER_TOTALS, hold)? {
            Some(bytes) => decode::<(u64, u64)>("hold_layer_totals", &bytes)?,
            None => (0, 0),
        };
        let mut repositories: BTreeMap<(String, String), u64> = BTreeMap::new();
        for (owner, repository) in scan(&read, HOLD_MANIFESTS, &prefix, |rest, ()| {
            let mut parts = rest.splitn(3, '\0');
            Ok(match (parts.next(), parts.next()) {
                (Some(owner), Some(repository)) => Some((owner.to_string(), repository.to_string())),
                _ => None,
            })
        })? {
            *repositories.entry((owner, repository)).or_default() += 1;
        }
        let stats = scan(&read, HOLD_STATS, &prefix, |_, bytes| Ok(Some(decode::<StatsRow>("hold_stats", bytes)?)))?;
        if captain.is_none() && crew.is_empty() && layers == 0 && repositories.is_empty() && stats.is_empty() {
            return Ok(None);
        }
        Ok(Some(HoldFacts { captain, crew, layers, layer_bytes, repositories, stats }))
    }

    /// The counters holds keep for a repository: (hold did, row).
    pub fn repository_hold_stats(
        &self,
        did: &str,
        repository: &str,
    ) -> Result<Vec<(String, StatsRow)>, ProjectionError> {
        let read = self.database().begin_read()?;
        let prefix = format!("{}\0", key(&[did, repository]));
        let keys = scan(&read, REPO_HOLD_STATS, &prefix, |rest, ()| {
            Ok(rest.split_once('\0').map(|(hold, rkey)| (hold.to_string(), rkey.to_string())))
        })?;
        let table = match read.open_table(HOLD_STATS) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(error) => return Err(error.into()),
        };
        let mut out = Vec::new();
        for (hold, rkey) in keys {
            if let Some(bytes) = table.get(key(&[&hold, &rkey]).as_str())? {
                out.push((hold, decode("hold_stats", bytes.value())?));
            }
        }
        Ok(out)
    }

    /// A repository's hold counters over time: cumulative (pulls, pushes) on each day a
    /// counter changed, summed over its holds.
    pub fn repository_stats_series(&self, did: &str, repository: &str) -> Result<CounterSeries, ProjectionError> {
        let read = self.database().begin_read()?;
        let prefix = format!("{}\0", key(&[did, repository]));
        let rows = scan(&read, REPO_STATS_DAILY, &prefix, |rest, bytes| {
            Ok(rest.split_once('\0').map(|(day, counter)| (day.to_string(), counter.to_string())).map(
                |(day, counter)| decode::<(u64, u64)>("repo_stats_daily", bytes).map(|counts| (day, counter, counts)),
            ))
        })?
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
        Ok(cumulative(rows))
    }

    /// A hold's counters over time, summed over every repository it counts.
    pub fn hold_stats_series(&self, hold: &str) -> Result<CounterSeries, ProjectionError> {
        let read = self.database().begin_read()?;
        let rows = scan(&read, HOLD_STATS_DAILY, &format!("{hold}\0"), |rest, bytes| {
            Ok(rest.split_once('\0').map(|(day, counter)| (day.to_string(), counter.to_string())).map(
                |(day, counter)| decode::<(u64, u64)>("hold_stats_daily", bytes).map(|counts| (day, counter, counts)),
            ))
        })?
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
        Ok(cumulative(rows))
    }

    /// Holds whose captain names `owner`.
    pub fn holds_owned_by(&self, owner: &str) -> Result<BTreeSet<String>, ProjectionError> {
        let read = self.database().begin_read()?;
        Ok(scan(&read, HOLD_CAPTAINS, "", |hold, bytes| {
            Ok((decode::<CaptainRow>("hold_captains", bytes)?.owner == owner).then(|| hold.to_string()))
        })?
        .into_iter()
        .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_add_up_across_holds_and_keep_their_last_value() {
        let rows = vec![
            ("2026-01-01".to_string(), "a".to_string(), (10, 1)),
            ("2026-01-01".to_string(), "b".to_string(), (5, 0)),
            ("2026-01-03".to_string(), "a".to_string(), (12, 2)),
            ("2026-01-04".to_string(), "b".to_string(), (9, 1)),
        ];
        assert_eq!(
            cumulative(rows),
            vec![
                ("2026-01-01".to_string(), 15, 1),
                ("2026-01-03".to_string(), 17, 2),
                ("2026-01-04".to_string(), 21, 3),
            ]
        );
        assert_eq!(day_of("2026-02-03T04:05:06Z"), Some("2026-02-03"));
        assert_eq!(day_of("yesterday"), None);
    }
}
