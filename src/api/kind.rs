//! The kinds of work tidegate counts, and the states that travel as words: one definition
//! each, used by the proxy, the admin API, the CLI and (through the JSON) the status page.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What kind of work a request turned out to be.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Http = 0,
    Sse = 1,
    #[serde(rename = "websocket")]
    WebSocket = 2,
    /// A gRPC call (`Content-Type: application/grpc*`), unary or streaming.
    Grpc = 3,
}

impl Kind {
    /// Number of kinds.
    pub const COUNT: usize = 4;
    /// All kinds, in index order.
    pub const ALL: [Kind; Kind::COUNT] = [Kind::Http, Kind::Sse, Kind::WebSocket, Kind::Grpc];
    /// The kinds that are always streams (a gRPC call is one only while its response is
    /// open, see `Tracked::is_stream`).
    pub const STREAMS: [Kind; 3] = [Kind::Sse, Kind::WebSocket, Kind::Grpc];

    /// Name as used in JSON, metric labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Http => "http",
            Kind::Sse => "sse",
            Kind::WebSocket => "websocket",
            Kind::Grpc => "grpc",
        }
    }

    /// SSE and WebSocket are streams by nature (their own deadline).
    pub fn is_stream(self) -> bool {
        matches!(self, Kind::Sse | Kind::WebSocket)
    }

    /// Index into per-kind arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The kind with index `v` (`Http` for anything unknown).
    pub fn from_index(v: usize) -> Kind {
        Kind::ALL.get(v).copied().unwrap_or(Kind::Http)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// In-flight work by kind. In JSON an object keyed by kind name (`{"http": 1, "sse": 0,
/// "websocket": 0, "grpc": 0}`); kinds missing from an older proxy's answer read as 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InFlight(pub [u64; Kind::COUNT]);

impl InFlight {
    /// Count of one kind.
    pub fn get(&self, k: Kind) -> u64 {
        self.0[k.index()]
    }

    /// Sum over kinds.
    pub fn total(&self) -> u64 {
        self.0.iter().fold(0, |a, b| a.saturating_add(*b))
    }

    /// Kind by kind sum of two.
    pub fn plus(self, other: InFlight) -> InFlight {
        // Saturating: counts from a shared database are input.
        InFlight(std::array::from_fn(|i| {
            self.0[i].saturating_add(other.0[i])
        }))
    }

    /// `http=1 sse=0 websocket=0 grpc=0` (log lines).
    pub fn fields(&self) -> String {
        Kind::ALL
            .iter()
            .map(|k| format!("{k}={}", self.get(*k)))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// `http 1  sse 0  websocket 0  grpc 0` (the CLI's progress and result lines).
    pub fn words(&self, sep: &str) -> String {
        Kind::ALL
            .iter()
            .map(|k| format!("{k} {}", self.get(*k)))
            .collect::<Vec<_>>()
            .join(sep)
    }
}

impl std::ops::Index<Kind> for InFlight {
    type Output = u64;
    fn index(&self, k: Kind) -> &u64 {
        &self.0[k.index()]
    }
}

impl std::ops::IndexMut<Kind> for InFlight {
    fn index_mut(&mut self, k: Kind) -> &mut u64 {
        &mut self.0[k.index()]
    }
}

impl Serialize for InFlight {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(Kind::COUNT))?;
        for k in Kind::ALL {
            m.serialize_entry(k.as_str(), &self.get(k))?;
        }
        m.end()
    }
}

/// The schema of the JSON object above: one count per kind, every kind present.
impl utoipa::PartialSchema for InFlight {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        let mut o = ObjectBuilder::new().description(Some(
            "Work in flight by kind (a client should read a missing kind as 0).",
        ));
        for k in Kind::ALL {
            let count = ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(0));
            o = o.property(k.as_str(), count).required(k.as_str());
        }
        o.into()
    }
}

impl utoipa::ToSchema for InFlight {}

impl<'de> Deserialize<'de> for InFlight {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let m = std::collections::BTreeMap::<String, u64>::deserialize(d)?;
        let mut v = InFlight::default();
        for k in Kind::ALL {
            v[k] = m.get(k.as_str()).copied().unwrap_or(0);
        }
        Ok(v)
    }
}

/// A pool's or backend's drain state as shown (`removed`: a backend gone from the config
/// that still has work in flight; `unhealthy` only in the metrics' state label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Active,
    Draining,
    Drained,
    Removed,
}

impl State {
    /// Name as used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Active => "active",
            State::Draining => "draining",
            State::Drained => "drained",
            State::Removed => "removed",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `state:` as written in the config file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FileState {
    Active,
    Draining,
}

/// A split ramp's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RampState {
    Running,
    Completed,
    Cancelled,
    RolledBack,
}

impl RampState {
    /// Name as used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            RampState::Running => "running",
            RampState::Completed => "completed",
            RampState::Cancelled => "cancelled",
            RampState::RolledBack => "rolled_back",
        }
    }
}

/// The process's health (`GET /health`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    Healthy,
    Degraded,
    Unhealthy,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_is_an_object_keyed_by_kind_and_tolerates_missing_kinds() {
        let mut f = InFlight::default();
        f[Kind::Grpc] = 3;
        f[Kind::WebSocket] = 1;
        let j = serde_json::to_value(f).unwrap();
        assert_eq!(
            j,
            serde_json::json!({"http": 0, "sse": 0, "websocket": 1, "grpc": 3})
        );
        let old: InFlight = serde_json::from_str(r#"{"http":2,"sse":1,"websocket":0}"#).unwrap();
        assert_eq!(
            (old.get(Kind::Http), old.get(Kind::Grpc), old.total()),
            (2, 0, 3)
        );
        for k in Kind::ALL {
            let s = serde_json::to_string(&k).unwrap();
            assert_eq!(s, format!("\"{}\"", k.as_str()));
            assert_eq!(Kind::from_index(k.index()), k);
        }
    }

    #[test]
    fn states_travel_as_the_words_they_always_had() {
        assert_eq!(
            serde_json::to_string(&RampState::RolledBack).unwrap(),
            "\"rolled_back\""
        );
        assert_eq!(
            serde_json::to_string(&State::Drained).unwrap(),
            "\"drained\""
        );
        assert_eq!(
            serde_json::to_string(&HealthStatus::Degraded).unwrap(),
            "\"degraded\""
        );
        for s in [
            State::Active,
            State::Draining,
            State::Drained,
            State::Removed,
        ] {
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
        for r in [
            RampState::Running,
            RampState::Completed,
            RampState::Cancelled,
            RampState::RolledBack,
        ] {
            assert_eq!(
                serde_json::to_string(&r).unwrap(),
                format!("\"{}\"", r.as_str())
            );
        }
    }
}
