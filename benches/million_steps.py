#!/usr/bin/env python3
"""The stepped ramp of benches/million.sh (read that file's header first).

Each step of STEP devices gets SERVERS_PER_STEP `serve` processes of its own and one
`run --processes SERVERS_PER_STEP` supervisor against them, from its own source addresses
(127.0.<step+1>.0/29). The next step starts only when every device so far is online and the
step's figures are taken, so each row measures a settled fleet, not one mid-ramp.

Stops by itself: TOTAL online and held HOLD s (exit 0), or MemAvailable below MIN_AVAIL_GIB
(now, or projected for the next step from the last one's cost), or a step that does not come
up within STEP_TIMEOUT s, or DEADLINE s in all, or a process that dies (exit 1, saying how far
it got and why). Every process it started is ended on every path (and by million.sh's trap,
from the pid file, should this script itself be killed).
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

env = os.environ.get
BIN = env("BIN", "target/release/mpush-fleet")
TOTAL = int(env("TOTAL", "1000000"))
STEP = int(env("STEP", "100000"))
PER_STEP = int(env("SERVERS_PER_STEP", "6"))
RATE = int(env("RATE", "2000"))
HB = int(env("HB", "900000"))
HOLD = int(env("HOLD", "30"))
MIN_AVAIL = float(env("MIN_AVAIL_GIB", "4")) * 2**30
STEP_TIMEOUT = int(env("STEP_TIMEOUT", "300"))
DEADLINE = int(env("DEADLINE", "2400"))
BASE_PORT = int(env("BASE_PORT", "31000"))
OUT = env("OUT", "target/million")
PAGE = os.sysconf("SC_PAGE_SIZE")

started = []  # every Popen, in start order
servers, runs = [], []  # Popen of `serve`, and (step, Popen) of `run` supervisors
pidfile = open(f"{OUT}/pids", "a")


def spawn(args, log):
    p = subprocess.Popen(args, stdout=open(f"{log}.log", "w"), stderr=open(f"{log}.err", "w"),
                         stdin=subprocess.DEVNULL)
    started.append(p)
    pidfile.write(f"{p.pid}\n")
    pidfile.flush()
    return p


def children(pid):
    """Every descendant of pid (workers sit in their own process groups, so walk /proc)."""
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            out.append(k)
            todo.append(k)
    return out


def rss(pid):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def meminfo(key):
    for line in open("/proc/meminfo"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def sockstat_tcp():
    for line in open("/proc/net/sockstat"):
        if line.startswith("TCP:"):
            f = line.split()
            return {f[i]: int(f[i + 1]) for i in range(1, len(f) - 1, 2)}
    return {}


def slabs():
    """Bytes of slab pages per cache (num_slabs * pages_per_slab * page size)."""
    out = {}
    for line in open("/proc/slabinfo").readlines()[2:]:
        f = line.split()
        out[f[0]] = int(f[14]) * int(f[5]) * PAGE
    return out


def kernel_figures():
    return {"sockstat": sockstat_tcp(), "slabs": slabs(), "avail": meminfo("MemAvailable")}


def online_of(step):
    """The last status line's `online N` of a step's supervisor (0 before its first line)."""
    try:
        with open(f"{OUT}/run-{step}.log", "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 8192))
            tail = f.read().decode(errors="replace")
    except OSError:
        return 0
    found = re.findall(r"\] devices \d+ connected \d+ online (\d+)", tail)
    return int(found[-1]) if found else 0


def listening(port, proc, deadline):
    while time.time() < deadline:
        if proc.poll() is not None:
            return False
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.1)
    return False


def devices_of(k):
    return min(STEP, TOTAL - k * STEP)


def start_step(k):
    ports = [BASE_PORT + k * PER_STEP + j for j in range(PER_STEP)]
    mine = []
    for j, port in enumerate(ports):
        p = spawn([BIN, "serve", "--listen", f"127.0.0.1:{port}", "--min-heartbeat", str(HB),
                   "--max-heartbeat", str(HB), "--quiet"], f"{OUT}/serve-{k}-{j}")
        servers.append(p)
        mine.append((port, p))
    for port, p in mine:
        if not listening(port, p, time.time() + 30):
            return f"serve on 127.0.0.1:{port} is not up (see {OUT}/serve-*.err)"
    args = [BIN, "run", "--processes", str(PER_STEP), "--devices", str(devices_of(k)),
            "--first-device", str(k * STEP), "--source", f"127.0.{k + 1}.0/29",
            "--rate", str(RATE), "--heartbeat", str(HB), "--duration", f"{DEADLINE + 600}s",
            "--status-every", "2", "--json", "--report", f"{OUT}/run-{k}.json"]
    for port in ports:
        args += ["--server", f"127.0.0.1:{port}"]
    runs.append((k, spawn(args, f"{OUT}/run-{k}")))
    return None


def sample(base, t0):
    online = sum(online_of(k) for k, _ in runs)
    fleet_pids = [p.pid for _, p in runs] + [c for _, p in runs for c in children(p.pid)]
    fleet = sum(rss(p) for p in fleet_pids)
    server = sum(rss(p.pid) for p in servers)
    now = kernel_figures()
    sock_pages = now["sockstat"].get("mem", 0) - base["sockstat"].get("mem", 0)
    slab_delta = {k: v - base["slabs"].get(k, 0) for k, v in now["slabs"].items()}
    slab = sum(slab_delta.values())
    per = max(online, 1)
    top = sorted(slab_delta.items(), key=lambda kv: -kv[1])[:8]
    return {
        "t_s": round(time.time() - t0, 1), "online": online,
        "processes": {"fleet": len(fleet_pids), "serve": len(servers)},
        "fleet_rss_bytes": fleet, "server_rss_bytes": server,
        "sockstat_tcp": now["sockstat"], "sockstat_mem_delta_bytes": sock_pages * PAGE,
        "slab_delta_bytes": slab,
        "per_session_bytes": {
            "fleet_user": round(fleet / per), "server_user": round(server / per),
            "kernel": round((sock_pages * PAGE + slab) / per),
            "kernel_sockstat_mem": round(sock_pages * PAGE / per),
            "kernel_slab": round(slab / per),
        },
        "slab_top_per_session": {k: round(v / per) for k, v in top},
        "mem_available_bytes": now["avail"],
        "mem_available_drop_per_session": round((base["avail"] - now["avail"]) / per),
    }


def stop_all(graceful):
    """Stops the fleets (gracefully, or SIGKILL to protect the machine), then the servers."""
    fleet = [p for _, p in runs]
    if graceful:
        # One step at a time, newest first: 1,000,000 sessions closing at once on 2 cores
        # took the workers past the supervisors' 60 s stop grace (2026-12-01 run, exit 3).
        for p in reversed(fleet):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=120)
            except subprocess.TimeoutExpired:
                pass
    for p in fleet:
        # The workers first (SIGKILLing a supervisor would leave them its SIGTERM only).
        for c in children(p.pid):
            try:
                os.kill(c, signal.SIGKILL)
            except OSError:
                pass
        if p.poll() is None:
            p.kill()
    for p in servers:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
    end = time.time() + 30
    for p in started:
        try:
            p.wait(timeout=max(0.1, end - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def gib(b):
    return f"{b / 2**30:.2f} GiB"


def main():
    steps = (TOTAL + STEP - 1) // STEP
    base = kernel_figures()
    t0 = time.time()
    rows, why, held = [], None, False
    rows_file = open(f"{OUT}/steps.jsonl", "w")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    print(f"million: {steps} steps of {STEP}, {PER_STEP} serve + 1 run (--processes "
          f"{PER_STEP}) each, {RATE}/s, heartbeat {HB} ms; MemAvailable {gib(base['avail'])},"
          f" stop below {gib(MIN_AVAIL)}", flush=True)
    last_cost = 0
    try:
        for k in range(steps):
            avail = meminfo("MemAvailable")
            if avail - last_cost < MIN_AVAIL:
                why = (f"the next step would take MemAvailable below {gib(MIN_AVAIL)} "
                       f"({gib(avail)} now, the last step took {gib(last_cost)})")
                break
            why = start_step(k)
            if why:
                break
            want = min(TOTAL, (k + 1) * STEP)
            step_end = time.time() + STEP_TIMEOUT
            while why is None:
                time.sleep(1)
                online = sum(online_of(j) for j, _ in runs)
                if online >= want:
                    break
                avail_now = meminfo("MemAvailable")
                if avail_now < MIN_AVAIL:
                    why = f"MemAvailable fell to {gib(avail_now)} (below {gib(MIN_AVAIL)})"
                elif time.time() > step_end:
                    why = f"step {k} not all online within {STEP_TIMEOUT} s ({online} of {want})"
                elif time.time() - t0 > DEADLINE:
                    why = f"deadline of {DEADLINE} s reached ({online} of {want})"
                for p in [p for _, p in runs] + servers:
                    if why is None and p.poll() is not None:
                        why = f"{' '.join(p.args[1:3])} (pid {p.pid}) exited {p.returncode}"
            if why:
                break
            time.sleep(3)  # let the step's last binds and the allocator settle
            row = sample(base, t0)
            row["step"] = k + 1
            last_cost = (rows[-1]["mem_available_bytes"] if rows else base["avail"]) \
                - row["mem_available_bytes"]
            rows.append(row)
            rows_file.write(json.dumps(row) + "\n")
            rows_file.flush()
            ps = row["per_session_bytes"]
            print(f"step {k + 1}: online {row['online']} at {row['t_s']} s; per session: fleet "
                  f"{ps['fleet_user']} B, server {ps['server_user']} B, kernel {ps['kernel']} B "
                  f"(sockstat {ps['kernel_sockstat_mem']} + slab {ps['kernel_slab']}); "
                  f"MemAvailable {gib(row['mem_available_bytes'])}", flush=True)
        if why is None:
            end = time.time() + HOLD
            while why is None and time.time() < end:
                time.sleep(1)
                online = sum(online_of(j) for j, _ in runs)
                if meminfo("MemAvailable") < MIN_AVAIL:
                    why = f"MemAvailable fell below {gib(MIN_AVAIL)} during the hold"
                elif online < TOTAL:
                    why = f"online fell to {online} during the hold"
            if why is None:
                held = True
                row = sample(base, t0)
                row["step"] = "held"
                rows.append(row)
                rows_file.write(json.dumps(row) + "\n")
                print(f"held {HOLD} s: online {row['online']}", flush=True)
    finally:
        stop_all(graceful=why is None)
    reached = max((r["online"] for r in rows), default=0)
    reports = []
    for k, p in runs:
        try:
            r = json.load(open(f"{OUT}/run-{k}.json"))
            reports.append({"step": k + 1, "exit": p.returncode, "online_at_stop": r["online"],
                            "reconnects": r["reconnects"],
                            "connect_failures": r["counters"]["connect_failures"]})
        except (OSError, ValueError, KeyError):
            reports.append({"step": k + 1, "exit": p.returncode, "report": None})
    summary = {"total": TOTAL, "reached": reached, "held": held, "why_stopped": why,
               "elapsed_s": round(time.time() - t0, 1), "steps": rows, "runs": reports}
    json.dump(summary, open(f"{OUT}/summary.json", "w"), indent=2)
    print(json.dumps({k: v for k, v in summary.items() if k != "steps"}, indent=2))
    if not held:
        print(f"FAIL: reached {reached} of {TOTAL} online; stopped because {why}",
              file=sys.stderr)
        return 1
    bad = [r for r in reports
           if r.get("online_at_stop") != devices_of(r["step"] - 1) or r.get("exit") != 0]
    if bad:
        print(f"FAIL: runs that did not end with all their devices online: {bad}",
              file=sys.stderr)
        return 1
    print(f"OK: {TOTAL} online, held {HOLD} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
