//! The broker's configuration: listeners, limits, users and their permissions.
//!
//! A TOML file (`--config FILE`) may set any of these; whatever it leaves out keeps the
//! default, which serves a newcomer: guest/guest with every permission on vhost `/`,
//! RabbitMQ's tune offer.
//!
//! ```toml
//! vhosts = ["/", "staging"]
//! heartbeat = 60
//!
//! [[users]]
//! name = "guest"
//! password = "guest"
//! tags = ["administrator"]
//! vhosts = ["/"]                     # ".*" ".*" ".*" on each vhost listed
//!
//! [[users]]
//! name = "app"
//! password = "s3cret"
//! [users.permissions."staging"]      # RabbitMQ's set_permissions: three regexes
//! configure = "^app\\."
//! write = ".*"
//! read = ".*"
//! ```
//!
//! The patterns are searched for in queue and exchange names, as RabbitMQ does
//! ([`crate::permissions`]); `""` allows nothing.

use std::collections::BTreeMap;

use serde::Deserialize;

/// One user: a password, management tags, and its permissions per vhost.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct UserConfig {
    /// User name.
    pub name: String,
    /// Password (plain text, as in RabbitMQ's definitions file before hashing).
    pub password: String,
    /// Management tags; `administrator` may use every management endpoint.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Vhosts where this user has every permission (`.*` `.*` `.*`), the short form.
    #[serde(default)]
    pub vhosts: Vec<String>,
    /// Permissions per vhost (RabbitMQ's `set_permissions -p VHOST USER CONF WRITE READ`);
    /// for a vhost also listed in `vhosts`, these win.
    #[serde(default)]
    pub permissions: BTreeMap<String, PermissionConfig>,
}

/// A user's permissions in one vhost: three regular expressions (RabbitMQ's
/// `configure`, `write`, `read`), each searched for in the names of the queues and
/// exchanges an operation touches.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PermissionConfig {
    /// What the user may declare and delete.
    pub configure: String,
    /// What the user may publish into (and bind to).
    pub write: String,
    /// What the user may consume from (and bind from).
    pub read: String,
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
    /// Free bytes in the data directory below which publishers are blocked (the disk
    /// alarm; RabbitMQ's disk_free_limit, 50 MB by default). 0: only a failing store
    /// raises the disk alarm.
    pub disk_free_limit: u64,
    /// Body bytes the messages waiting in durable queues may hold in memory, in total;
    /// beyond it, persistent messages deep in those queues are paged out to the message log
    /// and read back before delivery (see `store::paging`). 0: never page.
    pub paging_threshold: u64,
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
                permissions: BTreeMap::new(),
            }],
            channel_max: 2047,
            frame_max: 131_072,
            heartbeat: 60,
            max_message_size: 128 * 1024 * 1024,
            memory_high_watermark: 0,
            disk_free_limit: crate::alarms::DEFAULT_DISK_FREE_LIMIT,
            paging_threshold: crate::store::paging::DEFAULT_PAGING_THRESHOLD,
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
        for user in &config.users {
            for vhost in user.permissions.keys() {
                if !config.vhosts.contains(vhost) {
                    return Err(format!(
                        "user '{}' has permissions in vhost '{vhost}', which is not in vhosts",
                        user.name
                    ));
                }
            }
        }
        crate::permissions::Permissions::from_config(&config).map_err(|e| e.to_string())?;
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
    fn permissions_tables_are_read_next_to_old_vhosts_lists() {
        let config = BrokerConfig::from_toml(
            r#"
            vhosts = ["/", "prod"]
            [[users]]
            name = "app"
            password = "secret"
            vhosts = ["/"]
            [users.permissions."prod"]
            configure = ""
            write = "^app\\."
            read = ".*"
            "#,
        )
        .unwrap();
        let prod = &config.users[0].permissions["prod"];
        assert_eq!(
            (
                prod.configure.as_str(),
                prod.write.as_str(),
                prod.read.as_str()
            ),
            ("", "^app\\.", ".*")
        );
        assert_eq!(config.users[0].vhosts, vec!["/"]);
    }

    #[test]
    fn permissions_with_a_bad_regex_or_an_unknown_vhost_are_refused() {
        let bad = BrokerConfig::from_toml(
            r#"
            [[users]]
            name = "app"
            password = "p"
            [users.permissions."/"]
            configure = "("
            write = ""
            read = ""
            "#,
        )
        .unwrap_err();
        assert!(bad.contains("invalid regular expression '('"), "{bad}");
        let unknown = BrokerConfig::from_toml(
            r#"
            [[users]]
            name = "app"
            password = "p"
            [users.permissions."nowhere"]
            configure = ""
            write = ""
            read = ""
            "#,
        )
        .unwrap_err();
        assert!(unknown.contains("vhost 'nowhere'"), "{unknown}");
        let missing = BrokerConfig::from_toml(
            r#"
            [[users]]
            name = "app"
            password = "p"
            [users.permissions."/"]
            configure = ".*"
            "#,
        )
        .unwrap_err();
        assert!(missing.contains("missing field `write`"), "{missing}");
    }

    #[test]
    fn frame_max_below_minimum_is_refused() {
        assert!(BrokerConfig::from_toml("frame_max = 1000").is_err());
    }
}
