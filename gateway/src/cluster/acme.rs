//! ACME in cluster mode: one instance orders a certificate (a Redis lock per
//! certificate), every instance answers its HTTP-01 challenges (the CA's
//! validator may reach any of them behind the load balancer), and the issued
//! certificate is shared through Redis for the others to install.
//!
//! The shared certificate includes its private key: Redis here is the
//! cluster's private store (it also carries bans and revocations); keep it on a
//! private network with authentication, as the operations guide says.

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

/// Shares an issued certificate with the other instances.
pub async fn share(link: &RedisLink, name: &str, issued: &Issued) {
    let key = cert_key(link, name);
    let Ok(json) = serde_json::to_string(&SharedCert {
        chain_pem: issued.chain_pem.clone(),
        key_pem: issued.key_pem.clone(),
    }) else {
        return;
    };
    link.run(COMPONENT, |mut c| async move {
        c.set::<_, _, ()>(key, json).await
    })
    .await;
}

/// The certificate a peer shared for `name`.
pub async fn shared(link: &RedisLink, name: &str) -> Option<SharedCert> {
    let key = cert_key(link, name);
    let json = link
        .run(COMPONENT, |mut c| async move {
            c.get::<_, Option<String>>(key).await
        })
        .await
        .flatten()?;
    serde_json::from_str(&json).ok()
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
