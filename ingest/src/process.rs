//! Turning decoded frames into an append batch: events, commit blocks, quarantine entries,
//! stream notes and the cursor they reach. Pure and synchronous, so it is tested and
//! benchmarked without a socket.

use std::collections::HashSet;

use atcr_storage::{AppendBatch, Event, EventBody, QuarantineEntry, Source, StreamNote, StreamNoteKind};

use crate::frame::{CommitFacts, Frame, FrameError, RecordOp, decode_frame};

/// What the stream must do after a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Control {
    Continue,
    /// Upstream says our cursor is ahead of its head (`FutureCursor`).
    FutureCursor {
        message: Option<String>,
    },
    /// Upstream sent another error frame and will close the stream.
    UpstreamError {
        error: String,
        message: Option<String>,
    },
}

/// Counters of what one batch of frames did, for metrics and logs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FrameCounts {
    pub frames: u64,
    pub matched: u64,
    pub filtered: u64,
    pub quarantined: u64,
    pub duplicates: u64,
    pub events: u64,
    /// The upstream time of the newest frame handled, microseconds since the epoch.
    pub newest_upstream_time_us: Option<i64>,
}

/// Per-upstream state that survives reconnects: the last sequence number handled and the DIDs
/// whose identity and account events we keep.
pub struct FrameProcessor {
    upstream: String,
    last_seq: Option<i64>,
    tracked_dids: HashSet<String>,
}

impl FrameProcessor {
    pub fn new(upstream: String, cursor: Option<i64>, tracked_dids: impl IntoIterator<Item = String>) -> Self {
        FrameProcessor { upstream, last_seq: cursor, tracked_dids: tracked_dids.into_iter().collect() }
    }

    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    /// The last sequence number handled (the cursor to resume from).
    pub fn last_seq(&self) -> Option<i64> {
        self.last_seq
    }

    /// Forgets the position (after an operator-requested reset).
    pub fn reset(&mut self) {
        self.last_seq = None;
    }

    /// Moves the position forward without a frame (skipping a refused oversized frame).
    pub fn skip_to(&mut self, seq: i64) {
        self.last_seq = Some(self.last_seq.map_or(seq, |last| last.max(seq)));
    }

    /// Handles one raw frame, adding what it produced to `batch`: [`FrameProcessor::decode`],
    /// then [`FrameProcessor::apply`], with no verification in between. Live ingest verifies
    /// commits between the two ([`crate::gate`]); this is for trusted, generated streams.
    pub fn process(
        &mut self,
        raw: &[u8],
        received_at_us: i64,
        batch: &mut AppendBatch,
        counts: &mut FrameCounts,
    ) -> Control {
        match self.decode(raw, received_at_us, batch, counts) {
            Some(frame) => self.apply(frame, received_at_us, batch, counts),
            None => Control::Continue,
        }
    }

    /// Whether `#identity`, `#account` and `#sync` of `did` are kept.
    pub fn is_tracked(&self, did: &str) -> bool {
        self.tracked_dids.contains(did)
    }

    /// Puts a raw frame in quarantine with `reason` (a frame that decoded but was not trusted).
    pub fn quarantine(
        &self,
        raw: &[u8],
        received_at_us: i64,
        error: FrameError,
        batch: &mut AppendBatch,
        counts: &mut FrameCounts,
    ) {
        counts.quarantined += 1;
        tracing::warn!(upstream = %self.upstream, seq = ?error.seq, did = ?error.did, reason = %error.reason, bytes = raw.len(), "frame quarantined");
        batch.quarantine.push(QuarantineEntry {
            received_at_us,
            upstream: self.upstream.clone(),
            upstream_seq: error.seq,
            did: error.did,
            reason: error.reason,
            raw: raw.to_vec(),
        });
    }

    /// Records that `did`'s repository must be re-synchronized (`reason` says why), as a
    /// `Resync` event in frame order.
    pub fn mark_desynchronized(
        &mut self,
        commit: &CommitFacts,
        received_at_us: i64,
        reason: String,
        batch: &mut AppendBatch,
        counts: &mut FrameCounts,
    ) {
        counts.events += 1;
        batch.events.push(Event {
            source: Source::Firehose,
            upstream_seq: Some(commit.seq),
            did: commit.did.clone(),
            rev: Some(commit.rev.clone()),
            upstream_time: Some(commit.time.clone()),
            received_at_us,
            commit_cid: None,
            body: EventBody::Resync { reason },
        });
    }

    /// Decodes one raw frame: a frame that does not decode goes to quarantine, a frame seen
    /// before (by seq) is dropped, the cursor moves. Returns the frame to apply, if any.
    pub fn decode(
        &mut self,
        raw: &[u8],
        received_at_us: i64,
        batch: &mut AppendBatch,
        counts: &mut FrameCounts,
    ) -> Option<Frame> {
        counts.frames += 1;
        let frame = match decode_frame(raw) {
            Ok(frame) => frame,
            Err(error) => {
                // A frame bad enough to hide its seq cannot move the cursor; one that told us
                // its seq is consumed, so a reconnect does not bring it back forever.
                if let Some(seq) = error.seq {
                    self.advance(seq, batch);
                }
                self.quarantine(raw, received_at_us, error, batch, counts);
                return None;
            }
        };
        if let Some(seq) = frame.seq() {
            if self.last_seq.is_some_and(|last| seq <= last) {
                counts.duplicates += 1;
                return None;
            }
            self.advance(seq, batch);
        }
        Some(frame)
    }

    /// Turns a decoded frame into events, notes or a stream control.
    pub fn apply(
        &mut self,
        frame: Frame,
        received_at_us: i64,
        batch: &mut AppendBatch,
        counts: &mut FrameCounts,
    ) -> Control {
        let event = |did: String, rev: Option<String>, time: Option<String>, seq: i64, body: EventBody| Event {
            source: Source::Firehose,
            upstream_seq: Some(seq),
            did,
            rev,
            upstream_time: time,
            received_at_us,
            commit_cid: None,
            body,
        };
        if let Some(time) = frame.time() {
            counts.newest_upstream_time_us = parse_time_us(time).or(counts.newest_upstream_time_us);
        }
        match frame {
            Frame::Commit(commit) => {
                counts.matched += 1;
                counts.events += commit.ops.len() as u64;
                self.tracked_dids.insert(commit.did.clone());
                for op in commit.ops {
                    let body = match op {
                        RecordOp::Put { collection, rkey, cid, action, record } => {
                            EventBody::RecordPut { collection, rkey, cid, action, record }
                        }
                        RecordOp::Delete { collection, rkey, prev_cid } => {
                            EventBody::RecordDeleted { collection, rkey, prev_cid }
                        }
                    };
                    let mut record_event = event(
                        commit.did.clone(),
                        Some(commit.rev.clone()),
                        Some(commit.time.clone()),
                        commit.seq,
                        body,
                    );
                    record_event.commit_cid = Some(commit.commit_cid.clone());
                    batch.events.push(record_event);
                }
                batch.commit_blocks.push((commit.commit_cid, commit.commit_block));
            }
            Frame::Skipped { .. } => counts.filtered += 1,
            Frame::Identity { seq, did, handle, time } => {
                if self.tracked_dids.contains(&did) {
                    counts.events += 1;
                    batch.events.push(event(did, None, time, seq, EventBody::Identity { handle }));
                } else {
                    counts.filtered += 1;
                }
            }
            Frame::Account { seq, did, active, status, time } => {
                if self.tracked_dids.contains(&did) {
                    counts.events += 1;
                    batch.events.push(event(did, None, time, seq, EventBody::Account { active, status }));
                } else {
                    counts.filtered += 1;
                }
            }
            Frame::Sync { seq, did, rev, time } => {
                if self.tracked_dids.contains(&did) {
                    counts.events += 1;
                    let reason = "upstream #sync: repo state replaced, resync needed".to_string();
                    batch.events.push(event(did, rev, time, seq, EventBody::Resync { reason }));
                } else {
                    counts.filtered += 1;
                }
            }
            Frame::Info { name, message } => {
                let kind = if name == "OutdatedCursor" { StreamNoteKind::OutdatedCursor } else { StreamNoteKind::Info };
                tracing::warn!(upstream = %self.upstream, %name, ?message, cursor = ?self.last_seq, "upstream #info, recorded as a possible gap");
                batch.notes.push(StreamNote {
                    received_at_us,
                    upstream: self.upstream.clone(),
                    cursor: self.last_seq,
                    kind,
                    message: format!("{name}: {}", message.unwrap_or_default()),
                });
            }
            Frame::Error { error, message } => {
                if error == "FutureCursor" {
                    return Control::FutureCursor { message };
                }
                return Control::UpstreamError { error, message };
            }
        }
        Control::Continue
    }

    fn advance(&mut self, seq: i64, batch: &mut AppendBatch) {
        self.last_seq = Some(seq);
        match batch.cursors.last_mut() {
            Some((upstream, cursor)) if *upstream == self.upstream => *cursor = seq,
            _ => batch.cursors.push((self.upstream.clone(), seq)),
        }
    }
}

/// RFC 3339 upstream timestamps to microseconds; unparsable times are ignored (they only feed
/// the lag gauge).
fn parse_time_us(time: &str) -> Option<i64> {
    let parsed = humantime::parse_rfc3339_weak(time).ok()?;
    let since_epoch = parsed.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(since_epoch.as_micros()).ok()
}
