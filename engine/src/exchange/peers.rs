//! Where the other workers listen: a template expanded per worker id (the
//! StatefulSet's stable DNS names) or a list of N addresses. Names are
//! resolved when connecting, not here: a pod's DNS name appears only once
//! the pod exists.

use super::ExchangeError;

/// The addresses of the workers' exchange servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerAddresses {
    /// `host:port` with `{worker}` standing for the worker id, e.g.
    /// `"sluice-{worker}.sluice-headless:7070"` or `"127.0.0.1:1770{worker}"`.
    Template(String),
    /// One `host:port` per worker, in worker order.
    List(Vec<String>),
}

const PLACEHOLDER: &str = "{worker}";

impl PeerAddresses {
    /// The address of `worker` out of `workers`.
    ///
    /// # Errors
    /// [`ExchangeError::Peers`] for a template without `{worker}` (when
    /// there is more than one worker), a list whose length is not `workers`,
    /// or a worker id out of range.
    pub fn address(&self, worker: u32, workers: u32) -> Result<String, ExchangeError> {
        if worker >= workers {
            return Err(ExchangeError::Peers(format!(
                "worker {worker} does not exist: there are {workers} workers (0..{workers})"
            )));
        }
        match self {
            PeerAddresses::Template(t) if t.contains(PLACEHOLDER) || workers == 1 => {
                Ok(t.replace(PLACEHOLDER, &worker.to_string()))
            }
            PeerAddresses::Template(t) => Err(ExchangeError::Peers(format!(
                "the peer address `{t}` has no `{PLACEHOLDER}`: every worker would be the same address"
            ))),
            PeerAddresses::List(list) if list.len() == workers as usize => {
                Ok(list[worker as usize].clone())
            }
            PeerAddresses::List(list) => Err(ExchangeError::Peers(format!(
                "{} peer addresses for {workers} workers: give one per worker",
                list.len()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_expand_per_worker() {
        let dns = PeerAddresses::Template("sluice-{worker}.sluice-headless:7070".into());
        assert_eq!(dns.address(2, 3).unwrap(), "sluice-2.sluice-headless:7070");
        let local = PeerAddresses::Template("127.0.0.1:1770{worker}".into());
        assert_eq!(local.address(0, 3).unwrap(), "127.0.0.1:17700");
        assert!(local.address(3, 3).is_err());
        assert!(PeerAddresses::Template("10.0.0.1:7070".into())
            .address(1, 2)
            .is_err());
    }

    #[test]
    fn lists_need_one_address_per_worker() {
        let list = PeerAddresses::List(vec!["a:1".into(), "b:2".into()]);
        assert_eq!(list.address(1, 2).unwrap(), "b:2");
        assert!(list.address(1, 3).is_err());
    }
}
