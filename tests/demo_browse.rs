//! The browse read models over the recorded demo firehose (real frames from Bluesky's reference
//! PDS): every repository, tag, star count and page in `fixtures/demo/summary.json` shows up
//! exactly as the demo's own record of what it wrote says.

use std::sync::Arc;

use atcr_projections::{ProjectionRunner, Views};
use atcr_query::RegistryQuery;
use atcr_query::browse::{Browse, ManifestKind};
use atcr_storage::EventLog;
use atcr_storage::content::ContentStore;
use serde_json::Value;

mod recorded;
use recorded::{demo_documents, demo_file, demo_firehose_batch};

fn demo_browse(directory: &std::path::Path) -> Browse {
    let log = Arc::new(EventLog::open(&directory.join("log.redb")).unwrap());
    let mut batch = demo_firehose_batch();
    for (did, (_handle, document)) in demo_documents() {
        batch.events.push(recorded::identity_resolved(&did, &document));
    }
    log.append(batch).unwrap();
    let views = Arc::new(Views::open(&directory.join("views.redb")).unwrap());
    ProjectionRunner::new(log, views.clone()).catch_up().unwrap();
    let content = Arc::new(ContentStore::open(&directory.join("content")).unwrap());
    Browse::new(RegistryQuery::new(views, content))
}

#[test]
fn the_demo_world_browses_as_recorded() {
    let directory = tempfile::tempdir().unwrap();
    let browse = demo_browse(directory.path());
    let summary: Value = serde_json::from_slice(&std::fs::read(demo_file("summary.json")).unwrap()).unwrap();
    let expected = summary["expected"]["repositories"].as_array().unwrap();
    let mut per_owner = std::collections::BTreeMap::<String, (u64, u64)>::new();
    for repository in expected {
        let owner = repository["owner"].as_str().unwrap();
        let name = repository["repository"].as_str().unwrap();
        let page = browse.repository(owner, name).unwrap().unwrap_or_else(|| panic!("{owner}/{name} missing"));
        let tags: std::collections::BTreeMap<String, String> =
            page.tags.iter().map(|tag| (tag.name.clone(), tag.digest.clone())).collect();
        let want: std::collections::BTreeMap<String, String> = repository["tags"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(tag, digest)| (tag.clone(), digest.as_str().unwrap().to_string()))
            .collect();
        assert_eq!(tags, want, "{owner}/{name} tags");
        assert_eq!(page.stars, repository["stars"].as_u64().unwrap_or(0), "{owner}/{name} stars");
        assert_eq!(page.manifests, repository["manifests"].as_array().unwrap().len() as u64, "{owner}/{name}");
        assert_eq!(page.pull_name, format!("{owner}/{name}"));
        if repository["page"].is_string() {
            assert!(page.readme.is_some(), "{owner}/{name} has a README");
            assert!(page.description.is_some());
        }
        let entry = per_owner.entry(owner.to_string()).or_default();
        entry.0 += 1;
        entry.1 += page.stars;

        // Every tag opens as a manifest page whose kind matches the record.
        for tag in &page.tags {
            let manifest = browse.manifest(owner, name, &tag.name).unwrap().unwrap();
            assert_eq!(manifest.digest, tag.digest);
            assert!(manifest.tags.contains(&tag.name));
            match &manifest.kind {
                ManifestKind::Index { platforms } => {
                    assert!(tag.multi_arch && platforms.len() > 1, "{owner}/{name}:{} is multi-arch", tag.name)
                }
                ManifestKind::Image { layers, .. } => assert!(!layers.is_empty()),
            }
        }
    }
    for (owner, (repositories, stars)) in per_owner {
        let user = browse.user(&owner).unwrap().unwrap();
        assert_eq!(user.repository_count, repositories, "{owner}");
        assert_eq!(user.stars_received, stars, "{owner}");
        assert!(user.handle_valid && user.joined.is_some(), "{owner}");
    }
    let home = browse.home().unwrap();
    assert_eq!(home.stats.repositories as usize, expected.len());
    assert!(!home.recent.is_empty() && !home.most_starred.is_empty());
    assert!(browse.user("nobody.test").unwrap().is_none());
    assert!(browse.repository("alice.test", "no-such-repo").unwrap().is_none());
    assert!(browse.manifest("alice.test", "hello", "no-such-tag").unwrap().is_none());
}
