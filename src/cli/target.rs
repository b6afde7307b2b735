//! Which appliance a CLI command addresses: its layout (production `/` or `--state-dir`), its
//! config, and a client for its Unix socket or for `--server` over HTTPS.

use crate::cli::args::Global;
use crate::client::Client;
use crate::config::{Config, Layout};
use crate::exit::CliError;
use std::path::PathBuf;

pub fn layout(global: &Global) -> Layout {
    global.state_dir.clone().map(Layout::under).unwrap_or_else(Layout::production)
}

pub fn config(global: &Global) -> Result<Config, CliError> {
    let layout = layout(global);
    let path = global.config.clone().unwrap_or_else(|| layout.config_file());
    Config::load(&path, global.config.is_none()).map_err(|e| CliError::Invalid(e.to_string()))
}

/// The client for this invocation. Over the socket, a token is sent only when given; over
/// HTTPS, `--state-dir` supplies the dev token and dev certificate when not given.
pub fn client(global: &Global) -> Result<Client, CliError> {
    let layout = layout(global);
    let mut client = match &global.server {
        None => Client::unix(config(global)?.socket_path(&layout)),
        Some(url) => {
            let ca: PathBuf = match (&global.ca, &global.state_dir) {
                (Some(ca), _) => ca.clone(),
                (None, Some(_)) => layout.default_tls_cert(),
                (None, None) => {
                    return Err(CliError::Invalid("--server needs --ca FILE (or STELLA_CA)".into()));
                }
            };
            Client::https(url, &ca)?
        }
    };
    client.token = match (&global.token, &global.server, &global.state_dir) {
        (Some(t), _, _) => Some(t.clone()),
        (None, Some(_), Some(_)) => std::fs::read_to_string(layout.dev_token()).ok().map(|t| t.trim().to_owned()),
        (None, Some(_), None) => {
            return Err(CliError::Invalid("--server needs --token (or STELLA_TOKEN)".into()));
        }
        (None, None, _) => None,
    };
    Ok(client)
}
