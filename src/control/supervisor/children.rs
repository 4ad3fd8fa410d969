//! Worker processes: starting them, reading their pipes, signalling them, and saying how one
//! ended.
//!
//! Each worker runs in its own process group (a terminal's Ctrl-C reaches the supervisor
//! only, which forwards it once, as SIGTERM) and gets SIGTERM if the supervisor dies without
//! stopping it. Its stdout carries the [`WorkerMsg`] lines; its stderr (logs, errors) is
//! copied to the supervisor's stderr, each line prefixed with the worker's name, and its last
//! lines are kept for the message that says why it failed.

use std::collections::VecDeque;
use std::io::{BufRead as _, BufReader};
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context as _;
use crossbeam_channel::Sender;

use super::plan::Slice;
use crate::control::worker::WorkerMsg;

/// What a reader thread reports.
#[derive(Debug)]
pub enum Event {
    /// A message of worker `k`.
    Msg(usize, WorkerMsg),
    /// A line of worker `k` that is not of the protocol.
    Lie(usize, String),
    /// Worker `k` closed its stdout.
    Eof(usize),
}

/// Lines of a worker's stderr kept for its failure message.
const TAIL: usize = 8;

/// A running worker.
pub struct Worker {
    /// Its part of the fleet.
    pub slice: Slice,
    child: Child,
    tail: Arc<Mutex<VecDeque<String>>>,
}

impl Worker {
    /// Starts `exe args`; its messages arrive on `events`.
    ///
    /// # Errors
    ///
    /// The process cannot be spawned.
    pub fn spawn(
        exe: &std::path::Path,
        args: &[String],
        slice: Slice,
        events: Sender<Event>,
    ) -> anyhow::Result<Worker> {
        let mut cmd = Command::new(exe);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        // SAFETY: runs in the forked child before exec and only calls prctl(2), which is
        // async-signal-safe and touches no memory of the parent. A supervisor that dies
        // (SIGKILL, a crash) leaves no worker behind: each gets SIGTERM and stops gracefully.
        unsafe {
            cmd.pre_exec(|| {
                let term = rustix::process::Signal::TERM;
                rustix::process::set_parent_process_death_signal(Some(term))
                    .map_err(std::io::Error::from)
            });
        }
        let mut child = cmd.spawn().with_context(|| {
            format!(
                "starting worker {} (devices {})",
                slice.index,
                slice.range()
            )
        })?;
        let k = slice.index;
        // Both are piped above, so both are there.
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        std::thread::Builder::new()
            .name(format!("worker-{k}-out"))
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let ev = match serde_json::from_str::<WorkerMsg>(&line) {
                        Ok(msg) => Event::Msg(k, msg),
                        Err(e) => Event::Lie(k, format!("{e}: {}", clip(&line))),
                    };
                    if events.send(ev).is_err() {
                        return;
                    }
                }
                let _ = events.send(Event::Eof(k));
            })
            .context("spawning a worker reader")?;
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL)));
        let kept = tail.clone();
        std::thread::Builder::new()
            .name(format!("worker-{k}-err"))
            .spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    eprintln!("worker {k}: {line}");
                    let mut t = kept.lock().unwrap_or_else(PoisonError::into_inner);
                    if t.len() == TAIL {
                        t.pop_front();
                    }
                    t.push_back(line);
                }
            })
            .context("spawning a worker reader")?;
        Ok(Worker { slice, child, tail })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How it ended, if it has.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Asks it to stop gracefully (SIGTERM), as a terminal's Ctrl-C would.
    pub fn terminate(&self) {
        self.signal(libc::SIGTERM);
    }

    /// Kills it (SIGKILL).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
    }

    fn signal(&self, sig: i32) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on the pid of our own child, not yet reaped (its status has
            // not been collected while we hold it), so the pid cannot have been reused.
            unsafe {
                libc::kill(pid, sig);
            }
        }
    }

    /// Its name in messages: `worker 2 (pid 4242, devices 200..300)`.
    pub fn name(&self) -> String {
        format!(
            "worker {} (pid {}, devices {})",
            self.slice.index,
            self.pid(),
            self.slice.range()
        )
    }

    /// Its last stderr lines, for a failure message.
    pub fn last_words(&self) -> String {
        let t = self.tail.lock().unwrap_or_else(PoisonError::into_inner);
        t.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

/// How a process ended, as a person reads it: `exit code 1`, `killed by signal 9 (SIGKILL)`.
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => {
            let name = match s {
                libc::SIGKILL => " (SIGKILL)",
                libc::SIGTERM => " (SIGTERM)",
                libc::SIGINT => " (SIGINT)",
                libc::SIGSEGV => " (SIGSEGV)",
                libc::SIGABRT => " (SIGABRT)",
                libc::SIGBUS => " (SIGBUS)",
                libc::SIGHUP => " (SIGHUP)",
                _ => "",
            };
            format!("killed by signal {s}{name}")
        }
        _ => status.to_string(),
    }
}

/// A line cut to a readable length for an error message.
fn clip(line: &str) -> String {
    match line.char_indices().nth(200) {
        Some((i, _)) => format!("{}...", &line[..i]),
        None => line.to_string(),
    }
}
