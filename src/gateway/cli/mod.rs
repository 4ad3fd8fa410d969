//! `mpush-fleet push`: what an application server does, for scripts and for load. Pushes
//! through a gateway (PROTOCOL.md 8) at a rate, then reports the outcomes by reply code and
//! the gateway reply latency; `--fail-on` turns it into a check (exit 1).
//!
//! Here: the run itself ([`push_main`]) and the route lookup of `--redis`. Beside it:
//! `args` (the flags and the plan made of them) and `report` (outcomes, JSON, the status
//! line, `--fail-on`).

mod args;
mod report;

use anyhow::{bail, Context as _};

use self::report::status_line;
use super::driver::{self, Plan, Report, Targets};
use crate::stats::Summary;

pub use self::args::PushArgs;
pub use self::report::{check, outcome_name, report_json};

fn names(list: &[std::net::SocketAddr]) -> String {
    let v: Vec<String> = list.iter().map(ToString::to_string).collect();
    v.join(", ")
}

/// Reads the routes of every user of the plan's range (pipelined) into `plan.routes`, and
/// the gateways they name (resolved) into `plan.gateway`.
async fn read_routes(url: &str, plan: &mut Plan) -> anyhow::Result<()> {
    let Targets::Users { pattern, range } = &plan.targets else {
        bail!("--redis looks up single users (--to), not broadcasts");
    };
    let users: Vec<String> = range
        .clone()
        .map(|i| pattern.replace("{i}", &i.to_string()))
        .collect();
    let store = super::route_store::RouteStore::connect(url)
        .await
        .context("--redis")?;
    let found = store.routes_of(&users).await.context("reading routes")?;
    let mut names: Vec<String> = Vec::new();
    let mut by_user = Vec::with_capacity(found.len());
    for routes in found {
        let mut mine = Vec::new();
        for r in routes.into_iter().filter(|r| r.route.is_online()) {
            let name = r.route.gateway();
            let g = match names.iter().position(|n| *n == name) {
                Some(g) => g,
                None => {
                    names.push(name);
                    names.len() - 1
                }
            };
            mine.push((g, r.client_type));
        }
        by_user.push(mine);
    }
    let mut gateways = Vec::with_capacity(names.len());
    for name in &names {
        let addr = tokio::net::lookup_host(name.as_str())
            .await
            .ok()
            .and_then(|mut a| a.next())
            .with_context(|| format!("a route names gateway {name}, which does not resolve"))?;
        gateways.push(addr);
    }
    plan.gateway = gateways;
    plan.routes = Some(super::driver::Routed { by_user });
    Ok(())
}

/// Runs `push`; returns the exit code (0, or 1 when a `--fail-on` threshold failed).
///
/// # Errors
///
/// Bad flags, or a runtime that cannot start.
pub fn push_main(args: PushArgs) -> anyhow::Result<u8> {
    let plan = args.plan()?;
    let thresholds: Vec<String> = args
        .fail_on
        .iter()
        .flat_map(|f| f.split(','))
        .map(str::to_owned)
        .collect();
    // Thresholds are checked against an empty report first, so a typo fails before the run.
    let empty = Report::empty();
    for t in &thresholds {
        check(&empty, t)?;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut plan = plan;
    let mut live = driver::Live::default();
    if let Some(url) = &args.redis {
        rt.block_on(read_routes(url, &mut plan))?;
        let list: Vec<String> = plan.gateway.iter().map(ToString::to_string).collect();
        println!("gateways from the routes in Redis: {}", list.join(", "));
    } else if plan.gateway.is_empty() {
        let cfg = args
            .zk
            .config()
            .map_err(crate::control::cli::UsageError)?
            .ok_or_else(|| {
                crate::control::cli::UsageError("give --gateway or --zookeeper".into())
            })?;
        let list = rt.block_on(crate::discovery::gateways::watch(cfg))?;
        plan.gateway = list.borrow().clone();
        println!("gateways from ZooKeeper: {}", names(&plan.gateway));
        live.gateways = Some(list);
    }
    // A gateway name is resolved again when connects fail (a DNS change during the run).
    if let Some(name) = args.gateway.as_ref().filter(|g| g.literal().is_none()) {
        let (failures_tx, failures_rx) = tokio::sync::watch::channel(0);
        let _in_rt = rt.enter();
        live.gateways = Some(crate::discovery::gateways::follow_name(
            name.clone(),
            plan.gateway.clone(),
            failures_rx,
        ));
        live.connect_failures = Some(failures_tx);
    }
    // SIGINT / SIGTERM stop the sending; the requests in flight still get their outcomes
    // (bounded by --timeout) and the report is printed as at a normal end.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    live.stop = Some(stop_rx);
    {
        use tokio::signal::unix::{signal, SignalKind};
        let _in_rt = rt.enter();
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        rt.spawn(async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            eprintln!("stopping (signal): waiting for the replies in flight");
            let _ = stop_tx.send(true);
        });
    }
    let report = rt.block_on(driver::run_live(
        &plan,
        live,
        |r| println!("{}", status_line(r)),
        |r, change| {
            for g in &change.left {
                let sent = r.gateways.get(g).map_or(0, |f| f.sent);
                println!("gateway {g} left after {sent} requests");
            }
            for g in &change.joined {
                println!("gateway {g} joined");
            }
            println!("gateways now: {}", names(&change.now));
        },
    ));
    println!("{}", status_line(&report));
    if args.json {
        println!("{}", report_json(&report));
    } else {
        let s = Summary::of(&report.reply_latency_us);
        println!("outcomes:");
        for (o, n) in &report.outcomes {
            println!("  {:<32} {n}", outcome_name(*o));
        }
        println!(
            "gateway reply latency: p50 {:.2}ms p90 {:.2}ms p99 {:.2}ms p999 {:.2}ms max {:.2}ms ({} replies)",
            s.p50_ms, s.p90_ms, s.p99_ms, s.p999_ms, s.max_ms, s.count
        );
        if report.gateways.len() >= 2 {
            println!("by gateway:");
            for (g, f) in &report.gateways {
                println!(
                    "  {:<24} sent {} ok {} errors {} no_reply {} connects {} failed {}",
                    g.to_string(),
                    f.sent,
                    f.ok,
                    f.errors,
                    f.no_reply,
                    f.connects,
                    f.connect_failures
                );
            }
        }
        if report.unmatched + report.bad_frames + report.connect_failures > 0 {
            println!(
                "unmatched replies {}, bad frames {}, connect failures {}",
                report.unmatched, report.bad_frames, report.connect_failures
            );
        }
    }
    let mut failed = false;
    for t in &thresholds {
        if let Some(why) = check(&report, t)? {
            println!("FAIL: {why}");
            failed = true;
        }
    }
    Ok(u8::from(failed))
}
