//! `atcr serve`: the log, its single writer, firehose ingest and the HTTP server, started
//! together and stopped together.
//!
//! Shutdown order matters: stop accepting frames, let ingest append what it already holds,
//! stop HTTP, then drop the last writer handle and join the writer thread so the final group
//! commit is durable before the process exits.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use atcr_ingest::{FirehoseConfig, run_firehose};
use atcr_query::LogQuery;
use atcr_storage::{EventLog, LogWriter};
use atcr_web::AppState;

use crate::config::Config;

/// A running atcr: what `serve` and `demo` share.
pub struct Running {
    pub log: Arc<EventLog>,
    pub address: SocketAddr,
    shutdown: CancellationToken,
    http: tokio::task::JoinHandle<std::io::Result<()>>,
    ingest: Option<tokio::task::JoinHandle<Result<(), atcr_ingest::IngestError>>>,
    writer_task: atcr_storage::LogWriterTask,
}

pub async fn start(config: &Config, upstream: Option<FirehoseConfig>) -> anyhow::Result<Running> {
    let log_path = config.log_path();
    let log = Arc::new(
        EventLog::open(&log_path)
            .with_context(|| format!("cannot open the event log at {}", log_path.display()))?,
    );
    let (writer, writer_task) = LogWriter::start(log.clone());
    let shutdown = CancellationToken::new();

    let metrics = match atcr_web::install_metrics_recorder() {
        Ok(handle) => Some(handle),
        Err(error) => {
            tracing::warn!(%error, "metrics recorder not installed");
            None
        }
    };
    let app = atcr_web::router(AppState {
        query: LogQuery::new(log.clone()),
        metrics,
    });
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let address = listener.local_addr()?;
    let http_shutdown = shutdown.clone();
    let http = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { http_shutdown.cancelled().await })
            .await
    });
    tracing::info!(%address, data_dir = %config.data_dir.display(), "serving");

    let ingest = upstream.map(|firehose| {
        tokio::spawn(run_firehose(
            firehose,
            log.clone(),
            writer,
            shutdown.clone(),
        ))
    });
    Ok(Running {
        log,
        address,
        shutdown,
        http,
        ingest,
        writer_task,
    })
}

impl Running {
    /// Waits for Ctrl-C / SIGTERM or for ingest to stop on its own, then shuts down cleanly.
    pub async fn run_until_stopped(mut self) -> anyhow::Result<()> {
        let ingest_result = match self.ingest.as_mut() {
            Some(ingest) => tokio::select! {
                _ = shutdown_signal() => None,
                result = ingest => Some(result),
            },
            None => {
                shutdown_signal().await;
                None
            }
        };
        if ingest_result.is_some() {
            self.ingest = None;
        }
        let outcome = self.stop().await;
        match ingest_result {
            Some(Ok(Ok(()))) | None => outcome,
            Some(Ok(Err(error))) => Err(anyhow::Error::new(error).context("ingest stopped")),
            Some(Err(error)) => Err(anyhow::anyhow!("ingest task failed: {error}")),
        }
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        tracing::info!("shutting down");
        self.shutdown.cancel();
        if let Some(ingest) = self.ingest {
            match ingest.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::error!(%error, "ingest stopped with an error"),
                Err(error) => tracing::error!(%error, "ingest task failed"),
            }
        }
        match self.http.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(%error, "http server failed"),
            Err(error) => tracing::error!(%error, "http task failed"),
        }
        // Every writer handle is gone with ingest; the writer drains and exits.
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
    let firehose = firehose_config(&config);
    if firehose.is_none() {
        tracing::warn!(
            "no upstream configured (--upstream / ATCR_UPSTREAM): serving the log without ingesting"
        );
    }
    start(&config, firehose).await?.run_until_stopped().await
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
