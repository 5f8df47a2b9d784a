//! What every phase of one request shares: the snapshot it was taken under, the connection,
//! and what the decision log will say of it as it is learnt.

use crate::config::Snapshot;
use crate::connection::Connection;
use crate::decision_log;
use crate::identity::Identity;
use crate::policy::Outcome;
use crate::posture::Assessment;
use crate::routing::Route;
use crate::state::Shared;
use http::header::{self, HeaderValue};
use http::{Method, Request};
use hyper::body::Incoming;
use std::sync::Arc;
use std::time::Instant;

/// One request's context, from its arrival to its decision log line.
pub struct Context<'a> {
    pub shared: &'a Arc<Shared>,
    pub conn: &'a Arc<Connection>,
    /// The configuration in force when the request arrived; every phase reads this one.
    pub snapshot: &'a Snapshot,
    pub request_id: &'a HeaderValue,
    pub method: Method,
    /// Canonical host and path once known; the raw path (bounded) when canonicalisation failed.
    pub host: String,
    pub path: String,
    pub route: Option<Arc<Route>>,
    pub identity: Option<std::sync::Arc<Identity>>,
    pub risk: Option<Assessment>,
    /// The client is a browser that should get HTML pages.
    pub html: bool,
    /// The `User-Agent` header, bounded like a logged path.
    pub user_agent: Option<String>,
    /// The request was sent upstream (whatever came of it): its line names the upstream.
    pub forwarded: bool,
    /// The upstream endpoint that answered, for the line.
    pub endpoint: Option<std::sync::Arc<str>>,
    /// What the route's Rego policy answered, for the line.
    pub policy: Option<crate::policy::PolicyRun>,
    /// A shadow policy's disagreeing decision, for the line.
    pub shadow: Option<crate::policy::Shadow>,
    /// What policy decided, once it has: the line's `outcome` and `facts`.
    pub decided: Option<Decided>,
    /// The enforcement point this request is decided for (see `authz`): its line names it,
    /// and refusals use the statuses enforcement points understand.
    pub enforcement_point: Option<Arc<str>>,
    pub started: Instant,
}

/// The policy decision of a request, as its decision line keeps it.
pub struct Decided {
    pub outcome: Outcome,
    /// The facts decided on, serialised as the line's `facts` object (a facts document) while
    /// the request's headers are at hand; `None` with `[log] decision_facts = false`.
    pub facts: Option<Vec<u8>>,
    /// The grant the allow rests on.
    pub grant: Option<String>,
}

impl<'a> Context<'a> {
    pub fn new(
        shared: &'a Arc<Shared>,
        conn: &'a Arc<Connection>,
        snapshot: &'a Snapshot,
        request_id: &'a HeaderValue,
        req: &Request<Incoming>,
    ) -> Self {
        Self {
            shared,
            conn,
            snapshot,
            request_id,
            method: req.method().clone(),
            host: String::new(),
            path: String::new(),
            route: None,
            identity: None,
            risk: None,
            html: wants_html(req),
            user_agent: req.headers().get(header::USER_AGENT).map(|v| {
                let text = String::from_utf8_lossy(v.as_bytes());
                decision_log::bounded(&text, decision_log::MAX_USER_AGENT)
            }),
            forwarded: false,
            endpoint: None,
            policy: None,
            shadow: None,
            decided: None,
            enforcement_point: None,
            started: Instant::now(),
        }
    }
}

/// A browser navigation that can follow a redirect to the login page.
fn wants_html(req: &Request<Incoming>) -> bool {
    (req.method() == Method::GET || req.method() == Method::HEAD)
        && req
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/html"))
}
