//! What `run` builds from its flags before it starts: the fleet's configuration, the
//! `--push-rate` pusher's, and the descriptor check.

use std::net::SocketAddr;

use anyhow::bail;

use super::args::{expand_sources, RunArgs, UsageError};
use super::embedded::{Embedded, SPARE_DESCRIPTORS};
use super::push_load::{Gateways, PushRun, PusherConfig};
use super::FleetConfig;
use crate::crypto::RsaEncryptor;
use crate::device::{DeviceConfig, Template};
use crate::stats::ShardStats;

/// The fleet's statistics with the push figures of `run --push-rate` merged in.
pub(super) fn with_push(mut stats: ShardStats, push: Option<&PushRun>) -> ShardStats {
    if let Some(p) = push {
        stats.merge(p.stats());
    }
    stats
}

/// What `--push-rate` pushes and where; `None` without it.
pub(super) fn push_config(
    args: &RunArgs,
    cfg: &FleetConfig,
    server: Option<&Embedded>,
) -> anyhow::Result<Option<PusherConfig>> {
    let Some(rate) = args.push_rate else {
        return Ok(None);
    };
    if !(rate.is_finite() && rate > 0.0) {
        return Err(UsageError(format!("--push-rate {rate}: give a rate above 0")).into());
    }
    let gateways = match (&args.gateway, server, &args.redis) {
        (Some(g), _, _) => Gateways::Fixed(
            g.resolve()
                .map_err(|e| UsageError(format!("--gateway {g}: {e}")))?,
        ),
        (None, _, Some(url)) => Gateways::Redis(url.clone()),
        (None, Some(embedded), None) => match embedded.gateway_addr() {
            Some(a) => Gateways::Fixed(vec![a]),
            None => bail!("the embedded server has no gateway port"),
        },
        (None, None, None) => {
            return Err(UsageError(
                "--push-rate with --server needs --gateway HOST:PORT or --redis URL (routes)"
                    .into(),
            )
            .into())
        }
    };
    let flags = match args.push_ack.as_str() {
        "none" => crate::proto::Flags::NONE,
        "auto" => crate::proto::Flags::AUTO_ACK,
        "biz" => crate::proto::Flags::BIZ_ACK,
        other => return Err(UsageError(format!("--push-ack {other}: none, auto or biz")).into()),
    };
    Ok(Some(PusherConfig {
        gateways,
        user_id: cfg.device.user_id.clone(),
        first_device: u64::from(cfg.first_device),
        devices: u64::from(cfg.devices),
        rate,
        count: args.push_count,
        flags,
        size: args.push_size,
        client_type: i32::from(crate::server::ClientType::from_os_name(&args.os_name).0),
        timeout: args.push_timeout,
        connections: args.push_connections.max(1),
    }))
}

/// The fleet's configuration from `run`'s flags (the supervisor's usage check calls it too).
pub(crate) fn fleet_config(
    args: &RunArgs,
    servers: Vec<SocketAddr>,
) -> anyhow::Result<FleetConfig> {
    let rsa = match &args.public_key {
        Some(b64) => RsaEncryptor::from_spki_base64(b64)
            .map_err(|e| UsageError(format!("--public-key: {e}")))?,
        None => RsaEncryptor::mpush_default(),
    };
    let sources = expand_sources(&args.sources).map_err(|e| UsageError(format!("{e:#}")))?;
    let mut cfg = FleetConfig {
        devices: args.devices,
        first_device: args.first_device,
        rate: args.rate.per_sec(),
        servers,
        sources,
        seed: args.seed,
        pin: !args.no_pin,
        ring_entries: args.ring_entries,
        driver: args.driver,
        admission: crate::shard::core::Admission {
            max_pending: args.max_pending,
            retry_ratio: args.retry_budget,
            retry_floor_per_sec: args.retry_floor,
        },
        upstream: args.upstream.load().map_err(UsageError)?,
        ..FleetConfig::default()
    };
    let non_negative = |x: f64| x.is_finite() && x >= 0.0;
    if !non_negative(args.retry_budget) || !non_negative(args.retry_floor) {
        return Err(UsageError(format!(
            "--retry-budget ({}) and --retry-floor ({}) must be numbers >= 0",
            args.retry_budget, args.retry_floor
        ))
        .into());
    }
    if let Some(n) = args.shards {
        if n == 0 {
            return Err(UsageError("--shards must be at least 1".into()).into());
        }
        cfg.shards = n;
    }
    cfg.shards = cfg.shards.min(args.devices.max(1) as usize);
    cfg.device = DeviceConfig {
        device_id: Template::new(&args.device_id),
        user_id: Template::new(&args.user_id),
        os_name: args.os_name.clone(),
        os_version: args.os_version.clone(),
        client_version: args.client_version.clone(),
        tags: args.tags.clone(),
        min_heartbeat: args.heartbeat,
        max_heartbeat: args.heartbeat,
        request_timeout_ms: args.request_timeout,
        connect_timeout_ms: args.connect_timeout,
        reconnect_on_kick: args.reconnect_on_kick,
        backoff_base_ms: args.backoff,
        backoff_cap_ms: args.backoff_cap,
        rsa,
        ..DeviceConfig::default()
    };
    Ok(cfg)
}

/// Fails early, naming the limit, when this process cannot open a descriptor per device: a
/// clear error at start instead of a cascade of EMFILE failures. Returns the limit.
pub(super) fn check_descriptors(devices: u32) -> anyhow::Result<u64> {
    let limit = crate::server::raise_nofile_limit().unwrap_or(1024);
    let needed = u64::from(devices) + SPARE_DESCRIPTORS;
    if needed > limit {
        return Err(UsageError(format!(
            "{devices} devices need about {needed} open files, but this process may open \
             {limit} (its RLIMIT_NOFILE hard limit). Raise the limit (tuning/apply.sh says \
             how), or split the fleet across processes with --first-device: at most {} \
             devices per process here, each against `mpush-fleet serve` processes of their own \
             (a serve process holds as many sessions as its own limit allows)",
            limit.saturating_sub(SPARE_DESCRIPTORS),
        ))
        .into());
    }
    Ok(limit)
}
