//! Routes as written: match, split, retries, hold.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::config::duration::HumanDuration;

/// A route: a match and a weighted split across pools.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRoute {
    pub name: String,
    #[serde(rename = "match", default)]
    pub matcher: FileMatch,
    pub split: BTreeMap<String, i64>,
    #[serde(default = "default_retries")]
    pub retries: u32,
    #[serde(default)]
    pub hold: FileHold,
    /// Which requests that already reached a backend may be sent again to another one when
    /// that backend closes or resets the connection before any response byte.
    #[serde(default)]
    pub retry_sent: FileRetrySent,
    /// Store matching requests durably while no backend is available; replay them later.
    #[serde(default)]
    pub spool: Option<super::spool::FileSpool>,
    /// Keep a user on one pool (and backend) through splits and ramps.
    #[serde(default)]
    pub affinity: Option<super::affinity::FileAffinity>,
    /// Let a header or cookie pin a request to an allowed pool (testing before a shift).
    #[serde(default)]
    pub force_pool: Option<super::affinity::FileForcePool>,
}

/// Retry policy for requests that already reached a backend (nginx's `proxy_next_upstream`
/// default: idempotent methods only).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FileRetrySent {
    /// Never send a request twice.
    Never,
    /// GET, HEAD, OPTIONS, TRACE, PUT, DELETE (RFC 9110 idempotent methods).
    #[default]
    Idempotent,
    /// Every method, POST and PATCH included (nginx `non_idempotent`).
    All,
}

/// Default retries on connect failure.
pub fn default_retries() -> u32 {
    2
}

/// What a route matches. Empty means every host and every path.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileMatch {
    #[serde(default = "default_host")]
    pub host: OneOrMany,
    #[serde(default = "default_path_prefix")]
    pub path_prefix: String,
    #[serde(default)]
    pub methods: Option<Vec<String>>,
}

impl Default for FileMatch {
    fn default() -> Self {
        Self {
            host: default_host(),
            path_prefix: default_path_prefix(),
            methods: None,
        }
    }
}

fn default_host() -> OneOrMany {
    OneOrMany::One("*".into())
}
fn default_path_prefix() -> String {
    "/".into()
}

/// `host: "a"` or `host: ["a", "b"]`.
#[derive(Debug)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl<'de> Deserialize<'de> for OneOrMany {
    // Hand-written rather than `#[serde(untagged)]`, whose only error is "data did not match
    // any variant of untagged enum": this one says what was expected and where.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a host pattern or a list of host patterns")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany::One(v.to_string()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<OneOrMany, A::Error> {
                let mut v = Vec::new();
                while let Some(s) = a.next_element::<HostString>()? {
                    v.push(s.0);
                }
                Ok(OneOrMany::Many(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// One host pattern in a list.
struct HostString(String);

impl<'de> Deserialize<'de> for HostString {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = HostString;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a host pattern")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<HostString, E> {
                Ok(HostString(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl OneOrMany {
    /// The values as a slice-like vec.
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// Holding requests while no backend is available.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHold {
    #[serde(default = "default_hold_timeout")]
    pub timeout: HumanDuration,
    #[serde(default = "default_max_queued")]
    pub max_queued: u32,
}

impl Default for FileHold {
    fn default() -> Self {
        Self {
            timeout: default_hold_timeout(),
            max_queued: default_max_queued(),
        }
    }
}

/// Default hold timeout.
pub fn default_hold_timeout() -> HumanDuration {
    HumanDuration::from_secs(30)
}
/// Default hold queue bound.
pub fn default_max_queued() -> u32 {
    1000
}
