//! Group commit: one thread owns appends and folds every batch that is waiting into one
//! durable transaction, so a busy stream (or many producers) pays one fsync per group instead
//! of one per event. Producers get their receipt only after the fsync.

use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

use crate::error::{Result, StorageError};
use crate::log::{AppendBatch, AppendReceipt, EventLog};

/// How many events one group may hold before it is committed.
const MAX_EVENTS_PER_GROUP: usize = 16_384;

type Request = (AppendBatch, oneshot::Sender<Result<AppendReceipt>>);

/// A cloneable handle to the log's single writer.
#[derive(Clone)]
pub struct LogWriter {
    requests: mpsc::Sender<Request>,
}

/// Owns the writer thread; dropping every [`LogWriter`] and then calling
/// [`LogWriterTask::join`] drains and stops it cleanly.
pub struct LogWriterTask {
    thread: JoinHandle<()>,
}

impl LogWriterTask {
    pub fn join(self) {
        if self.thread.join().is_err() {
            tracing::error!("event log writer thread panicked");
        }
    }
}

impl LogWriter {
    pub fn start(log: Arc<EventLog>) -> (LogWriter, LogWriterTask) {
        let (requests, receiver) = mpsc::channel::<Request>(1024);
        let thread = std::thread::Builder::new()
            .name("atcr-log-writer".into())
            .spawn(move || run_writer(log, receiver))
            .unwrap_or_else(|error| panic!("cannot spawn the event log writer thread: {error}"));
        (LogWriter { requests }, LogWriterTask { thread })
    }

    /// Appends a batch; resolves once it is durable.
    pub async fn append(&self, batch: AppendBatch) -> Result<AppendReceipt> {
        let (reply, receipt) = oneshot::channel();
        self.requests.send((batch, reply)).await.map_err(|_| StorageError::WriterGone)?;
        receipt.await.map_err(|_| StorageError::WriterGone)?
    }

    /// Blocking variant for threads outside the async runtime.
    pub fn append_blocking(&self, batch: AppendBatch) -> Result<AppendReceipt> {
        let (reply, receipt) = oneshot::channel();
        self.requests.blocking_send((batch, reply)).map_err(|_| StorageError::WriterGone)?;
        receipt.blocking_recv().map_err(|_| StorageError::WriterGone)?
    }
}

fn run_writer(log: Arc<EventLog>, mut receiver: mpsc::Receiver<Request>) {
    while let Some(first) = receiver.blocking_recv() {
        let mut group_events = first.0.events.len();
        let mut group = vec![first];
        while group_events < MAX_EVENTS_PER_GROUP {
            match receiver.try_recv() {
                Ok(request) => {
                    group_events += request.0.events.len();
                    group.push(request);
                }
                Err(_) => break,
            }
        }
        let (batches, replies): (Vec<_>, Vec<_>) = group.into_iter().unzip();
        match log.append_group(batches) {
            Ok(receipts) => {
                for (reply, receipt) in replies.into_iter().zip(receipts) {
                    let _ = reply.send(Ok(receipt));
                }
            }
            Err(error) => {
                // Our own store failed: every producer in the group learns it and the writer
                // stops, which stops ingest (corruption of our own files is fatal and loud).
                tracing::error!(%error, "event log append failed, stopping the writer");
                let message = error.to_string();
                for reply in replies {
                    let _ =
                        reply.send(Err(StorageError::Corrupt { location: "append".into(), reason: message.clone() }));
                }
                return;
            }
        }
    }
}
