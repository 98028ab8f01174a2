//! `atcr bench webhooks`: webhook fan-out on loopback. Appends manifest pushes to a fresh log at
//! a fixed rate while the real delivery pipeline (classifier, one worker per subscription, the
//! group committer, signed POSTs through the policy-bound client) sends each to every
//! subscription; a receiver on loopback measures each delivery's latency from the event's
//! append (its `received_at_us`) to its arrival. Issue 8's target: 100 subscriptions at
//! 1,000 events/s, p99 < 1 s.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use tokio_util::sync::CancellationToken;

use atcr_ingest::policy::UrlPolicy;
use atcr_ingest::webhooks::{self, DeliveryConfig, Sender, Subscription, WebhookStore};
use atcr_storage::records::MANIFEST;
use atcr_storage::{AppendBatch, Event, EventBody, EventLog, PutAction, Source, now_micros};

#[derive(Debug, clap::Args)]
pub struct WebhooksBenchArgs {
    /// Subscriptions, each wanting every event.
    #[arg(long, default_value_t = 100)]
    subscriptions: usize,
    /// Events appended per second.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// For this long.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Each subscription's `batch_max` (up to this many waiting events per request); default:
    /// one event per request.
    #[arg(long)]
    batch_max: Option<u32>,
}

#[derive(Default)]
struct Received {
    latencies_us: Mutex<Vec<u64>>,
    requests: std::sync::atomic::AtomicU64,
}

/// The receiver reads only what it measures (serde skips the rest of the body).
#[derive(serde::Deserialize)]
struct Stamp {
    received_at_us: i64,
}

#[derive(serde::Deserialize)]
struct Delivery {
    event: Stamp,
}

#[derive(serde::Deserialize)]
struct Batch {
    deliveries: Vec<Delivery>,
}

async fn hook(State(received): State<Arc<Received>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let now = now_micros();
    let sent: Vec<i64> = if headers.contains_key(webhooks::BATCH_HEADER) {
        let Ok(batch) = serde_json::from_slice::<Batch>(&body) else { return StatusCode::BAD_REQUEST };
        batch.deliveries.iter().map(|delivery| delivery.event.received_at_us).collect()
    } else {
        let Ok(delivery) = serde_json::from_slice::<Delivery>(&body) else { return StatusCode::BAD_REQUEST };
        vec![delivery.event.received_at_us]
    };
    received.requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if let Ok(mut latencies) = received.latencies_us.lock() {
        latencies.extend(sent.into_iter().map(|sent| u64::try_from(now - sent).unwrap_or(0)));
    }
    StatusCode::OK
}

/// A DAG-CBOR map of short text keys and values (keys given in DAG-CBOR order: by length, then
/// bytes), enough for a manifest record the classifier accepts.
fn cbor_text_map(entries: &[(&str, &str)]) -> Vec<u8> {
    fn text(out: &mut Vec<u8>, value: &str) {
        let length = value.len();
        match length {
            0..=23 => out.push(0x60 | length as u8),
            24..=255 => out.extend([0x78, length as u8]),
            _ => out.extend([0x79, (length >> 8) as u8, length as u8]),
        }
        out.extend_from_slice(value.as_bytes());
    }
    let mut out = vec![0xa0 | entries.len() as u8];
    for (key, value) in entries {
        text(&mut out, key);
        text(&mut out, value);
    }
    out
}

fn manifest_push(index: u64) -> Event {
    let digest = format!("sha256:{index:064x}");
    let record = cbor_text_map(&[
        ("$type", MANIFEST),
        ("digest", &digest),
        ("mediaType", "application/vnd.oci.image.manifest.v1+json"),
        ("repository", "bench"),
    ]);
    Event {
        source: Source::Firehose,
        upstream_seq: None,
        did: "did:plc:webhookbench".into(),
        rev: None,
        upstream_time: None,
        received_at_us: now_micros(),
        commit_cid: None,
        body: EventBody::RecordPut {
            collection: MANIFEST.into(),
            rkey: format!("{index:064x}"),
            cid: "bafybench".into(),
            action: PutAction::Create,
            record,
        },
    }
}

fn percentile(sorted: &[u64], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 * fraction).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index] as f64 / 1000.0
}

pub async fn bench_webhooks(args: WebhooksBenchArgs) -> anyhow::Result<()> {
    let directory = tempfile::tempdir()?;
    let log = Arc::new(EventLog::open(&directory.path().join("log.redb"))?);
    let store = Arc::new(WebhookStore::open(directory.path())?);

    let received = Arc::new(Received::default());
    let app = axum::Router::new().route("/hook", axum::routing::post(hook)).with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let subscriptions: Vec<Subscription> = (0..args.subscriptions)
        .map(|index| Subscription {
            id: format!("bench{index}"),
            url: url.clone(),
            secret: "bench".into(),
            events: Vec::new(),
            did: None,
            repository: None,
            from_beginning: true,
            batch_max: args.batch_max,
            generation: None,
        })
        .collect();
    let sender = Sender::new(UrlPolicy { allow_loopback: true }, DeliveryConfig::default())?;
    let shutdown = CancellationToken::new();
    let pipeline = tokio::spawn(webhooks::run(
        log.clone(),
        store.clone(),
        sender,
        move || Ok(subscriptions.clone()),
        shutdown.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Appends in 10 ms ticks, each a group of rate/100 events (one durable transaction).
    let total = args.rate * args.seconds;
    let per_tick = (args.rate / 100).max(1);
    let append_log = log.clone();
    let appender = tokio::task::spawn_blocking(move || -> anyhow::Result<Duration> {
        let started = Instant::now();
        let mut appended = 0u64;
        let mut tick = 0u64;
        while appended < total {
            let count = per_tick.min(total - appended);
            let events = (appended..appended + count).map(manifest_push).collect();
            append_log.append(AppendBatch { events, ..AppendBatch::default() })?;
            appended += count;
            tick += 1;
            let due = started + Duration::from_millis(10 * tick);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        Ok(started.elapsed())
    });
    let append_time = appender.await??;
    let appended_at = Instant::now();

    let expected = total as usize * args.subscriptions;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let count = received.latencies_us.lock().map(|latencies| latencies.len()).unwrap_or(0);
        if count >= expected || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drained_after = appended_at.elapsed();
    shutdown.cancel();
    pipeline.await.context("webhook pipeline task")??;
    server.abort();

    let mut latencies = received.latencies_us.lock().map(|latencies| latencies.clone()).unwrap_or_default();
    latencies.sort_unstable();
    println!(
        "webhooks: {} subscriptions, {total} events in {:.1} s ({:.0} events/s appended): {} of {expected} deliveries",
        args.subscriptions,
        append_time.as_secs_f64(),
        total as f64 / append_time.as_secs_f64(),
        latencies.len()
    );
    println!(
        "{} requests ({:.1} events per request); last delivery {:.2} s after the last append",
        received.requests.load(std::sync::atomic::Ordering::Relaxed),
        latencies.len() as f64 / received.requests.load(std::sync::atomic::Ordering::Relaxed).max(1) as f64,
        drained_after.as_secs_f64()
    );
    println!(
        "latency from append to receipt: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0)
    );
    anyhow::ensure!(latencies.len() >= expected, "{} deliveries missing", expected - latencies.len());
    Ok(())
}
