//! galion-auth tokens: JWKS verification, key rotation with the CLI,
//! forged tokens, HS256 mode. SQLite and PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;
use std::time::Duration;

use galion_common::engine_tests;
use galion_common::jwt::JwtVerifier;
use galion_common::testing::{eventually, TestEnv};
use reqwest::StatusCode;
use serde_json::{json, Value};
use support::*;

async fn jwks_and_key_rotation(env: TestEnv) {
    let srv = start(&env, |_| {}).await;
    register(&srv, "gus@example.com", "correct horse battery").await;
    let old = login(&srv, "gus@example.com", "correct horse battery").await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let old_kid = kid_of(&old);
    let jwks: Value = http()
        .get(format!("{}/.well-known/jwks.json", srv.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"][0]["kid"], old_kid.as_str());
    assert_eq!(jwks["keys"][0]["kty"], "OKP");
    assert_eq!(jwks["keys"][0]["alg"], "EdDSA");
    assert!(!jwks.to_string().contains("private"));
    // A verifier that only knows the JWKS URL accepts the token.
    let settings = galion_common::config::JwtSettings::default();
    let verifier = JwtVerifier::remote(&settings, &srv.url, Duration::from_millis(100));
    let claims = verifier.verify(&old).await.unwrap();
    assert_eq!(claims.email, "gus@example.com");
    assert_eq!(
        (claims.iss.as_str(), claims.aud.as_str()),
        ("https://galion.app", "galion")
    );
    assert_eq!(claims.exp - claims.iat, 900);

    // Rotate with the CLI, as an operator would, while the server runs.
    let out = Command::new(env!("CARGO_BIN_EXE_galion-auth"))
        .arg("rotate-keys")
        .env("DATABASE_URL", &env.database_url)
        .env("GALION_DATA_DIR", &env.dir)
        .env("GALION_AUTH_KEY_ENCRYPTION_KEY", hex::encode([7u8; 32]))
        .env("GALION_SERVICE_TOKEN", SERVICE_TOKEN)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new_kid = String::from_utf8_lossy(&out.stdout)
        .trim()
        .rsplit(' ')
        .next()
        .unwrap()
        .to_string();
    assert_ne!(new_kid, old_kid);
    let fresh = eventually(
        "a token signed with the new key",
        Duration::from_secs(10),
        || async {
            let t = login(&srv, "gus@example.com", "correct horse battery").await["access_token"]
                .as_str()
                .unwrap()
                .to_string();
            (kid_of(&t) == new_kid).then_some(t)
        },
    )
    .await;
    let jwks: Value = http()
        .get(format!("{}/.well-known/jwks.json", srv.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids, [new_kid.as_str(), old_kid.as_str()]);
    // Old tokens keep working until they expire; new ones verify remotely too.
    assert_eq!(me(&srv, &old).await.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(verifier.verify(&fresh).await.is_ok());
    assert!(verifier.verify(&old).await.is_ok());
    srv.stop().await;
}

async fn forged_tokens_are_refused(env: TestEnv) {
    let srv = start(&env, |_| {}).await;
    register(&srv, "hal@example.com", "correct horse battery").await;
    let t = login(&srv, "hal@example.com", "correct horse battery").await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let parts: Vec<&str> = t.split('.').collect();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut claims: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    claims["role"] = json!("admin");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64.encode(claims.to_string()),
        parts[2]
    );
    let none = format!(
        "{}.{}.",
        b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
        parts[1]
    );
    let hs = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"guessed"),
    )
    .unwrap();
    for bad in [tampered.as_str(), none.as_str(), hs.as_str(), "garbage", ""] {
        assert_eq!(
            me(&srv, bad).await.status(),
            StatusCode::UNAUTHORIZED,
            "{bad}"
        );
    }
    let r = http()
        .get(format!("{}/me", srv.url))
        .header("X-User-Id", "x")
        .header("X-User-Role", "admin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    srv.stop().await;
}

async fn hs256_mode(env: TestEnv) {
    let srv = start(&env, |s| {
        s.algorithm = galion_auth::settings::SigningAlg::Hs256;
        s.common.jwt.hs256_secret = Some("0123456789abcdef0123456789abcdef".into());
    })
    .await;
    register(&srv, "ida@example.com", "correct horse battery").await;
    let t = login(&srv, "ida@example.com", "correct horse battery").await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        jsonwebtoken::decode_header(&t).unwrap().alg,
        jsonwebtoken::Algorithm::HS256
    );
    assert_eq!(me(&srv, &t).await.status(), StatusCode::OK);
    srv.stop().await;
}

async fn revocations_mirrored_to_redis(env: TestEnv) {
    let url =
        std::env::var("GALION_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    let srv = start(&env, |s| s.redis_url = Some(url.clone())).await;
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = match client.get_multiplexed_async_connection().await {
        Ok(c) => c,
        Err(e) => panic!("this test needs Redis at {url} (set GALION_TEST_REDIS_URL): {e}"),
    };
    register(&srv, "ray@example.com", "correct horse battery").await;
    let t = login(&srv, "ray@example.com", "correct horse battery").await;
    let access = t["access_token"].as_str().unwrap();
    let claims = jsonwebtoken::dangerous::insecure_decode::<galion_common::jwt::Claims>(access)
        .unwrap()
        .claims;
    let key = format!("galion:revoked:{}", claims.jti);
    let r = http()
        .post(format!("{}/logout", srv.url))
        .bearer_auth(access)
        .json(&json!({"refresh_token": t["refresh_token"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let exp: i64 = eventually("the revoked jti in redis", Duration::from_secs(10), || {
        let mut conn = conn.clone();
        let key = key.clone();
        async move {
            redis::cmd("GET")
                .arg(&key)
                .query_async::<Option<i64>>(&mut conn)
                .await
                .unwrap()
        }
    })
    .await;
    assert_eq!(exp, claims.exp);
    let ttl: i64 = redis::cmd("TTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    // Until exp (15 min away) + the revocation retention (5 min): verifiers
    // accept the token for their leeway after exp.
    assert!(ttl > 900 && ttl <= 1200, "{ttl}");
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    srv.stop().await;
}

engine_tests!(
    jwks_and_key_rotation,
    forged_tokens_are_refused,
    hs256_mode,
    revocations_mirrored_to_redis
);
