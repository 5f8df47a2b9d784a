//! The configuration loader, as `vigil check` runs it (`config::load_file` is a file read
//! followed by `config::load_text`): whatever the text, it compiles to a snapshot or to a list
//! of problems that renders, never a panic.
//!
//! Input: configuration text, compiled with relative paths resolved against
//! `<fixture>/config`. The fixture holds a development PKI and every other file a
//! configuration names, so valid text gets past file loading into the compiler proper:
//! - `../certs/`: `server.pem`, `server.key`, `ca.pem`, `ca.crl`, `device.pem`, `device.key`,
//!   `workload.pem`, `workload.key`, `session.keys`, `assertion.pem`, `oidc-client-secret`,
//!   `devices.json`, `upstream-ca.pem`, `proxy-client.pem`, `proxy-client.key` (all also
//!   reachable as `tls/...`, and the export as `mdm/devices.json`);
//! - the environment variable `VIGIL_FUZZ_SECRET` for `client_secret_env`.
//!
//! Set `VIGIL_FUZZ_SHOW=1` when replaying inputs to see what `vigil check` would print.
//!
//! Text that could name a device or a process file (`/dev/`, `/proc/`, `/sys/`, or a TOML escape
//! that could spell one) is skipped: reading `/dev/zero` or `/dev/stdin` would hang the
//! fuzzer, not find a bug (configuration comes from the operator).

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use vigil::config::{self, Context};

struct Fixture {
    base: PathBuf,
    context: Context,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target")
            .join(format!("config-fixture-{}", std::process::id()));
        let certs = root.join("certs");
        let base = root.join("config");
        vigil::certs::init(&certs, true).expect("development PKI");
        std::fs::create_dir_all(base.join("mdm")).expect("fixture dirs");
        let write = |name: &str, text: &str| {
            std::fs::write(certs.join(name), text).expect("fixture file");
        };
        write(
            "session.keys",
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n",
        );
        write(
            "assertion.pem",
            &vigil::forward::assertion::Signer::generate_pem().expect("assertion key"),
        );
        write("oidc-client-secret", "fuzz-secret\n");
        let devices = r#"{"devices": [{"fingerprint": "ab", "subject": "demo-laptop",
            "serial": "01", "compliant": true, "managed": true,
            "os": {"name": "macOS", "version": "14.1"},
            "last_check_in": "2026-01-01T00:00:00Z"}]}"#;
        write("devices.json", devices);
        std::fs::write(base.join("mdm/devices.json"), devices).expect("fixture file");
        for (from, to) in [
            ("ca.pem", "upstream-ca.pem"),
            ("device.pem", "proxy-client.pem"),
            ("device.key", "proxy-client.key"),
        ] {
            std::fs::copy(certs.join(from), certs.join(to)).expect("fixture file");
        }
        let tls = base.join("tls");
        if !tls.exists() {
            std::os::unix::fs::symlink(&certs, &tls).expect("tls link");
        }
        // SAFETY: set once, before the first load; nothing else in this process reads or
        // writes the environment concurrently (libFuzzer's own threads do not).
        unsafe {
            // The platform's roots are read for every https upstream: a small bundle keeps
            // that cheap and the run independent of the machine.
            std::env::set_var("SSL_CERT_FILE", certs.join("ca.pem"));
            std::env::remove_var("SSL_CERT_DIR");
            std::env::set_var("VIGIL_FUZZ_SECRET", "fuzz-secret");
        }
        Fixture {
            base,
            context: Context::first().expect("TLS ticketer"),
        }
    })
}

/// Text that might make the loader read a file that never ends or never answers.
fn names_special_files(text: &str) -> bool {
    ["/dev/", "/proc/", "/sys/", "\\u", "\\U"]
        .iter()
        .any(|s| text.contains(s))
        // A line-ending backslash in a multi-line string joins what follows.
        || text
            .as_bytes()
            .windows(2)
            .any(|w| w[0] == b'\\' && w[1].is_ascii_whitespace())
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if names_special_files(text) {
        return;
    }
    let f = fixture();
    let outcome = config::load_text("fuzz.toml", text.to_owned(), &f.base, &f.context);
    if std::env::var_os("VIGIL_FUZZ_SHOW").is_some() {
        match &outcome {
            Ok(s) => eprintln!("ok: {} routes", s.routes.len()),
            Err(p) => eprintln!("{p}"),
        }
    }
    match outcome {
        Ok(snapshot) => {
            // TLS is mandatory, so a snapshot always read its certificate files.
            assert!(!snapshot.files.is_empty(), "a snapshot without files");
            assert!(!snapshot.routes.is_empty(), "a snapshot without routes");
        }
        Err(problems) => {
            assert!(!problems.items.is_empty(), "refused without a problem");
            // What `vigil check` prints, and what `POST /reload` answers.
            let rendered = problems.to_string();
            assert!(!rendered.is_empty());
            assert_eq!(problems.summary().len(), problems.items.len());
        }
    }
});
