//! The Redis side of bans: jail counters (sorted sets of event times, trimmed to
//! `findtime` by a script), offence counts, the `bans` hash and the channel on
//! which bans and unbans are announced.

use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::table::Ban;
use crate::cluster::RedisLink;
use crate::config::JailConfig;

/// KEYS[1] = counter; ARGV = findtime (ms), a unique member suffix. Returns the
/// number of events within findtime, this one included.
pub const HIT_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('ZADD', KEYS[1], now, now .. ':' .. ARGV[2])
redis.call('PEXPIRE', KEYS[1], window)
return redis.call('ZCARD', KEYS[1])
";

#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum Wire {
    Ban { ban: Ban },
    Unban { target: IpNet },
}

pub enum Message {
    Ban(Ban),
    Unban(IpNet),
}

pub fn parse_message(payload: &[u8]) -> Option<Message> {
    match serde_json::from_slice::<Wire>(payload).ok()? {
        Wire::Ban { ban } => Some(Message::Ban(ban)),
        Wire::Unban { target } => Some(Message::Unban(target)),
    }
}

pub fn channel(link: &RedisLink) -> String {
    link.key("bans")
}

pub async fn hit(
    link: &RedisLink,
    script: &redis::Script,
    jail: &JailConfig,
    target: IpNet,
) -> Option<u32> {
    let key = link.key(&format!("jail:{}:{}", jail.name, target));
    let window = jail.findtime.as_millis() as u64;
    let nonce: u64 = rand::random();
    link.run("bans", |mut c| async move {
        script
            .key(key)
            .arg(window)
            .arg(nonce)
            .invoke_async::<u32>(&mut c)
            .await
    })
    .await
}

pub async fn offend(link: &RedisLink, jail: &str, target: IpNet, keep: Duration) -> Option<u32> {
    let key = link.key(&format!("offences:{jail}:{target}"));
    let keep_ms = keep.as_millis() as u64;
    link.run("bans", |mut c| async move {
        let (n, _): (u32, i64) = redis::pipe()
            .atomic()
            .incr(&key, 1)
            .pexpire(&key, keep_ms as i64)
            .query_async(&mut c)
            .await?;
        Ok(n)
    })
    .await
}

/// Stores and announces a ban; false when Redis could not be reached.
pub async fn publish_ban(link: &RedisLink, ban: &Ban) -> bool {
    let (Ok(stored), Ok(msg)) = (
        serde_json::to_string(ban),
        serde_json::to_string(&Wire::Ban { ban: ban.clone() }),
    ) else {
        return false;
    };
    let hash = link.key("bans");
    let field = ban.target.to_string();
    let ch = channel(link);
    link.run("bans", |mut c| async move {
        redis::pipe()
            .atomic()
            .hset(&hash, &field, stored)
            .ignore()
            .publish(&ch, msg)
            .ignore()
            .query_async::<()>(&mut c)
            .await
    })
    .await
    .is_some()
}

/// Removes and announces an unban; true when Redis held the ban.
pub async fn publish_unban(link: &RedisLink, target: &IpNet) -> bool {
    let Ok(msg) = serde_json::to_string(&Wire::Unban { target: *target }) else {
        return false;
    };
    let hash = link.key("bans");
    let field = target.to_string();
    let ch = channel(link);
    link.run("bans", |mut c| async move {
        let (removed,): (u32,) = redis::pipe()
            .atomic()
            .hdel(&hash, &field)
            .publish(&ch, msg)
            .ignore()
            .query_async(&mut c)
            .await?;
        Ok(removed)
    })
    .await
    .is_some_and(|n| n > 0)
}

/// Every ban in Redis; expired ones are deleted on the way.
pub async fn all_bans(link: &RedisLink) -> Option<Vec<Ban>> {
    let hash = link.key("bans");
    let h2 = hash.clone();
    let raw: Vec<(String, String)> = link
        .run("bans", |mut c| async move {
            redis::cmd("HGETALL").arg(&h2).query_async(&mut c).await
        })
        .await?;
    let now = super::now_ms();
    let mut out = Vec::with_capacity(raw.len());
    let mut stale = Vec::new();
    for (field, json) in raw {
        match serde_json::from_str::<Ban>(&json) {
            Ok(b) if b.until_ms > now => out.push(b),
            _ => stale.push(field),
        }
    }
    if !stale.is_empty() {
        link.run("bans", |mut c| async move {
            redis::cmd("HDEL")
                .arg(&hash)
                .arg(&stale)
                .query_async::<()>(&mut c)
                .await
        })
        .await;
    }
    Some(out)
}
