//! The `com.atproto.sync.subscribeRepos` client: one socket read loop, one processing loop,
//! and a bounded queue between them.
//!
//! Why two loops: the socket must be drained promptly or upstream drops us as a slow
//! consumer, while appends wait for fsync. The read loop only moves bytes into the queue; the
//! processing loop decodes whatever is queued, appends it as one batch together with the
//! cursor it reaches, and so commits in groups that grow with the load.
//!
//! Reconnects resume from the last handled sequence number (replay is `seq > cursor`); frames
//! seen twice are dropped by sequence number.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use rand::Rng;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::{self, Message, protocol::WebSocketConfig};
use tokio_util::sync::CancellationToken;

use atcr_storage::{AppendBatch, EventLog, LogWriter, StorageError, StreamNote, StreamNoteKind, now_micros};

use crate::frame::{Frame, FrameError};
use crate::gate::{CommitGate, Verdict};
use crate::identity::IdentityResolver;
use crate::metrics as names;
use crate::process::{Control, FrameCounts, FrameProcessor};

/// The protocol's frame size limit.
pub const MAX_FRAME_BYTES: usize = 5 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct FirehoseConfig {
    /// Base URL of a relay or PDS (`wss://…`, `ws://…`, `https://…`, `http://…`).
    pub upstream: String,
    /// On `FutureCursor`, forget the cursor and start over instead of stopping.
    pub reset_on_future_cursor: bool,
    /// Frames queued between the socket and the writer.
    pub queue_frames: usize,
    /// Most frames handled in one append.
    pub max_batch_frames: usize,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Where to start when no cursor is stored yet: `None` follows live events only, `Some(0)`
    /// asks upstream for everything it still has.
    pub start_cursor: Option<i64>,
    /// Verifies every `io.atcr.*` commit before it becomes events ([`CommitGate`]). `None`
    /// trusts frames as they come: only for generated streams in tests and benchmarks;
    /// `atcr serve` always sets it.
    pub identities: Option<Arc<IdentityResolver>>,
}

impl FirehoseConfig {
    pub fn new(upstream: impl Into<String>) -> Self {
        FirehoseConfig {
            upstream: upstream.into(),
            reset_on_future_cursor: false,
            queue_frames: 8192,
            max_batch_frames: 4096,
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            start_cursor: None,
            identities: None,
        }
    }

    /// The key the cursor is stored under: the upstream URL without trailing slash.
    pub fn upstream_key(&self) -> String {
        self.upstream.trim_end_matches('/').to_string()
    }

    pub fn subscribe_url(&self, cursor: Option<i64>) -> String {
        let base = self.upstream_key();
        let base = if let Some(rest) = base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = base.strip_prefix("http://") {
            format!("ws://{rest}")
        } else {
            base
        };
        let endpoint = if base.ends_with("/xrpc/com.atproto.sync.subscribeRepos") {
            base
        } else {
            format!("{base}/xrpc/com.atproto.sync.subscribeRepos")
        };
        match cursor {
            Some(cursor) => format!("{endpoint}?cursor={cursor}"),
            None => endpoint,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(
        "upstream {upstream} says cursor {cursor:?} is in its future ({message}); it may have been reset or replaced. \
         refusing to start over silently: restart with --reset-cursor to ingest from its beginning"
    )]
    FutureCursor { upstream: String, cursor: Option<i64>, message: String },
    #[error("event log: {0}")]
    Storage(#[from] StorageError),
}

enum QueueItem {
    /// The message payload as tungstenite handed it over: moved, never copied.
    Frame { bytes: tokio_tungstenite::tungstenite::Bytes, received_at_us: i64 },
    /// The connection ended; answer with the cursor to resume from once everything before is
    /// handled.
    Disconnected { oversized: Option<usize>, resume_at: oneshot::Sender<Option<i64>> },
}

/// Runs until `shutdown` is cancelled (returns `Ok`) or ingest cannot go on (returns the
/// reason). Everything received before shutdown is appended before this returns.
pub async fn run_firehose(
    config: FirehoseConfig,
    log: Arc<EventLog>,
    writer: LogWriter,
    shutdown: CancellationToken,
) -> Result<(), IngestError> {
    let upstream = config.upstream_key();
    let cursor = log.cursor(&upstream)?.or(config.start_cursor);
    let tracked = log.tracked_dids()?;
    tracing::info!(%upstream, ?cursor, tracked_dids = tracked.len(), "starting firehose ingest");
    let processor = FrameProcessor::new(upstream, cursor, tracked);
    let gate = match &config.identities {
        Some(identities) => Some(CommitGate::new(identities.clone(), log.repo_revs()?)),
        None => {
            tracing::warn!("commit verification is off: frames are trusted as they come (tests and benchmarks only)");
            None
        }
    };

    let (queue, frames) = mpsc::channel(config.queue_frames);
    let stop_reading = shutdown.child_token();
    let reader = tokio::spawn(read_loop(config.clone(), cursor, queue, stop_reading.clone()));
    let result = process_loop(&config, processor, gate, frames, writer).await;
    stop_reading.cancel();
    if reader.await.is_err() {
        tracing::error!("firehose read loop panicked");
    }
    result
}

async fn read_loop(
    config: FirehoseConfig,
    mut cursor: Option<i64>,
    queue: mpsc::Sender<QueueItem>,
    shutdown: CancellationToken,
) {
    let mut failures: u32 = 0;
    let mut websocket_config = WebSocketConfig::default();
    websocket_config.max_message_size = Some(MAX_FRAME_BYTES);
    websocket_config.max_frame_size = Some(MAX_FRAME_BYTES);
    loop {
        let url = config.subscribe_url(cursor);
        tracing::info!(%url, "connecting to upstream");
        let connect = tokio_tungstenite::connect_async_with_config(url.as_str(), Some(websocket_config), true);
        let connection = tokio::select! {
            _ = shutdown.cancelled() => return,
            connection = connect => connection,
        };
        let mut received_any = false;
        let mut oversized = None;
        match connection {
            Ok((mut socket, _)) => {
                metrics::counter!(names::CONNECTIONS).increment(1);
                loop {
                    let message = tokio::select! {
                        _ = shutdown.cancelled() => {
                            let _ = socket.close(None).await;
                            return;
                        }
                        message = socket.next() => message,
                    };
                    match message {
                        Some(Ok(Message::Binary(bytes))) => {
                            received_any = true;
                            let item = QueueItem::Frame { bytes, received_at_us: now_micros() };
                            if queue.send(item).await.is_err() {
                                return;
                            }
                            metrics::gauge!(names::QUEUE_DEPTH).set((queue.max_capacity() - queue.capacity()) as f64);
                        }
                        Some(Ok(Message::Close(frame))) => {
                            tracing::info!(?frame, "upstream closed the stream");
                            break;
                        }
                        Some(Ok(_)) => {}
                        Some(Err(tungstenite::Error::Capacity(error))) => {
                            tracing::error!(%error, limit = MAX_FRAME_BYTES, "refused a frame over the protocol's size limit");
                            oversized = Some(MAX_FRAME_BYTES);
                            break;
                        }
                        Some(Err(error)) => {
                            tracing::warn!(%error, "upstream connection failed");
                            break;
                        }
                        None => {
                            tracing::warn!("upstream connection ended");
                            break;
                        }
                    }
                }
            }
            Err(error) => tracing::warn!(%error, %url, "cannot connect to upstream"),
        }
        // Wait for the processing loop to handle everything queued, and resume after it.
        let (resume_at, resumed) = oneshot::channel();
        if queue.send(QueueItem::Disconnected { oversized, resume_at }).await.is_err() {
            return;
        }
        match resumed.await {
            Ok(resume) => cursor = resume,
            Err(_) => return,
        }
        metrics::counter!(names::RECONNECTS).increment(1);
        failures = if received_any { 0 } else { failures.saturating_add(1) };
        let delay = backoff_delay(&config, failures);
        tracing::info!(delay_ms = delay.as_millis() as u64, ?cursor, "reconnecting");
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Exponential backoff with full jitter: uniform in [min, min * 2^failures], capped.
fn backoff_delay(config: &FirehoseConfig, failures: u32) -> Duration {
    let ceiling = config.backoff_min.saturating_mul(1u32 << failures.min(16)).min(config.backoff_max);
    let low = config.backoff_min.as_millis() as u64;
    let high = (ceiling.as_millis() as u64).max(low);
    Duration::from_millis(rand::rng().random_range(low..=high))
}

async fn process_loop(
    config: &FirehoseConfig,
    mut processor: FrameProcessor,
    mut gate: Option<CommitGate>,
    mut frames: mpsc::Receiver<QueueItem>,
    writer: LogWriter,
) -> Result<(), IngestError> {
    let mut items = Vec::with_capacity(config.max_batch_frames);
    // After an operator-approved reset the next connection starts from upstream's beginning.
    let mut restart_from_beginning = false;
    while frames.recv_many(&mut items, config.max_batch_frames).await > 0 {
        let mut batch = AppendBatch::default();
        let mut counts = FrameCounts::default();
        let mut pending_reply = None;
        let mut fatal = None;
        // First every frame is decoded (dedup, cursor, undecodable frames quarantined), then
        // the commits' authors are resolved together, then frames are verified and applied in
        // order.
        let mut decoded = Vec::with_capacity(items.len());
        for item in items.drain(..) {
            match item {
                QueueItem::Frame { bytes, received_at_us } => {
                    if fatal.is_some() {
                        continue;
                    }
                    let Some(frame) = processor.decode(&bytes, received_at_us, &mut batch, &mut counts) else {
                        continue;
                    };
                    if !matches!(frame, Frame::Error { .. }) {
                        decoded.push((frame, bytes, received_at_us));
                        continue;
                    }
                    match processor.apply(frame, received_at_us, &mut batch, &mut counts) {
                        Control::Continue => {}
                        Control::FutureCursor { message } => {
                            let message = message.unwrap_or_else(|| "no message".into());
                            if config.reset_on_future_cursor {
                                tracing::warn!(cursor = ?processor.last_seq(), %message, "FutureCursor: resetting the cursor as the operator asked");
                                batch.notes.push(StreamNote {
                                    received_at_us,
                                    upstream: processor.upstream().to_string(),
                                    cursor: processor.last_seq(),
                                    kind: StreamNoteKind::CursorReset,
                                    message: format!("FutureCursor ({message}): cursor reset by --reset-cursor"),
                                });
                                processor.reset();
                                restart_from_beginning = true;
                            } else {
                                fatal = Some(IngestError::FutureCursor {
                                    upstream: processor.upstream().to_string(),
                                    cursor: processor.last_seq(),
                                    message,
                                });
                            }
                        }
                        Control::UpstreamError { error, message } => {
                            tracing::error!(%error, ?message, "upstream sent an error frame");
                        }
                    }
                }
                QueueItem::Disconnected { oversized, resume_at } => {
                    if let Some(limit) = oversized {
                        // The refused frame is most likely the next seq; skip exactly one
                        // position per refusal so a gap in seqs only costs another refusal.
                        let skipped = processor.last_seq().map_or(0, |seq| seq + 1);
                        tracing::error!(
                            skipped_seq = skipped,
                            limit,
                            "skipping past an oversized frame, recorded as a possible gap"
                        );
                        batch.notes.push(StreamNote {
                            received_at_us: now_micros(),
                            upstream: processor.upstream().to_string(),
                            cursor: Some(skipped),
                            kind: StreamNoteKind::OversizedFrameSkipped,
                            message: format!(
                                "a frame over {limit} bytes was refused after seq {:?}",
                                processor.last_seq()
                            ),
                        });
                        processor.skip_to(skipped);
                        batch.cursors.push((processor.upstream().to_string(), skipped));
                    }
                    pending_reply = Some(resume_at);
                }
            }
        }
        if let Some(gate) = &gate {
            let authors = decoded.iter().filter_map(|(frame, _, _)| match frame {
                Frame::Commit(commit) => Some(commit.did.as_str()),
                _ => None,
            });
            gate.prefetch_keys(authors).await;
        }
        for (frame, bytes, received_at_us) in decoded {
            let Some(gate) = gate.as_mut() else {
                processor.apply(frame, received_at_us, &mut batch, &mut counts);
                continue;
            };
            match &frame {
                Frame::Commit(commit) => match gate.check(commit).await {
                    Verdict::Accept { desync } => {
                        if let Some(reason) = desync {
                            processor.mark_desynchronized(commit, received_at_us, reason, &mut batch, &mut counts);
                        }
                    }
                    Verdict::Reject { reason, .. } => {
                        let error = FrameError { seq: Some(commit.seq), did: Some(commit.did.clone()), reason };
                        processor.quarantine(&bytes, received_at_us, error, &mut batch, &mut counts);
                        continue;
                    }
                },
                Frame::Skipped { .. } => gate.observe_skipped_frame(&bytes),
                Frame::Identity { did, .. } => gate.identity_changed(did),
                Frame::Sync { did, rev, .. } if processor.is_tracked(did) => gate.synced(did, rev.as_deref()),
                _ => {}
            }
            processor.apply(frame, received_at_us, &mut batch, &mut counts);
        }
        if let Some(gate) = gate.as_mut() {
            batch.repo_revs.extend(gate.take_updates());
        }
        if !batch.is_empty() {
            let events = batch.events.len();
            writer.append(batch).await?;
            metrics::counter!(names::EVENTS_APPENDED).increment(events as u64);
        }
        record_counts(&counts, processor.last_seq());
        if let Some(error) = fatal {
            return Err(error);
        }
        if let Some(reply) = pending_reply {
            let resume = if restart_from_beginning { processor.last_seq().or(Some(0)) } else { processor.last_seq() };
            restart_from_beginning = false;
            let _ = reply.send(resume);
        }
    }
    Ok(())
}

fn record_counts(counts: &FrameCounts, cursor: Option<i64>) {
    metrics::counter!(names::FRAMES_SEEN).increment(counts.frames);
    metrics::counter!(names::FRAMES_MATCHED).increment(counts.matched);
    metrics::counter!(names::FRAMES_FILTERED).increment(counts.filtered);
    metrics::counter!(names::FRAMES_QUARANTINED).increment(counts.quarantined);
    metrics::counter!(names::FRAMES_DUPLICATE).increment(counts.duplicates);
    if let Some(cursor) = cursor {
        metrics::gauge!(names::CURSOR).set(cursor as f64);
    }
    if let Some(upstream_time_us) = counts.newest_upstream_time_us {
        let lag_seconds = (now_micros() - upstream_time_us) as f64 / 1e6;
        metrics::gauge!(names::LAG_SECONDS).set(lag_seconds.max(0.0));
    }
}
