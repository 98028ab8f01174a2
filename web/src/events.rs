//! `GET /api/v1/events`: the log as a server-sent events stream, for dashboards, scripts and the
//! pages that update live.
//!
//! - each SSE event is one log event: `id` is its offset, `data` the same JSON as
//!   `/api/v1/log/{offset}`;
//! - an event is sent only once the registry views reflect it ([`atcr_query::live`]), so a page
//!   re-fetched on an event shows it;
//! - filters: `did` (a DID or handle: events by or about it), `repository` (events about a
//!   repository of that name), `kind` (`all`, `record`, or a comma-separated list of kinds);
//! - where to start: `Last-Event-ID` (what browsers send when they reconnect) or `?after=N`
//!   resume after offset N, `?from=N` starts at offset N, neither starts at the log's head;
//! - a `:keep-alive` comment every 15 s; at most [`SCAN_CHUNK`] events read ahead per
//!   connection (the socket's backpressure does the rest), at most [`MAX_STREAMS`] connections;
//! - [`LiveEvents::close`] ends every stream, so a graceful shutdown does not wait for them.
//!
//! One tracker task per process follows the log's head and the views' checkpoint and publishes
//! the visible offset on a watch channel; connections wait on that channel, never poll.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use serde::Deserialize;
use tokio::sync::watch;

use atcr_query::live::{LogTail, TailFilter};
use atcr_query::{LogQuery, QueryError, RegistryQuery};

use crate::{ApiError, AppState};

/// Events one connection reads from the log at a time (and so holds at most).
pub const SCAN_CHUNK: usize = 256;
/// How often the tracker re-reads the views' checkpoint while they are behind the log.
const CATCH_UP_POLL: Duration = Duration::from_millis(20);
/// How often the tracker looks anyway (appends by another process do not notify).
const IDLE_POLL: Duration = Duration::from_secs(1);
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// What browsers wait before reconnecting after the stream ends.
const RETRY: Duration = Duration::from_secs(2);

/// Streams one server keeps open at most (each holds up to [`SCAN_CHUNK`] events); more get 503.
pub const MAX_STREAMS: usize = 1024;
/// After this long behind, the tracker polls the views less often (a rebuild can take minutes).
const LONG_BEHIND: Duration = Duration::from_secs(2);
const LONG_BEHIND_POLL: Duration = Duration::from_millis(250);

/// The live event streams of one server: the tracker of the visible offset and the switch that
/// ends them all.
#[derive(Clone)]
pub struct LiveEvents {
    tail: LogTail,
    visible: watch::Receiver<u64>,
    closing: Arc<watch::Sender<bool>>,
    open_streams: Arc<AtomicUsize>,
    max_streams: usize,
}

/// Counts one open stream while it lives.
struct StreamSlot(Arc<AtomicUsize>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl LiveEvents {
    /// Starts the tracker task (on the current tokio runtime). With `registry`, events are sent
    /// once its views reflect them.
    pub fn start(query: &LogQuery, registry: Option<RegistryQuery>) -> Self {
        let tail = LogTail::new(query, registry);
        let initial = tail.visible().unwrap_or(0);
        let (visible_sender, visible) = watch::channel(initial);
        let closing = Arc::new(watch::Sender::new(false));
        tokio::spawn(track_visible(tail.clone(), visible_sender, closing.subscribe()));
        LiveEvents { tail, visible, closing, open_streams: Arc::new(AtomicUsize::new(0)), max_streams: MAX_STREAMS }
    }

    /// The same, with another limit on open streams.
    pub fn with_max_streams(mut self, max_streams: usize) -> Self {
        self.max_streams = max_streams;
        self
    }

    /// A slot for one more stream, if the limit allows.
    fn take_slot(&self) -> Option<StreamSlot> {
        let taken = self
            .open_streams
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| (open < self.max_streams).then_some(open + 1));
        taken.ok().map(|_| StreamSlot(self.open_streams.clone()))
    }

    /// Ends every stream and the tracker; new connections get 503.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    fn is_closed(&self) -> bool {
        *self.closing.borrow()
    }
}

/// Publishes `min(log head, views checkpoint)` whenever it moves, until closed.
async fn track_visible(tail: LogTail, visible: watch::Sender<u64>, mut closing: watch::Receiver<bool>) {
    let mut head = tail.subscribe();
    let mut behind_since: Option<tokio::time::Instant> = None;
    loop {
        let reader = tail.clone();
        let positions =
            tokio::task::spawn_blocking(move || Ok::<_, QueryError>((reader.head()?, reader.visible()?))).await;
        let behind = match positions {
            Ok(Ok((head_now, visible_now))) => {
                visible.send_if_modified(|current| {
                    let moved = *current != visible_now;
                    *current = visible_now;
                    moved
                });
                visible_now < head_now
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "live events: cannot read the log head or the views checkpoint");
                false
            }
            Err(error) => {
                tracing::warn!(%error, "live events: tracker read failed");
                false
            }
        };
        let wait = match (behind, behind_since) {
            (false, _) => {
                behind_since = None;
                IDLE_POLL
            }
            (true, Some(since)) if since.elapsed() > LONG_BEHIND => LONG_BEHIND_POLL,
            (true, since) => {
                behind_since = since.or(Some(tokio::time::Instant::now()));
                CATCH_UP_POLL
            }
        };
        tokio::select! {
            _ = closing.wait_for(|closed| *closed) => return,
            changed = head.changed(), if !behind => if changed.is_err() { return },
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct EventParams {
    did: Option<String>,
    repository: Option<String>,
    kind: Option<String>,
    after: Option<String>,
    from: Option<String>,
}

fn offset_parameter(name: &str, text: &str) -> Result<u64, ApiError> {
    text.trim()
        .parse()
        .map_err(|_| ApiError::bad_request(format!("{name} must be a log offset (a non-negative integer)")))
}

/// Where a new stream starts: `Last-Event-ID`, else `after`, else `from`, else `None` (the head).
fn start_offset(params: &EventParams, headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let last_event_id = headers.get("last-event-id").and_then(|value| value.to_str().ok()).filter(|id| !id.is_empty());
    if let Some(id) = last_event_id {
        return Ok(Some(offset_parameter("Last-Event-ID", id)?.saturating_add(1)));
    }
    if let Some(after) = params.after.as_deref() {
        return Ok(Some(offset_parameter("after", after)?.saturating_add(1)));
    }
    match params.from.as_deref() {
        Some(from) => Ok(Some(offset_parameter("from", from)?)),
        None => Ok(None),
    }
}

/// `GET /api/v1/events`.
#[utoipa::path(get, path = "/api/v1/events", tag = "log", summary = "The log tail as server-sent events",
    params(
        ("did" = Option<String>, Query, description = "Only this DID's events"),
        ("repository" = Option<String>, Query, description = "Only events of this repository"),
        ("kind" = Option<String>, Query, description = "Comma-separated event kinds (`record`, `manifest_stored`, …)"),
        ("after" = Option<String>, Query, description = "Resume after this offset (as `Last-Event-ID` does)"),
        ("from" = Option<String>, Query, description = "Start at this offset"),
    ),
    responses(
        (status = 200, description = "Server-sent events: one log event per `data:` line, its offset as `id`", content_type = "text/event-stream", body = String),
        (status = 400, description = "A bad parameter", body = crate::api::ErrorBody),
        (status = 503, description = "Live events are not configured or too many streams are open", body = crate::api::ErrorBody),
    ))]
pub(crate) async fn api_events(
    State(state): State<AppState>,
    Query(params): Query<EventParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Some(live) = state.live.clone() else {
        return Err(ApiError::unavailable("live events are not available on this server"));
    };
    if live.is_closed() {
        return Err(ApiError::unavailable("the server is shutting down"));
    }
    let kinds = match params.kind.as_deref() {
        Some(text) => TailFilter::parse_kinds(text).map_err(ApiError::bad_request)?,
        None => Vec::new(),
    };
    let repository = params.repository.clone().filter(|name| !name.is_empty());
    if repository.is_some() && !live.tail.knows_repositories() {
        return Err(ApiError::unavailable("repository filters need the registry views"));
    }
    let start = start_offset(&params, &headers)?;
    let Some(slot) = live.take_slot() else {
        return Err(ApiError::unavailable(format!("too many open event streams (at most {})", live.max_streams)));
    };
    let tail = live.tail.clone();
    let owner = params.did.clone().filter(|did| !did.is_empty());
    let (did, head) = crate::blocking(move || {
        let did = match owner {
            Some(owner) => Some(tail.resolve_owner(&owner)?.ok_or(owner)),
            None => None,
        };
        Ok((did, tail.head()?))
    })
    .await?;
    let did = match did {
        Some(Ok(did)) => Some(did),
        Some(Err(unknown)) => return Err(ApiError::not_found(format!("atcr knows no user {unknown}"))),
        None => None,
    };
    let filter = TailFilter { did, repository, kinds };
    let subscriber = Subscriber {
        tail: live.tail.clone(),
        filter,
        next: start.unwrap_or(head),
        buffer: VecDeque::new(),
        visible: live.visible.clone(),
        closing: live.closing.subscribe(),
        retry_sent: false,
        _slot: slot,
    };
    let stream = events_stream(subscriber);
    let mut response =
        Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive")).into_response();
    // Proxies (nginx) must not buffer the stream.
    response.headers_mut().insert("x-accel-buffering", axum::http::HeaderValue::from_static("no"));
    response.headers_mut().insert(axum::http::header::CACHE_CONTROL, axum::http::HeaderValue::from_static("no-cache"));
    Ok(response)
}

/// One connection's position in the log.
struct Subscriber {
    tail: LogTail,
    filter: TailFilter,
    next: u64,
    /// Events read but not sent yet (at most [`SCAN_CHUNK`]), already rendered.
    buffer: VecDeque<(u64, String)>,
    visible: watch::Receiver<u64>,
    closing: watch::Receiver<bool>,
    retry_sent: bool,
    /// Released when the stream is dropped (the client went away, or the stream ended).
    _slot: StreamSlot,
}

fn events_stream(subscriber: Subscriber) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    futures_util::stream::unfold(subscriber, |mut subscriber| async move {
        let event = subscriber.next_event().await?;
        Some((Ok(event), subscriber))
    })
}

impl Subscriber {
    /// The next SSE event to send; `None` ends the stream (closed, or the log cannot be read).
    async fn next_event(&mut self) -> Option<SseEvent> {
        loop {
            if *self.closing.borrow() {
                return None;
            }
            if let Some((offset, data)) = self.buffer.pop_front() {
                let mut event = SseEvent::default().id(offset.to_string()).data(data);
                if !self.retry_sent {
                    event = event.retry(RETRY);
                    self.retry_sent = true;
                }
                return Some(event);
            }
            let visible = *self.visible.borrow_and_update();
            if self.next < visible {
                let (tail, filter, from) = (self.tail.clone(), self.filter.clone(), self.next);
                match tokio::task::spawn_blocking(move || tail.read(from, visible, &filter, SCAN_CHUNK)).await {
                    Ok(Ok(chunk)) if chunk.next > from => {
                        self.next = chunk.next;
                        self.buffer.extend(chunk.events.into_iter().map(|(offset, json)| (offset, json.to_string())));
                        continue;
                    }
                    // Nothing readable below the visible offset yet: wait for it to move.
                    Ok(Ok(_)) => {}
                    Ok(Err(error)) => {
                        tracing::error!(%error, from, "live events: cannot read the log");
                        return None;
                    }
                    Err(error) => {
                        tracing::error!(%error, "live events: read task failed");
                        return None;
                    }
                }
            }
            tokio::select! {
                changed = self.visible.changed() => if changed.is_err() { return None },
                // The switch itself gone (the server was dropped) ends the stream too.
                changed = self.closing.changed() => if changed.is_err() { return None },
            }
        }
    }
}

impl ApiError {
    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        ApiError { status: StatusCode::SERVICE_UNAVAILABLE, code: "unavailable", message: message.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(after: Option<&str>, from: Option<&str>) -> EventParams {
        EventParams { after: after.map(String::from), from: from.map(String::from), ..EventParams::default() }
    }

    #[test]
    fn last_event_id_wins_over_after_and_from() {
        let mut headers = HeaderMap::new();
        assert_eq!(start_offset(&params(None, None), &headers).unwrap(), None);
        assert_eq!(start_offset(&params(Some("7"), Some("2")), &headers).unwrap(), Some(8));
        assert_eq!(start_offset(&params(None, Some("2")), &headers).unwrap(), Some(2));
        headers.insert("last-event-id", "41".parse().unwrap());
        assert_eq!(start_offset(&params(Some("7"), None), &headers).unwrap(), Some(42));
        headers.insert("last-event-id", "x".parse().unwrap());
        assert!(start_offset(&params(None, None), &headers).is_err());
        assert!(start_offset(&params(Some("-1"), None), &HeaderMap::new()).is_err());
    }
}
