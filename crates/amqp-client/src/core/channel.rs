//! One channel's state inside the connection core.

use std::collections::VecDeque;

use amqp_codec::spec::METHODS;
use amqp_codec::{ContentAssembler, Method, ShortString};

/// The names of the methods that answer `request` (`["declare-ok"]`), none if it has no reply.
/// (basic.recover's recover-ok comes from the codec's errata to the spec XML.)
pub(super) fn responses(request: &Method) -> &'static [&'static str] {
    request.info().responses
}

/// Where a channel is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ChannelState {
    /// channel.open sent; waiting for channel.open-ok.
    AwaitingOpenOk,
    /// Open for use.
    Open,
    /// channel.close sent; waiting for channel.close-ok.
    Closing,
}

/// A synchronous request waiting for its reply.
struct PendingReply<T> {
    class_id: u16,
    /// The method ids that answer it (basic.get has two: get-ok and get-empty).
    reply_ids: [Option<u16>; 2],
    /// For basic.consume and basic.get: whether what they deliver needs no ack.
    no_ack: bool,
    token: T,
}

pub(super) struct ChannelCore<T> {
    pub(super) state: ChannelState,
    pub(super) assembler: ContentAssembler,
    /// Requests in the order they were sent: the server answers in that order (spec 2.3.5).
    pending: VecDeque<PendingReply<T>>,
    /// The sequence number of the next publish, once confirm.select was sent.
    next_confirm_seq: Option<u64>,
    /// The token of our own channel.close.
    pub(super) close_token: Option<T>,
    /// The deliveries the server waits for acks of.
    pub(super) unacked: Unacked,
}

impl<T> ChannelCore<T> {
    pub(super) fn new() -> Self {
        ChannelCore {
            state: ChannelState::AwaitingOpenOk,
            assembler: ContentAssembler::default(),
            pending: VecDeque::new(),
            next_confirm_seq: None,
            close_token: None,
            unacked: Unacked::default(),
        }
    }

    /// Records that `request` was sent and `token` waits for the reply the spec names.
    pub(super) fn expect_reply(&mut self, request: &Method, token: T) {
        let info = request.info();
        let responses = responses(request);
        let mut reply_ids = [None, None];
        let replies = METHODS
            .iter()
            .filter(|m| m.class_id == info.class_id && responses.contains(&m.method));
        for (slot, reply) in reply_ids.iter_mut().zip(replies) {
            *slot = Some(reply.method_id);
        }
        let no_ack = match request {
            Method::BasicConsume(consume) => consume.no_ack,
            Method::BasicGet(get) => get.no_ack,
            _ => false,
        };
        self.pending.push_back(PendingReply {
            class_id: info.class_id,
            reply_ids,
            no_ack,
            token,
        });
    }

    /// The token waiting for `reply`, if `reply` answers the oldest pending request. Notes
    /// what the reply means for the unacked deliveries (a consumer started or ended, a
    /// message fetched).
    pub(super) fn take_reply_token(&mut self, reply: &Method) -> Option<T> {
        let front = self.pending.front()?;
        if front.class_id != reply.class_id() || !front.reply_ids.contains(&Some(reply.method_id()))
        {
            return None;
        }
        let pending = self.pending.pop_front()?;
        match reply {
            Method::BasicConsumeOk(ok) => self
                .unacked
                .consumer_started(ok.consumer_tag.clone(), pending.no_ack),
            Method::BasicCancelOk(ok) => self.unacked.consumer_ended(&ok.consumer_tag),
            Method::BasicGetOk(get) if !pending.no_ack => self.unacked.delivered(get.delivery_tag),
            _ => {}
        }
        Some(pending.token)
    }

    /// Every waiting token, oldest first, leaving none.
    pub(super) fn take_pending(&mut self) -> impl Iterator<Item = T> {
        std::mem::take(&mut self.pending)
            .into_iter()
            .map(|p| p.token)
    }

    pub(super) fn enter_confirm_mode(&mut self) {
        if self.next_confirm_seq.is_none() {
            self.next_confirm_seq = Some(1);
        }
    }

    pub(super) fn in_confirm_mode(&self) -> bool {
        self.next_confirm_seq.is_some()
    }

    /// The sequence number of a publish just sent, in confirm mode.
    pub(super) fn next_publish_seq(&mut self) -> Option<u64> {
        let seq = self.next_confirm_seq?;
        self.next_confirm_seq = Some(seq + 1);
        Some(seq)
    }
}

/// The delivery tags the server holds unacknowledged on a channel, as far as the client can
/// tell, oldest first. It lets the connection write the acks of the oldest deliveries, made
/// one by one and queued together, as one basic.ack with `multiple` set: the same effect
/// (every unacked tag up to it, spec 1.8.3.13), one frame for the server to handle instead
/// of many.
///
/// The set must never miss a tag the server holds, or a multiple ack would settle it too; so
/// whenever the client cannot be sure (a delivery to a consumer whose ack mode it does not
/// know, a transaction, whose rollback would bring acked tags back, or more tags than it
/// tracks), it stops for good on that channel, and acks go out exactly as they were made.
#[derive(Debug)]
pub(super) struct Unacked {
    /// Ascending: the server numbers a channel's deliveries upwards (spec 1.8.3.8).
    tags: VecDeque<u64>,
    /// False once the set can no longer be trusted.
    exact: bool,
    /// Consumers whose deliveries need an ack.
    manual: Vec<ShortString>,
    /// Consumers whose deliveries need none (no-ack).
    automatic: Vec<ShortString>,
}

/// How many unacked tags a channel tracks before it gives up (a consumer with no prefetch
/// limit that never acks).
const UNACKED_LIMIT: usize = 1 << 16;

impl Default for Unacked {
    fn default() -> Self {
        Unacked {
            tags: VecDeque::new(),
            exact: true,
            manual: Vec::new(),
            automatic: Vec::new(),
        }
    }
}

impl Unacked {
    /// basic.consume-ok: the consumer's deliveries need an ack unless `no_ack`.
    pub(super) fn consumer_started(&mut self, consumer_tag: ShortString, no_ack: bool) {
        if no_ack {
            self.automatic.push(consumer_tag);
        } else {
            self.manual.push(consumer_tag);
        }
    }

    /// basic.cancel-ok, or the server's basic.cancel: no more deliveries for it.
    pub(super) fn consumer_ended(&mut self, consumer_tag: &ShortString) {
        self.manual.retain(|tag| tag != consumer_tag);
        self.automatic.retain(|tag| tag != consumer_tag);
    }

    /// basic.deliver to `consumer_tag`.
    pub(super) fn delivered_to(&mut self, consumer_tag: &ShortString, delivery_tag: u64) {
        if self.manual.iter().any(|tag| tag == consumer_tag) {
            self.delivered(delivery_tag);
        } else if !self.automatic.iter().any(|tag| tag == consumer_tag) {
            // A consumer started without a reply (no-wait): its ack mode is unknown.
            self.give_up();
        }
    }

    /// A delivery (or basic.get-ok) that needs an ack.
    pub(super) fn delivered(&mut self, delivery_tag: u64) {
        if !self.exact {
            return;
        }
        if self.tags.len() >= UNACKED_LIMIT || self.tags.back() >= Some(&delivery_tag) {
            self.give_up();
        } else {
            self.tags.push_back(delivery_tag);
        }
    }

    /// Takes `delivery_tag` if it is the oldest unacked one: its ack may then join the acks of
    /// the tags before it.
    pub(super) fn take_oldest(&mut self, delivery_tag: u64) -> bool {
        if self.exact && self.tags.front() == Some(&delivery_tag) {
            self.tags.pop_front();
            true
        } else {
            false
        }
    }

    /// Notes what an outgoing method does to the set.
    pub(super) fn sent(&mut self, method: &Method) {
        match method {
            Method::BasicAck(ack) => self.settle(ack.delivery_tag, ack.multiple),
            Method::BasicNack(nack) => self.settle(nack.delivery_tag, nack.multiple),
            Method::BasicReject(reject) => self.settle(reject.delivery_tag, false),
            // Every unacked message goes back to its queue; the tags are void.
            Method::BasicRecover(_) | Method::BasicRecoverAsync(_) => self.tags.clear(),
            Method::TxSelect(_) => self.give_up(),
            _ => {}
        }
    }

    fn settle(&mut self, delivery_tag: u64, multiple: bool) {
        if multiple && delivery_tag == 0 {
            // "All outstanding messages" (spec 1.8.3.13).
            self.tags.clear();
        } else if multiple {
            while self.tags.front().is_some_and(|tag| *tag <= delivery_tag) {
                self.tags.pop_front();
            }
        } else if let Ok(at) = self.tags.binary_search(&delivery_tag) {
            self.tags.remove(at);
        }
    }

    fn give_up(&mut self) {
        self.exact = false;
        self.tags = VecDeque::new();
    }
}

#[cfg(test)]
mod tests {
    use amqp_codec::methods::{BasicAck, BasicNack, BasicRecover, BasicReject, TxSelect};

    use super::*;

    fn tracking(tags: &[u64]) -> Unacked {
        let mut unacked = Unacked::default();
        unacked.consumer_started("manual".into(), false);
        for tag in tags {
            unacked.delivered_to(&"manual".into(), *tag);
        }
        unacked
    }

    #[test]
    fn only_the_oldest_tag_can_be_taken() {
        let mut unacked = tracking(&[1, 2, 3]);
        assert!(!unacked.take_oldest(2));
        assert!(unacked.take_oldest(1));
        assert!(unacked.take_oldest(2));
        assert!(!unacked.take_oldest(2), "taken twice");
        assert_eq!(unacked.tags, [3]);
    }

    #[test]
    fn deliveries_to_no_ack_consumers_are_not_tracked() {
        let mut unacked = tracking(&[1]);
        unacked.consumer_started("auto".into(), true);
        unacked.delivered_to(&"auto".into(), 2);
        unacked.delivered_to(&"manual".into(), 3);
        assert!(unacked.exact);
        assert_eq!(unacked.tags, [1, 3]);
    }

    #[test]
    fn a_delivery_to_an_unknown_consumer_stops_the_tracking() {
        let mut unacked = tracking(&[1]);
        unacked.delivered_to(&"no-wait".into(), 2);
        assert!(!unacked.take_oldest(1));
        unacked.delivered_to(&"manual".into(), 3);
        assert!(!unacked.take_oldest(3));
    }

    #[test]
    fn tx_select_stops_the_tracking() {
        let mut unacked = tracking(&[1, 2]);
        unacked.sent(&TxSelect.into());
        assert!(!unacked.take_oldest(1));
    }

    #[test]
    fn acks_nacks_and_rejects_sent_settle_their_tags() {
        let mut unacked = tracking(&[1, 2, 3, 4, 5, 6]);
        let ack = |delivery_tag, multiple| BasicAck {
            delivery_tag,
            multiple,
        };
        unacked.sent(&ack(3, false).into());
        assert_eq!(unacked.tags, [1, 2, 4, 5, 6]);
        unacked.sent(
            &BasicNack {
                delivery_tag: 4,
                multiple: true,
                requeue: true,
            }
            .into(),
        );
        assert_eq!(unacked.tags, [5, 6]);
        unacked.sent(
            &BasicReject {
                delivery_tag: 6,
                requeue: false,
            }
            .into(),
        );
        assert_eq!(unacked.tags, [5]);
        unacked.sent(&ack(0, true).into());
        assert!(unacked.tags.is_empty());
    }

    #[test]
    fn recover_voids_every_tag_but_keeps_tracking_new_deliveries() {
        let mut unacked = tracking(&[1, 2]);
        unacked.sent(&BasicRecover { requeue: true }.into());
        assert!(!unacked.take_oldest(1));
        unacked.delivered_to(&"manual".into(), 3);
        assert!(unacked.take_oldest(3));
    }

    #[test]
    fn a_cancelled_consumers_later_delivery_stops_the_tracking() {
        let mut unacked = tracking(&[1]);
        unacked.consumer_ended(&"manual".into());
        unacked.delivered_to(&"manual".into(), 2);
        assert!(!unacked.exact);
    }

    #[test]
    fn tags_that_do_not_go_up_stop_the_tracking() {
        let mut unacked = tracking(&[5]);
        unacked.delivered(5);
        assert!(!unacked.exact);
    }
}
