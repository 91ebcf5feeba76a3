//! `galion-gateway`: argument parsing only; see the library for everything else.

use clap::Parser;
use galion_gateway::cli::{self, Cli, Command};
use galion_gateway::server::{self, RunOptions};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let args = Cli::parse();
    match args.command {
        Some(Command::Check) => std::process::exit(cli::check(&args.config)),
        Some(Command::Reload {
            token_file,
            timeout,
        }) => std::process::exit(cli::reload(&args.config, token_file.as_deref(), timeout)),
        Some(Command::Upgrade {
            token_file,
            timeout,
        }) => std::process::exit(cli::upgrade(&args.config, token_file.as_deref(), timeout)),
        Some(Command::HashKey) => {
            println!("{}", cli::hash_key()?);
            Ok(())
        }
        Some(Command::DevCerts { dir }) => {
            let files =
                galion_gateway::tls::dev_certs::generate(&dir).map_err(anyhow::Error::msg)?;
            println!("wrote {} in {}", files.join(", "), dir.display());
            println!(
                "trust {}/ca.pem in your client (e.g. curl --cacert)",
                dir.display()
            );
            Ok(())
        }
        Some(Command::Run) | None => server::run(RunOptions {
            config: args.config,
            upgrade: args.upgrade,
            daemon: args.daemon,
        }),
    }
}
