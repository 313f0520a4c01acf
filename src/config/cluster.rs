//! `[cluster]`: where this worker's exchange listens and where the other
//! workers are, for a pipeline run as N workers (`sluice run --workers N`).
//! Without the section, or with one worker, sluice runs alone.

use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use sluice_engine::cluster::ClusterSpec;
use sluice_engine::config::{deserialize_all, ConfigError, SourceText};
use sluice_engine::exchange::PeerAddresses;
use toml::de::DeValue;
use toml::Spanned;

/// What stands for a worker id in a `peers` template.
const PLACEHOLDER: &str = "{worker}";

/// `[cluster]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// This worker's exchange address, `host:port`, e.g. `"0.0.0.0:7070"`
    /// in a container or `"127.0.0.1:1770${SLUICE_WORKER_ID}"` for several
    /// workers on one machine.
    pub listen: String,
    /// Every worker's exchange address: a template where `{worker}` stands
    /// for the worker id (`"sluice-{worker}.sluice-headless:7070"`), or a
    /// list of `host:port`, one per worker in worker order.
    pub peers: Peers,
}

/// `[cluster] peers`: a template or a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Peers {
    /// `host:port` with `{worker}` for the worker id.
    Template(String),
    /// One `host:port` per worker.
    List(Vec<String>),
}

impl<'de> Deserialize<'de> for Peers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct PeersVisitor;
        impl<'de> Visitor<'de> for PeersVisitor {
            type Value = Peers;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a template with `{worker}` such as \"sluice-{worker}.sluice-headless:7070\", \
                     or a list of \"host:port\" strings, one per worker",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Peers, E> {
                Ok(Peers::Template(v.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Peers, A::Error> {
                let mut list = Vec::new();
                while let Some(address) = seq.next_element::<String>()? {
                    list.push(address);
                }
                Ok(Peers::List(list))
            }
        }
        d.deserialize_any(PeersVisitor)
    }
}

impl ClusterSection {
    /// What the runtime takes.
    pub fn to_spec(&self) -> ClusterSpec {
        ClusterSpec {
            listen: self.listen.clone(),
            peers: match &self.peers {
                Peers::Template(t) => PeerAddresses::Template(t.clone()),
                Peers::List(l) => PeerAddresses::List(l.clone()),
            },
        }
    }

    /// How many addresses `peers` lists (`None` for a template).
    pub fn listed_peers(&self) -> Option<usize> {
        match &self.peers {
            Peers::Template(_) => None,
            Peers::List(l) => Some(l.len()),
        }
    }
}

/// Why `address` is not `host:port`, if it is not.
fn address_error(address: &str) -> Option<String> {
    let Some((host, port)) = address.rsplit_once(':') else {
        return Some(format!("`{address}` is not `host:port` (no port)"));
    };
    if host.is_empty() {
        return Some(format!("`{address}` has no host"));
    }
    if port.parse::<u16>().is_err() {
        return Some(format!(
            "`{address}`: the port `{port}` is not a number from 0 to 65535"
        ));
    }
    None
}

/// Parses and checks `[cluster]`: every mistake, each located at its field
/// (an address is checked even when another field is wrong).
pub(super) fn parse(
    src: &SourceText,
    value: &Spanned<DeValue<'_>>,
) -> Result<ClusterSection, Vec<ConfigError>> {
    let parsed = deserialize_all::<ClusterSection>(src, "cluster", value.clone());
    let mut errors = parsed.as_ref().err().cloned().unwrap_or_default();
    let DeValue::Table(table) = value.get_ref() else {
        return parsed;
    };
    let at = |v: &Spanned<DeValue<'_>>, field: &str, message: String| {
        ConfigError::at(src, v.span().start, message).with_field(format!("cluster.{field}"))
    };
    if let Some(v) = table.get("listen") {
        if let DeValue::String(listen) = v.get_ref() {
            if let Some(e) = address_error(listen) {
                errors.push(at(
                    v,
                    "listen",
                    format!("`[cluster] listen`: {e}; e.g. \"0.0.0.0:7070\""),
                ));
            }
        }
    }
    match table.get("peers").map(|v| (v, v.get_ref())) {
        Some((v, DeValue::String(t))) if !t.contains(PLACEHOLDER) => errors.push(at(
            v,
            "peers",
            format!(
                "`[cluster] peers`: the template `{t}` has no `{PLACEHOLDER}`, so every \
                 worker would have the same address; e.g. \"sluice-{PLACEHOLDER}.sluice-headless:7070\", \
                 or a list of addresses"
            ),
        )),
        Some((v, DeValue::String(t))) => {
            if let Some(e) = address_error(&t.replace(PLACEHOLDER, "0")) {
                errors.push(at(v, "peers", format!("`[cluster] peers`: {e} for worker 0")));
            }
        }
        Some((v, DeValue::Array(list))) if list.is_empty() => errors.push(at(
            v,
            "peers",
            "`[cluster] peers` is empty: give one address per worker".to_string(),
        )),
        Some((_, DeValue::Array(list))) => {
            for (worker, item) in list.iter().enumerate() {
                if let DeValue::String(address) = item.get_ref() {
                    if let Some(e) = address_error(address) {
                        errors.push(at(
                            item,
                            "peers",
                            format!("`[cluster] peers`: {e} (the address of worker {worker})"),
                        ));
                    }
                }
            }
        }
        _ => {}
    }
    match parsed {
        Ok(section) if errors.is_empty() => Ok(section),
        _ => {
            errors.sort_by_key(|e| (e.line, e.column));
            Err(errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<ClusterSection, Vec<ConfigError>> {
        let src = SourceText::plain(std::path::Path::new("p.toml"), text.to_string());
        let doc = src.parse().map_err(|e| vec![e])?;
        let value = doc
            .get_ref()
            .get("cluster")
            .expect("a [cluster] table")
            .clone();
        parse(&src, &value)
    }

    #[test]
    fn a_template_and_a_list_are_both_peers() {
        let t =
            load("[cluster]\nlisten = \"0.0.0.0:7070\"\npeers = \"s-{worker}.h:7070\"\n").unwrap();
        assert_eq!(t.peers, Peers::Template("s-{worker}.h:7070".into()));
        assert_eq!(
            t.to_spec().peers.address(2, 3).unwrap(),
            "s-2.h:7070".to_string()
        );
        let l = load("[cluster]\nlisten = \"127.0.0.1:1\"\npeers = [\"a:1\", \"b:2\"]\n").unwrap();
        assert_eq!(l.listed_peers(), Some(2));
        assert_eq!(l.to_spec().listen, "127.0.0.1:1");
    }

    #[test]
    fn mistakes_are_located_at_their_field() {
        let e = load("[cluster]\nlisten = \"0.0.0.0\"\npeers = \"10.0.0.1:7070\"\n").unwrap_err();
        assert_eq!(e.len(), 2, "{e:?}");
        assert_eq!(
            (e[0].line, e[0].field.as_deref()),
            (2, Some("cluster.listen"))
        );
        assert!(e[0].message.contains("no port"), "{}", e[0].message);
        assert_eq!(
            (e[1].line, e[1].field.as_deref()),
            (3, Some("cluster.peers"))
        );
        assert!(
            e[1].message.contains("has no `{worker}`"),
            "{}",
            e[1].message
        );
        let e = load("[cluster]\nlisten = \"0.0.0.0:7070\"\npeers = 3\n").unwrap_err();
        assert!(e[0].message.contains("a list of \"host:port\""), "{e:?}");
        let e = load("[cluster]\nlisten = \"h:99999\"\npeers = [\"a:1\", \"b\"]\n").unwrap_err();
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[1].message.contains("worker 1"), "{}", e[1].message);
    }

    #[test]
    fn an_unknown_key_does_not_hide_a_bad_address() {
        let e = load("[cluster]\nlisten = \"0.0.0.0\"\npeer = \"s-{worker}:7070\"\n").unwrap_err();
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[0].message.contains("no port"), "{e:?}");
        assert!(e[1].message.contains("unknown field `peer`"), "{e:?}");
    }

    #[test]
    fn unknown_and_missing_keys_are_refused() {
        let e =
            load("[cluster]\nlisten = \"0.0.0.0:7070\"\npeer = \"s-{worker}:7070\"\n").unwrap_err();
        assert!(e[0].message.contains("unknown field `peer`"), "{e:?}");
        assert_eq!(e[0].line, 3);
        let e = load("[cluster]\npeers = \"s-{worker}:7070\"\n").unwrap_err();
        assert!(e[0].message.contains("missing field `listen`"), "{e:?}");
    }
}
