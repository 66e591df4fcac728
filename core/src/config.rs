//! TEMP stub until merged.
use crate::labels::Labels;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    #[serde(default)]
    pub users: Vec<UserConfig>,
    #[serde(default)]
    pub backends: Vec<BackendConfig>,
    #[serde(default)]
    pub server_version: Option<String>,
    #[serde(default = "d10")]
    pub login_timeout_ms: u64,
    #[serde(default = "d5")]
    pub backend_timeout_ms: u64,
    #[serde(default = "d64")]
    pub max_packet_size: usize,
}
fn d10() -> u64 {
    10000
}
fn d5() -> u64 {
    5000
}
fn d64() -> usize {
    64 << 20
}
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    #[serde(default)]
    pub tenant: Option<String>,
    pub user: String,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub password_hash: Option<String>,
}
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    pub id: String,
    pub addr: SocketAddr,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub state: WorkState,
}
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize,
)]
pub enum WorkState {
    #[default]
    Working,
    Draining,
    Drained,
}
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}
impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "line {}, column {}: {}",
            self.line, self.column, self.message
        )
    }
}
impl Config {
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        ron::Options::default()
            .with_default_extension(ron::extensions::Extensions::IMPLICIT_SOME)
            .from_str(text)
            .map_err(|e| ConfigError {
                line: e.span.start.line,
                column: e.span.start.col,
                message: e.code.to_string(),
            })
    }
}
