//! The Pebble harness (sni_tests::pebble) end to end with a reference ACME client, independent
//! of the terminator: instant-acme in the client namespace orders certificates from Pebble, and
//! `openssl s_server` in the server namespace answers TLS-ALPN-01 (RFC 8737) on 198.18.0.2:443
//! with a challenge certificate made by rcgen. What issue 18's tests stand on: Pebble really
//! validates across the veth (a wrong digest is refused, readably) and issues a chain that
//! verifies against its root.

use std::{
    net::TcpStream,
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, Order,
    OrderStatus, RetryPolicy,
};
use sni_tests::{
    netns::{run, wait_until, ChildGuard, Netns, Pair, SERVER_V4},
    pebble::{Pebble, TLS_ALPN_PORT},
    require_root,
};

/// Issued through a challenge answered right.
const GOOD: &str = "acme-good.sni-test.example";
/// Its challenge answered with the digest of another key authorization.
const REFUSED: &str = "acme-refused.sni-test.example";

/// How long any one ACME step may take.
const STEP: Duration = Duration::from_secs(15);

#[test]
fn pebble_issues_through_tls_alpn_01_and_reports_a_refused_validation() {
    require_root();
    let pair = Pair::new();
    let dir = tempfile::tempdir().unwrap();
    let pebble = Pebble::start(&pair, dir.path(), &[GOOD, REFUSED], false);

    let url = pebble.directory_url();
    let ca = pebble.directory_ca();
    let server_ns = pair.server.name.clone();
    let work = dir.path().to_owned();
    let outcome = in_netns(&pair.client, move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(acme_flow(&url, &ca, &server_ns, &work))
    });
    let (chain, key) = match outcome {
        Ok(v) => v,
        Err(e) => panic!("ACME flow failed: {e}\nPebble's log:\n{}", pebble.log()),
    };

    // The issued chain: leaf then intermediate, verifying against the root that Pebble's
    // management interface reports, for the name ordered and for the key finalize made.
    let leaf = chain
        .split_inclusive("-----END CERTIFICATE-----\n")
        .next()
        .unwrap();
    let chain_path = dir.path().join("chain.pem");
    let leaf_path = dir.path().join("leaf.pem");
    let key_path = dir.path().join("leaf.key");
    std::fs::write(&chain_path, &chain).unwrap();
    std::fs::write(&leaf_path, leaf).unwrap();
    std::fs::write(&key_path, &key).unwrap();
    assert!(
        chain.matches("BEGIN CERTIFICATE").count() >= 2,
        "no intermediate in {chain}"
    );
    let out = openssl(&[
        "verify",
        "-CAfile",
        pebble.root_path().to_str().unwrap(),
        "-untrusted",
        chain_path.to_str().unwrap(),
        "-purpose",
        "sslserver",
        "-verify_hostname",
        GOOD,
        leaf_path.to_str().unwrap(),
    ]);
    assert!(out.contains(": OK"), "{out}");
    assert_eq!(
        std::fs::read_to_string(pebble.root_path()).unwrap(),
        pebble.root_pem()
    );
    let san = openssl(&[
        "x509",
        "-in",
        leaf_path.to_str().unwrap(),
        "-noout",
        "-ext",
        "subjectAltName",
    ]);
    assert!(san.contains(&format!("DNS:{GOOD}")), "{san}");
    assert!(!san.contains(REFUSED), "{san}");
    let leaf_pub = openssl(&[
        "x509",
        "-in",
        leaf_path.to_str().unwrap(),
        "-noout",
        "-pubkey",
    ]);
    let key_pub = openssl(&["pkey", "-in", key_path.to_str().unwrap(), "-pubout"]);
    assert_eq!(
        leaf_pub, key_pub,
        "the leaf is not for the key finalize made"
    );

    // Pebble validated both across the veth (no ALWAYS_VALID): its log names the challenge
    // checks.
    let log = pebble.log();
    assert!(log.contains(GOOD) && log.contains(REFUSED), "{log}");
}

/// The client side, in the client namespace: an account, then an order for [`GOOD`] answered
/// right (issued: returns the chain and the key), then one for [`REFUSED`] answered with a wrong
/// digest (checked invalid here, with the problem document). Errors carry their context.
async fn acme_flow(
    url: &str,
    ca: &Path,
    server_ns: &str,
    work: &Path,
) -> Result<(String, String), String> {
    let (account, _credentials) = Account::builder_with_root(ca)
        .map_err(|e| format!("HTTP client trusting {}: {e}", ca.display()))?
        .create(
            &NewAccount {
                contact: &[],
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            url.to_owned(),
            None,
        )
        .await
        .map_err(|e| format!("creating the account at {url}: {e}"))?;
    let retries = RetryPolicy::new()
        .initial_delay(Duration::from_millis(100))
        .backoff(1.5)
        .timeout(STEP);

    // 1. Answered right: ready, finalized, issued.
    let mut order = new_order(&account, GOOD).await?;
    let digest = {
        let mut auths = order.authorizations();
        let mut authz = auths
            .next()
            .await
            .ok_or("no authorization")?
            .map_err(|e| format!("fetching the authorization: {e}"))?;
        if authz.status != AuthorizationStatus::Pending {
            return Err(format!(
                "{GOOD}: authorization {:?}, not pending",
                authz.status
            ));
        }
        let mut challenge = authz
            .challenge(ChallengeType::TlsAlpn01)
            .ok_or("no tls-alpn-01 challenge offered")?;
        let digest = challenge.key_authorization().digest().as_ref().to_vec();
        let _server = challenge_server(server_ns, work, GOOD, &digest);
        challenge
            .set_ready()
            .await
            .map_err(|e| format!("{GOOD}: set_ready: {e}"))?;
        let status = order
            .poll_ready(&retries)
            .await
            .map_err(|e| format!("{GOOD}: waiting for the order to be ready: {e}"))?;
        if status != OrderStatus::Ready {
            return Err(format!("{GOOD}: order {status:?}: {:?}", order.state()));
        }
        digest
    };
    let key = order
        .finalize()
        .await
        .map_err(|e| format!("{GOOD}: finalize: {e}"))?;
    let chain = order
        .poll_certificate(&retries)
        .await
        .map_err(|e| format!("{GOOD}: fetching the certificate: {e}"))?;

    // 2. Answered with a certificate for the name whose acmeIdentifier holds a digest of another
    // key authorization (GOOD's): the validation is refused, the order invalid, and the
    // authorization's challenge carries the problem document.
    let mut order = new_order(&account, REFUSED).await?;
    {
        let mut auths = order.authorizations();
        let mut authz = auths
            .next()
            .await
            .ok_or("no authorization")?
            .map_err(|e| format!("fetching the authorization: {e}"))?;
        let mut challenge = authz
            .challenge(ChallengeType::TlsAlpn01)
            .ok_or("no tls-alpn-01 challenge offered")?;
        if challenge.key_authorization().digest().as_ref() == digest.as_slice() {
            return Err("two challenges with one key authorization".into());
        }
        let _server = challenge_server(server_ns, work, REFUSED, &digest);
        challenge
            .set_ready()
            .await
            .map_err(|e| format!("{REFUSED}: set_ready: {e}"))?;
        wait_authz_settled(&mut order).await?;
    }
    let mut auths = order.authorizations();
    let authz = auths.next().await.ok_or("no authorization")?.unwrap();
    let problem = authz
        .challenges
        .iter()
        .find(|c| c.r#type == ChallengeType::TlsAlpn01)
        .and_then(|c| c.error.clone());
    let status = authz.status;
    let state = order
        .refresh()
        .await
        .map_err(|e| format!("{REFUSED}: refreshing the order: {e}"))?;
    if status != AuthorizationStatus::Invalid || state.status != OrderStatus::Invalid {
        return Err(format!(
            "{REFUSED}: a wrong digest was not refused: authorization {status:?}, order {:?}, \
             problem {problem:?}",
            state.status
        ));
    }
    let problem = problem.ok_or(format!("{REFUSED}: invalid without a problem document"))?;
    eprintln!("the refused validation, as Pebble reports it: {problem:?}");
    let readable = problem.r#type.as_deref() == Some("urn:ietf:params:acme:error:unauthorized")
        && problem
            .detail
            .as_deref()
            .is_some_and(|d| d.contains(REFUSED) || d.contains("tls-alpn-01"));
    if !readable {
        return Err(format!(
            "{REFUSED}: the problem document does not say what was refused: {problem:?}"
        ));
    }
    Ok((chain, key))
}

/// A new order for `name`, pending.
async fn new_order(account: &Account, name: &str) -> Result<Order, String> {
    let ids = [Identifier::Dns(name.to_owned())];
    let order = account
        .new_order(&NewOrder::new(&ids))
        .await
        .map_err(|e| format!("{name}: new order: {e}"))?;
    Ok(order)
}

/// Refreshes the order's (only) authorization until it is no longer pending, [`STEP`] at most.
async fn wait_authz_settled(order: &mut Order) -> Result<(), String> {
    let deadline = Instant::now() + STEP;
    loop {
        let mut auths = order.authorizations();
        let mut authz = auths.next().await.ok_or("no authorization")?.unwrap();
        let state = authz
            .refresh()
            .await
            .map_err(|e| format!("refreshing the authorization: {e}"))?;
        if state.status != AuthorizationStatus::Pending {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("authorization still pending after {STEP:?}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `openssl s_server` in the server namespace on 198.18.0.2:443 offering only `acme-tls/1`,
/// with a TLS-ALPN-01 certificate for `name` (its only SAN) holding `digest` in the critical
/// acmeIdentifier extension; returned once it accepts connections (checked from the client
/// namespace, across the veth, as Pebble will connect).
fn challenge_server(server_ns: &str, work: &Path, name: &str, digest: &[u8]) -> ChildGuard {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key).unwrap();
    let cert_path = work.join(format!("{name}.alpn.pem"));
    let key_path = work.join(format!("{name}.alpn.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();

    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", server_ns, "openssl", "s_server", "-www"])
        .args(["-accept", &format!("{SERVER_V4}:{TLS_ALPN_PORT}")])
        .args(["-alpn", "acme-tls/1", "-cert"])
        .arg(&cert_path)
        .arg("-key")
        .arg(&key_path);
    let log = work.join(format!("{name}.s_server.log"));
    let mut server = ChildGuard::spawn(cmd, "openssl s_server", &log);
    let up = wait_until(Duration::from_secs(10), || {
        TcpStream::connect((SERVER_V4, TLS_ALPN_PORT)).is_ok() || server.exited().is_some()
    });
    assert!(
        up && server.exited().is_none(),
        "openssl s_server did not start on {SERVER_V4}:{TLS_ALPN_PORT}:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    server
}

/// Runs `f` on a thread inside `ns`'s network stack (instant-acme's HTTP client then reaches
/// Pebble on the client side of the veth).
fn in_netns<T: Send + 'static>(ns: &Netns, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{}", ns.name);
    thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// `openssl args`, its stdout; panics with its output unless it succeeds.
fn openssl(args: &[&str]) -> String {
    String::from_utf8(run(Command::new("openssl").args(args)).stdout).unwrap()
}
