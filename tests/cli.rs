//! The `vigil` binary: `check` on broken configurations, `certs`, `run` with SIGTERM, and the
//! diagnostics `run` writes on standard error.

mod kubernetes;
mod support;

use anyhow::{Context as _, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
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

/// `vigil check` refuses each text, saying what is expected of it, at a line.
fn refused_at_a_line(dir: &Path, cases: &[(String, &str)]) -> Result<()> {
    for (text, expected) in cases {
        let (ok, out) = check(dir, text)?;
        assert!(!ok, "accepted:\n{text}");
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
        assert!(out.contains("vigil.toml:"), "no location in:\n{out}");
    }
    Ok(())
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
fn check_refuses_broken_upstream_lists_and_limits() -> Result<()> {
    let dir = tempfile::tempdir()?;
    certs_init(dir.path())?;
    let with = |upstream: &str, extra: &str| {
        GOOD.replace(
            "upstream = \"http://127.0.0.1:9\"",
            &format!("upstream = {upstream}\n{extra}"),
        )
    };
    let good = with(
        r#"["http://127.0.0.1:9", { url = "http://127.0.0.1:10", weight = 3 }]"#,
        r#"balance = "round_robin"
health = { path = "/healthz", interval = "1s" }
max_connections = 10
max_pending = 5
max_requests_per_connection = 100"#,
    );
    let (ok, out) = check(dir.path(), &good)?;
    assert!(ok, "{out}");
    let cases = [
        (
            with(r#"["http://127.0.0.1:9", "https://127.0.0.1:10"]"#, ""),
            "the upstream URLs mix http:// and https://",
        ),
        (
            with(r#"["http://127.0.0.1:9/a", "http://127.0.0.1:10/b"]"#, ""),
            "the upstream URLs have different paths",
        ),
        (with("[]", ""), "upstream lists no URL"),
        (
            with(r#"[{ url = "http://127.0.0.1:9", weight = 0 }]"#, ""),
            "has weight 0: it must be 1 to 100",
        ),
        (
            with(r#""http://127.0.0.1:9""#, r#"balance = "random""#),
            "unknown balance \"random\"",
        ),
        (
            with(r#""http://127.0.0.1:9""#, "max_pending = 0"),
            "max_pending must be at least 1",
        ),
        (
            with(
                r#""http://127.0.0.1:9""#,
                r#"health = { path = "healthz" }"#,
            ),
            "must be a path starting with /",
        ),
        (
            with(
                r#""http://127.0.0.1:9""#,
                r#"outlier = { base_ejection = "1m", max_ejection = "10s" }"#,
            ),
            "max_ejection at least as long",
        ),
    ];
    refused_at_a_line(dir.path(), &cases)
}

/// `[state]`: a Redis URL it can use, verified TLS, a stale limit above the stream's one-second
/// read, a prefix that keeps the fleet on one hash tag, and a password that is there.
#[test]
fn check_refuses_a_shared_state_it_cannot_use_safely() -> Result<()> {
    let dir = tempfile::tempdir()?;
    certs_init(dir.path())?;
    std::fs::write(dir.path().join("redis.password"), "s3cret\n")?;
    std::fs::write(dir.path().join("empty.password"), "\n")?;
    std::fs::write(dir.path().join("not-a-ca.pem"), "hello\n")?;
    let with = |state: &str| format!("{GOOD}\n[state]\n{state}\n");
    let good = with(
        r#"backend = "redis"
url = "rediss://127.0.0.1:6380/0"
username = "vigil"
password_file = "redis.password"
ca = "ca.pem"
max_stale = "2s""#,
    );
    let (ok, out) = check(dir.path(), &good)?;
    assert!(ok, "{out}");
    assert!(
        !out.contains("state."),
        "a warning about a sound [state]:\n{out}"
    );
    // The key ids to compare across replicas (no [session] or [assertion] here).
    let ids = "every replica sharing this state must hold the same keys: session= assertion=";
    assert!(out.contains(ids), "{out}");
    let (ok, out) = check(
        dir.path(),
        &with("backend = \"redis\"\nurl = \"redis://127.0.0.1:6379\""),
    )?;
    assert!(ok, "{out}");
    assert!(out.contains("Redis is reached without TLS"), "{out}");
    assert!(out.contains("Redis is used without a password"), "{out}");
    let (ok, out) = check(
        dir.path(),
        &with("backend = \"memory\"\nurl = \"rediss://127.0.0.1:6380\""),
    )?;
    assert!(ok, "{out}");
    assert!(out.contains("has no effect with state.backend"), "{out}");
    let redis = |extra: &str| {
        with(&format!(
            "backend = \"redis\"\npassword_file = \"redis.password\"\n{extra}"
        ))
    };
    let cases = [
        (with("backend = \"etcd\""), "\"etcd\" is not a backend"),
        (redis(""), "the redis backend needs state.url"),
        (
            redis("url = \"http://127.0.0.1:6379\""),
            "is not a Redis URL",
        ),
        (
            redis("url = \"rediss://127.0.0.1:6380/0#insecure\""),
            "must not carry a #fragment",
        ),
        (
            redis("url = \"rediss://127.0.0.1:6380\"\nmax_stale = \"1s\""),
            "must be at least 2s",
        ),
        (
            redis("url = \"rediss://127.0.0.1:6380\"\nmax_stale = \"1500ms\""),
            "must be at least 2s",
        ),
        (
            redis("url = \"rediss://127.0.0.1:6380\"\ntimeout = \"0s\""),
            "must be longer than zero",
        ),
        (
            redis("url = \"rediss://127.0.0.1:6380\"\nprefix = \"{vigil}\""),
            "must be a non-empty word without braces or spaces",
        ),
        (
            with(
                "backend = \"redis\"\nurl = \"rediss://127.0.0.1:6380\"\npassword_file = \"empty.password\"",
            ),
            "the file's first line is empty",
        ),
        (
            redis("url = \"rediss://127.0.0.1:6380\"\nca = \"not-a-ca.pem\""),
            "holds no PEM certificate",
        ),
    ];
    refused_at_a_line(dir.path(), &cases)
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
fn check_reports_every_problem_of_authz_at_its_line() -> Result<()> {
    let dir = tempfile::tempdir()?;
    certs_init(dir.path())?;
    let good = format!(
        "{GOOD}\n[authz]\nenforcement_points = [\n  {{ name = \"nginx\", spiffe = \"spiffe://example.org/ns/ingress/sa/nginx\" }},\n  {{ name = \"edge\", fingerprint = \"{}\" }},\n]\n",
        vec!["AB"; 32].join(":")
    );
    let (ok, out) = check(dir.path(), &good)?;
    assert!(ok, "{out}");

    let broken = format!(
        "{GOOD}\n[authz]\npath = \"/.vigil/login\"\nenforcement_points = [\n  {{ name = \"nginx\", spiffe = \"nginx\" }},\n  {{ name = \"nginx\", fingerprint = \"00:11\" }},\n  {{ name = \"both\", spiffe = \"spiffe://a/b\", fingerprint = \"{}\" }},\n  {{ name = \"no one\" }},\n  {{ name = \"x\", spife = \"spiffe://a/b\" }},\n]\n",
        "ab".repeat(32)
    );
    let (ok, out) = check(dir.path(), &broken)?;
    assert!(!ok, "{out}");
    let path = dir.path().join("vigil.toml").display().to_string();
    let line = |needle: &str| {
        broken
            .lines()
            .position(|l| l.contains(needle))
            .map(|i| format!("{path}:{}:", i + 1))
            .unwrap_or_default()
    };
    for (says, at) in [
        (
            "\"/.vigil/login\" cannot be the decision endpoint's path",
            line("/.vigil/login"),
        ),
        ("\"nginx\" is not a SPIFFE ID", line("spiffe = \"nginx\"")),
        (
            "enforcement point name \"nginx\" is used twice",
            line("00:11"),
        ),
        ("\"00:11\" is not a SHA-256 fingerprint", line("00:11")),
        (
            "needs exactly one of `spiffe` and `fingerprint`",
            line("\"both\""),
        ),
        (
            "enforcement point name \"no one\" is not usable",
            line("no one"),
        ),
        (
            "unknown key `authz.enforcement_points.4.spife`",
            line("spife"),
        ),
    ] {
        assert!(out.contains(says), "missing {says:?} in:\n{out}");
        assert!(out.contains(&at), "missing location {at} in:\n{out}");
    }
    let empty = format!("{GOOD}\n[authz]\n");
    let (ok, out) = check(dir.path(), &empty)?;
    assert!(!ok, "{out}");
    assert!(out.contains("[authz] lists no enforcement point"), "{out}");
    for bad in ["/authz", "/.vigil/authz/", "/.vigil/", "/.vigil/a/../b"] {
        let text = format!(
            "{GOOD}\n[authz]\npath = \"{bad}\"\nenforcement_points = [{{ name = \"n\", spiffe = \"spiffe://a/b\" }}]\n"
        );
        let (ok, out) = check(dir.path(), &text)?;
        assert!(
            !ok && out.contains("cannot be the decision endpoint's path"),
            "{bad}: {out}"
        );
    }
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

/// `vigil certs ARGS... --dir DIR`: (success, stdout, stderr).
fn certs(dir: &Path, args: &[&str]) -> Result<(bool, String, String)> {
    let out = vigil()
        .arg("certs")
        .args(args)
        .arg("--dir")
        .arg(dir)
        .output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// The certificate in `path`, read by the code that reads a connecting client's.
fn peer_cert(path: &Path) -> Result<vigil::tls::PeerCert> {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_file(path)?;
    vigil::tls::PeerCert::from_der(der.as_ref()).map_err(anyhow::Error::msg)
}

fn rfc3339(unix: i64) -> String {
    let at = std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(unix).unwrap_or(0));
    humantime::format_rfc3339_seconds(at).to_string()
}

#[test]
fn certs_issue_refuses_a_leaf_outliving_its_ca() -> Result<()> {
    let dir = tempfile::tempdir()?;
    certs_init(dir.path())?;
    let ca_end = rfc3339(peer_cert(&dir.path().join("ca.pem"))?.not_after);
    let device = ["issue", "--kind", "device", "--name", "bob", "--ttl"];
    for ttl in ["20y", "3654d"] {
        let (ok, _, err) = certs(dir.path(), &[&device[..], &[ttl]].concat())?;
        assert!(!ok, "--ttl {ttl} accepted");
        assert!(err.contains("must not outlive its CA"), "{err}");
        assert!(err.contains(&format!("expires at {ca_end}")), "{err}");
        assert!(!dir.path().join("bob.pem").exists());
        // The longest lifetime it names is one that is accepted.
        let longest = err
            .split("the longest --ttl still possible is ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_default();
        assert!(longest.ends_with('d'), "{err}");
        let (ok, _, err) = certs(dir.path(), &[&device[..], &[longest]].concat())?;
        assert!(ok, "--ttl {longest}: {err}");
        let (bob, ca) = (dir.path().join("bob.pem"), dir.path().join("ca.pem"));
        assert!(peer_cert(&bob)?.not_after <= peer_cert(&ca)?.not_after);
        std::fs::remove_file(bob)?;
        std::fs::remove_file(dir.path().join("bob.key"))?;
    }
    Ok(())
}

#[test]
fn certs_issue_refuses_a_ttl_too_short_to_use() -> Result<()> {
    let dir = tempfile::tempdir()?;
    certs_init(dir.path())?;
    for ttl in ["0s", "30s", "59s"] {
        let (ok, _, err) = certs(
            dir.path(),
            &["issue", "--kind", "device", "--name", "bob", "--ttl", ttl],
        )?;
        assert!(!ok, "--ttl {ttl} accepted");
        assert!(err.contains(&format!("--ttl {ttl} is too short")), "{err}");
        assert!(err.contains("at least 1m"), "{err}");
        assert!(!dir.path().join("bob.pem").exists() && !dir.path().join("bob.key").exists());
    }
    let (ok, _, err) = certs(
        dir.path(),
        &["issue", "--kind", "device", "--name", "bob", "--ttl", "1m"],
    )?;
    assert!(ok, "{err}");
    Ok(())
}

#[test]
fn certs_print_each_certificates_fingerprint_and_not_after() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let line_for = |out: &str, file: &str| -> Result<String> {
        let path = dir.path().join(file).display().to_string();
        let lines: Vec<&str> = out
            .lines()
            .filter(|l| l.split_whitespace().nth(1) == Some(path.as_str()))
            .collect();
        anyhow::ensure!(lines.len() == 1, "{file}: not one line in:\n{out}");
        Ok(lines[0].to_owned())
    };
    let expect = |line: &str, file: &str| -> Result<()> {
        let peer = peer_cert(&dir.path().join(file))?;
        assert_eq!(peer.fingerprint_hex.len(), 64);
        assert!(
            line.contains(&format!(" sha256={} ", peer.fingerprint_hex)),
            "{line}"
        );
        assert!(
            line.contains(&format!(" not_after={} ", rfc3339(peer.not_after))),
            "{line}"
        );
        Ok(())
    };
    let certificates = ["ca.pem", "server.pem", "device.pem", "workload.pem"];
    let (ok, out, err) = certs(dir.path(), &["init"])?;
    assert!(ok, "{err}");
    for file in certificates {
        let line = line_for(&out, file)?;
        assert!(line.starts_with("created "), "{line}");
        expect(&line, file)?;
    }
    // Keys and the CRL have no fingerprint.
    for file in ["ca.key", "device.key", "ca.crl"] {
        assert!(!line_for(&out, file)?.contains("sha256="), "{out}");
    }
    // A rerun keeps them, and says the same.
    let (ok, again, err) = certs(dir.path(), &["init"])?;
    assert!(ok, "{err}");
    for file in certificates {
        let line = line_for(&again, file)?;
        assert!(line.starts_with("kept "), "{line}");
        expect(&line, file)?;
    }
    let (ok, out, err) = certs(
        dir.path(),
        &[
            "issue",
            "--kind",
            "device",
            "--name",
            "bob-laptop",
            "--ttl",
            "90d",
        ],
    )?;
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 2, "{out}");
    let line = line_for(&out, "bob-laptop.pem")?;
    expect(&line, "bob-laptop.pem")?;
    assert!(line_for(&out, "bob-laptop.key").is_ok(), "{out}");

    // Pasted as it is printed, the fingerprint is what a `cert_fingerprint` rule takes.
    let fingerprint = line
        .split_whitespace()
        .find_map(|word| word.strip_prefix("sha256="))
        .unwrap_or_default();
    let path = dir.path().join("vigil.toml");
    std::fs::write(
        &path,
        GOOD.replace(
            r#"allow = [{ spiffe = ["spiffe://example.org/ns/*/sa/*"], methods = ["GET"] }]"#,
            &format!(r#"allow = [{{ cert_fingerprint = ["{fingerprint}"] }}]"#),
        ),
    )?;
    let decide = |cert: &str| -> Result<bool> {
        let out = vigil()
            .args(["policy", "explain", "--format", "json", "--config"])
            .arg(&path)
            .arg("--cert")
            .arg(dir.path().join(cert))
            .args(["--url", "https://api.example.com/v1/x"])
            .output()?;
        anyhow::ensure!(
            out.status.code() != Some(1),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(out.status.success())
    };
    assert!(decide("bob-laptop.pem")?);
    assert!(!decide("device.pem")?);
    Ok(())
}

#[test]
fn certs_init_force_warns_that_the_ca_is_replaced() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // Nothing to replace: no warning.
    let (ok, _, err) = certs(dir.path(), &["init", "--force"])?;
    assert!(ok, "{err}");
    assert!(!err.contains("WARNING"), "{err}");
    let old = peer_cert(&dir.path().join("ca.pem"))?;
    let (ok, _, err) = certs(dir.path(), &["issue", "--kind", "device", "--name", "bob"])?;
    assert!(ok, "{err}");

    let (ok, _, err) = certs(dir.path(), &["init", "--force"])?;
    assert!(ok, "{err}");
    let new = peer_cert(&dir.path().join("ca.pem"))?;
    assert_ne!(old.fingerprint_hex, new.fingerprint_hex);
    for needle in [
        format!("replaced the CA in {}", dir.path().display()),
        format!("sha256={}", old.fingerprint_hex),
        "no longer trusted by configurations that trust the new ca.pem".to_owned(),
        format!(
            "{} is still signed by the old CA",
            dir.path().join("bob.pem").display()
        ),
        "put the new ca.pem wherever the old one is trusted".to_owned(),
    ] {
        assert!(err.contains(&needle), "missing {needle:?} in:\n{err}");
    }
    for line in err.lines() {
        assert!(line.starts_with("WARNING: "), "{line}");
    }
    Ok(())
}

#[test]
fn certs_revoke_refuses_a_next_update_that_goes_stale_at_once() -> Result<()> {
    let dir = tempfile::tempdir()?;
    certs_init(dir.path())?;
    let crl = std::fs::read(dir.path().join("ca.crl"))?;
    for next in ["0s", "1s", "59m"] {
        let (ok, _, err) = certs(
            dir.path(),
            &["revoke", "--serial", "01", "--next-update", next],
        )?;
        assert!(!ok, "--next-update {next} accepted");
        assert!(
            err.contains(&format!("--next-update {next} is too soon")),
            "{err}"
        );
        assert!(
            err.contains("enforce_crl_expiry") && err.contains("at least 1h"),
            "{err}"
        );
        assert_eq!(
            std::fs::read(dir.path().join("ca.crl"))?,
            crl,
            "CRL rewritten"
        );
    }
    let (ok, _, err) = certs(
        dir.path(),
        &["revoke", "--serial", "01", "--next-update", "1h"],
    )?;
    assert!(ok, "{err}");
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

/// A directory with the files the shipped examples refer to under `tls/`, `admin/` and
/// `redis/`.
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
    // The Kubernetes example's shared state: the password of Redis's ACL user, and the CA of
    // Redis's certificate, a CA of its own as the example's comments make it (a Secret mounted
    // at redis/).
    let redis = dir.path().join("redis");
    certs_init(&dir.path().join("redis-pki"))?;
    std::fs::create_dir(&redis)?;
    std::fs::copy(dir.path().join("redis-pki/ca.pem"), redis.join("ca.pem"))?;
    std::fs::write(
        redis.join("password"),
        "8f1c0e5a9b7d3f2e6a4c1b0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f\n",
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
    let manifest = kubernetes::Manifest::parse(&kubernetes_example()?)?;
    let embedded = embedded_config(&manifest)?;
    assert!(
        embedded.contains("[[route]]"),
        "no config found in the Kubernetes example"
    );
    for (name, text) in [("deployment", &deployment), ("kubernetes", &embedded)] {
        let dir = example_pki()?;
        let (ok, out) = check(dir.path(), text)?;
        assert!(ok, "examples/{name}: {out}");
    }
    // The Kubernetes example reaches Redis over TLS with a password: `check` warns about
    // neither (it warns only that the development server certificate does not name the
    // example's hosts), and would warn about both.
    let warnings = |text: &str| -> Result<Vec<String>> {
        let dir = example_pki()?;
        let (ok, out) = check(dir.path(), text)?;
        assert!(ok, "{out}");
        Ok(out
            .lines()
            .filter(|l| l.starts_with("warning:"))
            .map(str::to_owned)
            .collect())
    };
    let shipped = warnings(&embedded)?;
    assert!(
        shipped
            .iter()
            .all(|w| w.contains("the server certificate (tls/server.pem) does not name")),
        "{shipped:#?}"
    );
    let bare = embedded
        .replace("url = \"rediss://", "url = \"redis://")
        .replace("password_file = \"redis/password\"\n", "");
    assert_ne!(bare, embedded);
    let bare = warnings(&bare)?;
    for expected in [
        "Redis is used without a password",
        "Redis is reached without TLS",
    ] {
        assert!(bare.iter().any(|w| w.contains(expected)), "{bare:#?}");
    }
    // The policy example, with its policy and data beside it.
    let policies = root.join("examples/policies");
    let dir = example_pki()?;
    std::fs::create_dir(dir.path().join("data"))?;
    for file in ["zero_trust.rego", "data/device_db.json"] {
        std::fs::copy(policies.join(file), dir.path().join(file))?;
    }
    let text = std::fs::read_to_string(policies.join("vigil.toml"))?;
    let (ok, out) = check(dir.path(), &text)?;
    assert!(ok, "examples/policies: {out}");
    // config/example.toml refers to ../certs from its own directory.
    let example = std::fs::read_to_string(root.join("config/example.toml"))?;
    let dir = tempfile::tempdir()?;
    certs_init(&dir.path().join("certs"))?;
    std::fs::create_dir(dir.path().join("config"))?;
    let (ok, out) = check(&dir.path().join("config"), &example)?;
    assert!(ok, "config/example.toml: {out}");
    Ok(())
}

fn kubernetes_example() -> Result<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    Ok(std::fs::read_to_string(
        root.join("examples/kubernetes/vigil.yaml"),
    )?)
}

/// The configuration in the Kubernetes example's ConfigMap.
fn embedded_config(manifest: &kubernetes::Manifest) -> Result<String> {
    let config = manifest.object("ConfigMap", "vigil-config")?;
    let text = config
        .at(&["data", "vigil.toml"])
        .and_then(kubernetes::Node::str);
    Ok(text
        .context("no data.vigil.toml in ConfigMap vigil-config")?
        .to_owned())
}

/// The lines of the manifest's opening comments, a command continued with `\` joined into
/// one line.
fn documented_lines(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut continued = false;
    for line in text.lines().take_while(|l| l.starts_with('#')) {
        let line = line.trim_start_matches('#').trim();
        let (line, continues) = match line.strip_suffix('\\') {
            Some(start) => (start.trim_end(), true),
            None => (line, false),
        };
        match lines.last_mut() {
            Some(last) if continued => {
                last.push(' ');
                last.push_str(line);
            }
            _ => lines.push(line.to_owned()),
        }
        continued = continues;
    }
    lines
}

/// The keys of each Secret that the manifest's opening comments say to create, from the
/// `kubectl create secret generic NAME --from-file=[KEY=]FILE ...` commands there: as kubectl
/// names them, KEY, else the file's name.
fn documented_secrets(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut secrets = BTreeMap::new();
    for command in documented_lines(text) {
        if !command.contains("create secret generic") {
            continue;
        }
        let words: Vec<&str> = command.split_whitespace().collect();
        let Some(at) = words.iter().position(|w| *w == "generic") else {
            continue;
        };
        let keys = words
            .iter()
            .filter_map(|w| w.strip_prefix("--from-file="))
            .map(|f| match f.split_once('=') {
                Some((key, _)) => key.to_owned(),
                None => f.rsplit('/').next().unwrap_or(f).to_owned(),
            })
            .collect();
        secrets.insert(words.get(at + 1).unwrap_or(&"").to_string(), keys);
    }
    secrets
}

fn running_as_root() -> Result<bool> {
    let out = Command::new("id").arg("-u").output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// What each of the pod's volumes holds: a ConfigMap's data from the manifest, and a Secret
/// made as the comments say, each of its keys read by `secret` (the mount and the key).
fn volume_data(
    manifest: &kubernetes::Manifest,
    pod: &kubernetes::Pod,
    text: &str,
    secret: impl Fn(&kubernetes::Mount, &str) -> Result<Vec<u8>>,
) -> Result<BTreeMap<kubernetes::Source, BTreeMap<String, Vec<u8>>>> {
    use kubernetes::{Node, Source};
    let documented = documented_secrets(text);
    let mut data = BTreeMap::new();
    for mount in &pod.mounts {
        let contents: BTreeMap<String, Vec<u8>> = match &mount.source {
            Source::ConfigMap(name) => match manifest.object("ConfigMap", name)?.get("data") {
                Some(Node::Map(entries)) => entries
                    .iter()
                    .map(|(k, v)| (k.clone(), v.str().unwrap_or_default().as_bytes().to_vec()))
                    .collect(),
                _ => BTreeMap::new(),
            },
            Source::Secret(name) => {
                let keys = documented
                    .get(name)
                    .with_context(|| format!("no command in the comments creates Secret {name}"))?;
                keys.iter()
                    .map(|k| Ok((k.clone(), secret(mount, k)?)))
                    .collect::<Result<_>>()?
            }
            // A claim starts empty: the kubelet lays out no files in it.
            Source::Claim(_) => continue,
        };
        data.insert(mount.source.clone(), contents);
    }
    Ok(data)
}

/// Whether the Kubernetes example's pod can read every file its configuration names: by the
/// mode bits of the files as the kubelet lays them out (`model`), and, when the test runs as
/// root, for real (`real`): the files written with those owners and modes, and `vigil check`
/// run as the pod's user with the pod's groups.
struct PodReads {
    files: Vec<PathBuf>,
    model: Result<(), String>,
    real: Option<Result<(), String>>,
}

fn kubernetes_example_reads(text: &str) -> Result<PodReads> {
    let manifest = kubernetes::Manifest::parse(text)?;
    let pod = kubernetes::Pod::of(manifest.object("Deployment", "vigil")?)?;
    let config_path = PathBuf::from(pod.arg("--config").context("no --config in args")?);
    let base = config_path.parent().context("config path")?.to_path_buf();

    // The files the configuration names, as the configuration loader lists them (itself
    // included), read from a PKI laid out as the pod's mounts are.
    let pki = example_pki()?;
    let local = pki
        .path()
        .join(config_path.file_name().context("config file name")?);
    std::fs::write(&local, embedded_config(&manifest)?)?;
    let snapshot = vigil::config::load_file(&local, &vigil::config::Context::first()?)
        .map_err(|p| anyhow::anyhow!("{p}"))?;
    let mut files = Vec::new();
    for file in &snapshot.files {
        let relative = file.strip_prefix(pki.path()).with_context(|| {
            format!(
                "{} is outside the configuration's directory",
                file.display()
            )
        })?;
        files.push(base.join(relative));
    }

    // Each Secret holds the PKI's files of the directory it is mounted on.
    let data = volume_data(&manifest, &pod, text, |mount, key| {
        let dir = pki.path().join(mount.path.strip_prefix(&base)?);
        Ok(std::fs::read(dir.join(key))?)
    })?;
    let entries = kubernetes::kubelet_layout(&pod, &data)?;

    let problems: Vec<String> = files
        .iter()
        .filter_map(|f| kubernetes::check_readable(&entries, &pod, f).err())
        .map(|e| e.to_string())
        .collect();
    let model = if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    };
    let real = if running_as_root()? {
        Some(check_as_pod_user(&entries, &pod, &config_path)?)
    } else {
        None
    };
    Ok(PodReads { files, model, real })
}

/// `entries` written under `root` in a temporary directory that any user can reach (needs
/// root).
fn written_layout(entries: &[kubernetes::Entry]) -> Result<tempfile::TempDir> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir()?;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))?;
    kubernetes::write_layout(entries, &tmp.path().join("root"))?;
    Ok(tmp)
}

/// `program` run as the pod's user and groups (with `setpriv`, which drops every capability
/// with root's uid).
fn as_pod_user(pod: &kubernetes::Pod, program: &Path) -> Command {
    let groups = if pod.groups.is_empty() {
        "--clear-groups".to_owned()
    } else {
        let list: Vec<String> = pod.groups.iter().map(u32::to_string).collect();
        format!("--groups={}", list.join(","))
    };
    let mut command = Command::new("setpriv");
    command
        .arg(format!("--reuid={}", pod.uid))
        .arg(format!("--regid={}", pod.gid))
        .arg(groups)
        .arg("--")
        .arg(program);
    command
}

/// `vigil check` on the layout written under a temporary root, run as the pod's user and
/// groups.
fn check_as_pod_user(
    entries: &[kubernetes::Entry],
    pod: &kubernetes::Pod,
    config: &Path,
) -> Result<Result<(), String>> {
    let tmp = written_layout(entries)?;
    let root = tmp.path().join("root");
    // The pod's user must reach the binary too.
    let bin = tmp.path().join("vigil");
    if std::fs::hard_link(env!("CARGO_BIN_EXE_vigil"), &bin).is_err() {
        std::fs::copy(env!("CARGO_BIN_EXE_vigil"), &bin)?;
    }
    let out = as_pod_user(pod, &bin)
        .args(["check", "--config"])
        .arg(root.join(config.strip_prefix("/")?))
        .output()
        .context("setpriv (util-linux) is needed to run as the pod's user")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(if out.status.success() {
        Ok(())
    } else {
        Err(text)
    })
}

#[test]
fn kubernetes_example_reads_its_files_as_its_user() -> Result<()> {
    let text = kubernetes_example()?;
    let reads = kubernetes_example_reads(&text)?;
    let keys = [
        "/etc/vigil/tls/server.key",
        "/etc/vigil/admin/tokens",
        "/etc/vigil/redis/password",
        "/etc/vigil/redis/ca.pem",
        "/etc/vigil/vigil.toml",
    ];
    for key in keys {
        assert!(
            reads.files.contains(&PathBuf::from(key)),
            "{key} not in {:?}",
            reads.files
        );
    }
    if let Err(e) = &reads.model {
        panic!("the pod cannot read its files:\n{e}");
    }
    if let Some(Err(e)) = &reads.real {
        panic!("vigil check as the pod's user failed:\n{e}");
    }

    // The manifest as it was (Secret files 0400, root's, no fsGroup): Vigil, as 65532, could
    // not read its keys. The model says so, and so does the kernel.
    let old = text
        .replace("        fsGroup: 65532\n", "")
        .replace("defaultMode: 0440", "defaultMode: 0400");
    assert_ne!(old, text);
    let reads = kubernetes_example_reads(&old)?;
    let model = reads
        .model
        .expect_err("0400 without fsGroup passed the model");
    assert!(
        model.contains(
            "/etc/vigil/tls/server.key: uid 65532 (groups [65532]) cannot read it (0:0 400)"
        ),
        "{model}"
    );
    if let Some(real) = reads.real {
        let real = real.expect_err("0400 without fsGroup passed vigil check");
        assert!(real.contains("permission denied"), "{real}");
    }
    Ok(())
}

#[test]
fn kubernetes_example_segments_its_network() -> Result<()> {
    use kubernetes::{Node, Peer, allows, tcp, udp};
    let manifest = kubernetes::Manifest::parse(&kubernetes_example()?)?;

    // Every namespace the example creates denies everything by default, both ways.
    let namespaces: Vec<&str> = manifest
        .all("Namespace")
        .filter_map(|n| n.at(&["metadata", "name"]).and_then(Node::str))
        .collect();
    assert_eq!(namespaces, ["vigil", "internal"]);
    for ns in &namespaces {
        let deny_all = manifest.all("NetworkPolicy").any(|p| {
            kubernetes::namespace_of(p) == *ns
                && p.at(&["spec", "podSelector"]) == Some(&Node::Map(Vec::new()))
                && p.at(&["spec", "policyTypes"])
                    .map(Node::items)
                    .is_some_and(|t| {
                        let t: Vec<_> = t.iter().filter_map(Node::str).collect();
                        t.contains(&"Ingress") && t.contains(&"Egress")
                    })
                && p.at(&["spec", "ingress"]).is_none()
                && p.at(&["spec", "egress"]).is_none()
        });
        assert!(deny_all, "no default-deny in namespace {ns}");
    }

    let vigil_pod = ("vigil", &[("app", "vigil")][..]);
    let wiki = ("internal", &[("app", "wiki")][..]);
    let client = Peer::Outside("203.0.113.7".parse()?);
    let prometheus = Peer::Pod("monitoring", &[("app", "prometheus")]);
    let elsewhere = Peer::Pod("default", &[("app", "prometheus")]);
    let https = kubernetes::Port {
        name: Some("https"),
        ..tcp(8443)
    };
    let admin = kubernetes::Port {
        name: Some("admin"),
        ..tcp(9901)
    };
    for (from, port, expected) in [
        (&client, https, true),
        (&elsewhere, https, true),
        (&prometheus, admin, true),
        (&client, admin, false),
        (&elsewhere, admin, false),
        (&Peer::Pod("vigil", &[("app", "vigil")]), admin, false),
        (&Peer::Pod("monitoring-x", &[]), admin, false),
        (&prometheus, tcp(22), false),
    ] {
        let got = allows(&manifest, "Ingress", vigil_pod, from, port)?;
        assert_eq!(
            got, expected,
            "ingress to vigil:{} from {from:?}",
            port.number
        );
    }

    // Only pods labelled app=vigil in namespace vigil reach the upstreams.
    let vigil_peer = Peer::Pod("vigil", &[("app", "vigil")]);
    for (from, port, expected) in [
        (&vigil_peer, tcp(8080), true),
        (&vigil_peer, tcp(8443), true),
        (&vigil_peer, tcp(22), false),
        (&Peer::Pod("vigil", &[("app", "other")]), tcp(8080), false),
        (&Peer::Pod("default", &[("app", "vigil")]), tcp(8080), false),
        (
            &Peer::Pod("internal", &[("app", "vigil")]),
            tcp(8080),
            false,
        ),
        (
            &Peer::Pod("internal", &[("app", "orders")]),
            tcp(8080),
            false,
        ),
        (&prometheus, tcp(8080), false),
        (&client, tcp(8080), false),
    ] {
        let got = allows(&manifest, "Ingress", wiki, from, port)?;
        assert_eq!(
            got, expected,
            "ingress to internal:{} from {from:?}",
            port.number
        );
    }
    // ... by every rule there is: each `from` element needs both.
    let only_vigil = |element: &Node| -> Result<bool> {
        let ns = element
            .at(&["namespaceSelector", "matchLabels"])
            .map(Node::labels);
        let pods = element
            .at(&["podSelector", "matchLabels"])
            .map(Node::labels);
        Ok(element.get("ipBlock").is_none()
            && ns.transpose()?
                == Some(BTreeMap::from([(
                    "kubernetes.io/metadata.name".to_owned(),
                    "vigil".to_owned(),
                )]))
            && pods.transpose()? == Some(BTreeMap::from([("app".to_owned(), "vigil".to_owned())])))
    };
    for policy in manifest
        .all("NetworkPolicy")
        .filter(|p| kubernetes::namespace_of(p) == "internal")
    {
        for rule in policy
            .at(&["spec", "ingress"])
            .map(Node::items)
            .unwrap_or_default()
        {
            let from = rule.get("from").map(Node::items).unwrap_or_default();
            assert!(!from.is_empty(), "an ingress rule in internal without from");
            for element in from {
                assert!(only_vigil(element)?, "internal is reached from {element:?}");
            }
        }
    }
    // The admin port, by every rule that opens it: the monitoring namespace only.
    let sources = kubernetes::ingress_sources(&manifest, vigil_pod, admin)?;
    assert!(!sources.is_empty());
    for source in sources {
        let source = source.context("the admin port is open to anyone")?;
        let ns = source
            .at(&["namespaceSelector", "matchLabels"])
            .map(Node::labels)
            .transpose()?;
        assert_eq!(
            ns,
            Some(BTreeMap::from([(
                "kubernetes.io/metadata.name".to_owned(),
                "monitoring".to_owned()
            )])),
            "admin port reached from {source:?}"
        );
        assert!(source.get("ipBlock").is_none());
    }

    // Vigil's own egress: DNS, Redis, the upstreams, the OpenID Provider; nothing else.
    let dns = Peer::Pod("kube-system", &[("k8s-app", "kube-dns")]);
    let redis_peer = Peer::Pod("vigil", &[("app", "redis")]);
    let upstream = Peer::Pod("internal", &[("app", "wiki")]);
    let provider = Peer::Outside("198.51.100.20".parse()?);
    for (to, port, expected) in [
        (&dns, udp(53), true),
        (&dns, tcp(53), true),
        (&redis_peer, tcp(6379), true),
        (&redis_peer, tcp(26379), false),
        (&Peer::Pod("vigil", &[("app", "other")]), tcp(6379), false),
        (
            &Peer::Pod("internal", &[("app", "redis")]),
            tcp(6379),
            false,
        ),
        (&upstream, tcp(8080), true),
        (&upstream, tcp(8443), true),
        (&provider, tcp(443), true),
        (&Peer::Outside("2001:db8::1".parse()?), tcp(443), true),
        (&provider, tcp(80), false),
        (&upstream, tcp(5432), false),
        (&Peer::Pod("default", &[("app", "db")]), tcp(8080), false),
        (
            &Peer::Pod("kube-system", &[("k8s-app", "other")]),
            udp(53),
            false,
        ),
    ] {
        let got = allows(&manifest, "Egress", vigil_pod, to, port)?;
        assert_eq!(got, expected, "egress from vigil to {to:?}:{}", port.number);
    }
    // The upstreams open nothing themselves but DNS.
    assert!(allows(&manifest, "Egress", wiki, &dns, udp(53))?);
    assert!(!allows(&manifest, "Egress", wiki, &provider, tcp(443))?);
    assert!(!allows(&manifest, "Egress", wiki, &vigil_peer, tcp(8443))?);

    // Only Vigil's pods reach Redis, and only its port.
    let redis = ("vigil", &[("app", "redis")][..]);
    for (from, port, expected) in [
        (&vigil_peer, tcp(6379), true),
        (&vigil_peer, tcp(26379), false),
        (&vigil_peer, tcp(22), false),
        (&Peer::Pod("vigil", &[("app", "other")]), tcp(6379), false),
        (&Peer::Pod("vigil", &[("app", "redis")]), tcp(6379), false),
        (
            &Peer::Pod("internal", &[("app", "vigil")]),
            tcp(6379),
            false,
        ),
        (&Peer::Pod("internal", &[("app", "wiki")]), tcp(6379), false),
        (&prometheus, tcp(6379), false),
        (&client, tcp(6379), false),
    ] {
        let got = allows(&manifest, "Ingress", redis, from, port)?;
        assert_eq!(
            got, expected,
            "ingress to redis:{} from {from:?}",
            port.number
        );
    }
    // ... by every rule that opens the port: pods labelled app=vigil, of Redis's namespace
    // (a podSelector alone), and no address block.
    let sources = kubernetes::ingress_sources(&manifest, redis, tcp(6379))?;
    assert!(!sources.is_empty());
    for source in sources {
        let source = source.context("Redis is open to anyone")?;
        let pods = source
            .at(&["podSelector", "matchLabels"])
            .map(Node::labels)
            .transpose()?;
        assert_eq!(
            pods,
            Some(BTreeMap::from([("app".to_owned(), "vigil".to_owned())])),
            "Redis reached from {source:?}"
        );
        assert!(source.get("namespaceSelector").is_none(), "{source:?}");
        assert!(source.get("ipBlock").is_none(), "{source:?}");
    }
    // Redis opens no connection, not even to DNS.
    for (to, port) in [
        (&dns, udp(53)),
        (&vigil_peer, tcp(8443)),
        (&upstream, tcp(8080)),
        (&provider, tcp(443)),
        (&redis_peer, tcp(6379)),
    ] {
        let got = allows(&manifest, "Egress", redis, to, port)?;
        assert!(!got, "egress from redis to {to:?}:{}", port.number);
    }
    Ok(())
}

#[test]
fn kubernetes_example_agrees_with_its_image_and_config() -> Result<()> {
    use kubernetes::Node;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = kubernetes::Manifest::parse(&kubernetes_example()?)?;
    let deployment = manifest.object("Deployment", "vigil")?;
    let pod = kubernetes::Pod::of(deployment)?;

    // The Dockerfile's user and group, with a group of that id in the image.
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile"))?;
    assert!(
        dockerfile.contains(&format!("\nUSER {}:{}\n", pod.uid, pod.gid)),
        "{dockerfile}"
    );
    assert!(dockerfile.contains(&format!("groupadd --system --gid {}", pod.gid)));
    assert!(dockerfile.contains(&format!(
        "useradd --system --uid {} --gid {}",
        pod.uid, pod.gid
    )));

    let spec = deployment
        .at(&["spec", "template", "spec"])
        .context("pod spec")?;
    let container = &spec.get("containers").map(Node::items).unwrap_or_default()[0];
    let sc = |key: &str| container.at(&["securityContext", key]).and_then(Node::str);
    assert_eq!(sc("readOnlyRootFilesystem"), Some("true"));
    assert_eq!(sc("allowPrivilegeEscalation"), Some("false"));
    assert_eq!(
        spec.at(&["securityContext", "runAsNonRoot"])
            .and_then(Node::str),
        Some("true")
    );
    let dropped = container.at(&["securityContext", "capabilities", "drop"]);
    assert_eq!(
        dropped.map(Node::items).and_then(|d| d[0].str()),
        Some("ALL")
    );

    // The ports the config listens on are the container's, and the probes use the admin one.
    let config: toml::Value = toml::from_str(&embedded_config(&manifest)?)?;
    let port_of = |key: &str| -> Option<u16> {
        let listen = config.get(key)?.get("listen")?.as_str()?;
        listen
            .parse::<std::net::SocketAddr>()
            .ok()
            .map(|a| a.port())
    };
    assert_eq!(port_of("server"), pod.ports.get("https").copied());
    assert_eq!(port_of("admin"), pod.ports.get("admin").copied());
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = container.at(&[probe, "httpGet"]).context(probe)?;
        assert_eq!(get.get("path").and_then(Node::str), Some(path));
        let port = get.get("port").context("probe port")?;
        let number = port.int().or_else(|| {
            port.str()
                .and_then(|name| pod.ports.get(name))
                .map(|p| i64::from(*p))
        });
        assert_eq!(number, port_of("admin").map(i64::from), "{probe}");
    }
    let service = manifest.object("Service", "vigil")?;
    let target = service
        .at(&["spec", "ports"])
        .map(Node::items)
        .unwrap_or_default()[0]
        .get("targetPort")
        .and_then(Node::str);
    assert!(
        target.is_some_and(|t| pod.ports.contains_key(t)),
        "{target:?}"
    );

    // The pods carry the label and namespace the NetworkPolicies select.
    let labels = deployment
        .at(&["spec", "template", "metadata", "labels"])
        .context("pod labels")?
        .labels()?;
    assert_eq!(labels.get("app").map(String::as_str), Some("vigil"));
    assert_eq!(kubernetes::namespace_of(deployment), "vigil");

    // A YAML 1.1 octal is read as Kubernetes reads it.
    let node = |text: &str| Node::Scalar {
        text: text.to_owned(),
        plain: true,
    };
    assert_eq!(node("0440").int(), Some(0o440));
    assert_eq!(node("0o440").int(), Some(0o440));
    assert_eq!(node("288").int(), Some(288));
    assert_eq!(
        Node::Scalar {
            text: "0440".to_owned(),
            plain: false
        }
        .int(),
        None
    );
    Ok(())
}

#[test]
fn kubernetes_example_runs_a_fleet_on_one_shared_state() -> Result<()> {
    use kubernetes::{Node, Source, namespace_of};
    let text = kubernetes_example()?;
    let manifest = kubernetes::Manifest::parse(&text)?;
    let int = |node: &Node, keys: &[&str]| node.at(keys).and_then(Node::int);

    // Three replicas; an update starts a new pod before it stops an old one, and a voluntary
    // disruption (a node drain) leaves at least two of them.
    let deployment = manifest.object("Deployment", "vigil")?;
    assert_eq!(int(deployment, &["spec", "replicas"]), Some(3));
    let strategy = deployment.at(&["spec", "strategy"]).context("strategy")?;
    assert_eq!(
        strategy.get("type").and_then(Node::str),
        Some("RollingUpdate")
    );
    assert_eq!(int(strategy, &["rollingUpdate", "maxUnavailable"]), Some(0));
    assert_eq!(int(strategy, &["rollingUpdate", "maxSurge"]), Some(1));
    let budget = manifest.object("PodDisruptionBudget", "vigil")?;
    assert_eq!(int(budget, &["spec", "minAvailable"]), Some(2));
    assert_eq!(namespace_of(budget), namespace_of(deployment));
    let labels = deployment
        .at(&["spec", "template", "metadata", "labels"])
        .context("pod labels")?
        .labels()?;
    let selected = budget
        .at(&["spec", "selector", "matchLabels"])
        .context("the budget's selector")?
        .labels()?;
    // Not empty: an empty selector would count Redis's pod too.
    assert!(!selected.is_empty());
    assert!(
        selected.iter().all(|(k, v)| labels.get(k) == Some(v)),
        "{selected:?}"
    );

    // The replicas share their state through Redis, over TLS, as the ACL user that
    // tests/fleet.rs gives a real redis-server, with a password and the CA of Redis's
    // certificate from the Secret vigil-redis.
    let config: toml::Value = toml::from_str(&embedded_config(&manifest)?)?;
    let state = config.get("state").context("no [state]")?;
    let get = |key: &str| state.get(key).and_then(toml::Value::as_str);
    assert_eq!(get("backend"), Some("redis"));
    assert_eq!(get("username"), Some(support::redis::USER));
    let url = get("url").context("no state.url")?;
    let rest = url
        .strip_prefix("rediss://")
        .with_context(|| format!("{url} is not TLS"))?;
    let pod = kubernetes::Pod::of(deployment)?;
    let base = Path::new(pod.arg("--config").context("no --config")?)
        .parent()
        .context("the config's directory")?;
    for key in ["password_file", "ca"] {
        let file = base.join(get(key).with_context(|| format!("no state.{key}"))?);
        // Mounts are sorted outer first: the last that holds the file is the one it is in.
        let mount = pod.mounts.iter().rev().find(|m| file.starts_with(&m.path));
        assert_eq!(
            mount.map(|m| &m.source),
            Some(&Source::Secret("vigil-redis".to_owned())),
            "state.{key}"
        );
    }
    let secrets = documented_secrets(&text);
    assert_eq!(
        secrets.get("vigil-redis").map(Vec::as_slice),
        Some(&["password".to_owned(), "ca.pem".to_owned()][..])
    );
    // The ACL user reaches the keys under the prefix's hash tag.
    let prefix = get("prefix").unwrap_or("vigil");
    assert!(
        support::redis::ACL_RULES.starts_with(&format!("~{{{prefix}}}* ")),
        "{}",
        support::redis::ACL_RULES
    );

    // The URL names Redis's Service in the namespace, on its port, which is the name Redis's
    // certificate is issued for in the comments.
    let (address, _db) = rest.split_once('/').unwrap_or((rest, ""));
    let (host, port) = address.rsplit_once(':').context("no port in state.url")?;
    let service = manifest.object("Service", "redis")?;
    assert_eq!(
        host,
        format!("redis.{}.svc.cluster.local", namespace_of(service))
    );
    let ports = service.at(&["spec", "ports"]).map(Node::items);
    assert!(
        ports
            .unwrap_or_default()
            .iter()
            .any(|p| p.get("port").and_then(Node::int) == port.parse().ok()),
        "{ports:?}"
    );
    let documented = documented_lines(&text);
    let issued = documented.iter().any(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        words.starts_with(&["vigil", "certs", "issue"])
            && words.windows(2).any(|w| w == ["--dns", host])
    });
    assert!(issued, "no certificate for {host} in {documented:#?}");

    // The ACL file the comments make: the default user off, and `vigil` with the rules the
    // fleet tests prove, authenticated by the SHA-256 of the password as Vigil sends it (the
    // file's first line, without its newline).
    assert!(
        documented.contains(&r#"echo "user default off" > users.acl"#.to_owned()),
        "{documented:#?}"
    );
    let acl = format!(
        r#"echo "user {} on #$hash {}" >> users.acl"#,
        support::redis::USER,
        support::redis::ACL_RULES
    );
    assert!(documented.contains(&acl), "no `{acl}` in {documented:#?}");
    let dir = tempfile::tempdir()?;
    let password = "8f1c0e5a9b7d3f2e6a4c1b0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f";
    std::fs::write(dir.path().join("password"), format!("{password}\n"))?;
    let script: Vec<&str> = documented
        .iter()
        .map(String::as_str)
        .filter(|l| l.starts_with("hash=") || l.starts_with("echo \"user "))
        .collect();
    assert_eq!(script.len(), 3, "{script:?}");
    let out = Command::new("sh")
        .arg("-c")
        .arg(script.join("\n"))
        .current_dir(dir.path())
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, password.as_bytes());
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("users.acl"))?,
        format!(
            "user default off\nuser {} on #{hex} {}\n",
            support::redis::USER,
            support::redis::ACL_RULES
        )
    );
    Ok(())
}

/// The directives of the Kubernetes example's redis.conf, in order, names in lower case.
fn redis_conf(manifest: &kubernetes::Manifest) -> Result<Vec<(String, String)>> {
    let text = manifest
        .object("ConfigMap", "redis-config")?
        .at(&["data", "redis.conf"])
        .and_then(kubernetes::Node::str)
        .context("no data.redis.conf in ConfigMap redis-config")?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (name, value) = l.split_once(char::is_whitespace).unwrap_or((l, ""));
            (name.to_ascii_lowercase(), value.trim().to_owned())
        })
        .collect())
}

/// The last value redis.conf gives `name` (a later line overrides an earlier one).
fn directive<'a>(conf: &'a [(String, String)], name: &str) -> Option<&'a str> {
    conf.iter()
        .rev()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn kubernetes_example_keeps_the_shared_state_in_a_persistent_tls_only_redis() -> Result<()> {
    use kubernetes::{Node, Source, namespace_of};
    let manifest = kubernetes::Manifest::parse(&kubernetes_example()?)?;
    let statefulset = manifest.object("StatefulSet", "redis")?;
    let pod = kubernetes::Pod::of(statefulset)?;
    let conf = redis_conf(&manifest)?;
    let value = |name: &str| directive(&conf, name);
    let spec = statefulset.get("spec").context("no spec")?;
    assert_eq!(spec.get("replicas").and_then(Node::int), Some(1));
    assert_eq!(pod.args.first().map(String::as_str), Some("redis-server"));
    let config = Path::new(pod.args.get(1).context("no redis.conf in args")?);
    let holder = pod
        .mounts
        .iter()
        .rev()
        .find(|m| config.starts_with(&m.path));
    assert_eq!(
        holder.map(|m| &m.source),
        Some(&Source::ConfigMap("redis-config".to_owned()))
    );

    // Every write appended to a file in `dir`, the pod's own claim (which outlives the pod);
    // no key evicted to make room.
    assert_eq!(value("appendonly"), Some("yes"));
    assert_eq!(value("maxmemory-policy"), Some("noeviction"));
    let dir = Path::new(value("dir").context("no dir")?);
    let data = pod
        .mounts
        .iter()
        .find(|m| m.path == dir)
        .with_context(|| format!("{} is not a mount", dir.display()))?;
    let Source::Claim(claim) = &data.source else {
        anyhow::bail!("{} is not a claim: {data:?}", dir.display());
    };
    let template = spec
        .get("volumeClaimTemplates")
        .map(Node::items)
        .unwrap_or_default()
        .iter()
        .find(|t| t.at(&["metadata", "name"]).and_then(Node::str) == Some(claim.as_str()))
        .context("no volumeClaimTemplate")?;
    assert!(
        template
            .at(&["spec", "resources", "requests", "storage"])
            .is_some()
    );

    // TLS only, on the port the Service and Vigil's URL name; the users from an ACL file in
    // a Secret, none in redis.conf.
    assert_eq!(value("port"), Some("0"));
    assert_eq!(value("tls-port"), Some("6379"));
    assert_eq!(pod.ports.get("redis"), Some(&6379));
    for name in ["tls-cert-file", "tls-key-file", "aclfile"] {
        let file = Path::new(value(name).with_context(|| format!("no {name}"))?);
        let holder = pod.mounts.iter().rev().find(|m| file.starts_with(&m.path));
        assert_eq!(
            holder.map(|m| &m.source),
            Some(&Source::Secret("redis".to_owned())),
            "{name}"
        );
    }
    assert_eq!(value("user"), None);
    assert_eq!(value("requirepass"), None);

    // Ready once it accepts connections on that port.
    let container = &spec
        .at(&["template", "spec", "containers"])
        .map(Node::items)
        .unwrap_or_default()[0];
    let probe = container
        .at(&["readinessProbe", "tcpSocket", "port"])
        .context("no tcpSocket readinessProbe")?;
    let probed = probe.int().or_else(|| {
        probe
            .str()
            .and_then(|n| pod.ports.get(n))
            .map(|p| i64::from(*p))
    });
    assert_eq!(probed, Some(6379));

    // Not root, with nothing to write outside its claim.
    assert_ne!(pod.uid, 0);
    assert_ne!(pod.gid, 0);
    let sc = |key: &str| container.at(&["securityContext", key]).and_then(Node::str);
    assert_eq!(sc("readOnlyRootFilesystem"), Some("true"));
    assert_eq!(sc("allowPrivilegeEscalation"), Some("false"));
    assert_eq!(
        spec.at(&["template", "spec", "securityContext", "runAsNonRoot"])
            .and_then(Node::str),
        Some("true")
    );
    assert!(container.get("resources").is_some());

    // The headless Service that governs the StatefulSet selects its pod.
    let service = manifest.object("Service", "redis")?;
    assert_eq!(spec.get("serviceName").and_then(Node::str), Some("redis"));
    assert_eq!(
        service.at(&["spec", "clusterIP"]).and_then(Node::str),
        Some("None")
    );
    assert_eq!(namespace_of(service), namespace_of(statefulset));
    let labels = spec
        .at(&["template", "metadata", "labels"])
        .context("pod labels")?
        .labels()?;
    let selected = service
        .at(&["spec", "selector"])
        .context("no selector")?
        .labels()?;
    assert!(!selected.is_empty());
    assert!(selected.iter().all(|(k, v)| labels.get(k) == Some(v)));
    Ok(())
}

/// Whether the Kubernetes example's Redis pod can read what its redis.conf names and write
/// in its `dir`: by the model, and, as root, by the kernel (`test -r`, `test -w` as the pod's
/// user). The model checks owners and modes, so each Secret key holds a stand-in.
struct RedisAccess {
    model: Result<(), String>,
    real: Option<Result<(), String>>,
}

fn kubernetes_redis_access(text: &str) -> Result<RedisAccess> {
    let manifest = kubernetes::Manifest::parse(text)?;
    let pod = kubernetes::Pod::of(manifest.object("StatefulSet", "redis")?)?;
    let conf = redis_conf(&manifest)?;
    let mut reads = vec![PathBuf::from(
        pod.args.get(1).context("no redis.conf in args")?,
    )];
    for name in [
        "tls-cert-file",
        "tls-key-file",
        "tls-ca-cert-file",
        "aclfile",
        "include",
    ] {
        reads.extend(
            conf.iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| PathBuf::from(v)),
        );
    }
    let dir = PathBuf::from(directive(&conf, "dir").context("no dir")?);
    let data = volume_data(&manifest, &pod, text, |_, key| {
        Ok(format!("{key}\n").into_bytes())
    })?;
    let entries = kubernetes::kubelet_layout(&pod, &data)?;

    let mut problems: Vec<String> = reads
        .iter()
        .filter_map(|f| kubernetes::check_readable(&entries, &pod, f).err())
        .map(|e| e.to_string())
        .collect();
    problems.extend(
        kubernetes::check_writable(&entries, &pod, &dir)
            .err()
            .map(|e| e.to_string()),
    );
    let model = if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    };
    if !running_as_root()? {
        return Ok(RedisAccess { model, real: None });
    }
    let tmp = written_layout(&entries)?;
    let root = tmp.path().join("root");
    let mut denied = Vec::new();
    let tests = reads
        .iter()
        .map(|f| ("-r", f))
        .chain([("-w", &dir), ("-x", &dir)]);
    for (flag, path) in tests {
        let status = as_pod_user(&pod, Path::new("test"))
            .arg(flag)
            .arg(root.join(path.strip_prefix("/")?))
            .status()
            .context("setpriv (util-linux) is needed to run as the pod's user")?;
        if !status.success() {
            denied.push(format!("test {flag} {}", path.display()));
        }
    }
    let real = if denied.is_empty() {
        Ok(())
    } else {
        Err(denied.join("\n"))
    };
    Ok(RedisAccess {
        model,
        real: Some(real),
    })
}

#[test]
fn kubernetes_example_redis_reads_its_files_and_writes_its_data_as_its_user() -> Result<()> {
    let text = kubernetes_example()?;
    let access = kubernetes_redis_access(&text)?;
    if let Err(e) = access.model {
        panic!("Redis's pod cannot reach its files:\n{e}");
    }
    if let Some(Err(e)) = access.real {
        panic!("as Redis's user:\n{e}");
    }

    // Without fsGroup, the key (root's, 0440) and the claim's directory (root's, 0755) are out
    // of Redis's reach.
    let without = text.replace("        fsGroup: 999\n", "");
    assert_ne!(without, text);
    let access = kubernetes_redis_access(&without)?;
    let model = access.model.expect_err("no fsGroup passed the model");
    for expected in [
        "/etc/redis/secret/redis.key: uid 999 (groups [999]) cannot read it (0:0 440)",
        "/data: uid 999 (groups [999]) cannot write in it (0:0 755)",
    ] {
        assert!(model.contains(expected), "{model}");
    }
    if let Some(real) = access.real {
        let real = real.expect_err("no fsGroup passed test -r and -w");
        assert!(
            real.contains("test -r /etc/redis/secret/redis.key"),
            "{real}"
        );
        assert!(real.contains("test -w /data"), "{real}");
    }
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
            .args(["policy", "explain", "--format", "json", "--config"])
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

/// `--format text` (the default) says what `--format json` says: the decision, its status and
/// mode, the route, the deciding rule, and every reason with its code.
#[test]
fn policy_explain_text_agrees_with_json() -> Result<()> {
    let dir = tempfile::tempdir()?;
    certs_init(dir.path())?;
    let path = dir.path().join("vigil.toml");
    std::fs::write(
        &path,
        GOOD.replace("spiffe://example.org/ns/*/sa/*", "spiffe://vigil.test/**"),
    )?;
    let explain = |method: &str, format: Option<&str>| -> Result<(Option<i32>, String)> {
        let mut cmd = vigil();
        cmd.args(["policy", "explain", "--config"])
            .arg(&path)
            .arg("--cert")
            .arg(dir.path().join("workload.pem"))
            .args([
                "--url",
                "https://api.example.com/v1/orders",
                "--method",
                method,
            ])
            .args(["--at", "2026-06-01T12:00:00Z"]);
        if let Some(format) = format {
            cmd.args(["--format", format]);
        }
        let out = cmd.output()?;
        Ok((
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ))
    };
    for method in ["GET", "DELETE"] {
        let (json_code, json) = explain(method, Some("json"))?;
        let (text_code, text) = explain(method, Some("text"))?;
        assert_eq!(explain(method, None)?, (text_code, text.clone()));
        assert_eq!(json_code, text_code);
        let report: serde_json::Value = serde_json::from_str(&json)?;
        let decision = format!(
            "decision:  {} ({}, {})",
            report["decision"].as_str().unwrap_or("?"),
            report["status"],
            report["mode"].as_str().unwrap_or("?")
        );
        assert!(text.starts_with(&decision), "{decision}\n{text}");
        assert!(text.contains("route:     api (login none)"), "{text}");
        assert!(
            text.contains("request:   ")
                && text.contains("api.example.com/v1/orders at 2026-06-01T12:00:00Z"),
            "{text}"
        );
        let rule = match report["rule"].as_u64() {
            Some(n) => format!("rule:      rule {n}"),
            None => "rule:      none".to_owned(),
        };
        assert!(text.contains(&rule), "{rule}\n{text}");
        let reasons = report["reasons"].as_array().context("reasons")?;
        let codes = report["codes"].as_array().context("codes")?;
        assert!(!reasons.is_empty() && reasons.len() == codes.len());
        for (reason, code) in reasons.iter().zip(codes) {
            let line = format!(
                "  - {} [{}]",
                reason.as_str().unwrap_or("?"),
                code.as_str().unwrap_or("?")
            );
            assert!(text.contains(&line), "{line}\n{text}");
        }
        assert_eq!(report["facts"]["request"]["method"], method);
    }
    let (_, denied) = explain("DELETE", None)?;
    assert!(
        denied.starts_with("decision:  deny (403, enforce)"),
        "{denied}"
    );
    assert!(
        denied.contains("method DELETE not allowed [method_not_allowed]"),
        "{denied}"
    );
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
            .args(["policy", "explain", "--format", "json", "--config"])
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

/// `headers` rules: explain takes the request's headers from `--header`, and `vigil check`
/// refuses conditions on the headers Vigil sets itself, on Host, and without patterns.
#[test]
fn header_rules_in_explain_and_check() -> Result<()> {
    let dir = tempfile::tempdir()?;
    certs_init(dir.path())?;
    let path = dir.path().join("vigil.toml");
    let rule = r#"spiffe = ["spiffe://vigil.test/**"], headers = { X-Api-Version = ["2"] }"#;
    std::fs::write(
        &path,
        GOOD.replace(r#"spiffe = ["spiffe://example.org/ns/*/sa/*"]"#, rule),
    )?;
    let explain = |headers: &[&str]| -> Result<(i32, serde_json::Value)> {
        let mut cmd = vigil();
        cmd.args(["policy", "explain", "--format", "json", "--config"])
            .arg(&path)
            .arg("--cert")
            .arg(dir.path().join("workload.pem"))
            .args(["--url", "https://api.example.com/v1/orders"]);
        for h in headers {
            cmd.args(["-H", h]);
        }
        let out = cmd.output()?;
        let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        Ok((out.status.code().unwrap_or(-1), json))
    };
    let (code, report) = explain(&["X-API-Version: 2"])?;
    assert_eq!(code, 0, "{report}");
    assert_eq!(
        report["facts"]["request"]["headers"]["x-api-version"][0],
        "2"
    );
    let (code, report) = explain(&[])?;
    assert_eq!(code, 2);
    assert_eq!(report["codes"][0], "header_missing", "{report}");
    let (code, report) = explain(&["x-api-version: 1"])?;
    assert_eq!(code, 2);
    assert_eq!(
        report["reasons"][0],
        "rule 1: header x-api-version not allowed"
    );
    let (code, _) = explain(&["no colon"])?;
    assert_eq!(code, 1);

    for (headers, message) in [
        (
            r#"{ x-vigil-user = ["alice"] }"#,
            "a header Vigil sets for the upstream",
        ),
        (
            r#"{ X-Forwarded-For = ["10.0.0.1"] }"#,
            "a header Vigil sets for the upstream",
        ),
        (
            r#"{ host = ["api.example.com"] }"#,
            "matched by the route's host",
        ),
        (r#"{ accept = [] }"#, "has no patterns"),
        (r#"{ "bad name" = ["x"] }"#, "is not an HTTP header name"),
    ] {
        let text = GOOD.replace(r#"methods = ["GET"]"#, &format!("headers = {headers}"));
        let (ok, out) = check(dir.path(), &text)?;
        assert!(!ok, "{headers}: {out}");
        assert!(out.contains(message), "{headers}: {out}");
        assert!(out.contains(":17:"), "{headers}: {out}");
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
