//! atcr's own pull counts: a local log of manifest pulls served by `/v2`, per repository per day.
//!
//! This is not the upstream event log: pulls are facts about this server, not the network, so
//! they live in their own redb file (`<data-dir>/pulls.redb`) and are never replayed into views.
//! Recording must not slow a pull: [`PullRecorder::record`] only puts the pull on a bounded
//! channel; one thread drains it, adds up what arrived together and commits it in one durable
//! transaction (one fsync per batch, batches close after [`BATCH_WINDOW`]). A pull arriving
//! while the channel is full is counted as dropped and logged, never waited on.
//!
//! | table | key | value |
//! |---|---|---|
//! | `daily` | did `\0` repo `\0` day (`YYYY-MM-DD`, UTC) | pulls that day |
//! | `by_day` | day `\0` did `\0` repo | pulls that day (the same count, for trending) |
//! | `totals` | did `\0` repo | pulls ever |

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::StorageError;

const DAILY: TableDefinition<&str, u64> = TableDefinition::new("daily");
const BY_DAY: TableDefinition<&str, u64> = TableDefinition::new("by_day");
const TOTALS: TableDefinition<&str, u64> = TableDefinition::new("totals");

/// How long a batch stays open after its first pull.
pub const BATCH_WINDOW: Duration = Duration::from_millis(50);
/// Pulls waiting to be written, at most.
const CHANNEL_CAPACITY: usize = 65_536;

/// A UTC calendar day as `YYYY-MM-DD`, from days since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
pub fn day_string(days_since_epoch: i64) -> String {
    let z = days_since_epoch + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// Days since 1970-01-01 of a `YYYY-MM-DD` day (or the date part of an RFC 3339 time).
pub fn days_from_string(text: &str) -> Option<i64> {
    let date = text.get(..10)?;
    let mut parts = date.split('-');
    let year: i64 = parts.next()?.parse().ok()?;
    let month: i64 = parts.next()?.parse().ok()?;
    let day: i64 = parts.next()?.parse().ok()?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month_shifted = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * month_shifted + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    Some(era * 146_097 + day_of_era - 719_468)
}

/// Today (UTC) as days since the epoch, by the wall clock.
pub fn today() -> i64 {
    let seconds = SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_secs()).unwrap_or(0);
    i64::try_from(seconds / 86_400).unwrap_or(0)
}

fn repo_key(did: &str, repository: &str) -> String {
    format!("{did}\0{repository}")
}

enum Message {
    Pull {
        did: String,
        repository: String,
        day: i64,
    },
    /// Write what is pending, then answer.
    Flush(SyncSender<()>),
    /// Write what is pending and stop.
    Stop,
}

/// The pull log: read side, and the owner of the writer thread.
#[derive(Clone)]
pub struct PullLog {
    database: Arc<Database>,
    sender: SyncSender<Message>,
    dropped: Arc<AtomicU64>,
    writer: Arc<Mutex<Option<JoinHandle<()>>>>,
}

/// What `/v2` holds to record pulls: cheap to clone, never blocks.
#[derive(Clone)]
pub struct PullRecorder {
    sender: SyncSender<Message>,
    dropped: Arc<AtomicU64>,
}

impl PullRecorder {
    /// Records one pull of `did`/`repository` today. Returns at once.
    pub fn record(&self, did: &str, repository: &str) {
        self.record_on(did, repository, today());
    }

    /// Records one pull on a given day (days since the epoch).
    pub fn record_on(&self, did: &str, repository: &str, day: i64) {
        let message = Message::Pull { did: did.to_string(), repository: repository.to_string(), day };
        match self.sender.try_send(message) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if dropped.is_power_of_two() {
                    tracing::warn!(dropped, "pull log behind: pulls not counted");
                }
            }
            Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl PullLog {
    /// Opens (creating) the pull log at `path` and starts its writer thread.
    pub fn open(path: &Path) -> Result<PullLog, StorageError> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let database = Arc::new(Database::builder().create(path)?);
        let txn = database.begin_write()?;
        txn.open_table(DAILY)?;
        txn.open_table(BY_DAY)?;
        txn.open_table(TOTALS)?;
        txn.commit()?;
        let (sender, receiver) = sync_channel(CHANNEL_CAPACITY);
        let writer_database = database.clone();
        let writer = std::thread::Builder::new()
            .name("pull-log".into())
            .spawn(move || write_loop(&writer_database, &receiver))?;
        Ok(PullLog {
            database,
            sender,
            dropped: Arc::new(AtomicU64::new(0)),
            writer: Arc::new(Mutex::new(Some(writer))),
        })
    }

    pub fn recorder(&self) -> PullRecorder {
        PullRecorder { sender: self.sender.clone(), dropped: self.dropped.clone() }
    }

    /// Pulls that could not be recorded (the writer was behind or gone).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Waits until every pull recorded before this call is durable.
    pub fn flush(&self) {
        let (done, wait) = sync_channel(1);
        if self.sender.send(Message::Flush(done)).is_ok() {
            let _ = wait.recv();
        }
    }

    /// Writes what is pending and stops the writer thread (shutdown); later pulls are counted
    /// as dropped.
    pub fn close(&self) {
        let handle = self.writer.lock().ok().and_then(|mut writer| writer.take());
        if let Some(handle) = handle
            && self.sender.send(Message::Stop).is_ok()
        {
            let _ = handle.join();
        }
    }

    /// Pulls ever of a repository.
    pub fn total(&self, did: &str, repository: &str) -> Result<u64, StorageError> {
        let read = self.database.begin_read()?;
        let table = read.open_table(TOTALS)?;
        Ok(table.get(repo_key(did, repository).as_str())?.map(|count| count.value()).unwrap_or(0))
    }

    /// Pulls per day of a repository from `first_day` to `last_day` (days since the epoch),
    /// every day present (0 when none).
    pub fn daily(
        &self,
        did: &str,
        repository: &str,
        first_day: i64,
        last_day: i64,
    ) -> Result<Vec<(i64, u64)>, StorageError> {
        let read = self.database.begin_read()?;
        let table = read.open_table(DAILY)?;
        let prefix = format!("{}\0", repo_key(did, repository));
        let start = format!("{prefix}{}", day_string(first_day));
        let mut counts = BTreeMap::new();
        for entry in table.range(start.as_str()..)? {
            let (key, value) = entry?;
            let Some(day) = key.value().strip_prefix(prefix.as_str()).and_then(days_from_string) else { break };
            if day > last_day {
                break;
            }
            counts.insert(day, value.value());
        }
        Ok((first_day..=last_day).map(|day| (day, counts.get(&day).copied().unwrap_or(0))).collect())
    }

    /// Every repository's pulls in `first_day..=last_day`, as (did, repository) → pulls.
    pub fn window(&self, first_day: i64, last_day: i64) -> Result<BTreeMap<(String, String), u64>, StorageError> {
        let read = self.database.begin_read()?;
        let table = read.open_table(BY_DAY)?;
        let start = day_string(first_day);
        let mut out: BTreeMap<(String, String), u64> = BTreeMap::new();
        for entry in table.range(start.as_str()..)? {
            let (key, value) = entry?;
            let mut parts = key.value().splitn(3, '\0');
            let (Some(day), Some(did), Some(repository)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            if days_from_string(day).is_none_or(|day| day > last_day) {
                break;
            }
            *out.entry((did.to_string(), repository.to_string())).or_default() += value.value();
        }
        Ok(out)
    }

    /// The most pulled repositories ever: (did, repository, pulls), most first.
    pub fn most_pulled(&self, limit: usize) -> Result<Vec<(String, String, u64)>, StorageError> {
        let read = self.database.begin_read()?;
        let table = read.open_table(TOTALS)?;
        let mut all = Vec::new();
        for entry in table.iter()? {
            let (key, value) = entry?;
            if let Some((did, repository)) = key.value().split_once('\0') {
                all.push((did.to_string(), repository.to_string(), value.value()));
            }
        }
        all.sort_by(|left, right| right.2.cmp(&left.2).then_with(|| (&left.0, &left.1).cmp(&(&right.0, &right.1))));
        all.truncate(limit);
        Ok(all)
    }
}

fn write_loop(database: &Database, receiver: &Receiver<Message>) {
    loop {
        let first = match receiver.recv() {
            Ok(message) => message,
            Err(_) => return,
        };
        let mut pending: BTreeMap<(String, String, i64), u64> = BTreeMap::new();
        let mut waiting = Vec::new();
        let mut stop = take(first, &mut pending, &mut waiting);
        let closes = Instant::now() + BATCH_WINDOW;
        let mut disconnected = false;
        while waiting.is_empty() && !stop {
            match receiver.recv_timeout(closes.saturating_duration_since(Instant::now())) {
                Ok(message) => stop |= take(message, &mut pending, &mut waiting),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => {
                    disconnected = true;
                    break;
                }
            }
        }
        // Whatever else already arrived joins this batch.
        while let Ok(message) = receiver.try_recv() {
            stop |= take(message, &mut pending, &mut waiting);
        }
        if !pending.is_empty()
            && let Err(error) = write_batch(database, &pending)
        {
            tracing::error!(%error, pulls = pending.len(), "pull log write failed: pulls not counted");
        }
        for done in waiting {
            let _ = done.send(());
        }
        if disconnected || stop {
            return;
        }
    }
}

/// Adds a message to the batch; true when it asks the writer to stop.
fn take(
    message: Message,
    pending: &mut BTreeMap<(String, String, i64), u64>,
    waiting: &mut Vec<SyncSender<()>>,
) -> bool {
    match message {
        Message::Pull { did, repository, day } => *pending.entry((did, repository, day)).or_insert(0) += 1,
        Message::Flush(done) => waiting.push(done),
        Message::Stop => return true,
    }
    false
}

fn write_batch(database: &Database, pending: &BTreeMap<(String, String, i64), u64>) -> Result<(), StorageError> {
    let txn = database.begin_write()?;
    {
        let mut daily = txn.open_table(DAILY)?;
        let mut by_day = txn.open_table(BY_DAY)?;
        let mut totals = txn.open_table(TOTALS)?;
        for ((did, repository, day), pulls) in pending {
            let day = day_string(*day);
            let repo = repo_key(did, repository);
            let daily_key = format!("{repo}\0{day}");
            let before = daily.get(daily_key.as_str())?.map(|count| count.value()).unwrap_or(0);
            daily.insert(daily_key.as_str(), before + pulls)?;
            by_day.insert(format!("{day}\0{repo}").as_str(), before + pulls)?;
            let total = totals.get(repo.as_str())?.map(|count| count.value()).unwrap_or(0);
            totals.insert(repo.as_str(), total + pulls)?;
        }
    }
    txn.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_convert_both_ways() {
        assert_eq!(day_string(0), "1970-01-01");
        assert_eq!(day_string(20_454), "2026-01-01");
        assert_eq!(day_string(-1), "1969-12-31");
        for day in [-800, 0, 59, 60, 11_016, 20_454, 20_513, 40_000] {
            assert_eq!(days_from_string(&day_string(day)), Some(day), "{day}");
        }
        assert_eq!(days_from_string("2024-02-29T12:00:00Z"), days_from_string("2024-02-29"));
        assert_eq!(days_from_string("2024-13-01"), None);
        assert_eq!(days_from_string("junk"), None);
    }

    #[test]
    fn pulls_are_counted_per_day_and_survive_a_reopen() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("pulls.redb");
        {
            let log = PullLog::open(&path).unwrap();
            let recorder = log.recorder();
            for _ in 0..5 {
                recorder.record_on("did:plc:a", "web/app", 100);
            }
            recorder.record_on("did:plc:a", "web/app", 102);
            for _ in 0..3 {
                recorder.record_on("did:plc:b", "tool", 101);
            }
            log.flush();
            assert_eq!(log.total("did:plc:a", "web/app").unwrap(), 6);
            log.close();
        }
        let log = PullLog::open(&path).unwrap();
        assert_eq!(log.total("did:plc:a", "web/app").unwrap(), 6, "counts are durable");
        assert_eq!(log.daily("did:plc:a", "web/app", 99, 102).unwrap(), vec![(99, 0), (100, 5), (101, 0), (102, 1)]);
        let window = log.window(101, 102).unwrap();
        assert_eq!(window.get(&("did:plc:b".into(), "tool".into())), Some(&3));
        assert_eq!(window.get(&("did:plc:a".into(), "web/app".into())), Some(&1));
        let top = log.most_pulled(1).unwrap();
        assert_eq!(top, vec![("did:plc:a".to_string(), "web/app".to_string(), 6)]);
        assert_eq!(log.dropped(), 0);
    }
}
