//! A node's own TPM, through the TCG software stack (tss-esapi over libtss2).
//!
//! This is the device side of attestation: the node agent reads its EK certificate, creates an
//! attestation key under the EK, proves the two belong together by activating a credential the
//! verifier made, extends its measurements into PCRs and quotes them over a verifier's nonce.
//! Everything it returns is in TPM wire format, for `veil-attest-tpm` to verify.
//!
//! There is no resource manager on swtpm: every transient object and session created here is
//! flushed before the call returns, except the EK and AK handles kept by [`NodeTpm`].

use std::str::FromStr;

use tss_esapi::Context;
use tss_esapi::abstraction::{AsymmetricAlgorithmSelection, KeyCustomization, ak, ek};
use tss_esapi::attributes::NvIndexAttributesBuilder;
use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::attributes::SessionAttributesBuilder;
use tss_esapi::constants::NvIndexType;
use tss_esapi::constants::SessionType;
use tss_esapi::handles::{
    AuthHandle, KeyHandle, NvIndexHandle, NvIndexTpmHandle, ObjectHandle, PcrHandle, SessionHandle,
    TpmHandle,
};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, SignatureSchemeAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::interface_types::resource_handles::{NvAuth, Provision};
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    Data, Digest, DigestValues, EncryptedSecret, IdObject, MaxNvBuffer, NvPublicBuilder,
    PcrSelectionListBuilder, PcrSlot, SignatureScheme, SymmetricDefinition,
};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::traits::Marshall;

/// A TPM operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TpmDeviceError {
    /// The TCTI string is not valid.
    #[error("TCTI `{tcti}`: {detail}")]
    Tcti {
        /// The string.
        tcti: String,
        /// The complaint.
        detail: String,
    },
    /// A TPM command failed.
    #[error("TPM {operation}: {detail}")]
    Command {
        /// What was attempted.
        operation: &'static str,
        /// The TSS error.
        detail: String,
    },
    /// An argument is outside what the TPM accepts.
    #[error("{0}")]
    Argument(String),
}

fn cmd(operation: &'static str) -> impl FnOnce(tss_esapi::Error) -> TpmDeviceError {
    move |e| TpmDeviceError::Command {
        operation,
        detail: e.to_string(),
    }
}

/// PCR banks a quote can cover.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bank {
    /// SHA-1.
    Sha1,
    /// SHA-256.
    Sha256,
}

impl Bank {
    fn alg(self) -> HashingAlgorithm {
        match self {
            Bank::Sha1 => HashingAlgorithm::Sha1,
            Bank::Sha256 => HashingAlgorithm::Sha256,
        }
    }
}

/// The kind of attestation key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AkKind {
    /// ECDSA P-256 with SHA-256 (fast to sign: the default for Veil nodes).
    EccP256,
    /// RSASSA RSA-2048 with SHA-256.
    Rsa2048,
}

/// A quote in wire format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuoteBytes {
    /// TPMS_ATTEST.
    pub attest: Vec<u8>,
    /// TPMT_SIGNATURE.
    pub signature: Vec<u8>,
}

/// The AK template's one change from the TCG default: `noDA`. An AK has no secret
/// authorisation worth guessing, and an AK subject to dictionary-attack protection lets a
/// few unorderly TPM restarts lock the node's attestation out for many minutes.
#[derive(Debug, Clone, Copy)]
struct NoDictionaryAttackLockout;

impl KeyCustomization for NoDictionaryAttackLockout {
    fn attributes(&self, attributes: ObjectAttributesBuilder) -> ObjectAttributesBuilder {
        attributes.with_no_da(true)
    }
}

/// A connection to a TPM, with its EK and (once created) AK loaded.
#[derive(Debug)]
pub struct NodeTpm {
    ctx: Context,
    tcti: String,
    ek: Option<KeyHandle>,
    ak: Option<KeyHandle>,
    ak_public: Vec<u8>,
    /// The AK as the TPM wrapped it (private under the EK, public), to load it again.
    ak_blob: Option<(
        tss_esapi::structures::Private,
        tss_esapi::structures::Public,
    )>,
}

fn pcr_slot(pcr: u32) -> Result<PcrSlot, TpmDeviceError> {
    let bit = 1u32
        .checked_shl(pcr)
        .filter(|_| pcr < 24)
        .ok_or_else(|| TpmDeviceError::Argument(format!("PCR {pcr}: expected 0 to 23")))?;
    PcrSlot::try_from(bit).map_err(|e| TpmDeviceError::Argument(format!("PCR {pcr}: {e}")))
}

/// A context on the TPM behind `tcti`.
fn context(tcti: &str) -> Result<Context, TpmDeviceError> {
    let conf = TctiNameConf::from_str(tcti).map_err(|e| TpmDeviceError::Tcti {
        tcti: tcti.to_string(),
        detail: e.to_string(),
    })?;
    Context::new(conf).map_err(|e| TpmDeviceError::Tcti {
        tcti: tcti.to_string(),
        detail: e.to_string(),
    })
}

impl NodeTpm {
    /// Connects through a TCTI (e.g. `swtpm:path=/run/veil/tpm.sock` or `device:/dev/tpmrm0`).
    pub fn open(tcti: &str) -> Result<Self, TpmDeviceError> {
        Ok(Self {
            ctx: context(tcti)?,
            tcti: tcti.to_string(),
            ek: None,
            ak: None,
            ak_public: Vec::new(),
            ak_blob: None,
        })
    }

    /// Opens a fresh connection to the same TPM and loads the same EK and AK again (after a
    /// broken connection: every command on the old context would fail). The AK keeps its
    /// identity: it is the key the TPM wrapped at creation, loaded anew.
    pub fn reconnect(&mut self) -> Result<(), TpmDeviceError> {
        // Free the old objects if the old connection still reaches the TPM (no resource
        // manager: they would take its few object slots).
        for h in [self.ak.take(), self.ek.take()].into_iter().flatten() {
            let _ = self.ctx.flush_context(h.into());
        }
        // The old context goes before any object exists on the new one: when it is dropped
        // it flushes the handles it still believes open, and the TPM reuses handle numbers.
        drop(std::mem::replace(&mut self.ctx, context(&self.tcti)?));
        self.load_ek()?;
        if let Some((private, public)) = self.ak_blob.clone() {
            let ek = self.ek()?;
            let handle =
                ak::load_ak(&mut self.ctx, ek, None, private, public).map_err(cmd("load AK"))?;
            self.ak = Some(handle);
        }
        Ok(())
    }

    /// The RSA-2048 EK certificate (DER) from its NV index.
    pub fn ek_certificate(&mut self) -> Result<Vec<u8>, TpmDeviceError> {
        ek::retrieve_ek_pubcert(
            &mut self.ctx,
            AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048),
        )
        .map_err(cmd("read EK certificate"))
    }

    /// Creates (re-derives) the RSA-2048 EK from the default template, once; returns its
    /// TPMT_PUBLIC.
    pub fn load_ek(&mut self) -> Result<Vec<u8>, TpmDeviceError> {
        let handle = match self.ek {
            Some(h) => h,
            None => {
                let h = ek::create_ek_object_2(
                    &mut self.ctx,
                    AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048),
                    None,
                )
                .map_err(cmd("create EK"))?;
                self.ek = Some(h);
                h
            }
        };
        let (public, _, _) = self
            .ctx
            .read_public(handle)
            .map_err(cmd("read EK public"))?;
        public.marshall().map_err(cmd("marshal EK public"))
    }

    fn ek(&self) -> Result<KeyHandle, TpmDeviceError> {
        self.ek
            .ok_or_else(|| TpmDeviceError::Argument("the EK is not loaded (call load_ek)".into()))
    }

    fn ak(&self) -> Result<KeyHandle, TpmDeviceError> {
        self.ak
            .ok_or_else(|| TpmDeviceError::Argument("no AK (call create_ak)".into()))
    }

    /// Creates and loads a restricted signing key (SHA-256, noDA) of `kind` under the EK; returns its
    /// TPMT_PUBLIC.
    pub fn create_ak(&mut self, kind: AkKind) -> Result<Vec<u8>, TpmDeviceError> {
        let ek = self.ek()?;
        let (key_alg, scheme) = match kind {
            AkKind::EccP256 => (
                AsymmetricAlgorithmSelection::Ecc(EccCurve::NistP256),
                SignatureSchemeAlgorithm::EcDsa,
            ),
            AkKind::Rsa2048 => (
                AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048),
                SignatureSchemeAlgorithm::RsaSsa,
            ),
        };
        let created = ak::create_ak_2(
            &mut self.ctx,
            ek,
            HashingAlgorithm::Sha256,
            key_alg,
            scheme,
            None,
            NoDictionaryAttackLockout,
        )
        .map_err(cmd("create AK"))?;
        let handle = ak::load_ak(
            &mut self.ctx,
            ek,
            None,
            created.out_private.clone(),
            created.out_public.clone(),
        )
        .map_err(cmd("load AK"))?;
        self.ak = Some(handle);
        self.ak_public = created
            .out_public
            .marshall()
            .map_err(cmd("marshal AK public"))?;
        self.ak_blob = Some((created.out_private, created.out_public));
        Ok(self.ak_public.clone())
    }

    /// Recovers the secret of a credential made (by a verifier) for this TPM's EK and AK.
    pub fn activate_credential(
        &mut self,
        id_object: &[u8],
        encrypted_secret: &[u8],
    ) -> Result<Vec<u8>, TpmDeviceError> {
        let (ek, ak) = (self.ek()?, self.ak()?);
        let id = IdObject::try_from(id_object.to_vec())
            .map_err(|e| TpmDeviceError::Argument(format!("credential: {e}")))?;
        let secret = EncryptedSecret::try_from(encrypted_secret.to_vec())
            .map_err(|e| TpmDeviceError::Argument(format!("credential secret: {e}")))?;
        // The EK's auth policy is PolicySecret(endorsement hierarchy).
        let session = self
            .ctx
            .start_auth_session(
                None,
                None,
                None,
                SessionType::Policy,
                SymmetricDefinition::AES_128_CFB,
                HashingAlgorithm::Sha256,
            )
            .map_err(cmd("start policy session"))?
            .ok_or_else(|| TpmDeviceError::Argument("no policy session returned".into()))?;
        let (attrs, mask) = SessionAttributesBuilder::new()
            .with_decrypt(true)
            .with_encrypt(true)
            .build();
        let result = (|| {
            self.ctx
                .tr_sess_set_attributes(session, attrs, mask)
                .map_err(cmd("session attributes"))?;
            let policy = PolicySession::try_from(session).map_err(cmd("policy session"))?;
            self.ctx
                .execute_with_nullauth_session(|ctx| {
                    ctx.policy_secret(
                        policy,
                        AuthHandle::Endorsement,
                        Default::default(),
                        Default::default(),
                        Default::default(),
                        None,
                    )
                })
                .map_err(cmd("policy secret"))?;
            self.ctx
                .execute_with_sessions((Some(AuthSession::Password), Some(session), None), |ctx| {
                    ctx.activate_credential(ak, ek, id, secret)
                })
                .map_err(cmd("activate credential"))
        })();
        let _ = self.ctx.flush_context(SessionHandle::from(session).into());
        result.map(|d: Digest| d.value().to_vec())
    }

    /// Extends `pcr` in both banks with the given digests.
    pub fn extend(
        &mut self,
        pcr: u32,
        sha1: &[u8; 20],
        sha256: &[u8; 32],
    ) -> Result<(), TpmDeviceError> {
        let handle = PcrHandle::try_from(pcr)
            .map_err(|e| TpmDeviceError::Argument(format!("PCR {pcr}: {e}")))?;
        let mut values = DigestValues::new();
        values.set(
            HashingAlgorithm::Sha1,
            Digest::try_from(sha1.to_vec()).map_err(cmd("digest"))?,
        );
        values.set(
            HashingAlgorithm::Sha256,
            Digest::try_from(sha256.to_vec()).map_err(cmd("digest"))?,
        );
        self.ctx
            .execute_with_nullauth_session(|ctx| ctx.pcr_extend(handle, values))
            .map_err(cmd("extend PCR"))
    }

    /// Quotes `pcrs` in `banks` with the AK over `extra_data` (at most 64 bytes).
    pub fn quote(
        &mut self,
        extra_data: &[u8],
        banks: &[Bank],
        pcrs: &[u32],
    ) -> Result<QuoteBytes, TpmDeviceError> {
        let ak = self.ak()?;
        let data = Data::try_from(extra_data.to_vec())
            .map_err(|e| TpmDeviceError::Argument(format!("extra data: {e}")))?;
        let slots = pcrs
            .iter()
            .map(|p| pcr_slot(*p))
            .collect::<Result<Vec<_>, _>>()?;
        let mut builder = PcrSelectionListBuilder::new();
        for b in banks {
            builder = builder.with_selection(b.alg(), &slots);
        }
        let selection = builder.build().map_err(cmd("PCR selection"))?;
        let (attest, signature) = self
            .ctx
            .execute_with_nullauth_session(|ctx| {
                ctx.quote(ak, data, SignatureScheme::Null, selection)
            })
            .map_err(cmd("quote"))?;
        Ok(QuoteBytes {
            attest: attest.marshall().map_err(cmd("marshal attest"))?,
            signature: signature.marshall().map_err(cmd("marshal signature"))?,
        })
    }

    /// TPM2_Shutdown(CLEAR): what a platform sends before it powers the TPM off. Without it
    /// the next startup counts as a failed authorisation (dictionary-attack protection), and
    /// a few unorderly restarts lock the TPM out.
    pub fn shutdown(&mut self) -> Result<(), TpmDeviceError> {
        for h in [self.ak.take(), self.ek.take()].into_iter().flatten() {
            let _ = self.ctx.flush_context(h.into());
        }
        self.ctx
            .shutdown(tss_esapi::constants::StartupType::Clear)
            .map_err(cmd("shutdown"))
    }

    /// The AK's TPMT_PUBLIC (empty before [`NodeTpm::create_ak`]).
    pub fn ak_public(&self) -> &[u8] {
        &self.ak_public
    }

    /// Reads the first `size` bytes of NV index `index` (owner authorisation), or `None` if the
    /// index is not defined. Veil keeps freshness anchors of volumes here.
    pub fn nv_read(&mut self, index: u32, size: u16) -> Result<Option<Vec<u8>>, TpmDeviceError> {
        let Some(handle) = self.nv_handle(index)? else {
            return Ok(None);
        };
        let data = self
            .ctx
            .execute_with_nullauth_session(|ctx| ctx.nv_read(NvAuth::Owner, handle, size, 0))
            .map_err(cmd("NV read"));
        let _ = self.ctx.tr_close(&mut ObjectHandle::from(handle));
        Ok(Some(data?.value().to_vec()))
    }

    /// Writes `data` at the start of NV index `index`, first defining it (an ordinary index of
    /// `data.len()` bytes, owner read and write, no dictionary-attack lockout) if it is not.
    /// One TPM2_NV_Write: the TPM makes it atomic.
    pub fn nv_write(&mut self, index: u32, data: &[u8]) -> Result<(), TpmDeviceError> {
        let handle = match self.nv_handle(index)? {
            Some(h) => h,
            None => {
                let attributes = NvIndexAttributesBuilder::new()
                    .with_owner_write(true)
                    .with_owner_read(true)
                    .with_no_da(true)
                    .with_nv_index_type(NvIndexType::Ordinary)
                    .build()
                    .map_err(cmd("NV attributes"))?;
                let size = u16::try_from(data.len())
                    .map_err(|_| TpmDeviceError::Argument("NV data too large".into()))?;
                let public = NvPublicBuilder::new()
                    .with_nv_index(nv_index(index)?)
                    .with_index_name_algorithm(HashingAlgorithm::Sha256)
                    .with_index_attributes(attributes)
                    .with_data_area_size(size.into())
                    .build()
                    .map_err(cmd("NV public"))?;
                self.ctx
                    .execute_with_nullauth_session(|ctx| {
                        ctx.nv_define_space(Provision::Owner, None, public)
                    })
                    .map_err(cmd("NV define"))?
            }
        };
        let buffer = MaxNvBuffer::try_from(data.to_vec()).map_err(cmd("NV buffer"));
        let result = buffer.and_then(|b| {
            self.ctx
                .execute_with_nullauth_session(|ctx| ctx.nv_write(NvAuth::Owner, handle, b, 0))
                .map_err(cmd("NV write"))
        });
        let _ = self.ctx.tr_close(&mut ObjectHandle::from(handle));
        result
    }

    /// Removes NV index `index` if it is defined.
    pub fn nv_undefine(&mut self, index: u32) -> Result<(), TpmDeviceError> {
        let Some(handle) = self.nv_handle(index)? else {
            return Ok(());
        };
        self.ctx
            .execute_with_nullauth_session(|ctx| ctx.nv_undefine_space(Provision::Owner, handle))
            .map_err(cmd("NV undefine"))
    }

    fn nv_handle(&mut self, index: u32) -> Result<Option<NvIndexHandle>, TpmDeviceError> {
        let tpm_handle = TpmHandle::NvIndex(nv_index(index)?);
        match self
            .ctx
            .execute_without_session(|ctx| ctx.tr_from_tpm_public(tpm_handle))
        {
            Ok(h) => Ok(Some(h.into())),
            // TPM_RC_HANDLE: no such index.
            Err(e) if e.to_string().to_lowercase().contains("handle") => Ok(None),
            Err(e) => Err(cmd("NV lookup")(e)),
        }
    }
}

fn nv_index(index: u32) -> Result<NvIndexTpmHandle, TpmDeviceError> {
    NvIndexTpmHandle::new(index)
        .map_err(|e| TpmDeviceError::Argument(format!("NV index {index:#x}: {e}")))
}

impl Drop for NodeTpm {
    fn drop(&mut self) {
        for h in [self.ak.take(), self.ek.take()].into_iter().flatten() {
            let _ = self.ctx.flush_context(h.into());
        }
    }
}
