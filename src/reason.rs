//! Why Vigil answered a request as it did: a [`Reason`] is a stable [`Code`] for machines
//! (alerts, dashboards, pipelines) and a text for people, made together where the decision or
//! the refusal is made, so the two cannot drift apart.
//!
//! The decision log writes the texts as `reasons` and the codes, in the same order, as
//! `codes`. Texts may be reworded between releases; codes are part of the log's contract
//! (docs/decision-log.md lists every one): a code is never renamed or reused for another
//! meaning, only added.

use serde::{Serialize, Serializer};
use std::fmt;

/// One reason: what happened, as a code and as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason {
    pub code: Code,
    pub text: String,
}

impl Reason {
    pub fn new(code: Code, text: impl Into<String>) -> Self {
        Self {
            code,
            text: text.into(),
        }
    }
}

/// A reason serialises as its text: what `reasons` in the decision log and in
/// `vigil policy explain` have always held.
impl Serialize for Reason {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl PartialEq<&str> for Reason {
    fn eq(&self, other: &&str) -> bool {
        self.text == *other
    }
}

/// The codes of `reasons`, in order: the decision log's `codes`.
pub fn codes<S: Serializer>(reasons: &[Reason], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(reasons.iter().map(|r| r.code))
}

macro_rules! codes {
    ($($(#[doc = $doc:literal])+ $variant:ident = $text:literal,)+) => {
        /// A stable, snake_case name for a reason. See the module documentation.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Code {
            $($(#[doc = $doc])+ $variant,)+
        }

        impl Code {
            /// Every code, in the order docs/decision-log.md lists them.
            pub const ALL: &'static [Code] = &[$(Code::$variant,)+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Code::$variant => $text,)+
                }
            }
        }
    };
}

codes! {
    /// `allowed by rule N`.
    AllowedByRule = "allowed_by_rule",
    /// No route serves the host and path.
    NoRoute = "no_route",
    /// The route has no `allow` rules.
    NoAllowRules = "no_allow_rules",
    /// A rule needs a SPIFFE ID and the certificate has none.
    SpiffeMissing = "spiffe_missing",
    /// The certificate's SPIFFE ID matches none of a rule's.
    SpiffeNotAllowed = "spiffe_not_allowed",
    /// The certificate's subject CN matches none of a rule's.
    CertSubjectNotAllowed = "cert_subject_not_allowed",
    /// None of the certificate's SANs matches a rule's.
    CertSanNotAllowed = "cert_san_not_allowed",
    /// The certificate is not one of a rule's fingerprints.
    CertFingerprintNotAllowed = "cert_fingerprint_not_allowed",
    /// The method is not one of a rule's.
    MethodNotAllowed = "method_not_allowed",
    /// The path matches none of a rule's.
    PathNotAllowed = "path_not_allowed",
    /// The source address is in none of a rule's networks.
    NetworkNotAllowed = "network_not_allowed",
    /// A header a rule names is not in the request.
    HeaderMissing = "header_missing",
    /// No value of a header a rule names matches its patterns.
    HeaderNotAllowed = "header_not_allowed",
    /// The time of the request is outside the rule's `hours`.
    OutsideHours = "outside_hours",
    /// The day of the request is none of the rule's `days`.
    OutsideDays = "outside_days",
    /// `allowed by policy FILE`: the route's Rego policy allowed.
    AllowedByPolicy = "allowed_by_policy",
    /// `denied by policy FILE`: the route's Rego policy denied.
    PolicyDenied = "policy_denied",
    /// A reason the policy itself gave (its answer's `reasons`).
    PolicyReason = "policy_reason",
    /// The policy's result is undefined (no rule gave the query a value, and no default).
    PolicyUndefined = "policy_undefined",
    /// The policy answered something other than a boolean or an object with `allow`.
    PolicyMalformed = "policy_malformed",
    /// The policy's evaluation failed with an error (the text says where).
    PolicyError = "policy_error",
    /// The policy's evaluation ran over its instruction budget or deadline.
    PolicyBudget = "policy_budget",
    /// The policy allows reading only, and the method is not GET, HEAD or OPTIONS.
    PolicyReadOnly = "policy_read_only",
    /// The subject (user, device, workload or source address) is blocked, by a detector or an
    /// operator: denied before any rule, in audit mode too.
    Blocked = "blocked",
    /// The replica has not yet read the fleet's shared state from Redis (since it started):
    /// a revocation or block made elsewhere could be missing. Denied on every route, in audit
    /// mode too.
    SharedStateUnavailable = "shared_state_unavailable",
    /// The replica's copy of the shared state is older than `[state] max_stale` and the route
    /// has `require_shared_state = true`. Denied in audit mode too.
    SharedStateStale = "shared_state_stale",
    /// A rule with `grant = true` and no just-in-time grant in force for the subject on the
    /// route.
    GrantMissing = "grant_missing",
    /// The allow rests on a just-in-time grant (the text names it).
    AllowedByGrant = "allowed_by_grant",
    /// `POST /.vigil/access/request`: a person asked for access to a route.
    AccessRequested = "access_requested",
    /// `POST /.vigil/access/decide`: an approver approved a request; a grant was made.
    AccessApproved = "access_approved",
    /// `POST /.vigil/access/decide`: an approver refused a request.
    AccessDeclined = "access_declined",
    /// An access request or decision that was not taken: not an approver, one's own request,
    /// already decided, a duration over the route's maximum, no reason, and the like.
    AccessActionRefused = "access_action_refused",
    /// A state-changing access form posted from another site (`Origin`, `Sec-Fetch-Site`).
    AccessCrossSite = "access_cross_site",
    /// An access form without its session's CSRF token.
    AccessTokenInvalid = "access_token_invalid",
    /// A rule asks about the device and the inventory does not know it.
    DeviceUnknown = "device_unknown",
    /// A rule needs a compliant device.
    DeviceNoncompliant = "device_noncompliant",
    /// A rule needs a managed device.
    DeviceUnmanaged = "device_unmanaged",
    /// A rule needs a minimum OS version and the inventory has no OS for the device.
    OsUnknown = "os_unknown",
    /// The device's OS is not one a rule lists.
    OsNotAllowed = "os_not_allowed",
    /// The device's OS is older than a rule's minimum.
    OsTooOld = "os_too_old",
    /// The device's last check-in is older than a rule allows.
    CheckInStale = "check_in_stale",
    /// A rule asks about the person and there is none.
    IdentityMissing = "identity_missing",
    /// The person matches none of a rule's users.
    UserNotAllowed = "user_not_allowed",
    /// A rule compares email domains and the email is not a well-formed address.
    EmailMalformed = "email_malformed",
    /// The email's domain is none of a rule's.
    EmailDomainNotAllowed = "email_domain_not_allowed",
    /// The person is in none of a rule's groups.
    NotInGroup = "not_in_group",
    /// A rule needs a multi-factor login.
    MfaRequired = "mfa_required",
    /// A claim has none of the values a rule allows.
    ClaimNotAllowed = "claim_not_allowed",
    /// The risk level allows only GET, HEAD and OPTIONS.
    RiskReadOnly = "risk_read_only",
    /// The risk level refuses every request.
    RiskDenied = "risk_denied",
    /// The risk level asks for a fresh multi-factor sign-in.
    RiskStepUp = "risk_step_up",
    /// The risk level asks for a step-up, and the fresh sign-in had no second factor.
    RiskStepUpWithoutMfa = "risk_step_up_without_mfa",
    /// A login route without a session: no session cookie.
    SignInRequired = "sign_in_required",
    /// The session cookie does not open, or its content is not a session.
    SessionUnreadable = "session_unreadable",
    /// The session was issued to another device certificate.
    SessionOtherDevice = "session_other_device",
    /// The session is past its lifetime.
    SessionExpired = "session_expired",
    /// The session was idle for too long.
    SessionIdle = "session_idle",
    /// The identity provider refused to re-verify the session.
    SessionEnded = "session_ended",
    /// The provider could not be asked to re-verify the session in time.
    SessionUnverifiable = "session_unverifiable",
    /// The session, its user or its device was revoked, or logged out.
    SessionRevoked = "session_revoked",
    /// A login route, and sign-in is not configured.
    SignInNotConfigured = "sign_in_not_configured",
    /// The identity provider is not available (not discovered yet, or unreachable).
    ProviderUnavailable = "provider_unavailable",
    /// A bearer route without a valid token: the public reason.
    BearerTokenRequired = "bearer_token_required",
    /// The bearer token is missing or was rejected (the text says why).
    BearerTokenInvalid = "bearer_token_invalid",
    /// The bearer token expired.
    BearerTokenExpired = "bearer_token_expired",
    /// The bearer token was issued before its subject was revoked.
    BearerSubjectRevoked = "bearer_subject_revoked",
    /// `/.vigil/login` sent the browser to the provider.
    SignInStarted = "sign_in_started",
    /// `/.vigil/callback` finished a login.
    SignedIn = "signed_in",
    /// A login could not be started or finished.
    SignInFailed = "sign_in_failed",
    /// The session of a finished login could not be stored in its cookie.
    SessionNotStored = "session_not_stored",
    /// `POST /.vigil/logout` ended the session.
    SignedOut = "signed_out",
    /// `POST /.vigil/logout` without a session.
    LogoutWithoutSession = "logout_without_session",
    /// `POST /.vigil/logout` from another origin.
    LogoutCrossSite = "logout_cross_site",
    /// `POST /.vigil/logout` with a missing or wrong CSRF token.
    LogoutTokenInvalid = "logout_token_invalid",
    /// `POST /.vigil/backchannel` ended the sessions a logout token named.
    BackchannelLogout = "backchannel_logout",
    /// `POST /.vigil/backchannel` refused its logout token.
    BackchannelRefused = "backchannel_refused",
    /// One of Vigil's own pages or documents (`whoami`, `jwks.json`, `logged-out`, the logout
    /// page).
    VigilEndpoint = "vigil_endpoint",
    /// A client that is not one of `[authz] enforcement_points` asked for a decision.
    AuthzNotEnforcementPoint = "authz_not_enforcement_point",
    /// An enforcement point named the request to decide in a way that cannot be read, or
    /// ambiguously (the text says how).
    AuthzForwardedInvalid = "authz_forwarded_invalid",
    /// The forwarded path cannot be canonicalised (the text says why).
    AuthzForwardedPath = "authz_forwarded_path",
    /// An enforcement point passed on no end-client certificate.
    AuthzCertificateMissing = "authz_certificate_missing",
    /// The end-client certificate passed on cannot be read.
    AuthzCertificateInvalid = "authz_certificate_invalid",
    /// The end-client certificate passed on does not verify: another CA, expired, revoked.
    AuthzCertificateRefused = "authz_certificate_refused",
    /// The request is malformed or ambiguous (the text says how).
    BadRequest = "bad_request",
    /// The Host names a server other than the one the TLS connection was opened for.
    Misdirected = "misdirected",
    /// The method cannot be proxied (CONNECT), or a Vigil endpoint does not take it.
    MethodNotSupported = "method_not_supported",
    /// The request target is longer than `max_target_bytes`.
    UriTooLong = "uri_too_long",
    /// The body is over the route's limit.
    BodyTooLarge = "body_too_large",
    /// The body did not arrive within `body_read_timeout`.
    BodyTimeout = "body_timeout",
    /// No connection to the upstream could be made.
    UpstreamUnreachable = "upstream_unreachable",
    /// The upstream broke the exchange.
    UpstreamFailed = "upstream_failed",
    /// The upstream sent no response head in time.
    UpstreamTimeout = "upstream_timeout",
    /// More requests than the route's `max_pending` were waiting for an endpoint: refused
    /// without contacting one.
    UpstreamOverloaded = "upstream_overloaded",
    /// The request asked for an upgrade (WebSocket) the route does not allow, and was
    /// forwarded without it.
    UpgradeRemoved = "upgrade_removed",
    /// Policy refused the request, with no more specific code.
    Forbidden = "forbidden",
    /// A credential was needed, with no more specific code.
    Unauthorized = "unauthorized",
    /// Something Vigil depends on was not available, with no more specific code.
    Unavailable = "unavailable",
}

impl Serialize for Code {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Codes are snake_case and unique, and docs/decision-log.md lists each one exactly as
    /// the code writes it (and no code the code does not have).
    #[test]
    fn every_code_is_snake_case_unique_and_documented() {
        let docs = include_str!("../docs/decision-log.md");
        let section = docs
            .split("## Reason codes")
            .nth(1)
            .and_then(|rest| rest.split("\n## ").next())
            .expect("docs/decision-log.md has a \"Reason codes\" section");
        let documented: Vec<&str> = section
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split('`').next())
            .collect();
        let mut seen = std::collections::HashSet::new();
        for code in Code::ALL {
            let text = code.as_str();
            assert!(
                text.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{text}"
            );
            assert!(seen.insert(text), "{text} twice");
            assert!(documented.contains(&text), "{text} is not documented");
        }
        for text in documented {
            assert!(seen.contains(text), "{text} is documented but no code");
        }
    }

    #[test]
    fn a_reason_serialises_as_its_text_and_codes_beside() {
        #[derive(Serialize)]
        struct Line<'a> {
            reasons: &'a [Reason],
            #[serde(serialize_with = "codes")]
            codes: &'a [Reason],
        }
        let reasons = [
            Reason::new(Code::AllowedByRule, "allowed by rule 1"),
            Reason::new(Code::BodyTooLarge, "request body too large"),
        ];
        let line = serde_json::to_string(&Line {
            reasons: &reasons,
            codes: &reasons,
        })
        .unwrap();
        assert_eq!(
            line,
            r#"{"reasons":["allowed by rule 1","request body too large"],"codes":["allowed_by_rule","body_too_large"]}"#
        );
    }
}
