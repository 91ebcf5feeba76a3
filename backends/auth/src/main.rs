//! `galion-auth` binary: `serve` (default), `rotate-keys`, `set-role`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use galion_auth::{keys, AuthSettings};
use galion_common::db::Db;
use galion_common::with_db;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "galion-auth", version, about = "Galion authentication service")]
struct Cli {
    /// Optional YAML config (see conf/auth.yaml); env vars override it.
    #[arg(short, long, env = "GALION_AUTH_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API (the default).
    Serve,
    /// Add a new signing key; the previous one stays in the JWKS until the
    /// tokens it signed have expired. Running services pick it up within
    /// GALION_AUTH_KEY_RELOAD_INTERVAL.
    RotateKeys,
    /// Set a user's role (`user` or `admin`), e.g. to create the first admin.
    SetRole { email: String, role: String },
}

#[tokio::main]
async fn main() {
    galion_common::telemetry::init();
    if let Err(e) = real_main().await {
        tracing::error!(error = format!("{e:#}"), "galion-auth failed");
        eprintln!("galion-auth: error: {e:#}");
        std::process::exit(1);
    }
}

async fn real_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = AuthSettings::load(cli.config.as_deref()).context("invalid configuration")?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let listener = galion_common::server::bind(settings.common.listen).await?;
            let shutdown = CancellationToken::new();
            galion_common::server::cancel_on_signal(shutdown.clone());
            galion_auth::run(settings, listener, shutdown).await?;
        }
        Command::RotateKeys => {
            let db = Db::connect(&settings.common.database_url, &settings.common.db).await?;
            let kid = keys::generate_key(&db, &settings.key_encryption_key, true).await?;
            println!("new signing key: {kid}");
            db.close().await;
        }
        Command::SetRole { email, role } => {
            anyhow::ensure!(
                role == "user" || role == "admin",
                "role must be user or admin"
            );
            let db = Db::connect(&settings.common.database_url, &settings.common.db).await?;
            let email = galion_common::accounts::normalize_email(&email);
            let now = galion_common::time::now();
            let n = with_db!(&db, |p| {
                sqlx::query("UPDATE users SET role = $1, updated_at = $2 WHERE email = $3 AND deleted_at IS NULL")
                .bind(&role)
                .bind(now)
                .bind(&email)
                .execute(p)
                .await.map(|r| r.rows_affected())
            })?;
            anyhow::ensure!(n == 1, "no user with email {email}");
            println!("{email} is now {role}");
            db.close().await;
        }
    }
    Ok(())
}
