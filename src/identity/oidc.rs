//! The OpenID Provider: discovery, the authorization-code flow with PKCE, ID token
//! verification, refresh, and verification of bearer access tokens.
//!
//! Discovery runs in the background with backoff; until it has succeeded the provider is not
//! ready (`/readyz` says so) and routes that need a login answer 503: an unreachable provider is
//! never an allow. Once discovered, the provider is checked again every `check_interval`, and
//! every exchange with its token endpoint says whether it answered: while it does not, it is
//! *down* (see [`Provider::status`]), sign-ins answer 503 instead of sending people to it, and
//! it is checked with backoff until it answers again. Signing keys are refetched when a token
//! names a key the cached set lacks, at most once per [`JWKS_REFRESH_INTERVAL`].

use super::seal::{KeyRing, Purpose};
use super::session::{LOGIN_COOKIE_PREFIX, Session, cookie, set_cookie};
use arc_swap::ArcSwapOption;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderValue;
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreJsonWebKeySet, CoreJwsSigningAlgorithm,
    CoreProviderMetadata, CoreTokenResponse,
};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointMaybeSet, EndpointNotSet,
    EndpointSet, Nonce, OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl,
    RefreshToken, Scope, TokenResponse,
};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// The shortest time between two refetches of the provider's keys.
pub const JWKS_REFRESH_INTERVAL: Duration = Duration::from_secs(30);

type Client = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// The longest a logout's refresh-token revocation may take; it runs off the response path.
pub const REVOCATION_TIMEOUT: Duration = Duration::from_secs(5);

/// `[oidc]`, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub issuer: String,
    pub client_id: String,
    pub client_secret: String,
    /// Fixed redirect URL; `None` means `https://<request host>/.vigil/callback`.
    pub redirect_url: Option<String>,
    pub scopes: Vec<String>,
    pub groups_claim: String,
    pub risk_claim: String,
    /// Extra claims kept in the session because rules or headers use them.
    pub keep_claims: Vec<String>,
    /// `amr` values that count as multi-factor.
    pub mfa_amr: Vec<String>,
    /// Where the provider sends people after logout; relative means on the request's host.
    pub post_logout_redirect: String,
    pub userinfo: bool,
    pub algorithms: Vec<CoreJwsSigningAlgorithm>,
    pub clock_skew: Duration,
    pub login_timeout: Duration,
    /// How often a discovered provider is checked; zero: never (only token exchanges tell).
    pub check_interval: Duration,
    /// PEM bundle to trust for the provider, instead of the system's roots.
    pub ca: Option<Vec<u8>>,
}

/// The asymmetric algorithms an ID token or access token may be signed with. `none` and the
/// HMAC family are never accepted: an HMAC "signed" with the public key is a classic forgery.
pub fn algorithm(name: &str) -> Option<CoreJwsSigningAlgorithm> {
    use CoreJwsSigningAlgorithm as A;
    Some(match name {
        "RS256" => A::RsaSsaPkcs1V15Sha256,
        "RS384" => A::RsaSsaPkcs1V15Sha384,
        "RS512" => A::RsaSsaPkcs1V15Sha512,
        "PS256" => A::RsaSsaPssSha256,
        "PS384" => A::RsaSsaPssSha384,
        "PS512" => A::RsaSsaPssSha512,
        "ES256" => A::EcdsaP256Sha256,
        "ES384" => A::EcdsaP384Sha384,
        "EdDSA" => A::EdDsa,
        _ => return Option::None,
    })
}

struct Discovered {
    client: Client,
    /// The `revocation_endpoint` (RFC 7009), when discovery advertises one.
    revocation: Option<String>,
    end_session: Option<String>,
    userinfo: Option<String>,
    /// The same keys in jsonwebtoken's form, for bearer tokens.
    jwks: jsonwebtoken::jwk::JwkSet,
    fetched: Instant,
}

/// One configured provider; shared across reloads while its settings are unchanged.
pub struct Provider {
    pub settings: Settings,
    http: reqwest::Client,
    discovered: ArcSwapOption<Discovered>,
    refreshing: tokio::sync::Mutex<()>,
    started: AtomicBool,
    reach: Mutex<Reach>,
    /// Wakes the background check early: a request found the provider down.
    wake: Arc<tokio::sync::Notify>,
}

/// What the last exchanges with the provider said. Written by discovery, the background check
/// and every token exchange; a lock held for a few assignments, never across an await.
#[derive(Debug, Default, Clone)]
struct Reach {
    /// Unix time of the last answer from the provider.
    last_success: Option<i64>,
    /// Unix time and text of the last failure to get one.
    last_error: Option<(i64, String)>,
    /// Unix time of the first failure since the last answer; `None` while it answers.
    down_since: Option<i64>,
}

/// The provider's state, as `/readyz` and the metrics show it.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub issuer: String,
    /// Sign-ins can start: discovered, and answering.
    pub ready: bool,
    /// The discovery document and keys have been fetched at least once (bearer tokens can be
    /// verified with them even while the provider is down).
    pub discovered: bool,
    /// The last exchange with the provider got an answer.
    pub reachable: bool,
    /// Unix time of the last answer from the provider.
    pub last_success: Option<i64>,
    /// Why the last exchange that failed failed, and when (Unix time).
    pub last_error: Option<String>,
    pub last_error_at: Option<i64>,
    /// Unix time of the first failure of the outage in progress.
    pub unreachable_since: Option<i64>,
}

/// The longest wait between two checks of a provider that is down (or not discovered yet).
const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("issuer", &self.settings.issuer)
            .field("discovered", &self.is_ready())
            .finish()
    }
}

/// What went wrong in a login, with what the person is told.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("the identity provider is not available yet")]
    NotReady,
    /// Discovered once, but its last exchanges got no answer: a sign-in would send the person
    /// to a provider that is down.
    #[error("the identity provider cannot be reached (since {since}); try again in a moment")]
    Down { since: String },
    #[error("the sign-in link is stale or was already used; start again")]
    NoPendingLogin,
    #[error("the sign-in response does not match this browser's sign-in")]
    StateMismatch,
    #[error("the sign-in took too long; start again")]
    Expired,
    /// A second callback for a `state` whose first callback was already handled (a replayed
    /// callback URL with a copy of the pending-login cookie, or a reloaded callback page).
    #[error("this sign-in response was already used (state replayed); start again")]
    Replayed,
    #[error("the identity provider refused the sign-in: {0}")]
    Refused(String),
    #[error("the identity provider could not be reached: {0}")]
    Unreachable(String),
    #[error("the identity provider's answer was not acceptable: {0}")]
    BadToken(String),
}

impl From<&LoginError> for crate::error::Refusal {
    /// A provider that cannot be reached is unavailable; anything else about a login is the
    /// client's to fix.
    fn from(e: &LoginError) -> Self {
        match e.status() {
            http::StatusCode::SERVICE_UNAVAILABLE | http::StatusCode::BAD_GATEWAY => {
                crate::error::Refusal::Unavailable(e.to_string())
            }
            _ => crate::error::Refusal::Unauthorized(e.to_string()),
        }
    }
}

impl LoginError {
    pub fn status(&self) -> http::StatusCode {
        use http::StatusCode;
        match self {
            LoginError::NotReady | LoginError::Down { .. } => StatusCode::SERVICE_UNAVAILABLE,
            LoginError::Unreachable(_) => StatusCode::BAD_GATEWAY,
            LoginError::BadToken(_) => StatusCode::UNAUTHORIZED,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// A login in progress, sealed into a short-lived cookie named after its `state`.
#[derive(Debug, Serialize, Deserialize)]
struct Pending {
    state: String,
    nonce: String,
    verifier: String,
    return_to: String,
    host: String,
    created: i64,
}

/// A started login: where to send the browser, and the cookie to set.
pub struct Redirect {
    pub location: String,
    pub cookie: HeaderValue,
}

/// A finished login.
pub struct Completed {
    pub session: Session,
    pub return_to: String,
    pub clear_cookie: HeaderValue,
}

/// How many used states [`UsedStates`] holds at most.
pub const USED_STATES_CAP: usize = 65_536;

/// Sign-in `state`s whose callback was handled, each kept until the pending login it belongs
/// to would have expired anyway (`created + login_timeout`), so that a callback cannot be
/// replayed with a copy of the pending-login cookie. Only states of a genuine pending login
/// (a cookie sealed by Vigil, matching the callback's `state` and host) are recorded, so
/// every entry costs a client certificate and a sign-in start.
///
/// At [`USED_STATES_CAP`] the oldest entry is dropped (with a warning, at most once a minute):
/// refusing new sign-ins instead would let whoever fills the record lock everyone out. A
/// dropped state is the one used longest ago, whose authorization code the provider has
/// long since used or expired (codes are single use), so a replay of it still fails at the
/// code exchange; only the clear "already used" refusal is lost for it.
pub struct UsedStates {
    inner: Mutex<Used>,
    cap: usize,
}

#[derive(Default)]
struct Used {
    /// SHA-256 of the state -> until (Unix seconds).
    by_state: HashMap<[u8; 32], i64>,
    /// The same entries in the order they were used.
    order: VecDeque<([u8; 32], i64)>,
    dropped: u64,
    warned: Option<Instant>,
}

impl Default for UsedStates {
    fn default() -> Self {
        Self::with_cap(USED_STATES_CAP)
    }
}

impl UsedStates {
    pub fn with_cap(cap: usize) -> Self {
        Self {
            inner: Mutex::new(Used::default()),
            cap: cap.max(1),
        }
    }

    /// Records `state` as used until `until`; `false` when it was already used (and has not
    /// expired since).
    pub fn use_up(&self, state: &str, until: i64, now: i64) -> bool {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, state.as_bytes());
        let mut key = [0u8; 32];
        key.copy_from_slice(digest.as_ref());
        // A poisoned lock means a panic while holding it; nothing below panics, but refuse
        // rather than forget what was used.
        let Ok(mut used) = self.inner.lock() else {
            return false;
        };
        let used = &mut *used;
        while let Some((old, at)) = used.order.front().copied() {
            if at > now {
                break;
            }
            used.order.pop_front();
            used.by_state.remove(&old);
        }
        if used.by_state.get(&key).is_some_and(|at| *at > now) {
            return false;
        }
        while used.order.len() >= self.cap {
            if let Some((old, _)) = used.order.pop_front() {
                used.by_state.remove(&old);
                used.dropped += 1;
            }
        }
        if used.dropped > 0
            && used
                .warned
                .is_none_or(|w| w.elapsed() >= Duration::from_secs(60))
        {
            tracing::warn!(
                cap = self.cap,
                dropped = used.dropped,
                "too many sign-in callbacks within login_timeout: the oldest used states are forgotten (their replays are left to the provider's single use of codes)"
            );
            used.dropped = 0;
            used.warned = Some(Instant::now());
        }
        used.by_state.insert(key, until);
        used.order.push_back((key, until));
        true
    }

    pub fn len(&self) -> usize {
        self.inner.lock().map(|u| u.by_state.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Claims of a verified bearer access token.
#[derive(Debug, Clone)]
pub struct BearerClaims {
    pub sub: String,
    pub client_id: Option<String>,
    pub scopes: Vec<String>,
    pub claims: serde_json::Map<String, serde_json::Value>,
}

impl Provider {
    pub fn new(settings: Settings) -> Result<Self, String> {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let tls = crate::tls::outbound::for_vigil(settings.ca.as_deref(), "oidc.ca")?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| format!("HTTP client for the provider: {e}"))?;
        Ok(Self {
            settings,
            http,
            discovered: ArcSwapOption::empty(),
            refreshing: tokio::sync::Mutex::new(()),
            started: AtomicBool::new(false),
            reach: Mutex::new(Reach::default()),
            wake: Arc::new(tokio::sync::Notify::new()),
        })
    }

    /// Whether the discovery document and keys have been fetched (at least once).
    pub fn is_ready(&self) -> bool {
        self.discovered.load().is_some()
    }

    fn reach(&self) -> Reach {
        self.reach.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// The provider answered.
    fn answered(&self) {
        if let Ok(mut reach) = self.reach.lock() {
            reach.last_success = Some(super::now());
            reach.down_since = None;
        }
    }

    /// The provider could not be reached (or its answer was unusable): it is down until it
    /// answers again.
    fn failed(&self, error: &str) {
        let now = super::now();
        if let Ok(mut reach) = self.reach.lock() {
            reach.last_error = Some((now, error.to_owned()));
            reach.down_since.get_or_insert(now);
        }
    }

    /// What a token exchange says about the provider: a connection that failed means it is
    /// down (and the background check looks at once); any answer, a refusal included, that
    /// it is up.
    fn noted<T>(&self, result: Result<T, LoginError>) -> Result<T, LoginError> {
        match &result {
            Err(LoginError::Unreachable(e)) => {
                self.failed(e);
                self.wake.notify_one();
            }
            Ok(_) | Err(LoginError::Refused(_)) => self.answered(),
            Err(_) => {}
        }
        result
    }

    /// Whether a sign-in can start now: `NotReady` before discovery, `Down` while the
    /// provider does not answer. Never an allow: only whether to send a person to it.
    pub fn available(&self) -> Result<(), LoginError> {
        if !self.is_ready() {
            return Err(LoginError::NotReady);
        }
        match self.reach().down_since {
            Some(since) => Err(LoginError::Down {
                since: unix_rfc3339(since),
            }),
            None => Ok(()),
        }
    }

    pub fn status(&self) -> Status {
        let reach = self.reach();
        let discovered = self.is_ready();
        let reachable = reach.last_success.is_some() && reach.down_since.is_none();
        Status {
            issuer: self.settings.issuer.clone(),
            ready: discovered && reachable,
            discovered,
            reachable,
            last_success: reach.last_success,
            last_error_at: reach.last_error.as_ref().map(|(at, _)| *at),
            last_error: reach.last_error.map(|(_, e)| e),
            unreachable_since: reach.down_since,
        }
    }

    /// Starts the background discovery and check once; later calls do nothing. Until the
    /// first success, and while the provider is down, it retries after 250 ms, doubling up to
    /// every 30 s; while it answers, every `check_interval` (or only when a token exchange
    /// fails, with a zero interval). A provider dropped by a reload stops.
    pub fn start(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let provider = Arc::downgrade(self);
        let wake = self.wake.clone();
        tokio::spawn(async move {
            let first = Duration::from_millis(250);
            let mut backoff = first;
            let mut was_up: Option<bool> = None;
            loop {
                let Some(p) = provider.upgrade() else {
                    return;
                };
                let issuer = &p.settings.issuer;
                let wait = match p.discover().await {
                    Ok(()) => {
                        match was_up {
                            None => tracing::info!(%issuer, "identity provider discovered"),
                            Some(false) => {
                                tracing::info!(%issuer, "identity provider reachable again");
                            }
                            Some(true) => {}
                        }
                        was_up = Some(true);
                        backoff = first;
                        Some(p.settings.check_interval).filter(|i| !i.is_zero())
                    }
                    Err(e) => {
                        if p.is_ready() {
                            tracing::warn!(%issuer, error = %e, retry_in = ?backoff, "identity provider unreachable; sign-ins answer 503");
                            was_up = Some(false);
                        } else {
                            tracing::warn!(%issuer, error = %e, retry_in = ?backoff, "identity provider discovery failed");
                        }
                        let wait = backoff;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        Some(wait)
                    }
                };
                drop(p);
                if !next_check(&provider, &wake, wait).await {
                    return;
                }
            }
        });
    }

    /// Fetches the discovery document and the keys, replaces what was cached, and notes
    /// whether the provider answered.
    pub async fn discover(&self) -> Result<(), String> {
        let result = self.fetch_discovery().await;
        match &result {
            Ok(()) => self.answered(),
            Err(e) => self.failed(e),
        }
        result
    }

    async fn fetch_discovery(&self) -> Result<(), String> {
        let base = self.settings.issuer.trim_end_matches('/');
        let url = format!("{base}/.well-known/openid-configuration");
        let doc: serde_json::Value = self.get_json(&url).await?;
        let metadata: CoreProviderMetadata =
            serde_json::from_value(doc.clone()).map_err(|e| format!("discovery document: {e}"))?;
        if metadata.issuer().as_str().trim_end_matches('/') != base {
            return Err(format!(
                "discovery says the issuer is {}, not {}",
                metadata.issuer().as_str(),
                self.settings.issuer
            ));
        }
        let jwks_json: serde_json::Value = self.get_json(metadata.jwks_uri().as_str()).await?;
        let keys: CoreJsonWebKeySet =
            serde_json::from_value(jwks_json.clone()).map_err(|e| format!("provider keys: {e}"))?;
        let jwks: jsonwebtoken::jwk::JwkSet =
            serde_json::from_value(jwks_json).map_err(|e| format!("provider keys: {e}"))?;
        let end_session = doc["end_session_endpoint"].as_str().map(str::to_owned);
        let revocation = match doc["revocation_endpoint"].as_str() {
            Some(url) => Some(
                url::Url::parse(url)
                    .map_err(|e| format!("discovery: revocation_endpoint {url}: {e}"))?
                    .to_string(),
            ),
            None => None,
        };
        let userinfo = metadata.userinfo_endpoint().map(|u| u.as_str().to_owned());
        let metadata = metadata.set_jwks(keys);
        let client = CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(self.settings.client_id.clone()),
            Some(ClientSecret::new(self.settings.client_secret.clone())),
        );
        self.discovered.store(Some(Arc::new(Discovered {
            client,
            revocation,
            end_session,
            userinfo,
            jwks,
            fetched: Instant::now(),
        })));
        Ok(())
    }

    /// Refetches discovery and keys, unless that happened within [`JWKS_REFRESH_INTERVAL`].
    async fn refresh_keys(&self) -> bool {
        let _one = self.refreshing.lock().await;
        if let Some(d) = self.discovered.load_full()
            && d.fetched.elapsed() < JWKS_REFRESH_INTERVAL
        {
            return false;
        }
        match self.discover().await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "refetching the provider's keys failed");
                false
            }
        }
    }

    async fn get_json(&self, url: &str) -> Result<serde_json::Value, String> {
        let response = self
            .http
            .get(url)
            .header(http::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| format!("{url}: {}", crate::error::chain(&e)))?;
        if !response.status().is_success() {
            return Err(format!("{url}: HTTP {}", response.status()));
        }
        response.json().await.map_err(|e| format!("{url}: {e}"))
    }

    fn ready(&self) -> Result<Arc<Discovered>, LoginError> {
        self.discovered.load_full().ok_or(LoginError::NotReady)
    }

    pub fn redirect_url(&self, host: &str) -> String {
        match &self.settings.redirect_url {
            Some(fixed) => fixed.clone(),
            None => format!("https://{host}/.vigil/callback"),
        }
    }

    /// Where to send a person after logout: the provider's end-session endpoint when it has
    /// one, which then returns them to the post-logout page.
    pub fn logout_url(&self, host: &str) -> String {
        let back = if self.settings.post_logout_redirect.starts_with('/') {
            format!("https://{host}{}", self.settings.post_logout_redirect)
        } else {
            self.settings.post_logout_redirect.clone()
        };
        match self
            .discovered
            .load()
            .as_ref()
            .and_then(|d| d.end_session.clone())
        {
            Some(end) => {
                let mut url = match url::Url::parse(&end) {
                    Ok(u) => u,
                    Err(_) => return back,
                };
                url.query_pairs_mut()
                    .append_pair("client_id", &self.settings.client_id)
                    .append_pair("post_logout_redirect_uri", &back);
                url.to_string()
            }
            None => back,
        }
    }

    /// Starts a login: authorization code + PKCE (S256), fresh `state` and `nonce`.
    /// `step_up` asks the provider to authenticate again, with multi-factor.
    pub fn begin(
        &self,
        ring: &KeyRing,
        host: &str,
        return_to: &str,
        step_up: bool,
    ) -> Result<Redirect, LoginError> {
        self.available()?;
        let discovered = self.ready()?;
        let state = random_token();
        let nonce = random_token();
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let redirect = RedirectUrl::new(self.redirect_url(host))
            .map_err(|e| LoginError::BadToken(format!("redirect URL: {e}")))?;
        let (state_for_url, nonce_for_url) = (state.clone(), nonce.clone());
        let mut request = discovered
            .client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                move || CsrfToken::new(state_for_url),
                move || Nonce::new(nonce_for_url),
            )
            .set_pkce_challenge(challenge)
            .set_redirect_uri(Cow::Owned(redirect));
        for scope in self.settings.scopes.iter().filter(|s| *s != "openid") {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        if step_up {
            request = request
                .add_prompt(openidconnect::core::CoreAuthPrompt::Login)
                .set_max_age(Duration::from_secs(0));
        }
        let (url, _, _) = request.url();
        let pending = Pending {
            state: state.clone(),
            nonce,
            verifier: verifier.secret().clone(),
            return_to: return_to.to_owned(),
            host: host.to_owned(),
            created: super::now(),
        };
        let json = serde_json::to_vec(&pending).map_err(|e| LoginError::BadToken(e.to_string()))?;
        let sealed = ring
            .seal(Purpose::Login, &json)
            .map_err(LoginError::BadToken)?;
        let cookie = set_cookie(
            &login_cookie_name(&state),
            &sealed,
            self.settings.login_timeout.as_secs() as i64,
        )
        .map_err(LoginError::BadToken)?;
        Ok(Redirect {
            location: url.to_string(),
            cookie,
        })
    }

    /// Finishes a login at the callback: checks `state` against this browser's pending login,
    /// uses the state up (its first callback, success or failure, is its only one), exchanges
    /// the code with the PKCE verifier, verifies the ID token and builds a session bound to
    /// `device`.
    #[allow(clippy::too_many_arguments)]
    pub async fn finish(
        &self,
        ring: &KeyRing,
        used: &UsedStates,
        host: &str,
        query: &str,
        headers: &http::HeaderMap,
        device: &str,
        lifetime: Duration,
    ) -> Result<Completed, LoginError> {
        let params: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        let now = super::now();
        let (pending, clear_cookie) =
            self.pending_login(ring, used, host, &params, headers, now)?;
        let code = self.authorization_code(&params)?;
        let discovered = self.ready()?;
        let tokens = self.redeem(&discovered, host, code, &pending).await?;
        let claims = self.login_claims(&discovered, &tokens, &pending).await?;
        let mut session = self.session_from(&claims, device, now, lifetime)?;
        session.refresh_token = tokens.refresh_token().map(|t| t.secret().clone());
        Ok(Completed {
            session,
            return_to: pending.return_to,
            clear_cookie,
        })
    }

    /// The pending login this callback answers, read from this browser's login cookie, with
    /// the header that clears that cookie. Uses the state up.
    fn pending_login(
        &self,
        ring: &KeyRing,
        used: &UsedStates,
        host: &str,
        params: &HashMap<String, String>,
        headers: &http::HeaderMap,
        now: i64,
    ) -> Result<(Pending, HeaderValue), LoginError> {
        let state = params.get("state").cloned().unwrap_or_default();
        if state.len() < 16 {
            return Err(LoginError::StateMismatch);
        }
        let name = login_cookie_name(&state);
        let sealed = cookie(headers, &name).ok_or(LoginError::NoPendingLogin)?;
        let pending: Pending = ring
            .open(Purpose::Login, sealed)
            .ok()
            .and_then(|plain| serde_json::from_slice(&plain).ok())
            .ok_or(LoginError::NoPendingLogin)?;
        let clear_cookie = set_cookie(&name, "", 0).map_err(LoginError::BadToken)?;
        if aws_lc_rs::constant_time::verify_slices_are_equal(
            pending.state.as_bytes(),
            state.as_bytes(),
        )
        .is_err()
            || pending.host != host
        {
            return Err(LoginError::StateMismatch);
        }
        let timeout = self.settings.login_timeout.as_secs() as i64;
        if now - pending.created > timeout {
            return Err(LoginError::Expired);
        }
        // From here on, whatever the outcome (provider error, bad code, nonce mismatch...),
        // this state has had its callback.
        if !used.use_up(&state, pending.created + timeout + 1, now) {
            return Err(LoginError::Replayed);
        }
        Ok((pending, clear_cookie))
    }

    /// The authorization code the provider sent back, unless it sent an error or the
    /// response names another issuer (RFC 9207).
    fn authorization_code(&self, params: &HashMap<String, String>) -> Result<String, LoginError> {
        if let Some(error) = params.get("error") {
            let detail = params
                .get("error_description")
                .map(|d| format!("{error}: {d}"))
                .unwrap_or_else(|| error.clone());
            return Err(LoginError::Refused(detail));
        }
        if let Some(iss) = params.get("iss")
            && iss.trim_end_matches('/') != self.settings.issuer.trim_end_matches('/')
        {
            return Err(LoginError::BadToken(format!("response from issuer {iss}")));
        }
        params
            .get("code")
            .cloned()
            .ok_or_else(|| LoginError::Refused("no authorization code".into()))
    }

    /// Exchanges the authorization code, with the login's PKCE verifier, for tokens.
    async fn redeem(
        &self,
        discovered: &Discovered,
        host: &str,
        code: String,
        pending: &Pending,
    ) -> Result<CoreTokenResponse, LoginError> {
        let redirect = RedirectUrl::new(self.redirect_url(host))
            .map_err(|e| LoginError::BadToken(e.to_string()))?;
        let exchange = discovered
            .client
            .exchange_code(AuthorizationCode::new(code))
            .map_err(|e| LoginError::BadToken(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(pending.verifier.clone()))
            .set_redirect_uri(Cow::Owned(redirect));
        self.noted(
            exchange
                .request_async(&self.http)
                .await
                .map_err(token_error),
        )
    }

    /// The claims of the verified ID token (its nonce the login's), with those of the
    /// userinfo endpoint added when `userinfo` is on; the ID token's win.
    async fn login_claims(
        &self,
        discovered: &Discovered,
        tokens: &CoreTokenResponse,
        pending: &Pending,
    ) -> Result<serde_json::Map<String, serde_json::Value>, LoginError> {
        let id_token = tokens
            .id_token()
            .ok_or_else(|| LoginError::BadToken("no ID token in the token response".into()))?;
        let nonce = Nonce::new(pending.nonce.clone());
        let raw = id_token.to_string();
        let mut claims = self
            .verify_id_token(&raw, |verifier, token| {
                token.claims(verifier, &nonce).map(|_| ())
            })
            .await?;
        if self.settings.userinfo
            && let Some(url) = &discovered.userinfo
        {
            let extra = self
                .userinfo(url, tokens.access_token().secret())
                .await
                .map_err(LoginError::Unreachable)?;
            if extra.get("sub") != claims.get("sub") {
                return Err(LoginError::BadToken(
                    "userinfo is about another subject".into(),
                ));
            }
            for (k, v) in extra {
                claims.entry(k).or_insert(v);
            }
        }
        Ok(claims)
    }

    /// Refreshes a session with its refresh token: a failure (revoked grant, disabled account)
    /// means the session ends.
    pub async fn refresh(&self, session: &Session, now: i64) -> Result<Session, LoginError> {
        let discovered = self.ready()?;
        let token = session
            .refresh_token
            .clone()
            .ok_or_else(|| LoginError::Refused("the session has no refresh token".into()))?;
        let token = RefreshToken::new(token);
        let request = discovered
            .client
            .exchange_refresh_token(&token)
            .map_err(|e| LoginError::BadToken(e.to_string()))?;
        let tokens = self.noted(request.request_async(&self.http).await.map_err(token_error))?;
        let mut next = session.clone();
        if let Some(id_token) = tokens.id_token() {
            let claims = self
                .verify_id_token(&id_token.to_string(), |verifier, token| {
                    token
                        .claims(verifier, |_: Option<&Nonce>| Ok::<(), String>(()))
                        .map(|_| ())
                })
                .await?;
            let fresh = self.session_from(&claims, &session.device, now, Duration::ZERO)?;
            if fresh.sub != session.sub {
                return Err(LoginError::BadToken(
                    "refresh returned another subject".into(),
                ));
            }
            next.email = fresh.email;
            next.name = fresh.name;
            next.groups = fresh.groups;
            next.risk = fresh.risk;
            next.claims = fresh.claims;
            if !fresh.amr.is_empty() {
                next.amr = fresh.amr;
            }
        }
        if let Some(rt) = tokens.refresh_token() {
            next.refresh_token = Some(rt.secret().clone());
        }
        next.verified_at = now;
        Ok(next)
    }

    /// Revokes a refresh token at the provider (RFC 7009), authenticating as the token endpoint
    /// does (`client_secret_basic`). `Ok(false)` when the provider advertises no revocation
    /// endpoint. Bounded by [`REVOCATION_TIMEOUT`]. Written out here rather than with oauth2's
    /// revocation request, which refuses an `http://` endpoint that the token endpoint of the
    /// same provider may use (loopback test providers).
    pub async fn revoke_refresh_token(&self, token: &str) -> Result<bool, String> {
        let discovered = self.ready().map_err(|e| e.to_string())?;
        let Some(url) = &discovered.revocation else {
            return Ok(false);
        };
        // client_secret_basic, as the token endpoint is called: id and secret form-encoded
        // (RFC 6749 section 2.3.1).
        let encode =
            |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("token", token)
            .append_pair("token_type_hint", "refresh_token")
            .finish();
        let response = self
            .http
            .post(url)
            .basic_auth(
                encode(&self.settings.client_id),
                Some(encode(&self.settings.client_secret)),
            )
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(body)
            .timeout(REVOCATION_TIMEOUT)
            .send()
            .await
            .map_err(|e| format!("{url}: {}", crate::error::chain(&e)))?;
        // RFC 7009 section 2.2: 200 whether or not the token was still valid.
        if response.status().is_success() {
            Ok(true)
        } else {
            Err(format!("{url}: HTTP {}", response.status()))
        }
    }

    /// Verifies an ID token with the cached keys, refetching them once on an unknown key.
    /// Returns the token's claims as JSON, read from the verified payload.
    async fn verify_id_token<F>(
        &self,
        raw: &str,
        check: F,
    ) -> Result<serde_json::Map<String, serde_json::Value>, LoginError>
    where
        F: Fn(
            &openidconnect::core::CoreIdTokenVerifier<'_>,
            &openidconnect::core::CoreIdToken,
        ) -> Result<(), openidconnect::ClaimsVerificationError>,
    {
        let token: openidconnect::core::CoreIdToken = raw
            .parse()
            .map_err(|e| LoginError::BadToken(format!("ID token: {e}")))?;
        for attempt in 0..2 {
            let discovered = self.ready()?;
            let skew = chrono::Duration::from_std(self.settings.clock_skew).unwrap_or_default();
            let verifier = discovered
                .client
                .id_token_verifier()
                .set_allowed_algs(self.settings.algorithms.clone())
                .set_time_fn(move || chrono::Utc::now() - skew)
                .set_issue_time_verifier_fn(move |iat| {
                    let now = chrono::Utc::now();
                    if iat > now + skew * 2 {
                        Err(format!("issued in the future ({iat})"))
                    } else if now - iat > chrono::Duration::minutes(10) + skew {
                        Err(format!("issued too long ago ({iat})"))
                    } else {
                        Ok(())
                    }
                });
            match check(&verifier, &token) {
                Ok(()) => return decode_payload(raw),
                Err(openidconnect::ClaimsVerificationError::SignatureVerification(
                    openidconnect::SignatureVerificationError::NoMatchingKey,
                )) if attempt == 0 => {
                    if !self.refresh_keys().await {
                        return Err(LoginError::BadToken("signed with an unknown key".into()));
                    }
                }
                Err(e) => return Err(LoginError::BadToken(e.to_string())),
            }
        }
        Err(LoginError::BadToken("signed with an unknown key".into()))
    }

    async fn userinfo(
        &self,
        url: &str,
        access_token: &str,
    ) -> Result<serde_json::Map<String, serde_json::Value>, String> {
        let response = self
            .http
            .get(url)
            .bearer_auth(access_token)
            .send()
            .await
            .map_err(|e| format!("userinfo: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("userinfo: HTTP {}", response.status()));
        }
        response.json().await.map_err(|e| format!("userinfo: {e}"))
    }

    fn session_from(
        &self,
        claims: &serde_json::Map<String, serde_json::Value>,
        device: &str,
        now: i64,
        lifetime: Duration,
    ) -> Result<Session, LoginError> {
        let text = |name: &str| claims.get(name).and_then(|v| v.as_str()).map(str::to_owned);
        let list = |name: &str| -> Vec<String> {
            match claims.get(name) {
                Some(serde_json::Value::Array(items)) => items
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect(),
                Some(serde_json::Value::String(s)) => vec![s.clone()],
                _ => Vec::new(),
            }
        };
        let sub = text("sub").ok_or_else(|| LoginError::BadToken("no subject".into()))?;
        let kept = self
            .settings
            .keep_claims
            .iter()
            .filter_map(|name| claims.get(name).map(|v| (name.clone(), v.clone())))
            .collect();
        Ok(Session {
            sid: random_token(),
            sub,
            // An address the provider says is unverified identifies no one: rules on users
            // and email domains must not match it.
            email: if claims.get("email_verified") == Some(&serde_json::Value::Bool(false)) {
                None
            } else {
                text("email")
            },
            name: text("name"),
            groups: list(&self.settings.groups_claim),
            amr: list("amr"),
            acr: text("acr"),
            risk: text(&self.settings.risk_claim),
            claims: kept,
            device: device.to_owned(),
            issued_at: now,
            verified_at: now,
            auth_time: claims.get("auth_time").and_then(|v| v.as_i64()),
            expires_at: now + lifetime.as_secs() as i64,
            last_seen: now,
            refresh_token: None,
            idp_sid: text("sid"),
        })
    }

    /// Verifies a bearer access token (a JWT from this provider) for `audience` with `scopes`.
    pub async fn verify_bearer(
        &self,
        token: &str,
        audience: &str,
        scopes: &[String],
    ) -> Result<BearerClaims, String> {
        let claims = self
            .verify_jwt(token, audience, &["exp", "iss", "aud", "sub"])
            .await?;
        bearer_claims(claims, scopes)
    }

    /// Verifies an OIDC back-channel logout token; returns its `sub` and `sid`.
    pub async fn verify_logout_token(
        &self,
        token: &str,
    ) -> Result<(Option<String>, Option<String>), String> {
        let claims = self
            .verify_jwt(
                token,
                &self.settings.client_id.clone(),
                &["iat", "iss", "aud"],
            )
            .await?;
        let is_logout = claims
            .get("events")
            .and_then(|e| e.get("http://schemas.openid.net/event/backchannel-logout"))
            .is_some();
        if !is_logout {
            return Err("not a back-channel logout token (no logout event)".into());
        }
        if claims.contains_key("nonce") {
            return Err("a logout token must not carry a nonce".into());
        }
        if !claims.get("iat").is_some_and(serde_json::Value::is_i64) {
            return Err("a logout token carries iat".into());
        }
        let text = |n: &str| claims.get(n).and_then(|v| v.as_str()).map(str::to_owned);
        let (sub, sid) = (text("sub"), text("sid"));
        if sub.is_none() && sid.is_none() {
            return Err("a logout token names a sub or a sid".into());
        }
        Ok((sub, sid))
    }

    /// Verifies a JWT from this provider for `audience`, refetching keys once on an unknown key.
    async fn verify_jwt(
        &self,
        token: &str,
        audience: &str,
        required: &[&str],
    ) -> Result<serde_json::Map<String, serde_json::Value>, String> {
        for attempt in 0..2 {
            let discovered = self
                .discovered
                .load_full()
                .ok_or("identity provider not available")?;
            match self.decode_jwt(&discovered.jwks, token, audience, required) {
                Err(BearerFailure::UnknownKey) if attempt == 0 => {
                    if !self.refresh_keys().await {
                        return Err("token signed with an unknown key".into());
                    }
                }
                Err(BearerFailure::UnknownKey) => {
                    return Err("token signed with an unknown key".into());
                }
                Err(BearerFailure::Invalid(why)) => return Err(why),
                Ok(claims) => return Ok(claims),
            }
        }
        Err("token signed with an unknown key".into())
    }

    fn decode_jwt(
        &self,
        jwks: &jsonwebtoken::jwk::JwkSet,
        token: &str,
        audience: &str,
        required: &[&str],
    ) -> Result<serde_json::Map<String, serde_json::Value>, BearerFailure> {
        use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
        let header =
            decode_header(token).map_err(|e| BearerFailure::Invalid(format!("token: {e}")))?;
        let allowed: Vec<Algorithm> = self
            .settings
            .algorithms
            .iter()
            .filter_map(|a| serde_json::to_value(a).ok())
            .filter_map(|v| serde_json::from_value::<Algorithm>(v).ok())
            .collect();
        if !allowed.contains(&header.alg) {
            return Err(BearerFailure::Invalid(format!(
                "token algorithm {:?} not allowed",
                header.alg
            )));
        }
        let jwk = match &header.kid {
            Some(kid) => jwks.find(kid).ok_or(BearerFailure::UnknownKey)?,
            None => return Err(BearerFailure::Invalid("token names no key".into())),
        };
        let key =
            DecodingKey::from_jwk(jwk).map_err(|e| BearerFailure::Invalid(format!("key: {e}")))?;
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.set_issuer(&[
            self.settings.issuer.as_str(),
            self.settings.issuer.trim_end_matches('/'),
        ]);
        validation.set_audience(&[audience]);
        validation.leeway = self.settings.clock_skew.as_secs();
        validation.set_required_spec_claims(required);
        validation.validate_nbf = true;
        decode::<serde_json::Map<String, serde_json::Value>>(token, &key, &validation)
            .map(|data| data.claims)
            .map_err(|e| BearerFailure::Invalid(format!("token rejected: {e}")))
    }
}

/// The access-token checks beyond the signature and standard claims.
fn bearer_claims(
    claims: serde_json::Map<String, serde_json::Value>,
    scopes: &[String],
) -> Result<BearerClaims, String> {
    // An ID token is not an access token, whatever its audience (RFC 9068 §4).
    if claims.contains_key("nonce") {
        return Err("an ID token is not an access token".into());
    }
    let granted: Vec<String> = match (claims.get("scope"), claims.get("scp")) {
        (Some(serde_json::Value::String(s)), _) => {
            s.split_whitespace().map(str::to_owned).collect()
        }
        (_, Some(serde_json::Value::Array(a))) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    if let Some(missing) = scopes.iter().find(|s| !granted.contains(s)) {
        return Err(format!("token lacks scope {missing}"));
    }
    Ok(BearerClaims {
        sub: claims
            .get("sub")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned(),
        client_id: claims
            .get("client_id")
            .and_then(|v| v.as_str())
            .map(str::to_owned),
        scopes: granted,
        claims,
    })
}

enum BearerFailure {
    UnknownKey,
    Invalid(String),
}

type TokenError = openidconnect::RequestTokenError<
    openidconnect::HttpClientError<reqwest::Error>,
    openidconnect::StandardErrorResponse<openidconnect::core::CoreErrorResponseType>,
>;

/// A token endpoint failure: the provider said no, or could not be reached.
fn token_error(e: TokenError) -> LoginError {
    match &e {
        openidconnect::RequestTokenError::ServerResponse(response) => {
            LoginError::Refused(response.to_string())
        }
        openidconnect::RequestTokenError::Request(_) => {
            LoginError::Unreachable(crate::error::chain(&e))
        }
        _ => LoginError::BadToken(crate::error::chain(&e)),
    }
}

/// The payload of a JWT whose signature has already been verified.
fn decode_payload(raw: &str) -> Result<serde_json::Map<String, serde_json::Value>, LoginError> {
    let payload = raw
        .split('.')
        .nth(1)
        .ok_or_else(|| LoginError::BadToken("not a JWT".into()))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| LoginError::BadToken("payload is not base64url".into()))?;
    serde_json::from_slice(&bytes).map_err(|_| LoginError::BadToken("payload is not JSON".into()))
}

fn login_cookie_name(state: &str) -> String {
    let prefix: String = state.chars().take(8).collect();
    format!("{LOGIN_COOKIE_PREFIX}{prefix}")
}

/// Waits for the next check: `wait`, or less when a failure noticed meanwhile (a token
/// exchange) wakes it (one noticed during the check that just ran does too, harmlessly). With
/// no periodic check (`None`), only a failure wakes it; it looks every [`MAX_BACKOFF`] whether
/// the provider was dropped. `false`: it was, stop.
async fn next_check(
    provider: &std::sync::Weak<Provider>,
    wake: &tokio::sync::Notify,
    wait: Option<Duration>,
) -> bool {
    loop {
        let woken = tokio::time::timeout(wait.unwrap_or(MAX_BACKOFF), wake.notified())
            .await
            .is_ok();
        if provider.strong_count() == 0 {
            return false;
        }
        if woken || wait.is_some() {
            return true;
        }
    }
}

/// Unix time `at` as RFC 3339, to the second.
fn unix_rfc3339(at: i64) -> String {
    let time = SystemTime::UNIX_EPOCH + Duration::from_secs(at.max(0) as u64);
    humantime::format_rfc3339_seconds(time).to_string()
}

/// 32 random bytes, base64url: states, nonces, session ids.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider() -> Provider {
        Provider::new(Settings {
            issuer: "https://idp.test".into(),
            client_id: "vigil".into(),
            client_secret: "s".into(),
            redirect_url: None,
            scopes: vec!["openid".into()],
            groups_claim: "groups".into(),
            risk_claim: "risk".into(),
            keep_claims: vec!["department".into()],
            mfa_amr: vec!["otp".into()],
            post_logout_redirect: "/.vigil/logged-out".into(),
            userinfo: false,
            algorithms: vec![CoreJwsSigningAlgorithm::EcdsaP256Sha256],
            clock_skew: Duration::from_secs(60),
            login_timeout: Duration::from_secs(600),
            check_interval: Duration::from_secs(30),
            ca: None,
        })
        .unwrap()
    }

    /// Before discovery nothing can start; a failure after it makes the provider down (with
    /// since when) until its next answer; a refusal from the token endpoint is an answer.
    #[test]
    fn reachability_follows_the_exchanges() {
        let p = provider();
        assert!(matches!(p.available(), Err(LoginError::NotReady)));
        let s = p.status();
        assert!(!s.ready && !s.discovered && !s.reachable, "{s:?}");
        p.failed("connection refused");
        assert_eq!(p.status().last_error.as_deref(), Some("connection refused"));
        assert!(matches!(p.available(), Err(LoginError::NotReady)));

        // Discovered (as `discover` leaves it), then answering.
        let metadata: CoreProviderMetadata = serde_json::from_value(serde_json::json!({
            "issuer": "https://idp.test",
            "authorization_endpoint": "https://idp.test/auth",
            "jwks_uri": "https://idp.test/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        }))
        .unwrap();
        let metadata = metadata.set_jwks(CoreJsonWebKeySet::new(Vec::new()));
        let client: Client =
            CoreClient::from_provider_metadata(metadata, ClientId::new("vigil".into()), None);
        p.discovered.store(Some(Arc::new(Discovered {
            client,
            revocation: None,
            end_session: None,
            userinfo: None,
            jwks: jsonwebtoken::jwk::JwkSet { keys: Vec::new() },
            fetched: Instant::now(),
        })));
        p.answered();
        assert!(p.available().is_ok());
        let s = p.status();
        assert!(s.ready && s.discovered && s.reachable, "{s:?}");
        assert_eq!(s.unreachable_since, None);

        let token_endpoint_down: Result<(), _> =
            Err(LoginError::Unreachable("connection reset".into()));
        assert!(p.noted(token_endpoint_down).is_err());
        let s = p.status();
        assert!(!s.ready && s.discovered && !s.reachable, "{s:?}");
        let since = s.unreachable_since.expect("down since");
        let Err(LoginError::Down { since: text }) = p.available() else {
            panic!("not down");
        };
        assert_eq!(text, unix_rfc3339(since));
        // A second failure keeps the outage's start.
        p.failed("again");
        assert_eq!(p.status().unreachable_since, Some(since));

        let refused: Result<(), _> = Err(LoginError::Refused("invalid_grant".into()));
        assert!(p.noted(refused).is_err());
        assert!(p.available().is_ok(), "a refusal is an answer");
    }

    #[test]
    fn a_state_is_used_once_until_it_expires() {
        let used = UsedStates::with_cap(3);
        assert!(used.use_up("state-a", 100, 10));
        assert!(!used.use_up("state-a", 100, 50), "second use");
        assert!(used.use_up("state-b", 120, 50));
        // Expired entries go; their states are refused anyway by login_timeout.
        assert!(used.use_up("state-a", 200, 100));
        assert_eq!(used.len(), 2);
        // At the cap the oldest is dropped, never a new sign-in refused.
        assert!(used.use_up("state-c", 200, 101));
        assert!(used.use_up("state-d", 200, 101));
        assert_eq!(used.len(), 3);
        assert!(
            used.use_up("state-b", 200, 101),
            "state-b was the oldest, dropped"
        );
        assert!(!used.use_up("state-d", 200, 101));
    }

    #[test]
    fn sessions_keep_only_verified_emails_and_the_claims_rules_need() {
        let p = provider();
        let claims = |verified: serde_json::Value| {
            serde_json::json!({
                "sub": "alice", "email": "alice@example.com", "email_verified": verified,
                "groups": "engineering", "department": "r&d", "secret": "x",
                "amr": ["pwd", "otp"], "auth_time": 5, "sid": "idp-1",
            })
            .as_object()
            .cloned()
            .unwrap()
        };
        let s = p
            .session_from(&claims(true.into()), "fp", 10, Duration::from_secs(60))
            .unwrap();
        assert_eq!(s.email.as_deref(), Some("alice@example.com"));
        assert_eq!(s.groups, vec!["engineering".to_owned()]);
        assert_eq!(s.claims.keys().collect::<Vec<_>>(), vec!["department"]);
        assert_eq!(
            (s.auth_time, s.expires_at, s.idp_sid.as_deref()),
            (Some(5), 70, Some("idp-1"))
        );
        let unverified = p
            .session_from(&claims(false.into()), "fp", 10, Duration::from_secs(60))
            .unwrap();
        assert_eq!(unverified.email, None);
        let absent = p
            .session_from(
                &claims(serde_json::Value::Null),
                "fp",
                10,
                Duration::from_secs(60),
            )
            .unwrap();
        assert_eq!(absent.email.as_deref(), Some("alice@example.com"));
    }
}
