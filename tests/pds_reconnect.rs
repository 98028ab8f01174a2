//! Reconnects against the reference PDS: atcr reads the firehose through a TCP proxy that the
//! test cuts twice while records are being written (once with a TCP reset, once with a plain
//! close). atcr must reconnect, resume from its cursor and end up with every write exactly
//! once, in order, with no gap.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use support::{Account, Atcr, Op, Pds, assert_same_ops, caught_up, is_record_event, metric_value, now_datetime};

const WRITES: usize = 90;
const MIN_WRITE_INTERVAL: Duration = Duration::from_millis(60);

/// How the proxy ends the live connections.
#[derive(Clone, Copy, Debug)]
enum Cut {
    /// SO_LINGER 0: the peer sees a TCP reset.
    Reset,
    /// An orderly FIN in both directions, without a WebSocket close frame.
    Close,
}

/// 127.0.0.1:<ephemeral> → 127.0.0.1:<upstream port>, cuttable on demand.
struct CutProxy {
    port: u16,
    connections: Arc<AtomicUsize>,
    cut: broadcast::Sender<Cut>,
    acceptor: JoinHandle<()>,
}

impl CutProxy {
    async fn start(upstream_port: u16) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let connections = Arc::new(AtomicUsize::new(0));
        let (cut, _) = broadcast::channel(16);
        let acceptor = tokio::spawn({
            let connections = connections.clone();
            let cut = cut.clone();
            async move {
                while let Ok((inbound, _)) = listener.accept().await {
                    connections.fetch_add(1, Ordering::SeqCst);
                    // subscribe now: only cuts after this connection was accepted end it
                    tokio::spawn(relay(inbound, upstream_port, cut.subscribe()));
                }
            }
        });
        Ok(CutProxy { port, connections, cut, acceptor })
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Ends every connection open right now.
    fn cut(&self, how: Cut) {
        let _ = self.cut.send(how);
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

async fn relay(mut inbound: TcpStream, upstream_port: u16, mut cut: broadcast::Receiver<Cut>) {
    let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", upstream_port)).await else { return };
    let how = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => return,
        how = cut.recv() => how,
    };
    if let Ok(Cut::Reset) = how {
        let _ = inbound.set_zero_linger();
        let _ = outbound.set_zero_linger();
    }
    // dropping both streams ends the connection (RST with zero linger, FIN otherwise)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_connections_are_resumed_without_gaps_or_repeats() {
    let Some(pds_url) = support::pds_url_or_skip() else { return };
    let proxy = CutProxy::start(support::port_of(&pds_url)).await.expect("a proxy");
    let upstream = format!("http://127.0.0.1:{}", proxy.port);
    let mut atcr = Atcr::new("reconnect", &upstream, &support::plc_url(&pds_url), Some(0)).expect("a temp dir");
    if let Err(error) = scenario(&pds_url, &proxy, &mut atcr).await {
        panic!("{error:#}");
    }
}

async fn write_stream(pds: Pds, user: Account, done: Arc<AtomicUsize>) -> Result<Vec<Op>> {
    let mut ops = Vec::with_capacity(WRITES);
    let mut live: Vec<(String, String)> = Vec::new();
    for index in 0..WRITES {
        let began = Instant::now();
        let hex = support::sha256_hex(format!("{} {index}", user.did).as_bytes());
        let op = match index % 5 {
            // every fifth write deletes the oldest live tag, every fifth moves the newest
            3 if !live.is_empty() => {
                let (rkey, cid) = live.remove(0);
                pds.delete_record(&user, "io.atcr.tag", &rkey).await?;
                Op::delete("io.atcr.tag", &rkey, &cid)
            }
            4 if !live.is_empty() => {
                let last = live.len() - 1;
                let rkey = live[last].0.clone();
                let mut record = support::tag_record(&user.did, "net", rkey.trim_start_matches("net_"), &hex);
                record["updatedAt"] = json!(now_datetime());
                let written = pds.put_record(&user, "io.atcr.tag", &rkey, &record).await?;
                live[last].1 = written.cid.clone();
                Op::put(&written, "update")
            }
            _ => {
                let rkey = format!("net_t{index}");
                let record = support::tag_record(&user.did, "net", &format!("t{index}"), &hex);
                let written = pds.put_record(&user, "io.atcr.tag", &rkey, &record).await?;
                live.push((rkey, written.cid.clone()));
                Op::put(&written, "create")
            }
        };
        ops.push(op);
        done.store(index + 1, Ordering::SeqCst);
        if let Some(rest) = MIN_WRITE_INTERVAL.checked_sub(began.elapsed()) {
            tokio::time::sleep(rest).await;
        }
    }
    Ok(ops)
}

async fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !condition() {
        if Instant::now() >= deadline {
            bail!("timeout after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

async fn scenario(pds_url: &str, proxy: &CutProxy, atcr: &mut Atcr) -> Result<()> {
    let started = Instant::now();
    let pds = Pds::new(pds_url);
    let user = pds.create_account("rc").await?;
    println!("writer {} {}; proxy 127.0.0.1:{} -> {pds_url}", user.handle, user.did, proxy.port);

    atcr.start(Duration::from_secs(30)).await?;
    wait_until("atcr's first firehose connection", Duration::from_secs(30), || proxy.connections() >= 1).await?;

    let done = Arc::new(AtomicUsize::new(0));
    let writer = tokio::spawn(write_stream(pds.clone(), user.clone(), done.clone()));
    for (round, (after_writes, how)) in [(WRITES / 3, Cut::Reset), (2 * WRITES / 3, Cut::Close)].into_iter().enumerate()
    {
        wait_until(&format!("{after_writes} writes"), Duration::from_secs(60), || {
            done.load(Ordering::SeqCst) >= after_writes || writer.is_finished()
        })
        .await?;
        if writer.is_finished() {
            bail!("the writer stopped after {} writes: {:?}", done.load(Ordering::SeqCst), writer.await);
        }
        let connections = proxy.connections();
        let logged = atcr.events(Some(&user.did), None).await?.len();
        proxy.cut(how);
        println!(
            "{:>6.2}s cut #{} ({how:?}) after {} writes, {logged} of them in the log, {connections} connections so far",
            started.elapsed().as_secs_f64(),
            round + 1,
            done.load(Ordering::SeqCst)
        );
        wait_until("atcr to reconnect through the proxy", Duration::from_secs(30), || {
            proxy.connections() > connections
        })
        .await?;
        println!("{:>6.2}s reconnected ({} connections)", started.elapsed().as_secs_f64(), proxy.connections());
    }
    let ops = writer.await.context("writer task")??;

    let events = atcr
        .wait_for_events(&user.did, Duration::from_secs(45), "every write after two cuts", |events| {
            caught_up(events, &ops)
        })
        .await?;
    println!("{:>6.2}s caught up", started.elapsed().as_secs_f64());
    let records: Vec<&Value> = events.iter().filter(|event| is_record_event(event)).collect();
    let mut last_seq = i64::MIN;
    for event in &records {
        let seq = event["seq"].as_i64().with_context(|| format!("no seq: {event}"))?;
        ensure!(seq > last_seq, "seq {seq} after {last_seq} at offset {}: repeated or out of order", event["offset"]);
        last_seq = seq;
    }
    let logged: Vec<Op> = records.iter().map(|event| Op::of_event(event)).collect();
    assert_same_ops(&ops, &logged, "after two cuts");

    // atcr noticed and reconnected: the proxy saw the connections, /metrics counts them
    ensure!(proxy.connections() >= 3, "the proxy saw only {} connections", proxy.connections());
    let metrics = atcr.metrics().await?;
    match metric_value(&metrics, "atcr_ingest_reconnects_total") {
        Some(reconnects) => ensure!(reconnects >= 2.0, "atcr_ingest_reconnects_total is {reconnects}, expected >= 2"),
        None => println!(
            "note: /metrics has no atcr_ingest_reconnects_total (checked the proxy's connection count instead)"
        ),
    }
    let status = atcr.status().await?;
    ensure!(
        status["log"]["quarantined"].as_u64() == Some(0),
        "the quarantine is not empty: {}",
        status["recent_quarantine"]
    );
    let cursor_key = format!("http://127.0.0.1:{}", proxy.port);
    ensure!(
        status["log"]["cursors"][&cursor_key].as_i64() >= Some(last_seq),
        "no cursor at or past seq {last_seq} for {cursor_key}: {}",
        status["log"]["cursors"]
    );

    let exit = atcr.terminate(Duration::from_secs(20)).await?;
    ensure!(exit.success(), "atcr serve exited with {exit} on SIGTERM");
    println!(
        "ok: {} writes, {} proxy connections, reconnects metric {:?}, {:.2}s",
        ops.len(),
        proxy.connections(),
        metric_value(&metrics, "atcr_ingest_reconnects_total"),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
