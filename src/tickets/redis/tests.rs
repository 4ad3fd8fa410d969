//! The store's pure parts: a ticket's TTL, a reply read as a ticket, keys rendered from the
//! index, URLs parsed without connecting. Against a real Redis: tests/redis_store.rs.

use fred::prelude::Value;

use super::*;
use crate::crypto::AesCipher;
use crate::tickets::format::CLIENT_TICKET_PREFIX;

fn ticket(expire_time_ms: i64) -> ClientTicket {
    ClientTicket {
        session_id: "s".into(),
        expire_time_ms,
        cipher: AesCipher::new([1; 16], [2; 16]),
    }
}

#[test]
fn ttl_never_outlives_the_ticket() {
    let max = Duration::from_secs(300);
    assert_eq!(ticket_ttl_ms(&ticket(1_000_000), 0, max), Some(300_000));
    assert_eq!(ticket_ttl_ms(&ticket(10_000), 2_000, max), Some(8_000));
    assert_eq!(ticket_ttl_ms(&ticket(2_000), 2_000, max), None);
    assert_eq!(ticket_ttl_ms(&ticket(i64::MIN), i64::MAX, max), None);
    assert_eq!(
        ticket_ttl_ms(&ticket(i64::MAX), 0, Duration::MAX),
        Some(i64::MAX)
    );
}

#[test]
fn replies_decode_without_panics() {
    let good = ticket(5).to_json();
    assert_eq!(decode(Value::Null), Ok(None));
    assert_eq!(decode(Value::from(good.as_str())), Ok(Some(ticket(5))));
    assert_eq!(
        decode(Value::Bytes(good.clone().into_bytes().into())),
        Ok(Some(ticket(5)))
    );
    assert!(decode(Value::Bytes(vec![0xff, 0xfe].into())).is_err());
    assert!(decode(Value::Integer(3)).is_err());
    assert!(decode(Value::from("{\"expireTime\":1}")).is_err());
    assert!(decode(Value::from(good.replacen("|1|", "|300|", 1).as_str())).is_err());
}

fn open_store(url: &str) -> Result<RedisTickets, BadRedisUrl> {
    RedisTickets::new(RedisConfig::new(url), Template::new("d-{i}"))
}

#[test]
fn keys_are_rendered_from_the_index_at_the_edge() {
    let mut store = open_store("redis://127.0.0.1:1/0").unwrap();
    assert_eq!(store.key(7), "mp:fcd:d-7");
    assert_eq!(store.key(u32::MAX), format!("mp:fcd:d-{}", u32::MAX));
    assert_eq!(
        store.key(12),
        crate::tickets::format::client_ticket_key(CLIENT_TICKET_PREFIX, "d-12")
    );
}

#[test]
fn urls_parse_without_connecting() {
    let store = open_store("redis://127.0.0.1:1/0");
    assert!(store.is_ok());
    assert!(open_store("redis-cluster://127.0.0.1:7000").is_ok());
    assert!(open_store("redis-sentinel://127.0.0.1:26379/0?sentinelServiceName=mymaster").is_ok());
    let bad = open_store("redis://user:secret@host:99999999/0").unwrap_err();
    assert!(!bad.to_string().contains("secret"), "{bad}");
    assert!(open_store("not a url").is_err());
}
