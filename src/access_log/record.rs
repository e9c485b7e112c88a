//! One access log line as data: [`Record`], its [`Outcome`] and the JSON keys.

use std::{net::IpAddr, time::Duration, time::SystemTime};

/// What tidegate did with a request: the `outcome` key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Sent to a backend on the first attempt, answered.
    Proxied,
    /// Answered by a backend after more than one attempt.
    Retried,
    /// Answered by a backend after waiting in the hold queue.
    Held,
    /// No backend became available within `hold.timeout` (503).
    HoldTimeout,
    /// No backend, and holding was off or the hold queue full (503).
    NoBackend,
    /// Stored durably and answered 202 (`spool_id` set).
    Spooled,
    /// The spool would not store it (413 too large, 503 full, busy or unavailable).
    SpoolRefused,
    /// Sent to a backend from the spool by the replayer.
    Replayed,
    /// A spool replay attempt that got no answer (it is tried again or goes dead).
    ReplayFailed,
    /// Answered 503 by maintenance mode.
    Maintenance,
    /// Refused at the edge before routing (400, 405, 431).
    Refused,
    /// Redirected to HTTPS by a plain listener (308).
    Redirected,
    /// An ACME HTTP-01 challenge answered by tidegate.
    Acme,
    /// No route matched (404).
    NoRoute,
    /// Ended by a drain deadline (503, SSE end, WebSocket close 1001).
    DrainDeadline,
    /// Ended by the shutdown grace.
    Shutdown,
    /// The client went away before the response was complete (status 499 when nothing
    /// was sent).
    ClientGone,
    /// The backend failed: refused, reset, or an invalid answer (502).
    UpstreamError,
    /// The backend did not answer in time (504).
    Timeout,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Proxied => "proxied",
            Outcome::Retried => "retried",
            Outcome::Held => "held",
            Outcome::HoldTimeout => "hold_timeout",
            Outcome::NoBackend => "no_backend",
            Outcome::Spooled => "spooled",
            Outcome::SpoolRefused => "spool_refused",
            Outcome::Replayed => "replayed",
            Outcome::ReplayFailed => "replay_failed",
            Outcome::Maintenance => "maintenance",
            Outcome::Refused => "refused",
            Outcome::Redirected => "redirected",
            Outcome::Acme => "acme_challenge",
            Outcome::NoRoute => "no_route",
            Outcome::DrainDeadline => "drain_deadline",
            Outcome::Shutdown => "shutdown",
            Outcome::ClientGone => "client_gone",
            Outcome::UpstreamError => "upstream_error",
            Outcome::Timeout => "timeout",
        }
    }

    /// Plain success: the only outcome `access_log.sample` thins out.
    pub fn is_plain(self) -> bool {
        self == Outcome::Proxied
    }

    /// Every outcome, in the README's order.
    pub const ALL: [Outcome; 17] = [
        Outcome::Proxied,
        Outcome::Retried,
        Outcome::Held,
        Outcome::HoldTimeout,
        Outcome::NoBackend,
        Outcome::Spooled,
        Outcome::SpoolRefused,
        Outcome::Replayed,
        Outcome::ReplayFailed,
        Outcome::Maintenance,
        Outcome::Refused,
        Outcome::NoRoute,
        Outcome::DrainDeadline,
        Outcome::Shutdown,
        Outcome::ClientGone,
        Outcome::UpstreamError,
        Outcome::Timeout,
    ];
}

/// One access log line, borrowed from the request it describes.
#[derive(Debug)]
pub struct Record<'a> {
    pub time: SystemTime,
    pub request_id: Option<&'a str>,
    pub trace_id: Option<&'a str>,
    pub client: Option<IpAddr>,
    pub method: &'a str,
    pub host: Option<&'a str>,
    pub path: &'a str,
    /// Only when `access_log.query` is on.
    pub query: Option<&'a str>,
    pub protocol: &'static str,
    /// 499 when the client left before any response was sent.
    pub status: u16,
    /// Body bytes read from the client and sent to it.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// From the request's arrival to its end (a stream's lifetime).
    pub duration: Duration,
    /// The last attempt's connect (0 on a reused connection).
    pub connect: Option<Duration>,
    /// From arrival to the backend's response header.
    pub first_byte: Option<Duration>,
    /// Time spent in the hold queue.
    pub held: Duration,
    pub route: Option<&'a str>,
    pub pool: Option<&'a str>,
    pub backend: Option<&'a str>,
    /// How the pool was chosen: `split`, `affinity`, `redealt` or `forced`.
    pub pick: Option<&'static str>,
    /// `http`, `sse` or `websocket`.
    pub kind: &'static str,
    pub attempts: u32,
    pub outcome: Outcome,
    pub spool_id: Option<i64>,
    /// A short reason when the outcome is a failure.
    pub error: Option<&'a str>,
    /// Only in `combined` (a referring page's query may carry tokens).
    pub referer: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub request_headers: Vec<(&'a str, &'a str)>,
    pub response_headers: Vec<(&'a str, &'a str)>,
}

/// The keys of a JSON line, in order (the README documents each).
pub const KEYS: [&str; 26] = [
    "time",
    "request_id",
    "trace_id",
    "client",
    "method",
    "host",
    "path",
    "query",
    "protocol",
    "status",
    "bytes_in",
    "bytes_out",
    "duration_ms",
    "connect_ms",
    "first_byte_ms",
    "held_ms",
    "route",
    "pool",
    "backend",
    "pick",
    "kind",
    "attempts",
    "outcome",
    "spool_id",
    "error",
    "user_agent",
];
