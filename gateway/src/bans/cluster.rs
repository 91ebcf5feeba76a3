//! The Redis side of bans: jail counters (sorted sets of event times, trimmed to
//! `findtime` by a script), offence counts, the `bans` hash and the channel on
//! which bans and unbans are announced.

use std::sync::OnceLock;
use std::time::Duration;

use ipnet::IpNet;

use serde::{Deserialize, Serialize};

use super::table::Ban;
use crate::cluster::RedisLink;
use crate::config::JailConfig;

/// KEYS = [event counter, offence counter]; ARGV = findtime (ms), a unique member
/// suffix, maxretry, how long offences are remembered (ms). Returns 0, or — for
/// exactly one caller, the one whose event reaches maxretry — the offence number:
/// the counter is cleared and the offence counted in the same atomic step, so
/// concurrent failures on several instances make one ban, not several.
const HIT_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('ZADD', KEYS[1], now, now .. ':' .. ARGV[2])
redis.call('PEXPIRE', KEYS[1], window)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  return 0
end
redis.call('DEL', KEYS[1])
local n = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return n
";

/// Stores a ban unless a longer one for the same target is already stored, and
/// announces it. KEYS = [bans hash]; ARGV = target, ban JSON, until_ms, channel,
/// message.
const BAN_SCRIPT: &str = r"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  local ok, old = pcall(cjson.decode, cur)
  if ok and type(old) == 'table' and tonumber(old['until_ms']) and tonumber(old['until_ms']) > tonumber(ARGV[3]) then
    return 0
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
";

#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum Wire {
    Ban { ban: Ban },
    Unban { target: IpNet },
}

/// Scripts are hashed once; `invoke_async` sends EVALSHA (EVAL on first use).
fn script(cell: &'static OnceLock<redis::Script>, src: &str) -> &'static redis::Script {
    cell.get_or_init(|| redis::Script::new(src))
}
static HIT: OnceLock<redis::Script> = OnceLock::new();
static BAN: OnceLock<redis::Script> = OnceLock::new();

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

/// One matching event in Redis: `Some(0)` below maxretry, `Some(n)` when this event
/// makes the n-th ban, `None` when Redis could not answer.
pub async fn hit(
    link: &RedisLink,
    jail: &JailConfig,
    target: IpNet,
    keep: Duration,
) -> Option<u32> {
    let key = counter_key(link, &jail.name, &target);
    let offences = link.key(&format!("offences:{}:{}", jail.name, target));
    let window = jail.findtime.as_millis() as u64;
    let nonce: u64 = rand::random();
    let maxretry = jail.maxretry;
    let keep_ms = keep.as_millis() as u64;
    let script = script(&HIT, HIT_SCRIPT);
    link.run("bans", |mut c| async move {
        script
            .key(key)
            .key(offences)
            .arg(window)
            .arg(nonce)
            .arg(maxretry)
            .arg(keep_ms)
            .invoke_async::<u32>(&mut c)
            .await
    })
    .await
}

fn counter_key(link: &RedisLink, jail: &str, target: &IpNet) -> String {
    link.key(&format!("jail:{jail}:{target}"))
}

/// Forgets the event counters of a target (after an unban).
pub async fn reset_counters(link: &RedisLink, jails: &[String], target: &IpNet) {
    if jails.is_empty() {
        return;
    }
    let keys: Vec<String> = jails.iter().map(|j| counter_key(link, j, target)).collect();
    link.run("bans", |mut c| async move {
        redis::cmd("DEL").arg(&keys).query_async::<()>(&mut c).await
    })
    .await;
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
    let until = ban.until_ms;
    let script = script(&BAN, BAN_SCRIPT);
    link.run("bans", |mut c| async move {
        script
            .key(hash)
            .arg(field)
            .arg(stored)
            .arg(until)
            .arg(ch)
            .arg(msg)
            .invoke_async::<u32>(&mut c)
            .await
    })
    .await
    .is_some()
}

/// Removes and announces an unban: `Some(true)` when Redis held the ban, `None`
/// when Redis could not be reached.
pub async fn publish_unban(link: &RedisLink, target: &IpNet) -> Option<bool> {
    let Ok(msg) = serde_json::to_string(&Wire::Unban { target: *target }) else {
        return Some(false);
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
    .map(|n| n > 0)
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
