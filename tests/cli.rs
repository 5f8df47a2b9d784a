//! The `vigil` binary: `check` on broken configurations, `certs`, `run` with SIGTERM, and the
//! diagnostics `run` writes on standard error.

mod support;

use anyhow::Result;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn vigil() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vigil"))
}

fn certs_init(dir: &Path) -> Result<()> {
    let out = vigil().args(["certs", "init", "--dir"]).arg(dir).output()?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn check(dir: &Path, text: &str) -> Result<(bool, String)> {
    let path = dir.join("vigil.toml");
    std::fs::write(&path, text)?;
    let out = vigil().args(["check", "--config"]).arg(&path).output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

const GOOD: &str = r#"
[server]
listen = "127.0.0.1:0"

[tls]
cert = "server.pem"
key = "server.key"
client_ca = ["ca.pem"]
crl = ["ca.crl"]

[[route]]
name = "api"
host = "api.example.com"
path = "/v1"
upstream = "http://127.0.0.1:9"
login = "none"
allow = [{ spiffe = ["spiffe://example.org/ns/*/sa/*"], methods = ["GET"] }]
"#;

#[test]
fn check_accepts_a_good_config() -> Result<()> {
    let dir = tempfile::tempdir()?;
    certs_init(dir.path())?;
    let (ok, out) = check(dir.path(), GOOD)?;
    assert!(ok, "{out}");
    assert!(out.contains("ok (1 route)"), "{out}");
    Ok(())
}

#[test]
fn check_reports_every_problem_with_its_location() -> Result<()> {
    let dir = tempfile::tempdir()?;
    certs_init(dir.path())?;
    let broken = GOOD
        .replace(
            "listen = \"127.0.0.1:0\"",
            "listen = \"127.0.0.1:0\"\nmax_conections = 5",
        )
        .replace("key = \"server.key\"", "key = \"missing.key\"")
        .replace(
            "methods = [\"GET\"]",
            "methods = [\"get\"], netwroks = [\"10.0.0.0/8\"]",
        )
        .replace(
            "upstream = \"http://127.0.0.1:9\"",
            "upstream = \"ftp://127.0.0.1:9\"",
        )
        + "\n[[route]]\nname = \"api\"\nhost = \"bad host\"\nupstream = \"http://127.0.0.1:9\"\nlogin = \"oidc-ish\"\nidle = \"5 parsecs\"\nallow = []\n";
    let (ok, out) = check(dir.path(), &broken)?;
    assert!(!ok, "{out}");
    let expect = [
        "unknown key `server.max_conections`",
        "did you mean `max_connections`?",
        "missing.key",
        "invalid method \"get\"",
        "unknown key `route.0.allow.0.netwroks`",
        "did you mean `networks`?",
        "needs http:// or https://",
        "duplicate route name \"api\"",
        "invalid host \"bad host\"",
        "unknown login \"oidc-ish\"",
        "unknown key `route.1.idle`",
        "has no allow rules",
    ];
    for e in expect {
        assert!(out.contains(e), "missing {e:?} in:\n{out}");
    }
    // Locations: file:line:col and a caret under the offending text.
    let path = dir.path().join("vigil.toml").display().to_string();
    assert!(out.contains(&format!("{path}:4:1")), "{out}");
    assert!(out.contains('^'), "{out}");
    assert!(out.contains("problems in"), "{out}");
    Ok(())
}

#[test]
fn check_reports_syntax_and_type_errors() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (ok, out) = check(dir.path(), "[server\nlisten = 1\n")?;
    assert!(!ok);
    assert!(out.contains(":1:"), "{out}");
    let (ok, out) = check(
        dir.path(),
        "[server]\nmax_connections = \"lots\"\nidle_timeout = \"soon\"\n",
    )?;
    assert!(!ok);
    assert!(
        out.contains("`server.max_connections`: expected a whole number"),
        "{out}"
    );
    assert!(out.contains("missing [tls] section"), "{out}");
    Ok(())
}

/// One run says everything: a key that does not match its certificate is found beside type
/// errors in the same section, a missing CA file and a broken route, and the problems come in
/// the order of the file, each at the key at fault, in words rather than serde's.
#[test]
fn check_reports_everything_in_one_pass_in_file_order() -> Result<()> {
    let dir = tempfile::tempdir()?;
    certs_init(dir.path())?;
    let other = vigil()
        .args([
            "certs", "issue", "--kind", "server", "--name", "other", "--dns", "o.test",
        ])
        .arg("--dir")
        .arg(dir.path())
        .output()?;
    anyhow::ensure!(other.status.success());
    let text = r#"[server]
listen = "127.0.0.1:0"
max_connections = "many"
idle_timeout = 5

[tls]
cert = "server.pem"
key = "other.key"
client_ca = ["nope.pem"]
session_tickets = "yes"

[[route]]
name = "a"
host = "a.test"
upstream = "http://127.0.0.1:1"
login = "none"
allow = [{ spiffe = ["spiffe://x/y"], methods = "GET" }]
"#;
    let (ok, out) = check(dir.path(), text)?;
    assert!(!ok, "{out}");
    let path = dir.path().join("vigil.toml").display().to_string();
    let expected = [
        (
            3,
            "`server.max_connections`: expected a whole number (0 or more), found the string \"many\"",
        ),
        (4, "`server.idle_timeout`: expected a duration in quotes"),
        (8, "other.key: this key does not belong to the certificate"),
        (9, "nope.pem: no such file"),
        (
            10,
            "`tls.session_tickets`: expected true or false, found the string \"yes\"",
        ),
        (17, "`route.0.allow.0.methods`: expected a list"),
    ];
    let errors: Vec<&str> = out.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), expected.len(), "{out}");
    for ((line, message), error) in expected.iter().zip(&errors) {
        assert!(
            error.contains(message),
            "expected {message:?}, got {error:?} in:\n{out}"
        );
        let at = format!("{path}:{line}:");
        let block = out.split(*error).nth(1).unwrap_or("");
        assert!(
            block.lines().nth(1).is_some_and(|l| l.contains(&at)),
            "{message:?} not at line {line}:\n{out}"
        );
    }
    for serde in ["usize", "invalid type", "os error", "missing [tls] section"] {
        assert!(!out.contains(serde), "{serde:?} in:\n{out}");
    }
    assert!(out.contains("6 problems in"), "{out}");
    Ok(())
}

/// docs/configuration.md shows `vigil check` on config/example.toml with six mistakes, as
/// "the real output": it is.
#[test]
fn the_documented_check_output_is_the_real_one() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let docs = std::fs::read_to_string(root.join("docs/configuration.md"))?;
    let shown = docs
        .split("$ vigil check --config config/example.toml\n")
        .nth(1)
        .and_then(|rest| rest.split("\n$ echo $?").next())
        .unwrap_or_default();
    let mut example = std::fs::read_to_string(root.join("config/example.toml"))?;
    for (right, wrong) in [
        (
            r#"idle_timeout = "2m"  "#,
            r#"idle_timeout = "2 mins later""#,
        ),
        (
            r#"upstream_ca = "../certs/ca.pem""#,
            r#"upstream_ca = "../certs/internal-ca.pem""#,
        ),
        (
            r#"{ spiffe = ["spiffe://example.org/ns/frontend/sa/*"], methods = ["GET", "POST"]"#,
            r#"{ spife = ["spiffe://example.org/ns/frontend/sa/*"], methods = ["GET", "post"]"#,
        ),
        ("preserve_host = true ", "preserve_hots = true "),
        (r#""192.168.100.0/24"] }"#, r#""192.168.100.0/33"] }"#),
    ] {
        assert_eq!(
            example.matches(right).count(),
            1,
            "{right:?} in config/example.toml"
        );
        example = example.replace(right, wrong);
    }
    let dir = tempfile::tempdir()?;
    certs_init(&dir.path().join("certs"))?;
    std::fs::create_dir(dir.path().join("config"))?;
    std::fs::write(dir.path().join("config/example.toml"), example)?;
    let out = vigil()
        .current_dir(dir.path())
        .args(["check", "--config", "config/example.toml"])
        .output()?;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim_end(),
        shown.trim_end()
    );
    Ok(())
}

#[test]
fn check_reports_a_bad_crl_and_a_bad_ca() -> Result<()> {
    let dir = tempfile::tempdir()?;
    certs_init(dir.path())?;
    std::fs::write(
        dir.path().join("bad.crl"),
        "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
    )?;
    std::fs::write(dir.path().join("empty.pem"), "")?;
    let broken = GOOD
        .replace("crl = [\"ca.crl\"]", "crl = [\"bad.crl\"]")
        .replace("client_ca = [\"ca.pem\"]", "client_ca = [\"empty.pem\"]");
    let (ok, out) = check(dir.path(), &broken)?;
    assert!(!ok);
    assert!(out.contains("bad.crl: not a valid CRL"), "{out}");
    assert!(out.contains("empty.pem: no PEM certificate found"), "{out}");
    Ok(())
}

#[test]
fn check_refuses_an_open_admin_listener_off_loopback() -> Result<()> {
    let dir = tempfile::tempdir()?;
    certs_init(dir.path())?;
    // Appended after the route: `listen` is on line 20.
    let open = format!("{GOOD}\n[admin]\nlisten = \"0.0.0.0:9901\"\n");
    let (ok, out) = check(dir.path(), &open)?;
    assert!(!ok, "{out}");
    let path = dir.path().join("vigil.toml").display().to_string();
    assert!(out.contains("plain HTTP off loopback"), "{out}");
    assert!(out.contains(&format!("{path}:20:10")), "{out}");
    assert!(out.contains("admin.token_file"), "{out}");

    // Loopback stays open: only local processes reach it.
    let (ok, out) = check(dir.path(), &open.replace("0.0.0.0", "127.0.0.1"))?;
    assert!(ok, "{out}");

    // A token for the calls that change something, or client certificates, make it acceptable.
    std::fs::write(
        dir.path().join("admin.tokens"),
        "# who may change things\nops 0123456789abcdef0123456789abcdef\n",
    )?;
    let (ok, out) = check(
        dir.path(),
        &format!("{open}token_file = \"admin.tokens\"\nnames = [\"vigil-admin.vigil.svc\"]\n"),
    )?;
    assert!(ok, "{out}");
    let (ok, out) = check(dir.path(), &format!("{open}client_ca = [\"ca.pem\"]\n"))?;
    assert!(ok, "{out}");

    // A token file that protects nothing, or a weak token, is refused, never quoted.
    for (text, error) in [
        ("# nothing yet\n", "no token in the file"),
        ("ops hunter2\n", "shorter than 32"),
    ] {
        std::fs::write(dir.path().join("admin.tokens"), text)?;
        let (ok, out) = check(
            dir.path(),
            &format!("{open}token_file = \"admin.tokens\"\n"),
        )?;
        assert!(!ok, "{out}");
        assert!(out.contains(error), "{out}");
        assert!(!out.contains("hunter2"), "{out}");
    }
    let (ok, out) = check(
        dir.path(),
        &format!("{open}client_ca = [\"ca.pem\"]\nnames = [\"*.svc\"]\n"),
    )?;
    assert!(!ok, "{out}");
    assert!(out.contains("is not a host name"), "{out}");
    Ok(())
}

#[test]
fn check_refuses_crls_that_do_not_verify_against_client_ca() -> Result<()> {
    use rustls::pki_types::CertificateRevocationListDer;
    use rustls::pki_types::pem::PemObject;
    let dir = tempfile::tempdir()?;
    certs_init(dir.path())?;
    // The CRL `certs init` wrote, with one bit of its signature flipped, as DER.
    let pem = std::fs::read(dir.path().join("ca.crl"))?;
    let mut der = CertificateRevocationListDer::from_pem_slice(&pem)?
        .as_ref()
        .to_vec();
    let last = der.len() - 1;
    der[last] ^= 0x01;
    std::fs::write(dir.path().join("flipped.crl"), &der)?;
    // A CRL from another CA with the same name, and one from an unrelated CA.
    let next = time::OffsetDateTime::now_utc() + time::Duration::days(1);
    let impostor = vigil::certs::Authority::generate(vigil::certs::DEMO_CA_NAME)?;
    std::fs::write(
        dir.path().join("impostor.crl"),
        impostor.crl_pem(&[], 1, next)?,
    )?;
    let unrelated = vigil::certs::Authority::generate("Unrelated CA")?;
    std::fs::write(
        dir.path().join("unrelated.crl"),
        unrelated.crl_pem(&[], 1, next)?,
    )?;
    for (file, needle) in [
        (
            "flipped.crl",
            "signature does not verify with the key of CN=Vigil Development CA",
        ),
        ("impostor.crl", "another CA with the same name"),
        (
            "unrelated.crl",
            "issued by CN=Unrelated CA, which is not a CA in client_ca",
        ),
    ] {
        let text = GOOD.replace("crl = [\"ca.crl\"]", &format!("crl = [\"{file}\"]"));
        let (ok, out) = check(dir.path(), &text)?;
        assert!(!ok, "{file}: accepted: {out}");
        assert!(out.contains(file) && out.contains(needle), "{file}: {out}");
        let path = dir.path().join("vigil.toml");
        let run = vigil().args(["run", "--config"]).arg(&path).output()?;
        assert!(!run.status.success(), "{file}: run started");
        assert!(String::from_utf8_lossy(&run.stderr).contains(needle));
    }
    // The untouched CRL passes.
    let (ok, out) = check(dir.path(), GOOD)?;
    assert!(ok, "{out}");
    Ok(())
}

#[test]
fn check_refuses_unknown_key_exchange_groups() -> Result<()> {
    let dir = tempfile::tempdir()?;
    certs_init(dir.path())?;
    let text = GOOD.replace(
        "crl = [\"ca.crl\"]",
        "crl = [\"ca.crl\"]\nkey_exchange = [\"X25519MLKEM768\", \"X25591\", \"x25519mlkem768\"]",
    );
    let (ok, out) = check(dir.path(), &text)?;
    assert!(!ok, "{out}");
    assert!(
        out.contains("unknown key exchange group \"X25591\""),
        "{out}"
    );
    assert!(out.contains("did you mean `X25519`?"), "{out}");
    assert!(out.contains("\"x25519mlkem768\" is listed twice"), "{out}");
    let text = GOOD.replace("crl = [\"ca.crl\"]", "key_exchange = []");
    let (ok, out) = check(dir.path(), &text)?;
    assert!(!ok && out.contains("no key exchange group"), "{out}");
    let text = GOOD.replace(
        "crl = [\"ca.crl\"]",
        "key_exchange = [\"X25519\", \"secp256r1\"]",
    );
    let (ok, out) = check(dir.path(), &text)?;
    assert!(ok, "{out}");
    Ok(())
}

#[test]
fn run_refuses_an_invalid_config() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("vigil.toml");
    std::fs::write(&path, "[bogus]\n")?;
    let out = vigil().args(["run", "--config"]).arg(&path).output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown section `bogus`"), "{err}");
    assert!(err.contains("refusing to start"), "{err}");
    Ok(())
}

#[test]
fn certs_issue_and_revoke() -> Result<()> {
    let dir = tempfile::tempdir()?;
    certs_init(dir.path())?;
    for name in [
        "ca.pem",
        "ca.key",
        "server.pem",
        "server.key",
        "device.pem",
        "device.key",
        "workload.pem",
        "workload.key",
        "ca.crl",
    ] {
        assert!(dir.path().join(name).exists(), "{name}");
    }
    use std::os::unix::fs::PermissionsExt;
    for key in ["ca.key", "server.key", "device.key", "workload.key"] {
        let mode = std::fs::metadata(dir.path().join(key))?
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode & 0o077, 0, "{key} is readable by others: {mode:o}");
    }
    let out = vigil()
        .args([
            "certs",
            "issue",
            "--kind",
            "workload",
            "--name",
            "billing",
            "--spiffe-id",
            "spiffe://example.org/ns/billing/sa/api",
            "--ttl",
            "1h",
            "--dir",
        ])
        .arg(dir.path())
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pem = std::fs::read_to_string(dir.path().join("billing.pem"))?;
    let peer = vigil::tls::PeerCert::from_der(
        rustls::pki_types::pem::PemObject::from_pem_slice(pem.as_bytes())
            .map(|c: rustls::pki_types::CertificateDer<'static>| c.to_vec())?
            .as_slice(),
    )
    .map_err(anyhow::Error::msg)?;
    assert_eq!(
        peer.spiffe_id.as_deref(),
        Some("spiffe://example.org/ns/billing/sa/api")
    );
    assert!(
        peer.not_after - peer.not_before <= 3600 + 120,
        "ttl not applied"
    );

    let bad = vigil()
        .args([
            "certs",
            "issue",
            "--kind",
            "workload",
            "--name",
            "x",
            "--spiffe-id",
            "spiffe://Example.org/../x",
            "--dir",
        ])
        .arg(dir.path())
        .output()?;
    assert!(!bad.status.success());

    let out = vigil()
        .args(["certs", "revoke", "--cert"])
        .arg(dir.path().join("billing.pem"))
        .arg("--dir")
        .arg(dir.path())
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let crl = std::fs::read_to_string(dir.path().join("ca.crl"))?;
    let (number, revoked) = vigil::certs::read_crl(&crl)?;
    assert_eq!(number, 2);
    assert_eq!(revoked.len(), 1);
    assert_eq!(
        revoked[0].serial,
        peer.serial
            .iter()
            .copied()
            .skip_while(|b| *b == 0)
            .collect::<Vec<_>>()
    );
    Ok(())
}

#[test]
fn run_serves_and_drains_on_sigterm() -> Result<()> {
    let dir = tempfile::tempdir()?;
    certs_init(dir.path())?;
    let listen = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listen.local_addr()?;
    drop(listen);
    let config = GOOD.replace("listen = \"127.0.0.1:0\"", &format!("listen = \"{addr}\""))
        + "\n[admin]\nlisten = \"\"\n[log]\ndecisions = \"off\"\n";
    let path = dir.path().join("vigil.toml");
    std::fs::write(&path, config)?;
    let mut child = vigil()
        .args(["run", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(addr).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "vigil did not start listening");
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            anyhow::bail!("vigil did not exit after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "{exit:?}");
    Ok(())
}

/// A directory with the files the shipped examples refer to under `tls/`.
fn example_pki() -> Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    let tls = dir.path().join("tls");
    certs_init(&tls)?;
    std::fs::copy(tls.join("ca.pem"), tls.join("upstream-ca.pem"))?;
    std::fs::copy(tls.join("device.pem"), tls.join("proxy-client.pem"))?;
    std::fs::copy(tls.join("device.key"), tls.join("proxy-client.key"))?;
    std::fs::write(tls.join("oidc-client-secret"), "secret\n")?;
    // The examples' admin listeners are off loopback: their calls that change something need
    // a token (a Secret mounted at admin/ in the Kubernetes example).
    std::fs::create_dir(dir.path().join("admin"))?;
    std::fs::write(
        dir.path().join("admin/tokens"),
        "ops 0123456789abcdef0123456789abcdef\n",
    )?;
    let keys = vigil()
        .args(["keys", "session"])
        .arg(tls.join("session.keys"))
        .output()?;
    anyhow::ensure!(keys.status.success());
    let keys = vigil()
        .args(["keys", "assertion"])
        .arg(tls.join("assertion.pem"))
        .output()?;
    anyhow::ensure!(keys.status.success());
    Ok(dir)
}

#[test]
fn shipped_examples_pass_check() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let deployment = std::fs::read_to_string(root.join("examples/deployment/vigil.toml"))?;
    let manifest = std::fs::read_to_string(root.join("examples/kubernetes/vigil.yaml"))?;
    let embedded: String = manifest
        .split("vigil.toml: |\n")
        .nth(1)
        .and_then(|rest| rest.split("\n---").next())
        .map(|block| {
            block
                .lines()
                .map(|l| l.strip_prefix("    ").unwrap_or(l))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default();
    assert!(
        embedded.contains("[[route]]"),
        "no config found in the Kubernetes example"
    );
    for (name, text) in [("deployment", deployment), ("kubernetes", embedded)] {
        let dir = example_pki()?;
        let (ok, out) = check(dir.path(), &text)?;
        assert!(ok, "examples/{name}: {out}");
    }
    // config/example.toml refers to ../certs from its own directory.
    let example = std::fs::read_to_string(root.join("config/example.toml"))?;
    let dir = tempfile::tempdir()?;
    certs_init(&dir.path().join("certs"))?;
    std::fs::create_dir(dir.path().join("config"))?;
    let (ok, out) = check(&dir.path().join("config"), &example)?;
    assert!(ok, "config/example.toml: {out}");
    Ok(())
}

#[test]
fn keys_rotate_with_the_new_key_first() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("session.keys");
    for _ in 0..2 {
        assert!(
            vigil()
                .args(["keys", "session"])
                .arg(&file)
                .status()?
                .success()
        );
    }
    let text = std::fs::read_to_string(&file)?;
    let ring = vigil::identity::seal::KeyRing::parse(&text).map_err(anyhow::Error::msg)?;
    let sealed = ring
        .seal(vigil::identity::seal::Purpose::Session, b"x")
        .map_err(anyhow::Error::msg)?;
    // The first line seals; the second (older) alone cannot open it.
    let older = text.lines().nth(1).unwrap_or_default();
    let old_ring = vigil::identity::seal::KeyRing::parse(older).map_err(anyhow::Error::msg)?;
    assert!(
        old_ring
            .open(vigil::identity::seal::Purpose::Session, &sealed)
            .is_err()
    );
    assert_eq!(std::fs::metadata(&file)?.permissions().mode() & 0o077, 0);

    let pem = dir.path().join("assertion.pem");
    for _ in 0..2 {
        assert!(
            vigil()
                .args(["keys", "assertion"])
                .arg(&pem)
                .status()?
                .success()
        );
    }
    let signer =
        vigil::forward::assertion::Signer::from_file(&pem, "v".into(), Duration::from_secs(60))
            .map_err(anyhow::Error::msg)?;
    assert_eq!(signer.jwks()["keys"].as_array().map(Vec::len), Some(2));
    Ok(())
}

#[test]
fn policy_explain_prints_the_decision_and_its_reasons() -> Result<()> {
    let dir = tempfile::tempdir()?;
    certs_init(dir.path())?;
    let path = dir.path().join("vigil.toml");
    std::fs::write(
        &path,
        GOOD.replace("spiffe://example.org/ns/*/sa/*", "spiffe://vigil.test/**"),
    )?;
    let explain = |cert: &str, url: &str, method: &str| -> Result<(i32, serde_json::Value)> {
        let out = vigil()
            .args(["policy", "explain", "--config"])
            .arg(&path)
            .args(["--cert"])
            .arg(dir.path().join(cert))
            .args(["--url", url, "--method", method])
            .output()?;
        let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        Ok((out.status.code().unwrap_or(-1), json))
    };
    let (code, allowed) = explain("workload.pem", "https://api.example.com/v1/orders", "GET")?;
    assert_eq!(code, 0, "{allowed}");
    assert_eq!(allowed["decision"], "allow");
    assert_eq!(allowed["route"], "api");
    let (code, denied) = explain(
        "workload.pem",
        "https://api.example.com/v1/orders",
        "DELETE",
    )?;
    assert_eq!(code, 2);
    assert!(
        denied["reasons"]
            .to_string()
            .contains("method DELETE not allowed"),
        "{denied}"
    );
    let (_, device) = explain("device.pem", "https://api.example.com/v1/x", "GET")?;
    assert!(
        device["reasons"].to_string().contains("no SPIFFE ID"),
        "{device}"
    );
    let (_, none) = explain("workload.pem", "https://other.example.com/", "GET")?;
    assert_eq!(none["status"], 404);
    let (_, tricky) = explain(
        "workload.pem",
        "https://api.example.com/v1/%2e%2e/admin",
        "GET",
    )?;
    assert_eq!(tricky["status"], 404, "{tricky}");
    Ok(())
}

/// A rule's time window, asked about at two moments with `--at`: the same request is allowed
/// during office hours in Paris and denied after them, across the change to summer time.
#[test]
fn policy_explain_at_another_moment() -> Result<()> {
    let dir = tempfile::tempdir()?;
    certs_init(dir.path())?;
    let path = dir.path().join("vigil.toml");
    let office = r#"spiffe = ["spiffe://vigil.test/**"], hours = "08:00-19:00", days = ["mon", "tue", "wed", "thu", "fri"], timezone = "Europe/Paris""#;
    std::fs::write(
        &path,
        GOOD.replace(r#"spiffe = ["spiffe://example.org/ns/*/sa/*"]"#, office),
    )?;
    let explain = |at: &str| -> Result<(i32, serde_json::Value)> {
        let out = vigil()
            .args(["policy", "explain", "--config"])
            .arg(&path)
            .arg("--cert")
            .arg(dir.path().join("workload.pem"))
            .args(["--url", "https://api.example.com/v1/orders", "--at", at])
            .output()?;
        let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        Ok((out.status.code().unwrap_or(-1), json))
    };
    for (at, code, decided, reason) in [
        // Friday 27 March 2026, 18:30 in Paris (UTC+1).
        (
            "2026-03-27T17:30:00Z",
            0,
            "2026-03-27T17:30:00Z",
            "allowed by rule 1",
        ),
        // Monday 30 March, 18:30 UTC is 20:30 in Paris (UTC+2 since Sunday).
        (
            "2026-03-30T18:30:00+00:00",
            2,
            "2026-03-30T18:30:00Z",
            "rule 1: outside the allowed hours 08:00-19:00 (Europe/Paris): it is 20:30 there",
        ),
        // Saturday, as Unix seconds.
        (
            "1774692000",
            2,
            "2026-03-28T10:00:00Z",
            "rule 1: not on an allowed day (mon, tue, wed, thu, fri): it is sat there",
        ),
    ] {
        let (exit, report) = explain(at)?;
        assert_eq!(exit, code, "{at}: {report}");
        assert_eq!(report["time"], decided, "{report}");
        assert_eq!(report["reasons"][0], reason, "{report}");
    }
    let (exit, _) = explain("tomorrow")?;
    assert_eq!(exit, 2, "an unreadable --at is a usage error");

    // Windows that cannot be read are configuration errors at the key at fault.
    for (window, key, message) in [
        (r#"hours = "8-19""#, "hours", "is not a span of hours"),
        (
            r#"days = ["mon", "funday"]"#,
            "days",
            "\"funday\" is not a day",
        ),
        (
            r#"hours = "08:00-19:00", timezone = "Mars/Olympus""#,
            "timezone",
            "unknown time zone",
        ),
        (r#"timezone = "UTC""#, "timezone", "has neither"),
    ] {
        let text = GOOD.replace(r#"methods = ["GET"]"#, window);
        let (ok, out) = check(dir.path(), &text)?;
        assert!(!ok, "{window}: {out}");
        assert!(out.contains(message), "{window}: {out}");
        let line = text.lines().position(|l| l.contains(window)).unwrap_or(0) + 1;
        let col = text
            .lines()
            .nth(line - 1)
            .and_then(|l| l.find(&format!("{key} =")))
            .unwrap_or(0);
        assert!(
            out.contains(&format!(":{line}:")) && col > 0,
            "{window}: {out}"
        );
    }
    Ok(())
}

/// `vigil run` on `config` (in `dir`), until `until` returns true for the standard error
/// lines written so far (or 20 seconds pass); then SIGTERM. Returns every line it wrote on
/// standard error.
fn run_until(
    dir: &Path,
    config: &str,
    env: &[(&str, &str)],
    mut until: impl FnMut(&[String]) -> bool,
) -> Result<Vec<String>> {
    use std::io::BufRead;
    let path = dir.join("vigil.toml");
    std::fs::write(&path, config)?;
    let mut child = vigil()
        .args(["run", "--config"])
        .arg(&path)
        .envs(env.iter().copied())
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().expect("piped");
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let reader = {
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if let Ok(mut l) = lines.lock() {
                    l.push(line);
                }
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let seen = lines.lock().map(|l| l.clone()).unwrap_or_default();
        if until(&seen) {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    let exit = child.wait()?;
    let _ = reader.join();
    anyhow::ensure!(exit.success(), "{exit:?}");
    let lines = lines.lock().map(|l| l.clone()).unwrap_or_default();
    Ok(lines)
}

/// A configuration for `run_until`: one route to `upstream` for the test PKI's workloads,
/// the admin listener on, decisions to `decisions.log`, and `log` added to `[log]`.
fn logging_config(pki: &support::Pki, upstream: std::net::SocketAddr, log: &str) -> String {
    format!(
        "{}{log}\n[[route]]\nname = \"dead\"\nhost = \"*\"\nupstream = \"http://{upstream}\"\nlogin = \"none\"\nallow = [{{ spiffe = [\"spiffe://example.org/**\"] }}]\n",
        support::base_config("", &pki.path("decisions.log"))
    )
}

/// With `[log] format = "json"` every diagnostic is one flat JSON object: the event's fields
/// beside `message`, not under `fields`; the request's span fields (`request_id`, `conn`) at
/// the top level too; strings and addresses as plain strings, an absent option left out
/// rather than written as `Some(..)`.
#[tokio::test]
async fn json_diagnostics_are_flat_and_carry_the_request_id() -> Result<()> {
    let pki = support::Pki::new()?;
    let dead = support::dead_address().await?;
    let config = logging_config(&pki, dead, "format = \"json\"");
    let web = support::client_config(
        Some(&pki.workload(support::SPIFFE_WEB)?),
        pki.ca.cert_pem(),
        &[],
    )?;
    let dir = pki.dir.path().to_path_buf();
    let (asked, answered) = std::sync::mpsc::channel();
    let runtime = tokio::runtime::Handle::current();
    let lines = tokio::task::spawn_blocking(move || {
        let mut sent = false;
        run_until(&dir, &config, &[], |lines| {
            let listening = lines.iter().find_map(|l| {
                let line: serde_json::Value = serde_json::from_str(l).ok()?;
                (line["message"] == "vigil listening")
                    .then(|| line["addr"].as_str()?.parse().ok())?
            });
            if let (Some(addr), false) = (listening, sent) {
                sent = true;
                let reply = runtime.block_on(support::get(addr, web.clone(), "/x", ""));
                let _ = asked.send(reply.map(|r| (r.status, r.header("x-request-id"))));
            }
            lines.iter().any(|l| l.contains("forwarding failed"))
        })
    })
    .await??;
    let (status, request_id) = answered.try_recv()??;
    assert_eq!(status, 502);
    let request_id = request_id.expect("an X-Request-Id");
    let text = lines.join("\n");
    let parsed: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).map_err(|e| anyhow::anyhow!("{e}: {l}")))
        .collect::<Result<_>>()?;
    for line in &parsed {
        for key in ["timestamp", "level", "target", "message"] {
            assert!(line[key].is_string(), "no {key} in {line}");
        }
        for nested in ["fields", "span", "spans"] {
            assert!(line.get(nested).is_none(), "{nested} in {line}");
        }
    }
    let find = |message: &str| {
        parsed
            .iter()
            .find(|l| l["message"] == message)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("no {message:?} in\n{text}"))
    };
    let listening = find("vigil listening")?;
    let admin = listening["admin"].as_str().unwrap_or_default();
    assert!(
        admin.parse::<std::net::SocketAddr>().is_ok(),
        "admin is {admin:?}: {listening}"
    );
    let failed = find("forwarding failed")?;
    assert_eq!(failed["request_id"], request_id.as_str(), "{failed}");
    assert_eq!(failed["route"], "dead");
    assert!(failed["conn"].is_u64(), "{failed}");
    assert_eq!(failed["level"], "WARN");
    assert_eq!(failed["target"], "vigil::pipeline::forward");
    // Its decision line: the latency in milliseconds to the microsecond, no float noise.
    let decisions = support::decisions(&pki.path("decisions.log"));
    let line = decisions
        .iter()
        .find(|d| d["request_id"] == request_id.as_str())
        .ok_or_else(|| anyhow::anyhow!("no decision line for {request_id}"))?;
    let latency = line["latency_ms"].to_string();
    let decimals = latency.split_once('.').map_or(0, |(_, d)| d.len());
    assert!(decimals <= 3, "latency_ms {latency} in {line}");
    Ok(())
}

/// Text diagnostics carry no colour codes when standard error is not a terminal.
#[tokio::test]
async fn text_diagnostics_are_plain_when_not_on_a_terminal() -> Result<()> {
    let pki = support::Pki::new()?;
    let dead = support::dead_address().await?;
    let config = logging_config(&pki, dead, "");
    let dir = pki.dir.path().to_path_buf();
    let lines = tokio::task::spawn_blocking(move || {
        run_until(&dir, &config, &[], |lines| {
            lines.iter().any(|l| l.contains("vigil listening"))
        })
    })
    .await??;
    let text = lines.join("\n");
    assert!(text.contains("vigil listening"), "{text}");
    assert!(!text.contains('\u{1b}'), "colour codes in\n{text:?}");
    assert!(!text.contains("Some("), "{text}");
    Ok(())
}

/// Writes `server.pem` and `server.key` in `dir` (a `vigil certs init` directory), issued by
/// its CA from `spec`.
fn server_cert(dir: &Path, spec: &vigil::certs::LeafSpec) -> Result<()> {
    let ca = vigil::certs::Authority::from_pem(
        &std::fs::read_to_string(dir.join("ca.pem"))?,
        &std::fs::read_to_string(dir.join("ca.key"))?,
    )?;
    let issued = ca.issue(spec)?;
    std::fs::write(dir.join("server.pem"), &issued.cert_pem)?;
    std::fs::write(dir.join("server.key"), &issued.key_pem)?;
    Ok(())
}

fn api_server() -> vigil::certs::LeafSpec {
    vigil::certs::LeafSpec::server(vec!["api.example.com".into()], vec![])
}

#[test]
fn check_and_run_refuse_a_server_certificate_clients_would_refuse() -> Result<()> {
    use time::{Duration, OffsetDateTime};
    let dir = tempfile::tempdir()?;
    certs_init(dir.path())?;
    let now = OffsetDateTime::now_utc();
    let cases = [
        (
            api_server().validity(now - Duration::days(30), now - Duration::days(2)),
            "expired at",
        ),
        (
            api_server().validity(now + Duration::days(2), now + Duration::days(30)),
            "is not valid before",
        ),
    ];
    let path = dir.path().join("vigil.toml");
    for (spec, needle) in cases {
        server_cert(dir.path(), &spec)?;
        let (ok, out) = check(dir.path(), GOOD)?;
        assert!(!ok, "{needle}: {out}");
        assert!(out.contains(needle), "{needle}: {out}");
        assert!(out.contains("clients refuse it"), "{out}");
        // At the `cert =` key.
        assert!(out.contains(&format!("{}:6:8", path.display())), "{out}");
        assert!(out.contains("1 problem in"), "{out}");
        let run = vigil().args(["run", "--config"]).arg(&path).output()?;
        assert!(!run.status.success());
        let err = String::from_utf8_lossy(&run.stderr);
        assert!(err.contains(needle), "{err}");
        assert!(err.contains("refusing to start"), "{err}");
    }
    Ok(())
}

#[test]
fn check_warns_about_a_server_certificate_expiring_soon() -> Result<()> {
    let dir = tempfile::tempdir()?;
    certs_init(dir.path())?;
    server_cert(
        dir.path(),
        &api_server().valid_for(std::time::Duration::from_secs(3 * 86400)),
    )?;
    let (ok, out) = check(dir.path(), GOOD)?;
    assert!(ok, "{out}");
    let path = dir.path().join("vigil.toml");
    assert!(
        out.contains("warning: the server certificate \"api.example.com\" (server.pem) expires at"),
        "{out}"
    );
    assert!(
        out.contains("(in 2d 23h)") || out.contains("(in 3d 0h)"),
        "{out}"
    );
    assert!(out.contains(&format!("{}:6:8", path.display())), "{out}");
    assert!(out.contains("1 warning in"), "{out}");
    assert!(out.contains("ok (1 route)"), "{out}");
    // Outside the window, and with warnings off, nothing is said.
    for key in ["expiry_warning = \"2d\"", "expiry_warning = \"0s\""] {
        let text = GOOD.replace("crl = [\"ca.crl\"]", &format!("crl = [\"ca.crl\"]\n{key}"));
        let (ok, out) = check(dir.path(), &text)?;
        assert!(ok, "{out}");
        assert!(!out.contains("warning"), "{key}: {out}");
    }
    Ok(())
}

#[test]
fn check_warns_about_route_hosts_the_server_certificate_does_not_name() -> Result<()> {
    let dir = tempfile::tempdir()?;
    certs_init(dir.path())?;
    server_cert(
        dir.path(),
        &vigil::certs::LeafSpec::server(
            vec!["api.example.com".into(), "*.apps.example.com".into()],
            vec![],
        ),
    )?;
    let hosts = [
        ("api.example.com", true),
        ("API.example.com.", true),
        ("a.apps.example.com", true),
        ("*.apps.example.com", true),
        ("*", true),
        ("a.b.apps.example.com", false),
        ("apps.example.com", false),
        ("www.example.com", false),
        ("*.example.com", false),
    ];
    let mut text = GOOD
        .split("[[route]]")
        .next()
        .unwrap_or_default()
        .to_owned();
    for (i, (host, _)) in hosts.iter().enumerate() {
        text += &format!(
            "[[route]]\nname = \"r{i}\"\nhost = \"{host}\"\npath = \"/r{i}\"\nupstream = \"http://127.0.0.1:9\"\n\
             login = \"none\"\nallow = [{{ spiffe = [\"spiffe://example.org/**\"] }}]\n\n"
        );
    }
    let (ok, out) = check(dir.path(), &text)?;
    assert!(ok, "{out}");
    for (i, (host, covered)) in hosts.iter().enumerate() {
        let warned = out.contains(&format!("warning: route \"r{i}\": the server certificate"));
        assert_eq!(warned, !covered, "{host}: {out}");
    }
    assert!(
        out.contains("does not name \"a.b.apps.example.com\" (its names: api.example.com, *.apps.example.com)"),
        "{out}"
    );
    assert!(out.contains("4 warnings in"), "{out}");
    Ok(())
}

#[test]
fn check_refuses_a_crl_past_its_next_update_when_it_is_enforced() -> Result<()> {
    let dir = tempfile::tempdir()?;
    certs_init(dir.path())?;
    server_cert(dir.path(), &api_server())?;
    let ca = vigil::certs::Authority::from_pem(
        &std::fs::read_to_string(dir.path().join("ca.pem"))?,
        &std::fs::read_to_string(dir.path().join("ca.key"))?,
    )?;
    let past = time::OffsetDateTime::now_utc() - time::Duration::hours(3);
    std::fs::write(dir.path().join("ca.crl"), ca.crl_pem(&[], 9, past)?)?;
    let path = dir.path().join("vigil.toml");
    let (ok, out) = check(dir.path(), GOOD)?;
    assert!(!ok, "{out}");
    assert!(out.contains("is past its nextUpdate"), "{out}");
    assert!(out.contains("every client of that CA is refused"), "{out}");
    // At the `crl =` key.
    assert!(out.contains(&format!("{}:9:8", path.display())), "{out}");
    // Not enforced, it is a warning.
    let text = GOOD.replace(
        "crl = [\"ca.crl\"]",
        "crl = [\"ca.crl\"]\nenforce_crl_expiry = false",
    );
    let (ok, out) = check(dir.path(), &text)?;
    assert!(ok, "{out}");
    assert!(out.contains("warning: the CRL of"), "{out}");
    assert!(out.contains("its clients are still accepted"), "{out}");
    Ok(())
}
