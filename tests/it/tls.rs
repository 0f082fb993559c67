//! TLS 1.3 with client certificates: who gets in, who is refused, what each identity may call, and
//! certificate rotation under load.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use inferd::certs::{Ca, Leaf};
use inferd::client::{BlockingClient, ClientOptions, ClientTls};
use inferd::config::TlsListen;
use inferd::proto::ErrorCode;
use inferd::server::tls::TlsFiles;
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, SerialNumber};
use time::{Duration as Span, OffsetDateTime};

use crate::harness::{digits_input, scratch, Scratch, TestServer};

/// A development PKI in a temporary folder, removed with it.
struct Pki {
    dir: Scratch,
    ca: Ca,
}

const POLICY: &str = r#"
[identity."device-1"]
models = ["digits-mlp"]
[identity."device-2"]
models = ["*"]
[identity."device-3"]
models = ["*"]
[identity."ops"]
models = ["*"]
admin = true
"#;

impl Pki {
    fn new(tag: &str) -> Pki {
        let dir = scratch(&format!("tls-{tag}"));
        let ca = Ca::new("test fleet CA").unwrap();
        std::fs::write(dir.join("ca.pem"), &ca.cert_pem).unwrap();
        let server = ca
            .server(&["localhost".into(), "127.0.0.1".into()], 1)
            .unwrap();
        let pki = Pki { dir, ca };
        pki.write("server", &server);
        for (n, serial) in [(1, 11), (2, 12), (3, 13)] {
            pki.write(
                &format!("device-{n}"),
                &pki.ca.device(&format!("device-{n}"), serial).unwrap(),
            );
        }
        pki.write("ops", &pki.ca.device("ops", 14).unwrap());
        // device-3 (serial 13) is revoked from the start.
        std::fs::write(pki.dir.join("crl.pem"), pki.ca.crl(&[13], 1).unwrap()).unwrap();
        std::fs::write(pki.dir.join("access.toml"), POLICY).unwrap();
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn write(&self, name: &str, leaf: &Leaf) {
        std::fs::write(self.dir.join(format!("{name}.pem")), &leaf.cert_pem).unwrap();
        std::fs::write(self.dir.join(format!("{name}.key")), &leaf.key_pem).unwrap();
    }

    fn server(&self) -> TestServer {
        self.server_with(|_| {})
    }

    fn server_with(&self, adjust: impl FnOnce(&mut inferd::config::ServeConfig)) -> TestServer {
        let files = TlsFiles {
            cert: self.path("server.pem"),
            key: self.path("server.key"),
            client_ca: Some(self.path("ca.pem")),
            crl: Some(self.path("crl.pem")),
            allow_tls12: false,
        };
        let access = self.path("access.toml");
        TestServer::with(move |c| {
            c.tls = Some(TlsListen {
                addr: "127.0.0.1:0".parse().unwrap(),
                files,
            });
            c.access = Some(access);
            adjust(c);
        })
    }

    /// Client settings presenting `name`.pem/.key, trusting this PKI's CA.
    fn client(&self, name: &str) -> ClientTls {
        let (cert, key) = (
            self.path(&format!("{name}.pem")),
            self.path(&format!("{name}.key")),
        );
        ClientTls::from_files(&self.path("ca.pem"), Some((&cert, &key)), "127.0.0.1").unwrap()
    }
}

fn connect(
    server: &TestServer,
    tls: ClientTls,
) -> Result<BlockingClient, inferd::client::ClientError> {
    let options = ClientOptions {
        tls: Some(tls),
        connect_timeout: Duration::from_secs(5),
        ..ClientOptions::default()
    };
    BlockingClient::connect(server.tls_addr.unwrap(), options)
}

/// Connecting succeeds at the TCP level but the handshake must fail, with the TLS alert `alert`.
fn assert_refused(server: &TestServer, tls: ClientTls, what: &str, alert: &str) {
    match connect(server, tls) {
        Err(e) => assert!(
            e.to_string().contains(alert),
            "{what}: expected alert {alert}, got {e}"
        ),
        Ok(client) => panic!(
            "{what}: should be refused, but ping says {:?}",
            client.ping()
        ),
    }
}

#[test]
fn devices_are_served_what_their_identity_allows() {
    let pki = Pki::new("allow");
    let server = pki.server();
    let device1 = connect(&server, pki.client("device-1")).unwrap();
    device1.ping().unwrap();
    assert_eq!(
        device1
            .infer("digits-mlp", None, &[digits_input()], None)
            .unwrap()
            .version,
        1
    );
    let err = device1.infer("silero-vad", None, &[], None).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NOT_AUTHORIZED), "{err}");
    let err = device1.model_info("ppocr-cls", None).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NOT_AUTHORIZED));
    let listed: Vec<String> = device1
        .list_models()
        .unwrap()
        .models
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(
        listed,
        vec!["digits-mlp".to_string()],
        "a listing shows only what the identity may use"
    );

    let device2 = connect(&server, pki.client("device-2")).unwrap();
    assert!(device2.list_models().unwrap().models.len() >= 5);

    // The plain listener has no identity, and the policy grants anonymous clients nothing.
    let plain = BlockingClient::connect(server.addr, ClientOptions::default()).unwrap();
    let err = plain
        .infer("digits-mlp", None, &[digits_input()], None)
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NOT_AUTHORIZED));
    // Three refusals, each counted; no handshake was refused.
    assert_eq!(server.handle.refusals().not_authorized, 3);
    assert_eq!(server.handle.refusals().tls_handshake, 0);
}

fn tls12_only(pki: &Pki) -> ClientTls {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(pki.path("ca.pem")).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(
        vec![CertificateDer::from_pem_file(pki.path("device-1.pem")).unwrap()],
        PrivateKeyDer::from_pem_file(pki.path("device-1.key")).unwrap(),
    )
    .unwrap();
    ClientTls {
        config: Arc::new(config),
        server_name: "127.0.0.1".try_into().unwrap(),
    }
}

#[test]
fn untrusted_expired_misused_revoked_and_old_clients_are_refused() {
    let pki = Pki::new("refuse");
    let server = pki.server();

    // No client certificate.
    let anonymous = ClientTls::from_files(&pki.path("ca.pem"), None, "127.0.0.1").unwrap();
    assert_refused(&server, anonymous, "no certificate", "CertificateRequired");

    // A device of another fleet.
    let foreign = Ca::new("someone else's CA").unwrap();
    pki.write("foreign", &foreign.device("device-1", 11).unwrap());
    assert_refused(&server, pki.client("foreign"), "foreign CA", "UnknownCA");

    // Expired yesterday.
    let mut params = CertificateParams::new(vec!["device-1".to_string()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "device-1");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = OffsetDateTime::now_utc() - Span::days(30);
    params.not_after = OffsetDateTime::now_utc() - Span::days(1);
    params.serial_number = Some(SerialNumber::from(21u64));
    pki.write("expired", &pki.ca.issue(params).unwrap());
    assert_refused(
        &server,
        pki.client("expired"),
        "expired",
        "CertificateExpired",
    );

    // A certificate for servers, not clients (no clientAuth extended key usage).
    pki.write(
        "server-usage",
        &pki.ca.server(&["device-1".into()], 22).unwrap(),
    );
    assert_refused(
        &server,
        pki.client("server-usage"),
        "serverAuth only",
        "UnsupportedCertificate",
    );

    // Revoked by the CRL.
    assert_refused(
        &server,
        pki.client("device-3"),
        "revoked",
        "CertificateRevoked",
    );

    // A client that only speaks TLS 1.2.
    assert_refused(&server, tls12_only(&pki), "TLS 1.2", "ProtocolVersion");

    // Valid devices are still served.
    let device = connect(&server, pki.client("device-2")).unwrap();
    assert_eq!(
        device
            .infer("digits-mlp", None, &[digits_input()], None)
            .unwrap()
            .version,
        1
    );
    // Each refused handshake was counted once.
    assert_eq!(server.handle.refusals().tls_handshake, 6);
}

#[test]
fn rotation_under_load_loses_no_request_and_applies_new_rules() {
    let pki = Pki::new("rotate");
    let server = pki.server();
    let device2 = pki.client("device-2");
    // device-2 connects once before the rotation: its client keeps the session for resumption.
    connect(&server, device2.clone()).unwrap().ping().unwrap();

    let addr = server.tls_addr.unwrap();
    let load_tls = pki.client("device-1");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let options = ClientOptions {
                tls: Some(load_tls),
                ..ClientOptions::default()
            };
            let client = BlockingClient::connect(addr, options).unwrap();
            let (mut ok, mut failed) = (0u32, 0u32);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || ok < 50 {
                match client.infer("digits-mlp", None, &[digits_input()], None) {
                    Ok(_) => ok += 1,
                    Err(_) => failed += 1,
                }
            }
            (ok, failed)
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    // Rotate: a new server certificate, and a CRL that now revokes device-2 (serial 12).
    pki.write(
        "server",
        &pki.ca
            .server(&["localhost".into(), "127.0.0.1".into()], 2)
            .unwrap(),
    );
    std::fs::write(pki.path("crl.pem"), pki.ca.crl(&[12, 13], 2).unwrap()).unwrap();
    server.handle.reload().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = load.join().unwrap();
    assert_eq!(
        failed, 0,
        "no request on an established connection fails across the rotation ({ok} ok)"
    );

    // New rules for new handshakes, resumption included: device-2's client offers its old session.
    assert_refused(
        &server,
        device2,
        "revoked after rotation, with a session from before",
        "CertificateRevoked",
    );
    connect(&server, pki.client("device-1"))
        .unwrap()
        .ping()
        .unwrap();

    // A reload that fails (missing key) keeps the material in force.
    std::fs::remove_file(pki.path("server.key")).unwrap();
    assert!(server.handle.reload().is_err());
    connect(&server, pki.client("device-1"))
        .unwrap()
        .ping()
        .unwrap();
}

#[test]
fn tls_listener_without_client_certificates() {
    let pki = Pki::new("server-only");
    let files = TlsFiles {
        cert: pki.path("server.pem"),
        key: pki.path("server.key"),
        client_ca: None,
        crl: None,
        allow_tls12: false,
    };
    let server = TestServer::with(move |c| {
        c.tls = Some(TlsListen {
            addr: "127.0.0.1:0".parse().unwrap(),
            files,
        })
    });
    let tls = ClientTls::from_files(&pki.path("ca.pem"), None, "localhost").unwrap();
    let client = connect(&server, tls).unwrap();
    assert_eq!(
        client
            .infer("digits-mlp", None, &[digits_input()], None)
            .unwrap()
            .version,
        1
    );
    // The wrong name is refused by the client.
    let wrong = ClientTls::from_files(&pki.path("ca.pem"), None, "example.org").unwrap();
    assert!(connect(&server, wrong).is_err());
}

#[test]
fn admin_operations_need_a_grant_or_loopback() {
    let pki = Pki::new("admin");
    let server = pki.server();
    // A device without the admin grant.
    let device = connect(&server, pki.client("device-1")).unwrap();
    assert_eq!(
        device.reload().unwrap_err().code(),
        Some(ErrorCode::NOT_AUTHORIZED)
    );
    // An identity granted admin.
    connect(&server, pki.client("ops"))
        .unwrap()
        .reload()
        .unwrap();
    // Plain TCP from loopback, no certificate: allowed by default...
    let local = BlockingClient::connect(server.addr, ClientOptions::default()).unwrap();
    local.reload().unwrap();
    // ...and refused when the loopback rule is off.
    let strict = pki.server_with(|c| c.admin_loopback = false);
    let local = BlockingClient::connect(strict.addr, ClientOptions::default()).unwrap();
    assert_eq!(
        local.reload().unwrap_err().code(),
        Some(ErrorCode::NOT_AUTHORIZED)
    );
    // A reload that fails answers INTERNAL and keeps the material in force.
    std::fs::write(pki.path("access.toml"), "[identity.broken\n").unwrap();
    let ops = connect(&strict, pki.client("ops")).unwrap();
    assert_eq!(ops.reload().unwrap_err().code(), Some(ErrorCode::INTERNAL));
    connect(&strict, pki.client("ops")).unwrap().ping().unwrap();
    assert_eq!(
        device
            .infer("digits-mlp", None, &[digits_input()], None)
            .unwrap()
            .version,
        1
    );
}
