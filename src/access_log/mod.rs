//! The access log's pure part: what one line says ([`Record`], [`Outcome`]) and how it is
//! written (`json`, `logfmt`, nginx `combined`), request ids and W3C trace context. No I/O:
//! the proxy fills a record, [`format`] renders it, the state layer's sink queues the line
//! and a writer thread (`services::access_log`) writes it.
//!
//! JSON keys are a contract (README, "Access log"): every key below is always present, `null`
//! when it does not apply; `request_headers` / `response_headers` only when configured.

mod format;
pub mod ids;
mod record;

pub use format::format;
pub use record::{Outcome, Record, KEYS};
