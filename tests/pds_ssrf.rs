//! End to end against the reference PDS: a manifest whose `holdDid` is a did:web on a loopback
//! address makes atcr send nothing there (without `--dev-allow-loopback`), and the UI says the
//! hold is unreachable and why.
//!
//! The test runs its own listeners on 127.0.0.1 and, when the machine has IPv6, [::1], and
//! counts every connection they get. A control run with the development flag proves the
//! listener would have seen atcr's request: without that, "no connection" could just mean the
//! test looks in the wrong place.

mod support;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use support::{Atcr, Pds, image_manifest, manifest_record};

/// A loopback listener that counts the connections it accepts (and closes them at once).
struct CountingListener {
    address: SocketAddr,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CountingListener {
    fn bind(address: &str) -> Option<Self> {
        let listener = TcpListener::bind(address).ok()?;
        listener.set_nonblocking(true).ok()?;
        let address = listener.local_addr().ok()?;
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (accepted, stop) = (accepted.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            accepted.fetch_add(1, Ordering::SeqCst);
                            drop(stream);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        Some(CountingListener { address, accepted, stop, thread: Some(thread) })
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for CountingListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The did:web naming a loopback listener (`:` of the port percent-encoded, as did:web wants).
fn did_web(listener: &CountingListener) -> String {
    let host = match listener.address {
        SocketAddr::V4(address) => address.ip().to_string(),
        SocketAddr::V6(address) => format!("%5B{}%5D", address.ip()).replace(':', "%3A"),
    };
    format!("did:web:{host}%3A{}", listener.address.port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_on_a_loopback_did_web_gets_no_request_and_shows_unreachable() {
    let Some(pds_url) = support::pds_url_or_skip() else { return };
    if let Err(error) = scenario(&pds_url).await {
        panic!("{error:#}");
    }
}

async fn scenario(pds_url: &str) -> Result<()> {
    let v4 = CountingListener::bind("127.0.0.1:0").context("binding a loopback listener")?;
    let v6 = CountingListener::bind("[::1]:0");
    if v6.is_none() {
        println!("no IPv6 loopback on this machine: the [::1] hold is not tested");
    }
    let pds = Pds::new(pds_url);
    let owner = pds.create_account("ssrf").await?;
    let mut holds = vec![("v4", did_web(&v4)), ("name", format!("did:web:localhost%3A{}", v4.address.port()))];
    if let Some(v6) = &v6 {
        holds.push(("v6", did_web(v6)));
    }
    let mut manifests = Vec::new();
    for (label, hold) in &holds {
        let repository = format!("ssrf-{label}");
        let manifest = image_manifest(&repository, "1.0.0", &owner.did);
        let blob = pds.upload_blob(&owner, manifest.bytes.clone(), support::OCI_MANIFEST).await?;
        let record = manifest_record(&repository, &manifest, &blob, hold);
        pds.create_record(&owner, "io.atcr.manifest", Some(&manifest.hex), &record).await?;
        manifests.push((repository, format!("sha256:{}", manifest.hex), hold.clone()));
        println!("manifest in {label} names hold {hold}");
    }

    // --- without the development flag: nothing reaches the listeners ------------------------
    let mut strict = Atcr::new("ssrf", pds_url, &support::plc_url(pds_url), Some(0))?;
    strict.dev_allow_loopback = false;
    strict.start(Duration::from_secs(30)).await?;
    for (repository, digest, hold) in &manifests {
        let path = format!("/r/{}/{repository}/-/manifest/{digest}", owner.did);
        let page = wait_for_page(&strict, &path, "hold-unreachable", Duration::from_secs(30))
            .await
            .with_context(|| strict.output_tail(30))?;
        ensure!(page.contains(hold.as_str()), "the manifest page names the hold {hold}");
        ensure!(
            page.contains("outbound URL policy") || page.contains("malformed did:web"),
            "the page says why the hold is unreachable: {page}"
        );
        let events = strict.events(Some(hold), None).await?;
        ensure!(
            events.iter().any(|event| support::kind(event) == "identity_unresolvable"),
            "the log records that {hold} cannot be resolved: {events:?}"
        );
    }
    // Enrichment has given up on every hold; give a stray retry time to show itself.
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(v4.accepted() == 0, "the 127.0.0.1 listener got {} connections without the dev flag", v4.accepted());
    if let Some(v6) = &v6 {
        ensure!(v6.accepted() == 0, "the [::1] listener got {} connections without the dev flag", v6.accepted());
    }
    strict.terminate(Duration::from_secs(20)).await?;
    println!("strict run: no connection to {} (or [::1]) for {} holds", v4.address, manifests.len());

    // --- control: with the flag, atcr does contact the same listener -------------------------
    let mut dev = Atcr::new("ssrf-dev", pds_url, &support::plc_url(pds_url), Some(0))?;
    dev.start(Duration::from_secs(30)).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while v4.accepted() == 0 {
        if Instant::now() > deadline {
            bail!("control run: the listener never saw atcr's request; output:\n{}", dev.output_tail(30));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("control run with --dev-allow-loopback: {} connection(s) to {}", v4.accepted(), v4.address);
    dev.terminate(Duration::from_secs(20)).await?;
    Ok(())
}

async fn wait_for_page(atcr: &Atcr, path: &str, needle: &str, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let (status, body) = atcr.get(path).await?;
        if status == 200 && body.contains(needle) {
            return Ok(body);
        }
        if Instant::now() > deadline {
            bail!("{path} did not show {needle:?} within {timeout:?} (status {status}): {body}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
