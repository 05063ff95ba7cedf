//! `ratemesh keys generate|hash`: API keys are shown once and stored only as hashes.

use std::io::Read;

use clap::Subcommand;
use ratemesh_runtime::Role;
use ratemesh_runtime::auth::hash_key;

#[derive(Debug, Subcommand)]
pub(crate) enum KeysCommand {
    /// Make a new random key and print it with the `[[auth.keys]]` entry that accepts it.
    Generate {
        /// The role the key will have.
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// Who holds the key (defaults to the role).
        #[arg(long)]
        name: Option<String>,
        /// For role `partner`: the partner id the key belongs to.
        #[arg(long)]
        partner_id: Option<String>,
    },
    /// Print the SHA-256 to configure for an existing key (read from stdin if not given).
    Hash {
        /// The key; prefer stdin so it does not land in shell history.
        key: Option<String>,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse()
}

/// A new random API key: `rm_<role>_` and 32 hex characters of randomness.
pub(crate) fn new_key(role: Role) -> String {
    let bytes: [u8; 16] = rand::random();
    format!("rm_{}_{}", role, hex::encode(bytes))
}

pub(crate) fn run(command: &KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Generate {
            role,
            name,
            partner_id,
        } => {
            if (*role == Role::Partner) != partner_id.is_some() {
                anyhow::bail!("--partner-id is required for role partner and only allowed for it");
            }
            let key = new_key(*role);
            println!("# the key (shown once; give it to its holder):");
            println!("{key}");
            println!("# add to the settings file:");
            println!("[[auth.keys]]");
            println!(
                "name = \"{}\"",
                name.clone().unwrap_or_else(|| role.to_string())
            );
            println!("role = \"{role}\"");
            println!("sha256 = \"{}\"", hash_key(&key));
            if let Some(partner) = partner_id {
                println!("partner_id = \"{partner}\"");
            }
        }
        KeysCommand::Hash { key } => {
            let key = match key {
                Some(key) => key.clone(),
                None => {
                    let mut buf = String::new();
                    std::io::stdin().read_to_string(&mut buf)?;
                    buf
                }
            };
            let key = key.trim();
            if key.is_empty() {
                anyhow::bail!("no key given");
            }
            println!("{}", hash_key(key));
        }
    }
    Ok(())
}
