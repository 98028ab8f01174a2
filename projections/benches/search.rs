//! Search at scale: 100,000 synthetic repositories (set `ATCR_BENCH_REPOS` for another count).
//!
//! Reports, in this order:
//! - the time to rebuild the index from scratch;
//! - query latency percentiles per kind of query (exact names, typos, prefixes while typing,
//!   README words, phrases, filters, filters with text, each sort), one thread;
//! - the same mixed set from 8 threads at once (what 8 concurrent HTTP connections do to the
//!   engine on this machine);
//! - freshness: from `on_batch` to the change being visible in a search, while batches arrive
//!   steadily.
//!
//! Run: `cargo bench -p atcr-projections --bench search`. Its own harness (not criterion):
//! criterion reports means, and the acceptance criteria are about p99.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use atcr_projections::ProjectionError;
use atcr_projections::browse::SearchDoc;
use atcr_projections::search::{
    FilterClause, SearchFilter, SearchIndex, SearchProjection, SearchRequest, SearchSort, SearchSource,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const KNOWN_NAMES: &[&str] = &[
    "nginx",
    "redis",
    "postgres",
    "alpine",
    "busybox",
    "node",
    "python",
    "golang",
    "traefik",
    "caddy",
    "httpd",
    "memcached",
    "mongo",
    "mysql",
    "grafana",
    "prometheus",
    "alertmanager",
    "jq",
    "curl",
    "runner",
    "frontend",
    "api",
    "worker",
    "backup",
    "docs",
    "proxy",
    "gateway",
    "builder",
    "agent",
    "exporter",
];
const NAME_SUFFIXES: &[&str] = &["", "-proxy", "-server", "-builder", "-dev", "-slim", "-exporter", "-operator"];
const NAMESPACES: &[&str] = &["tools", "ci", "library", "infra", "apps"];
const DOMAINS: &[&str] = &["bsky.social", "test", "example.com", "dev"];
const PLATFORMS: &[&[&str]] = &[
    &["linux/amd64"],
    &["linux/amd64", "linux/arm64"],
    &["linux/amd64", "linux/arm64", "linux/arm/v7", "unknown/unknown"],
    &["linux/arm64/v8"],
    &["windows/amd64"],
    &["linux/amd64", "linux/s390x", "linux/ppc64le"],
];

/// Pronounceable pseudo words, so READMEs have a realistic vocabulary (thousands of words,
/// a few very common).
fn vocabulary(rng: &mut StdRng, count: usize) -> Vec<String> {
    const CONSONANTS: &[&str] =
        &["b", "c", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "st", "tr"];
    const VOWELS: &[&str] = &["a", "e", "i", "o", "u", "ai", "ou"];
    let mut words: Vec<String> = ["fast", "server", "reverse", "proxy", "secure", "image", "container", "build"]
        .iter()
        .map(|word| word.to_string())
        .collect();
    while words.len() < count {
        let syllables = rng.random_range(2..=4);
        let mut word = String::new();
        for _ in 0..syllables {
            word.push_str(CONSONANTS[rng.random_range(0..CONSONANTS.len())]);
            word.push_str(VOWELS[rng.random_range(0..VOWELS.len())]);
        }
        words.push(word);
    }
    words
}

/// Skewed towards the start of the list, like word frequencies.
fn skewed<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    let at = (rng.random::<f64>().powi(3) * items.len() as f64) as usize;
    &items[at.min(items.len() - 1)]
}

/// The repositories and the vocabulary their texts were drawn from (most frequent first).
fn generate(count: usize) -> (Vec<SearchDoc>, Vec<String>) {
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let words = vocabulary(&mut rng, 5000);
    let users = (count / 10).max(1);
    let handles: Vec<String> = (0..users)
        .map(|user| format!("{}{user}.{}", words[rng.random_range(8..words.len())], DOMAINS[user % DOMAINS.len()]))
        .collect();
    let base_time = 1_735_689_600i64; // 2025-01-01
    let mut docs = Vec::with_capacity(count);
    let mut seen = std::collections::HashSet::new();
    while docs.len() < count {
        let user = rng.random_range(0..users);
        let name = match rng.random_range(0..4) {
            0 => {
                format!("{}{}", skewed(&mut rng, KNOWN_NAMES), NAME_SUFFIXES[rng.random_range(0..NAME_SUFFIXES.len())])
            }
            1 => format!("{}/{}", NAMESPACES[rng.random_range(0..NAMESPACES.len())], skewed(&mut rng, KNOWN_NAMES)),
            2 => format!("{}-{}", skewed(&mut rng, &words), skewed(&mut rng, KNOWN_NAMES)),
            _ => skewed(&mut rng, &words).clone(),
        };
        if !seen.insert((user, name.clone())) {
            continue;
        }
        let readme_words = rng.random_range(50..400);
        let mut readme = format!("# {name}\n\n");
        for _ in 0..readme_words {
            readme.push_str(skewed::<String>(&mut rng, &words));
            readme.push(' ');
        }
        let description = (0..rng.random_range(4..12)).map(|_| skewed(&mut rng, &words).as_str()).collect::<Vec<_>>();
        let tag_count = rng.random_range(1..30);
        let mut tags: Vec<String> =
            (0..tag_count).map(|n| format!("v{}.{}.{n}", n / 10, rng.random_range(0..20))).collect();
        tags.push("latest".to_string());
        docs.push(SearchDoc {
            did: format!("did:plc:{user:024}"),
            handle: (user % 50 != 0).then(|| handles[user].clone()),
            repository: name,
            description: Some(description.join(" ")),
            readme: Some(readme),
            annotations: vec![format!("https://git.example.com/{}/{}", handles[user], docs.len())],
            tags,
            platforms: PLATFORMS[rng.random_range(0..PLATFORMS.len())].iter().map(|p| p.to_string()).collect(),
            holds: vec![format!("did:web:hold{:02}.example.com", rng.random_range(0..20))],
            last_push: Some(
                time::OffsetDateTime::from_unix_timestamp(base_time + rng.random_range(0..2 * 365 * 86_400))
                    .expect("time")
                    .format(&time::format_description::well_known::Rfc3339)
                    .expect("format"),
            ),
            stars: (rng.random::<f64>().powi(6) * 5000.0) as u64,
            size: rng.random_range(1_000_000..5_000_000_000),
            manifests: rng.random_range(1..50),
            vulnerabilities: Vec::new(),
        });
    }
    (docs, words)
}

struct MemorySource {
    keys: Vec<(String, String)>,
    docs: HashMap<(String, String), SearchDoc>,
}

impl MemorySource {
    fn new(docs: &[SearchDoc]) -> Self {
        let docs: HashMap<_, _> =
            docs.iter().map(|doc| ((doc.did.clone(), doc.repository.clone()), doc.clone())).collect();
        let mut keys: Vec<_> = docs.keys().cloned().collect();
        keys.sort();
        MemorySource { keys, docs }
    }
}

impl SearchSource for MemorySource {
    fn search_document(&self, did: &str, repository: &str) -> Result<Option<SearchDoc>, ProjectionError> {
        Ok(self.docs.get(&(did.to_string(), repository.to_string())).cloned())
    }

    fn repositories_of(&self, did: &str) -> Result<Vec<String>, ProjectionError> {
        Ok(self.keys.iter().filter(|(owner, _)| owner == did).map(|(_, name)| name.clone()).collect())
    }

    fn repositories_after(
        &self,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<(String, String)>, ProjectionError> {
        let start = match after {
            None => 0,
            Some((did, name)) => self.keys.partition_point(|(d, n)| (d.as_str(), n.as_str()) <= (did, name)),
        };
        Ok(self.keys[start..].iter().take(limit).cloned().collect())
    }
}

fn words(text: &str) -> SearchRequest {
    SearchRequest::words(text)
}

fn filtered(text: &str, filters: Vec<SearchFilter>, sort: SearchSort) -> SearchRequest {
    SearchRequest { filters: filters.into_iter().map(FilterClause::new).collect(), sort, ..words(text) }
}

/// (kind, requests of that kind).
fn query_mix(docs: &[SearchDoc], vocabulary: &[String]) -> Vec<(&'static str, Vec<SearchRequest>)> {
    // Typical words: in a few percent of the READMEs (ranks 100 to 1500 of 5000).
    let typical: Vec<SearchRequest> = [100, 250, 400, 700, 1000, 1500]
        .iter()
        .map(|rank| words(&vocabulary[*rank]))
        .chain([(120, 900), (300, 1200)].iter().map(|(a, b)| words(&format!("{} {}", vocabulary[*a], vocabulary[*b]))))
        .collect();
    // Phrases people copy from a README.
    let phrases: Vec<SearchRequest> = docs
        .iter()
        .step_by(docs.len() / 5 + 1)
        .filter_map(|doc| {
            let readme = doc.readme.as_deref()?;
            let phrase = readme.split_whitespace().skip(6).take(2).collect::<Vec<_>>().join(" ");
            Some(SearchRequest { phrases: vec![phrase], ..SearchRequest::default() })
        })
        .collect();
    let handle = docs.iter().find_map(|doc| doc.handle.clone()).expect("a handle");
    let first_label = handle.split('.').next().unwrap_or(&handle).to_string();
    let arch = |value: &str| SearchFilter::Arch { value: value.into() };
    let since = |seconds: i64| SearchFilter::Pushed { from: Some(seconds), until: None };
    vec![
        ("name", ["nginx", "redis", "postgres-exporter", "tools/jq", "grafana"].map(words).to_vec()),
        ("typo", ["ngnix", "postgers", "prometeus", "graphana", "memcahced"].map(words).to_vec()),
        ("prefix", ["ng", "ngi", "red", "post", "prom"].map(words).to_vec()),
        ("words", typical),
        ("phrase", phrases),
        // The worst case: the most frequent words of the corpus, in nearly every README.
        (
            "common words",
            ["fast server", "reverse proxy", "secure image", "container build", "fast"].map(words).to_vec(),
        ),
        (
            "common phrase",
            ["reverse proxy", "secure image", "fast server"]
                .map(|phrase| SearchRequest { phrases: vec![phrase.to_string()], ..SearchRequest::default() })
                .to_vec(),
        ),
        ("handle", vec![words(&first_label), words(&handle[..handle.len().min(4)])]),
        (
            "filters",
            vec![
                filtered("", vec![arch("arm64")], SearchSort::Relevance),
                filtered("", vec![SearchFilter::User { value: first_label.clone() }], SearchSort::Relevance),
                filtered(
                    "",
                    vec![since(1_767_225_600), SearchFilter::Os { value: "linux".into() }],
                    SearchSort::Relevance,
                ),
                filtered("", vec![SearchFilter::Stars { min: Some(100), max: None }], SearchSort::Relevance),
                filtered(
                    "",
                    vec![SearchFilter::MultiArch, SearchFilter::Hold { value: "hold03.example.com".into() }],
                    SearchSort::Relevance,
                ),
            ],
        ),
        (
            "text+filters",
            vec![
                filtered(
                    "nginx",
                    vec![arch("arm64"), SearchFilter::Stars { min: Some(10), max: None }],
                    SearchSort::Relevance,
                ),
                filtered("proxy", vec![since(1_767_225_600)], SearchSort::Relevance),
                filtered("fast server", vec![SearchFilter::Os { value: "linux".into() }], SearchSort::Relevance),
            ],
        ),
        (
            "sorted",
            vec![
                filtered("", vec![], SearchSort::Recent),
                filtered("", vec![], SearchSort::Stars),
                filtered("", vec![], SearchSort::Size),
                filtered("", vec![], SearchSort::Name),
                filtered("nginx", vec![], SearchSort::Stars),
                filtered("", vec![arch("arm64")], SearchSort::Name),
                SearchRequest { offset: 200, ..filtered("", vec![], SearchSort::Recent) },
            ],
        ),
    ]
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * fraction).round() as usize]
}

fn report(label: &str, mut samples: Vec<Duration>, extra: &str) {
    samples.sort();
    println!(
        "{label:<14} n={:<6} p50={:>8.3}ms p99={:>8.3}ms max={:>8.3}ms {extra}",
        samples.len(),
        percentile(&samples, 0.5).as_secs_f64() * 1e3,
        percentile(&samples, 0.99).as_secs_f64() * 1e3,
        samples.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
}

/// The machine's load, printed with the numbers: other work on the same cores inflates them.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map_or_else(|_| "unknown".to_string(), |load| load.trim().to_string())
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this once with no argument.
    let quick = !std::env::args().any(|arg| arg == "--bench");
    let count: usize = std::env::var("ATCR_BENCH_REPOS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(if quick { 2_000 } else { 100_000 });
    let rounds = if quick { 2 } else { 40 };

    let started = Instant::now();
    let (docs, vocabulary) = generate(count);
    let bytes: usize = docs.iter().map(|doc| doc.readme.as_deref().map_or(0, str::len)).sum();
    println!("cores: {:?}, load average: {}", std::thread::available_parallelism().ok(), load_average());
    println!("generated {count} repositories ({} MB of README) in {:.1?}", bytes / 1_000_000, started.elapsed());
    let source = MemorySource::new(&docs);

    let dir = tempfile::tempdir().expect("tempdir");
    let index = Arc::new(SearchIndex::open(dir.path()).expect("open"));
    let projection = Arc::new(SearchProjection::new(index.clone()));
    let started = Instant::now();
    let rebuilt = projection.rebuild(&source, 1).expect("rebuild");
    println!(
        "rebuild: {} documents in {:.2?} (read+index {:.2?}, commit {:.2?}, merge {:.2?}), {} segment(s)",
        rebuilt.documents,
        started.elapsed(),
        rebuilt.read_and_index,
        rebuilt.commit,
        rebuilt.merge,
        index.segment_count()
    );

    let mix = query_mix(&docs, &vocabulary);
    // Warm the page cache and the term dictionaries.
    for (_, requests) in &mix {
        for request in requests {
            index.search(request).expect("search");
        }
    }
    println!("\none thread, {rounds} rounds per query:");
    let mut everything = Vec::new();
    for (kind, requests) in &mix {
        let mut samples = Vec::new();
        let mut total_hits = 0u64;
        for _ in 0..rounds {
            for request in requests {
                let started = Instant::now();
                let results = index.search(request).expect("search");
                samples.push(started.elapsed());
                total_hits += results.total;
            }
        }
        everything.extend(samples.iter().copied());
        report(kind, samples, &format!("avg total hits {}", total_hits / (rounds as u64 * requests.len() as u64)));
    }
    report("all", everything, "");

    let threads = 8;
    println!("\n{threads} threads at once, the whole mix {rounds} times each:");
    let all_requests: Vec<SearchRequest> = mix.iter().flat_map(|(_, requests)| requests.iter().cloned()).collect();
    let all_requests = Arc::new(all_requests);
    let started = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|worker| {
            let index = index.clone();
            let requests = all_requests.clone();
            std::thread::spawn(move || {
                let mut samples = Vec::new();
                for round in 0..rounds {
                    for at in 0..requests.len() {
                        let request = &requests[(at + worker * 7 + round) % requests.len()];
                        let started = Instant::now();
                        index.search(request).expect("search");
                        samples.push(started.elapsed());
                    }
                }
                samples
            })
        })
        .collect();
    let samples: Vec<Duration> = workers.into_iter().flat_map(|worker| worker.join().expect("worker")).collect();
    let throughput = samples.len() as f64 / started.elapsed().as_secs_f64();
    report("concurrent", samples, &format!("{throughput:.0} searches/s"));

    println!("\nfreshness: a batch every 20 ms, searched for until visible:");
    let mut samples = Vec::new();
    let probes = if quick { 5 } else { 100 };
    let stop = Arc::new(AtomicBool::new(false));
    // Background readers keep the index busy like live traffic would.
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let index = index.clone();
            let requests = all_requests.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut at = 0;
                while !stop.load(Ordering::Relaxed) {
                    index.search(&requests[at % requests.len()]).expect("search");
                    at += 1;
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        })
        .collect();
    let mut fresh = MemorySource::new(&[]);
    for probe in 0..probes {
        let doc = SearchDoc {
            did: "did:plc:fresh".into(),
            handle: Some("fresh.test".into()),
            repository: format!("fresh-{probe}"),
            description: Some("just pushed".into()),
            ..SearchDoc::default()
        };
        let key = (doc.did.clone(), doc.repository.clone());
        fresh.docs.insert(key.clone(), doc.clone());
        fresh.keys.push(key);
        let request =
            filtered("", vec![SearchFilter::Repository { value: doc.repository.clone() }], SearchSort::Relevance);
        let started = Instant::now();
        projection
            .on_batch(&fresh, &[(doc.did.clone(), Some(doc.repository.clone()))], 2 + probe as u64)
            .expect("batch");
        loop {
            if index.search(&request).expect("search").total == 1 {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(5), "fresh-{probe} never became visible");
            std::thread::sleep(Duration::from_millis(1));
        }
        samples.push(started.elapsed());
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        reader.join().expect("reader");
    }
    report("freshness", samples, "(batch handed over → visible)");
    println!("load average: {}", load_average());
}
