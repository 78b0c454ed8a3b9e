//! The broker's configuration: listeners, limits, users and their vhosts.
//!
//! A TOML file (`--config FILE`) may set any of these; whatever it leaves out keeps the
//! default, which serves a newcomer: guest/guest on vhost `/`, RabbitMQ's tune offer.
//!
//! ```toml
//! vhosts = ["/", "staging"]
//! heartbeat = 60
//!
//! [[users]]
//! name = "guest"
//! password = "guest"
//! tags = ["administrator"]
//! vhosts = ["/"]
//! ```

use serde::Deserialize;

/// One user: a password, management tags, and the vhosts it may open.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct UserConfig {
    /// User name.
    pub name: String,
    /// Password (plain text, as in RabbitMQ's definitions file before hashing).
    pub password: String,
    /// Management tags; `administrator` may use every management endpoint.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Vhosts this user may open (full configure/write/read permissions there).
    #[serde(default)]
    pub vhosts: Vec<String>,
}

/// Everything the broker can be told.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct BrokerConfig {
    /// Virtual hosts to create.
    pub vhosts: Vec<String>,
    /// Users.
    pub users: Vec<UserConfig>,
    /// channel_max offered in connection.tune (RabbitMQ: 2047).
    pub channel_max: u16,
    /// frame_max offered in connection.tune (RabbitMQ: 131072).
    pub frame_max: u32,
    /// heartbeat offered in connection.tune, seconds (RabbitMQ: 60).
    pub heartbeat: u16,
    /// Largest message body accepted (RabbitMQ's max_message_size: 128 MiB).
    pub max_message_size: u64,
    /// Queued body bytes above which publishers are blocked (connection.blocked);
    /// 0: 40% of the machine's memory, as RabbitMQ's default vm_memory_high_watermark.
    pub memory_high_watermark: u64,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            vhosts: vec!["/".to_owned()],
            users: vec![UserConfig {
                name: "guest".to_owned(),
                password: "guest".to_owned(),
                tags: vec!["administrator".to_owned()],
                vhosts: vec!["/".to_owned()],
            }],
            channel_max: 2047,
            frame_max: 131_072,
            heartbeat: 60,
            max_message_size: 128 * 1024 * 1024,
            memory_high_watermark: 0,
        }
    }
}

impl BrokerConfig {
    /// Reads a TOML configuration file.
    pub fn from_file(path: &std::path::Path) -> Result<BrokerConfig, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        BrokerConfig::from_toml(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses a TOML configuration.
    pub fn from_toml(text: &str) -> Result<BrokerConfig, String> {
        let config: BrokerConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        if config.frame_max != 0 && config.frame_max < amqp_codec::FRAME_MIN_SIZE {
            return Err(format!(
                "frame_max {} is below the minimum 4096",
                config.frame_max
            ));
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_the_defaults() {
        assert_eq!(
            BrokerConfig::from_toml("").unwrap(),
            BrokerConfig::default()
        );
    }

    #[test]
    fn users_and_vhosts_are_read() {
        let config = BrokerConfig::from_toml(
            r#"
            vhosts = ["/", "prod"]
            [[users]]
            name = "app"
            password = "secret"
            vhosts = ["prod"]
            "#,
        )
        .unwrap();
        assert_eq!(config.vhosts, vec!["/", "prod"]);
        assert_eq!(config.users.len(), 1);
        assert_eq!(config.users[0].vhosts, vec!["prod"]);
        assert!(config.users[0].tags.is_empty());
    }

    #[test]
    fn frame_max_below_minimum_is_refused() {
        assert!(BrokerConfig::from_toml("frame_max = 1000").is_err());
    }
}
