//! One error type for the storage crate. Corruption of our own files is loud: callers treat
//! every `StorageError` as fatal for the component that got it (invariant 5, second half).

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("event log database error: {0}")]
    Database(#[from] redb::DatabaseError),
    #[error("event log is already opened for writing by another process (is `atcr serve` running?)")]
    AlreadyOpen,
    #[error("event log transaction error: {0}")]
    Transaction(#[from] redb::TransactionError),
    #[error("event log table error: {0}")]
    Table(#[from] redb::TableError),
    #[error("event log storage error: {0}")]
    Storage(#[from] redb::StorageError),
    #[error("event log commit error: {0}")]
    Commit(#[from] redb::CommitError),
    #[error("event log durability error: {0}")]
    Durability(#[from] redb::SetDurabilityError),
    #[error("corrupt stored entry at {location}: {reason}")]
    Corrupt { location: String, reason: String },
    #[error("unsupported event encoding version {0} (written by a newer atcr?)")]
    UnsupportedVersion(u8),
    #[error("event log writer has stopped")]
    WriterGone,
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;
