//! People: OIDC login against a real OpenID Provider (npm `oidc-provider` on loopback),
//! sealed sessions bound to the device certificate, logout, bearer tokens, identity headers
//! and the signed assertion.

mod support;

use anyhow::{Context as _, Result};
use std::time::Duration;
use support::idp::{ALICE, BOB, PASSWORD, login_flow};
use support::world::*;
use support::*;
use vigil::identity::seal::KeyRing;

#[tokio::test]
async fn full_login_reaches_the_upstream_with_identity() -> Result<()> {
    let w = world().await?;
    let (session, back) = w.sign_in(&w.alice_laptop, "/hello?x=1", ALICE).await?;
    assert_eq!(back, "/hello?x=1");
    assert!(session.contains("__Host-vigil-session="), "{session}");

    let reply = w.visit(&w.alice_laptop, "/hello", &session).await?;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.upstream_header("x-vigil-user").as_deref(),
        Some("alice")
    );
    assert_eq!(
        reply.upstream_header("x-vigil-email").as_deref(),
        Some("alice@example.com")
    );
    assert_eq!(
        reply.upstream_header("x-vigil-groups").as_deref(),
        Some("engineering,admins")
    );
    assert_eq!(
        reply.upstream_header("x-remote-user").as_deref(),
        Some("alice@example.com")
    );
    // Vigil's cookies never reach the upstream.
    assert!(
        reply.upstream_header("cookie").is_none(),
        "{:?}",
        reply.upstream_header("cookie")
    );

    // The assertion verifies with the keys Vigil publishes.
    let assertion = reply
        .upstream_header("x-vigil-assertion")
        .context("no assertion")?;
    let jwks = w.visit(&w.alice_laptop, "/.vigil/jwks.json", "").await?;
    let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&jwks.body)?;
    let header = jsonwebtoken::decode_header(&assertion)?;
    let key = jsonwebtoken::DecodingKey::from_jwk(
        jwks.find(header.kid.as_deref().unwrap_or(""))
            .context("kid")?,
    )?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_audience(&["app"]);
    validation.set_issuer(&["https://vigil.test"]);
    let claims = jsonwebtoken::decode::<serde_json::Value>(&assertion, &key, &validation)?.claims;
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["mfa"], true);
    assert_eq!(
        claims["device"],
        reply.upstream_header("x-vigil-device").unwrap_or_default()
    );
    assert!(claims["cnf"]["x5t#S256"].is_string());
    assert!(claims["exp"].as_i64().unwrap_or(0) - claims["iat"].as_i64().unwrap_or(0) <= 120);

    let whoami = w.visit(&w.alice_laptop, "/.vigil/whoami", &session).await?;
    let me = whoami.json();
    assert_eq!(me["user"]["email"], "alice@example.com");
    assert!(me["logout_csrf"].is_string());

    let id = reply.header("x-request-id").unwrap_or_default();
    let line = decision_for(&w.decisions, &id)
        .await
        .context("decision line")?;
    assert_eq!(line["user"], "alice@example.com");
    assert_eq!(line["groups"], serde_json::json!(["engineering", "admins"]));
    Ok(())
}

#[tokio::test]
async fn mfa_rule_denies_a_login_without_mfa() -> Result<()> {
    let w = world().await?;
    let (bob, _) = w.sign_in(&w.bob_laptop, "/admin/panel", BOB).await?;
    let reply = w.visit(&w.bob_laptop, "/admin/panel", &bob).await?;
    assert_eq!(reply.status, 403, "{reply:?} {:?}", decisions(&w.decisions));
    assert!(
        reply
            .header("content-type")
            .unwrap_or_default()
            .starts_with("text/html")
    );
    assert!(
        reply
            .body
            .contains("access denied by route &#39;admin&#39;"),
        "{}",
        reply.body
    );
    let id = reply.header("x-request-id").unwrap_or_default();
    assert!(reply.body.contains(&id));
    let line = decision_for(&w.decisions, &id)
        .await
        .context("decision line")?;
    assert!(
        line["reasons"]
            .to_string()
            .contains("multi-factor login required"),
        "{line}"
    );

    let (alice, _) = w.sign_in(&w.alice_laptop, "/admin/panel", ALICE).await?;
    assert_eq!(
        w.visit(&w.alice_laptop, "/admin/panel", &alice)
            .await?
            .status,
        200
    );
    // An API client without a session gets 401 JSON, not a redirect loop.
    let api = get(
        w.running.addr,
        w.browser(&w.alice_laptop),
        "/hello",
        "Accept: application/json\r\n",
    )
    .await?;
    assert_eq!(api.status, 401);
    assert!(
        api.json()["reason"]
            .as_str()
            .unwrap_or("")
            .contains("sign-in required")
    );
    Ok(())
}

#[tokio::test]
async fn session_is_bound_to_the_device_and_sealed() -> Result<()> {
    let w = world().await?;
    let (session, _) = w.sign_in(&w.alice_laptop, "/", ALICE).await?;
    // Replayed from another device certificate.
    let stolen = w.visit(&w.bob_laptop, "/hello", &session).await?;
    assert_eq!(stolen.status, 302, "{stolen:?}");
    assert!(
        stolen
            .head
            .contains("__Host-vigil-session=; Path=/; Max-Age=0"),
        "{}",
        stolen.head
    );
    // Tampered with.
    let value = session.split_once('=').map(|(_, v)| v).unwrap_or_default();
    let mut bytes: Vec<char> = value.chars().collect();
    let i = bytes.len() / 2;
    bytes[i] = if bytes[i] == 'A' { 'B' } else { 'A' };
    let tampered = format!(
        "__Host-vigil-session={}",
        bytes.into_iter().collect::<String>()
    );
    assert_eq!(
        w.visit(&w.alice_laptop, "/hello", &tampered).await?.status,
        302
    );
    // Garbage.
    assert_eq!(
        w.visit(&w.alice_laptop, "/hello", "__Host-vigil-session=%%%")
            .await?
            .status,
        302
    );
    // The genuine one still works from the right device.
    assert_eq!(
        w.visit(&w.alice_laptop, "/hello", &session).await?.status,
        200
    );
    Ok(())
}

#[tokio::test]
async fn state_mismatch_replay_and_nonce_mismatch_are_refused() -> Result<()> {
    let w = world().await?;
    let start = w.visit(&w.alice_laptop, "/", "").await?;
    let login_cookie = cookie_pairs(&start);
    let callback = login_flow(
        &start.header("location").unwrap_or_default(),
        ALICE,
        PASSWORD,
    )
    .await?;

    // A callback whose state does not match the browser's pending login.
    let forged = callback.replace("state=", "state=x");
    let reply = w.callback(&w.alice_laptop, &forged, &login_cookie).await?;
    assert_eq!(reply.status, 400, "{reply:?}");
    // No pending login at all.
    let reply = w.callback(&w.alice_laptop, &callback, "").await?;
    assert_eq!(reply.status, 400);
    assert!(
        reply.body.contains("stale or was already used"),
        "{}",
        reply.body
    );

    // The genuine callback works once; replaying it fails.
    let first = w
        .callback(&w.alice_laptop, &callback, &login_cookie)
        .await?;
    assert_eq!(first.status, 303, "{first:?}");
    let replay = w
        .callback(&w.alice_laptop, &callback, &login_cookie)
        .await?;
    assert_ne!(replay.status, 303, "a replayed callback signed in again");
    assert!(!cookie_pairs(&replay).contains("__Host-vigil-session="));

    // Nonce mismatch: a pending login with the right state but another nonce.
    let start = w.visit(&w.alice_laptop, "/", "").await?;
    let callback = login_flow(
        &start.header("location").unwrap_or_default(),
        ALICE,
        PASSWORD,
    )
    .await?;
    let state = url::Url::parse(&callback)?
        .query_pairs()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    let keys = std::fs::read_to_string(w.pki.path("session.keys"))?;
    let ring = KeyRing::parse(&keys).map_err(anyhow::Error::msg)?;
    let pending = serde_json::json!({
        "state": state, "nonce": "not-the-nonce", "verifier": "x".repeat(43),
        "return_to": "/", "host": format!("localhost:{}", w.port), "created": vigil::identity::now(),
    });
    let sealed = ring
        .seal(
            vigil::identity::seal::Purpose::Login,
            pending.to_string().as_bytes(),
        )
        .map_err(anyhow::Error::msg)?;
    let cookie = format!("__Host-vigil-login-{}={sealed}", &state[..8]);
    let reply = w.callback(&w.alice_laptop, &callback, &cookie).await?;
    assert!(reply.status == 400 || reply.status == 401, "{reply:?}");
    assert!(!cookie_pairs(&reply).contains("__Host-vigil-session="));
    Ok(())
}

#[tokio::test]
async fn provider_down_at_callback_is_an_error_page_never_an_allow() -> Result<()> {
    let mut w = world().await?;
    let start = w.visit(&w.alice_laptop, "/", "").await?;
    let login_cookie = cookie_pairs(&start);
    let callback = login_flow(
        &start.header("location").unwrap_or_default(),
        ALICE,
        PASSWORD,
    )
    .await?;
    w.idp.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reply = w
        .callback(&w.alice_laptop, &callback, &login_cookie)
        .await?;
    assert_eq!(reply.status, 502, "{reply:?}");
    assert!(
        reply.body.contains("could not be reached"),
        "{}",
        reply.body
    );
    assert!(!cookie_pairs(&reply).contains("__Host-vigil-session="));
    Ok(())
}

#[tokio::test]
async fn open_redirects_are_refused() -> Result<()> {
    let w = world().await?;
    for rd in [
        "//evil.example",
        "https://evil.example",
        "/%5Cevil.example",
        "%2F%2Fevil.example",
        "/\\evil.example",
    ] {
        let path = format!("/.vigil/login?rd={}", rd.replace('\\', "%5C"));
        let start = w.visit(&w.alice_laptop, &path, "").await?;
        assert_eq!(start.status, 302, "{rd}: {start:?}");
        let login_cookie = cookie_pairs(&start);
        let callback = login_flow(
            &start.header("location").unwrap_or_default(),
            ALICE,
            PASSWORD,
        )
        .await?;
        let back = w
            .callback(&w.alice_laptop, &callback, &login_cookie)
            .await?;
        assert_eq!(back.status, 303);
        assert_eq!(back.header("location").as_deref(), Some("/"), "{rd}");
    }
    let start = w
        .visit(&w.alice_laptop, "/.vigil/login?rd=/deep/link%3Fa%3D1", "")
        .await?;
    let callback = login_flow(
        &start.header("location").unwrap_or_default(),
        ALICE,
        PASSWORD,
    )
    .await?;
    let back = w
        .callback(&w.alice_laptop, &callback, &cookie_pairs(&start))
        .await?;
    assert_eq!(back.header("location").as_deref(), Some("/deep/link?a=1"));
    Ok(())
}

#[tokio::test]
async fn logout_needs_the_csrf_token_and_ends_the_session() -> Result<()> {
    let w = world().await?;
    let (session, _) = w.sign_in(&w.alice_laptop, "/", ALICE).await?;
    let post = |body: String, cookies: String| {
        let config = w.browser(&w.alice_laptop);
        let addr = w.running.addr;
        let port = w.port;
        async move {
            let request = format!(
                "POST /.vigil/logout HTTP/1.1\r\nHost: localhost:{port}\r\nCookie: {cookies}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            raw(addr, config, "localhost", &request).await
        }
    };
    assert_eq!(post(String::new(), session.clone()).await?.status, 403);
    assert_eq!(
        post("csrf=forged".into(), session.clone()).await?.status,
        403
    );
    let token = w
        .visit(&w.alice_laptop, "/.vigil/whoami", &session)
        .await?
        .json()["logout_csrf"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let out = post(format!("csrf={token}"), session.clone()).await?;
    assert_eq!(out.status, 303, "{out:?}");
    let location = out.header("location").unwrap_or_default();
    assert!(location.starts_with(&w.idp.issuer), "{location}");
    assert!(location.contains("post_logout_redirect_uri"), "{location}");
    assert!(
        out.head
            .contains("__Host-vigil-session=; Path=/; Max-Age=0")
    );
    let page = w.visit(&w.alice_laptop, "/.vigil/logged-out", "").await?;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("signed out"));
    Ok(())
}

#[tokio::test]
async fn expired_sessions_need_a_new_login() -> Result<()> {
    let w = world_with("lifetime = \"2s\"\nidle = \"2s\"").await?;
    let (session, _) = w.sign_in(&w.alice_laptop, "/", ALICE).await?;
    assert_eq!(
        w.visit(&w.alice_laptop, "/hello", &session).await?.status,
        200
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        w.visit(&w.alice_laptop, "/hello", &session).await?.status,
        302
    );
    Ok(())
}

#[tokio::test]
async fn session_keys_rotate_without_logging_anyone_out() -> Result<()> {
    let w = world().await?;
    let (session, _) = w.sign_in(&w.alice_laptop, "/", ALICE).await?;
    let old = std::fs::read_to_string(w.pki.path("session.keys"))?;
    let new = KeyRing::generate_line().map_err(anyhow::Error::msg)?;
    // A new key first: the old cookie still opens.
    std::fs::write(w.pki.path("session.keys"), format!("{new}\n{old}"))?;
    assert_eq!(admin(&w.running, "POST", "/reload").await?.status, 200);
    assert_eq!(
        w.visit(&w.alice_laptop, "/hello", &session).await?.status,
        200
    );
    // Old key removed: the cookie is refused and the person logs in again.
    std::fs::write(w.pki.path("session.keys"), format!("{new}\n"))?;
    assert_eq!(admin(&w.running, "POST", "/reload").await?.status, 200);
    assert_eq!(
        w.visit(&w.alice_laptop, "/hello", &session).await?.status,
        302
    );
    let _ = &w.config_text;
    Ok(())
}

fn forge(header: serde_json::Value, claims: serde_json::Value, signature: &[u8]) -> String {
    use base64::Engine;
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.{}",
        e.encode(header.to_string()),
        e.encode(claims.to_string()),
        e.encode(signature)
    )
}

#[tokio::test]
async fn bearer_tokens_for_services() -> Result<()> {
    let w = world().await?;
    let workload = w.pki.workload(SPIFFE_WEB)?;
    let client = client_config(Some(&workload), w.pki.ca.cert_pem(), &[])?;
    let call = |token: String| {
        let client = client.clone();
        let addr = w.running.addr;
        async move {
            get(
                addr,
                client,
                "/api/orders",
                &format!("Authorization: Bearer {token}\r\n"),
            )
            .await
        }
    };
    let good = w.idp.client_credentials("orders:read").await?;
    let reply = call(good.clone()).await?;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.upstream_header("x-vigil-user").as_deref(),
        Some("svc")
    );
    assert_eq!(
        reply.upstream_header("x-vigil-workload").as_deref(),
        Some(SPIFFE_WEB)
    );
    // The token itself is not an identity header: it still reaches the API as sent.
    assert!(reply.upstream_header("authorization").is_some());

    let missing_scope = w.idp.client_credentials("orders:write").await?;
    assert_eq!(call(missing_scope).await?.status, 401);
    assert_eq!(
        get(w.running.addr, client.clone(), "/api/orders", "")
            .await?
            .status,
        401
    );

    // Forgeries built on the provider's real key id.
    use base64::Engine;
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header: serde_json::Value =
        serde_json::from_slice(&e.decode(good.split('.').next().unwrap_or(""))?)?;
    let mut claims: serde_json::Value =
        serde_json::from_slice(&e.decode(good.split('.').nth(1).unwrap_or(""))?)?;
    let kid = header["kid"].clone();
    let none = forge(
        serde_json::json!({"alg": "none", "kid": kid}),
        claims.clone(),
        b"",
    );
    assert_eq!(call(none).await?.status, 401);
    // HS256 "signed" with the provider's public key material.
    let jwks = w.idp.discovery().await?;
    let jwks_uri = jwks["jwks_uri"].as_str().unwrap_or_default().to_owned();
    let public = support::idp::get_text(&jwks_uri).await?;
    let hs_header = serde_json::json!({"alg": "HS256", "kid": kid, "typ": "at+jwt"});
    let unsigned = format!(
        "{}.{}",
        e.encode(hs_header.to_string()),
        e.encode(claims.to_string())
    );
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, public.as_bytes());
    let tag = aws_lc_rs::hmac::sign(&key, unsigned.as_bytes());
    assert_eq!(
        call(format!("{unsigned}.{}", e.encode(tag.as_ref())))
            .await?
            .status,
        401
    );
    // A real signature over other claims: wrong audience, expired.
    let parts: Vec<&str> = good.split('.').collect();
    claims["aud"] = "https://other.test".into();
    assert_eq!(
        call(format!(
            "{}.{}.{}",
            parts[0],
            e.encode(claims.to_string()),
            parts[2]
        ))
        .await?
        .status,
        401
    );
    claims["aud"] = "https://api.test".into();
    claims["exp"] = 1.into();
    assert_eq!(
        call(format!(
            "{}.{}.{}",
            parts[0],
            e.encode(claims.to_string()),
            parts[2]
        ))
        .await?
        .status,
        401
    );
    // A revoked subject's tokens issued until then are refused.
    let host = format!(
        "Host: {}\r\nContent-Type: application/json\r\n",
        w.running.admin.context("admin")?
    );
    let revoked = admin_raw(&w.running, "POST", "/revoke", &host, "{\"user\":\"svc\"}").await?;
    assert_eq!(revoked.status, 200);
    assert_eq!(call(good.clone()).await?.status, 401);

    Ok(())
}

#[tokio::test]
async fn claims_refresh_and_disabled_users_lose_access_after_the_interval() -> Result<()> {
    let w = world_with("\n[verify]\ninterval = \"1s\"\nmax_stale = \"1s\"").await?;
    let (mut session, _) = w.sign_in(&w.alice_laptop, "/", ALICE).await?;
    let reply = w.visit(&w.alice_laptop, "/hello", &session).await?;
    assert_eq!(
        reply.upstream_header("x-vigil-groups").as_deref(),
        Some("engineering,admins")
    );

    w.idp
        .set_claims(
            ALICE,
            serde_json::json!({ "groups": ["engineering", "auditors"], "risk": "medium" }),
        )
        .await?;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let reply = w.visit(&w.alice_laptop, "/hello", &session).await?;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.upstream_header("x-vigil-groups").as_deref(),
        Some("engineering,auditors")
    );
    assert_eq!(
        reply.upstream_header("x-remote-risk").as_deref(),
        Some("medium")
    );
    session = merge_cookies(&session, &reply);

    w.idp.disable_user(ALICE).await?;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let reply = w.visit(&w.alice_laptop, "/hello", &session).await?;
    assert_eq!(reply.status, 302, "{reply:?}");
    let id = reply.header("x-request-id").unwrap_or_default();
    let line = decision_for(&w.decisions, &id)
        .await
        .context("decision line")?;
    assert!(
        line["reasons"]
            .to_string()
            .contains("ended by the identity provider"),
        "{line}"
    );
    Ok(())
}

#[tokio::test]
async fn medium_risk_asks_for_a_fresh_multi_factor_sign_in() -> Result<()> {
    let w = world_with(
        "\n[verify]\ninterval = \"1s\"\n\n[risk]\ntrusted_networks = [\"127.0.0.0/8\"]\nstep_up_max_age = \"1s\"\n",
    )
    .await?;
    let (session, _) = w.sign_in(&w.alice_laptop, "/", ALICE).await?;
    assert_eq!(
        w.visit(&w.alice_laptop, "/stepup/x", &session)
            .await?
            .status,
        200
    );

    // The provider now says alice is at medium risk; her sign-in is older than step_up_max_age.
    w.idp
        .set_claims(ALICE, serde_json::json!({ "risk": "medium" }))
        .await?;
    // Times are whole seconds: wait long enough that the sign-in is surely older than 1 s.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let reply = w.visit(&w.alice_laptop, "/stepup/x", &session).await?;
    assert_eq!(reply.status, 302, "{reply:?}");
    let location = reply.header("location").unwrap_or_default();
    assert!(
        location.contains("prompt=login") && location.contains("max_age=0"),
        "{location}"
    );
    let session = merge_cookies(&session, &reply);
    let login_cookie = cookie_pairs(&reply);
    let callback = login_flow(&location, ALICE, PASSWORD).await?;
    let back = w
        .callback(&w.alice_laptop, &callback, &login_cookie)
        .await?;
    assert_eq!(back.status, 303, "{back:?}");
    let session = merge_cookies(&session, &back);
    let reply = w.visit(&w.alice_laptop, "/stepup/x", &session).await?;
    assert_eq!(reply.status, 200, "{reply:?}");
    // An API client at medium risk is refused rather than redirected.
    let api = get(
        w.running.addr,
        w.browser(&w.alice_laptop),
        "/stepup/x",
        &format!("Cookie: {session}\r\nAccept: application/json\r\n"),
    )
    .await?;
    assert!(api.status == 200 || api.status == 401, "{api:?}");
    Ok(())
}

#[tokio::test]
async fn an_assertion_is_reused_on_a_connection_while_it_says_the_same() -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let w = world().await?;
    let (session, _) = w.sign_in(&w.alice_laptop, "/", ALICE).await?;
    let mut tls = connect(w.running.addr, w.browser(&w.alice_laptop), "localhost").await?;
    let mut tokens = Vec::new();
    for path in ["/hello", "/hello", "/admin/x"] {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: localhost:{}\r\nCookie: {session}\r\n\r\n",
            w.port
        );
        tls.write_all(request.as_bytes()).await?;
        let reply = read_reply(&mut tls).await?;
        assert_eq!(reply.status, 200, "{reply:?}");
        tokens.push(
            reply
                .upstream_header("x-vigil-assertion")
                .unwrap_or_default(),
        );
    }
    assert_eq!(
        tokens[0], tokens[1],
        "same route, same identity: one signature"
    );
    assert_ne!(tokens[1], tokens[2], "another route has another audience");
    Ok(())
}
