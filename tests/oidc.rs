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

    // The line keeps the person it was decided for, without their name, the session's id or
    // its cookie, and those facts decide the same under the same configuration.
    assert_eq!(line["outcome"], "allow");
    let person = &line["facts"]["person"];
    assert_eq!(person["email"], "alice@example.com", "{line}");
    assert_eq!(person["mfa"], true);
    assert_eq!(person["source"], serde_json::json!({ "kind": "session" }));
    assert!(person.get("name").is_none(), "{person}");
    let cookie = session
        .split("__Host-vigil-session=")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .context("session cookie")?;
    let log = std::fs::read_to_string(&w.decisions)?;
    assert!(
        cookie.len() > 16 && !log.contains(cookie),
        "the session cookie is in the log"
    );
    std::fs::write(w.pki.path("kept.json"), line["facts"].to_string())?;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["policy", "explain", "--format", "json", "--config"])
        .arg(w.pki.path("vigil.toml"))
        .arg("--input")
        .arg(w.pki.path("kept.json"))
        .output()?;
    let explained: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| String::from_utf8_lossy(&out.stderr).into_owned())?;
    assert_eq!(explained["decision"], line["outcome"], "{explained}");
    assert_eq!(explained["reasons"], line["reasons"]);
    assert_eq!(explained["codes"], line["codes"]);
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
    // A connection kept open across the next reload, that has opened the cookie already
    // (twice: the second from what the connection kept of the first).
    let mut kept = connect(w.running.addr, w.browser(&w.alice_laptop), "localhost").await?;
    let ask = format!(
        "GET /hello HTTP/1.1\r\nHost: localhost:{}\r\nAccept: text/html\r\nCookie: {session}\r\n\r\n",
        w.port
    );
    for _ in 0..2 {
        tokio::io::AsyncWriteExt::write_all(&mut kept, ask.as_bytes()).await?;
        assert_eq!(read_reply(&mut kept).await?.status, 200);
    }
    // Old key removed: the cookie is refused and the person logs in again, on a new
    // connection and on the one that opened it before.
    std::fs::write(w.pki.path("session.keys"), format!("{new}\n"))?;
    assert_eq!(admin(&w.running, "POST", "/reload").await?.status, 200);
    assert_eq!(
        w.visit(&w.alice_laptop, "/hello", &session).await?.status,
        302
    );
    tokio::io::AsyncWriteExt::write_all(&mut kept, ask.as_bytes()).await?;
    assert_eq!(read_reply(&mut kept).await?.status, 302);
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
    let mut reply = w.visit(&w.alice_laptop, "/stepup/x", &session).await?;
    // A refresh already in flight when the claim changed answers with the old claims; the
    // next interval's refresh has the new ones.
    if reply.status == 200 {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        reply = w.visit(&w.alice_laptop, "/stepup/x", &session).await?;
    }
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

/// The session sealed in `cookies` (the test holds the session keys).
fn open_session(w: &World, cookies: &str) -> Result<vigil::identity::session::Session> {
    let keys = std::fs::read_to_string(w.pki.path("session.keys"))?;
    let ring = KeyRing::parse(&keys).map_err(anyhow::Error::msg)?;
    let mut headers = http::HeaderMap::new();
    headers.insert(http::header::COOKIE, cookies.parse()?);
    vigil::identity::session::read(&headers, &ring).map_err(|e| anyhow::anyhow!("{e}"))
}

#[tokio::test]
async fn logout_refuses_every_copy_of_the_session_and_revokes_its_refresh_token() -> Result<()> {
    let w = world().await?;
    let (session, _) = w.sign_in(&w.alice_laptop, "/", ALICE).await?;
    // A copy taken before the logout (another tab, a backup, a thief on the same device).
    let copy = session.clone();
    let refresh = open_session(&w, &session)?
        .refresh_token
        .context("the session holds a refresh token")?;
    let before = w.idp.introspect("vigil", SECRET, &refresh).await?;
    assert_eq!(before["active"], true, "{before}");
    assert_eq!(w.visit(&w.alice_laptop, "/hello", &copy).await?.status, 200);

    let out = w.log_out(&w.alice_laptop, &session).await?;
    assert_eq!(out.status, 303, "{out:?}");

    // The copy is refused from the same device certificate, with the reason in the log.
    let browser = w.visit(&w.alice_laptop, "/hello", &copy).await?;
    assert_eq!(browser.status, 302, "{browser:?}");
    let id = browser.header("x-request-id").unwrap_or_default();
    let line = decision_for(&w.decisions, &id)
        .await
        .context("decision line")?;
    assert_eq!(line["decision"], "deny", "{line}");
    assert!(
        line["reasons"]
            .to_string()
            .contains("session ended by logout"),
        "{line}"
    );
    let api = get(
        w.running.addr,
        w.browser(&w.alice_laptop),
        "/hello",
        &format!("Cookie: {copy}\r\nAccept: application/json\r\n"),
    )
    .await?;
    assert_eq!(api.status, 401, "{api:?}");
    assert!(
        api.json()["reason"]
            .as_str()
            .unwrap_or("")
            .contains("session ended by logout"),
        "{}",
        api.body
    );

    // Nor does the copy show as signed in.
    let whoami = w.visit(&w.alice_laptop, "/.vigil/whoami", &copy).await?;
    assert!(whoami.json()["user"].is_null(), "{}", whoami.body);

    // The refresh token is dead at the provider: introspection says so, and a refresh with it
    // is refused.
    let revoked = eventually(Duration::from_secs(8), || async {
        w.idp
            .introspect("vigil", SECRET, &refresh)
            .await
            .is_ok_and(|r| r["active"] == false)
    })
    .await;
    assert!(revoked, "the refresh token is still active at the provider");
    let form =
        support::idp::form_encode(&[("grant_type", "refresh_token"), ("refresh_token", &refresh)]);
    let (status, body) = w.idp.token_request("vigil", SECRET, &form).await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );

    // A new login on the same device is a new session and works.
    let (again, _) = w.sign_in(&w.alice_laptop, "/", ALICE).await?;
    assert_eq!(
        w.visit(&w.alice_laptop, "/hello", &again).await?.status,
        200
    );
    Ok(())
}

/// The `state` of a callback URL.
fn state_of(callback: &str) -> Result<String> {
    url::Url::parse(callback)?
        .query_pairs()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned())
        .context("no state in the callback")
}

/// `callback` with its query replaced by `query` (same path).
fn with_query(callback: &str, query: &str) -> Result<String> {
    let mut url = url::Url::parse(callback)?;
    url.set_query(Some(query));
    Ok(url.to_string())
}

#[tokio::test]
async fn a_sign_in_state_is_used_up_by_its_first_callback() -> Result<()> {
    let w = world().await?;
    let replayed = |reply: &Reply| -> Result<()> {
        anyhow::ensure!(reply.status == 400, "{reply:?}");
        anyhow::ensure!(
            !cookie_pairs(reply).contains("__Host-vigil-session="),
            "a replay signed in: {reply:?}"
        );
        anyhow::ensure!(reply.body.contains("already used"), "{}", reply.body);
        Ok(())
    };
    let reason_of = |reply: &Reply| reply.header("x-request-id").unwrap_or_default();

    // After a success: the same callback URL with a copy of the pending-login cookie.
    let start = w.visit(&w.alice_laptop, "/", "").await?;
    let pending = cookie_pairs(&start);
    let callback = login_flow(
        &start.header("location").unwrap_or_default(),
        ALICE,
        PASSWORD,
    )
    .await?;
    let first = w.callback(&w.alice_laptop, &callback, &pending).await?;
    assert_eq!(first.status, 303, "{first:?}");
    let replay = w.callback(&w.alice_laptop, &callback, &pending).await?;
    replayed(&replay)?;
    let line = decision_for(&w.decisions, &reason_of(&replay))
        .await
        .context("decision line")?;
    assert!(
        line["reasons"].to_string().contains("state replayed"),
        "{line}"
    );

    // After a failure that never reached the token endpoint (the provider's error answer): the
    // genuine code must not be usable with that state any more.
    let start = w.visit(&w.alice_laptop, "/", "").await?;
    let pending = cookie_pairs(&start);
    let callback = login_flow(
        &start.header("location").unwrap_or_default(),
        ALICE,
        PASSWORD,
    )
    .await?;
    let state = state_of(&callback)?;
    let error = with_query(
        &callback,
        &format!("error=access_denied&state={state}&iss={}", w.idp.issuer),
    )?;
    let failed = w.callback(&w.alice_laptop, &error, &pending).await?;
    assert_eq!(failed.status, 400, "{failed:?}");
    assert!(failed.body.contains("access_denied"), "{}", failed.body);
    let replay = w.callback(&w.alice_laptop, &callback, &pending).await?;
    replayed(&replay)?;
    let line = decision_for(&w.decisions, &reason_of(&replay))
        .await
        .context("decision line")?;
    assert!(
        line["reasons"].to_string().contains("state replayed"),
        "{line}"
    );

    // After a failed code exchange (a bad code): the same.
    let start = w.visit(&w.alice_laptop, "/", "").await?;
    let pending = cookie_pairs(&start);
    let callback = login_flow(
        &start.header("location").unwrap_or_default(),
        ALICE,
        PASSWORD,
    )
    .await?;
    let state = state_of(&callback)?;
    let bad_code = with_query(
        &callback,
        &format!("code=not-a-code&state={state}&iss={}", w.idp.issuer),
    )?;
    let failed = w.callback(&w.alice_laptop, &bad_code, &pending).await?;
    assert_eq!(failed.status, 400, "{failed:?}");
    let replay = w.callback(&w.alice_laptop, &callback, &pending).await?;
    replayed(&replay)?;

    // A callback without the pending-login cookie uses nothing up: the browser that started
    // the login can still finish it.
    let start = w.visit(&w.alice_laptop, "/", "").await?;
    let pending = cookie_pairs(&start);
    let callback = login_flow(
        &start.header("location").unwrap_or_default(),
        ALICE,
        PASSWORD,
    )
    .await?;
    let stray = w.callback(&w.alice_laptop, &callback, "").await?;
    assert_eq!(stray.status, 400, "{stray:?}");
    let genuine = w.callback(&w.alice_laptop, &callback, &pending).await?;
    assert_eq!(genuine.status, 303, "{genuine:?}");
    Ok(())
}

/// Signs alice in with the callback sent just after a second starts, so that the session's
/// `verified_at` (whole seconds) is within a few milliseconds of the real verification.
async fn sign_in_on_the_second(w: &World) -> Result<(String, std::time::SystemTime)> {
    let start = w.visit(&w.alice_laptop, "/", "").await?;
    let pending = cookie_pairs(&start);
    let callback = login_flow(
        &start.header("location").unwrap_or_default(),
        ALICE,
        PASSWORD,
    )
    .await?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    tokio::time::sleep(
        Duration::from_millis(1020) - Duration::from_nanos(u64::from(now.subsec_nanos())),
    )
    .await;
    let back = w.callback(&w.alice_laptop, &callback, &pending).await?;
    anyhow::ensure!(back.status == 303, "callback refused: {back:?}");
    let session = cookie_pairs(&back);
    let verified_at = open_session(w, &session)?.verified_at;
    Ok((
        session,
        std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(verified_at)?),
    ))
}

/// One request of a session: when it was sent, when its answer came, its status, its id.
struct Timed {
    sent: std::time::SystemTime,
    answered: std::time::SystemTime,
    status: u16,
    id: String,
}

/// Sends a request with `session` every 200 ms from `from` until `until` (each on its own
/// connection, without waiting for the previous ones), and collects the answers.
async fn requests_over_time(
    w: &World,
    session: &str,
    from: std::time::SystemTime,
    until: std::time::SystemTime,
) -> Result<Vec<Timed>> {
    let mut tasks = Vec::new();
    let mut at = from;
    while at < until {
        if let Ok(wait) = at.duration_since(std::time::SystemTime::now()) {
            tokio::time::sleep(wait).await;
        }
        let (addr, config) = (w.running.addr, w.browser(&w.alice_laptop));
        let extra = format!("Cookie: {session}\r\nAccept: application/json\r\n");
        tasks.push(tokio::spawn(async move {
            let sent = std::time::SystemTime::now();
            let reply = get(addr, config, "/hello", &extra).await?;
            anyhow::Ok(Timed {
                sent,
                answered: std::time::SystemTime::now(),
                status: reply.status,
                id: reply.header("x-request-id").unwrap_or_default(),
            })
        }));
        at += Duration::from_millis(200);
    }
    let mut out = Vec::new();
    for task in tasks {
        out.push(task.await??);
    }
    Ok(out)
}

/// Seconds from `base` to `t` (negative before it), for messages and comparisons.
fn secs(t: std::time::SystemTime, base: std::time::SystemTime) -> f64 {
    match t.duration_since(base) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// No allow in the decision log for these requests was written after `deadline` (plus the
/// time to forward an allowed request to the local upstream and log it).
/// A refusal of a session that cannot be re-verified: 401 (sign in again), or 503 while the
/// failed exchange has the provider marked down (until its next answer, which the check that
/// the failure triggers usually brings at once).
fn refused(status: u16) -> bool {
    matches!(status, 401 | 503)
}

fn no_allow_logged_after(
    w: &World,
    timed: &[Timed],
    deadline: std::time::SystemTime,
) -> Result<()> {
    let ids: std::collections::HashSet<&str> = timed.iter().map(|t| t.id.as_str()).collect();
    let lines = decisions(&w.decisions);
    let mut seen = 0;
    for line in lines
        .iter()
        .filter(|l| ids.contains(l["request_id"].as_str().unwrap_or("")))
    {
        seen += 1;
        if line["decision"] == "allow" {
            let at = humantime::parse_rfc3339(line["time"].as_str().unwrap_or(""))?;
            anyhow::ensure!(
                secs(at, deadline) <= 0.5,
                "allowed {:.2} s after interval + max_stale: {line}",
                secs(at, deadline)
            );
        }
    }
    anyhow::ensure!(
        seen == timed.len(),
        "{seen} decision lines for {} requests",
        timed.len()
    );
    Ok(())
}

#[tokio::test]
async fn a_hung_provider_never_turns_into_an_allow_past_interval_plus_max_stale() -> Result<()> {
    let w = world_with("\n[verify]\ninterval = \"1s\"\nmax_stale = \"2s\"").await?;

    // The token endpoint accepts connections and never answers.
    let (session, verified) = sign_in_on_the_second(&w).await?;
    let deadline = verified + Duration::from_secs(3);
    w.idp.fault("/token", Some("hang")).await?;
    let timed = requests_over_time(
        &w,
        &session,
        verified + Duration::from_millis(150),
        deadline + Duration::from_millis(600),
    );
    // Lift the hang so the refresh held at the provider ends (the requests sent after the
    // deadline wait for it), then judge.
    let lifter = async {
        tokio::time::sleep(
            (deadline + Duration::from_millis(1500))
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default(),
        )
        .await;
        w.idp.fault("/token", None).await
    };
    let (timed, lifted) = tokio::join!(timed, lifter);
    lifted?;
    let timed = timed?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report: Vec<String> = timed
        .iter()
        .map(|t| {
            format!(
                "sent {:+.2} answered {:+.2} -> {}",
                secs(t.sent, deadline),
                secs(t.answered, deadline),
                t.status
            )
        })
        .collect();
    let mut fresh_allowed = 0;
    let mut refused_at_deadline = 0;
    for t in &timed {
        let (sent, answered) = (secs(t.sent, deadline), secs(t.answered, deadline));
        if t.status == 200 {
            assert!(answered <= 0.5, "allowed after the deadline: {report:#?}");
        }
        if sent < -2.1 {
            // Verified less than `interval` ago: the provider is not asked.
            assert_eq!(t.status, 200, "{report:#?}");
            fresh_allowed += 1;
        } else if sent > -1.9 && sent < -0.1 {
            // Due for re-verification, the provider hangs: refused when the staleness budget
            // runs out, not when the provider's client gives up 10 s later.
            assert!(refused(t.status), "{report:#?}");
            assert!(answered < 1.0, "waited past the deadline: {report:#?}");
            refused_at_deadline += 1;
        } else if sent > 0.1 {
            assert!(refused(t.status), "{report:#?}");
        }
    }
    assert!(
        fresh_allowed >= 1 && refused_at_deadline >= 3,
        "{report:#?}"
    );
    no_allow_logged_after(&w, &timed, deadline)?;
    let first_refused = timed
        .iter()
        .find(|t| secs(t.sent, deadline) > -1.9 && refused(t.status));
    if let Some(t) = first_refused {
        let line = decision_for(&w.decisions, &t.id)
            .await
            .context("decision line")?;
        assert!(
            line["reasons"]
                .to_string()
                .contains("could not be re-verified"),
            "{line}"
        );
    }

    // A provider that drops connections at once: within the bound the last verification
    // holds (requests allowed), after it every request is refused.
    let (session, verified) = sign_in_on_the_second(&w).await?;
    let deadline = verified + Duration::from_secs(3);
    w.idp.fault("/token", Some("reset")).await?;
    let timed = requests_over_time(
        &w,
        &session,
        verified + Duration::from_millis(150),
        deadline + Duration::from_millis(1000),
    )
    .await?;
    w.idp.fault("/token", None).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report: Vec<String> = timed
        .iter()
        .map(|t| {
            format!(
                "sent {:+.2} answered {:+.2} -> {}",
                secs(t.sent, deadline),
                secs(t.answered, deadline),
                t.status
            )
        })
        .collect();
    let mut stale_allowed = 0;
    for t in &timed {
        let (sent, answered) = (secs(t.sent, deadline), secs(t.answered, deadline));
        if t.status == 200 {
            assert!(answered <= 0.5, "allowed after the deadline: {report:#?}");
        }
        if sent > -1.8 && answered < -0.3 {
            assert_eq!(t.status, 200, "within interval + max_stale: {report:#?}");
            stale_allowed += 1;
        } else if sent > 0.1 {
            assert!(refused(t.status), "{report:#?}");
        }
    }
    assert!(stale_allowed >= 3, "{report:#?}");
    no_allow_logged_after(&w, &timed, deadline)?;
    Ok(())
}

/// A provider outage after discovery: the background check notices it, sign-ins answer 503
/// (a page for browsers, JSON for APIs) with `Retry-After` and the decision log says why,
/// while the route that needs no provider keeps serving and `/readyz` stays 200, naming the
/// routes that cannot serve and why.
#[tokio::test]
async fn a_provider_outage_takes_out_the_login_routes_only() -> Result<()> {
    let svc = r#"
[[route]]
name = "svc"
host = "localhost"
path = "/svc"
upstream = "http://UPSTREAM"
login = "none"
allow = [{ spiffe = ["spiffe://example.org/**"] }]
"#;
    let mut w = world_full("", false, "check_interval = \"200ms\"", svc).await?;
    let workload = client_config(Some(&w.pki.workload(SPIFFE_WEB)?), w.pki.ca.cert_pem(), &[])?;
    assert_eq!(w.visit(&w.alice_laptop, "/", "").await?.status, 302);
    let before = metrics(&w.running).await?;
    let up = format!("vigil_identity_provider_up{{issuer=\"{}\"}}", w.idp.issuer);
    assert!(before.contains(&format!("{up} 1")), "{before}");

    w.idp.stop();
    let noticed = eventually(Duration::from_secs(10), || async {
        admin(&w.running, "GET", "/readyz")
            .await
            .is_ok_and(|r| r.json()["identity_provider"]["reachable"] == false)
    })
    .await;
    assert!(noticed, "the outage was not noticed");
    let ready = admin(&w.running, "GET", "/readyz").await?;
    assert_eq!(ready.status, 200, "{}", ready.body);
    let body = ready.json();
    assert_eq!(body["ready"], true, "{body}");
    assert_eq!(body["reason"], serde_json::Value::Null);
    let route = |name: &str| {
        body["routes"]
            .as_array()
            .and_then(|rs| rs.iter().find(|r| r["name"] == name))
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(route("svc")["ready"], true, "{body}");
    assert_eq!(route("svc")["reason"], serde_json::Value::Null);
    for name in ["app", "admin", "stepup", "ws"] {
        let r = route(name);
        assert_eq!(r["ready"], false, "{name}: {body}");
        assert!(
            r["reason"]
                .as_str()
                .is_some_and(|why| why.contains("identity provider, which is unreachable since")),
            "{name}: {r}"
        );
    }
    // Bearer tokens are verified with the keys fetched before the outage.
    assert_eq!(route("api")["ready"], true, "{body}");
    let provider = &body["identity_provider"];
    assert_eq!(provider["discovered"], true);
    assert_eq!(provider["ready"], false);
    assert!(provider["last_error"].is_string(), "{provider}");
    assert!(provider["unreachable_since"].is_i64(), "{provider}");
    assert!(provider["last_success"].is_i64(), "{provider}");

    // The workload route is served as before.
    let served = get(w.running.addr, workload, "/svc/x", "").await?;
    assert_eq!(served.status, 200, "{served:?}");
    // A browser gets a page, an API client JSON: 503, with when to try again.
    let page = w.visit(&w.alice_laptop, "/", "").await?;
    assert_eq!(page.status, 503, "{page:?}");
    assert_eq!(page.header("retry-after").as_deref(), Some("10"));
    assert!(
        page.header("content-type")
            .is_some_and(|c| c.starts_with("text/html"))
    );
    assert!(page.body.contains("cannot be reached"), "{}", page.body);
    let request = format!(
        "GET /orders HTTP/1.1\r\nHost: localhost:{}\r\nAccept: application/json\r\nConnection: close\r\n\r\n",
        w.port
    );
    let api = raw(
        w.running.addr,
        w.browser(&w.alice_laptop),
        "localhost",
        &request,
    )
    .await?;
    assert_eq!(api.status, 503, "{api:?}");
    assert_eq!(api.header("retry-after").as_deref(), Some("10"));
    assert!(
        api.json()["reason"]
            .as_str()
            .is_some_and(|r| r.contains("cannot be reached")),
        "{}",
        api.body
    );
    // The decision log says why, with a stable code.
    let id = page.header("x-request-id").context("request id")?;
    let line = decision_for(&w.decisions, &id)
        .await
        .context("no decision line")?;
    assert_eq!(line["decision"], "deny");
    assert_eq!(line["codes"][0], "provider_unavailable", "{line}");
    assert_eq!(line["codes"][1], "sign_in_required", "{line}");
    assert_eq!(line["fault"], "upstream");
    assert_eq!(line["status"], 503);
    let after = metrics(&w.running).await?;
    assert!(after.contains(&format!("{up} 0")), "{after}");
    assert!(after.contains(&format!(
        "vigil_identity_provider_last_success_timestamp_seconds{{issuer=\"{}\"}}",
        w.idp.issuer
    )));
    Ok(())
}

/// With only login routes, a provider that refuses connections leaves nothing to serve:
/// `/readyz` is 503 and says why, and so does `vigil health`.
#[tokio::test]
async fn with_only_login_routes_an_unreachable_provider_makes_vigil_unready() -> Result<()> {
    let pki = Pki::new()?;
    std::fs::write(
        pki.path("session.keys"),
        KeyRing::generate_line().map_err(anyhow::Error::msg)? + "\n",
    )?;
    std::fs::write(pki.path("oidc.secret"), "secret\n")?;
    // Nothing listens there: every connection is refused.
    let closed = free_port().await?;
    let (upstream, _stop) = echo_upstream().await?;
    let text = format!(
        "{}[oidc]\nissuer = \"http://127.0.0.1:{closed}\"\nclient_id = \"vigil\"\nclient_secret_file = \"oidc.secret\"\n\n\
         [session]\nkeys_file = \"session.keys\"\n\n\
         [[route]]\nname = \"app\"\nhost = \"*\"\nupstream = \"http://{upstream}\"\nlogin = \"oidc\"\nallow = [{{ groups = [\"engineering\"] }}]\n",
        base_config("", &pki.path("d.log"))
    );
    let running = spawn(&pki, &text).await?;
    let failed = eventually(Duration::from_secs(10), || async {
        admin(&running, "GET", "/readyz")
            .await
            .is_ok_and(|r| r.json()["identity_provider"]["last_error"].is_string())
    })
    .await;
    assert!(failed, "discovery never failed");
    let ready = admin(&running, "GET", "/readyz").await?;
    assert_eq!(ready.status, 503, "{}", ready.body);
    let body = ready.json();
    assert_eq!(body["ready"], false);
    let reason = body["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with(
            "no route can serve: needs the identity provider, which is not discovered yet"
        ),
        "{body}"
    );
    assert_eq!(body["routes"][0]["name"], "app");
    assert_eq!(body["routes"][0]["ready"], false);
    assert_eq!(body["identity_provider"]["discovered"], false);
    assert_eq!(body["identity_provider"]["reachable"], false);

    // `vigil health` prints the reason, and fails.
    let addr = running.admin.context("admin")?.to_string();
    let health = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(["health", "--admin", &addr, "--path", "/readyz"])
            .output()
    })
    .await??;
    assert_eq!(health.status.code(), Some(1), "{health:?}");
    let stderr = String::from_utf8_lossy(&health.stderr);
    assert!(
        stderr.contains("/readyz answered 503: no route can serve: needs the identity provider"),
        "{stderr}"
    );

    // A browser on the route gets a 503 page with Retry-After; an API client 503 JSON.
    let laptop = pki.device("alice-laptop")?;
    let browser = client_config(Some(&laptop), pki.ca.cert_pem(), &[])?;
    let page = get(running.addr, browser.clone(), "/", "Accept: text/html\r\n").await?;
    assert_eq!(page.status, 503, "{page:?}");
    assert_eq!(page.header("retry-after").as_deref(), Some("10"));
    assert!(page.body.contains("not available yet"), "{}", page.body);
    let api = get(running.addr, browser, "/", "").await?;
    assert_eq!(api.status, 503, "{api:?}");
    assert_eq!(api.json()["status"], 503);
    Ok(())
}
