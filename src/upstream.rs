//! The one way the coordinator builds HTTP clients for its children: ureq
//! agents whose resolver takes the host as an IP literal.
//!
//! Children are always addressed as `127.0.0.1` (musl would resolve
//! `localhost` to `::1` first). ureq's default resolver, whenever a timeout
//! is set, runs every lookup on a freshly spawned thread so that it can be
//! abandoned, even for an IP literal and even when a pooled connection is
//! then reused; that thread per request was the largest cost of a proxied
//! request. Here no lookup happens at all.
//!
//! Nor does a proxy: ureq would otherwise take `HTTP_PROXY`/`HTTPS_PROXY`
//! /`ALL_PROXY` from the environment, which operators set for the
//! children's browsers, and send our loopback traffic to it.

use std::net::{IpAddr, SocketAddr};

use ureq::config::{Config, ConfigBuilder};
use ureq::http::Uri;
use ureq::typestate::AgentScope;
use ureq::unversioned::resolver::{ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

/// Resolves only IP literals, without a thread or a system call.
#[derive(Debug)]
struct IpLiteral;

impl Resolver for IpLiteral {
    fn resolve(
        &self,
        uri: &Uri,
        _config: &Config,
        _timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let authority = uri.authority().ok_or(ureq::Error::HostNotFound)?;
        let ip: IpAddr = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| ureq::Error::HostNotFound)?;
        let mut out = self.empty();
        out.push(SocketAddr::new(ip, authority.port_u16().unwrap_or(80)));
        Ok(out)
    }
}

/// Where every child agent's configuration starts: no proxy.
pub fn config_builder() -> ConfigBuilder<AgentScope> {
    ureq::Agent::config_builder().proxy(None)
}

/// An agent for talking to children with `config` (from `config_builder`).
pub fn agent(config: Config) -> ureq::Agent {
    agent_with(config, DefaultConnector::default())
}

/// An agent over `connector` (the default one, possibly wrapped).
pub fn agent_with(
    config: Config,
    connector: impl ureq::unversioned::transport::Connector<()>,
) -> ureq::Agent {
    ureq::Agent::with_parts(config, connector, IpLiteral)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_literals_resolve_and_names_do_not() {
        let r = IpLiteral;
        let cfg = Config::default();
        let resolve = |u: &str| r.resolve(&u.parse().unwrap(), &cfg, NextTimeout::default());
        let got: Vec<SocketAddr> = resolve("http://127.0.0.1:3100/health")
            .unwrap()
            .iter()
            .copied()
            .collect();
        assert_eq!(got, vec!["127.0.0.1:3100".parse::<SocketAddr>().unwrap()]);
        let v6: Vec<SocketAddr> = resolve("http://[::1]:80/")
            .unwrap()
            .iter()
            .copied()
            .collect();
        assert_eq!(v6, vec!["[::1]:80".parse::<SocketAddr>().unwrap()]);
        assert!(resolve("http://localhost:1/").is_err());
    }
}
