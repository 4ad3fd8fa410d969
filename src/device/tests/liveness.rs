//! Keeping a session and ending it: heartbeats, silent read checks, a silent server's
//! timeout, kicks, the reconnect backoff, a stop.

use super::*;

#[test]
fn heartbeats_are_sent_before_the_period_ends_and_echoes_keep_the_session() {
    let mut s = Script::new();
    s.online();
    let start = s.ms;
    for period in 1..=5u64 {
        s.run_until(start + period * 10_000);
        let sent = s.sent();
        assert_eq!(sent, vec![None], "one heartbeat in period {period}");
        s.heartbeat_in();
    }
    assert_eq!(s.device.phase(), Phase::Online);
    assert_eq!(s.sh.stats.counters.heartbeats_sent, 5);
    let rtt =
        s.sh.stats
            .latencies
            .get(crate::stats::Latency::HeartbeatRtt);
    assert_eq!(rtt.len(), 5);
}

#[test]
fn two_silent_read_checks_close_and_schedule_a_reconnect() {
    let mut s = Script::new();
    s.online();
    let start = s.ms;
    // Nothing is read from now on: the first check finds 10 s (not over 11 s), the second
    // 20 s, the third 30 s -> two consecutive misses.
    s.run_until(start + 30_000);
    let effects = s.effects();
    assert_eq!(effects, vec![Effect::Close(CloseReason::ReadTimeout)]);
    assert_eq!(s.device.phase(), Phase::Backoff);
    let c = &s.sh.stats.counters;
    assert_eq!((c.read_timeouts, c.online, c.connections), (1, 0, 0));
    // The backoff ends with a new ticket lookup: every reconnect tries fast connect first.
    let due = s.device.poll_timeout().expect("backoff deadline");
    assert!(due.0 <= s.ms + u64::from(s.sh.cfg.backoff_base_ms));
    s.run_until(due.0);
    assert_eq!(s.effects(), vec![Effect::LoadTicket]);
}

#[test]
fn a_kick_ends_the_device_unless_told_to_reconnect() {
    let kick = Kick {
        device_id: "device-7".into(),
        user_id: "user-7".into(),
    };
    let mut s = Script::new();
    s.online();
    s.server_sends(&kick, 0, Flags::NONE, true);
    assert_eq!(s.effects(), vec![Effect::Close(CloseReason::Kicked)]);
    assert_eq!(s.device.phase(), Phase::Stopped);
    assert_eq!(s.device.poll_timeout(), None);

    let mut s = Script::with_cfg(|c| c.reconnect_on_kick = true);
    s.handshake(10_000);
    s.effects();
    s.server_sends(&kick, 0, Flags::NONE, true);
    assert_eq!(s.device.phase(), Phase::Backoff);
}

#[test]
fn a_silent_server_times_the_request_out() {
    let mut s = Script::new();
    s.connect(None);
    s.sent();
    let timeout = u64::from(s.sh.cfg.request_timeout_ms);
    s.run_until(s.ms + timeout - 1);
    assert_eq!(s.effects(), vec![], "not before the request timeout");
    s.run_until(s.ms + 1);
    assert_eq!(
        s.effects(),
        vec![Effect::Close(CloseReason::RequestTimeout)]
    );
    assert_eq!(s.sh.stats.counters.request_timeouts, 1);
}

#[test]
fn backoff_ceiling_doubles_up_to_the_cap() {
    let mut s = Script::with_cfg(|c| {
        c.backoff_base_ms = 100;
        c.backoff_cap_ms = 1_000;
    });
    s.event(Event::Start);
    for attempt in 1..=8u32 {
        assert_eq!(s.effects(), vec![Effect::LoadTicket]);
        s.event(Event::Ticket(None));
        s.effects();
        s.event(Event::ConnectFailed);
        let delay = s.device.poll_timeout().unwrap().0 - s.ms;
        let ceiling = (100u64 << (attempt - 1)).min(1_000);
        assert!(delay <= ceiling, "attempt {attempt}: {delay} > {ceiling}");
        s.run_until(s.ms + delay);
    }
    assert_eq!(s.sh.stats.counters.connect_failures, 8);
}

#[test]
fn stop_closes_and_stays_down() {
    let mut s = Script::new();
    s.handshake(10_000);
    s.effects();
    s.event(Event::Stop);
    assert_eq!(s.effects(), vec![Effect::Close(CloseReason::Stopped)]);
    assert_eq!(s.device.phase(), Phase::Stopped);
    assert_eq!(s.device.poll_timeout(), None);
    s.event(Event::Closed);
    assert_eq!(
        s.sh.stats.counters.peer_closed, 0,
        "a close after stop is stale"
    );
}
