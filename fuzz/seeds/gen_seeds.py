#!/usr/bin/env python3
"""Writes the fuzz seed corpora from the golden frames (shared/vectors/frames.json).

Usage: python3 fuzz/seeds/gen_seeds.py [path/to/frames.json]
Input layouts are documented at the top of each target in fuzz/fuzz_targets/.
"""
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
VECTORS = sys.argv[1] if len(sys.argv) > 1 else "/work/shared/vectors/frames.json"
MAX_SEED = 2048  # keep the committed corpus small

frames = {f["name"]: bytes.fromhex(f["wire_hex"]) for f in json.load(open(VECTORS))["frames"]}


def slug(name):
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def write(target, name, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# decode_stream: ctl byte (low 3 bits = number of read sizes), read sizes, stream.
small = {n: w for n, w in frames.items() if len(w) <= MAX_SEED}
for name, wire in small.items():
    write("decode_stream", slug(name), bytes([0]) + wire)
everything = b"\xdf".join(small.values()) + b"\xdf"
write("decode_stream", "all_frames_one_read", bytes([0]) + everything)
write("decode_stream", "all_frames_byte_reads", bytes([1, 1]) + everything)
write("decode_stream", "all_frames_odd_reads", bytes([3, 3, 7, 13]) + everything)
# The long-field frame, cut to its header and first field: announces 40011 bytes.
write("decode_stream", "bind_long_tags_head", bytes([0]) + frames["bind_long_tags"][:64])

# device_input: conf byte, heartbeat selector, ops.
BIND, RECONNECT_ON_KICK, SMALL, NO_TICKETS, BATCH = 1, 2, 4, 8, 16
HB_10S = 1


def feed(wire):
    out = b""
    for i in range(0, len(wire), 128):
        chunk = wire[i : i + 128]
        out += bytes([len(chunk) - 1]) + chunk
    return out


def wait(quarter_secs):  # up to 64 quarter-seconds per op
    out = b""
    while quarter_secs > 0:
        step = min(quarter_secs, 64)
        out += bytes([0x80 | (step - 1)])
        quarter_secs -= step
    return out


HEARTBEAT = feed(b"\xdf")
CLOSED, SINK_TOOK, STOP, JUMP_200S, BATCH_TOGGLE = 0xC0, 0xC2, 0xC3, 0xC4, 0xC5
server_frames = [
    n
    for n in small
    if not n.startswith(("bind", "unbind", "http_request", "fast_connect (", "handshake_plain"))
    and n not in ("fast_connect", "ack")
]
for name in server_frames:
    ops = feed(frames["ok_bind"]) + feed(frames[name]) + wait(40) + HEARTBEAT + wait(40)
    write("device_input", slug(name), bytes([BIND, HB_10S]) + ops)
    write("device_input", slug(name) + "_batch", bytes([BIND | BATCH, HB_10S]) + ops)

session = (
    feed(frames["ok_bind"])
    + feed(frames["push_biz_ack (AES session cipher)"])
    + bytes([SINK_TOOK])
    + feed(frames["push_auto_ack (AES session cipher)"])
    + wait(36)
    + HEARTBEAT
    + wait(36)
    + HEARTBEAT
    + feed(frames["push_compressed_encrypted"])
    + wait(100)
)
write("device_input", "session", bytes([BIND, HB_10S]) + session)
write("device_input", "session_small_limits", bytes([BIND | SMALL, HB_10S]) + session)
write(
    "device_input",
    "kick_then_reconnect",
    bytes([BIND | RECONNECT_ON_KICK, HB_10S])
    + feed(frames["kick (raw)"])
    + bytes([JUMP_200S])
    + feed(frames["fast_connect_ok"])
    + feed(frames["ok_bind"]),
)
write(
    "device_input",
    "closed_then_handshake",
    bytes([BIND | NO_TICKETS, HB_10S])
    + bytes([CLOSED, JUMP_200S])
    + feed(frames["handshake_ok (raw)"])
    + feed(frames["ok_bind"])
    + wait(200),
)
write(
    "device_input",
    "fast_connect_refused",
    bytes([0, HB_10S]) + bytes([CLOSED, JUMP_200S]) + feed(frames["error_session_expired"]),
)
write("device_input", "silent_server", bytes([BIND, HB_10S]) + bytes([JUMP_200S] * 3))
write("device_input", "stop", bytes([BIND, 0]) + bytes([STOP, JUMP_200S, 0xC6]))
