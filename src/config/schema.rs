//! The configuration file as an operator writes it: plain serde types, no validation beyond types.
//!
//! Each section is deserialised on its own (see `load.rs`), so one mistake does not hide the others.
//! Defaults live here, next to the field they belong to, and are repeated in `docs/configuration.md`.

use serde::Deserialize;
use std::time::Duration;

/// A duration written as "250ms", "30s", "5m", "8h" or "1h 30m".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(DurationVisitor)
    }
}

struct DurationVisitor;

impl serde::de::Visitor<'_> for DurationVisitor {
    type Value = HumanDuration;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a duration in quotes, like \"30s\", \"5m\" or \"1h 30m\"")
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<HumanDuration, E> {
        humantime::parse_duration(text.trim())
            .map(HumanDuration)
            .map_err(|e| {
                E::custom(format!(
                    "invalid duration {text:?} ({e}); write it like \"30s\", \"5m\" or \"1h 30m\""
                ))
            })
    }
}

/// `[server]`: the downstream listener and the limits on what clients control.
#[derive(Debug, Clone, Deserialize)]
pub struct ServerSection {
    /// Address to accept TLS connections on.
    #[serde(default = "ServerSection::default_listen")]
    pub listen: String,
    /// Open downstream connections at most; further ones are closed at once (metric
    /// `vigil_connections_rejected_total`).
    #[serde(default = "ServerSection::default_max_connections")]
    pub max_connections: usize,
    /// Open connections from one source (an IPv4 address, or an IPv6 /64) at most; `0` turns
    /// the limit off. Default: a tenth of `max_connections`.
    #[serde(default)]
    pub max_connections_per_source: Option<usize>,
    /// TLS handshakes in progress from one source at most; `0` turns the limit off. Default:
    /// a hundredth of `max_connections`, at least 16, at most `max_connections_per_source`.
    #[serde(default)]
    pub max_handshakes_per_source: Option<usize>,
    /// Time allowed for the TLS handshake.
    #[serde(default = "ServerSection::default_handshake_timeout")]
    pub handshake_timeout: HumanDuration,
    /// Time allowed to receive a request's headers (slowloris); on HTTP/1.1 also the longest a
    /// keep-alive connection may wait between requests.
    #[serde(default = "ServerSection::default_header_read_timeout")]
    pub header_read_timeout: HumanDuration,
    /// A connection on which no byte moves for this long is closed.
    #[serde(default = "ServerSection::default_idle_timeout")]
    pub idle_timeout: HumanDuration,
    /// Largest request head (HTTP/1.1 buffer, HTTP/2 header list); at least 8192.
    #[serde(default = "ServerSection::default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// A request body must arrive whole within this (counted from when it is sent upstream)
    /// unless the upstream answers first; otherwise 408.
    #[serde(default = "ServerSection::default_body_read_timeout")]
    pub body_read_timeout: HumanDuration,
    /// Largest request body; bigger ones get 413. 0 turns the limit off.
    #[serde(default = "ServerSection::default_max_body_bytes")]
    pub max_body_bytes: u64,
    /// Longest request target (path and query); longer ones get 414. 0 turns the limit off.
    #[serde(default = "ServerSection::default_max_target_bytes")]
    pub max_target_bytes: usize,
    /// `Strict-Transport-Security: max-age=<this>` on every answer downstream, Vigil's own and
    /// forwarded ones (replacing an upstream's own); `"0s"` turns it off. Default: a year.
    #[serde(default = "ServerSection::default_hsts_max_age")]
    pub hsts_max_age: HumanDuration,
    /// Adds `includeSubDomains` to that header.
    #[serde(default)]
    pub hsts_include_subdomains: bool,
    /// Concurrent HTTP/2 streams per connection.
    #[serde(default = "ServerSection::default_max_streams")]
    pub max_concurrent_streams: u32,
    /// On SIGTERM, in-flight requests get this long to finish before the process exits.
    #[serde(default = "ServerSection::default_drain_timeout")]
    pub drain_timeout: HumanDuration,
    /// The PROXY protocol from L4 load balancers, so that the client's own address is the one
    /// every rule, limit and log sees. Default: off (no key); remove the key to turn it off.
    #[serde(default)]
    pub proxy_protocol: Option<ProxyProtocolSection>,
}

/// `[server] proxy_protocol`: connections from `from` must start with a PROXY header (v1 or
/// v2), whose client address replaces theirs; from anywhere else, a header is refused and a
/// connection without one is served as it comes.
#[derive(Debug, Clone, Deserialize)]
pub struct ProxyProtocolSection {
    /// The load balancers' networks (CIDR, or a bare address). At least one.
    pub from: Vec<String>,
    /// Time a balancer has to send the whole header, from accept. Default 5s.
    #[serde(default = "ProxyProtocolSection::default_timeout")]
    pub timeout: HumanDuration,
}

impl ProxyProtocolSection {
    fn default_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(5))
    }
}

impl ServerSection {
    /// `max_connections_per_source` with its default filled in; 0 means no limit.
    pub fn connections_per_source(&self) -> usize {
        self.max_connections_per_source
            .unwrap_or_else(|| self.max_connections.div_ceil(10))
    }
    /// `max_handshakes_per_source` with its default filled in; 0 means no limit.
    pub fn handshakes_per_source(&self) -> usize {
        self.max_handshakes_per_source.unwrap_or_else(|| {
            (self.max_connections.div_ceil(100))
                .max(16)
                .min(self.connections_per_source())
        })
    }
    fn default_listen() -> String {
        "127.0.0.1:8443".into()
    }
    fn default_max_connections() -> usize {
        10_000
    }
    fn default_handshake_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(10))
    }
    fn default_header_read_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(10))
    }
    fn default_body_read_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(30))
    }
    fn default_idle_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(120))
    }
    fn default_max_header_bytes() -> usize {
        32 * 1024
    }
    fn default_max_body_bytes() -> u64 {
        16 * 1024 * 1024
    }
    fn default_max_target_bytes() -> usize {
        8 * 1024
    }
    fn default_hsts_max_age() -> HumanDuration {
        HumanDuration(Duration::from_secs(365 * 24 * 3600))
    }
    fn default_max_streams() -> u32 {
        128
    }
    fn default_drain_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(30))
    }
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            listen: Self::default_listen(),
            max_connections: Self::default_max_connections(),
            max_connections_per_source: None,
            max_handshakes_per_source: None,
            handshake_timeout: Self::default_handshake_timeout(),
            header_read_timeout: Self::default_header_read_timeout(),
            idle_timeout: Self::default_idle_timeout(),
            body_read_timeout: Self::default_body_read_timeout(),
            max_header_bytes: Self::default_max_header_bytes(),
            max_body_bytes: Self::default_max_body_bytes(),
            max_target_bytes: Self::default_max_target_bytes(),
            hsts_max_age: Self::default_hsts_max_age(),
            hsts_include_subdomains: false,
            max_concurrent_streams: Self::default_max_streams(),
            drain_timeout: Self::default_drain_timeout(),
            proxy_protocol: None,
        }
    }
}

/// `[tls]`: the server certificate and what a client certificate must chain to.
#[derive(Debug, Clone, Deserialize)]
pub struct TlsSection {
    /// PEM chain, leaf first.
    pub cert: String,
    /// PEM private key (PKCS#8, SEC1 or PKCS#1).
    pub key: String,
    /// PEM bundles of the CAs client certificates must chain to. At least one.
    pub client_ca: Vec<String>,
    /// PEM or DER CRLs. With any CRL configured, every certificate in a client's chain must have a
    /// known revocation status, unless `allow_unknown_revocation` is true.
    #[serde(default)]
    pub crl: Vec<String>,
    /// Accept certificates no configured CRL speaks about.
    #[serde(default)]
    pub allow_unknown_revocation: bool,
    /// Refuse clients when a CRL's nextUpdate has passed (fail closed). Default true.
    #[serde(default = "default_true")]
    pub enforce_crl_expiry: bool,
    /// Issue TLS 1.3 session tickets for resumption. Default true.
    #[serde(default = "default_true")]
    pub session_tickets: bool,
    /// Key-exchange groups clients may use. Default: hybrid post-quantum X25519MLKEM768 first,
    /// then X25519, secp256r1, secp384r1.
    #[serde(default = "default_key_exchange")]
    pub key_exchange: Vec<String>,
    /// How long before the server certificate or a client CA expires, or a CRL reaches its
    /// nextUpdate, Vigil warns (log, `vigil check`); `"0s"` turns the warnings off. Default 14
    /// days.
    #[serde(default = "default_expiry_warning")]
    pub expiry_warning: HumanDuration,
}

fn default_expiry_warning() -> HumanDuration {
    HumanDuration(Duration::from_secs(14 * 24 * 3600))
}

fn default_key_exchange() -> Vec<String> {
    crate::tls::DEFAULT_KEY_EXCHANGE
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
}

fn default_true() -> bool {
    true
}

/// `[admin]`: the operator's listener for health, readiness and metrics.
#[derive(Debug, Clone, Deserialize)]
pub struct AdminSection {
    /// Plain HTTP unless `client_ca` is set; keep it on loopback or a private interface.
    /// Empty string turns it off.
    #[serde(default = "AdminSection::default_listen")]
    pub listen: String,
    /// CA bundles for admin clients. When set, the admin listener speaks TLS 1.3 and requires a
    /// client certificate that chains to one of them (and passes `[tls] crl`).
    #[serde(default)]
    pub client_ca: Vec<String>,
    /// SPIFFE ID patterns allowed to use the admin listener; empty allows any verified client.
    #[serde(default)]
    pub allow_spiffe: Vec<String>,
    /// Certificate and key of the admin listener; default: those of `[tls]`.
    #[serde(default)]
    pub cert: Option<String>,
    #[serde(default)]
    pub key: Option<String>,
    /// Host names (optionally with a port) clients may use for the admin listener besides its
    /// own address, e.g. a Service's DNS name. Requests naming any other host are refused.
    #[serde(default)]
    pub names: Vec<String>,
    /// Bearer tokens, one per line (`NAME TOKEN`, or a bare token), required on every admin
    /// request that changes something. Unset: no token is asked for.
    #[serde(default)]
    pub token_file: Option<String>,
    /// Admin connections open at once (handshakes included); more are closed at accept.
    #[serde(default = "AdminSection::default_max_connections")]
    pub max_connections: usize,
    /// Admin connections one source may hold; default a quarter of `max_connections`, `0`
    /// for no per-source limit.
    #[serde(default)]
    pub max_connections_per_source: Option<usize>,
    /// Time for the TLS handshake (with `client_ca`).
    #[serde(default = "AdminSection::default_timeout")]
    pub handshake_timeout: HumanDuration,
    /// Time for a request head to arrive, from the connection's start or the end of the
    /// request before.
    #[serde(default = "AdminSection::default_timeout")]
    pub header_read_timeout: HumanDuration,
    /// Time for a request body to arrive once its head has.
    #[serde(default = "AdminSection::default_timeout")]
    pub body_read_timeout: HumanDuration,
    /// A connection with no request in progress for this long is closed.
    #[serde(default = "AdminSection::default_idle_timeout")]
    pub idle_timeout: HumanDuration,
}

impl AdminSection {
    fn default_listen() -> String {
        "127.0.0.1:9901".into()
    }
    fn default_max_connections() -> usize {
        64
    }
    fn default_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(10))
    }
    fn default_idle_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(60))
    }
    /// `max_connections_per_source`, or a quarter of `max_connections` (at least 1).
    pub fn connections_per_source(&self) -> usize {
        self.max_connections_per_source
            .unwrap_or((self.max_connections / 4).max(1))
    }
}

impl Default for AdminSection {
    fn default() -> Self {
        Self {
            listen: Self::default_listen(),
            client_ca: Vec::new(),
            allow_spiffe: Vec::new(),
            cert: None,
            key: None,
            names: Vec::new(),
            token_file: None,
            max_connections: Self::default_max_connections(),
            max_connections_per_source: None,
            handshake_timeout: Self::default_timeout(),
            header_read_timeout: Self::default_timeout(),
            body_read_timeout: Self::default_timeout(),
            idle_timeout: Self::default_idle_timeout(),
        }
    }
}

/// `[log]`: where decision lines and diagnostics go.
#[derive(Debug, Clone, Deserialize)]
pub struct LogSection {
    /// "stdout", "stderr", "off", or a file path (appended to).
    #[serde(default = "LogSection::default_decisions")]
    pub decisions: String,
    /// Where admin actions go: "decisions" (the decision log's destination), "stdout",
    /// "stderr", "off", or a file path.
    #[serde(default = "LogSection::default_admin_actions")]
    pub admin_actions: String,
    /// Diagnostics format on stderr: "text" or "json".
    #[serde(default = "LogSection::default_format")]
    pub format: String,
    /// Diagnostics filter, in `RUST_LOG` syntax; `RUST_LOG` wins when set.
    #[serde(default = "LogSection::default_level")]
    pub level: String,
    /// Each decision line carries the facts it was decided on (`facts`), so that
    /// `vigil policy replay` can decide it again; on by default.
    #[serde(default = "LogSection::default_decision_facts")]
    pub decision_facts: bool,
}

impl LogSection {
    fn default_decisions() -> String {
        "stdout".into()
    }
    fn default_admin_actions() -> String {
        "decisions".into()
    }
    fn default_format() -> String {
        "text".into()
    }
    fn default_level() -> String {
        "info".into()
    }
    fn default_decision_facts() -> bool {
        true
    }
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            decisions: Self::default_decisions(),
            admin_actions: Self::default_admin_actions(),
            format: Self::default_format(),
            level: Self::default_level(),
            decision_facts: Self::default_decision_facts(),
        }
    }
}

/// `[audit]`: enforce decisions, or only log what would be denied.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AuditSection {
    /// "enforce" (default) or "audit".
    #[serde(default)]
    pub mode: Option<String>,
}

/// `[upstream]`: defaults for every route's upstream client.
#[derive(Debug, Clone, Deserialize)]
pub struct UpstreamSection {
    #[serde(default = "UpstreamSection::default_connect_timeout")]
    pub connect_timeout: HumanDuration,
    /// Time from sending the request to receiving the response headers; past it, 504.
    #[serde(default = "UpstreamSection::default_response_timeout")]
    pub response_timeout: HumanDuration,
    /// Pooled idle upstream connections are closed after this long.
    #[serde(default = "UpstreamSection::default_pool_idle_timeout")]
    pub pool_idle_timeout: HumanDuration,
    /// Idle pooled connections kept per upstream endpoint.
    #[serde(default = "UpstreamSection::default_pool_max_idle")]
    pub pool_max_idle_per_host: usize,
    /// Upstream host names are resolved again this often; every address is an endpoint.
    #[serde(default = "UpstreamSection::default_resolve_interval")]
    pub resolve_interval: HumanDuration,
}

impl UpstreamSection {
    fn default_connect_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(5))
    }
    fn default_response_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(60))
    }
    fn default_pool_idle_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(90))
    }
    fn default_pool_max_idle() -> usize {
        64
    }
    fn default_resolve_interval() -> HumanDuration {
        HumanDuration(Duration::from_secs(30))
    }
}

impl Default for UpstreamSection {
    fn default() -> Self {
        Self {
            connect_timeout: Self::default_connect_timeout(),
            response_timeout: Self::default_response_timeout(),
            pool_idle_timeout: Self::default_pool_idle_timeout(),
            pool_max_idle_per_host: Self::default_pool_max_idle(),
            resolve_interval: Self::default_resolve_interval(),
        }
    }
}

/// `[oidc]`: the OpenID Provider people log in with.
#[derive(Debug, Clone, Deserialize)]
pub struct OidcSection {
    /// Issuer URL; discovery is read from `<issuer>/.well-known/openid-configuration`.
    pub issuer: String,
    pub client_id: String,
    /// File holding the client secret (trailing newline ignored).
    #[serde(default)]
    pub client_secret_file: Option<String>,
    /// Environment variable holding the client secret.
    #[serde(default)]
    pub client_secret_env: Option<String>,
    /// Fixed redirect URL, for a single-host deployment only (the pending login lives in a
    /// host-only cookie, so a callback on another host cannot finish it). Default:
    /// `https://<request host>/.vigil/callback`; register every such URL with the provider.
    #[serde(default)]
    pub redirect_url: Option<String>,
    #[serde(default = "OidcSection::default_scopes")]
    pub scopes: Vec<String>,
    /// Claim holding the person's groups.
    #[serde(default = "OidcSection::default_groups_claim")]
    pub groups_claim: String,
    /// Claim holding the provider's risk level for the person.
    #[serde(default = "OidcSection::default_risk_claim")]
    pub risk_claim: String,
    /// `amr` values that count as multi-factor for `mfa = true` rules.
    #[serde(default = "OidcSection::default_mfa_amr")]
    pub mfa_amr: Vec<String>,
    /// Where the provider returns people after logout; a relative path is on the same host.
    #[serde(default = "OidcSection::default_post_logout")]
    pub post_logout_redirect_url: String,
    /// Also read claims from the userinfo endpoint at login.
    #[serde(default)]
    pub userinfo: bool,
    /// Signature algorithms accepted on ID and access tokens (asymmetric only).
    #[serde(default = "OidcSection::default_algorithms")]
    pub algorithms: Vec<String>,
    /// Clock difference tolerated on token times.
    #[serde(default = "OidcSection::default_skew")]
    pub clock_skew: HumanDuration,
    /// How long a started login may take.
    #[serde(default = "OidcSection::default_login_timeout")]
    pub login_timeout: HumanDuration,
    /// PEM bundle to verify the provider's TLS certificate with; default: the system's roots.
    #[serde(default)]
    pub ca: Option<String>,
    /// How often a discovered provider is checked (its discovery document and keys fetched
    /// again), so that an outage shows in `/readyz` and turns sign-ins into 503 before people
    /// are sent to a provider that is down; "0s" turns the check off (then only failed token
    /// exchanges reveal an outage).
    #[serde(default = "OidcSection::default_check_interval")]
    pub check_interval: HumanDuration,
}

impl OidcSection {
    fn default_check_interval() -> HumanDuration {
        HumanDuration(Duration::from_secs(30))
    }
    fn default_scopes() -> Vec<String> {
        vec!["openid".into(), "email".into(), "profile".into()]
    }
    fn default_groups_claim() -> String {
        "groups".into()
    }
    fn default_risk_claim() -> String {
        "risk".into()
    }
    fn default_mfa_amr() -> Vec<String> {
        [
            "mfa", "otp", "hwk", "swk", "sc", "fpt", "face", "iris", "retina", "vbm",
        ]
        .map(String::from)
        .to_vec()
    }
    fn default_post_logout() -> String {
        "/.vigil/logged-out".into()
    }
    fn default_algorithms() -> Vec<String> {
        ["RS256", "PS256", "ES256", "EdDSA"]
            .map(String::from)
            .to_vec()
    }
    fn default_skew() -> HumanDuration {
        HumanDuration(Duration::from_secs(60))
    }
    fn default_login_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(600))
    }
}

/// `[session]`: browser sessions after an OIDC login.
#[derive(Debug, Clone, Deserialize)]
pub struct SessionSection {
    /// One base64 32-byte key per line: the first seals, every key opens.
    pub keys_file: String,
    /// Absolute lifetime of a session.
    #[serde(default = "SessionSection::default_lifetime")]
    pub lifetime: HumanDuration,
    /// A session unused for this long ends.
    #[serde(default = "SessionSection::default_idle")]
    pub idle: HumanDuration,
}

impl SessionSection {
    fn default_lifetime() -> HumanDuration {
        HumanDuration(Duration::from_secs(8 * 3600))
    }
    fn default_idle() -> HumanDuration {
        HumanDuration(Duration::from_secs(3600))
    }
}

/// `[assertion]`: the signed JWT sent upstream in `X-Vigil-Assertion`.
#[derive(Debug, Clone, Deserialize)]
pub struct AssertionSection {
    /// PEM file of PKCS#8 P-256 private keys: the first signs, all are published at
    /// `/.vigil/jwks.json`.
    pub keys_file: String,
    /// `iss` of the assertions.
    #[serde(default = "AssertionSection::default_issuer")]
    pub issuer: String,
    #[serde(default = "AssertionSection::default_lifetime")]
    pub lifetime: HumanDuration,
}

impl AssertionSection {
    fn default_issuer() -> String {
        "vigil".into()
    }
    fn default_lifetime() -> HumanDuration {
        HumanDuration(Duration::from_secs(120))
    }
}

/// `[verify]`: continuous verification.
#[derive(Debug, Clone, Deserialize)]
pub struct VerifySection {
    /// How often a session's identity is confirmed with the provider (refresh token).
    #[serde(default = "VerifySection::default_interval")]
    pub interval: HumanDuration,
    /// How long the last good answer holds when the provider cannot be reached; after that,
    /// sessions due for verification are refused.
    #[serde(default = "VerifySection::default_max_stale")]
    pub max_stale: HumanDuration,
}

impl VerifySection {
    fn default_interval() -> HumanDuration {
        HumanDuration(Duration::from_secs(300))
    }
    fn default_max_stale() -> HumanDuration {
        HumanDuration(Duration::from_secs(600))
    }
}

impl Default for VerifySection {
    fn default() -> Self {
        Self {
            interval: Self::default_interval(),
            max_stale: Self::default_max_stale(),
        }
    }
}

/// `[devices]`: the device inventory (MDM export).
#[derive(Debug, Clone, Deserialize)]
pub struct DevicesSection {
    /// A JSON file (re-read when it changes) or an `https://` URL (polled).
    pub source: String,
    /// How records match certificates: "fingerprint" (SHA-256, default), "serial" or "subject"
    /// (the common name).
    #[serde(default = "DevicesSection::default_key")]
    pub key: String,
    /// How often the source is checked.
    #[serde(default = "DevicesSection::default_refresh")]
    pub refresh: HumanDuration,
    /// How long the last good data holds when the source cannot be read; then every device
    /// counts as unknown.
    #[serde(default = "DevicesSection::default_max_stale")]
    pub max_stale: HumanDuration,
    /// PEM bundle to verify an https source with.
    #[serde(default)]
    pub ca: Option<String>,
}

impl DevicesSection {
    fn default_key() -> String {
        "fingerprint".into()
    }
    fn default_refresh() -> HumanDuration {
        HumanDuration(Duration::from_secs(30))
    }
    fn default_max_stale() -> HumanDuration {
        HumanDuration(Duration::from_secs(900))
    }
}

/// `[policy]`: what every route's Rego policy shares.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PolicySection {
    /// JSON documents loaded under `data`, as paths or file-name patterns (`data/*.json`);
    /// objects are merged, a key defined twice is an error.
    #[serde(default)]
    pub data: Vec<String>,
    /// Bytecode instructions one evaluation may run. Default 100000.
    #[serde(default)]
    pub max_instructions: Option<u64>,
    /// Time one evaluation may take. Default 5ms.
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
}

/// `[risk]`: signal weights and level thresholds.
#[derive(Debug, Clone, Deserialize)]
pub struct RiskSection {
    #[serde(default = "RiskSection::forty")]
    pub device_unknown: u32,
    #[serde(default = "RiskSection::forty")]
    pub device_noncompliant: u32,
    #[serde(default = "RiskSection::twenty")]
    pub stale_check_in: u32,
    #[serde(default = "RiskSection::twenty")]
    pub untrusted_network: u32,
    #[serde(default = "RiskSection::thirty")]
    pub idp_risk_medium: u32,
    #[serde(default = "RiskSection::sixty")]
    pub idp_risk_high: u32,
    #[serde(default = "RiskSection::ten")]
    pub recent_denial: u32,
    #[serde(default = "RiskSection::fifteen")]
    pub first_seen_device: u32,
    /// Score from which the level is medium.
    #[serde(default = "RiskSection::thirty")]
    pub medium: u32,
    /// Score from which the level is high.
    #[serde(default = "RiskSection::sixty")]
    pub high: u32,
    /// Source networks that do not count as a signal; empty: the network is not a signal.
    #[serde(default)]
    pub trusted_networks: Vec<String>,
    #[serde(default = "RiskSection::day")]
    pub check_in_max_age: HumanDuration,
    #[serde(default = "RiskSection::five_minutes")]
    pub denial_window: HumanDuration,
    /// A `step_up` action is satisfied by a multi-factor sign-in at most this old.
    #[serde(default = "RiskSection::five_minutes")]
    pub step_up_max_age: HumanDuration,
    /// A MaxMind-format country (or city) database, for the country signal.
    #[serde(default)]
    pub geoip_database: Option<String>,
    /// ISO 3166 country codes sources may be in; others add `country_not_allowed`.
    #[serde(default)]
    pub allowed_countries: Vec<String>,
    #[serde(default = "RiskSection::forty")]
    pub country_not_allowed: u32,
    /// Added when the database does not know the source (private addresses, say). Default 0.
    #[serde(default)]
    pub country_unknown: u32,
}

impl RiskSection {
    fn ten() -> u32 {
        10
    }
    fn fifteen() -> u32 {
        15
    }
    fn twenty() -> u32 {
        20
    }
    fn thirty() -> u32 {
        30
    }
    fn forty() -> u32 {
        40
    }
    fn sixty() -> u32 {
        60
    }
    fn day() -> HumanDuration {
        HumanDuration(Duration::from_secs(86400))
    }
    fn five_minutes() -> HumanDuration {
        HumanDuration(Duration::from_secs(300))
    }
}

/// A route's actions per risk level.
#[derive(Debug, Clone, Deserialize)]
pub struct RiskActionsSection {
    #[serde(default)]
    pub low: Option<String>,
    #[serde(default)]
    pub medium: Option<String>,
    #[serde(default)]
    pub high: Option<String>,
}

/// `[alerts]`: where alert events go besides the log. Absent, or without `webhook`: alerts
/// are only logged (target `vigil::alert`).
#[derive(Debug, Clone, Deserialize)]
pub struct AlertsSection {
    /// An `https://` URL each alert is POSTed to as a signed JSON document.
    #[serde(default)]
    pub webhook: Option<String>,
    /// A PEM file of the CAs the webhook's certificate must chain to; default: the system's.
    #[serde(default)]
    pub ca: Option<String>,
    /// A file holding the HMAC-SHA256 key (at least 16 bytes once trimmed); required with
    /// `webhook`.
    #[serde(default)]
    pub secret_file: Option<String>,
    /// Alerts waiting for delivery at most; beyond it the oldest is dropped.
    #[serde(default = "AlertsSection::default_queue")]
    pub queue: usize,
    /// Attempts after the first, on connection errors, timeouts, 5xx and 429.
    #[serde(default = "AlertsSection::default_retries")]
    pub retries: u32,
    /// Each attempt's limit, connecting included.
    #[serde(default = "AlertsSection::default_timeout")]
    pub timeout: HumanDuration,
    /// The wait before the first retry, doubled for each next one.
    #[serde(default = "AlertsSection::default_backoff")]
    pub backoff: HumanDuration,
    /// The longest wait between two attempts.
    #[serde(default = "AlertsSection::default_backoff_max")]
    pub backoff_max: HumanDuration,
}

impl AlertsSection {
    fn default_queue() -> usize {
        1000
    }
    fn default_retries() -> u32 {
        5
    }
    fn default_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(5))
    }
    fn default_backoff() -> HumanDuration {
        HumanDuration(Duration::from_millis(200))
    }
    fn default_backoff_max() -> HumanDuration {
        HumanDuration(Duration::from_secs(30))
    }
}

/// `[state]`: where the run-time state that replicas share is kept (revocations, logouts,
/// grants and access requests, blocks, detector counts, the risk engine's memory).
#[derive(Debug, Clone, Deserialize)]
pub struct StateSection {
    /// `"memory"` (one replica, the default) or `"redis"`.
    #[serde(default = "StateSection::default_backend")]
    pub backend: String,
    /// `redis://` or `rediss://` (TLS) `HOST:PORT/DB`; `redis+sentinel://H1:P1,H2:P2/MASTER`
    /// asks Sentinels for the master; `redis+cluster://H1:P1,H2:P2` talks to a Cluster.
    #[serde(default)]
    pub url: Option<String>,
    /// The ACL user.
    #[serde(default)]
    pub username: Option<String>,
    /// A file whose first line is the password.
    #[serde(default)]
    pub password_file: Option<String>,
    /// A PEM file of the CAs Redis's certificate must chain to (`rediss://`); default: the
    /// system's.
    #[serde(default)]
    pub ca: Option<String>,
    /// Prefix of every key, so that several fleets can share one Redis.
    #[serde(default = "StateSection::default_prefix")]
    pub prefix: String,
    /// How long decisions may rest on the last known state while Redis cannot be reached.
    #[serde(default = "StateSection::default_max_stale")]
    pub max_stale: HumanDuration,
    /// The longest a request or an admin call waits for Redis.
    #[serde(default = "StateSection::default_timeout")]
    pub timeout: HumanDuration,
}

impl StateSection {
    fn default_backend() -> String {
        "memory".into()
    }
    fn default_prefix() -> String {
        "vigil".into()
    }
    fn default_max_stale() -> HumanDuration {
        HumanDuration(Duration::from_secs(10))
    }
    fn default_timeout() -> HumanDuration {
        HumanDuration(Duration::from_millis(500))
    }
}

/// `[detectors]`: sliding-window detectors and what they do when they fire. A detector runs
/// when its table is written (`[detectors.denials]`, ...); every key of it has a default.
#[derive(Debug, Clone, Deserialize)]
pub struct DetectorsSection {
    /// Keys (users, devices, addresses) each detector's table holds at most; a full table
    /// drops its least recently seen half. Default 100000.
    #[serde(default = "DetectorsSection::default_table_size")]
    pub table_size: usize,
    /// Denials by policy per user, device and address.
    #[serde(default)]
    pub denials: Option<DetectorSection>,
    /// Failed sign-ins (bad callbacks) per address and device.
    #[serde(default)]
    pub failed_logins: Option<DetectorSection>,
    /// Distinct source addresses per person (else per client certificate).
    #[serde(default)]
    pub addresses: Option<DetectorSection>,
    /// Distinct countries per person (else per client certificate); needs `[risk]
    /// geoip_database`.
    #[serde(default)]
    pub countries: Option<DetectorSection>,
    /// Requests refused for a revoked session, user, device or token subject.
    #[serde(default)]
    pub revoked: Option<DetectorSection>,
}

impl DetectorsSection {
    fn default_table_size() -> usize {
        100_000
    }
}

/// One detector; each default depends on the detector (see docs/configuration.md).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct DetectorSection {
    /// The detector fires when a count in `window` goes over this.
    #[serde(default)]
    pub threshold: Option<u32>,
    #[serde(default)]
    pub window: Option<HumanDuration>,
    /// Whom events are counted for: `user`, `device`, `address`.
    #[serde(default)]
    pub per: Option<Vec<String>>,
    /// `block` or `raise_risk`.
    #[serde(default)]
    pub action: Option<String>,
    /// How long a block lasts.
    #[serde(default)]
    pub block_for: Option<HumanDuration>,
    /// What `raise_risk` adds to the risk score.
    #[serde(default)]
    pub weight: Option<u32>,
    /// How long a raised risk lasts.
    #[serde(default)]
    pub raise_for: Option<HumanDuration>,
}

/// `[authz]`: Vigil's decision offered as a service to other enforcement points (nginx
/// `auth_request`, Envoy's ext_authz HTTP service, Traefik's forwardAuth), on the proxy
/// listener. Absent: no such endpoint, and the path is an ordinary `/.vigil/` path.
#[derive(Debug, Clone, Deserialize)]
pub struct AuthzSection {
    /// Where the decisions are asked for, on any host of the proxy listener. A request for
    /// exactly this path names the request to decide in headers (nginx, Traefik); a request
    /// below it is the request to decide itself, its path after this prefix (Envoy).
    /// Default `/.vigil/authz`.
    #[serde(default = "AuthzSection::default_path")]
    pub path: String,
    /// The enforcement points that may ask, each known by its client certificate. At least
    /// one; nobody else is answered as one.
    #[serde(default)]
    pub enforcement_points: Vec<EnforcementPointSection>,
}

impl AuthzSection {
    fn default_path() -> String {
        "/.vigil/authz".into()
    }
}

/// One `[[authz.enforcement_points]]`: exactly one of `spiffe` and `fingerprint`.
#[derive(Debug, Clone, Deserialize)]
pub struct EnforcementPointSection {
    /// Its name in the decision log (`enforcement_point`) and the metrics.
    pub name: String,
    /// The SPIFFE ID (or pattern, `*` for one segment) of its client certificate.
    #[serde(default)]
    pub spiffe: Option<String>,
    /// The SHA-256 fingerprint of its client certificate, hex (colons allowed).
    #[serde(default)]
    pub fingerprint: Option<String>,
}

/// A route's `upstream`: one URL or a list.
#[derive(Debug, Clone)]
pub enum UpstreamUrls {
    One(String),
    Many(Vec<UpstreamUrl>),
}

impl UpstreamUrls {
    /// Every URL with its weight.
    pub fn list(&self) -> Vec<(&str, u32)> {
        match self {
            UpstreamUrls::One(url) => vec![(url.as_str(), 1)],
            UpstreamUrls::Many(urls) => urls.iter().map(|u| (u.url.as_str(), u.weight)).collect(),
        }
    }
}

/// Read as a sequence (what the schema's key walk needs to see), taking a lone string too.
impl<'de> Deserialize<'de> for UpstreamUrls {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Urls;
        impl<'de> serde::de::Visitor<'de> for Urls {
            type Value = UpstreamUrls;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an upstream URL or a list of them")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(UpstreamUrls::One(v.to_owned()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut urls = Vec::new();
                while let Some(url) = seq.next_element()? {
                    urls.push(url);
                }
                Ok(UpstreamUrls::Many(urls))
            }
        }
        d.deserialize_seq(Urls)
    }
}

/// One URL of a route's upstream list: `"http://..."` or `{ url = "http://...", weight = 2 }`
/// (weight 1 to 100, default 1: an endpoint of weight 2 gets about twice the requests).
#[derive(Debug, Clone)]
pub struct UpstreamUrl {
    pub url: String,
    pub weight: u32,
}

/// Read as a table (what the schema's key walk needs to see), taking a lone string too.
impl<'de> Deserialize<'de> for UpstreamUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Url;
        impl<'de> serde::de::Visitor<'de> for Url {
            type Value = UpstreamUrl;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an upstream URL or { url = \"...\", weight = N }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(UpstreamUrl {
                    url: v.to_owned(),
                    weight: 1,
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let (mut url, mut weight) = (None, 1);
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "url" => url = Some(map.next_value::<String>()?),
                        "weight" => weight = map.next_value::<u32>()?,
                        other => {
                            return Err(serde::de::Error::unknown_field(other, URL_FIELDS));
                        }
                    }
                }
                let url = url.ok_or_else(|| serde::de::Error::missing_field("url"))?;
                Ok(UpstreamUrl { url, weight })
            }
        }
        d.deserialize_struct("UpstreamUrl", URL_FIELDS, Url)
    }
}

const URL_FIELDS: &[&str] = &["url", "weight"];

/// A route's `health = { path, interval, unhealthy, healthy }`.
#[derive(Debug, Clone, Deserialize)]
pub struct HealthSection {
    /// Path checked with a GET; 2xx and 3xx pass.
    pub path: String,
    /// Default 5s; a check that takes longer fails.
    #[serde(default = "HealthSection::default_interval")]
    pub interval: HumanDuration,
    /// Failed checks in a row that take an endpoint out. Default 3.
    #[serde(default = "HealthSection::default_unhealthy")]
    pub unhealthy: u32,
    /// Passed checks in a row that bring it back. Default 2.
    #[serde(default = "HealthSection::default_healthy")]
    pub healthy: u32,
}

impl HealthSection {
    fn default_interval() -> HumanDuration {
        HumanDuration(Duration::from_secs(5))
    }
    fn default_unhealthy() -> u32 {
        3
    }
    fn default_healthy() -> u32 {
        2
    }
}

/// A route's `outlier = { consecutive_failures, base_ejection, max_ejection }`.
#[derive(Debug, Clone, Deserialize)]
pub struct OutlierSection {
    /// Connect failures or 5xx answers in a row that eject an endpoint; 0 turns ejection
    /// off. Default 5.
    #[serde(default = "OutlierSection::default_failures")]
    pub consecutive_failures: u32,
    /// The first ejection's length; each one that follows within `max_ejection` is twice as
    /// long. Default 10s.
    #[serde(default = "OutlierSection::default_base")]
    pub base_ejection: HumanDuration,
    /// The longest ejection. Default 5m.
    #[serde(default = "OutlierSection::default_max")]
    pub max_ejection: HumanDuration,
}

impl OutlierSection {
    fn default_failures() -> u32 {
        5
    }
    fn default_base() -> HumanDuration {
        HumanDuration(Duration::from_secs(10))
    }
    fn default_max() -> HumanDuration {
        HumanDuration(Duration::from_secs(300))
    }
}

impl Default for OutlierSection {
    fn default() -> Self {
        Self {
            consecutive_failures: Self::default_failures(),
            base_ejection: Self::default_base(),
            max_ejection: Self::default_max(),
        }
    }
}

/// One `[[route]]`.
#[derive(Debug, Clone, Deserialize)]
pub struct RouteSection {
    pub name: String,
    /// Exact host, `*.example.com` (one label), or `*` for any host.
    pub host: String,
    /// Path prefix, matched on whole segments. Default "/".
    #[serde(default)]
    pub path: Option<String>,
    /// `http://host:port` or `https://host:port`, optionally with a base path; or a list of
    /// them (each a URL or `{ url, weight }`), all with the same scheme and path.
    pub upstream: UpstreamUrls,
    /// "p2c" (default): the less loaded of two endpoints picked at random; "round_robin".
    #[serde(default)]
    pub balance: Option<String>,
    /// Active health checks of the route's endpoints; none by default.
    #[serde(default)]
    pub health: Option<HealthSection>,
    /// Passive outlier ejection; on by default (see [`OutlierSection`]).
    #[serde(default)]
    pub outlier: Option<OutlierSection>,
    /// Connections (and so HTTP/1.1 requests in flight) per endpoint; default unbounded.
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Requests waiting for an endpoint to take them; beyond it, 503. Default 1024.
    #[serde(default)]
    pub max_pending: Option<usize>,
    /// Requests one upstream connection carries before it is closed; default unbounded.
    #[serde(default)]
    pub max_requests_per_connection: Option<u32>,
    /// Further attempts a request may get where that is safe; default 2, 0 turns it off.
    #[serde(default)]
    pub retries: Option<u32>,
    /// "none": the client certificate is the identity; "oidc": people log in with the provider
    /// (on top of their device certificate); "bearer": services present an access token from
    /// the provider (on top of their workload certificate).
    #[serde(default)]
    pub login: Option<String>,
    /// `login = "bearer"`: the audience access tokens must be issued for.
    #[serde(default)]
    pub bearer_audience: Option<String>,
    /// `login = "bearer"`: scopes every access token must carry.
    #[serde(default)]
    pub bearer_scopes: Vec<String>,
    /// Extra identity headers for legacy upstreams: header name = claim ("sub", "email",
    /// "name", "groups", "device", "workload" or any claim). Stripped from client requests.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub allow: Vec<RuleSection>,
    /// Send the client's Host upstream instead of the upstream's authority. Default false.
    #[serde(default)]
    pub preserve_host: bool,
    /// PEM bundle to verify an `https://` upstream with; default: the system's roots.
    #[serde(default)]
    pub upstream_ca: Option<String>,
    /// Client certificate and key Vigil presents to an `https://` upstream (mTLS).
    #[serde(default)]
    pub upstream_cert: Option<String>,
    #[serde(default)]
    pub upstream_key: Option<String>,
    /// Override `[upstream] connect_timeout` for this route.
    #[serde(default)]
    pub connect_timeout: Option<HumanDuration>,
    /// Override `[upstream] response_timeout` for this route.
    #[serde(default)]
    pub response_timeout: Option<HumanDuration>,
    /// Override `[server] max_body_bytes` for this route.
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    /// Upgrade protocols the route may switch to (tunnels). Default `["websocket"]`; `[]`
    /// turns upgrades off. `h2c`, `h2`, `HTTP` and `TLS` are refused.
    #[serde(default)]
    pub upgrades: Option<Vec<String>>,
    /// Actions per risk level: "allow", "read_only", "step_up", "deny". Default with `[risk]`:
    /// low = allow, medium = read_only, high = deny.
    #[serde(default)]
    pub risk: Option<RiskActionsSection>,
    /// Audit mode for this route alone: true logs its would-be denials and lets them
    /// through, false enforces them whatever `[audit] mode` says. Default: `[audit] mode`.
    #[serde(default)]
    pub audit: Option<bool>,
    /// A Rego policy file: with `allow` rules, a request must be allowed by a rule and by
    /// the policy; without, the policy alone decides.
    #[serde(default)]
    pub policy: Option<String>,
    /// The rule whose value decides. Default `data.<package>.allow`.
    #[serde(default)]
    pub policy_query: Option<String>,
    /// A policy evaluated beside `policy` on every request, never changing the answer: its
    /// disagreements are logged and counted.
    #[serde(default)]
    pub shadow_policy: Option<String>,
    /// Just-in-time access on this route: the longest grant and who approves requests.
    #[serde(default)]
    pub grants: Option<GrantsSection>,
    /// The shadow policy's rule. Default `data.<package>.allow`.
    #[serde(default)]
    pub shadow_policy_query: Option<String>,
    /// With `[state] backend = "redis"`: refuse this route's requests once the shared state
    /// is older than `[state] max_stale` (Redis unreachable), rather than decide them on what
    /// this replica knew last.
    #[serde(default)]
    pub require_shared_state: bool,
}

/// One entry of a route's `allow` list: every condition given must hold (AND); the list is OR.
/// An empty rule allows every client with a valid certificate; write one on purpose.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RuleSection {
    /// SPIFFE ID patterns: `*` matches within one path segment, `**` across segments.
    #[serde(default)]
    pub spiffe: Vec<String>,
    /// Patterns on the certificate subject's common name.
    #[serde(default)]
    pub cert_subject: Vec<String>,
    /// Patterns on any DNS, email or URI SAN of the certificate.
    #[serde(default)]
    pub cert_san: Vec<String>,
    /// SHA-256 fingerprints (hex, colons optional) of allowed certificates.
    #[serde(default)]
    pub cert_fingerprint: Vec<String>,
    /// HTTP methods, upper case.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Path patterns on the normalised path: `*` within a segment, `**` across; `/api/**` covers `/api` too.
    #[serde(default)]
    pub paths: Vec<String>,
    /// Source networks in CIDR form.
    #[serde(default)]
    pub networks: Vec<String>,
    /// People (or bearer subjects) by email or subject; patterns.
    #[serde(default)]
    pub users: Vec<String>,
    /// Email domains, like "example.com".
    #[serde(default)]
    pub email_domains: Vec<String>,
    /// Any of these groups.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Require a multi-factor login (`amr`).
    #[serde(default)]
    pub mfa: Option<bool>,
    /// Claim name = allowed values (any of).
    #[serde(default)]
    pub claims: std::collections::BTreeMap<String, Vec<String>>,
    /// What the inventory must say about the device: "compliant", "managed", "known", "any".
    #[serde(default)]
    pub device: Option<String>,
    /// Minimum OS versions by OS name, like { macOS = "14.0" }; other OSes are refused.
    #[serde(default)]
    pub min_os: std::collections::BTreeMap<String, String>,
    /// The device's last check-in must be at most this old.
    #[serde(default)]
    pub max_check_in_age: Option<HumanDuration>,
    /// Request header name = patterns, one of which a value of the header must match.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, Vec<String>>,
    /// Local time of day, like "08:00-19:00" (may cross midnight: "22:00-06:00").
    #[serde(default)]
    pub hours: Option<String>,
    /// Days of the week, like ["mon", "tue", "wed", "thu", "fri"].
    #[serde(default)]
    pub days: Vec<String>,
    /// IANA time zone of `hours` and `days`, like "Europe/Paris". Default "UTC".
    #[serde(default)]
    pub timezone: Option<String>,
    /// A just-in-time grant for the subject on the route must be in force.
    #[serde(default)]
    pub grant: Option<bool>,
}

/// A route's `grants = { max = "4h", approvers = { groups = ["sec-oncall"] } }`: just-in-time
/// access may be granted on it, for at most `max`, approved by the approvers.
#[derive(Debug, Clone, Deserialize)]
pub struct GrantsSection {
    /// The longest a grant may last.
    pub max: HumanDuration,
    /// What the request form offers first. Default: the shorter of one hour and `max`.
    #[serde(default)]
    pub default: Option<HumanDuration>,
    #[serde(default)]
    pub approvers: ApproversSection,
}

/// Who may approve access requests: people in any of `groups`, or named in `users` (email or
/// subject).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ApproversSection {
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub users: Vec<String>,
}
