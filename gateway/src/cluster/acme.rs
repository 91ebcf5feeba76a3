//! ACME in cluster mode: one instance orders a certificate (a Redis lock per
//! certificate), every instance answers its HTTP-01 challenges (the CA's
//! validator may reach any of them behind the load balancer), and the issued
//! certificate is shared through Redis for the others to install.
//!
//! The shared certificate includes its private key, so it is stored sealed
//! (`crate::seal`, under `store.redis.seal_key_*`, bound to its Redis key):
//! whoever reads Redis learns no key, and whoever writes it cannot make the
//! instances serve a certificate of their own. A value that does not open is
//! ignored (warned once per value); the instance then orders for itself when
//! renewal is due.

use std::collections::HashMap;
use std::sync::Mutex;

use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use super::RedisLink;
use crate::tls::acme::{Issued, Publish};

const COMPONENT: &str = "acme";
/// Longer than an order takes (validation polls give up after 90 s).
const LOCK_MS: u64 = 10 * 60 * 1000;
/// A challenge answer outlives the CA's validation attempts.
const TOKEN_SECS: u64 = 10 * 60;

#[derive(Serialize, Deserialize)]
pub struct SharedCert {
    pub chain_pem: String,
    pub key_pem: String,
}

fn token_key(link: &RedisLink, token: &str) -> String {
    link.key(&format!("acme:http01:{token}"))
}

fn lock_key(link: &RedisLink, name: &str) -> String {
    link.key(&format!("acme:lock:{name}"))
}

fn cert_key(link: &RedisLink, name: &str) -> String {
    link.key(&format!("acme:cert:{name}"))
}

/// A peer's HTTP-01 answer for `token`.
pub async fn http01(link: &RedisLink, token: &str) -> Option<String> {
    let key = token_key(link, token);
    link.run(COMPONENT, |mut c| async move {
        c.get::<_, Option<String>>(key).await
    })
    .await
    .flatten()
}

/// Takes the order lock of the certificate named `name`; `None` when Redis
/// cannot say (the caller orders alone rather than never).
pub async fn lock(link: &RedisLink, name: &str, owner: &str) -> Option<bool> {
    let key = lock_key(link, name);
    let owner = owner.to_owned();
    link.run(COMPONENT, |mut c| async move {
        let set: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(owner)
            .arg("NX")
            .arg("PX")
            .arg(LOCK_MS)
            .query_async(&mut c)
            .await?;
        Ok(set.is_some())
    })
    .await
}

/// Releases the lock if this instance still holds it.
pub async fn unlock(link: &RedisLink, name: &str, owner: &str) {
    let key = lock_key(link, name);
    let owner = owner.to_owned();
    let script = redis::Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
    );
    link.run(COMPONENT, |mut c| async move {
        script.key(key).arg(owner).invoke_async::<i64>(&mut c).await
    })
    .await;
}

/// Shares an issued certificate with the other instances, sealed.
pub async fn share(link: &RedisLink, name: &str, issued: &Issued) {
    let key = cert_key(link, name);
    let Some(seal) = link.config.seal_key.as_ref() else {
        // The configuration requires a seal key with tls.acme in cluster mode.
        tracing::error!(host = %name, "no store.redis seal key: the certificate is not shared");
        return;
    };
    let Ok(json) = serde_json::to_vec(&SharedCert {
        chain_pem: issued.chain_pem.clone(),
        key_pem: issued.key_pem.clone(),
    }) else {
        return;
    };
    let Some(sealed) = seal.seal(&key, &json) else {
        tracing::error!(host = %name, "cannot seal the certificate (no randomness): not shared");
        return;
    };
    link.run(COMPONENT, |mut c| async move {
        c.set::<_, _, ()>(key, sealed).await
    })
    .await;
}

/// The certificate a peer shared for `name`, when it opens under our seal key.
pub async fn shared(link: &RedisLink, name: &str) -> Option<SharedCert> {
    let key = cert_key(link, name);
    let text = link
        .run(COMPONENT, |mut c| {
            let key = key.clone();
            async move { c.get::<_, Option<String>>(key).await }
        })
        .await
        .flatten()?;
    let opened = link
        .config
        .seal_key
        .as_ref()
        .and_then(|k| k.open(&key, &text))
        .and_then(|json| serde_json::from_slice(&json).ok());
    if opened.is_none() {
        refused(name, &text);
    }
    opened
}

/// Warns about a shared value that does not open, once per value: the
/// schedule looks every few seconds.
fn refused(name: &str, text: &str) {
    static SEEN: Mutex<Option<HashMap<String, [u8; 32]>>> = Mutex::new(None);
    let digest: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(text.as_bytes()).into();
    let Ok(mut seen) = SEEN.lock() else {
        return;
    };
    let seen = seen.get_or_insert_with(HashMap::new);
    if seen.get(name) == Some(&digest) {
        return;
    }
    seen.insert(name.to_owned(), digest);
    tracing::warn!(
        host = %name,
        "ignored the certificate shared in Redis: it does not open with this instance's \
         store.redis seal key (another key on the instance that ordered it, an unsealed \
         value from an older version, or a value written by someone else)"
    );
}

/// Publishes HTTP-01 answers for the peers.
pub struct ClusterPublish<'a>(pub &'a RedisLink);

impl Publish for ClusterPublish<'_> {
    async fn http01(&self, token: &str, key_auth: &str) {
        let (key, value) = (token_key(self.0, token), key_auth.to_owned());
        self.0
            .run(COMPONENT, |mut c| async move {
                c.set_ex::<_, _, ()>(key, value, TOKEN_SECS).await
            })
            .await;
    }
}
