//! A control plane and worker nodes, each with its own manufactured software TPM, and the
//! owner: init, approvals, join, keys and recovery over attested TLS, with every refusal the
//! issue names.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::sync::Arc;

use common::*;
use tokio::net::TcpListener;
use veil_attest_core::x509::Certificate;
use veil_client::ClientError;
use veil_cluster::{ControlPlane, Trust};
use veil_keys::{ClusterSecrets, KeyId, SecretBytes};
use veil_node_attest::Membership;
use veil_reference::launch::Launch;
use veil_reference::{MeasurementSet, ReferenceValues};
use veil_swtpm::LocalCa;

use veil_client::clock::now;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_join_keys_refusals_and_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::at(&dir.path().join("ca"));
    let (cp_launch, worker_launch, refs) = release_1();
    let (master, salt) = ([0x11u8; 32], [0x22u8; 32]);
    let owner = Owner::new(master, salt);
    let cp_node = boot(&dir.path().join("cp"), &ca, &cp_launch, None);
    let (roots, issuer) = roots(&ca);
    let (cp, addr) = serve(&cp_node, &refs, &ca, &owner.public).await;

    // A worker that comes before init is told to wait: not refused, and not recorded as a
    // refusal (the report below names exactly the real ones).
    let early = boot(&dir.path().join("w0"), &ca, &worker_launch, None);
    let e = session(
        addr,
        Some(early.attester.as_ref()),
        &appraiser(&refs, Membership::Fresh),
    )
    .await
    .unwrap()
    .join(&early.attester, "worker", &node_key())
    .await
    .unwrap_err();
    assert!(
        matches!(&e, ClientError::Unavailable(r) if r.contains("not initialised")),
        "{e}"
    );

    // Nobody but the owner initialises: an unsigned (here: wrongly signed) init is refused.
    let impostor = Owner::new(master, salt);
    let mut s = session(addr, None, &appraiser(&refs, Membership::Fresh))
        .await
        .unwrap();
    let e = s
        .init(&master, &salt, &impostor.signed(), &impostor.key)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Refused(r) if r.contains("signature does not verify")),
        "{e}"
    );
    // The owner appraises the fresh control-plane node, checks its TPM endorsement (signing
    // its requests), inits with the approval list.
    let mut s = session(addr, None, &appraiser(&refs, Membership::Fresh))
        .await
        .unwrap();
    s.verify_endorsement(&roots, &issuer, now(), Some(&owner.key))
        .await
        .unwrap();
    // Without the owner's signature an unattested caller may not use the TPM.
    let e = s
        .verify_endorsement(&roots, &issuer, now(), None)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Refused(r) if r.contains("only an attested node or the owner")),
        "{e}"
    );
    owner.init(addr, &cp_node, &refs).await;
    let secrets = owner.secrets();
    let cid = secrets.cluster_id().unwrap();
    assert_eq!(cp.cluster_id(), Some(cid));
    // Init happens once.
    let mut s = session(
        addr,
        None,
        &appraiser(&refs, Membership::Member(cid.0.to_vec())),
    )
    .await
    .unwrap();
    assert!(
        matches!(s.init(&master, &salt, &owner.signed(), &owner.key).await, Err(ClientError::Refused(r)) if r.contains("already initialised"))
    );
    // An unattested caller gets no key.
    assert!(
        matches!(s.get_key("node/node-000000000000/state", b"").await, Err(ClientError::Refused(r)) if r.contains("not attested"))
    );

    // A genuine, fresh worker the owner has not approved is refused, its TPM named.
    let cp_app = appraiser(&refs, Membership::Member(cid.0.to_vec()));
    let w1 = boot(&dir.path().join("w1"), &ca, &worker_launch, None);
    let w2 = boot(&dir.path().join("w2"), &ca, &worker_launch, None);
    let e = session(addr, Some(w1.attester.as_ref()), &cp_app)
        .await
        .unwrap()
        .join(&w1.attester, "worker", &node_key())
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Refused(r) if r.contains("has not approved this TPM") && r.contains(&ek_sha256(&w1.attester))),
        "{e}"
    );
    owner
        .approve_at(
            addr,
            &refs,
            &[(&w1.attester, "worker"), (&w2.attester, "worker")],
        )
        .await;
    // An older list is not taken back.
    let old = {
        let mut l = owner.list.lock().unwrap().clone();
        l.serial = 1;
        veil_appraisal::owner::sign_approvals(&l, &owner.key).unwrap()
    };
    let e = session(addr, None, &cp_app)
        .await
        .unwrap()
        .approve(&old)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Refused(r) if r.contains("older than")),
        "{e}"
    );

    // Two workers join; each gets its own state key, as derived from the master secret.
    let w1_key = node_key();
    let j1 = session(addr, Some(w1.attester.as_ref()), &cp_app)
        .await
        .unwrap()
        .join(&w1.attester, "worker", &w1_key)
        .await
        .unwrap();
    let j2 = session(addr, Some(w2.attester.as_ref()), &cp_app)
        .await
        .unwrap()
        .join(&w2.attester, "worker", &node_key())
        .await
        .unwrap();
    let (id1, cid1, key1) = (
        j1.node_id.clone(),
        j1.cluster_id.clone(),
        j1.state_key.clone(),
    );
    let (id2, key2) = (j2.node_id.clone(), j2.state_key.clone());
    assert_eq!(cid1, cid.0.to_vec());
    // The node certificate certifies the node's own key, under the cluster CA.
    let cluster_ca = Certificate::from_der(&j1.ca_cert, "CA").unwrap();
    let nc = Certificate::from_der(&j1.node_cert, "node").unwrap();
    veil_attest_core::x509::verify_chain(&[&nc], std::slice::from_ref(&cluster_ca), now()).unwrap();
    assert_eq!(
        nc.public_key().unwrap(),
        &veil_attest_core::x509::public_key_from_spki(&w1_key).unwrap()
    );
    assert!(nc.subject().contains(&id1));
    // The CA key derives from the master secret: the second node's certificate has the same CA.
    let nc2 = Certificate::from_der(&j2.node_cert, "node").unwrap();
    veil_attest_core::x509::verify_chain(&[&nc2], std::slice::from_ref(&cluster_ca), now())
        .unwrap();
    assert_ne!(id1, id2);
    let derive = |id: &str| {
        secrets
            .derive(&KeyId::node(id, "state").unwrap())
            .unwrap()
            .expose()
            .to_vec()
    };
    assert_eq!(key1, derive(&id1));
    assert_eq!(key2, derive(&id2));
    assert_eq!(cp.nodes().len(), 2);

    // Keys: a node gets its own, never another node's; it cannot join twice.
    let (c1, c2) = (j1.node_cert.clone(), j2.node_cert.clone());
    let mut s1 = session(addr, Some(w1.attester.as_ref()), &cp_app)
        .await
        .unwrap();
    assert_eq!(
        s1.get_key(&format!("node/{id1}/state"), &c1).await.unwrap(),
        key1
    );
    assert_eq!(
        s1.get_key(&format!("node/{id1}/disk-2"), &c1)
            .await
            .unwrap(),
        derive_other(&secrets, &id1, "disk-2")
    );
    let e = s1
        .get_key(&format!("node/{id2}/state"), &c1)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Refused(r) if r.contains("does not belong")),
        "{e}"
    );
    // Kubernetes credentials: not for another node's certificate, and not for a node with no
    // mesh address for its kubelet to serve on (these workers joined without one).
    let e = s1
        .kube_credentials(&c2, b"k", b"k", b"k")
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Refused(r) if r.contains("kube_credentials") && r.contains("attested this connection")),
        "{e}"
    );
    let e = s1
        .kube_credentials(&c1, b"k", b"k", b"k")
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Refused(r) if r.contains("no mesh address is known")),
        "{e}"
    );
    // Showing another node's certificate does not make w1 that node: the certificate names
    // w2's AK, and w1's AK attested this connection.
    let e = s1
        .get_key(&format!("node/{id2}/state"), &c2)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Refused(r) if r.contains("attested this connection")),
        "{e}"
    );
    // A forged certificate (one altered byte) is refused.
    let mut forged = c1.clone();
    let n = forged.len();
    forged[n - 20] ^= 1;
    let e = s1
        .get_key(&format!("node/{id1}/state"), &forged)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Refused(r) if r.contains("node certificate")),
        "{e}"
    );
    let e = s1.get_key("cluster/etcd", &c1).await.unwrap_err();
    assert!(
        matches!(&e, ClientError::Refused(r) if r.contains("does not belong")),
        "{e}"
    );
    let e = s1
        .join(&w1.attester, "worker", &node_key())
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Refused(r) if r.contains("already belongs")),
        "{e}"
    );

    // Persistent volumes: a volume's key and anchor go only to the worker it is attached to,
    // one worker at a time; an anchor only moves forward.
    let vol = format!("v-{}", "ab".repeat(16));
    let e = s1.volume_key(&vol, &c1).await.unwrap_err();
    assert!(
        matches!(&e, ClientError::Refused(r) if r.contains("volume_key") && r.contains("attached to no node")),
        "{e}"
    );
    cp.attach_volume(&vol, &id1).unwrap();
    assert_eq!(
        s1.volume_key(&vol, &c1).await.unwrap(),
        secrets
            .derive(&KeyId::volume(&vol).unwrap())
            .unwrap()
            .expose()
            .to_vec()
    );
    let e = cp.attach_volume(&vol, &id2).unwrap_err();
    assert!(e.to_string().contains(&format!("attached to {id1}")), "{e}");
    assert!(matches!(
        cp.attach_volume(&vol, "node-000000000000"),
        Err(veil_cluster::AttachRefused::UnknownNode(_))
    ));
    let mut sv2 = session(addr, Some(w2.attester.as_ref()), &cp_app)
        .await
        .unwrap();
    let e = sv2.volume_key(&vol, &c2).await.unwrap_err();
    assert!(
        matches!(&e, ClientError::Refused(r) if r.contains(&format!("attached to {id1}, not to {id2}"))),
        "{e}"
    );
    let commit = |generation, d: &str| veil_wire::proto::VolumeCommit {
        generation,
        digest: d.repeat(32),
    };
    assert_eq!(s1.volume_anchor(&vol, &c1, None).await.unwrap(), None);
    s1.volume_anchor(&vol, &c1, Some(commit(3, "aa")))
        .await
        .unwrap();
    let e = s1
        .volume_anchor(&vol, &c1, Some(commit(2, "bb")))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Refused(r) if r.contains("generation 2 is older")),
        "{e}"
    );
    let e = sv2
        .volume_anchor(&vol, &c2, Some(commit(9, "cc")))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Refused(r) if r.contains("volume_anchor")),
        "{e}"
    );
    assert_eq!(
        s1.volume_anchor(&vol, &c1, None).await.unwrap(),
        Some(commit(3, "aa"))
    );
    // Detached from w1, it may go to w2, whose anchor reads are then w1's last commit.
    cp.detach_volume(&vol, &id1).unwrap();
    cp.attach_volume(&vol, &id2).unwrap();
    assert_eq!(
        sv2.volume_anchor(&vol, &c2, None).await.unwrap(),
        Some(commit(3, "aa"))
    );
    assert!(s1.volume_key(&vol, &c1).await.is_err());
    // A node reports what it refused of its own (its state volume): recorded under its name,
    // for the report; only the kinds there are.
    s1.report_refusal(
        &c1,
        "state_volume",
        "state volume refused (rollback): generation 3, the anchor records 5",
    )
    .await
    .unwrap();
    let e = s1.report_refusal(&c1, "anything", "x").await.unwrap_err();
    assert!(
        matches!(&e, ClientError::Refused(r) if r.contains("expected one of")),
        "{e}"
    );
    assert!(
        cp.refusals().iter().any(|r| r
            .reason
            .contains(&format!("{id1} refused its own state_volume"))
            && r.reason.contains("rollback")),
        "{:?}",
        cp.refusals()
    );

    // A node with a modified agent is refused (its evidence fails appraisal for every role).
    let evil = boot(
        &dir.path().join("evil"),
        &ca,
        &Launch::measure(b"veil-agent 1 patched", b"role: worker", b"image 1"),
        None,
    );
    match session(addr, Some(evil.attester.as_ref()), &cp_app).await {
        Err(ClientError::Atls(veil_atls::AtlsError::RefusedByPeer(r))) => {
            assert!(
                r.contains("PCR sha1:8") || r.contains("PCR sha256:8"),
                "{r}"
            )
        }
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("a node with a modified agent was accepted"),
    }
    // A node of another cluster is refused at join.
    let foreign = boot(
        &dir.path().join("foreign"),
        &ca,
        &worker_launch,
        Some(b"another cluster"),
    );
    let e = session(addr, Some(foreign.attester.as_ref()), &cp_app)
        .await
        .unwrap()
        .join(&foreign.attester, "worker", &node_key())
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Refused(r) if r.contains("already belongs to a cluster")),
        "{e}"
    );
    // A node whose TPM comes from another manufacturer is refused at join.
    let other_ca = LocalCa::at(&dir.path().join("other-ca"));
    let stranger = boot(
        &dir.path().join("stranger"),
        &other_ca,
        &worker_launch,
        None,
    );
    let e = session(addr, Some(stranger.attester.as_ref()), &cp_app)
        .await
        .unwrap()
        .join(&stranger.attester, "worker", &node_key())
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Refused(r) if r.contains("EK certificate")),
        "{e}"
    );
    // A worker asking to join as control plane is refused.
    let w3 = boot(&dir.path().join("w3"), &ca, &worker_launch, None);
    let e = session(addr, Some(w3.attester.as_ref()), &cp_app)
        .await
        .unwrap()
        .join(&w3.attester, "control-plane", &node_key())
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Refused(r) if r.contains("role `control-plane`")),
        "{e}"
    );

    // Whole-cluster attestation: a report bound to the owner's nonce, signed by the control
    // plane's TPM, verified against the workspace's expectations; any altered byte fails.
    let mut os = session(addr, None, &cp_app).await.unwrap();
    os.verify_endorsement(&roots, &issuer, now(), Some(&owner.key))
        .await
        .unwrap();
    let nonce = [0x5cu8; 32];
    let cid_hex = cid.to_string();
    // Only the owner gets a report.
    let e = os
        .cluster_report(&cid_hex, &nonce, &impostor.key)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Refused(r) if r.contains("report: the owner's signature")),
        "{e}"
    );
    let signed = os
        .cluster_report(&cid_hex, &nonce, &owner.key)
        .await
        .unwrap();
    let exp = veil_appraisal::report::Expectations {
        reference: refs.clone(),
        cluster_id: cid.0.to_vec(),
        control_plane_aks: vec![os.peer_ak()],
        approvals: owner.list.lock().unwrap().clone(),
        nonce: Some(nonce),
        now: now(),
    };
    let verdict = veil_appraisal::report::verify_report(&signed, &exp).unwrap();
    // The control plane and the two workers pass; every refusal is named, failing: each kind
    // from each caller once, however often it happened.
    let (ok, failed): (Vec<_>, Vec<_>) = verdict.nodes.iter().partition(|n| n.ok);
    assert_eq!(ok.len(), 3, "{verdict:?}");
    assert!(ok.iter().any(|n| n.node == id1));
    let refusals = cp.refusals();
    assert_eq!(failed.len(), refusals.len(), "{failed:?}");
    for (kind, why) in [
        ("init", "signature does not verify"),
        ("init", "already initialised"),
        ("endorsement", "only an attested node or the owner"),
        ("get_key", "not attested"),
        ("join", "has not approved this TPM"),
        ("approve", "older than"),
        ("get_key", "does not belong"),
        ("join", "already belongs"),
        ("evidence", "PCR sha1:8"),
        ("join", "EK certificate"),
        ("join", "role `control-plane`"),
        ("report", "signature"),
        ("volume_key", "attached to no node"),
        ("volume_anchor", "older"),
        ("volume_attach", "attached to"),
        ("state_volume", "refused its own state_volume"),
        ("report_refusal", "expected one of"),
    ] {
        assert!(
            failed
                .iter()
                .any(|n| n.reason.starts_with(&format!("{kind}: ")) && n.reason.contains(why)),
            "no `{kind}` refusal saying `{why}` in {failed:?}"
        );
    }
    // A node that keeps asking for what it may not have is one entry, counted.
    let before = refusals
        .iter()
        .find(|r| r.reason.contains("`cluster/etcd` does not belong"))
        .unwrap()
        .count;
    for _ in 0..3 {
        s1.get_key("cluster/etcd", &c1).await.unwrap_err();
    }
    let after: Vec<_> = cp
        .refusals()
        .into_iter()
        .filter(|r| r.reason.contains("`cluster/etcd` does not belong"))
        .collect();
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0].count, before + 3);
    assert_eq!(cp.refusals().len(), refusals.len());
    assert!(!verdict.all_ok());
    // A node the owner no longer approves fails the verdict, even if a control plane admitted it.
    let e = veil_appraisal::report::verify_report(
        &signed,
        &veil_appraisal::report::Expectations {
            approvals: veil_appraisal::owner::Approvals {
                nodes: vec![],
                ..exp.approvals.clone()
            },
            ..exp.clone()
        },
    )
    .unwrap();
    assert!(
        e.nodes
            .iter()
            .any(|n| n.node == id1 && !n.ok && n.reason.contains("NOT APPROVED")),
        "{e:?}"
    );
    // The owner acknowledges what it saw: those refusals no longer fail the verdict.
    let t = now().0;
    os.ack_refusals(&cid_hex, t, &owner.key).await.unwrap();
    assert!(cp.refusals().is_empty(), "{:?}", cp.refusals());
    let e = os
        .ack_refusals(&cid_hex, t, &impostor.key)
        .await
        .unwrap_err();
    assert!(matches!(&e, ClientError::Refused(_)), "{e}");
    assert_eq!(cp.refusals().len(), 1, "the impostor's attempt is recorded");
    let mut altered = signed.clone();
    altered.report = altered.report.replacen("worker", "workes", 1);
    assert!(veil_appraisal::report::verify_report(&altered, &exp).is_err());
    let e = veil_appraisal::report::verify_report(
        &signed,
        &veil_appraisal::report::Expectations {
            nonce: Some([0; 32]),
            ..exp.clone()
        },
    )
    .unwrap_err();
    assert!(e.contains("replayed"), "{e}");
    let e = veil_appraisal::report::verify_report(
        &signed,
        &veil_appraisal::report::Expectations {
            control_plane_aks: vec![[0; 32]],
            ..exp.clone()
        },
    )
    .unwrap_err();
    assert!(e.contains("control plane"), "{e}");

    // Restart: the control plane forgets its secrets; keys wait for the owner.
    cp.forget_secrets();
    let e = session(addr, Some(w1.attester.as_ref()), &cp_app)
        .await
        .unwrap()
        .get_key(&format!("node/{id1}/state"), &c1)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Unavailable(r) if r.contains("awaits recovery")),
        "{e}"
    );
    let mut os = session(addr, None, &cp_app).await.unwrap();
    let e = os.recover(&master, &salt, &impostor.key).await.unwrap_err();
    assert!(
        matches!(&e, ClientError::Refused(r) if r.contains("signature")),
        "{e}"
    );
    let e = os
        .recover(&[0x12; 32], &salt, &owner.key)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Refused(r) if r.contains("signature")),
        "a recover for another cluster's ID is not signed for this one: {e}"
    );
    assert_eq!(
        os.recover(&master, &salt, &owner.key).await.unwrap(),
        cid.to_string()
    );
    let mut s1 = session(addr, Some(w1.attester.as_ref()), &cp_app)
        .await
        .unwrap();
    assert_eq!(
        s1.get_key(&format!("node/{id1}/state"), &c1).await.unwrap(),
        key1
    );

    // A second control-plane node joins: it alone (not a worker) is handed the root secret,
    // and then serves the workers' keys from their certificates, with no shared registry.
    assert!(j1.control_plane.is_none() && j2.control_plane.is_none());
    let cp2_node = boot(&dir.path().join("cp2"), &ca, &cp_launch, None);
    owner
        .approve_at(addr, &refs, &[(&cp2_node.attester, "control-plane")])
        .await;
    let j = session(addr, Some(cp2_node.attester.as_ref()), &cp_app)
        .await
        .unwrap()
        .join(&cp2_node.attester, "control-plane", &node_key())
        .await
        .unwrap();
    let (handed, approvals) = j
        .control_plane
        .expect("a control-plane node gets the secrets");
    // A control plane runs no kubelet: it gets no kubelet credential.
    let e = session(addr, Some(cp2_node.attester.as_ref()), &cp_app)
        .await
        .unwrap()
        .kube_credentials(&j.node_cert, b"k", b"k", b"k")
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Refused(r) if r.contains("only workers run a kubelet") && r.contains("`control-plane`")),
        "{e}"
    );
    assert_eq!(handed.cluster_id().unwrap(), cid);
    let cp2 = Arc::new(ControlPlane::new(
        Trust {
            reference: refs.clone(),
            ek_roots: roots.clone(),
            ek_intermediates: issuer.clone(),
            local_roots: true,
            owner_key: owner.public.clone(),
        },
        cp2_node.attester.clone(),
    ));
    // Approvals another owner signed are not taken with the secrets.
    let e = cp2.adopt(handed.clone(), impostor.signed()).unwrap_err();
    assert!(e.contains("approvals"), "{e}");
    assert_eq!(cp2.adopt(handed.clone(), approvals.clone()).unwrap(), cid);
    assert!(cp2.serving());
    assert!(
        cp2.adopt(handed, approvals.clone()).is_err(),
        "adopted twice"
    );
    let listener2 = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr2 = listener2.local_addr().unwrap();
    tokio::spawn(cp2.clone().serve(listener2));
    let mut at_cp2 = session(addr2, Some(w1.attester.as_ref()), &cp_app)
        .await
        .unwrap();
    assert_eq!(
        at_cp2
            .get_key(&format!("node/{id1}/state"), &c1)
            .await
            .unwrap(),
        key1
    );
    // Control planes pass on the owner's newer lists (never an older one, nor a forged one).
    let serial_at_cp2 = |signed: veil_appraisal::owner::SignedApprovals| {
        veil_appraisal::owner::verify_approvals(&signed, &owner.public, &cid.to_string())
            .unwrap()
            .serial
    };
    let held = serial_at_cp2(at_cp2.approvals().await.unwrap());
    let newer = owner.approve(&[]);
    cp2.offer_approvals(impostor.signed());
    cp2.offer_approvals(old.clone());
    assert_eq!(serial_at_cp2(at_cp2.approvals().await.unwrap()), held);
    cp2.offer_approvals(newer);
    assert_eq!(serial_at_cp2(at_cp2.approvals().await.unwrap()), held + 1);
    let e = at_cp2
        .get_key(&format!("node/{id2}/state"), &c2)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Refused(r) if r.contains("attested this connection")),
        "{e}"
    );
    // A control plane of another cluster adopts nothing from this one's peers.
    let other = ClusterSecrets::new(SecretBytes::from_slice("m", &mut [0x77; 32]).unwrap(), salt);
    cp2.forget_secrets();
    let e = cp2.adopt(other, approvals).unwrap_err();
    assert!(e.contains("belongs to cluster"), "{e}");

    // The owner removes w2: only a command the owner signed, just now, is taken; then w2 is
    // served nothing, while w1 still is.
    let mut os = session(addr, None, &cp_app).await.unwrap();
    let e = os
        .remove_node(&cid_hex, &id2, &impostor.key)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Refused(r) if r.contains("signature")),
        "{e}"
    );
    let stale = owner
        .key
        .authorise(
            &veil_appraisal::owner::commands::remove_node(&cid_hex, &id2),
            now().0 - 3600,
        )
        .unwrap();
    let e = os
        .call(&veil_wire::proto::Request::RemoveNode {
            node_id: id2.clone(),
            auth: stale,
        })
        .await
        .unwrap();
    assert!(
        matches!(&e, veil_wire::proto::Response::Refused { reason } if reason.contains("clock")),
        "{e:?}"
    );
    assert!(os.remove_node(&cid_hex, &id2, &owner.key).await.unwrap());
    let e = session(addr, Some(w2.attester.as_ref()), &cp_app)
        .await
        .unwrap()
        .get_key(&format!("node/{id2}/state"), &c2)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Refused(r) if r.contains("removed")),
        "{e}"
    );
    assert!(!cp.nodes().iter().any(|n| n.node_id == id2));
    // A removed node holds no volume: attaching to it is refused, and the volume it held may
    // go to another worker.
    let e = cp.attach_volume(&vol, &id2).unwrap_err();
    assert!(e.to_string().contains("was removed"), "{e}");
    cp.attach_volume(&vol, &id1).unwrap();
    let mut s1 = session(addr, Some(w1.attester.as_ref()), &cp_app)
        .await
        .unwrap();
    assert_eq!(
        s1.get_key(&format!("node/{id1}/state"), &c1).await.unwrap(),
        key1
    );

    // The mesh: a node's mesh key is taken only from a connection whose evidence vouches for
    // it; then the node gets an address, and a peer set holding the control plane.
    use base64::Engine;
    let b64 = |k: &[u8; 32]| base64::engine::general_purpose::STANDARD.encode(k);
    let cp_mesh = cp
        .enable_mesh(
            ("10.215.9.0".parse().unwrap(), 24),
            0,
            b64(&[1; 32]),
            "10.213.9.10:51820".into(),
        )
        .unwrap();
    assert_eq!(cp_mesh.to_string(), "10.215.9.1");
    let w4 = boot(&dir.path().join("w4"), &ca, &worker_launch, None);
    owner
        .approve_at(addr, &refs, &[(&w4.attester, "worker")])
        .await;
    let mesh_key = [3u8; 32];
    let mesh = veil_wire::proto::MeshJoin {
        public_key: b64(&mesh_key),
        endpoint: "127.0.0.1:51820".into(),
    };
    let e = session(addr, Some(w4.attester.as_ref()), &cp_app)
        .await
        .unwrap()
        .join_mesh(&w4.attester, "worker", &node_key(), Some(mesh.clone()))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Refused(r) if r.contains("vouches for")),
        "{e}"
    );
    w4.attester
        .set_context(veil_cluster::mesh::key_context(&mesh_key));
    // A mesh endpoint elsewhere than where the node connects from would aim its peers'
    // handshakes at any host: refused.
    let elsewhere = veil_wire::proto::MeshJoin {
        endpoint: "10.213.9.13:51820".into(),
        ..mesh.clone()
    };
    let e = session(addr, Some(w4.attester.as_ref()), &cp_app)
        .await
        .unwrap()
        .join_mesh(&w4.attester, "worker", &node_key(), Some(elsewhere))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Refused(r) if r.contains("not on the address the node connects from")),
        "{e}"
    );
    let j4 = session(addr, Some(w4.attester.as_ref()), &cp_app)
        .await
        .unwrap()
        .join_mesh(&w4.attester, "worker", &node_key(), Some(mesh))
        .await
        .unwrap();
    assert_eq!(j4.mesh_address.unwrap().to_string(), "10.215.9.17");
    let (peers, rotate) = session(addr, Some(w4.attester.as_ref()), &cp_app)
        .await
        .unwrap()
        .mesh_peers(&j4.node_cert)
        .await
        .unwrap();
    assert!(!rotate);
    assert_eq!(peers.len(), 1, "{peers:?}");
    assert_eq!(peers[0].address, "10.215.9.1");
    // A rekey whose key this connection's evidence does not vouch for is refused.
    let e = session(addr, Some(w4.attester.as_ref()), &cp_app)
        .await
        .unwrap()
        .mesh_rekey(&j4.node_cert, &b64(&[4; 32]))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Refused(r) if r.contains("vouches for")),
        "{e}"
    );
}

fn derive_other(s: &ClusterSecrets, id: &str, purpose: &str) -> Vec<u8> {
    s.derive(&KeyId::node(id, purpose).unwrap())
        .unwrap()
        .expose()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_roots_are_refused_unless_reference_values_accept_them() {
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::at(&dir.path().join("ca"));
    let cp_launch = Launch::measure(b"veil-agent 1", b"role: control-plane", b"image 1");
    let worker_launch = Launch::measure(b"veil-agent 1", b"role: worker", b"image 1");
    let mut set = MeasurementSet::from_launch("release-1", &cp_launch, &["control-plane"]);
    set.roles
        .extend(MeasurementSet::from_launch("release-1", &worker_launch, &["worker"]).roles);
    // Production-style reference values: local (software) roots not accepted.
    let refs = ReferenceValues {
        version: 1,
        insecure_local_roots: false,
        tpm_roots: vec![],
        sets: vec![set],
    };
    let cp_node = boot(&dir.path().join("cp"), &ca, &cp_launch, None);
    let owner = Owner::new([1; 32], [2; 32]);
    let (cp, addr) = serve(&cp_node, &refs, &ca, &owner.public).await;
    owner.init(addr, &cp_node, &refs).await;
    let cid = cp.cluster_id().unwrap().0.to_vec();
    let w = boot(&dir.path().join("w"), &ca, &worker_launch, None);
    let e = session(
        addr,
        Some(w.attester.as_ref()),
        &appraiser(&refs, Membership::Member(cid)),
    )
    .await
    .unwrap()
    .join(&w.attester, "worker", &node_key())
    .await
    .unwrap_err();
    assert!(
        matches!(&e, ClientError::Refused(r) if r.contains("local software CA")),
        "{e}"
    );
}
