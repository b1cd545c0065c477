//! skiff: subcommand dispatch and logging set-up, nothing else.

use skiff::{agent, cli, config, server};

use clap::Parser;
use tokio_util::sync::CancellationToken;

fn main() -> anyhow::Result<()> {
    let cli = cli::Cli::parse();
    if let cli::Command::Logger(args) = &cli.command {
        // The logger runs under containerd's shim with no runtime needed; keep it tiny.
        return agent::runtime::logger::run(args);
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        let s = shutdown.clone();
        tokio::spawn(async move {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
            tracing::info!("shutting down");
            s.cancel();
        });
        let host = config::HostFacts { hostname: server::hostname(), first_ip: server::first_ip() };
        match cli.command {
            cli::Command::Server(a) => server::run(config::resolve_server(&a, &host)?, shutdown).await,
            cli::Command::Agent(a) => agent::run_standalone(config::resolve_agent(&a, &host)?, shutdown).await,
            cli::Command::Logger(_) => Ok(()),
        }
    })
}
