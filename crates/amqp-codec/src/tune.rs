//! Tune negotiation (spec 1.4.2.6): connection.tune offers limits, connection.tune-ok settles
//! them. The client and the broker both negotiate through here, so they cannot disagree.
//!
//! For `channel_max` and `frame_max`, 0 means "no limit", so the settled value is the smaller
//! of the two non-zero values. For `heartbeat`, 0 means "no heartbeats".

/// The three limits negotiated by connection.tune / connection.tune-ok.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tune {
    /// Highest channel number that may be used; 0: no limit other than 65535.
    pub channel_max: u16,
    /// Largest frame in octets, framing included; 0: no limit.
    pub frame_max: u32,
    /// Heartbeat interval in seconds; 0: heartbeats off.
    pub heartbeat: u16,
}

impl Tune {
    /// What RabbitMQ offers by default: 2047 channels, 128 KiB frames, 60 s heartbeats.
    pub const RABBITMQ_DEFAULTS: Tune = Tune {
        channel_max: 2047,
        frame_max: 131_072,
        heartbeat: 60,
    };

    /// The highest usable channel number (a channel_max of 0 means 65535).
    pub fn max_channel(&self) -> u16 {
        if self.channel_max == 0 {
            u16::MAX
        } else {
            self.channel_max
        }
    }
}

/// The settled value of a limit where 0 means "no limit": the smaller non-zero value.
pub fn negotiate_limit<N: Copy + Ord + Default>(ours: N, theirs: N) -> N {
    let zero = N::default();
    if ours == zero {
        theirs
    } else if theirs == zero {
        ours
    } else {
        ours.min(theirs)
    }
}

/// The settled heartbeat when a client asks for `requested` (None: whatever the server
/// offers; Some(0): heartbeats off) and the server offers `offered`.
///
/// A client that turns heartbeats off gets them off, as pika and the Java client do; otherwise
/// the smaller non-zero interval wins.
pub fn negotiate_heartbeat(requested: Option<u16>, offered: u16) -> u16 {
    match requested {
        None => offered,
        Some(0) => 0,
        Some(requested) => negotiate_limit(requested, offered),
    }
}

/// What a client answers with tune-ok, given the server's offer and what it asks for.
pub fn client_tune_ok(
    offer: Tune,
    channel_max: u16,
    frame_max: u32,
    heartbeat: Option<u16>,
) -> Tune {
    Tune {
        channel_max: negotiate_limit(channel_max, offer.channel_max),
        frame_max: negotiate_limit(frame_max, offer.frame_max),
        heartbeat: negotiate_heartbeat(heartbeat, offer.heartbeat),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiate_limit_takes_the_smaller_nonzero_value() {
        assert_eq!(negotiate_limit(0u32, 131_072), 131_072);
        assert_eq!(negotiate_limit(8192u32, 0), 8192);
        assert_eq!(negotiate_limit(8192u32, 131_072), 8192);
        assert_eq!(negotiate_limit(0u16, 0), 0);
    }

    #[test]
    fn negotiate_heartbeat_zero_request_turns_heartbeats_off() {
        assert_eq!(negotiate_heartbeat(Some(0), 60), 0);
        assert_eq!(negotiate_heartbeat(None, 60), 60);
        assert_eq!(negotiate_heartbeat(Some(30), 60), 30);
        assert_eq!(negotiate_heartbeat(Some(90), 60), 60);
        assert_eq!(negotiate_heartbeat(Some(10), 0), 10);
    }

    #[test]
    fn client_tune_ok_settles_each_limit() {
        let tune = client_tune_ok(Tune::RABBITMQ_DEFAULTS, 0, 8192, Some(30));
        assert_eq!(
            tune,
            Tune {
                channel_max: 2047,
                frame_max: 8192,
                heartbeat: 30
            }
        );
    }
}
