//! Holds and pull analytics: the hold directory and hold pages (from the hold views), and pull
//! and push counts of repositories from two sources: the counters holds publish
//! (`io.atcr.hold.stats`, in the views) and atcr's own pull log (`atcr_storage::pulls`, pulls
//! served by this server's `/v2`). Nothing here calls the network.

use std::collections::BTreeMap;

use atcr_projections::Views;
use atcr_projections::holds::{CounterSeries, HoldFacts};
use serde::Serialize;
use utoipa::ToSchema;

pub use atcr_storage::pulls::{PullLog, PullRecorder, day_string, days_from_string, today};

use crate::browse::{Browse, BrowseError, HoldStatus, RepoCard, hold_status, owner_did, repo_card, verified_handle};

/// Counts pulls served by `/v2` by the name the client used: the name is resolved to
/// (owner DID, repository) once per views generation and cached, so a pull costs a map lookup
/// and a channel send (the pull log writes off the request path).
#[derive(Clone)]
pub struct PullCounter {
    recorder: PullRecorder,
    registry: crate::RegistryQuery,
    resolved: std::sync::Arc<std::sync::RwLock<ResolvedNames>>,
}

/// (views generation, name → (owner DID, repository)) resolved at that generation.
type ResolvedNames = (u64, std::collections::HashMap<String, (String, String)>);

/// Most names kept resolved before the cache starts over.
const RESOLVED_NAMES: usize = 100_000;

impl PullCounter {
    pub fn new(recorder: PullRecorder, registry: crate::RegistryQuery) -> Self {
        PullCounter { recorder, registry, resolved: Default::default() }
    }

    /// Records one pull of `name` (`handle/repo` or `did/repo`); unknown names count nothing.
    pub fn record(&self, name: &str) {
        let generation = self.registry.views().generation();
        if let Ok(cache) = self.resolved.read()
            && cache.0 == generation
            && let Some((did, repository)) = cache.1.get(name)
        {
            self.recorder.record(did, repository);
            return;
        }
        let Ok(resolved) = self.registry.resolve(name) else { return };
        self.recorder.record(&resolved.did, &resolved.repository);
        if let Ok(mut cache) = self.resolved.write() {
            if cache.0 != generation || cache.1.len() >= RESOLVED_NAMES {
                cache.1.clear();
                cache.0 = generation;
            }
            cache.1.insert(name.to_string(), (resolved.did, resolved.repository));
        }
    }
}

/// Days shown by the daily pull charts.
pub const CHART_DAYS: i64 = 30;
/// Trending compares the last this-many days with the ones before.
pub const TRENDING_DAYS: i64 = 7;

/// A hold in the directory.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HoldCard {
    pub did: String,
    /// The owner from the captain record, when the hold published one.
    pub owner: Option<String>,
    pub owner_handle: Option<String>,
    /// `None`: no captain record (the hold is only known from manifests naming it).
    pub public: Option<bool>,
    pub region: Option<String>,
    pub crew_count: u64,
    /// Repositories with at least one manifest naming this hold.
    pub repository_count: u64,
    /// Manifests naming this hold.
    pub manifest_count: u64,
    pub status: HoldStatus,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CrewMember {
    pub did: String,
    pub handle: Option<String>,
    pub role: Option<String>,
    pub permissions: Vec<String>,
    pub tier: Option<String>,
    pub added_at: Option<String>,
}

/// A repository whose manifests name the hold.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HoldRepository {
    pub did: String,
    pub handle: Option<String>,
    pub repository: String,
    /// Its manifests naming this hold.
    pub manifests: u64,
    /// This hold's counters for the repository (`io.atcr.hold.stats`), when published.
    pub pulls: Option<u64>,
    pub pushes: Option<u64>,
}

/// Cumulative counters on a day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct CounterPoint {
    /// `YYYY-MM-DD` (UTC).
    pub day: String,
    pub pulls: u64,
    pub pushes: u64,
}

/// Pulls served by atcr on a day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct DayCount {
    /// `YYYY-MM-DD` (UTC).
    pub day: String,
    pub pulls: u64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HoldPage {
    pub did: String,
    /// The hold account's own handle, when its DID document names one that verifies.
    pub handle: Option<String>,
    pub owner: Option<String>,
    pub owner_handle: Option<String>,
    pub public: Option<bool>,
    pub region: Option<String>,
    pub successor: Option<String>,
    pub deployed_at: Option<String>,
    pub allow_all_crew: Option<bool>,
    pub crew_count: u64,
    pub crew: Vec<CrewMember>,
    pub repositories: Vec<HoldRepository>,
    /// Layers the hold lists (`io.atcr.hold.layer`) and their bytes.
    pub layer_count: u64,
    pub layer_bytes: u64,
    /// Sums of the hold's published counters.
    pub pulls: u64,
    pub pushes: u64,
    /// The hold's counters over time (cumulative, summed over repositories).
    pub series: Vec<CounterPoint>,
    pub status: HoldStatus,
}

/// One hold's counters for a repository.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HoldCounter {
    pub hold: String,
    pub pulls: u64,
    pub pushes: u64,
    pub last_pull: Option<String>,
    pub last_push: Option<String>,
    pub updated_at: Option<String>,
}

/// Pull and push counts of a repository.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RepositoryStats {
    pub did: String,
    pub repository: String,
    /// Pulls served by this atcr's `/v2` (manifest GETs), ever.
    pub atcr_pulls: u64,
    /// Pulls served by this atcr per day, the last [`CHART_DAYS`] days, oldest first.
    pub atcr_daily: Vec<DayCount>,
    /// Sums of the counters holds publish for the repository.
    pub hold_pulls: u64,
    pub hold_pushes: u64,
    pub holds: Vec<HoldCounter>,
    /// The holds' counters over time (cumulative, summed over holds).
    pub hold_series: Vec<CounterPoint>,
    /// Hold DIDs the repository's manifests name (where its layers are stored).
    pub stored_on: Vec<String>,
}

/// A repository on the home page's popular and trending lists.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PulledRepo {
    pub card: RepoCard,
    /// Pulls ever (popular) or in the last [`TRENDING_DAYS`] days (trending).
    pub pulls: u64,
    /// Trending only: pulls in the [`TRENDING_DAYS`] days before those.
    pub previous: Option<u64>,
}

fn series(counters: CounterSeries) -> Vec<CounterPoint> {
    counters.into_iter().map(|(day, pulls, pushes)| CounterPoint { day, pulls, pushes }).collect()
}

fn handle_of(views: &Views, did: &str) -> Result<Option<String>, BrowseError> {
    let handle = views.identity(did)?.and_then(|identity| identity.handle);
    verified_handle(views, did, handle)
}

fn card(views: &Views, did: &str, facts: Option<&HoldFacts>, manifests: u64) -> Result<HoldCard, BrowseError> {
    let captain = facts.and_then(|facts| facts.captain.as_ref());
    let owner = captain.map(|captain| captain.owner.clone());
    Ok(HoldCard {
        did: did.to_string(),
        owner_handle: match &owner {
            Some(owner) => handle_of(views, owner)?,
            None => None,
        },
        owner,
        public: captain.map(|captain| captain.public),
        region: captain.and_then(|captain| captain.region.clone()),
        crew_count: facts.map(|facts| facts.crew.len() as u64).unwrap_or(0),
        repository_count: facts.map(|facts| facts.repositories.len() as u64).unwrap_or(0),
        manifest_count: manifests,
        status: hold_status(views, did)?,
    })
}

impl Browse {
    /// Every hold atcr knows (a captain record, or manifests naming it), by DID.
    pub fn holds(&self) -> Result<Vec<HoldCard>, BrowseError> {
        let views = self.registry_views();
        let mut out = Vec::new();
        for (did, manifests) in views.hold_dids()? {
            let facts = views.hold_facts(&did)?;
            out.push(card(&views, &did, facts.as_ref(), manifests)?);
        }
        Ok(out)
    }

    /// One hold; `None` when the views know nothing of it.
    pub fn hold(&self, did: &str) -> Result<Option<HoldPage>, BrowseError> {
        let views = self.registry_views();
        let Some(facts) = views.hold_facts(did)? else { return Ok(None) };
        let captain = facts.captain.clone();
        let mut crew = Vec::with_capacity(facts.crew.len());
        for member in &facts.crew {
            crew.push(CrewMember {
                handle: handle_of(&views, &member.member)?,
                did: member.member.clone(),
                role: member.role.clone(),
                permissions: member.permissions.clone(),
                tier: member.tier.clone(),
                added_at: member.added_at.clone(),
            });
        }
        let counters: BTreeMap<(&str, &str), (u64, u64)> = facts
            .stats
            .iter()
            .map(|row| ((row.owner_did.as_str(), row.repository.as_str()), (row.pull_count, row.push_count)))
            .collect();
        let mut repositories = Vec::with_capacity(facts.repositories.len());
        for ((owner, repository), manifests) in &facts.repositories {
            let counts = counters.get(&(owner.as_str(), repository.as_str()));
            repositories.push(HoldRepository {
                handle: handle_of(&views, owner)?,
                did: owner.clone(),
                repository: repository.clone(),
                manifests: *manifests,
                pulls: counts.map(|counts| counts.0),
                pushes: counts.map(|counts| counts.1),
            });
        }
        let owner = captain.as_ref().map(|captain| captain.owner.clone());
        Ok(Some(HoldPage {
            did: did.to_string(),
            handle: handle_of(&views, did)?,
            owner_handle: match &owner {
                Some(owner) => handle_of(&views, owner)?,
                None => None,
            },
            owner,
            public: captain.as_ref().map(|captain| captain.public),
            region: captain.as_ref().and_then(|captain| captain.region.clone()),
            successor: captain.as_ref().and_then(|captain| captain.successor.clone()),
            deployed_at: captain.as_ref().and_then(|captain| captain.deployed_at.clone()),
            allow_all_crew: captain.as_ref().map(|captain| captain.allow_all_crew),
            crew_count: crew.len() as u64,
            crew,
            repositories,
            layer_count: facts.layers,
            layer_bytes: facts.layer_bytes,
            pulls: facts.stats.iter().map(|row| row.pull_count).fold(0, u64::saturating_add),
            pushes: facts.stats.iter().map(|row| row.push_count).fold(0, u64::saturating_add),
            series: series(views.hold_stats_series(did)?),
            status: hold_status(&views, did)?,
        }))
    }

    /// Pull and push counts of a repository; `None` when the repository is unknown.
    pub fn repository_stats(&self, owner: &str, repository: &str) -> Result<Option<RepositoryStats>, BrowseError> {
        let views = self.registry_views();
        let Some(did) = owner_did(&views, owner)? else { return Ok(None) };
        if views.repository(&did, repository)?.is_none() {
            return Ok(None);
        }
        let holds: Vec<HoldCounter> = views
            .repository_hold_stats(&did, repository)?
            .into_iter()
            .map(|(hold, row)| HoldCounter {
                hold,
                pulls: row.pull_count,
                pushes: row.push_count,
                last_pull: row.last_pull,
                last_push: row.last_push,
                updated_at: row.updated_at,
            })
            .collect();
        let (atcr_pulls, atcr_daily) = match self.pull_log() {
            Some(pulls) => {
                let last = today();
                let daily = pulls
                    .daily(&did, repository, last - CHART_DAYS + 1, last)?
                    .into_iter()
                    .map(|(day, pulls)| DayCount { day: day_string(day), pulls })
                    .collect();
                (pulls.total(&did, repository)?, daily)
            }
            None => (0, Vec::new()),
        };
        let stored_on = views
            .search_document(&did, repository)?
            .map(|document| document.holds.into_iter().filter(|hold| hold.starts_with("did:")).collect())
            .unwrap_or_default();
        Ok(Some(RepositoryStats {
            stored_on,
            hold_pulls: holds.iter().map(|hold| hold.pulls).fold(0, u64::saturating_add),
            hold_pushes: holds.iter().map(|hold| hold.pushes).fold(0, u64::saturating_add),
            holds,
            hold_series: series(views.repository_stats_series(&did, repository)?),
            atcr_pulls,
            atcr_daily,
            repository: repository.to_string(),
            did,
        }))
    }

    /// The repositories pulled most through this atcr, ever.
    pub fn most_pulled(&self, limit: usize) -> Result<Vec<PulledRepo>, BrowseError> {
        let Some(pulls) = self.pull_log() else { return Ok(Vec::new()) };
        let views = self.registry_views();
        let mut out = Vec::new();
        // Over-fetch: repositories deleted since they were pulled are left out.
        for (did, repository, count) in pulls.most_pulled(limit * 2)? {
            if out.len() == limit {
                break;
            }
            if let Some(card) = repo_card(&views, &did, &repository)? {
                out.push(PulledRepo { card, pulls: count, previous: None });
            }
        }
        Ok(out)
    }

    /// Repositories whose pulls grew most: the last [`TRENDING_DAYS`] days against the ones
    /// before, ranked by the growth (pulls now − pulls before), only those that grew.
    pub fn trending(&self, today: i64, limit: usize) -> Result<Vec<PulledRepo>, BrowseError> {
        let Some(pulls) = self.pull_log() else { return Ok(Vec::new()) };
        let recent = pulls.window(today - TRENDING_DAYS + 1, today)?;
        let before = pulls.window(today - 2 * TRENDING_DAYS + 1, today - TRENDING_DAYS)?;
        let mut ranked = trending_rank(&recent, &before);
        ranked.truncate(limit * 2);
        let views = self.registry_views();
        let mut out = Vec::new();
        for ((did, repository), now, previous) in ranked {
            if out.len() == limit {
                break;
            }
            if let Some(card) = repo_card(&views, &did, &repository)? {
                out.push(PulledRepo { card, pulls: now, previous: Some(previous) });
            }
        }
        Ok(out)
    }
}

type RepoKey = (String, String);

/// (repository, pulls now, pulls before) of the repositories that grew, most growth first
/// (then most pulls, then name).
pub fn trending_rank(recent: &BTreeMap<RepoKey, u64>, before: &BTreeMap<RepoKey, u64>) -> Vec<(RepoKey, u64, u64)> {
    let mut ranked: Vec<(RepoKey, u64, u64)> = recent
        .iter()
        .map(|(repo, now)| (repo.clone(), *now, before.get(repo).copied().unwrap_or(0)))
        .filter(|(_, now, previous)| now > previous)
        .collect();
    ranked.sort_by(|left, right| {
        (right.1 - right.2).cmp(&(left.1 - left.2)).then(right.1.cmp(&left.1)).then(left.0.cmp(&right.0))
    });
    ranked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trending_ranks_by_growth_and_leaves_out_what_did_not_grow() {
        let key = |name: &str| ("did:plc:a".to_string(), name.to_string());
        let recent = BTreeMap::from([(key("steady"), 50), (key("rising"), 30), (key("new"), 12), (key("falling"), 3)]);
        let before = BTreeMap::from([(key("steady"), 50), (key("rising"), 10), (key("falling"), 9)]);
        let ranked: Vec<(String, u64, u64)> = trending_rank(&recent, &before)
            .into_iter()
            .map(|((_, name), now, previous)| (name, now, previous))
            .collect();
        assert_eq!(ranked, vec![("rising".to_string(), 30, 10), ("new".to_string(), 12, 0)]);
    }
}
