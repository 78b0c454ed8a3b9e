//! Resource alarms, as RabbitMQ raises them: memory (queued message bytes above the high
//! watermark) and disk (free space in the data directory below `disk_free_limit`, or the
//! message store failing to write).
//!
//! While any alarm is on, every connection that announced the `connection.blocked`
//! capability is sent connection.blocked once (reason `low on memory`, `low on disk`, or
//! both joined with ` & `, as RabbitMQ's reader words it), and connections that publish
//! are no longer read from; when the last alarm clears they get connection.unblocked and
//! are read again. A second alarm while blocked sends nothing more (RabbitMQ's "Blocked
//! Connection Notifications" guide). Consumers keep receiving and acking.
//!
//! The broker keeps which alarms are on ([`ResourceAlarms`]) and a watch of "any alarm"
//! that the connections' reader tasks wait on (`Broker::alarm`).

use std::path::Path;

/// A resource that can run low.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// Memory: queued message bytes above the high watermark.
    Memory,
    /// Disk: free space below the limit, or the store cannot write.
    Disk,
}

impl Resource {
    /// The name RabbitMQ gives it (`/api/health/checks/alarms`, connection.blocked).
    pub fn name(self) -> &'static str {
        match self {
            Resource::Memory => "memory",
            Resource::Disk => "disk",
        }
    }
}

/// Which alarms are on.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ResourceAlarms {
    /// The memory alarm.
    pub memory: bool,
    /// The disk alarm.
    pub disk: bool,
}

impl ResourceAlarms {
    /// Whether any alarm is on (publishers are blocked).
    pub fn any(self) -> bool {
        self.memory || self.disk
    }

    /// The resources in alarm, memory first.
    pub fn resources(self) -> Vec<Resource> {
        let mut on = Vec::new();
        if self.memory {
            on.push(Resource::Memory);
        }
        if self.disk {
            on.push(Resource::Disk);
        }
        on
    }

    /// connection.blocked's reason: `low on ` and the resources joined with ` & `.
    pub fn blocked_reason(self) -> String {
        let names: Vec<&str> = self.resources().into_iter().map(Resource::name).collect();
        format!("low on {}", names.join(" & "))
    }

    /// Sets one alarm; returns whether it changed.
    pub fn set(&mut self, resource: Resource, on: bool) -> bool {
        let flag = match resource {
            Resource::Memory => &mut self.memory,
            Resource::Disk => &mut self.disk,
        };
        let changed = *flag != on;
        *flag = on;
        changed
    }
}

/// RabbitMQ's default `disk_free_limit`: 50 MB (50 000 000 bytes).
pub const DEFAULT_DISK_FREE_LIMIT: u64 = 50_000_000;

/// The bytes an unprivileged process may still write on the file system holding `path`
/// (statvfs: available blocks times the fragment size, what `df` shows as available).
/// None where it cannot be told (not a Unix system, or the call failed).
pub fn free_disk_space(path: &Path) -> Option<u64> {
    #[cfg(unix)]
    {
        let stat = rustix::fs::statvfs(path).ok()?;
        stat.f_bavail.checked_mul(stat.f_frsize)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocked_reason_names_each_resource_as_rabbitmq_does() {
        let mut alarms = ResourceAlarms::default();
        assert!(!alarms.any());
        assert!(alarms.set(Resource::Disk, true));
        assert!(!alarms.set(Resource::Disk, true));
        assert_eq!(alarms.blocked_reason(), "low on disk");
        alarms.set(Resource::Memory, true);
        assert_eq!(alarms.blocked_reason(), "low on memory & disk");
        alarms.set(Resource::Disk, false);
        assert_eq!(alarms.blocked_reason(), "low on memory");
        assert!(alarms.any());
    }

    #[test]
    fn free_disk_space_of_the_temp_dir_is_known_on_unix() {
        let free = free_disk_space(&std::env::temp_dir());
        assert_eq!(free.is_some(), cfg!(unix));
    }
}
