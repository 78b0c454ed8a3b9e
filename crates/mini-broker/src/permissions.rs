//! Per-vhost permissions, as RabbitMQ's internal authorisation backend keeps and checks them.
//!
//! A user may open a vhost when it has a permission entry there, whatever the entry says
//! (otherwise connection.open is refused with 530 NOT_ALLOWED). An entry holds three regular
//! expressions, matched against the names of the queues and exchanges an operation touches
//! (RabbitMQ's "Access Control" guide, "How Permissions Work"):
//!
//! - **configure**: create or delete the resource, or change how it behaves;
//! - **write**: put messages into it (publish, and the destination side of a binding);
//! - **read**: take messages out of it (consume, get, purge, and the source side of a binding).
//!
//! | AMQP 0-9-1 method                      | configure   | write            | read            |
//! |----------------------------------------|-------------|------------------|-----------------|
//! | exchange.declare (passive: nothing)    | exchange    | alternate exch.¹ | exchange¹       |
//! | exchange.delete                        | exchange    |                  |                 |
//! | queue.declare (passive: nothing)       | queue       | dead-letter ex.¹ | queue¹          |
//! | queue.delete                           | queue       |                  |                 |
//! | queue.bind / queue.unbind              |             | queue            | exchange        |
//! | exchange.bind / exchange.unbind        |             | destination      | source          |
//! | basic.publish                          |             | exchange         |                 |
//! | basic.consume / basic.get / queue.purge|             |                  | queue           |
//!
//! ¹ only when the declare creates the resource and names that argument.
//!
//! A pattern is *searched for* in the name, as Erlang's `re:run` does: `foo` allows
//! `my-foo-queue`; `^foo$` allows only `foo`. An empty pattern matches nothing (RabbitMQ
//! turns it into `^$`, and no resource has an empty name: the default exchange is checked
//! as `amq.default`). A refusal is 403 ACCESS_REFUSED on the channel, worded as RabbitMQ
//! 3.10 words it: `access to queue 'q' in vhost '/' refused for user 'u'` (it names neither
//! the permission nor the pattern).
//!
//! The checks run in RabbitMQ's order relative to the broker's other refusals (the default
//! exchange, reserved `amq.` names, 404s), so that a client sees the same first error; the
//! `Permit` methods below say where each one falls.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use amqp_codec::{FieldTable, FieldValue, ShortString};

use crate::broker::VHost;
use crate::config::BrokerConfig;
use crate::delivery::lock;
use crate::error::{exchange_resource, queue_resource, AmqpError};
use crate::exchange::ExchangeKind;

/// The three kinds of access RabbitMQ tells apart on a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Create, delete, or change the resource.
    Configure,
    /// Put messages into it.
    Write,
    /// Take messages out of it.
    Read,
}

/// A resource that permissions guard: a queue or an exchange of the permit's vhost.
#[derive(Debug, Clone, Copy)]
pub enum Resource<'a> {
    /// A queue, by name.
    Queue(&'a [u8]),
    /// An exchange, by name (`""` is the default exchange).
    Exchange(&'a [u8]),
}

/// The name the default exchange is checked under (RabbitMQ's `rabbit_access_control`).
pub const DEFAULT_EXCHANGE_RESOURCE: &str = "amq.default";

/// A permission pattern that does not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid regular expression '{pattern}': {reason}")]
pub struct InvalidPattern {
    /// The pattern as given.
    pub pattern: String,
    /// What the regex compiler said.
    pub reason: String,
}

/// One permission pattern: a regular expression searched for in resource names.
#[derive(Debug, Clone)]
pub struct Pattern {
    source: String,
    regex: regex::bytes::Regex,
    /// `.*`, the pattern of nearly every permission: every name matches (an empty match
    /// at the start is a match), so the check on each publish skips the regex.
    everything: bool,
}

impl Pattern {
    /// Compiles `source`; `""` matches nothing (RabbitMQ compiles it as `^$`).
    pub fn new(source: &str) -> Result<Pattern, InvalidPattern> {
        let effective = if source.is_empty() { "^$" } else { source };
        let regex = regex::bytes::Regex::new(effective).map_err(|err| InvalidPattern {
            pattern: source.to_owned(),
            reason: err.to_string(),
        })?;
        Ok(Pattern {
            everything: source == ".*",
            source: source.to_owned(),
            regex,
        })
    }

    /// `.*`: everything.
    pub fn everything() -> Pattern {
        Pattern::new(".*").unwrap_or_else(|_| unreachable!(".* is a valid regular expression"))
    }

    /// The pattern as it was given (what listings show).
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the pattern occurs in `name` (a search, not a whole-name match).
    pub fn matches(&self, name: &[u8]) -> bool {
        self.everything || self.regex.is_match(name)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Pattern) -> bool {
        self.source == other.source
    }
}

/// A user's permissions in one vhost (RabbitMQ's `user_permission` record).
#[derive(Debug, Clone, PartialEq)]
pub struct Permission {
    /// The user.
    pub user: String,
    /// The vhost.
    pub vhost: String,
    /// What the user may create, delete and change.
    pub configure: Pattern,
    /// What the user may publish into.
    pub write: Pattern,
    /// What the user may consume from.
    pub read: Pattern,
}

impl Permission {
    /// Compiles the three patterns.
    pub fn new(
        user: &str,
        vhost: &str,
        configure: &str,
        write: &str,
        read: &str,
    ) -> Result<Permission, InvalidPattern> {
        Ok(Permission {
            user: user.to_owned(),
            vhost: vhost.to_owned(),
            configure: Pattern::new(configure)?,
            write: Pattern::new(write)?,
            read: Pattern::new(read)?,
        })
    }

    /// `.*` `.*` `.*`: everything in the vhost.
    pub fn full(user: &str, vhost: &str) -> Permission {
        Permission {
            user: user.to_owned(),
            vhost: vhost.to_owned(),
            configure: Pattern::everything(),
            write: Pattern::everything(),
            read: Pattern::everything(),
        }
    }

    /// The pattern that guards `access`.
    pub fn pattern(&self, access: Access) -> &Pattern {
        match access {
            Access::Configure => &self.configure,
            Access::Write => &self.write,
            Access::Read => &self.read,
        }
    }
}

/// Every user's permissions: read from the configuration, changed through the management
/// API (`PUT`/`DELETE /api/permissions/{vhost}/{user}`). Kept in the order they were set,
/// which is the order listings show.
///
/// With a data directory, the management API's changes outlive a restart, as RabbitMQ's do
/// (it keeps them in its metadata store): they are written to [`PERMISSIONS_FILE`] there
/// before they take effect, and replayed over what the configuration says when the broker
/// starts again. So a permission set or cleared through the API stays set or cleared, even
/// if the configuration file says otherwise for that user and vhost.
#[derive(Debug, Default)]
pub struct Permissions {
    entries: Mutex<Vec<Arc<Permission>>>,
    /// Bumped on every change, so that permits notice without taking the lock.
    generation: AtomicU64,
    /// Where the management API's changes are kept, once [`Permissions::keep_changes_in`]
    /// named a file. Its lock also puts the changes in one order, on disk and in memory.
    changes: Mutex<Option<ChangeFile>>,
}

/// The file of a data directory that keeps the permissions set or cleared through the
/// management API.
pub const PERMISSIONS_FILE: &str = "permissions.json";

/// The management API's changes and the file they are kept in.
#[derive(Debug)]
struct ChangeFile {
    path: PathBuf,
    /// The last change per (user, vhost): its three patterns, or None when cleared.
    last: BTreeMap<(String, String), Option<[String; 3]>>,
}

/// One change, as the file holds it: `{"user": .., "vhost": .., "configure": .., "write": ..,
/// "read": ..}` for a permission set, the same without the three patterns for one cleared.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct StoredChange {
    user: String,
    vhost: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    configure: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    write: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    read: Option<String>,
}

/// The permissions file cannot be read, or says something that cannot be applied: the
/// broker refuses to start rather than run with permissions an administrator did not set.
#[derive(Debug, thiserror::Error)]
pub enum ChangeFileError {
    /// The file exists but cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a list of changes.
    #[error("{path} is not a list of permission changes: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What the JSON parser said, or which pattern does not compile.
        reason: String,
    },
}

impl Permissions {
    /// The permissions a configuration gives: a user's `vhosts` list grants `.*` `.*` `.*`
    /// there; its `permissions` table sets the three patterns per vhost (and wins when both
    /// name a vhost).
    pub fn from_config(config: &BrokerConfig) -> Result<Permissions, InvalidPattern> {
        let permissions = Permissions::default();
        for user in &config.users {
            for vhost in &user.vhosts {
                if !user.permissions.contains_key(vhost) {
                    permissions.set(Permission::full(&user.name, vhost));
                }
            }
            for (vhost, p) in &user.permissions {
                permissions.set(Permission::new(
                    &user.name,
                    vhost,
                    &p.configure,
                    &p.write,
                    &p.read,
                )?);
            }
        }
        Ok(permissions)
    }

    /// Keeps the management API's changes in `path` from now on, after replaying the
    /// changes the file already holds (from before a restart) over the current entries.
    pub fn keep_changes_in(&self, path: PathBuf) -> Result<(), ChangeFileError> {
        let stored: Vec<StoredChange> = match std::fs::read(&path) {
            Ok(octets) => {
                serde_json::from_slice(&octets).map_err(|err| ChangeFileError::Malformed {
                    path: path.clone(),
                    reason: err.to_string(),
                })?
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => return Err(ChangeFileError::Read { path, source }),
        };
        let mut last = BTreeMap::new();
        for change in stored {
            let patterns = match (change.configure, change.write, change.read) {
                (Some(configure), Some(write), Some(read)) => Some([configure, write, read]),
                (None, None, None) => None,
                _ => {
                    return Err(ChangeFileError::Malformed {
                        path,
                        reason: format!(
                            "the change for user '{}' in vhost '{}' names some of configure, \
                             write and read but not all three",
                            change.user, change.vhost
                        ),
                    })
                }
            };
            last.insert((change.user, change.vhost), patterns);
        }
        for ((user, vhost), patterns) in &last {
            match patterns {
                Some([configure, write, read]) => {
                    let permission =
                        Permission::new(user, vhost, configure, write, read).map_err(|err| {
                            ChangeFileError::Malformed {
                                path: path.clone(),
                                reason: err.to_string(),
                            }
                        })?;
                    self.set(permission);
                }
                None => {
                    self.clear(user, vhost);
                }
            }
        }
        *lock(&self.changes) = Some(ChangeFile { path, last });
        Ok(())
    }

    /// [`Permissions::set`] for the management API: the change is written to the
    /// permissions file first (when there is one), and takes effect only once it is there.
    pub fn set_and_keep(&self, permission: Permission) -> std::io::Result<bool> {
        let mut changes = lock(&self.changes);
        if let Some(file) = changes.as_mut() {
            let patterns = [
                permission.configure.as_str().to_owned(),
                permission.write.as_str().to_owned(),
                permission.read.as_str().to_owned(),
            ];
            let key = (permission.user.clone(), permission.vhost.clone());
            file.record(key, Some(patterns))?;
        }
        Ok(self.set(permission))
    }

    /// [`Permissions::clear`] for the management API, kept as [`Permissions::set_and_keep`]
    /// keeps a change. Returns whether there were any.
    pub fn clear_and_keep(&self, user: &str, vhost: &str) -> std::io::Result<bool> {
        let mut changes = lock(&self.changes);
        if self.lookup(user, vhost).is_none() {
            return Ok(false);
        }
        if let Some(file) = changes.as_mut() {
            file.record((user.to_owned(), vhost.to_owned()), None)?;
        }
        Ok(self.clear(user, vhost))
    }

    /// Sets (or replaces) a user's permissions in a vhost, in memory only. Returns whether it
    /// replaced one.
    pub fn set(&self, permission: Permission) -> bool {
        let mut entries = lock(&self.entries);
        let replaced = match entries
            .iter_mut()
            .find(|p| p.user == permission.user && p.vhost == permission.vhost)
        {
            Some(existing) => {
                *existing = Arc::new(permission);
                true
            }
            None => {
                entries.push(Arc::new(permission));
                false
            }
        };
        self.generation.fetch_add(1, Ordering::Release);
        replaced
    }

    /// Removes a user's permissions in a vhost, in memory only. Returns whether there were
    /// any.
    pub fn clear(&self, user: &str, vhost: &str) -> bool {
        let mut entries = lock(&self.entries);
        let before = entries.len();
        entries.retain(|p| !(p.user == user && p.vhost == vhost));
        let removed = entries.len() != before;
        self.generation.fetch_add(1, Ordering::Release);
        removed
    }

    /// A user's permissions in a vhost, if it has any.
    pub fn lookup(&self, user: &str, vhost: &str) -> Option<Arc<Permission>> {
        lock(&self.entries)
            .iter()
            .find(|p| p.user == user && p.vhost == vhost)
            .cloned()
    }

    /// Every entry, in the order they were set.
    pub fn all(&self) -> Vec<Arc<Permission>> {
        lock(&self.entries).clone()
    }

    /// Whether `user` may open `vhost`: it has an entry there, whatever its patterns.
    pub fn has_vhost_access(&self, user: &str, vhost: &str) -> bool {
        self.lookup(user, vhost).is_some()
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

impl ChangeFile {
    /// Records a change: the whole file is written anew (it holds one entry per user and
    /// vhost ever changed, a few hundred octets each), to a temporary file that is fsynced
    /// and renamed over the old one, so that a crash leaves either the old or the new file.
    fn record(
        &mut self,
        key: (String, String),
        patterns: Option<[String; 3]>,
    ) -> std::io::Result<()> {
        let previous = self.last.insert(key.clone(), patterns);
        let written = crate::store::write_atomically(&self.path, &self.to_json());
        if written.is_err() {
            match previous {
                Some(previous) => self.last.insert(key, previous),
                None => self.last.remove(&key),
            };
        }
        written
    }

    fn to_json(&self) -> Vec<u8> {
        let stored: Vec<StoredChange> = self
            .last
            .iter()
            .map(|((user, vhost), patterns)| {
                let [configure, write, read] = match patterns {
                    Some([c, w, r]) => [Some(c.clone()), Some(w.clone()), Some(r.clone())],
                    None => [None, None, None],
                };
                StoredChange {
                    user: user.clone(),
                    vhost: vhost.clone(),
                    configure,
                    write,
                    read,
                }
            })
            .collect();
        // A list of plain strings always serialises.
        serde_json::to_vec_pretty(&stored).unwrap_or_default()
    }
}

/// One user's permissions in one vhost, as a connection (or a management request) checks
/// them: a snapshot of the entry, re-read only when the permissions changed, so that the
/// check on every basic.publish takes no lock.
#[derive(Debug, Clone)]
pub struct Permit {
    permissions: Arc<Permissions>,
    user: String,
    vhost: String,
    seen: u64,
    entry: Option<Arc<Permission>>,
}

impl Permit {
    /// `user`'s permit in `vhost`.
    pub fn new(permissions: Arc<Permissions>, user: &str, vhost: &str) -> Permit {
        let seen = permissions.generation();
        let entry = permissions.lookup(user, vhost);
        Permit {
            permissions,
            user: user.to_owned(),
            vhost: vhost.to_owned(),
            seen,
            entry,
        }
    }

    /// The user.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Checks one access to one resource: 403 ACCESS_REFUSED with RabbitMQ's text when the
    /// pattern does not occur in the name (or the user has no entry here any more).
    pub fn check(&mut self, access: Access, resource: Resource<'_>) -> Result<(), AmqpError> {
        let generation = self.permissions.generation();
        if generation != self.seen {
            self.seen = generation;
            self.entry = self.permissions.lookup(&self.user, &self.vhost);
        }
        let name = match resource {
            Resource::Queue(name) => name,
            Resource::Exchange([]) => DEFAULT_EXCHANGE_RESOURCE.as_bytes(),
            Resource::Exchange(name) => name,
        };
        let allowed = self
            .entry
            .as_ref()
            .is_some_and(|entry| entry.pattern(access).matches(name));
        if allowed {
            return Ok(());
        }
        let name = String::from_utf8_lossy(name);
        let described = match resource {
            Resource::Queue(_) => queue_resource(&name, &self.vhost),
            Resource::Exchange(_) => exchange_resource(&name, &self.vhost),
        };
        Err(AmqpError::access_refused(format!(
            "access to {described} refused for user '{}'",
            self.user
        )))
    }

    // ---- the checks of each method, placed in RabbitMQ's order -------------------------

    /// exchange.declare: nothing when passive; otherwise configure on the exchange, after
    /// the type (503) and default-exchange (403) checks and before the reserved-name and
    /// equivalence ones; for a new exchange with an `alternate-exchange`, then read on the
    /// exchange and write on the alternate.
    pub fn exchange_declare(
        &mut self,
        vhost: &VHost,
        name: &ShortString,
        kind: &ShortString,
        passive: bool,
        arguments: &FieldTable,
    ) -> Result<(), AmqpError> {
        if passive || name.is_empty() || ExchangeKind::parse(&kind.to_str_lossy()).is_none() {
            return Ok(());
        }
        self.check(Access::Configure, Resource::Exchange(name.as_bytes()))?;
        if let Some(FieldValue::LongString(alternate)) = arguments.get("alternate-exchange") {
            if !vhost.has_exchange(name) {
                self.check(Access::Read, Resource::Exchange(name.as_bytes()))?;
                self.check(Access::Write, Resource::Exchange(alternate.as_bytes()))?;
            }
        }
        Ok(())
    }

    /// exchange.delete: configure on the exchange, after the default-exchange and
    /// system-exchange (`amq.`) refusals, before looking it up (a missing exchange is
    /// refused too).
    pub fn exchange_delete(&mut self, name: &ShortString) -> Result<(), AmqpError> {
        if name.is_empty() || name.as_bytes().starts_with(b"amq.") {
            return Ok(());
        }
        self.check(Access::Configure, Resource::Exchange(name.as_bytes()))
    }

    /// queue.declare of a named queue: nothing when passive; otherwise configure on the
    /// queue, after the reserved-prefix refusal and before the lookup; for a new queue
    /// with an `x-dead-letter-exchange`, then read on the queue and write on that exchange.
    /// A server-named queue (`""`) is checked by [`Permit::server_named_queue`] once named.
    pub fn queue_declare(
        &mut self,
        vhost: &VHost,
        name: &ShortString,
        passive: bool,
        arguments: &FieldTable,
    ) -> Result<(), AmqpError> {
        if passive || name.is_empty() || name.as_bytes().starts_with(b"amq.") {
            return Ok(());
        }
        self.check(Access::Configure, Resource::Queue(name.as_bytes()))?;
        if vhost.queue(name).is_none() {
            self.dead_letter_exchange(name, arguments)?;
        }
        Ok(())
    }

    /// queue.declare `""`: configure on the name the server chose (`amq.gen-...`), then the
    /// dead-letter checks of a new queue.
    pub fn server_named_queue(
        &mut self,
        name: &ShortString,
        arguments: &FieldTable,
    ) -> Result<(), AmqpError> {
        self.check(Access::Configure, Resource::Queue(name.as_bytes()))?;
        self.dead_letter_exchange(name, arguments)
    }

    fn dead_letter_exchange(
        &mut self,
        queue: &ShortString,
        arguments: &FieldTable,
    ) -> Result<(), AmqpError> {
        if let Some(FieldValue::LongString(exchange)) = arguments.get("x-dead-letter-exchange") {
            self.check(Access::Read, Resource::Queue(queue.as_bytes()))?;
            self.check(Access::Write, Resource::Exchange(exchange.as_bytes()))?;
        }
        Ok(())
    }

    /// queue.delete: configure on the queue, before looking it up.
    pub fn queue_delete(&mut self, queue: &ShortString) -> Result<(), AmqpError> {
        self.check(Access::Configure, Resource::Queue(queue.as_bytes()))
    }

    /// queue.bind / queue.unbind: write on the queue first (before the default-exchange
    /// refusal), then read on the exchange (before any 404).
    pub fn queue_bind(
        &mut self,
        queue: &ShortString,
        exchange: &ShortString,
    ) -> Result<(), AmqpError> {
        self.check(Access::Write, Resource::Queue(queue.as_bytes()))?;
        if exchange.is_empty() {
            return Ok(());
        }
        self.check(Access::Read, Resource::Exchange(exchange.as_bytes()))
    }

    /// exchange.bind / exchange.unbind: write on the destination, then (unless either is
    /// the default exchange, refused next) read on the source.
    pub fn exchange_bind(
        &mut self,
        destination: &ShortString,
        source: &ShortString,
    ) -> Result<(), AmqpError> {
        self.check(Access::Write, Resource::Exchange(destination.as_bytes()))?;
        if destination.is_empty() || source.is_empty() {
            return Ok(());
        }
        self.check(Access::Read, Resource::Exchange(source.as_bytes()))
    }

    /// basic.publish: write on the exchange (the default exchange as `amq.default`), before
    /// looking it up.
    pub fn publish(&mut self, exchange: &ShortString) -> Result<(), AmqpError> {
        self.check(Access::Write, Resource::Exchange(exchange.as_bytes()))
    }

    /// basic.consume, basic.get, queue.purge: read on the queue, before looking it up.
    pub fn read_queue(&mut self, queue: &ShortString) -> Result<(), AmqpError> {
        self.check(Access::Read, Resource::Queue(queue.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn permit(configure: &str, write: &str, read: &str) -> Permit {
        let permissions = Arc::new(Permissions::default());
        permissions.set(Permission::new("u", "/", configure, write, read).unwrap());
        Permit::new(permissions, "u", "/")
    }

    #[test]
    fn pattern_is_searched_for_not_matched_whole() {
        let pattern = Pattern::new("foo").unwrap();
        assert!(pattern.matches(b"foo"));
        assert!(pattern.matches(b"my-foo-queue"));
        assert!(!pattern.matches(b"fo"));
        let anchored = Pattern::new("^foo$").unwrap();
        assert!(anchored.matches(b"foo"));
        assert!(!anchored.matches(b"my-foo"));
    }

    #[test]
    fn everything_pattern_matches_every_name_as_the_regex_does() {
        let everything = Pattern::everything();
        let regex = regex::bytes::Regex::new(".*").unwrap();
        for name in [&b""[..], b"q", b"a\nb", b"\xff\xfe", "ünï".as_bytes()] {
            assert!(everything.matches(name));
            assert!(regex.is_match(name));
        }
    }

    #[test]
    fn empty_pattern_matches_nothing_but_the_empty_name() {
        let empty = Pattern::new("").unwrap();
        assert!(!empty.matches(b"q"));
        assert!(!empty.matches(DEFAULT_EXCHANGE_RESOURCE.as_bytes()));
        assert_eq!(empty.as_str(), "");
    }

    #[test]
    fn invalid_pattern_is_refused_with_its_text() {
        let err = Pattern::new("(").unwrap_err();
        assert_eq!(err.pattern, "(");
        assert!(err
            .to_string()
            .starts_with("invalid regular expression '('"));
    }

    #[test]
    fn refusal_names_the_resource_vhost_and_user_as_rabbitmq_3_10() {
        let mut permit = permit("", "", "");
        let err = permit.read_queue(&"q".into()).unwrap_err();
        assert_eq!(err.code.0, 403);
        assert_eq!(
            err.text,
            "ACCESS_REFUSED - access to queue 'q' in vhost '/' refused for user 'u'"
        );
        let err = permit.publish(&"".into()).unwrap_err();
        assert_eq!(
            err.text,
            "ACCESS_REFUSED - access to exchange 'amq.default' in vhost '/' refused for user 'u'"
        );
    }

    #[test]
    fn default_exchange_is_checked_as_amq_default() {
        let mut permit = permit("", "^amq\\.default$", "");
        assert!(permit.publish(&"".into()).is_ok());
        assert!(permit.publish(&"amq.direct".into()).is_err());
    }

    #[test]
    fn bind_needs_write_on_destination_then_read_on_source() {
        let mut permit = permit("", "^q$", "");
        let err = permit.queue_bind(&"q".into(), &"x".into()).unwrap_err();
        assert!(err.text.contains("exchange 'x'"), "{}", err.text);
        let err = permit.queue_bind(&"other".into(), &"x".into()).unwrap_err();
        assert!(err.text.contains("queue 'other'"), "{}", err.text);
    }

    #[test]
    fn changed_permissions_reach_an_existing_permit() {
        let permissions = Arc::new(Permissions::default());
        permissions.set(Permission::full("u", "/"));
        let mut permit = Permit::new(permissions.clone(), "u", "/");
        assert!(permit.read_queue(&"q".into()).is_ok());
        assert!(permissions.set(Permission::new("u", "/", ".*", ".*", "").unwrap()));
        assert!(permit.read_queue(&"q".into()).is_err());
        assert!(permissions.clear("u", "/"));
        assert!(permit.publish(&"x".into()).is_err());
        assert!(!permissions.has_vhost_access("u", "/"));
    }

    #[test]
    fn config_vhosts_grant_everything_and_permissions_tables_win() {
        let config = BrokerConfig::from_toml(
            r#"
            vhosts = ["/", "prod"]
            [[users]]
            name = "app"
            password = "p"
            vhosts = ["/", "prod"]
            [users.permissions.prod]
            configure = ""
            write = "^app\\."
            read = ".*"
            "#,
        )
        .unwrap();
        let permissions = Permissions::from_config(&config).unwrap();
        let slash = permissions.lookup("app", "/").unwrap();
        assert_eq!(slash.configure.as_str(), ".*");
        let prod = permissions.lookup("app", "prod").unwrap();
        assert_eq!(
            (
                prod.configure.as_str(),
                prod.write.as_str(),
                prod.read.as_str()
            ),
            ("", "^app\\.", ".*")
        );
        assert_eq!(permissions.all().len(), 2);
    }

    #[test]
    fn changes_kept_in_a_file_are_replayed_over_the_configuration() {
        let dir = std::env::temp_dir().join(format!("perm-changes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(PERMISSIONS_FILE);
        let _ = std::fs::remove_file(&path);
        let first = Permissions::default();
        first.set(Permission::full("config-user", "/"));
        first.keep_changes_in(path.clone()).unwrap();
        assert!(!first
            .set_and_keep(Permission::new("u", "/", "^u-", "", ".*").unwrap())
            .unwrap());
        assert!(first.clear_and_keep("config-user", "/").unwrap());
        assert!(!first.clear_and_keep("nobody", "/").unwrap());

        let second = Permissions::default();
        second.set(Permission::full("config-user", "/"));
        second.keep_changes_in(path.clone()).unwrap();
        assert!(second.lookup("config-user", "/").is_none());
        let u = second.lookup("u", "/").unwrap();
        assert_eq!(
            (u.configure.as_str(), u.write.as_str(), u.read.as_str()),
            ("^u-", "", ".*")
        );

        std::fs::write(&path, r#"[{"user": "u", "vhost": "/", "configure": ".*"}]"#).unwrap();
        let err = Permissions::default()
            .keep_changes_in(path.clone())
            .unwrap_err();
        assert!(err.to_string().contains("not all three"), "{err}");
        std::fs::write(
            &path,
            r#"[{"user": "u", "vhost": "/", "configure": "(", "write": "", "read": ""}]"#,
        )
        .unwrap();
        let err = Permissions::default()
            .keep_changes_in(path.clone())
            .unwrap_err();
        assert!(
            err.to_string().contains("invalid regular expression"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
