//! Commands only the owner may give a running cluster (e.g. removing a node), authenticated by
//! a MAC under a key derived from the master secret, which the owner and the control planes
//! hold, and bound to a timestamp so an old command is not accepted later.

use aws_lc_rs::hmac;
use veil_keys::{ClusterSecrets, KeyId};

/// How far (seconds) an owner command's timestamp may be from the control plane's clock.
pub const MAX_SKEW_SECS: i64 = 120;

/// The MAC of owner command `command` (e.g. `remove-node node-0123456789ab`) made at `at`.
pub fn command_mac(secrets: &ClusterSecrets, command: &str, at: i64) -> Result<[u8; 32], String> {
    let key = secrets
        .derive(&KeyId::parse("cluster/owner-commands").map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let k = hmac::Key::new(hmac::HMAC_SHA256, key.expose());
    let mut ctx = hmac::Context::with_key(&k);
    ctx.update(b"veil-owner-command-v1\0");
    ctx.update(&at.to_be_bytes());
    ctx.update(command.as_bytes());
    ctx.sign()
        .as_ref()
        .try_into()
        .map_err(|_| "HMAC-SHA256 is not 32 bytes".to_string())
}

/// Checks an owner command: its time within [`MAX_SKEW_SECS`] of `now`, its MAC right.
pub fn check(
    secrets: &ClusterSecrets,
    command: &str,
    at: i64,
    mac: &[u8],
    now: i64,
) -> Result<(), String> {
    if (now - at).abs() > MAX_SKEW_SECS {
        return Err(format!(
            "the command was made at {at}, {}s from this control plane's clock (at most {MAX_SKEW_SECS}s)",
            now - at
        ));
    }
    let want = command_mac(secrets, command, at)?;
    aws_lc_rs::constant_time::verify_slices_are_equal(&want, mac)
        .map_err(|_| "the command's MAC is wrong: it is not from the owner of this cluster".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use veil_keys::SecretBytes;

    fn secrets(m: u8) -> ClusterSecrets {
        ClusterSecrets::new(SecretBytes::from_slice("m", &mut [m; 32]).unwrap(), [1; 32])
    }

    #[test]
    fn only_the_owner_now_for_this_command() {
        let s = secrets(1);
        let mac = command_mac(&s, "remove-node node-1", 1000).unwrap();
        check(&s, "remove-node node-1", 1000, &mac, 1010).unwrap();
        assert!(
            check(&s, "remove-node node-2", 1000, &mac, 1010)
                .unwrap_err()
                .contains("MAC")
        );
        assert!(check(&secrets(2), "remove-node node-1", 1000, &mac, 1010).is_err());
        assert!(
            check(&s, "remove-node node-1", 1000, &mac, 2000)
                .unwrap_err()
                .contains("clock")
        );
        assert!(check(&s, "remove-node node-1", 1000, &mac[..31], 1010).is_err());
    }
}
