//! Attested TLS over real TCP sockets: mutual success, one-way (owner to node), and the
//! refusals that matter — replayed evidence, a peer that does not attest, evidence from an
//! untrusted attester.
//!
//! The TEE here is a test double (a software ECDSA key that signs the report data): what is
//! under test is the binding of evidence to the TLS session, which does not depend on the TEE.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::{Arc, Mutex};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair,
    UnparsedPublicKey,
};
use tokio::net::{TcpListener, TcpStream};
use veil_atls::*;

/// Test-double TEE: evidence = report data (64 bytes) || ECDSA signature over it.
struct SoftTee {
    key: EcdsaKeyPair,
    recorded: Mutex<Vec<Vec<u8>>>,
}

impl SoftTee {
    fn new() -> Arc<Self> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        Arc::new(Self {
            key: EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref()).unwrap(),
            recorded: Mutex::new(Vec::new()),
        })
    }
    fn public(&self) -> Vec<u8> {
        self.key.public_key().as_ref().to_vec()
    }
}

impl Attester for SoftTee {
    fn attest(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, AttestError> {
        let sig = self
            .key
            .sign(&SystemRandom::new(), report_data)
            .map_err(|e| e.to_string())?;
        let mut ev = report_data.to_vec();
        ev.extend_from_slice(sig.as_ref());
        self.recorded.lock().unwrap().push(ev.clone());
        Ok(ev)
    }
}

/// Replays the first evidence another attester produced.
struct Replayer(Arc<SoftTee>);

impl Attester for Replayer {
    fn attest(&self, _report_data: &[u8; 64]) -> Result<Vec<u8>, AttestError> {
        Ok(self.0.recorded.lock().unwrap()[0].clone())
    }
}

struct TrustedTee(Vec<u8>);

impl Appraiser for TrustedTee {
    type Claims = &'static str;
    fn appraise(
        &self,
        evidence: &[u8],
        report_data: &[u8; 64],
    ) -> Result<&'static str, AppraiseError> {
        if evidence.len() < 64 {
            return Err("evidence too short".into());
        }
        let (rd, sig) = evidence.split_at(64);
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &self.0)
            .verify(rd, sig)
            .map_err(|_| "signature is not by the trusted TEE".to_string())?;
        if rd != report_data {
            return Err(format!(
                "report data {} is not bound to this session (expected {})",
                hex::encode(&rd[..8]),
                hex::encode(&report_data[..8])
            )
            .into());
        }
        Ok("trusted-tee")
    }
}

type Outcome = (
    Result<Option<&'static str>, AtlsError>,
    Result<Option<&'static str>, AtlsError>,
);

/// Runs one connection; returns (client's view of the server, server's view of the client).
async fn run(
    server_attester: Option<Arc<dyn Attester>>,
    server_appraiser: Option<Arc<TrustedTee>>,
    client_attester: Option<Arc<dyn Attester>>,
    client_appraiser: Option<Arc<TrustedTee>>,
) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (sock, _) = listener.accept().await.unwrap();
        let id = Identity::generate().unwrap();
        server(
            sock,
            &id,
            server_attester.as_deref(),
            server_appraiser.as_deref(),
        )
        .await
        .map(|(_, peer)| peer.claims)
    });
    let sock = TcpStream::connect(addr).await.unwrap();
    let id = Identity::generate().unwrap();
    let client = client(
        sock,
        &id,
        client_attester.as_deref(),
        client_appraiser.as_deref(),
    )
    .await
    .map(|(_, peer)| peer.claims);
    (client, server.await.unwrap())
}

#[tokio::test]
async fn mutual_attestation_succeeds() {
    let (a, b) = (SoftTee::new(), SoftTee::new());
    let (c, s) = run(
        Some(a.clone()),
        Some(Arc::new(TrustedTee(b.public()))),
        Some(b.clone()),
        Some(Arc::new(TrustedTee(a.public()))),
    )
    .await;
    assert_eq!(c.unwrap(), Some("trusted-tee"));
    assert_eq!(s.unwrap(), Some("trusted-tee"));
}

#[tokio::test]
async fn owner_connects_unattested_to_an_attested_node() {
    let node = SoftTee::new();
    let (c, s) = run(
        Some(node.clone()),
        None,
        None,
        Some(Arc::new(TrustedTee(node.public()))),
    )
    .await;
    assert_eq!(c.unwrap(), Some("trusted-tee"));
    assert_eq!(s.unwrap(), None);
}

#[tokio::test]
async fn replayed_evidence_is_refused() {
    let node = SoftTee::new();
    let trust = Arc::new(TrustedTee(node.public()));
    // A genuine session, whose evidence the attacker records...
    let (c, _) = run(Some(node.clone()), None, None, Some(trust.clone())).await;
    c.unwrap();
    // ...and presents in a new session, with a TLS key of its own.
    let (c, _) = run(
        Some(Arc::new(Replayer(node.clone()))),
        None,
        None,
        Some(trust),
    )
    .await;
    match c {
        Err(AtlsError::Refused(reason)) => {
            assert!(reason.contains("not bound to this session"), "{reason}")
        }
        other => panic!("replay accepted: {other:?}"),
    }
}

#[tokio::test]
async fn a_peer_that_does_not_attest_is_refused() {
    let tee = SoftTee::new();
    let (c, _) = run(None, None, None, Some(Arc::new(TrustedTee(tee.public())))).await;
    assert_eq!(c.unwrap_err(), AtlsError::NoEvidence);
    // Server side: a client that must attest but does not.
    let (_, s) = run(
        Some(tee.clone()),
        Some(Arc::new(TrustedTee(tee.public()))),
        None,
        None,
    )
    .await;
    assert_eq!(s.unwrap_err(), AtlsError::NoEvidence);
}

#[tokio::test]
async fn evidence_from_an_untrusted_attester_is_refused() {
    let (genuine, rogue) = (SoftTee::new(), SoftTee::new());
    let (c, _) = run(
        Some(rogue),
        None,
        None,
        Some(Arc::new(TrustedTee(genuine.public()))),
    )
    .await;
    match c {
        Err(AtlsError::Refused(reason)) => assert!(reason.contains("not by the trusted TEE")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn binding_depends_on_every_input() {
    let base = BindingInput {
        verifier_nonce: [1; 32],
        attester_nonce: [2; 32],
        attester_context: [4; 32],
        attester_spki_sha256: [3; 32],
        verifier_flags: 2,
        attester_flags: 1,
    };
    let b = binding(&base);
    // The hellos' flags are bound: a man in the middle flipping one breaks the binding.
    assert_ne!(
        b,
        binding(&BindingInput {
            verifier_flags: 0,
            ..base
        })
    );
    assert_ne!(
        b,
        binding(&BindingInput {
            attester_flags: 3,
            ..base
        })
    );
    assert_ne!(
        b,
        binding(&BindingInput {
            verifier_nonce: [9; 32],
            ..base
        })
    );
    assert_ne!(
        b,
        binding(&BindingInput {
            attester_nonce: [9; 32],
            ..base
        })
    );
    assert_ne!(
        b,
        binding(&BindingInput {
            attester_spki_sha256: [9; 32],
            ..base
        })
    );
    assert_ne!(
        b,
        binding(&BindingInput {
            attester_context: [9; 32],
            ..base
        })
    );
}

async fn send<S: tokio::io::AsyncWrite + Unpin>(s: &mut S, body: &[u8]) {
    use tokio::io::AsyncWriteExt;
    s.write_all(&(body.len() as u32).to_be_bytes())
        .await
        .unwrap();
    s.write_all(body).await.unwrap();
    s.flush().await.unwrap();
}

async fn raw_hello(s: &mut TcpStream) -> [u8; 65] {
    use tokio::io::AsyncReadExt;
    let mut h = [0u8; 65];
    s.read_exact(&mut h).await.unwrap();
    h
}

async fn send_raw(s: &mut TcpStream, body: &[u8]) {
    use tokio::io::AsyncWriteExt;
    s.write_all(body).await.unwrap();
    s.flush().await.unwrap();
}

#[tokio::test]
async fn evidence_relayed_from_another_connection_is_refused() {
    // A man in the middle relays the client's hello to a genuine node so the node's evidence
    // carries the client's nonce, then presents that evidence to the client in a certificate
    // of its own key (it cannot sign the handshake with the node's key): the evidence names
    // the node's key, not the one that signed this handshake.
    let node_tee = SoftTee::new();
    let node_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node_addr = node_listener.local_addr().unwrap();
    let node = {
        let tee = node_tee.clone();
        tokio::spawn(async move {
            let (sock, _) = node_listener.accept().await.unwrap();
            let id = Identity::generate().unwrap();
            let _ =
                server::<_, TrustedTee>(sock, &id, Some(tee.as_ref() as &dyn Attester), None).await;
        })
    };
    let mitm_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mitm_addr = mitm_listener.local_addr().unwrap();
    let mitm = tokio::spawn(async move {
        let (mut to_client, _) = mitm_listener.accept().await.unwrap();
        let mut upstream = TcpStream::connect(node_addr).await.unwrap();
        let client_hello = raw_hello(&mut to_client).await;
        let mut hello = client_hello[..32].to_vec();
        hello.push(2); // "I require your evidence", with the client's nonce
        hello.extend_from_slice(&[0; 32]);
        send_raw(&mut upstream, &hello).await;
        let node_hello = raw_hello(&mut upstream).await;
        send_raw(&mut to_client, &node_hello).await; // "I attest", with the node's nonce
        let own = Identity::generate().unwrap();
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(
            client_config(&own, own.certificate(None).unwrap()).unwrap(),
        ));
        let name = rustls::pki_types::ServerName::try_from("veil-atls").unwrap();
        let mut to_node = connector.connect(name, upstream).await.unwrap();
        let node_cert = to_node.get_ref().1.peer_certificates().unwrap()[0].clone();
        let evidence = veil_attest_core::x509::Certificate::from_der(node_cert.as_ref(), "node")
            .unwrap()
            .extension(EVIDENCE_OID_DOTTED)
            .expect("the node's certificate carries evidence")
            .value
            .clone();
        // The man in the middle copies the evidence itself (out of its CMW wrapper).
        let evidence = veil_atls::cmw::decode(&evidence).unwrap().to_vec();
        send(&mut to_node, &[1]).await;
        let cert = own.certificate(Some(&evidence)).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(
            server_config(&own, cert).unwrap(),
        ));
        let mut tls = acceptor.accept(to_client).await.unwrap();
        send(&mut tls, &[1]).await;
        let mut buf = [0u8; 64];
        let _ = tokio::io::AsyncReadExt::read(&mut tls, &mut buf).await;
    });
    let sock = TcpStream::connect(mitm_addr).await.unwrap();
    let id = Identity::generate().unwrap();
    let trust = TrustedTee(node_tee.public());
    let r = client(sock, &id, None, Some(&trust)).await;
    match r {
        Err(AtlsError::Refused(reason)) => {
            assert!(reason.contains("not bound to this session"), "{reason}")
        }
        Err(other) => panic!("refused for the wrong reason: {other}"),
        Ok(_) => panic!("relayed evidence accepted"),
    }
    // The node did attest (to the man in the middle): the refusal is the binding's doing.
    assert_eq!(node_tee.recorded.lock().unwrap().len(), 1);
    let _ = mitm.await;
    let _ = node.await;
}

#[tokio::test]
async fn evidence_travels_in_the_certificate() {
    // A plain TLS client (no Veil protocol beyond the hello) sees the node's evidence in the
    // node's certificate, bound to its own nonce, the node's nonce and the certificate's key.
    let tee = SoftTee::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let node = {
        let tee = tee.clone();
        tokio::spawn(async move {
            let (sock, _) = listener.accept().await.unwrap();
            let id = Identity::generate().unwrap();
            let _ =
                server::<_, TrustedTee>(sock, &id, Some(tee.as_ref() as &dyn Attester), None).await;
        })
    };
    let mut sock = TcpStream::connect(addr).await.unwrap();
    let mut hello = vec![7u8; 32];
    hello.push(2);
    hello.extend_from_slice(&[0; 32]);
    send_raw(&mut sock, &hello).await;
    let node_hello = raw_hello(&mut sock).await;
    assert_eq!(node_hello[32], 1, "the node says it attests");
    let own = Identity::generate().unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(
        client_config(&own, own.certificate(None).unwrap()).unwrap(),
    ));
    let name = rustls::pki_types::ServerName::try_from("veil-atls").unwrap();
    let tls = connector.connect(name, sock).await.unwrap();
    let der = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let cert = veil_attest_core::x509::Certificate::from_der(der.as_ref(), "node").unwrap();
    let ext = cert.extension(EVIDENCE_OID_DOTTED).unwrap();
    assert!(!ext.critical);
    let spki = cert.public_key().unwrap().spki_der().unwrap();
    let mut node_nonce = [0u8; 32];
    node_nonce.copy_from_slice(&node_hello[..32]);
    let mut node_context = [0u8; 32];
    node_context.copy_from_slice(&node_hello[33..65]);
    let expected = binding(&BindingInput {
        verifier_nonce: [7; 32],
        attester_nonce: node_nonce,
        attester_context: node_context,
        attester_spki_sha256: <sha2::Sha256 as sha2::Digest>::digest(&spki).into(),
        verifier_flags: 2,
        attester_flags: node_hello[32],
    });
    assert_eq!(
        TrustedTee(tee.public()).appraise(veil_atls::cmw::decode(&ext.value).unwrap(), &expected),
        Ok("trusted-tee")
    );
    drop(tls);
    let _ = node.await;
}

/// An attester that vouches for a context.
struct WithContext(Arc<SoftTee>, [u8; 32]);

impl Attester for WithContext {
    fn attest(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, AttestError> {
        self.0.attest(report_data)
    }
    fn context(&self) -> [u8; 32] {
        self.1
    }
}

#[tokio::test]
async fn the_attesters_context_is_bound_and_cannot_be_swapped_on_the_way() {
    let tee = SoftTee::new();
    let trust = TrustedTee(tee.public());
    // Straight: the verifier learns the context the evidence vouches for.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_tee = WithContext(tee.clone(), [5; 32]);
    let node = tokio::spawn(async move {
        for _ in 0..2 {
            let (sock, _) = listener.accept().await.unwrap();
            let id = Identity::generate().unwrap();
            let _ =
                server::<_, TrustedTee>(sock, &id, Some(&server_tee as &dyn Attester), None).await;
        }
    });
    let id = Identity::generate().unwrap();
    let (_, peer) = client(
        TcpStream::connect(addr).await.unwrap(),
        &id,
        None,
        Some(&trust),
    )
    .await
    .unwrap();
    assert_eq!(peer.context, [5; 32]);
    // A relay that rewrites the context in the node's hello: the evidence no longer binds.
    let relay = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_addr = relay.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut c, _) = relay.accept().await.unwrap();
        let mut n = TcpStream::connect(addr).await.unwrap();
        let mut hello = [0u8; 65];
        c.read_exact(&mut hello).await.unwrap();
        n.write_all(&hello).await.unwrap();
        n.read_exact(&mut hello).await.unwrap();
        hello[40] ^= 1; // inside the context
        c.write_all(&hello).await.unwrap();
        let (mut cr, mut cw) = c.into_split();
        let (mut nr, mut nw) = n.into_split();
        tokio::spawn(async move { tokio::io::copy(&mut cr, &mut nw).await });
        let _ = tokio::io::copy(&mut nr, &mut cw).await;
    });
    let r = client(
        TcpStream::connect(relay_addr).await.unwrap(),
        &id,
        None,
        Some(&trust),
    )
    .await;
    match r {
        Err(AtlsError::Refused(reason)) => assert!(reason.contains("not bound"), "{reason}"),
        Err(other) => panic!("refused for the wrong reason: {other}"),
        Ok(_) => panic!("a swapped context was accepted"),
    }
    node.abort();
}

/// An appraiser that cannot appraise (a dependency down) says so: a fault, not a verdict on
/// the evidence.
#[tokio::test]
async fn an_appraiser_fault_is_not_a_refusal() {
    struct Down;
    impl Appraiser for Down {
        type Claims = ();
        fn appraise(&self, _: &[u8], _: &[u8; 64]) -> Result<(), AppraiseError> {
            Err(AppraiseError::Fault(
                "the reference values cannot be read".into(),
            ))
        }
    }
    let tee = SoftTee::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let node = {
        let tee = tee.clone();
        tokio::spawn(async move {
            let (sock, _) = listener.accept().await.unwrap();
            let id = Identity::generate().unwrap();
            let _ = server::<_, Down>(sock, &id, Some(tee.as_ref() as &dyn Attester), None).await;
        })
    };
    let sock = TcpStream::connect(addr).await.unwrap();
    let id = Identity::generate().unwrap();
    match client(sock, &id, None, Some(&Down)).await {
        Err(AtlsError::Appraiser(why)) => assert!(why.contains("cannot be read"), "{why}"),
        other => panic!("{other:?}"),
    }
    let _ = node.await;
}

/// Issue 8, finding 8: the hello flags were outside the binding. A man in the middle that
/// rewrites the attesting node's flags on the way (here: adds "requires evidence" to its
/// hello) makes its evidence fail to bind, and the client refuses it.
#[tokio::test]
async fn hello_flags_rewritten_on_the_way_break_the_binding() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tee = SoftTee::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node_addr = listener.local_addr().unwrap();
    let node = {
        let tee = tee.clone();
        tokio::spawn(async move {
            let (sock, _) = listener.accept().await.unwrap();
            let id = Identity::generate().unwrap();
            let _ =
                server::<_, TrustedTee>(sock, &id, Some(tee.as_ref() as &dyn Attester), None).await;
        })
    };
    let mitm = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mitm_addr = mitm.local_addr().unwrap();
    tokio::spawn(async move {
        let (client_side, _) = mitm.accept().await.unwrap();
        let node_side = TcpStream::connect(node_addr).await.unwrap();
        let (mut cr, mut cw) = client_side.into_split();
        let (mut nr, mut nw) = node_side.into_split();
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut cr, &mut nw).await;
        });
        let mut hello = [0u8; 65];
        nr.read_exact(&mut hello).await.unwrap();
        assert_eq!(hello[32], 1, "the node says it attests");
        hello[32] |= 2;
        cw.write_all(&hello).await.unwrap();
        let _ = tokio::io::copy(&mut nr, &mut cw).await;
    });
    let sock = TcpStream::connect(mitm_addr).await.unwrap();
    let id = Identity::generate().unwrap();
    match client(sock, &id, None, Some(&TrustedTee(tee.public()))).await {
        Err(AtlsError::Refused(reason)) => {
            assert!(reason.contains("not bound to this session"), "{reason}")
        }
        other => panic!("the rewritten hello went unnoticed: {other:?}"),
    }
    let _ = node.await;
}
