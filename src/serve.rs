//! `atcr serve`: the log and its single writer, firehose ingest, enrichment, webhook delivery,
//! the projection runner and the HTTP server, started together and stopped together.
//!
//! Shutdown order matters: cancel every task (ingest appends what it already holds first),
//! wait for them, then drop the last writer handle and join the writer thread so the final
//! group commit is durable before the process exits. A task that stops on its own (our
//! storage failed, upstream refused our cursor) stops the whole process with its error.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use futures_util::future::select_all;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use atcr_ingest::backfill::{Backfiller, Discovery};
use atcr_ingest::enrich::{Enricher, Fetcher, HttpFetcher};
use atcr_ingest::identity::{HttpHandleSource, IdentityConfig, IdentityResolver};
use atcr_ingest::policy::UrlPolicy;
use atcr_ingest::{FirehoseConfig, run_firehose};
use atcr_projections::{ProjectionRunner, ProjectionStore, Views, ViewsHandle};
use atcr_query::{LogQuery, RegistryQuery};
use atcr_storage::blobs::{BlobBackend, S3Backend};
use atcr_storage::content::ContentStore;
use atcr_storage::{EventLog, LogWriter};
use atcr_web::AppState;

use crate::config::Config;

type Task = (&'static str, JoinHandle<anyhow::Result<()>>);

/// A running atcr: what `serve` and `demo` share.
pub struct Running {
    pub log: Arc<EventLog>,
    /// The live views; `atcr replay` may swap in a new build while running.
    pub views: ViewsHandle,
    pub address: SocketAddr,
    shutdown: CancellationToken,
    tasks: Vec<Task>,
    /// For tasks added after start (the backfill); dropped before the writer thread is joined.
    writer: Option<LogWriter>,
    writer_task: atcr_storage::LogWriterTask,
    /// Closed after HTTP stops, so the last pulls are durable.
    pulls: atcr_query::holds::PullLog,
}

pub async fn start<F: Fetcher>(
    config: &Config,
    upstream: Option<FirehoseConfig>,
    fetcher: F,
) -> anyhow::Result<Running> {
    let log_path = config.log_path();
    let log = Arc::new(
        EventLog::open(&log_path).with_context(|| format!("cannot open the event log at {}", log_path.display()))?,
    );
    let store = ProjectionStore::new(config.views_dir());
    // Scan documents are parsed by the projections from the content store (never the network).
    atcr_projections::scans::use_content_store(Arc::new(ContentStore::open(&config.content_path())?));
    let (views, build) = open_live_views(&store, config)?;
    let content = Arc::new(ContentStore::open(&config.content_path())?);
    let (writer, writer_task) = LogWriter::start(log.clone());
    let shutdown = CancellationToken::new();
    let mut tasks: Vec<Task> = Vec::new();

    let metrics = match atcr_web::install_metrics_recorder() {
        Ok(handle) => Some(handle),
        Err(error) => {
            tracing::warn!(%error, "metrics recorder not installed");
            None
        }
    };
    let mut local_holds: HashMap<String, BlobBackend> = config
        .local_holds
        .iter()
        .map(|(did, root)| (did.clone(), BlobBackend::Filesystem { root: root.clone() }))
        .collect();
    for (did, s3) in &config.s3_holds {
        let backend = S3Backend::new(s3.to_storage()).with_context(|| format!("S3 hold {did}"))?;
        local_holds.insert(did.clone(), BlobBackend::S3(backend));
    }
    let local_hold_dids: Vec<String> = local_holds.keys().cloned().collect();
    // Enrichment fetches image configs (and, with deep inspection, layers) the way pulls find them.
    let hold_backends = local_holds.clone();
    let registry = RegistryQuery::new(views.clone(), content.clone()).with_local_holds(local_holds);
    let query = LogQuery::new(log.clone());
    // atcr's own pull counts: a local store beside the log, written off the request path.
    let pulls_path = config.data_dir.join("pulls.redb");
    let pulls = atcr_query::holds::PullLog::open(&pulls_path)
        .with_context(|| format!("cannot open the pull log at {}", pulls_path.display()))?;
    // Live event streams end when shutdown starts, or the graceful shutdown would wait for them.
    let live = atcr_web::events::LiveEvents::start(&query, Some(registry.clone()));
    let app = atcr_web::router(AppState {
        query,
        registry: Some(registry.clone()),
        metrics,
        browse: Some(atcr_query::browse::Browse::new(registry).with_pulls(pulls.clone())),
        search: Some(atcr_query::search::SearchService::live(views.clone())),
        live: Some(live.clone()),
    });
    // Webhook delivery: a log consumer of its own; its history is served beside the rest.
    let (webhook_task, webhook_routes) = crate::webhooks::start(config, log.clone(), shutdown.clone())?;
    tasks.push(("webhooks", webhook_task));
    let app = app.merge(webhook_routes);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let address = listener.local_addr()?;
    // No Nagle: a streamed body's first segment must not wait for the client's delayed ACK
    // (that costs ~40 ms per blob response).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
    });
    let http_shutdown = shutdown.clone();
    tasks.push((
        "http",
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    http_shutdown.cancelled().await;
                    live.close();
                })
                .await?;
            Ok(())
        }),
    ));
    tracing::info!(%address, data_dir = %config.data_dir.display(), "serving");

    let runner = ProjectionRunner::following(log.clone(), views.clone(), store, build);
    let stop = shutdown.clone();
    tasks.push(("projections", tokio::spawn(async move { Ok(runner.run(stop).await?) })));

    let mut enricher = Enricher::new(log.clone(), writer.clone(), content, fetcher)
        .with_local_holds(local_hold_dids)
        .with_hold_backends(hold_backends)
        .with_deep_inspection(config.deep_inspection_max_bytes)
        .with_scan_blob_limit(
            config
                .scan_blob_max_bytes
                .and_then(|bytes| usize::try_from(bytes).ok())
                .unwrap_or(atcr_ingest::enrich::MAX_SCAN_BLOB_BYTES),
        );
    if let Some(identities) = upstream.as_ref().and_then(|firehose| firehose.identities.clone()) {
        enricher = enricher.with_handle_checks(identities);
    }
    let stop = shutdown.clone();
    tasks.push(("enrichment", tokio::spawn(async move { Ok(enricher.run(stop).await?) })));

    let spare_writer = writer.clone();
    if let Some(firehose) = upstream {
        let (log, stop) = (log.clone(), shutdown.clone());
        tasks.push(("ingest", tokio::spawn(async move { Ok(run_firehose(firehose, log, writer, stop).await?) })));
    }
    Ok(Running { log, views, address, shutdown, tasks, writer: Some(spare_writer), writer_task, pulls })
}

/// Opens the live registry build (creating the first one, or moving a pre-build `views.redb`
/// in), and deletes builds nobody uses when no replay is running. Views of another code version
/// are opened as they are: they keep serving while the runner rebuilds beside them.
fn open_live_views(store: &ProjectionStore, config: &Config) -> anyhow::Result<(ViewsHandle, u64)> {
    let (build, path) = store
        .ensure_live_registry(Some(&config.legacy_views_path()))
        .with_context(|| format!("cannot set up the views under {}", store.root().display()))?;
    if let Some(lock) = store.try_lock()? {
        store.remove_unused(&lock, atcr_projections::REGISTRY)?;
    }
    let views = Views::open_live(&path).with_context(|| format!("cannot open the views at {}", path.display()))?;
    Ok((ViewsHandle::new(Arc::new(views)), build))
}

pub fn http_fetcher(config: &Config) -> anyhow::Result<HttpFetcher> {
    let policy = UrlPolicy { allow_loopback: config.dev_allow_loopback };
    if config.dev_allow_loopback {
        tracing::warn!("--dev-allow-loopback: outbound fetches may reach loopback over http (development only)");
    }
    Ok(HttpFetcher::new(&config.plc_directory, policy)?)
}

/// The identity resolver live ingest verifies commits with: DID documents through the same
/// policy-bound fetcher as enrichment, handles through DNS/HTTPS (or the dev override).
pub fn identity_resolver(config: &Config) -> anyhow::Result<IdentityResolver> {
    let policy = UrlPolicy { allow_loopback: config.dev_allow_loopback };
    let handles =
        HttpHandleSource::new(policy, config.dev_handle_resolver.clone()).context("cannot set up handle resolution")?;
    Ok(IdentityResolver::new(http_fetcher(config)?, IdentityConfig::default()).with_handles(handles))
}

impl Running {
    /// Waits for Ctrl-C / SIGTERM or for a task to stop on its own, then shuts down cleanly.
    pub async fn run_until_stopped(mut self) -> anyhow::Result<()> {
        let handles: Vec<_> = self.tasks.iter_mut().map(|(_, handle)| handle).collect();
        let early = tokio::select! {
            _ = shutdown_signal() => None,
            (result, index, _) = select_all(handles) => Some((index, result)),
        };
        let mut failure = None;
        if let Some((index, result)) = early {
            let (name, _) = self.tasks.remove(index);
            failure = Some(match result {
                Ok(Ok(())) => anyhow::anyhow!("{name} stopped unexpectedly"),
                Ok(Err(error)) => error.context(format!("{name} stopped")),
                Err(error) => anyhow::anyhow!("{name} task failed: {error}"),
            });
        }
        self.stop().await?;
        match failure {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// Backfill inside serve, beside live ingest: the startup backfill the configuration asks for
    /// (`--backfill-pds/--backfill-relay/--backfill-did`; resumable, like `atcr backfill`), then
    /// a resync of every account a `Resync` event names. Its appends go through the same writer as
    /// ingest's, and its diff is taken against the log under a lock held until its append, so
    /// no fact is applied twice (see `atcr_ingest::backfill`).
    pub fn spawn_backfill(&mut self, config: &Config) -> anyhow::Result<()> {
        let Some(writer) = self.writer.clone() else { return Ok(()) };
        let fetcher = crate::backfill::fetcher(config, 256, 120)?;
        let backfiller = Backfiller::new(self.log.clone(), writer, fetcher);
        let discovery = match (&config.backfill_pds, &config.backfill_relay) {
            (Some(pds), _) => Some(Discovery::Pds(pds.clone())),
            (None, Some(relay)) => Some(Discovery::Relay(relay.clone())),
            (None, None) if !config.backfill_dids.is_empty() => Some(Discovery::Dids(config.backfill_dids.clone())),
            (None, None) => None,
        };
        let stop = self.shutdown.clone();
        self.tasks.push((
            "backfill",
            tokio::spawn(async move {
                if let Some(discovery) = discovery {
                    tokio::select! {
                        _ = stop.cancelled() => return Ok(()),
                        result = startup_backfill(&backfiller, &discovery) => {
                            if let Err(error) = result {
                                // Live ingest goes on; the job stays open for the next start.
                                tracing::error!(error = format!("{error:#}"), "startup backfill failed");
                            }
                        }
                    }
                }
                backfiller.follow_resyncs(stop).await?;
                Ok(())
            }),
        ));
        Ok(())
    }

    pub async fn stop(mut self) -> anyhow::Result<()> {
        tracing::info!("shutting down");
        drop(self.writer.take());
        self.shutdown.cancel();
        for (name, handle) in self.tasks {
            match handle.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::error!(task = name, error = format!("{error:#}"), "task stopped with an error")
                }
                Err(error) => tracing::error!(task = name, %error, "task failed"),
            }
        }
        let pulls = self.pulls.clone();
        tokio::task::spawn_blocking(move || pulls.close()).await?;
        // Every writer handle is gone with its tasks; the writer drains and exits.
        tokio::task::spawn_blocking(move || self.writer_task.join()).await?;
        tracing::info!("stopped");
        Ok(())
    }
}

pub fn firehose_config(config: &Config) -> Option<FirehoseConfig> {
    let upstream = config.upstream.as_ref()?;
    let mut firehose = FirehoseConfig::new(upstream.clone());
    firehose.start_cursor = config.start_cursor;
    firehose.reset_on_future_cursor = config.reset_cursor;
    Some(firehose)
}

pub async fn serve(config: Config) -> anyhow::Result<()> {
    let mut firehose = firehose_config(&config);
    match &mut firehose {
        Some(firehose) => firehose.identities = Some(Arc::new(identity_resolver(&config)?)),
        None => {
            tracing::warn!("no upstream configured (--upstream / ATCR_UPSTREAM): serving the log without ingesting")
        }
    }
    let fetcher = http_fetcher(&config)?;
    let mut running = start(&config, firehose, fetcher).await?;
    if config.upstream.is_some() {
        running.spawn_backfill(&config)?;
    } else if config.backfill_pds.is_some() || config.backfill_relay.is_some() || !config.backfill_dids.is_empty() {
        tracing::warn!("--backfill-* needs --upstream (backfill runs beside live ingest); use `atcr backfill` instead");
    }
    running.run_until_stopped().await
}

async fn startup_backfill(
    backfiller: &Backfiller<atcr_ingest::backfill::HttpRepoFetcher>,
    discovery: &Discovery,
) -> anyhow::Result<()> {
    let dids = atcr_ingest::backfill::discover(backfiller.fetcher(), discovery).await?;
    tracing::info!(accounts = dids.len(), source = %discovery.label(), "startup backfill");
    let summary = backfiller
        .run(&discovery.label(), dids, 8, false, |report| {
            tracing::debug!(did = %report.did, outcome = ?report.outcome, "backfilled");
        })
        .await?;
    tracing::info!(
        accounts = summary.dids,
        synced = summary.synced,
        already_done = summary.already_done,
        unavailable = summary.unavailable,
        failed = summary.failed,
        puts = summary.puts,
        deletes = summary.deletes,
        finished = summary.finished,
        "startup backfill done"
    );
    Ok(())
}

async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {}
        _ = terminate => {}
    }
}
