//! `GET /api/v1/events`: the status as server-sent events, for the status page and scripts.
//!
//! One `status` event at once, then one whenever anything but an age or uptime changed
//! (checked every 250 ms), and one at least every 5 s (ages move); a comment every 15 s
//! keeps idle proxies and load balancers from closing the stream. Each event is
//! `{"now": unix seconds, …the /api/v1/status body}`. A client that goes away ends its stream
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
    _open: Open,
}

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
            let mut status = status_of(&f.state);
            status.event_streams = f.streams.open();
            let body = api::StatusEvent {
                now: crate::state::process::unix_now(),
                status,
            };
            let Ok(value) = serde_json::to_value(&body) else {
                continue;
            };
            let key = without_ages(&value);
            if f.last_key.as_ref() == Some(&key) && f.last_sent.elapsed() < REFRESH {
                continue;
            }
            f.last_key = Some(key);
            f.last_sent = Instant::now();
            let event = Event::default().event("status").data(value.to_string());
            return Some((Ok(event), f));
        }
    })
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
