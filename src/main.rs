//! `mpush-fleet`: the command line. Thin: each subcommand lives in the library.

use clap::{Parser, Subcommand};

/// Holds hundreds of thousands of MPUSH device sessions from one Linux machine.
#[derive(Parser, Debug)]
#[command(name = "mpush-fleet", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand, Debug)]
enum Commands {
    /// Run a device fleet (against the embedded reference server unless --server is given).
    Run(Box<mpush_fleet::control::cli::RunArgs>),
    /// Run the reference MPUSH server until Ctrl-C.
    Serve(Box<mpush_fleet::server::ServeArgs>),
    /// Push through an MPUSH gateway, as an application server does (PROTOCOL.md 8).
    Push(Box<mpush_fleet::gateway::cli::PushArgs>),
    /// Work with `--report` files (`report merge A.json B.json ...`).
    Report(mpush_fleet::control::merge::ReportArgs),
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,zookeeper_client=warn")
            }),
        )
        .init();
    let outcome = match Cli::parse().command {
        Commands::Serve(args) => mpush_fleet::server::serve_main(*args).map(|()| 0),
        Commands::Run(args) => mpush_fleet::control::cli::run_main(*args),
        Commands::Push(args) => mpush_fleet::gateway::cli::push_main(*args),
        Commands::Report(args) => mpush_fleet::control::merge::report_main(args),
    };
    match outcome {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            let usage = e
                .downcast_ref::<mpush_fleet::control::cli::UsageError>()
                .is_some();
            std::process::ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}
