//! Live updates end to end against the reference PDS: a client subscribed to `atcr serve`'s
//! `/api/v1/events` sees each tag a user writes to their PDS within a second of the write,
//! filtered to that user's repository, with the same JSON as `/api/v1/log/{offset}`; the
//! repository page already shows the tag when the event arrives (events wait for the views); in
//! headless Chromium (when installed), the open repository page shows a newly written tag without
//! a reload (htmx SSE extension + app.js); SIGTERM ends the open stream and atcr exits cleanly.

mod support;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use futures_util::StreamExt;
use serde_json::Value;

use support::{Account, Atcr, Pds, image_manifest, manifest_record, tag_record};

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

    browser_page_updates_live(&pds, &alice, atcr, &page, &manifest.hex).await?;

    let status = atcr.terminate(Duration::from_secs(15)).await?;
    ensure!(status.success(), "atcr exited with {status} after SIGTERM with a stream open");
    // The browser part's tag is still in the stream; then it ends.
    while let Some(event) = stream.next(Duration::from_secs(5)).await? {
        ensure!(
            event.data["rkey"] == "live_sse-in-the-browser",
            "an unexpected event after the rounds: {}",
            event.data
        );
    }
    Ok(())
}

/// The repository page open in Chromium (fixtures/browser/ui-test.mjs with `ATCR_UI_LIVE_PATH`):
/// once its stream is connected, a tag written to the PDS appears in the page without a reload.
async fn browser_page_updates_live(
    pds: &Pds,
    alice: &Account,
    atcr: &Atcr,
    page: &str,
    manifest_hex: &str,
) -> Result<()> {
    use std::io::BufRead;
    let chromium = std::env::var("CHROMIUM_PATH").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !std::path::Path::new(&chromium).exists() {
        println!("SKIP: the browser part (no chromium at {chromium})");
        return Ok(());
    }
    let tag = "sse-in-the-browser";
    let screenshots = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-output/screenshots/live");
    std::fs::create_dir_all(&screenshots)?;
    let mut child = std::process::Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/browser/run.sh"))
        .env("ATCR_UI_URL", atcr.base_url())
        .env("ATCR_UI_SCREENSHOTS", &screenshots)
        .env("ATCR_UI_DEMO", "0")
        .env("ATCR_UI_LIVE_PATH", page)
        .env("ATCR_UI_LIVE_EXPECT", tag)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running fixtures/browser/run.sh")?;
    let stdout = child.stdout.take().context("the script's stdout")?;
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut output = Vec::new();
    let connected = loop {
        let Ok(line) = received.recv_timeout(Duration::from_secs(60)) else { break false };
        println!("browser: {line}");
        output.push(line.clone());
        if line == "live: connected" {
            break true;
        }
        if line.starts_with("SKIP") {
            let _ = child.wait();
            println!("SKIP: the browser part ({line})");
            return Ok(());
        }
    };
    if !connected {
        let _ = child.kill();
        let _ = child.wait();
        anyhow::bail!("the page never connected its event stream:\n{}", output.join("\n"));
    }
    let writing = Instant::now();
    pds.put_record(
        alice,
        "io.atcr.tag",
        &format!("{REPOSITORY}_{tag}"),
        &tag_record(&alice.did, REPOSITORY, tag, manifest_hex),
    )
    .await?;
    let written = writing.elapsed();
    let status = tokio::task::spawn_blocking(move || {
        for line in received.iter() {
            println!("browser: {line}");
            output.push(line);
        }
        (child.wait(), output)
    })
    .await?;
    let (status, output) = (status.0?, status.1);
    ensure!(
        status.success() && output.iter().any(|line| line == "1 passed, 0 failed"),
        "the live page check failed ({status}):\n{}",
        output.join("\n")
    );
    let updated_ms: u64 = output
        .iter()
        .find_map(|line| line.strip_prefix("live: updated ")?.split(' ').next()?.parse().ok())
        .context("no `live: updated N ms` line")?;
    // From the script's `connected` line: our read of it, the PDS write, ingest, views, the event,
    // app.js's re-fetch and the swap.
    ensure!(updated_ms < 2500, "the page took {updated_ms} ms to show the tag");
    println!("browser: the PDS write took {written:?}; the page showed the tag {updated_ms} ms after it connected");
    Ok(())
}
