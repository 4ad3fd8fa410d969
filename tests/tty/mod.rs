//! Runs a command under a pseudo-terminal, as a person at a terminal would see it: through
//! util-linux `script` (in Debian's essential `bsdutils`), which gives the command a pty for
//! stdin, stdout and stderr and copies what it prints to our pipe.

// Each test crate uses only some of the helpers.
#![allow(dead_code)]

use std::process::{Command, Stdio};

/// `script -qec "ARGV..." /dev/null`: the command's exit code is script's (`-e`).
///
/// # Panics
/// If `script` is not installed (a test that silently tests nothing is a defect).
pub fn under_pty(argv: &[&str]) -> Command {
    let found = Command::new("script")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "util-linux `script` is needed for the terminal tests (apt-get install bsdutils)"
    );
    let line: Vec<String> = argv.iter().map(|a| quote(a)).collect();
    let mut cmd = Command::new("script");
    // `echo pid=$$; exec`: the command replaces the shell script starts, so the pid printed
    // first is the command's own (a test can signal it, not script).
    cmd.args([
        "-qec",
        &format!("echo pid=$$; exec {}", line.join(" ")),
        "/dev/null",
    ])
    .stdin(Stdio::null());
    cmd
}

/// Single-quotes `s` for `sh -c`.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// What a terminal would show, roughly: carriage returns and ANSI escapes removed.
pub fn plain(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {}
            '\u{1b}' => {
                // CSI: ESC [ parameters, then a final byte in @..~.
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
            }
            c => out.push(c),
        }
    }
    out
}
