//! This node's own TPM, shown to those who must check it: its endorsement (EK certificate, EK,
//! AK) and the activation of a credential made for them. Only attested nodes and the owner may
//! ask; a credential is activated once per connection and a few times per second in all, with
//! no lock held while the TPM works: the TPM is not an oracle to drive.

use veil_attest_core::bytes::decode_hex;

use super::{Caller, ControlPlane, refused};
use veil_appraisal::owner::{OwnerAuth, commands};
use veil_client::clock::now;
use veil_wire::proto::{Response, SecretHex};

/// Credential activations per second, in all.
pub const MAX_ACTIVATIONS_PER_SECOND: u32 = 8;

/// This node's TPM endorsement.
#[derive(Clone, Debug)]
pub(super) struct Endorsement {
    pub ek_cert: Vec<u8>,
    pub ek_public: Vec<u8>,
    pub ak_public: Vec<u8>,
}

impl ControlPlane {
    /// This node's endorsement, read from the TPM once.
    pub(super) fn own_endorsement(&self) -> Result<Endorsement, String> {
        if let Some(e) = self.endorsement.get() {
            return Ok(e.clone());
        }
        let e = self
            .attester
            .with_tpm(|t| {
                Ok::<_, veil_tpm_device::TpmDeviceError>(Endorsement {
                    ek_cert: t.ek_certificate()?,
                    ek_public: t.load_ek()?,
                    ak_public: t.ak_public().to_vec(),
                })
            })?
            .map_err(|e| e.to_string())?;
        Ok(self.endorsement.get_or_init(|| e).clone())
    }

    /// Whether the caller may see or exercise this node's TPM: it attested, or the owner
    /// signed `command`.
    fn may_use_tpm(
        &self,
        op: &str,
        caller: &Caller<'_>,
        command: &str,
        auth: Option<&OwnerAuth>,
    ) -> Result<(), Response> {
        if caller.peer.is_some() {
            return Ok(());
        }
        match auth {
            Some(a) => self.owner_signed(op, command, a),
            None => Err(refused(format!(
                "{op}: only an attested node or the owner (signed) may ask"
            ))),
        }
    }

    /// `endorsement`.
    pub(super) fn endorsement(&self, caller: &Caller<'_>, auth: Option<&OwnerAuth>) -> Response {
        if let Err(r) = self.may_use_tpm("endorsement", caller, &commands::endorsement(), auth) {
            return r;
        }
        match self.own_endorsement() {
            Ok(e) => Response::Endorsement {
                ek_cert: hex::encode(e.ek_cert),
                ek_public: hex::encode(e.ek_public),
                ak_public: hex::encode(e.ak_public),
            },
            Err(e) => refused(format!("endorsement: {e}")),
        }
    }

    /// `prove-tpm`.
    pub(super) fn prove_tpm(
        &self,
        caller: &mut Caller<'_>,
        id_object: &str,
        encrypted_secret: &str,
        auth: Option<&OwnerAuth>,
    ) -> Response {
        if let Err(r) = self.may_use_tpm(
            "prove",
            caller,
            &commands::prove_tpm(id_object, encrypted_secret),
            auth,
        ) {
            return r;
        }
        if caller.proved {
            return refused("prove: one credential activation per connection");
        }
        {
            let Ok(mut window) = self.activations.lock() else {
                return refused("prove: internal error: lock poisoned");
            };
            let t = now().0;
            if window.0 != t {
                *window = (t, 0);
            }
            if window.1 >= MAX_ACTIVATIONS_PER_SECOND {
                return refused(format!(
                    "prove: too many credential activations (at most {MAX_ACTIVATIONS_PER_SECOND} per second); try again"
                ));
            }
            window.1 += 1;
        }
        caller.proved = true;
        let (Ok(id), Ok(sec)) = (decode_hex(id_object), decode_hex(encrypted_secret)) else {
            return refused("prove: not hex");
        };
        match self.attester.with_tpm(|t| t.activate_credential(&id, &sec)) {
            Ok(Ok(secret)) => Response::Proof {
                secret: SecretHex::encode(&secret),
            },
            Ok(Err(e)) => refused(format!("prove: {e}")),
            Err(e) => refused(format!("prove: {e}")),
        }
    }
}
