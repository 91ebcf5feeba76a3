//! JWT test kit: real key pairs (Ed25519, P-256, RSA), token signing, and a fake
//! auth server publishing a JWKS and a revocation feed that tests can change.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub struct TestKey {
    pub kid: String,
    pub alg: Algorithm,
    pub encoding: EncodingKey,
    pub jwk: Value,
}

impl TestKey {
    pub fn ed25519(kid: &str) -> TestKey {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        let sk = ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng);
        let der = sk.to_pkcs8_der().expect("pkcs8");
        let x = B64.encode(sk.verifying_key().as_bytes());
        TestKey {
            kid: kid.into(),
            alg: Algorithm::EdDSA,
            encoding: EncodingKey::from_ed_der(der.as_bytes()),
            jwk: json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"}),
        }
    }

    pub fn p256(kid: &str) -> TestKey {
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        use p256::pkcs8::EncodePrivateKey;
        let sk = p256::SecretKey::random(&mut rand_core::OsRng);
        let der = sk.to_pkcs8_der().expect("pkcs8");
        let point = sk.public_key().to_encoded_point(false);
        let (x, y) = (point.x().expect("x"), point.y().expect("y"));
        TestKey {
            kid: kid.into(),
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_der(der.as_bytes()),
            jwk: json!({"kty": "EC", "crv": "P-256", "x": B64.encode(x), "y": B64.encode(y), "kid": kid, "alg": "ES256"}),
        }
    }

    pub fn rsa(kid: &str) -> TestKey {
        use rsa::pkcs1::EncodeRsaPrivateKey;
        use rsa::traits::PublicKeyParts;
        let sk = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 2048).expect("rsa");
        let der = sk.to_pkcs1_der().expect("pkcs1");
        TestKey {
            kid: kid.into(),
            alg: Algorithm::RS256,
            encoding: EncodingKey::from_rsa_der(der.as_bytes()),
            jwk: json!({"kty": "RSA", "n": B64.encode(sk.n().to_bytes_be()), "e": B64.encode(sk.e().to_bytes_be()), "kid": kid, "alg": "RS256"}),
        }
    }

    /// Signs `claims` with this key, under its `kid` and algorithm.
    pub fn sign(&self, claims: &Value) -> String {
        let mut h = Header::new(self.alg);
        h.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&h, claims, &self.encoding).expect("sign")
    }
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Standard claims for the test issuer/audience, valid for 15 minutes.
pub fn claims(sub: &str, role: &str) -> Value {
    let n = now();
    json!({
        "sub": sub, "email": format!("{sub}@example.com"), "role": role,
        "iss": "https://galion.test", "aud": "galion", "iat": n, "nbf": n, "exp": n + 900,
        "jti": format!("jti-{sub}-{}", n),
    })
}

#[derive(Default)]
struct State {
    jwks: Value,
    revoked: Vec<(String, u64)>,
    down: bool,
    jwks_fetches: usize,
}

/// A fake galion-auth: `GET /.well-known/jwks.json` and `GET /revocations`.
pub struct FakeAuth {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeAuth {
    pub async fn start(keys: &[&TestKey]) -> FakeAuth {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(State::default()));
        let fa = FakeAuth {
            addr,
            state: state.clone(),
            task: tokio::spawn(async move {
                loop {
                    let Ok((mut s, _)) = listener.accept().await else {
                        break;
                    };
                    let state = state.clone();
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 8192];
                        let Ok(n) = s.read(&mut buf).await else {
                            return;
                        };
                        let head = String::from_utf8_lossy(&buf[..n]).to_string();
                        let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                        let (status, body) = {
                            let mut st = state.lock().expect("state");
                            if st.down {
                                (503, json!({"error": "down"}))
                            } else if path.starts_with("/.well-known/jwks.json") {
                                st.jwks_fetches += 1;
                                (200, st.jwks.clone())
                            } else if path.starts_with("/revocations") {
                                let list: Vec<Value> = st
                                    .revoked
                                    .iter()
                                    .map(|(j, e)| json!({"jti": j, "exp": e, "revoked_at": now()}))
                                    .collect();
                                (200, json!({"revocations": list, "server_time": now()}))
                            } else {
                                (404, json!({}))
                            }
                        };
                        let body = body.to_string();
                        let resp = format!("HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
                        let _ = s.write_all(resp.as_bytes()).await;
                    });
                }
            }),
        };
        fa.set_keys(keys);
        fa
    }

    pub fn set_keys(&self, keys: &[&TestKey]) {
        let jwks = json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()});
        self.state.lock().expect("state").jwks = jwks;
    }

    pub fn revoke(&self, jti: &str, exp: u64) {
        self.state
            .lock()
            .expect("state")
            .revoked
            .push((jti.into(), exp));
    }

    pub fn set_down(&self, down: bool) {
        self.state.lock().expect("state").down = down;
    }

    pub fn jwks_fetches(&self) -> usize {
        self.state.lock().expect("state").jwks_fetches
    }

    pub fn jwks_url(&self) -> String {
        format!("http://{}/.well-known/jwks.json", self.addr)
    }

    pub fn revocations_url(&self) -> String {
        format!("http://{}/revocations", self.addr)
    }
}

impl Drop for FakeAuth {
    fn drop(&mut self) {
        self.task.abort();
    }
}
