//! The stale-commit rule: which record events of the log take effect, decided the same way by
//! the projection runner, the audit scans and backfill's view of what the log holds.
//!
//! Why it exists: the log keeps every fact as received, including commits that arrive late or
//! twice (a replay from an older cursor, a commit a backfill already covered). Per DID, the
//! newest applied commit rev is remembered (TIDs sort lexically in time order):
//! - a record event from a commit older than it is stale;
//! - backfill events carry the rev R of the repository they were read from, and R already
//!   contains every commit up to R, so after a backfill at R a firehose event at R is stale too
//!   (it is the same commit, already covered). The remembered value says so with a `~` suffix,
//!   which no TID contains.
//!
//! Events of one commit share its rev, so an event at exactly the newest rev is not stale
//! otherwise (the rest of the same commit, or a backfill computed against it).

use crate::event::Source;

/// Suffix of the remembered rev when it came from a backfill.
const BACKFILL_MARK: char = '~';

/// Whether a record event at `rev` from `source` takes effect, given what is remembered for its
/// DID (`None`: nothing yet). Returns the value to remember from now on, or `None` when the
/// event is stale. Only firehose and backfill record events with a rev are subject to the rule;
/// callers apply other events without asking.
pub fn next_newest_rev(remembered: Option<&str>, source: Source, rev: &str) -> Option<String> {
    if let Some(remembered) = remembered {
        let (newest, by_backfill) = match remembered.strip_suffix(BACKFILL_MARK) {
            Some(newest) => (newest, true),
            None => (remembered, false),
        };
        let covered_by_backfill = by_backfill && rev == newest && source != Source::Backfill;
        if rev < newest || covered_by_backfill {
            return None;
        }
    }
    Some(match source {
        Source::Backfill => format!("{rev}{BACKFILL_MARK}"),
        _ => rev.to_string(),
    })
}

/// The rev part of a remembered value.
pub fn remembered_rev(remembered: &str) -> &str {
    remembered.strip_suffix(BACKFILL_MARK).unwrap_or(remembered)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn older_revs_are_stale_and_a_backfill_covers_its_own_rev() {
        let firehose = |remembered: Option<&str>, rev: &str| next_newest_rev(remembered, Source::Firehose, rev);
        let backfill = |remembered: Option<&str>, rev: &str| next_newest_rev(remembered, Source::Backfill, rev);
        assert_eq!(firehose(None, "3b").as_deref(), Some("3b"));
        assert_eq!(firehose(Some("3b"), "3b").as_deref(), Some("3b"), "the rest of the same commit");
        assert_eq!(firehose(Some("3b"), "3a"), None, "an older commit");
        assert_eq!(firehose(Some("3b"), "3c").as_deref(), Some("3c"));
        // a backfill at 3c after firehose 3b, and after firehose 3c (computed against it)
        assert_eq!(backfill(Some("3b"), "3c").as_deref(), Some("3c~"));
        assert_eq!(backfill(Some("3c"), "3c").as_deref(), Some("3c~"));
        assert_eq!(backfill(Some("3c~"), "3c").as_deref(), Some("3c~"), "the rest of the backfill batch");
        assert_eq!(backfill(Some("3d"), "3c"), None, "live ingest overtook the backfill");
        // after a backfill at 3c: the firehose's 3c (and older) is covered, 3d applies
        assert_eq!(firehose(Some("3c~"), "3c"), None);
        assert_eq!(firehose(Some("3c~"), "3b"), None);
        assert_eq!(firehose(Some("3c~"), "3d").as_deref(), Some("3d"));
        assert_eq!(remembered_rev("3c~"), "3c");
        assert_eq!(remembered_rev("3c"), "3c");
    }
}
