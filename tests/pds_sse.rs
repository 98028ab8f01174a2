//! Live updates end to end against the reference PDS: a client subscribed to `atcr serve`'s
//! `/api/v1/events` sees each tag a user writes to their PDS within a second of the write,
//! filtered to that user's repository, with the same JSON as `/api/v1/log/{offset}`; the
//! repository page already shows the tag when the event arrives (events wait for the views);
//! SIGTERM ends the open stream and atcr exits cleanly.

mod support;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use futures_util::StreamExt;
use serde_json::Value;

use support::{Atcr, Pds, image_manifest, manifest_record, tag_record};

/// Nothing listens on port 9: hold resolution fails quietly in the background.
const HOLD: &str = "did:web:localhost%3A9";
const REPOSITORY: &str = "live";
const ROUNDS: usize = 5;
const LIMIT: Duration = Duration::from_secs(1);

/// One received SSE event.
struct Received {
    id: u64,
    data: Value,
}

/// Parses `text/event-stream` as it arrives.
struct EventStream {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<Vec<u8>>> + Send>>,
    pending: String,
}

impl EventStream {
    /// The next event with an id; `Ok(None)` when the stream ended.
    async fn next(&mut self, timeout: Duration) -> Result<Option<Received>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            while let Some(end) = self.pending.find("\n\n") {
                let block: String = self.pending.drain(..end + 2).collect();
                let (mut id, mut data) = (None, String::new());
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("id:") {
                        id = Some(value.trim().parse::<u64>().context("event id is not an offset")?);
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data.push_str(value.trim_start());
                    }
                }
                if let Some(id) = id {
                    let data =
                        serde_json::from_str(&data).with_context(|| format!("event data is not JSON: {data}"))?;
                    return Ok(Some(Received { id, data }));
                }
            }
            let chunk = tokio::time::timeout_at(deadline, self.body.next())
                .await
                .map_err(|_| anyhow!("no event within {timeout:?}"))?;
            match chunk {
                Some(chunk) => self.pending.push_str(&String::from_utf8_lossy(&chunk?)),
                None => return Ok(None),
            }
        }
    }
}

fn http_client() -> Result<reqwest::Client> {
    // reqwest is built with `rustls-no-provider`: install one before building a client.
    #[allow(deprecated)]
    let _ = rustls::crypto::ring::default_provider().install_default();
    Ok(reqwest::Client::builder().connect_timeout(Duration::from_secs(5)).build()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pds_write_reaches_an_event_stream_subscriber_within_a_second() {
    let Some(pds_url) = support::pds_url_or_skip() else { return };
    let mut atcr = Atcr::new("sse", &pds_url, &support::plc_url(&pds_url), Some(0)).expect("a temp dir");
    if let Err(error) = scenario(&pds_url, &mut atcr).await {
        panic!("{error:#}\n--- atcr output ---\n{}", atcr.output_tail(40));
    }
}

async fn scenario(pds_url: &str, atcr: &mut Atcr) -> Result<()> {
    let pds = Pds::new(pds_url);
    let alice = pds.create_account("sse").await?;
    let manifest = image_manifest(REPOSITORY, "1.0.0", &alice.did);
    let blob = pds.upload_blob(&alice, manifest.bytes.clone(), support::OCI_MANIFEST).await?;
    let record = manifest_record(REPOSITORY, &manifest, &blob, HOLD);
    pds.create_record(&alice, "io.atcr.manifest", Some(&manifest.hex), &record).await?;
    let first_tag = format!("{REPOSITORY}_latest");
    pds.put_record(&alice, "io.atcr.tag", &first_tag, &tag_record(&alice.did, REPOSITORY, "latest", &manifest.hex))
        .await?;

    atcr.start(Duration::from_secs(30)).await?;
    atcr.wait_for_events(&alice.did, Duration::from_secs(30), "the seeded tag", |events| {
        events.iter().any(|event| event["rkey"] == first_tag.as_str())
    })
    .await?;
    let page = format!("/r/{}/{REPOSITORY}", alice.did);
    let deadline = Instant::now() + Duration::from_secs(30);
    while atcr.get(&page).await?.0 != 200 {
        ensure!(Instant::now() < deadline, "the repository page never appeared");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let client = http_client()?;
    let url = format!("{}/api/v1/events?did={}&repository={REPOSITORY}&kind=record", atcr.base_url(), alice.did);
    let response = client.get(&url).send().await.with_context(|| format!("GET {url}"))?;
    ensure!(response.status() == 200, "GET {url}: {}", response.status());
    let content_type = response.headers().get("content-type").and_then(|value| value.to_str().ok()).unwrap_or("");
    ensure!(content_type == "text/event-stream", "content type {content_type}");
    let mut stream = EventStream {
        body: Box::pin(response.bytes_stream().map(|chunk| chunk.map(|bytes| bytes.to_vec()))),
        pending: String::new(),
    };

    let mut latencies = Vec::new();
    for round in 0..ROUNDS {
        let tag = format!("sse-round-{round}");
        let rkey = format!("{REPOSITORY}_{tag}");
        // Another repository of alice's, written just before: filtered out.
        pds.put_record(
            &alice,
            "io.atcr.tag",
            &format!("elsewhere_{tag}"),
            &tag_record(&alice.did, "elsewhere", &tag, &manifest.hex),
        )
        .await?;
        let writing = Instant::now();
        let written = pds
            .put_record(&alice, "io.atcr.tag", &rkey, &tag_record(&alice.did, REPOSITORY, &tag, &manifest.hex))
            .await?;
        let event = stream.next(Duration::from_secs(10)).await?.context("the stream ended")?;
        let latency = writing.elapsed();
        ensure!(event.data["rkey"] == rkey.as_str(), "round {round}: got {} instead of {rkey}", event.data);
        ensure!(event.data["commit"] == written.commit_cid.as_str(), "round {round}: another commit: {}", event.data);
        ensure!(latency < LIMIT, "round {round}: the push took {latency:?} to reach the subscriber");
        latencies.push(latency);
        let logged = atcr.get_json(&format!("/api/v1/log/{}", event.id)).await?;
        ensure!(logged == event.data, "round {round}: the event differs from /api/v1/log/{}", event.id);
        let (status, body) = atcr.get(&page).await?;
        ensure!(status == 200 && body.contains(&tag), "round {round}: the page does not show {tag} yet");
    }
    latencies.sort();
    println!(
        "PDS write → SSE event ({ROUNDS} rounds, timed from the start of the write request): min {:?}, median {:?}, max {:?}",
        latencies[0],
        latencies[ROUNDS / 2],
        latencies[ROUNDS - 1]
    );

    let status = atcr.terminate(Duration::from_secs(15)).await?;
    ensure!(status.success(), "atcr exited with {status} after SIGTERM with a stream open");
    ensure!(stream.next(Duration::from_secs(5)).await?.is_none(), "the stream did not end at shutdown");
    Ok(())
}
