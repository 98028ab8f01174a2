//! The projection runner: tails the log and applies batches of events to the views.
//!
//! Each batch is one views transaction holding the view writes and the new checkpoint
//! (invariant 3). Per DID, a record event whose commit rev is older than the newest rev
//! already applied for that DID is skipped (invariant 4): a late or replayed commit never
//! rolls a tag back.

use std::sync::Arc;

use redb::{Durability, ReadableTable};
use tokio_util::sync::CancellationToken;

use atcr_storage::{EventLog, Source, StoredEvent};

use crate::{CHECKPOINTS, DID_REVS, ProjectionError, REGISTRY, Views, views};

/// Events applied per transaction at most.
const BATCH: usize = 2048;

pub struct ProjectionRunner {
    log: Arc<EventLog>,
    views: Arc<Views>,
}

impl ProjectionRunner {
    pub fn new(log: Arc<EventLog>, views: Arc<Views>) -> Self {
        ProjectionRunner { log, views }
    }

    /// Applies everything the log holds now; returns how many events were applied.
    pub fn catch_up(&self) -> Result<u64, ProjectionError> {
        let mut applied = 0;
        loop {
            let from = self.views.checkpoint()?;
            let batch = self.log.read_from(from, BATCH)?;
            if batch.is_empty() {
                return Ok(applied);
            }
            applied += batch.len() as u64;
            self.apply_batch(&batch)?;
        }
    }

    fn apply_batch(&self, batch: &[StoredEvent]) -> Result<(), ProjectionError> {
        let Some(last) = batch.last() else { return Ok(()) };
        let mut txn = self.views.database().begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        for stored in batch {
            if is_stale(&txn, stored)? {
                tracing::debug!(offset = stored.offset, did = %stored.event.did, "older commit rev skipped");
                continue;
            }
            views::apply(&txn, stored.offset, &stored.event)?;
        }
        txn.open_table(CHECKPOINTS)?.insert(REGISTRY, last.offset + 1)?;
        txn.commit()?;
        self.views.bump_generation();
        Ok(())
    }

    /// Runs until the signal turns true, waking on every append.
    pub async fn run(self, stop: CancellationToken) -> Result<(), ProjectionError> {
        let mut head = self.log.subscribe();
        loop {
            let runner = ProjectionRunner { log: self.log.clone(), views: self.views.clone() };
            tokio::task::spawn_blocking(move || runner.catch_up())
                .await
                .map_err(|error| ProjectionError::Corrupt(format!("projection task failed: {error}")))??;
            if stop.is_cancelled() {
                return Ok(());
            }
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                changed = head.changed() => if changed.is_err() { return Ok(()) },
            }
        }
    }
}

/// True when a firehose record event comes from a commit older than the newest one applied for
/// its DID. Records the rev otherwise.
fn is_stale(txn: &redb::WriteTransaction, stored: &StoredEvent) -> Result<bool, ProjectionError> {
    let event = &stored.event;
    let (Some(rev), Source::Firehose | Source::Backfill) = (&event.rev, event.source) else { return Ok(false) };
    if event.body.collection().is_none() {
        return Ok(false);
    }
    let mut revs = txn.open_table(DID_REVS)?;
    let newest = revs.get(event.did.as_str())?.map(|value| value.value().to_string());
    // TIDs sort lexically in time order.
    if newest.as_deref().is_some_and(|newest| rev.as_str() < newest) {
        return Ok(true);
    }
    revs.insert(event.did.as_str(), rev.as_str())?;
    Ok(false)
}
