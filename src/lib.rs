//! mpush-fleet: holds hundreds of thousands of MPUSH device sessions from one Linux machine,
//! as a device-fleet proxy (pushes handed to a sink, acked upstream only once it has them) or
//! as a soak and load tester of staging servers.
//!
//! # Layout
//!
//! A sans-IO core, like quinn-proto and rustls: it takes bytes, time and events, and returns
//! bytes to send, deadlines and effects. No sockets, clocks or async inside.
//!
//! - [`proto`]: the wire. Frames, the `0xDF` heartbeat, fields, every message, the flag-driven
//!   deflate/AES body pipeline. Pinned byte for byte by the Java golden vectors.
//! - [`crypto`]: chunked RSA PKCS#1 v1.5, AES-128-CBC, [`crypto::AesBatch`] (many sessions'
//!   messages interleaved through AES-NI in one call), the key mix, the `cipherStr` form.
//! - [`device`]: one device's session cycle (PROTOCOL.md 6) as a state machine, driven
//!   quinn-style: `handle_*` in, `poll_transmit` / `poll_timeout` / `poll_effect` out.
//! - [`shard::core`]: [`ShardCore`](shard::core::ShardCore), a shard's logic: slots, devices,
//!   one deadline heap, the ramp, ticket requests, sink backpressure, the turn's AES batch,
//!   the graceful stop. Completions and time in, I/O to start out.
//! - [`stages`]: a run as phases (ramp, hold, churn, storm, ramp down) and `--rate auto`'s
//!   capacity search, both run by the shard core; the spec, per-phase figures, their merge.
//! - [`sim`]: the in-memory pair, a `ShardCore` and the reference server's sessions on a
//!   simulated network and clock: fleet scenarios in milliseconds, no sockets.
//!
//! A thin runtime shell around it, so the runtime can change without touching the core:
//!
//! - [`shard`]: one pinned thread per core whose tokio-uring driver moves bytes and
//!   completions between sockets and its `ShardCore`, and ticket requests to its store.
//! - [`tickets`]: the Java-compatible `mp:fcd:` / `mp:rs:` values and the stores (in memory;
//!   Redis through fred, pipelined per loop turn), keyed by device index; and the reference
//!   server's reusable-session store. It imports nothing from `server`.
//! - [`sink`]: where a proxy hands received pushes (stdout, file, Unix socket), with the
//!   acceptance that lets a BIZ_ACK push be acked upstream.
//! - [`control`]: the CLI, configuration, shard start-up, status, report and exit code. It
//!   talks to shards only over crossbeam channels.
//! - [`discovery`]: where the servers are: `--server` names resolved (and resolved again
//!   when connects fail), MPUSH's ZooKeeper registry listed and watched, `serve`'s own
//!   registration. It runs on a thread of the control plane's; shards get addresses only.
//! - [`stats`]: per-shard counters (one table: names, kinds, merge) and HDR histograms,
//!   merged by the control plane; their Prometheus text. No sockets.
//! - [`gateway`]: the MPUSH gateway client (an app server's push path, PROTOCOL.md 8): the
//!   sans-IO codec and request tracker, the route lookup, the `push` driver.
//! - [`http`]: the one HTTP server (axum) for every endpoint: `--metrics`, `serve`'s admin
//!   API, later the control API.
//!
//! And an independent peer that shares only [`proto`], [`crypto`], [`tickets`] (formats and
//! the session store) and [`http`]:
//!
//! - [`server`]: the reference MPUSH server (`mpush-fleet serve`), for tests, the embedded
//!   default of `run`, and as a local stand-in for staging.
#![warn(missing_docs, unreachable_pub)]

pub mod control;
pub mod crypto;
pub mod device;
pub mod discovery;
pub mod gateway;
pub mod http;
pub mod proto;
pub mod server;
pub mod shard;
pub mod sim;
pub mod sink;
pub mod stages;
pub mod stats;
pub mod tickets;
mod tokio_thread;
