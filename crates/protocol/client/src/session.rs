//! A session with a control plane: the owner's (unattested, appraising the control plane,
//! signing what it asks) and a node's (attested both ways).

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use tokio::io::{AsyncRead, AsyncWrite};
use veil_appraisal::TpmAppraiser;
use veil_appraisal::owner::{
    OwnerKey, SignedApprovals, commands, verify_approvals_for_any_cluster,
};
use veil_atls::{AtlsError, Attester, Identity, client, read_frame, write_frame};
use veil_attest_core::UnixTime;
use veil_attest_core::x509::{Certificate, verify_chain};
use veil_attest_tpm::Public;
use veil_attest_tpm::credential::make_credential;
use veil_keys::{ClusterSecrets, SecretBytes};
use veil_wire::proto::{Request, Response, SecretHex};

use crate::JoiningTpm;

/// The owner's signature on `command`, made now.
fn authorise(owner: &OwnerKey, command: &str) -> Result<veil_wire::owner::OwnerAuth, ClientError> {
    owner
        .authorise(command, crate::clock::now().0)
        .map_err(|e| ClientError::Unexpected(e.to_string()))
}

/// A control-plane session.
#[derive(Debug)]
pub struct Session<IO> {
    tls: tokio_rustls::client::TlsStream<IO>,
    peer_ak: [u8; 32],
    /// The qualifiedSigner of the control plane's quote.
    peer_signer: Vec<u8>,
    /// Its cluster PCR (`None`: zero).
    peer_cluster_pcr: Option<String>,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Session<IO> {
    /// Connects, appraising the control plane with `appraiser` and attesting with `attester`
    /// (nodes) or not at all (the owner).
    pub async fn connect(
        io: IO,
        attester: Option<&dyn Attester>,
        appraiser: &TpmAppraiser,
    ) -> Result<Self, AtlsError> {
        let id = Identity::generate()?;
        let (tls, peer) = client(io, &id, attester, Some(&crate::Appraising(appraiser))).await?;
        let claims = peer.claims.ok_or(AtlsError::NoEvidence)?;
        Ok(Self {
            tls,
            peer_ak: claims.ak_spki_sha256,
            peer_signer: claims.qualified_signer,
            peer_cluster_pcr: claims.cluster_pcr,
        })
    }

    /// Sends a request and reads the response.
    pub async fn call(&mut self, req: &Request) -> Result<Response, AtlsError> {
        let body = serde_json::to_vec(req).map_err(|e| AtlsError::Protocol(e.to_string()))?;
        write_frame(&mut self.tls, &body).await?;
        let resp = read_frame(&mut self.tls).await?;
        serde_json::from_slice(&resp).map_err(|e| AtlsError::Protocol(format!("response: {e}")))
    }
}

/// What a node receives when it is admitted.
#[derive(Clone)]
pub struct Joined {
    /// Its node ID.
    pub node_id: String,
    /// The cluster ID.
    pub cluster_id: Vec<u8>,
    /// The key of its encrypted state volume (secret).
    pub state_key: Vec<u8>,
    /// Its certificate from the cluster CA (DER).
    pub node_cert: Vec<u8>,
    /// The cluster CA certificate (DER).
    pub ca_cert: Vec<u8>,
    /// For a control-plane node: the cluster's secrets and the owner's approvals, to serve as
    /// its peers do.
    pub control_plane: Option<(ClusterSecrets, SignedApprovals)>,
    /// Its mesh address, if it joined with a mesh key.
    pub mesh_address: Option<std::net::Ipv4Addr>,
}

impl std::fmt::Debug for Joined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Joined")
            .field("node_id", &self.node_id)
            .field("cluster_id", &hex::encode(&self.cluster_id))
            .field("state_key", &"<redacted>")
            .field(
                "control_plane",
                &self.control_plane.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// A failed client operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The attested connection failed (includes refusing the control plane's evidence).
    #[error(transparent)]
    Atls(#[from] AtlsError),
    /// The control plane refused the request.
    #[error("refused by the control plane: {0}")]
    Refused(String),
    /// The control plane cannot serve this yet (not initialised, or awaiting recovery).
    #[error("the control plane cannot serve this yet: {0}")]
    Unavailable(String),
    /// The control plane's TPM endorsement does not hold.
    #[error("control plane endorsement: {0}")]
    Endorsement(String),
    /// An unexpected response.
    #[error("unexpected response: {0}")]
    Unexpected(String),
}

fn unexpected(r: Response) -> ClientError {
    match r {
        Response::Refused { reason } => ClientError::Refused(reason),
        Response::Unavailable { reason } => ClientError::Unavailable(reason),
        other => ClientError::Unexpected(format!("{other:?}")),
    }
}

fn unhex(s: &str) -> Result<Vec<u8>, ClientError> {
    veil_attest_core::bytes::decode_hex(s).map_err(|e| ClientError::Unexpected(e.to_string()))
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Session<IO> {
    /// Checks that the attested control plane's AK lives in a TPM whose EK certificate chains
    /// to `roots`: the control plane must activate a credential made here for its EK and AK.
    /// Returns the SHA-256 fingerprint of the EK certificate (the TPM's identity).
    ///
    /// Nodes ask as attested callers (`owner` is `None`); the owner signs its requests.
    pub async fn verify_endorsement(
        &mut self,
        roots: &[Certificate],
        intermediates: &[Certificate],
        now: UnixTime,
        owner: Option<&OwnerKey>,
    ) -> Result<[u8; 32], ClientError> {
        let auth = owner
            .map(|o| authorise(o, &commands::endorsement()))
            .transpose()?;
        let (ek_cert, ek_public, ak_public) =
            match self.call(&Request::Endorsement { auth }).await? {
                Response::Endorsement {
                    ek_cert,
                    ek_public,
                    ak_public,
                } => (unhex(&ek_cert)?, unhex(&ek_public)?, unhex(&ak_public)?),
                r => return Err(unexpected(r)),
            };
        let fail = |e: String| ClientError::Endorsement(e);
        let cert =
            Certificate::from_der(&ek_cert, "EK certificate").map_err(|e| fail(e.to_string()))?;
        let mut path = vec![&cert];
        path.extend(intermediates.iter());
        verify_chain(&path, roots, now).map_err(|e| fail(e.to_string()))?;
        let ek = Public::parse(&ek_public).map_err(|e| fail(e.to_string()))?;
        if cert.public_key().ok() != Some(&ek.key) {
            return Err(fail("the EK is not the certified key".into()));
        }
        let ak = Public::parse(&ak_public).map_err(|e| fail(e.to_string()))?;
        ak.check_attestation_key()
            .map_err(|e| fail(e.to_string()))?;
        let spki = ak.key.spki_der().map_err(|e| fail(e.to_string()))?;
        if veil_appraisal::endorsement::spki_sha256(&spki) != self.peer_ak {
            return Err(fail(
                "the endorsed AK is not the AK that attested this session".into(),
            ));
        }
        veil_appraisal::endorsement::check_signer_under_ek(&ek, &ak, &self.peer_signer)
            .map_err(fail)?;
        let rng = SystemRandom::new();
        let (mut secret, mut seed) = ([0u8; 32], [0u8; 32]);
        rng.fill(&mut secret)
            .and_then(|()| rng.fill(&mut seed))
            .map_err(|_| fail("no randomness".into()))?;
        let made =
            make_credential(&ek, &ak.name, &secret, &seed).map_err(|e| fail(e.to_string()))?;
        let (id_object, encrypted_secret) = (
            hex::encode(made.id_object),
            hex::encode(made.encrypted_secret),
        );
        let auth = owner
            .map(|o| authorise(o, &commands::prove_tpm(&id_object, &encrypted_secret)))
            .transpose()?;
        match self
            .call(&Request::ProveTpm {
                id_object,
                encrypted_secret,
                auth,
            })
            .await?
        {
            Response::Proof { secret: s } if unhex(s.expose())? == secret => Ok(cert.fingerprint()),
            Response::Proof { .. } => Err(fail(
                "the control plane's TPM returned a wrong secret".into(),
            )),
            r => Err(unexpected(r)),
        }
    }

    /// Owner: initialises the cluster with its secrets and the owner's approval list; returns
    /// its ID.
    pub async fn init(
        &mut self,
        master: &[u8; 32],
        salt: &[u8; 32],
        approvals: &SignedApprovals,
        owner: &OwnerKey,
    ) -> Result<String, ClientError> {
        let cid = cluster_id_of(master, salt)?;
        let auth = authorise(owner, &commands::init(&cid, &approvals.digest()))?;
        match self
            .call(&Request::Init {
                master: SecretHex::encode(master),
                salt: hex::encode(salt),
                approvals: approvals.clone(),
                auth,
            })
            .await?
        {
            Response::Cluster { cluster_id } => Ok(cluster_id),
            r => Err(unexpected(r)),
        }
    }

    /// Owner: resupplies the master secret after a restart; returns the cluster ID.
    pub async fn recover(
        &mut self,
        master: &[u8; 32],
        salt: &[u8; 32],
        owner: &OwnerKey,
    ) -> Result<String, ClientError> {
        let cid = cluster_id_of(master, salt)?;
        let auth = authorise(owner, &commands::recover(&cid))?;
        match self
            .call(&Request::Recover {
                master: SecretHex::encode(master),
                salt: hex::encode(salt),
                auth,
            })
            .await?
        {
            Response::Cluster { cluster_id } => Ok(cluster_id),
            r => Err(unexpected(r)),
        }
    }

    /// Owner: replaces the approval list.
    pub async fn approve(&mut self, approvals: &SignedApprovals) -> Result<String, ClientError> {
        match self
            .call(&Request::Approve {
                approvals: approvals.clone(),
            })
            .await?
        {
            Response::Accepted { detail } => Ok(detail),
            r => Err(unexpected(r)),
        }
    }

    /// Node: the owner's approval list as this control plane holds it.
    pub async fn approvals(&mut self) -> Result<SignedApprovals, ClientError> {
        match self.call(&Request::Approvals).await? {
            Response::Approvals { approvals } => Ok(approvals),
            r => Err(unexpected(r)),
        }
    }

    /// Node: checks that this control plane's TPM (EK certificate SHA-256 `ek_sha256`, as
    /// [`Session::verify_endorsement`] proved it) is one the owner (`owner_key`, DER or PEM) approved
    /// as a control plane, and that its cluster PCR holds the cluster of that approval list;
    /// returns the cluster ID (hex).
    pub async fn verify_approved(
        &mut self,
        owner_key: &[u8],
        ek_sha256: &[u8; 32],
    ) -> Result<String, ClientError> {
        let fail = |e: String| ClientError::Endorsement(e);
        let signed = self.approvals().await?;
        let list = verify_approvals_for_any_cluster(&signed, owner_key)
            .map_err(|e| fail(e.to_string()))?;
        let cid = veil_attest_core::bytes::decode_hex(&list.cluster_id)
            .map_err(|e| fail(format!("approvals: cluster ID: {e}")))?;
        let want = hex::encode(veil_reference::launch::cluster_pcr(
            veil_attest_tpm::HashAlg::Sha256,
            Some(&cid),
        ));
        if self.peer_cluster_pcr.as_deref() != Some(want.as_str()) {
            return Err(fail(format!(
                "the control plane's cluster PCR does not hold cluster {}, which its approval list is for",
                list.cluster_id
            )));
        }
        if !list.approves(ek_sha256, "control-plane") {
            return Err(fail(format!(
                "the owner has not approved this control plane's TPM (EK certificate sha256:{}) as a control plane",
                hex::encode(ek_sha256)
            )));
        }
        Ok(list.cluster_id)
    }

    /// Owner: acknowledges the refusals last seen at or before `up_to`.
    pub async fn ack_refusals(
        &mut self,
        cluster_id: &str,
        up_to: i64,
        owner: &OwnerKey,
    ) -> Result<String, ClientError> {
        let auth = authorise(owner, &commands::ack_refusals(cluster_id, up_to))?;
        match self.call(&Request::AckRefusals { up_to, auth }).await? {
            Response::Accepted { detail } => Ok(detail),
            r => Err(unexpected(r)),
        }
    }

    /// Node: joins with `attester`'s TPM, asking the cluster CA to certify `node_key` (its
    /// SubjectPublicKeyInfo); extends the cluster ID into the node's cluster PCR.
    pub async fn join(
        &mut self,
        attester: &dyn JoiningTpm,
        role: &str,
        node_key: &[u8],
    ) -> Result<Joined, ClientError> {
        self.join_mesh(attester, role, node_key, None).await
    }

    /// Like [`Session::join`], also registering the node's mesh identity (WireGuard public
    /// key and endpoint); the control plane assigns its mesh address.
    pub async fn join_mesh(
        &mut self,
        attester: &dyn JoiningTpm,
        role: &str,
        node_key: &[u8],
        mesh: Option<veil_wire::proto::MeshJoin>,
    ) -> Result<Joined, ClientError> {
        let endorsement = attester.endorsement().map_err(ClientError::Endorsement)?;
        let challenge = self
            .call(&Request::Join {
                role: role.to_string(),
                ek_cert: hex::encode(&endorsement.0),
                ek_public: hex::encode(&endorsement.1),
                node_key: hex::encode(node_key),
                mesh,
            })
            .await?;
        let (id_object, encrypted_secret) = match challenge {
            Response::Challenge {
                id_object,
                encrypted_secret,
            } => (unhex(&id_object)?, unhex(&encrypted_secret)?),
            r => return Err(unexpected(r)),
        };
        let secret = attester
            .activate_credential(&id_object, &encrypted_secret)
            .map_err(ClientError::Endorsement)?;
        match self
            .call(&Request::Activate {
                secret: SecretHex::encode(&secret),
            })
            .await?
        {
            Response::Joined {
                node_id,
                cluster_id,
                state_key,
                node_cert,
                ca_cert,
                control_plane,
                mesh_address,
            } => {
                let mesh_address = match mesh_address {
                    None => None,
                    Some(a) => Some(a.parse().map_err(|e| {
                        ClientError::Unexpected(format!("mesh address `{a}`: {e}"))
                    })?),
                };
                let cid = unhex(&cluster_id)?;
                let control_plane = match control_plane {
                    None => None,
                    Some(h) => {
                        let mut master = unhex(h.master.expose())?;
                        let salt: [u8; 32] = unhex(&h.salt)?.try_into().map_err(|_| {
                            ClientError::Unexpected("handed-over salt: expected 32 bytes".into())
                        })?;
                        let master = SecretBytes::from_slice("master secret", &mut master)
                            .map_err(|e| ClientError::Unexpected(e.to_string()))?;
                        let secrets = ClusterSecrets::new(master, salt);
                        // The secrets must be those of the cluster the node is joining.
                        if secrets.cluster_id().map(|c| c.0.to_vec()).ok() != Some(cid.clone()) {
                            return Err(ClientError::Unexpected(
                                "the handed-over secrets do not derive the cluster ID".into(),
                            ));
                        }
                        Some((secrets, h.approvals))
                    }
                };
                attester
                    .join_cluster(&cid)
                    .map_err(ClientError::Endorsement)?;
                Ok(Joined {
                    node_id,
                    cluster_id: cid,
                    state_key: unhex(state_key.expose())?,
                    node_cert: unhex(&node_cert)?,
                    ca_cert: unhex(&ca_cert)?,
                    control_plane,
                    mesh_address,
                })
            }
            r => Err(unexpected(r)),
        }
    }

    /// The AK hash of the control plane that attested this session.
    pub fn peer_ak(&self) -> [u8; 32] {
        self.peer_ak
    }

    /// Owner: a cluster attestation report bound to `nonce`, signed by the control plane.
    pub async fn cluster_report(
        &mut self,
        cluster_id: &str,
        nonce: &[u8; 32],
        owner: &OwnerKey,
    ) -> Result<veil_wire::report::SignedReport, ClientError> {
        let nonce = hex::encode(nonce);
        let auth = authorise(owner, &commands::cluster_report(cluster_id, &nonce))?;
        match self.call(&Request::ClusterReport { nonce, auth }).await? {
            Response::Report { report, evidence } => {
                Ok(veil_wire::report::SignedReport { report, evidence })
            }
            r => Err(unexpected(r)),
        }
    }

    /// Owner: removes a node; returns whether this control plane had admitted it.
    pub async fn remove_node(
        &mut self,
        cluster_id: &str,
        node_id: &str,
        owner: &OwnerKey,
    ) -> Result<bool, ClientError> {
        let auth = authorise(owner, &commands::remove_node(cluster_id, node_id))?;
        match self
            .call(&Request::RemoveNode {
                node_id: node_id.to_string(),
                auth,
            })
            .await?
        {
            Response::Removed { known, .. } => Ok(known),
            r => Err(unexpected(r)),
        }
    }

    /// Node: the current mesh peer set (every other attested, joined node), and whether the
    /// owner asked this node to rotate its mesh key.
    pub async fn mesh_peers(
        &mut self,
        node_cert: &[u8],
    ) -> Result<(Vec<veil_wire::proto::MeshPeer>, bool), ClientError> {
        match self
            .call(&Request::MeshPeers {
                node_cert: hex::encode(node_cert),
            })
            .await?
        {
            Response::MeshPeers { peers, rotate } => Ok((peers, rotate)),
            r => Err(unexpected(r)),
        }
    }

    /// Node: registers a new mesh public key (base64); returns the peer set.
    pub async fn mesh_rekey(
        &mut self,
        node_cert: &[u8],
        public_key: &str,
    ) -> Result<Vec<veil_wire::proto::MeshPeer>, ClientError> {
        match self
            .call(&Request::MeshRekey {
                node_cert: hex::encode(node_cert),
                public_key: public_key.to_string(),
            })
            .await?
        {
            Response::MeshPeers { peers, .. } => Ok(peers),
            r => Err(unexpected(r)),
        }
    }

    /// Owner: asks a node to rotate its mesh key.
    pub async fn rotate_mesh_key(
        &mut self,
        cluster_id: &str,
        node_id: &str,
        owner: &OwnerKey,
    ) -> Result<(), ClientError> {
        let auth = authorise(owner, &commands::rotate_mesh_key(cluster_id, node_id))?;
        match self
            .call(&Request::RotateMeshKey {
                node_id: node_id.to_string(),
                auth,
            })
            .await?
        {
            Response::RotationRequested { .. } => Ok(()),
            r => Err(unexpected(r)),
        }
    }

    /// Node: fetches one of its keys, showing the node certificate it got at join.
    pub async fn get_key(
        &mut self,
        key_id: &str,
        node_cert: &[u8],
    ) -> Result<Vec<u8>, ClientError> {
        match self
            .call(&Request::GetKey {
                key_id: key_id.to_string(),
                node_cert: hex::encode(node_cert),
            })
            .await?
        {
            Response::Key { key, .. } => unhex(key.expose()),
            r => Err(unexpected(r)),
        }
    }

    /// Node: reports what it refused of its own (its state volume), for the cluster report.
    pub async fn report_refusal(
        &mut self,
        node_cert: &[u8],
        kind: &str,
        reason: &str,
    ) -> Result<(), ClientError> {
        match self
            .call(&Request::ReportRefusal {
                node_cert: hex::encode(node_cert),
                kind: kind.to_string(),
                reason: reason.to_string(),
            })
            .await?
        {
            Response::Accepted { .. } => Ok(()),
            r => Err(unexpected(r)),
        }
    }

    /// One call to the Configuration and Attestation Service the control plane runs.
    pub async fn cas(
        &mut self,
        call: veil_wire::proto::CasCall,
    ) -> Result<veil_wire::proto::CasAnswer, ClientError> {
        match self.call(&Request::Cas { call }).await? {
            Response::Cas { answer } => Ok(answer),
            r => Err(unexpected(r)),
        }
    }

    /// Worker: fetches the key of a persistent volume attached to it.
    pub async fn volume_key(
        &mut self,
        volume_id: &str,
        node_cert: &[u8],
    ) -> Result<Vec<u8>, ClientError> {
        match self
            .call(&Request::VolumeKey {
                volume_id: volume_id.to_string(),
                node_cert: hex::encode(node_cert),
            })
            .await?
        {
            Response::Key { key, .. } => unhex(key.expose()),
            r => Err(unexpected(r)),
        }
    }

    /// Worker: reads the anchor of a persistent volume attached to it, or advances it.
    pub async fn volume_anchor(
        &mut self,
        volume_id: &str,
        node_cert: &[u8],
        advance: Option<veil_wire::proto::VolumeCommit>,
    ) -> Result<Option<veil_wire::proto::VolumeCommit>, ClientError> {
        match self
            .call(&Request::VolumeAnchor {
                volume_id: volume_id.to_string(),
                node_cert: hex::encode(node_cert),
                advance,
            })
            .await?
        {
            Response::VolumeAnchor { anchored } => Ok(anchored),
            r => Err(unexpected(r)),
        }
    }

    /// Asks for this worker's Kubernetes credentials: certificates for the three public keys
    /// (SubjectPublicKeyInfo DER) it made.
    pub async fn kube_credentials(
        &mut self,
        node_cert: &[u8],
        kubelet_client_key: &[u8],
        kubelet_serving_key: &[u8],
        proxy_client_key: &[u8],
    ) -> Result<veil_wire::proto::KubeCredentials, ClientError> {
        match self
            .call(&Request::KubeCredentials {
                node_cert: hex::encode(node_cert),
                kubelet_client_key: hex::encode(kubelet_client_key),
                kubelet_serving_key: hex::encode(kubelet_serving_key),
                proxy_client_key: hex::encode(proxy_client_key),
            })
            .await?
        {
            Response::Kube(c) => Ok(c),
            r => Err(unexpected(r)),
        }
    }
}

/// The cluster ID (hex) the owner's secrets derive.
fn cluster_id_of(master: &[u8; 32], salt: &[u8; 32]) -> Result<String, ClientError> {
    let m = SecretBytes::from_slice("master secret", &mut master.to_owned())
        .map_err(|e| ClientError::Unexpected(e.to_string()))?;
    ClusterSecrets::new(m, *salt)
        .cluster_id()
        .map(|c| c.to_string())
        .map_err(|e| ClientError::Unexpected(e.to_string()))
}
