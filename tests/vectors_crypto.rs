//! Golden crypto and Redis-value vectors from the real MPUSH Java classes
//! (`shared/vectors/crypto.json`, `shared/vectors/tickets.json`). A disagreement is a bug in
//! our code, not in the vectors; a failure names the case and the first differing byte.

mod common;

use std::path::Path;

use mpush_fleet::crypto::{
    self, AesBatch, AesCipher, RsaDecryptor, MPUSH_DEFAULT_PRIVATE_KEY, MPUSH_DEFAULT_PUBLIC_KEY,
};
use mpush_fleet::tickets::format::{
    client_ticket_key, reusable_session_key, ClientTicket, ReusableSession, CLIENT_TICKET_PREFIX,
    REUSABLE_SESSION_PREFIX,
};
use serde_json::Value;

fn load(dir: &Path, name: &str) -> Value {
    let path = dir.join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: bad JSON: {e}", path.display()))
}

fn str_of<'a>(v: &'a Value, field: &str) -> &'a str {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("vector field `{field}` is not a string"))
}

fn unhex(v: &Value, field: &str) -> Vec<u8> {
    hex::decode(str_of(v, field)).unwrap_or_else(|e| panic!("vector field `{field}`: {e}"))
}

fn key16(v: &Value, field: &str) -> [u8; 16] {
    unhex(v, field)
        .try_into()
        .unwrap_or_else(|_| panic!("vector field `{field}` is not 16 bytes"))
}

/// Asserts equal bytes; on a mismatch names the case and the first differing offset.
#[track_caller]
fn assert_bytes(case: &str, got: &[u8], want: &[u8]) {
    if got == want {
        return;
    }
    let at = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    panic!(
        "{case}: first difference at byte {at} (got {} bytes, want {})\n  got:  {}\n  want: {}",
        got.len(),
        want.len(),
        hex::encode(&got[at.min(got.len())..(at + 16).min(got.len())]),
        hex::encode(&want[at.min(want.len())..(at + 16).min(want.len())]),
    );
}

#[track_caller]
fn assert_text(case: &str, got: &str, want: &str) {
    assert_bytes(case, got.as_bytes(), want.as_bytes());
}

/// The body of a wire frame: the 13-byte header's i32 length, then exactly that many bytes.
fn frame_body<'a>(case: &str, wire: &'a [u8]) -> &'a [u8] {
    assert!(wire.len() >= 13, "{case}: shorter than a header");
    let len = i32::from_be_bytes(wire[..4].try_into().unwrap()) as usize;
    assert_eq!(
        wire.len(),
        13 + len,
        "{case}: header length disagrees with the frame"
    );
    &wire[13..]
}

#[test]
fn aes_cbc_samples_both_directions() {
    let Some(dir) = common::vectors_dir() else {
        return;
    };
    let v = load(&dir, "crypto.json");
    let cipher = AesCipher::new(key16(&v["aes"], "key_hex"), key16(&v["aes"], "iv_hex"));
    let samples = v["aes_cbc"].as_array().expect("aes_cbc array");
    assert!(!samples.is_empty());
    let mut batch = AesBatch::new();
    let mut jobs = Vec::new();
    for (i, s) in samples.iter().enumerate() {
        let (plain, ct) = (unhex(s, "plain_hex"), unhex(s, "cipher_hex"));
        let case = format!("aes_cbc[{i}] ({} byte plaintext)", plain.len());
        assert_bytes(&format!("{case} encrypt"), &cipher.encrypt(&plain), &ct);
        let got = cipher
            .decrypt(&ct)
            .unwrap_or_else(|e| panic!("{case} decrypt: {e}"));
        assert_bytes(&format!("{case} decrypt"), &got, &plain);
        let enc = batch.push_encrypt(&cipher, &plain);
        let dec = batch.push_decrypt(&cipher, &ct);
        jobs.push((case, enc, dec, plain, ct));
    }
    batch.run();
    for (case, enc, dec, plain, ct) in jobs {
        assert_bytes(
            &format!("{case} batch encrypt"),
            batch.output(enc).unwrap(),
            &ct,
        );
        assert_bytes(
            &format!("{case} batch decrypt"),
            batch.output(dec).unwrap(),
            &plain,
        );
    }
}

#[test]
fn mix_key_samples() {
    let Some(dir) = common::vectors_dir() else {
        return;
    };
    let v = load(&dir, "crypto.json");
    let samples = v["mix_key"].as_array().expect("mix_key array");
    assert!(!samples.is_empty());
    for (i, s) in samples.iter().enumerate() {
        let got = crypto::mix_keys(&key16(s, "client_key_hex"), &key16(s, "server_key_hex"));
        assert_bytes(&format!("mix_key[{i}]"), &got, &key16(s, "session_key_hex"));
    }
}

#[test]
fn cipher_str_both_ways() {
    let Some(dir) = common::vectors_dir() else {
        return;
    };
    let v = load(&dir, "crypto.json");
    let c = &v["cipher_str"];
    let (key, iv) = (key16(c, "key_hex"), key16(c, "iv_hex"));
    assert_text(
        "cipher_str format",
        &crypto::format_cipher_str(&key, &iv),
        str_of(c, "text"),
    );
    let (k2, iv2) = crypto::parse_cipher_str(str_of(c, "text")).expect("cipher_str parses");
    assert_bytes("cipher_str parse key", &k2, &key);
    assert_bytes("cipher_str parse iv", &iv2, &iv);
}

#[test]
fn md5_session_id() {
    let Some(dir) = common::vectors_dir() else {
        return;
    };
    let v = load(&dir, "crypto.json");
    let m = &v["md5_session_id"];
    assert_text(
        "md5_session_id",
        &crypto::session_id_md5_hex(str_of(m, "input")),
        str_of(m, "hex"),
    );
}

#[test]
fn rsa_handshake_decrypts_with_default_private_key() {
    let Some(dir) = common::vectors_dir() else {
        return;
    };
    let v = load(&dir, "crypto.json");
    let r = &v["rsa_handshake"];
    // Our constants are the keys the Java side used.
    assert_text(
        "rsa public key const",
        MPUSH_DEFAULT_PUBLIC_KEY,
        str_of(r, "public_key_b64"),
    );
    assert_text(
        "rsa private key const",
        MPUSH_DEFAULT_PRIVATE_KEY,
        str_of(r, "private_key_b64"),
    );

    let wire = unhex(r, "encrypted_wire_hex");
    let plain_wire = unhex(r, "handshake_plain_wire_hex");
    let ct = frame_body("encrypted_wire", &wire);
    let want = frame_body("handshake_plain_wire", &plain_wire);

    let from_text = RsaDecryptor::from_pkcs8_base64(str_of(r, "private_key_b64"))
        .expect("MPUSH default private key (no CRT fields) parses");
    for (case, dec) in [
        ("from_pkcs8_base64", from_text),
        ("mpush_default", RsaDecryptor::mpush_default()),
    ] {
        let got = dec
            .decrypt(ct)
            .unwrap_or_else(|e| panic!("rsa_handshake {case}: {e}"));
        assert_bytes(&format!("rsa_handshake {case}"), &got, want);
    }
    // And the public key a server would publish is the one the client used.
    assert_text(
        "rsa public key from private",
        &RsaDecryptor::mpush_default().public_key_spki_base64(),
        str_of(r, "public_key_b64"),
    );
}

#[test]
fn client_ticket_value() {
    let Some(dir) = common::vectors_dir() else {
        return;
    };
    let v = load(&dir, "tickets.json");
    let cipher = AesCipher::new(key16(&v["aes"], "key_hex"), key16(&v["aes"], "iv_hex"));
    let t = &v["client_ticket"];
    let value = str_of(t, "value");
    let ticket = ClientTicket::from_json(value).expect("client_ticket parses");
    assert_eq!(ticket.cipher, cipher, "client_ticket cipher");
    assert_eq!(
        ticket.session_id, "0123456789abcdef0123456789abcdef",
        "client_ticket sessionId"
    );
    assert_eq!(
        ticket.expire_time_ms, 1_764_115_200_123,
        "client_ticket expireTime"
    );
    assert_text("client_ticket re-encode", &ticket.to_json(), value);
    let device_id = str_of(t, "key")
        .strip_prefix(CLIENT_TICKET_PREFIX)
        .expect("mp:fcd: key");
    assert_text(
        "client_ticket key",
        &client_ticket_key(CLIENT_TICKET_PREFIX, device_id),
        str_of(t, "key"),
    );
}

#[test]
fn server_session_value() {
    let Some(dir) = common::vectors_dir() else {
        return;
    };
    let v = load(&dir, "tickets.json");
    let cipher = AesCipher::new(key16(&v["aes"], "key_hex"), key16(&v["aes"], "iv_hex"));
    let s = &v["server_session"];
    let value = str_of(s, "value");
    let session = ReusableSession::decode(value).expect("server_session parses");
    assert_eq!(session.cipher, cipher, "server_session cipher");
    assert_eq!(
        (
            &*session.os_name,
            &*session.os_version,
            &*session.client_version,
            &*session.device_id
        ),
        ("android", "1.0.1", "1.0.0", "device-1"),
        "server_session fields"
    );
    assert_text("server_session re-encode", &session.encode(), value);
    // Its sessionId is the ticket's: the two values describe one session.
    let ticket = ClientTicket::from_json(str_of(&v["client_ticket"], "value")).unwrap();
    assert_text(
        "server_session key",
        &reusable_session_key(REUSABLE_SESSION_PREFIX, &ticket.session_id),
        str_of(s, "key"),
    );
}
