//! The device's clock arithmetic past 2^32 ms, and its size (a fleet holds many).

use super::*;

#[test]
fn deadlines_past_2_pow_32_ms_keep_moving() {
    // The u32 Tick saturated after 49.7 days and the shard loop spun; a u64 one must not.
    let mut s = Script::new();
    s.ms = (1u64 << 32) - 10_000;
    s.online();
    let end = s.ms + 3_600_000;
    let mut beats = 0;
    while let Some(due) = s.device.poll_timeout() {
        if due.0 > end {
            break;
        }
        s.ms = due.0;
        // `input` asserts every deadline is after now once the timeout is handled.
        s.input(|d, now, sh| d.handle_timeout(now, sh));
        for unit in s.sent() {
            assert_eq!(unit, None, "only heartbeats");
            beats += 1;
            s.heartbeat_in();
        }
    }
    assert_eq!(s.device.phase(), Phase::Online);
    assert!(s.ms > 1 << 32);
    // A heartbeat every 9 s for an hour.
    assert_eq!(beats, 3_600_000 / 9_000);
}

#[test]
fn tick_and_now_arithmetic() {
    assert_eq!(Tick(5).after(u64::MAX), Tick(u64::MAX - 1));
    assert!(Tick(5).after(u64::MAX) < Tick::NEVER);
    assert_eq!(Tick(5).since(Tick(9)), 0);
    let now = Now::at_ms(1 << 33, WALL);
    assert_eq!(now.tick(), Tick(1 << 33));
    assert_eq!(now.wall_ms, WALL + (1 << 33));
}

#[test]
fn a_device_is_small() {
    // Cost per idle session is the product: keep an eye on it. 168 bytes today (104 with
    // u32 time and output in the caller): u64 time (3 instants, 4 deadlines: +40) and the
    // output held inline until polled (one delivery, two acks: +52), so a push costs no heap.
    let size = std::mem::size_of::<Device>();
    assert!(size <= 176, "{size}");
}
