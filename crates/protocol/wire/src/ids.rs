//! Every identifier Veil puts on the wire or into a signature, in one place: X.509 object
//! identifiers and URIs, HKDF labels, and the domain-separation prefixes of everything signed,
//! hashed into a binding or MACed. An identifier is never reused for another meaning: a
//! format that changes gets a new version suffix, and the old entry stays here, marked retired.

/// The X.509 extension that carries attestation evidence in an attested-TLS certificate:
/// `id-pe-cmw` (1.3.6.1.5.5.7.1.35), the IETF RATS conceptual message wrapper extension. Its
/// value is a CMW (CBOR record) whose media type is [`EVIDENCE_MEDIA_TYPE`].
pub const EVIDENCE_OID: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 1, 35];
/// [`EVIDENCE_OID`] in dotted form.
pub const EVIDENCE_OID_DOTTED: &str = "1.3.6.1.5.5.7.1.35";
/// The media type of Veil TPM evidence inside the CMW.
pub const EVIDENCE_MEDIA_TYPE: &str = "application/vnd.veil.tpm-evidence";
/// Retired: the unregistered arc the evidence extension used before (raw evidence bytes).
pub const RETIRED_EVIDENCE_OID_DOTTED: &str = "1.3.9901.1.1";
/// The TLS server name attested-TLS clients ask for (the certificate's own name).
pub const ATLS_SERVER_NAME: &str = "veil-atls";

/// The attested-TLS binding: `SHA-512(this ‖ verifier's nonce ‖ attester's nonce ‖ context ‖
/// SHA-256(attester's TLS SPKI) ‖ verifier's flags ‖ attester's flags)`. (v1 and v2 retired.)
pub const ATLS_BINDING: &[u8] = b"veil-atls-v3\0";
/// A batch of bindings one TPM quote answers: its extraData is `SHA-512(this ‖ bindings…)`.
pub const TPM_BATCH: &[u8] = b"veil-tpm-batch-v1\0";
/// What a node's evidence vouches for about its mesh key: `SHA-256(this ‖ public key)`.
pub const MESH_KEY_CONTEXT: &[u8] = b"veil-mesh-key\0";
/// A cluster report's digest, which the control plane's quote covers.
pub const CLUSTER_REPORT: &[u8] = b"veil-cluster-report-v1\0";
/// An owner command's signed message: `this ‖ time ‖ 0 ‖ command`.
pub const OWNER_COMMAND: &[u8] = b"veil-owner-command-v1\0";
/// An owner approval list's signed message: `this ‖ document`.
pub const OWNER_APPROVALS: &[u8] = b"veil-owner-approvals-v1\0";
/// The data of the event that records the cluster ID extended into PCR 15.
pub const CLUSTER_ID_EVENT: &[u8] = b"veil-cluster-id";

/// HKDF-SHA256 info of the cluster ID (salt: the owner's salt; key: the master secret).
pub const HKDF_CLUSTER_ID: &[u8] = b"veil/v1/cluster-id";
/// HKDF-SHA256 info prefix of a derived key: `this ‖ key ID` (e.g. `node/<id>/state`).
pub const HKDF_KEY_PREFIX: &str = "veil/v1/key/";
/// Whether `id` is a persistent volume's ID as Veil's CSI driver makes them: `v-` and 32
/// lowercase hex digits (it names a file in the disk pool and a key).
pub fn is_volume_id(id: &str) -> bool {
    id.len() == 34
        && id.starts_with("v-")
        && id
            .bytes()
            .skip(2)
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The key ID prefix of a persistent volume's key: `this ‖ volume ID` (released only to the
/// node the volume is attached to).
pub const KEY_VOLUME_PREFIX: &str = "volume/";
/// The key ID of the cluster CA's signing key.
pub const KEY_CLUSTER_CA: &str = "cluster/ca";

/// Kubernetes' cluster CA (signs the API server's serving certificate, every client certificate
/// of the components, kubelets and the owner): its P-256 key is derived under this key ID.
pub const KEY_KUBE_CA: &str = "cluster/kube-ca";
/// Kubernetes' front-proxy CA (the aggregation layer's client certificates).
pub const KEY_KUBE_FRONT_PROXY_CA: &str = "cluster/kube-front-proxy-ca";
/// etcd's CA (etcd's serving and peer certificates, the API server's etcd client certificate).
pub const KEY_KUBE_ETCD_CA: &str = "cluster/kube-etcd-ca";
/// The key that signs and verifies service-account tokens (P-256, ES256).
pub const KEY_KUBE_SERVICE_ACCOUNT: &str = "cluster/kube-service-account";
/// The key-encryption key of the API server's KMS v2 provider (AES-256-GCM over its data keys).
pub const KEY_KUBE_KMS: &str = "cluster/kube-kms-v1";
/// The root of the Configuration and Attestation Service's database keys (records, names,
/// backups): any control plane of the cluster opens the database.
pub const KEY_CAS_ROOT: &str = "cluster/cas-v1";
/// The purpose of a control plane's audit-log signing key (`node/<node-id>/…`): each control
/// plane signs its own log, so two logs never share a key and a fork is never one log's.
pub const KEY_CAS_AUDIT_LOG: &str = "cas-audit-log";
/// The origin of a control plane's CAS audit log: `this/<cluster ID's first 16 hex>/<node ID>`.
pub const CAS_LOG_ORIGIN_PREFIX: &str = "veil.dev/cas-audit";
/// The KMS v2 plugin's key ID names the key and the cluster: `this ‖ first 16 hex digits of
/// SHA-256(key)`, so a rotated or foreign key is told apart without revealing it.
pub const KMS_KEY_ID_PREFIX: &str = "veil-kms-v1-";
/// AAD of the KMS plugin's AES-256-GCM: `this ‖ key ID` (a ciphertext moved to another key ID
/// does not open).
pub const KMS_AAD: &[u8] = b"veil-kms-v1\0";

/// Node certificates name the node's role as `this ‖ role` (a URI subject alternative name).
pub const ROLE_URI: &str = "urn:veil:role:";
/// Node certificates name the AK proven at join as `this ‖ hex SHA-256 of its SPKI`.
pub const AK_URI: &str = "urn:veil:ak-sha256:";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_prefix_is_a_prefix_of_another() {
        let all: [&[u8]; 8] = [
            ATLS_BINDING,
            TPM_BATCH,
            MESH_KEY_CONTEXT,
            CLUSTER_REPORT,
            OWNER_COMMAND,
            OWNER_APPROVALS,
            CLUSTER_ID_EVENT,
            HKDF_CLUSTER_ID,
        ];
        for (i, a) in all.iter().enumerate() {
            for (j, b) in all.iter().enumerate() {
                if i != j {
                    assert!(!b.starts_with(a), "{:?} / {:?}", a, b);
                }
            }
        }
        assert_eq!(
            EVIDENCE_OID
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join("."),
            EVIDENCE_OID_DOTTED
        );
    }
}
