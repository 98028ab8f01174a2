//! Search relevance, filters, sorts, pagination and freshness on a deterministic fixture of
//! 300+ repositories. Every expectation is computed from the fixture itself, by code that does
//! not share anything with the index (no tokenizer, no query builder), so a wrong index answer
//! cannot also be the expected one.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use atcr_projections::ProjectionError;
use atcr_projections::browse::SearchDoc;
use atcr_projections::search::{SearchIndex, SearchProjection, SearchSort, SearchSource};
use atcr_query::search::{SearchParams, SearchResponse, SearchService};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const HANDLES: &[Option<&str>] = &[
    Some("alice.test"),
    Some("bob.example.com"),
    Some("carol.dev"),
    Some("dave.bsky.social"),
    Some("erin.test"),
    Some("frank.example.org"),
    Some("grace.test"),
    Some("heidi.dev"),
    Some("ivan.test"),
    Some("judy.example.com"),
    Some("mallory.test"),
    Some("zephyrine.test"),
    None,
];

const NAMES: &[&str] = &[
    "nginx",
    "nginx-proxy",
    "my-nginx-build",
    "library/nginx",
    "redis",
    "postgres",
    "alpine",
    "busybox",
    "node",
    "python",
    "golang",
    "rust-builder",
    "traefik",
    "caddy",
    "httpd",
    "memcached",
    "mongo",
    "mysql",
    "grafana",
    "prometheus",
    "alertmanager",
    "tools/jq",
    "tools/curl",
    "ci/runner",
    "web-frontend",
    "api-server",
    "worker",
    "backup",
    "docs-site",
    "hello-world",
];

const PLATFORMS: &[&[&str]] = &[
    &["linux/amd64"],
    &["linux/amd64", "linux/arm64", "unknown/unknown"],
    &["linux/arm64/v8"],
    &["linux/amd64", "linux/arm/v7", "windows/amd64"],
    &[],
];

const HOLDS: &[&str] = &["did:web:hold01.atcr.io", "did:web:hold02.example.com", "https://hold03.example.net"];

fn did(user: usize) -> String {
    format!("did:plc:user{user:02}")
}

/// Seconds of 2025-06-01T00:00:00Z.
const BASE_TIME: i64 = 1_748_736_000;

fn rfc3339(seconds: i64) -> String {
    OffsetDateTime::from_unix_timestamp(seconds).expect("fixture time").format(&Rfc3339).expect("format")
}

fn seconds(date: &str) -> i64 {
    OffsetDateTime::parse(date, &Rfc3339).expect("test date").unix_timestamp()
}

fn fixture() -> Vec<SearchDoc> {
    let mut docs = Vec::new();
    let mut serial = 0i64;
    for (user, handle) in HANDLES.iter().enumerate() {
        for (number, name) in NAMES.iter().enumerate() {
            if (user * 7 + number * 3) % 5 == 0 {
                continue;
            }
            serial += 1;
            let mix = user * 31 + number * 17;
            let owner = handle.unwrap_or("someone");
            let mut readme = format!("# {name}\n\nThis image packages {name} for everyday use.");
            if mix % 7 == 0 {
                readme.push_str(" It works as a fast reverse proxy in front of your services.");
            }
            if mix % 11 == 0 {
                readme.push_str(" Reverse fast proxy, said nobody.");
            }
            if user == 3 && number == 4 {
                readme.push_str(" Mascot: a quokka.");
            }
            let mut tags = vec!["latest".to_string(), format!("v{}.{}", number % 4, user)];
            if mix % 3 == 0 {
                tags.push("alpine".to_string());
            }
            docs.push(SearchDoc {
                did: did(user),
                handle: handle.map(str::to_string),
                repository: name.to_string(),
                description: Some(format!("{name} container image maintained by {owner}")),
                readme: Some(readme),
                annotations: vec![format!("https://git.example.com/{owner}/{name}")],
                tags,
                platforms: PLATFORMS[mix % PLATFORMS.len()].iter().map(|p| p.to_string()).collect(),
                holds: vec![HOLDS[mix % HOLDS.len()].to_string()],
                last_push: (serial % 50 != 0).then(|| rfc3339(BASE_TIME + serial * 37 * 3600 + (mix as i64 % 60))),
                stars: ((mix * 13) % 200) as u64,
                size: ((mix * 7_919_777) % 1_000_000_000) as u64 + 1_000,
                manifests: (mix % 9) as u64 + 1,
                vulnerabilities: Vec::new(),
            });
        }
    }
    docs
}

#[derive(Default)]
struct MemorySource {
    docs: Mutex<BTreeMap<(String, String), SearchDoc>>,
}

impl MemorySource {
    fn with(docs: &[SearchDoc]) -> Self {
        let source = MemorySource::default();
        for doc in docs {
            source.put(doc.clone());
        }
        source
    }

    fn put(&self, doc: SearchDoc) {
        self.docs.lock().unwrap().insert((doc.did.clone(), doc.repository.clone()), doc);
    }

    fn remove(&self, did: &str, repository: &str) {
        self.docs.lock().unwrap().remove(&(did.to_string(), repository.to_string()));
    }
}

impl SearchSource for MemorySource {
    fn search_document(&self, did: &str, repository: &str) -> Result<Option<SearchDoc>, ProjectionError> {
        Ok(self.docs.lock().unwrap().get(&(did.to_string(), repository.to_string())).cloned())
    }

    fn repositories_of(&self, did: &str) -> Result<Vec<String>, ProjectionError> {
        Ok(self.docs.lock().unwrap().keys().filter(|(owner, _)| owner == did).map(|(_, name)| name.clone()).collect())
    }

    fn repositories_after(
        &self,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<(String, String)>, ProjectionError> {
        let docs = self.docs.lock().unwrap();
        let after = after.map(|(did, name)| (did.to_string(), name.to_string()));
        Ok(docs.keys().filter(|key| after.as_ref().is_none_or(|after| *key > after)).take(limit).cloned().collect())
    }
}

struct Fixture {
    docs: Vec<SearchDoc>,
    service: SearchService,
    _dir: tempfile::TempDir,
}

fn build() -> Fixture {
    let docs = fixture();
    assert!(docs.len() >= 200, "the fixture has {} repositories", docs.len());
    let dir = tempfile::tempdir().expect("tempdir");
    let index = Arc::new(SearchIndex::open(dir.path()).expect("open index"));
    let projection = SearchProjection::new(index.clone());
    assert!(projection.needs_rebuild(1));
    let report = projection.rebuild(&MemorySource::with(&docs), 1).expect("rebuild");
    assert_eq!(report.documents, docs.len() as u64);
    assert!(!projection.needs_rebuild(1));
    Fixture { docs, service: SearchService::new(index), _dir: dir }
}

type Key = (String, String);

fn key(doc: &SearchDoc) -> Key {
    (doc.did.clone(), doc.repository.clone())
}

fn search(fixture: &Fixture, q: &str, sort: Option<&str>, page: usize, per_page: usize) -> SearchResponse {
    let params =
        SearchParams { q: q.to_string(), sort: sort.map(str::to_string), page: Some(page), per_page: Some(per_page) };
    fixture.service.search(&params).expect("search")
}

/// Every result of a query, in order, page by page.
fn all(fixture: &Fixture, q: &str, sort: Option<&str>) -> Vec<Key> {
    let mut out = Vec::new();
    for page in 1.. {
        let response = search(fixture, q, sort, page, 100);
        assert!(response.errors.is_empty(), "{q}: {:?}", response.errors);
        if response.hits.is_empty() {
            assert_eq!(response.total as usize, out.len(), "{q}: total");
            return out;
        }
        out.extend(response.hits.iter().map(|hit| (hit.did.clone(), hit.repository.clone())));
    }
    unreachable!()
}

fn expected(fixture: &Fixture, wanted: impl Fn(&SearchDoc) -> bool) -> BTreeSet<Key> {
    fixture.docs.iter().filter(|doc| wanted(doc)).map(key).collect()
}

fn as_set(keys: &[Key]) -> BTreeSet<Key> {
    let set: BTreeSet<Key> = keys.iter().cloned().collect();
    assert_eq!(set.len(), keys.len(), "a repository came back twice");
    set
}

/// (os, arch, variant) of the real platforms of a document.
fn platforms(doc: &SearchDoc) -> Vec<(String, String, Option<String>)> {
    doc.platforms
        .iter()
        .filter_map(|platform| {
            let mut parts = platform.split('/');
            let (os, arch) = (parts.next()?.to_string(), parts.next()?.to_string());
            (os != "unknown").then(|| (os, arch, parts.next().map(str::to_string)))
        })
        .collect()
}

fn pushed(doc: &SearchDoc) -> Option<i64> {
    doc.last_push.as_deref().map(seconds)
}

fn handle_or_did(doc: &SearchDoc) -> String {
    doc.handle.clone().unwrap_or_else(|| doc.did.clone()).to_lowercase()
}

fn name_order(doc: &SearchDoc) -> (String, String, String) {
    (doc.repository.to_lowercase(), handle_or_did(doc), doc.did.clone())
}

#[test]
fn the_fixture_is_big_and_varied_enough() {
    let fixture = fixture();
    assert!(fixture.len() >= 200);
    let exact_nginx = fixture.iter().filter(|doc| doc.repository == "nginx").count();
    assert!(exact_nginx >= 5, "{exact_nginx} nginx repositories");
    assert!(fixture.iter().any(|doc| doc.last_push.is_none()));
    assert!(fixture.iter().any(|doc| doc.handle.is_none()));
}

#[test]
fn exact_repository_name_ranks_first() {
    let fixture = build();
    let results = all(&fixture, "nginx", None);
    let named = |name: &str| fixture.docs.iter().filter(|doc| doc.repository == name).count();
    let exact = named("nginx");
    let leaf = named("library/nginx");
    let names: Vec<&str> = results.iter().map(|(_, name)| name.as_str()).collect();
    assert!(names[..exact].iter().all(|name| *name == "nginx"), "{names:?}");
    assert!(names[exact..exact + leaf].iter().all(|name| *name == "library/nginx"), "{names:?}");
    // Everything with nginx in the name comes back, and the rest only matched elsewhere.
    let with_word = expected(&fixture, |doc| doc.repository.contains("nginx"));
    assert!(with_word.is_subset(&as_set(&results)));
    assert!(names[..with_word.len()].iter().all(|name| name.contains("nginx")), "{names:?}");

    for name in ["nginx-proxy", "my-nginx-build", "tools/jq", "hello-world"] {
        let results = all(&fixture, name, None);
        let count = named(name);
        assert!(count > 0);
        assert!(results[..count].iter().all(|(_, found)| found == name), "{name}: {results:?}");
    }
    // The last segment alone finds the nested name first.
    let results = all(&fixture, "jq", None);
    assert_eq!(results[0].1, "tools/jq");

    // owner/name is exact too.
    let alice_has_redis = fixture.docs.iter().any(|doc| doc.did == did(0) && doc.repository == "redis");
    assert!(alice_has_redis);
    let results = all(&fixture, "alice.test/redis", None);
    assert_eq!(results[0], (did(0), "redis".to_string()));
}

#[test]
fn typos_in_names_are_forgiven() {
    let fixture = build();
    for (typo, name) in
        [("ngnix", "nginx"), ("postgers", "postgres"), ("prometeus", "prometheus"), ("graphana", "grafana")]
    {
        let results = all(&fixture, typo, None);
        let wanted = expected(&fixture, |doc| doc.repository == name);
        assert!(!wanted.is_empty());
        assert!(wanted.is_subset(&as_set(&results)), "{typo} should find every {name}");
        assert!(results[0].1.contains(name), "{typo}: first is {:?}", results[0]);
    }
    // Short words are not fuzzed: one edit changes them too much.
    assert!(all(&fixture, "nod", None).iter().all(|(_, name)| name.starts_with("nod")));
}

#[test]
fn a_handle_prefix_finds_exactly_that_users_repositories() {
    let fixture = build();
    for (prefix, user) in [("zephy", 11), ("zephyrine", 11), ("alic", 0), ("mallory", 10), ("mallory.test", 10)] {
        let results = as_set(&all(&fixture, prefix, None));
        let wanted = expected(&fixture, |doc| doc.did == did(user));
        assert!(!wanted.is_empty());
        assert_eq!(results, wanted, "{prefix}");
    }
}

#[test]
fn words_phrases_and_exclusions() {
    let fixture = build();
    let readme_has = |doc: &SearchDoc, text: &str| doc.readme.as_deref().is_some_and(|readme| readme.contains(text));

    let results = as_set(&all(&fixture, "quokka", None));
    assert_eq!(results, expected(&fixture, |doc| readme_has(doc, "quokka")));
    assert_eq!(results.len(), 1);

    let results = as_set(&all(&fixture, "\"fast reverse proxy\"", None));
    let wanted = expected(&fixture, |doc| readme_has(doc, "fast reverse proxy"));
    assert!(!wanted.is_empty());
    assert_eq!(results, wanted);

    // Without quotes, the words may come in any order.
    let results = as_set(&all(&fixture, "fast reverse proxy ", None));
    let wanted =
        expected(&fixture, |doc| readme_has(doc, "fast reverse proxy") || readme_has(doc, "Reverse fast proxy"));
    assert_eq!(results, wanted);

    // Excluded words: nginx, but nothing that mentions proxy anywhere.
    let results = as_set(&all(&fixture, "nginx -proxy ", None));
    let mentions_proxy = |doc: &SearchDoc| {
        doc.repository.contains("proxy")
            || doc.description.as_deref().is_some_and(|text| text.to_lowercase().contains("proxy"))
            || readme_has(doc, "proxy")
            || doc.annotations.iter().any(|text| text.contains("proxy"))
    };
    let mentions_nginx = |doc: &SearchDoc| doc.repository.contains("nginx") || readme_has(doc, "nginx");
    assert_eq!(results, expected(&fixture, |doc| mentions_nginx(doc) && !mentions_proxy(doc)));
}

#[test]
fn filters_return_exactly_the_expected_sets() {
    let fixture = build();
    let hold = |doc: &SearchDoc, name: &str| doc.holds.iter().any(|hold| hold == name);
    let has_platform = |doc: &SearchDoc, test: &dyn Fn(&str, &str, Option<&str>) -> bool| {
        platforms(doc).iter().any(|(os, arch, variant)| test(os, arch, variant.as_deref()))
    };
    let pushed_in = |doc: &SearchDoc, from: Option<&str>, until: Option<&str>| {
        pushed(doc).is_some_and(|at| {
            from.is_none_or(|from| at >= seconds(from)) && until.is_none_or(|until| at < seconds(until))
        })
    };
    type Check<'a> = Box<dyn Fn(&SearchDoc) -> bool + 'a>;
    let cases: Vec<(&str, Check)> = vec![
        ("user:alice", Box::new(|doc| doc.did == did(0))),
        ("user:alice.test", Box::new(|doc| doc.did == did(0))),
        ("user:@bob.example.com", Box::new(|doc| doc.did == did(1))),
        ("user:dave", Box::new(|doc| doc.did == did(3))),
        ("user:did:plc:user12", Box::new(|doc| doc.did == did(12))),
        ("did:plc:user12", Box::new(|doc| doc.did == did(12))),
        ("user:ma*", Box::new(|doc| doc.did == did(10))),
        ("user:nobody", Box::new(|_| false)),
        ("hold:hold01.atcr.io", Box::new(move |doc| hold(doc, HOLDS[0]))),
        ("hold:did:web:hold02.example.com", Box::new(move |doc| hold(doc, HOLDS[1]))),
        ("hold:hold03.example.net", Box::new(move |doc| hold(doc, HOLDS[2]))),
        ("os:windows", Box::new(move |doc| has_platform(doc, &|os, _, _| os == "windows"))),
        ("os:linux", Box::new(move |doc| has_platform(doc, &|os, _, _| os == "linux"))),
        ("arch:arm64", Box::new(move |doc| has_platform(doc, &|_, arch, _| arch == "arm64"))),
        ("arch:aarch64", Box::new(move |doc| has_platform(doc, &|_, arch, _| arch == "arm64"))),
        ("arch:x86_64", Box::new(move |doc| has_platform(doc, &|_, arch, _| arch == "amd64"))),
        ("arch:arm", Box::new(move |doc| has_platform(doc, &|_, arch, _| arch == "arm"))),
        ("arch:arm/v7", Box::new(move |doc| has_platform(doc, &|_, arch, v| arch == "arm" && v == Some("v7")))),
        (
            "platform:linux/arm64",
            Box::new(move |doc| has_platform(doc, &|os, arch, _| os == "linux" && arch == "arm64")),
        ),
        (
            "platform:windows/amd64",
            Box::new(move |doc| has_platform(doc, &|os, arch, _| os == "windows" && arch == "amd64")),
        ),
        ("-arch:amd64", Box::new(move |doc| !has_platform(doc, &|_, arch, _| arch == "amd64"))),
        ("is:multiarch", Box::new(|doc| platforms(doc).len() > 1)),
        ("tag:alpine", Box::new(|doc| doc.tags.iter().any(|tag| tag == "alpine"))),
        ("tag:v2.3", Box::new(|doc| doc.tags.iter().any(|tag| tag == "v2.3"))),
        ("repo:nginx", Box::new(|doc| doc.repository == "nginx" || doc.repository == "library/nginx")),
        ("repo:tools/*", Box::new(|doc| doc.repository.starts_with("tools/"))),
        ("repo:nginx*", Box::new(|doc| doc.repository.starts_with("nginx"))),
        ("pushed:>2026-01-01", Box::new(move |doc| pushed_in(doc, Some("2026-01-02T00:00:00Z"), None))),
        ("pushed:>=2026-01-01", Box::new(move |doc| pushed_in(doc, Some("2026-01-01T00:00:00Z"), None))),
        ("pushed:<2026-06-01", Box::new(move |doc| pushed_in(doc, None, Some("2026-06-01T00:00:00Z")))),
        ("pushed:<=2025-09-30", Box::new(move |doc| pushed_in(doc, None, Some("2025-10-01T00:00:00Z")))),
        (
            "pushed:2026-01-01..2026-03-01",
            Box::new(move |doc| pushed_in(doc, Some("2026-01-01T00:00:00Z"), Some("2026-03-02T00:00:00Z"))),
        ),
        (
            "pushed:2026-02",
            Box::new(move |doc| pushed_in(doc, Some("2026-02-01T00:00:00Z"), Some("2026-03-01T00:00:00Z"))),
        ),
        ("stars:>100", Box::new(|doc| doc.stars > 100)),
        ("stars:>=100", Box::new(|doc| doc.stars >= 100)),
        ("stars:<10", Box::new(|doc| doc.stars < 10)),
        ("stars:10..20", Box::new(|doc| (10..=20).contains(&doc.stars))),
        ("stars:0", Box::new(|doc| doc.stars == 0)),
        ("size:<100MB", Box::new(|doc| doc.size < 100_000_000)),
        ("size:>500MiB", Box::new(|doc| doc.size > 500 * 1024 * 1024)),
        (
            "user:bob arch:arm64 stars:>50",
            Box::new(move |doc| {
                doc.did == did(1) && has_platform(doc, &|_, arch, _| arch == "arm64") && doc.stars > 50
            }),
        ),
        (
            "nginx os:linux -user:carol",
            Box::new(move |doc| {
                let text =
                    doc.repository.contains("nginx") || doc.readme.as_deref().is_some_and(|r| r.contains("nginx"));
                text && has_platform(doc, &|os, _, _| os == "linux") && doc.did != did(2)
            }),
        ),
    ];
    for (query, check) in cases {
        let wanted = expected(&fixture, &check);
        if query != "user:nobody" {
            assert!(!wanted.is_empty() && wanted.len() < fixture.docs.len(), "{query}: a case that cannot fail");
        }
        for sort in [None, Some("name"), Some("stars")] {
            let results = as_set(&all(&fixture, query, sort));
            assert_eq!(results, wanted, "{query} (sort {sort:?}): {} found, {} expected", results.len(), wanted.len());
        }
    }
}

#[test]
fn sorts_return_exactly_the_expected_order() {
    let fixture = build();
    let ordered = |mut docs: Vec<&SearchDoc>, order: &dyn Fn(&SearchDoc, &SearchDoc) -> std::cmp::Ordering| {
        docs.sort_by(|a, b| order(a, b));
        docs.into_iter().map(key).collect::<Vec<_>>()
    };
    let recent =
        |a: &SearchDoc, b: &SearchDoc| (Reverse(pushed(a)), name_order(a)).cmp(&(Reverse(pushed(b)), name_order(b)));
    let by_number = |number: fn(&SearchDoc) -> u64| {
        move |a: &SearchDoc, b: &SearchDoc| {
            (Reverse(number(a)), Reverse(pushed(a)), name_order(a)).cmp(&(
                Reverse(number(b)),
                Reverse(pushed(b)),
                name_order(b),
            ))
        }
    };
    let by_name = |a: &SearchDoc, b: &SearchDoc| name_order(a).cmp(&name_order(b));

    for filter in ["", "arch:arm64", "user:alice", "pushed:>2026-01-01", "-os:windows"] {
        let docs: Vec<&SearchDoc> = {
            let set = as_set(&all(&fixture, filter, Some("name")));
            fixture.docs.iter().filter(|doc| set.contains(&key(doc))).collect()
        };
        assert!(!docs.is_empty());
        assert_eq!(all(&fixture, filter, Some("recent")), ordered(docs.clone(), &recent), "{filter} recent");
        assert_eq!(
            all(&fixture, filter, Some("stars")),
            ordered(docs.clone(), &by_number(|doc| doc.stars)),
            "{filter} stars"
        );
        assert_eq!(
            all(&fixture, filter, Some("size")),
            ordered(docs.clone(), &by_number(|doc| doc.size)),
            "{filter} size"
        );
        assert_eq!(all(&fixture, filter, Some("name")), ordered(docs.clone(), &by_name), "{filter} name");
        // Nothing to rank without text: relevance means newest first.
        assert_eq!(all(&fixture, filter, None), ordered(docs.clone(), &recent), "{filter} default");
        assert_eq!(search(&fixture, filter, None, 1, 5).sort, SearchSort::Recent);
    }
    // sort: in the query wins over the parameter.
    assert_eq!(all(&fixture, "sort:stars user:erin", Some("name")), all(&fixture, "user:erin", Some("stars")));
    // Sorting text results keeps exactly the matching set.
    let relevance = as_set(&all(&fixture, "nginx", None));
    let by_stars = all(&fixture, "nginx", Some("stars"));
    assert_eq!(as_set(&by_stars), relevance);
    let stars: Vec<u64> = by_stars
        .iter()
        .map(|key| fixture.docs.iter().find(|doc| (doc.did.clone(), doc.repository.clone()) == *key).unwrap().stars)
        .collect();
    assert!(stars.windows(2).all(|pair| pair[0] >= pair[1]), "{stars:?}");
}

#[test]
fn pages_slice_one_order() {
    let fixture = build();
    let everything = all(&fixture, "", Some("name"));
    assert_eq!(everything.len(), fixture.docs.len());
    let first = search(&fixture, "", Some("name"), 1, 7);
    assert_eq!(first.total as usize, fixture.docs.len());
    assert_eq!(first.pages, fixture.docs.len().div_ceil(7));
    let mut paged = Vec::new();
    for page in 1..=first.pages {
        let response = search(&fixture, "", Some("name"), page, 7);
        assert_eq!(response.page, page);
        paged.extend(response.hits.into_iter().map(|hit| (hit.did, hit.repository)));
    }
    assert_eq!(paged, everything);
    assert!(search(&fixture, "", Some("name"), first.pages + 1, 7).hits.is_empty());
    // per_page is capped.
    assert_eq!(search(&fixture, "", None, 1, 10_000).hits.len(), 100);
}

#[test]
fn hits_carry_what_a_results_row_shows() {
    let fixture = build();
    let response = search(&fixture, "alice.test/redis", None, 1, 1);
    let hit = &response.hits[0];
    let doc = fixture.docs.iter().find(|doc| doc.did == did(0) && doc.repository == "redis").unwrap();
    assert_eq!(hit.handle.as_deref(), Some("alice.test"));
    assert_eq!(hit.description, doc.description);
    assert_eq!(hit.tags, doc.tags);
    assert_eq!(hit.tag_count, doc.tags.len() as u64);
    assert_eq!(hit.platforms, doc.platforms);
    assert_eq!(hit.holds, doc.holds);
    assert_eq!(hit.last_push, doc.last_push);
    assert_eq!((hit.stars, hit.size, hit.manifests), (doc.stars, doc.size, doc.manifests));
    assert!(hit.score.is_some());
    let json = serde_json::to_value(&response).expect("json");
    assert_eq!(json["hits"][0]["repository"], "redis");
    assert_eq!(json["sort"], "relevance");
}

#[test]
fn problems_are_reported_and_the_rest_still_runs() {
    let fixture = build();
    let response = search(&fixture, "user:alice pushed:>2026-13-01 color:blue", Some("sideways"), 1, 100);
    assert_eq!(response.errors.len(), 2, "{:?}", response.errors);
    assert_eq!(response.warnings.len(), 1, "{:?}", response.warnings);
    // color:blue is searched as text, which nothing contains.
    assert_eq!(response.total, 0);
    let response = search(&fixture, "user:alice pushed:>2026-13-01", None, 1, 100);
    assert_eq!(
        as_set(&response.hits.iter().map(|h| (h.did.clone(), h.repository.clone())).collect::<Vec<_>>()),
        expected(&fixture, |doc| doc.did == did(0))
    );
    // Hostile input answers, quickly, without panicking.
    let long_words =
        (0..40).map(|n| format!("{}{n}", "qwertyuiopasdfghjklzxcvbnm".repeat(2))).collect::<Vec<_>>().join(" ");
    let typos = (0..40).map(|n| format!("ngnixprometeus{n}")).collect::<Vec<_>>().join(" ");
    for q in [
        "\u{0}\u{1b}[31m",
        &"nginx ".repeat(500),
        "\"",
        "-",
        "*",
        "~!@#$%^&*()",
        "user:*",
        "repo:*",
        &long_words,
        &typos,
        &"\"a b c d e f g h i j k l m n o p\" ".repeat(40),
    ] {
        let started = Instant::now();
        let response = search(&fixture, q, None, 1, 10);
        assert!(started.elapsed() < Duration::from_secs(1), "{q:?} took {:?}", started.elapsed());
        let _ = response.total;
    }
}

#[test]
fn changes_are_searchable_within_a_second() {
    let fixture = fixture();
    let dir = tempfile::tempdir().expect("tempdir");
    let index = Arc::new(SearchIndex::open(dir.path()).expect("open"));
    let projection = SearchProjection::new(index.clone());
    let source = MemorySource::with(&fixture);
    projection.rebuild(&source, 10).expect("rebuild");
    let service = SearchService::new(index.clone());
    let find = |q: &str| -> Vec<Key> {
        let params = SearchParams { q: q.to_string(), per_page: Some(100), ..SearchParams::default() };
        service.search(&params).expect("search").hits.into_iter().map(|hit| (hit.did, hit.repository)).collect()
    };
    let wait_for = |q: &str, wanted: &dyn Fn(&[Key]) -> bool| -> Duration {
        let started = Instant::now();
        loop {
            if wanted(&find(q)) {
                return started.elapsed();
            }
            assert!(started.elapsed() < Duration::from_secs(1), "{q}: not visible after 1 s");
            std::thread::sleep(Duration::from_millis(5));
        }
    };

    // A new repository.
    let new = SearchDoc {
        did: did(0),
        handle: Some("alice.test".into()),
        repository: "brand-new-thing".into(),
        description: Some("a fresh image".into()),
        platforms: vec!["linux/riscv64".into()],
        ..SearchDoc::default()
    };
    source.put(new.clone());
    let started = Instant::now();
    projection.on_batch(&source, &[(new.did.clone(), Some(new.repository.clone()))], 11).expect("batch");
    let visible = wait_for("brand-new-thing", &|hits| hits.contains(&key(&new)));
    assert!(started.elapsed() < Duration::from_secs(1), "visible after {visible:?}");
    assert_eq!(find("arch:riscv64"), vec![key(&new)]);

    // A burst of batches: each one is visible within a second of its own batch, and the index
    // ends at the last checkpoint.
    let mut slowest = Duration::ZERO;
    for round in 0..30u64 {
        let doc = SearchDoc {
            did: did(1),
            handle: Some("bob.example.com".into()),
            repository: format!("burst-{round}"),
            ..SearchDoc::default()
        };
        source.put(doc.clone());
        let started = Instant::now();
        projection.on_batch(&source, &[(doc.did.clone(), Some(doc.repository.clone()))], 12 + round).expect("batch");
        wait_for(&format!("repo:burst-{round}"), &|hits| hits.contains(&key(&doc)));
        slowest = slowest.max(started.elapsed());
    }
    assert!(slowest < Duration::from_secs(1), "slowest {slowest:?}");
    projection.flush().expect("flush");
    assert_eq!(index.checkpoint(), Some(41));
    assert!(!projection.needs_rebuild(41));
    assert!(projection.needs_rebuild(42));

    // A deleted repository disappears.
    source.remove(&new.did, &new.repository);
    projection.on_batch(&source, &[(new.did.clone(), Some(new.repository.clone()))], 42).expect("batch");
    wait_for("arch:riscv64", &|hits| hits.is_empty());

    // A handle change re-indexes every repository of the DID, and drops the ones that are gone.
    let carol: Vec<SearchDoc> = fixture.iter().filter(|doc| doc.did == did(2)).cloned().collect();
    let dropped = carol[0].clone();
    source.remove(&dropped.did, &dropped.repository);
    for doc in &carol[1..] {
        source.put(SearchDoc { handle: Some("caroline.example".into()), ..doc.clone() });
    }
    projection.on_batch(&source, &[(did(2), None)], 43).expect("batch");
    wait_for("user:caroline.example", &|hits| hits.len() == carol.len() - 1);
    assert!(find("user:carol.dev").is_empty());
    assert!(!find("user:caroline").contains(&key(&dropped)));
}

#[test]
fn the_checkpoint_survives_a_restart_and_a_mismatch_asks_for_a_rebuild() {
    let docs = fixture();
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let index = Arc::new(SearchIndex::open(dir.path()).expect("open"));
        let projection = SearchProjection::new(index.clone());
        projection.rebuild(&MemorySource::with(&docs), 500).expect("rebuild");
        let extra = SearchDoc { did: did(5), repository: "late".into(), ..SearchDoc::default() };
        let source = MemorySource::with(std::slice::from_ref(&extra));
        projection.on_batch(&source, &[(extra.did.clone(), Some(extra.repository.clone()))], 501).expect("batch");
        // Dropping the projection commits what is pending.
    }
    let index = Arc::new(SearchIndex::open(dir.path()).expect("reopen"));
    assert_eq!(index.checkpoint(), Some(501));
    assert_eq!(index.num_docs(), docs.len() as u64 + 1);
    let projection = SearchProjection::new(index.clone());
    assert!(!projection.needs_rebuild(501));
    assert!(projection.needs_rebuild(600));
    // A rebuild replaces everything.
    let fewer = &docs[..50];
    assert_eq!(projection.rebuild(&MemorySource::with(fewer), 600).expect("rebuild").documents, 50);
    assert_eq!(index.num_docs(), 50);
    assert_eq!(index.checkpoint(), Some(600));
}

/// A source that fails after a number of documents, like a views read error mid-rebuild.
struct FailingSource {
    inner: MemorySource,
    budget: Mutex<usize>,
}

impl SearchSource for FailingSource {
    fn search_document(&self, did: &str, repository: &str) -> Result<Option<SearchDoc>, ProjectionError> {
        let mut budget = self.budget.lock().unwrap();
        if *budget == 0 {
            return Err(ProjectionError::Corrupt("injected failure".into()));
        }
        *budget -= 1;
        self.inner.search_document(did, repository)
    }

    fn repositories_of(&self, did: &str) -> Result<Vec<String>, ProjectionError> {
        self.inner.repositories_of(did)
    }

    fn repositories_after(
        &self,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<(String, String)>, ProjectionError> {
        self.inner.repositories_after(after, limit)
    }
}

#[test]
fn a_failed_rebuild_publishes_nothing_and_still_asks_for_a_rebuild() {
    let docs = fixture();
    let dir = tempfile::tempdir().expect("tempdir");
    let index = Arc::new(SearchIndex::open(dir.path()).expect("open"));
    let projection = SearchProjection::new(index.clone());
    projection.rebuild(&MemorySource::with(&docs[..100]), 7).expect("rebuild");

    let failing = FailingSource { inner: MemorySource::with(&docs), budget: Mutex::new(150) };
    assert!(projection.rebuild(&failing, 8).is_err());
    assert_eq!(index.num_docs(), 100);
    assert_eq!(index.checkpoint(), Some(7));
    assert!(projection.needs_rebuild(8));

    // A later batch commits its own change, not the half-built rebuild.
    let extra = SearchDoc { did: did(4), repository: "after-failure".into(), ..SearchDoc::default() };
    let source = MemorySource::with(std::slice::from_ref(&extra));
    projection.on_batch(&source, &[(extra.did.clone(), Some(extra.repository.clone()))], 9).expect("batch");
    projection.flush().expect("flush");
    assert_eq!(index.num_docs(), 101);
}
