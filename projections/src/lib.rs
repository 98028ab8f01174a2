//! atcr-projections: read models built from the event log.
//!
//! Nothing lives here yet. Projections are pure functions of the log (plus the content
//! store): they never call the network or read the clock, and each commits its checkpoint
//! with its writes. The first views (identities, repositories, manifests, tags, referrers)
//! and their runner arrive with the OCI pull API; until then `query` reads the log directly.
