//! `galion-users` binary.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use galion_users::UsersSettings;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "galion-users", version, about = "Galion users service")]
struct Cli {
    /// Optional YAML config (see conf/users.yaml); env vars override it.
    #[arg(short, long, env = "GALION_USERS_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() {
    galion_common::telemetry::init();
    if let Err(e) = real_main().await {
        tracing::error!(error = format!("{e:#}"), "galion-users failed");
        eprintln!("galion-users: error: {e:#}");
        std::process::exit(1);
    }
}

async fn real_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = UsersSettings::load(cli.config.as_deref()).context("invalid configuration")?;
    let listener = galion_common::server::bind(settings.common.listen).await?;
    let shutdown = CancellationToken::new();
    galion_common::server::cancel_on_signal(shutdown.clone());
    galion_users::run(settings, listener, shutdown).await?;
    Ok(())
}
