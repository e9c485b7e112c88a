//! `GET /api/v1/events`: the status as server-sent events, for the status page and scripts.
//!
//! One `status` event at once, then one whenever anything but an age or uptime changed
//! (checked every 250 ms), and one at least every 5 s (ages move); a comment every 15 s
//! keeps idle proxies and load balancers from closing the stream. Each event is
//! `{"now": unix seconds, …the /api/v1/status body}`. History (`api::History`: samples every
//! 2 s per pool, marks of changes) comes as `history` events: first everything the proxy
//! keeps (15 minutes), then what is new. A client that goes away ends its stream
//! at the next check; the open count is in the status (`event_streams`).

use std::{
    convert::Infallible,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    extract::State,
    response::{
        sse::{Event, KeepAlive, Sse},
        IntoResponse, Response,
    },
};
use futures_util::stream::{self, Stream};

use super::{status::status_of, EventStreams as Streams};
use crate::{api, state::AppState};

/// How often the status is compared with the last one sent.
const CHECK: Duration = Duration::from_millis(250);
/// Longest gap between two events.
const REFRESH: Duration = Duration::from_secs(5);

struct Open(Arc<Streams>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.close();
    }
}

struct Feed {
    state: Arc<AppState>,
    streams: Arc<Streams>,
    last_key: Option<serde_json::Value>,
    last_sent: Instant,
    /// The newest history entry sent (0: none yet).
    history_seq: u64,
    _open: Open,
}

#[utoipa::path(get, path = "/api/v1/events", tag = "status",
    responses((status = 200, description = "Server-sent events: `status` (a StatusEvent) on every change, `history` (a History) once, `sample` (a Sample) every 2 s", content_type = "text/event-stream", body = String)))]
/// `GET /api/v1/events`.
pub async fn events(
    State(state): State<Arc<AppState>>,
    State(streams): State<Arc<Streams>>,
) -> Response {
    streams.opened();
    let feed = Feed {
        state,
        streams: streams.clone(),
        last_key: None,
        last_sent: Instant::now(),
        history_seq: 0,
        _open: Open(streams),
    };
    let mut sse = Sse::new(feed_stream(feed))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    // Proxies in front of the admin API must not buffer the stream.
    sse.headers_mut()
        .insert("x-accel-buffering", http::HeaderValue::from_static("no"));
    sse
}

fn feed_stream(feed: Feed) -> impl Stream<Item = Result<Event, Infallible>> {
    stream::unfold(feed, |mut f| async move {
        loop {
            if f.last_key.is_some() {
                tokio::time::sleep(CHECK).await;
            }
            // History first: it moves at most every 2 s, while under traffic the status
            // changes at nearly every check and would starve it.
            if let Some(event) = f.history_event() {
                return Some((Ok(event), f));
            }
            if let Some(event) = f.status_event() {
                return Some((Ok(event), f));
            }
        }
    })
}

impl Feed {
    /// The status, when it changed (or `REFRESH` passed) since the last one sent.
    fn status_event(&mut self) -> Option<Event> {
        let mut status = status_of(&self.state);
        status.event_streams = self.streams.open();
        let body = api::StatusEvent {
            now: crate::state::process::unix_now(),
            status,
        };
        let value = serde_json::to_value(&body).ok()?;
        let key = without_ages(&value);
        if self.last_key.as_ref() == Some(&key) && self.last_sent.elapsed() < REFRESH {
            return None;
        }
        self.last_key = Some(key);
        self.last_sent = Instant::now();
        Some(Event::default().event("status").data(value.to_string()))
    }

    /// Samples and marks newer than those sent (the first one: all the proxy keeps).
    fn history_event(&mut self) -> Option<Event> {
        let h = &self.state.history;
        if h.seq() <= self.history_seq {
            return None;
        }
        let body = h.since(self.history_seq);
        let newest = body.samples.iter().map(|s| s.seq);
        self.history_seq = newest
            .chain(body.marks.iter().map(|m| m.seq))
            .max()
            .unwrap_or(self.history_seq)
            .max(self.history_seq);
        let data = serde_json::to_string(&body).ok()?;
        Some(Event::default().event("history").data(data))
    }
}

/// Keys whose values move by themselves.
const MOVING: [&str; 3] = ["now", "event_streams", "oldest_pending_seconds"];

/// The value without what moves by itself (ages, uptime, the clock, the stream count).
fn without_ages(v: &serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => m
            .iter()
            .filter(|(k, _)| !MOVING.contains(&k.as_str()) && !k.contains("age_seconds"))
            .map(|(k, v)| (k.clone(), without_ages(v)))
            .collect(),
        serde_json::Value::Array(a) => a.iter().map(without_ages).collect(),
        other => other.clone(),
    }
}
