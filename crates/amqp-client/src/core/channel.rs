//! One channel's state inside the connection core.

use std::collections::VecDeque;

use amqp_codec::spec::METHODS;
use amqp_codec::{ContentAssembler, Method};

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
}

impl<T> ChannelCore<T> {
    pub(super) fn new() -> Self {
        ChannelCore {
            state: ChannelState::AwaitingOpenOk,
            assembler: ContentAssembler::default(),
            pending: VecDeque::new(),
            next_confirm_seq: None,
            close_token: None,
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
        self.pending.push_back(PendingReply {
            class_id: info.class_id,
            reply_ids,
            token,
        });
    }

    /// The token waiting for `reply`, if `reply` answers the oldest pending request.
    pub(super) fn take_reply_token(&mut self, reply: &Method) -> Option<T> {
        let front = self.pending.front()?;
        if front.class_id == reply.class_id() && front.reply_ids.contains(&Some(reply.method_id()))
        {
            self.pending.pop_front().map(|p| p.token)
        } else {
            None
        }
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
