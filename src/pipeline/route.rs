//! The route phase: which route serves the request's host and path, or which of Vigil's own
//! `/.vigil/` endpoints (there on every host that has a route).

use super::canonicalize::Target;
use super::context::Context;
use crate::body::Body;
use crate::canonical::host_without_port;
use crate::error::Refusal;
use crate::routing::Route;
use http::Response;
use std::sync::Arc;

/// Where a request goes next.
pub enum Routed {
    Route(Arc<Route>),
    /// `/.vigil/<rest>`: answered by Vigil itself.
    Endpoint(String),
}

/// Routes the request; no route for it is a 404 here.
pub fn route(cx: &mut Context<'_>, target: &Target<'_>) -> Result<Routed, Box<Response<Body>>> {
    let routes = &cx.snapshot.routes;
    let hostname = host_without_port(&target.host);
    if let Some(rest) = target.path.strip_prefix("/.vigil/") {
        if !routes.serves_host(hostname) {
            return Err(Box::new(cx.refuse(Refusal::NoRoute, None)));
        }
        cx.route = routes.find(hostname, &target.path).cloned();
        return Ok(Routed::Endpoint(rest.to_owned()));
    }
    match routes.find(hostname, &target.path).cloned() {
        Some(route) => {
            cx.route = Some(route.clone());
            Ok(Routed::Route(route))
        }
        None => Err(Box::new(cx.refuse(Refusal::NoRoute, None))),
    }
}
