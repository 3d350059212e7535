//! Strict mode: inside a node's network namespace, nftables drops every packet between the
//! node and other nodes of its LAN that is not WireGuard or an allowed (attested-TLS) service
//! port, so a misconfigured or downed mesh fails closed instead of sending plaintext.

use std::net::Ipv4Addr;

/// What strict mode lets through between nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StrictPolicy {
    /// The nodes' LAN (where plaintext must not flow), e.g. 10.213.7.0.
    pub lan: Ipv4Addr,
    /// Its prefix length.
    pub prefix: u8,
    /// The WireGuard UDP port.
    pub wireguard_port: u16,
    /// TCP ports of services that protect themselves (attested TLS: join, keys), reachable
    /// between nodes and from the host's address on the LAN (the owner's tools).
    pub tls_ports: Vec<u16>,
}

/// The nftables table name strict mode installs.
pub const TABLE: &str = "veil_strict";

impl StrictPolicy {
    /// The nftables ruleset (for `nft -f -` inside the node's namespace). It replaces any
    /// earlier version of itself.
    ///
    /// New flows between LAN addresses are let through by destination port only (WireGuard,
    /// the attested-TLS ports); their replies by connection tracking. A packet's source port
    /// is the sender's to choose, so no rule looks at it.
    pub fn ruleset(&self) -> String {
        let lan = format!("{}/{}", self.lan, self.prefix);
        let ports = self
            .tls_ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let wg = self.wireguard_port;
        let (tls_out, tls_in) = if self.tls_ports.is_empty() {
            (String::new(), String::new())
        } else {
            (
                format!("    ip daddr {lan} tcp dport {{ {ports} }} ct state new accept\n"),
                format!("    ip saddr {lan} tcp dport {{ {ports} }} ct state new accept\n"),
            )
        };
        format!(
            "table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n  chain out {{\n    type filter hook output priority 0; policy accept;\n    ip daddr {lan} ct state established,related accept\n    ip daddr {lan} udp dport {wg} accept\n{tls_out}    ip daddr {lan} counter drop\n  }}\n  chain in {{\n    type filter hook input priority 0; policy accept;\n    ip saddr {lan} ct state established,related accept\n    ip saddr {lan} udp dport {wg} accept\n{tls_in}    ip saddr {lan} counter drop\n  }}\n}}\n",
        )
    }

    /// Installs the ruleset in the calling thread's network namespace (`nft -f -`).
    pub fn apply(&self) -> Result<(), crate::MeshError> {
        use std::io::Write;
        let fail = |detail: String| crate::MeshError::Strict(detail);
        let mut child = std::process::Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| fail(format!("cannot run nft ({e}); install nftables")))?;
        child
            .stdin
            .take()
            .ok_or_else(|| fail("nft: no stdin".into()))?
            .write_all(self.ruleset().as_bytes())
            .map_err(|e| fail(format!("nft: {e}")))?;
        let out = child
            .wait_with_output()
            .map_err(|e| fail(format!("nft: {e}")))?;
        if !out.status.success() {
            return Err(fail(format!(
                "nft refused the ruleset: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ruleset_lets_through_only_wireguard_and_the_tls_ports() {
        let p = StrictPolicy {
            lan: Ipv4Addr::new(10, 213, 7, 0),
            prefix: 24,
            wireguard_port: 51820,
            tls_ports: vec![7443, 9464],
        };
        let r = p.ruleset();
        assert!(
            r.contains("ip daddr 10.213.7.0/24 udp dport 51820 accept"),
            "{r}"
        );
        assert!(
            r.contains("tcp dport { 7443, 9464 } ct state new accept"),
            "{r}"
        );
        assert!(r.contains("ct state established,related accept"), "{r}");
        assert!(!r.contains("sport"), "no rule trusts a source port: {r}");
        assert!(r.contains("ip daddr 10.213.7.0/24 counter drop"), "{r}");
        assert!(r.contains("ip saddr 10.213.7.0/24 counter drop"), "{r}");
        let none = StrictPolicy {
            tls_ports: vec![],
            ..p
        };
        assert!(!none.ruleset().contains("tcp"), "{}", none.ruleset());
    }
}
