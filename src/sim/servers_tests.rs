//! Per-server figures and server changes in simulated time: the online gauge, connects and
//! failures land on the server of the connection, and a new rotation takes every new connect.

use std::net::SocketAddr;

use super::*;

const LIMIT_MS: u64 = 600_000;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn sim(devices: u32, servers: Vec<SocketAddr>) -> Sim {
    let core = CoreConfig {
        servers,
        ..scenario(devices)
    };
    Sim::new(core, SimConfig::default())
}

fn online(s: &Sim, n: u32) -> bool {
    let c = &s.core.stats().counters;
    c.online == i64::from(n) && c.bound >= u64::from(n)
}

#[test]
fn figures_add_up_per_server_and_a_new_rotation_takes_the_reconnects() {
    let n = 40;
    let (a, b, c) = (addr(1), addr(2), addr(3));
    let mut s = sim(n, vec![a, b]);
    assert!(s.run_until(LIMIT_MS, |s| online(s, n)));
    let by = &s.core.stats().servers.0;
    assert_eq!((by[&a].online, by[&b].online), (20, 20), "{by:?}");
    assert_eq!(
        by[&a].connects + by[&b].connects,
        s.core.stats().counters.connects
    );

    // A new rotation: every reconnect goes to c; a and b keep their history at 0 online.
    s.core.set_servers(vec![c]);
    s.close_all();
    let on_c = |s: &Sim| {
        let f = s.core.stats().servers.0.get(&addr(3)).copied();
        f.is_some_and(|f| f.online == i64::from(n))
    };
    assert!(s.run_until(LIMIT_MS, |s| online(s, n) && on_c(s)));
    let by = &s.core.stats().servers.0;
    assert_eq!(
        (by[&a].online, by[&b].online, by[&c].online),
        (0, 0, i64::from(n)),
        "{by:?}"
    );
    assert_eq!(by[&c].connects, u64::from(n));
    // An empty list changes nothing.
    s.core.set_servers(Vec::new());
    assert_eq!(s.core.config().servers, vec![c]);
}

#[test]
fn refused_connects_count_against_the_server_tried() {
    let n = 10;
    let mut s = sim(n, vec![addr(1)]);
    s.refuse_connects(true);
    assert!(s.run_until(LIMIT_MS, |s| s.core.stats().counters.connect_failures >= 10));
    s.refuse_connects(false);
    assert!(s.run_until(LIMIT_MS, |s| online(s, n)));
    let st = s.core.stats();
    let f = st.servers.0[&addr(1)];
    assert_eq!(f.connect_failures, st.counters.connect_failures);
    assert_eq!(f.online, i64::from(n));
}
