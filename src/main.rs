//! skiff: subcommand dispatch and logging set-up, nothing else (the config file's flags are
//! spliced into the arguments by `config::file` before clap parses them).

use skiff::{agent, cli, config, server};

use clap::{CommandFactory, Parser};
use tokio_util::sync::CancellationToken;

async fn snapshot_command(c: cli::SnapshotCommand) -> anyhow::Result<()> {
    match c {
        cli::SnapshotCommand::Save { name, data_dir, .. } => {
            let r = server::snapshot::save(&data_dir, &name).await?;
            println!("{} (revision {}, {} records)", r.path, r.revision, r.records);
        }
        cli::SnapshotCommand::Ls { data_dir, .. } => {
            println!("{:<50} {:>12} CREATED", "NAME", "SIZE");
            for l in server::snapshot::list(&data_dir)? {
                let when = chrono::DateTime::from_timestamp(l.created, 0).map(|t| t.to_rfc3339()).unwrap_or_default();
                println!("{:<50} {:>12} {when}", l.name, l.size);
            }
        }
        cli::SnapshotCommand::Restore { file, data_dir, .. } => {
            let i = server::snapshot::restore(&file, &data_dir)?;
            println!(
                "restored revision {} ({} records); start `skiff server --data-dir {}`",
                i.revision,
                i.records,
                data_dir.display()
            );
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // /etc/skiff/config.yaml's values become flags ahead of the command line's, so clap applies
    // one precedence rule to both; a bad file stops here, before anything starts.
    let env = std::env::var_os(config::file::ENV);
    let expanded = config::file::expand(&cli::Cli::command(), std::env::args_os().collect(), env.as_deref())?;
    let cli = cli::Cli::parse_from(&expanded.args);
    if let cli::Command::Logger(args) = &cli.command {
        // The logger runs under containerd's shim (or detached, for a container with stdin) with
        // no runtime needed; keep it tiny.
        return agent::runtime::logger::run(args);
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    for f in &expanded.files {
        tracing::info!(file = %f.display(), "read config file");
    }
    for i in &expanded.ignored {
        tracing::debug!(key = %i.key, file = %i.path.display(), "config key is a flag of another subcommand; ignored");
    }
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
            cli::Command::Server(a) => {
                if let Some(c) = &a.snapshot_schedule_cron {
                    let cron = server::snapshot::Cron::parse(c).map_err(|e| anyhow::anyhow!("--snapshot-schedule-cron: {e}"))?;
                    let (dir, keep, sd) = (a.node.data_dir.clone(), a.snapshot_retention, shutdown.clone());
                    tokio::spawn(server::snapshot::run_schedule(dir, cron, keep, sd));
                }
                server::run(config::resolve_server(&a, &host)?, shutdown).await
            }
            cli::Command::Snapshot(c) => snapshot_command(c).await,
            cli::Command::Agent(a) => agent::run_standalone(config::resolve_agent(&a, &host)?, shutdown).await,
            cli::Command::Logger(_) => Ok(()),
        }
    })
}
