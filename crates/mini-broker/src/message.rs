//! Messages inside the broker, kept compact: a queued message costs little more than its
//! body, so that a million of them fit where RabbitMQ needs three times the memory.
//!
//! A message is kept as it arrived: its exchange, its routing key, the property flags and
//! property list of its content header exactly as the publisher encoded them (spec
//! 4.2.6.1), and its body. Delivery writes the properties back as they are, without
//! decoding or re-encoding them; they are decoded only where the broker reads or changes
//! them after routing (dead-lettering, a quorum queue's delivery count, the management API).
//! The three properties the broker acts on while a message waits, `delivery-mode`,
//! `priority` and `expiration`'s deadline, are pulled out when it is published.
//!
//! ```text
//!   small body:  [ exchange | routing key | property flags + list | body ]   one allocation
//!   large body:  [ exchange | routing key | property flags + list ]  + body as received
//! ```
//!
//! A small body is copied into the message's single, exact-size allocation, so the 64 KiB
//! read buffer it arrived in is freed once the frames around it are handled; a large body
//! stays the slice of the frame it came in (copying it would cost more than the buffer
//! space around it).

use std::num::NonZeroU64;
use std::sync::Arc;
use std::time::Instant;

use amqp_codec::frame::decode_payload;
use amqp_codec::{
    BasicProperties, ContentHeader, FieldTable, Frame, FrameType, HeaderOfContent, Limits,
};
use bytes::{BufMut, Bytes, BytesMut};

/// Bodies up to this size are copied into the message's own allocation; larger ones are
/// kept as the slice of the frame they arrived in.
pub const INLINE_BODY_MAX: usize = 4096;

/// Octets of a content header payload before the property flags: class id (2), weight (2),
/// body size (8).
const HEADER_PREFIX: usize = 12;

/// What was published, shared by every queue it was routed to.
pub struct MessageContent {
    data: Data,
    exchange_len: u8,
    routing_key_len: u8,
    properties_len: u32,
    delivery_mode: Option<u8>,
    priority: Option<u8>,
}

/// Where a message's octets are.
enum Data {
    /// Exchange, routing key, properties and body back to back.
    Inline(Box<[u8]>),
    /// Exchange, routing key and properties back to back; the body apart.
    Split(Box<SplitData>),
}

struct SplitData {
    head: Box<[u8]>,
    body: Bytes,
}

impl std::fmt::Debug for MessageContent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageContent")
            .field("exchange", &String::from_utf8_lossy(self.exchange()))
            .field("routing_key", &String::from_utf8_lossy(self.routing_key()))
            .field("properties", &self.properties())
            .field("body_size", &self.size())
            .finish()
    }
}

impl MessageContent {
    /// A message from its parts: `properties_wire` is the property flags and property list of
    /// a content header as they go on the wire (a single flags word, without continuation),
    /// and `delivery_mode` and `priority` are what it says of those two. Exchange and
    /// routing key are short strings (at most 255 octets; longer ones are cut, which a
    /// decoded short string never needs).
    pub fn from_wire(
        exchange: &[u8],
        routing_key: &[u8],
        properties_wire: &[u8],
        delivery_mode: Option<u8>,
        priority: Option<u8>,
        body: Bytes,
    ) -> MessageContent {
        let exchange = exchange.get(..255).unwrap_or(exchange);
        let routing_key = routing_key.get(..255).unwrap_or(routing_key);
        let head_len = exchange.len() + routing_key.len() + properties_wire.len();
        let mut head = Vec::with_capacity(
            head_len
                + if body.len() <= INLINE_BODY_MAX {
                    body.len()
                } else {
                    0
                },
        );
        head.extend_from_slice(exchange);
        head.extend_from_slice(routing_key);
        head.extend_from_slice(properties_wire);
        let data = if body.len() <= INLINE_BODY_MAX {
            head.extend_from_slice(&body);
            Data::Inline(head.into_boxed_slice())
        } else {
            Data::Split(Box::new(SplitData {
                head: head.into_boxed_slice(),
                body,
            }))
        };
        MessageContent {
            data,
            exchange_len: exchange.len() as u8,
            routing_key_len: routing_key.len() as u8,
            properties_len: u32::try_from(properties_wire.len()).unwrap_or(u32::MAX),
            delivery_mode,
            priority,
        }
    }

    /// A message whose properties are given decoded (they are encoded once, here).
    pub fn with_properties(
        exchange: &[u8],
        routing_key: &[u8],
        properties: &BasicProperties,
        body: Bytes,
    ) -> MessageContent {
        let wire = encode_properties(properties);
        MessageContent::from_decoded(exchange, routing_key, &wire, properties, body)
    }

    /// [`MessageContent::from_wire`] for properties known both encoded and decoded.
    fn from_decoded(
        exchange: &[u8],
        routing_key: &[u8],
        wire: &[u8],
        properties: &BasicProperties,
        body: Bytes,
    ) -> MessageContent {
        MessageContent::from_wire(
            exchange,
            routing_key,
            wire,
            properties.delivery_mode,
            properties.priority,
            body,
        )
    }

    /// A message as the store keeps it: `header_frame` is its content header frame,
    /// encoded ([`MessageContent::header_frame`]). None if that frame does not decode.
    pub fn from_stored(
        exchange: &[u8],
        routing_key: &[u8],
        header_frame: &Bytes,
        body: Bytes,
    ) -> Option<MessageContent> {
        // Frame header: type, channel (2), size (4); then the payload and the frame end. The
        // store wrote it from properties that decoded when they were published (and checks
        // its records' checksums), so only the two properties the broker acts on are looked
        // for; anything unexpected is decoded in full.
        let end = header_frame.len().saturating_sub(1);
        let quick = (header_frame.first() == Some(&FrameType::HEADER.0) && end > 7)
            .then(|| properties_of_header_payload(&header_frame.slice(7..end)))
            .flatten()
            .and_then(|wire| Some((delivery_mode_and_priority(&wire)?, wire)));
        if let Some(((delivery_mode, priority), wire)) = quick {
            return Some(MessageContent::from_wire(
                exchange,
                routing_key,
                &wire,
                delivery_mode,
                priority,
                body,
            ));
        }
        let mut frame = BytesMut::from(&header_frame[..]);
        let properties = match amqp_codec::decode(&mut frame, &Limits::with_frame_max(0)) {
            Ok(Some(Frame::Header(_, header))) if frame.is_empty() => header.properties,
            _ => return None,
        };
        // Frame header (7) ... frame end (1).
        let end = header_frame.len().saturating_sub(1);
        let payload = header_frame.slice(7.min(end)..end);
        let wire = properties_of_header_payload(&payload)
            .unwrap_or_else(|| encode_properties(&properties));
        Some(MessageContent::from_decoded(
            exchange,
            routing_key,
            &wire,
            &properties,
            body,
        ))
    }

    /// This message with other properties (and the same exchange, routing key and body).
    pub fn with_new_properties(&self, properties: &BasicProperties) -> MessageContent {
        MessageContent::with_properties(
            self.exchange(),
            self.routing_key(),
            properties,
            self.body_bytes(),
        )
    }

    fn head(&self) -> &[u8] {
        match &self.data {
            Data::Inline(all) => all,
            Data::Split(split) => &split.head,
        }
    }

    /// The exchange it was published to.
    pub fn exchange(&self) -> &[u8] {
        self.head()
            .get(..usize::from(self.exchange_len))
            .unwrap_or_default()
    }

    /// The routing key it was published with.
    pub fn routing_key(&self) -> &[u8] {
        let start = usize::from(self.exchange_len);
        self.head()
            .get(start..start + usize::from(self.routing_key_len))
            .unwrap_or_default()
    }

    /// The property flags and property list, as they go in a content header.
    pub fn properties_wire(&self) -> &[u8] {
        let start = usize::from(self.exchange_len) + usize::from(self.routing_key_len);
        self.head()
            .get(start..start + self.properties_len as usize)
            .unwrap_or_default()
    }

    /// Its body.
    pub fn body(&self) -> &[u8] {
        match &self.data {
            Data::Inline(all) => {
                let start = usize::from(self.exchange_len)
                    + usize::from(self.routing_key_len)
                    + self.properties_len as usize;
                all.get(start..).unwrap_or_default()
            }
            Data::Split(split) => &split.body,
        }
    }

    /// The body when it is kept apart as received (a large one), to be passed on uncopied.
    pub fn shared_body(&self) -> Option<&Bytes> {
        match &self.data {
            Data::Inline(_) => None,
            Data::Split(split) => Some(&split.body),
        }
    }

    /// Its body as [`Bytes`]: shared when it is kept apart, a copy when it is inline.
    pub fn body_bytes(&self) -> Bytes {
        match &self.data {
            Data::Inline(_) => Bytes::copy_from_slice(self.body()),
            Data::Split(split) => split.body.clone(),
        }
    }

    /// Its properties, decoded (an allocation; for the paths that read or change them).
    pub fn properties(&self) -> BasicProperties {
        decode_properties(self.properties_wire()).unwrap_or_default()
    }

    /// The `delivery-mode` property.
    pub fn delivery_mode(&self) -> Option<u8> {
        self.delivery_mode
    }

    /// The `priority` property.
    pub fn priority(&self) -> Option<u8> {
        self.priority
    }

    /// delivery_mode 2: the publisher asked for the message to survive a restart.
    pub fn is_persistent(&self) -> bool {
        self.delivery_mode == Some(2)
    }

    /// Body size in bytes.
    pub fn size(&self) -> usize {
        self.body().len()
    }

    /// The content header frame (channel 0), encoded, as the store keeps it.
    pub fn header_frame(&self) -> Bytes {
        let properties = self.properties_wire();
        let mut buf = BytesMut::with_capacity(8 + HEADER_PREFIX + properties.len());
        put_header_frame(&mut buf, 0, self.size() as u64, properties);
        buf.freeze()
    }
}

/// Writes a content header frame for class basic whose property flags and list are
/// `properties_wire`, as they go on the wire.
pub fn put_header_frame(buf: &mut BytesMut, channel: u16, body_size: u64, properties_wire: &[u8]) {
    let payload = HEADER_PREFIX + properties_wire.len();
    buf.reserve(8 + payload);
    buf.put_u8(FrameType::HEADER.0);
    buf.put_u16(channel);
    buf.put_u32(u32::try_from(payload).unwrap_or(u32::MAX));
    buf.put_u16(ContentHeader::BASIC_CLASS_ID);
    buf.put_u16(0); // weight, unused: must be 0
    buf.put_u64(body_size);
    buf.put_slice(properties_wire);
    buf.put_u8(amqp_codec::FRAME_END);
}

/// The property flags and list of `properties`, as they go on the wire.
pub fn encode_properties(properties: &BasicProperties) -> Bytes {
    let mut buf = BytesMut::new();
    let frame = Frame::Header(0, ContentHeader::basic(0, properties.clone()));
    match frame.encode(&mut buf, 0) {
        Ok(()) => {
            // Frame header (7), class, weight, body size (12) ... frame end (1).
            let end = buf.len().saturating_sub(1);
            buf.freeze().slice((7 + HEADER_PREFIX).min(end)..end)
        }
        Err(err) => {
            // Properties the broker holds were decoded from the wire or built by it: they
            // always encode. A failure here is a bug, logged; the message goes without them.
            tracing::error!("cannot encode message properties: {err}");
            Bytes::from_static(&[0, 0])
        }
    }
}

/// The properties of a property flags and list as they go on the wire; None if they do not
/// decode.
pub fn decode_properties(properties_wire: &[u8]) -> Option<BasicProperties> {
    let mut payload = BytesMut::with_capacity(HEADER_PREFIX + properties_wire.len());
    payload.put_u16(ContentHeader::BASIC_CLASS_ID);
    payload.put_u16(0);
    payload.put_u64(0);
    payload.put_slice(properties_wire);
    match decode_payload(
        FrameType::HEADER,
        0,
        payload.freeze(),
        &Limits::with_frame_max(0),
    ) {
        Ok(Frame::Header(_, header)) => Some(header.properties),
        _ => None,
    }
}

/// The `delivery-mode` and `priority` properties of a property flags word and list, found
/// without decoding the rest: the properties before them are skipped by their lengths (spec
/// 4.2.6.1: content-type, content-encoding, headers, delivery-mode, priority, ...). None if
/// the octets end too early or the flags have the continuation bit.
fn delivery_mode_and_priority(properties_wire: &[u8]) -> Option<(Option<u8>, Option<u8>)> {
    let (&[f0, f1], list) = properties_wire.split_first_chunk::<2>()?;
    let flags = u16::from_be_bytes([f0, f1]);
    if flags & 1 != 0 {
        return None;
    }
    let mut at = 0usize;
    for (bit, length_octets) in [(15, 1), (14, 1), (13, 4)] {
        if flags & (1 << bit) != 0 {
            let length = list.get(at..at.checked_add(length_octets)?)?;
            let length = length.iter().fold(0usize, |n, &b| n << 8 | usize::from(b));
            at = at.checked_add(length_octets)?.checked_add(length)?;
        }
    }
    let mut octet = |bit: u16| -> Option<Option<u8>> {
        if flags & (1 << bit) == 0 {
            return Some(None);
        }
        let value = *list.get(at)?;
        at += 1;
        Some(Some(value))
    };
    let delivery_mode = octet(12)?;
    let priority = octet(11)?;
    Some((delivery_mode, priority))
}

/// The property flags and list of a content header payload (class, weight, body size,
/// flags, properties), when they can be passed on as they are: a single flags word (no
/// continuation bit, which only a peer that sends empty extra flag words sets).
pub fn properties_of_header_payload(payload: &Bytes) -> Option<Bytes> {
    let &[_, low] = payload.get(HEADER_PREFIX..HEADER_PREFIX + 2)? else {
        return None;
    };
    if low & 1 != 0 {
        return None;
    }
    Some(payload.slice(HEADER_PREFIX..))
}

/// A content header as the broker takes it from a publisher (spec 4.2.6.1): the body size,
/// the property flags and list as they came, to be passed on as they are, and the
/// properties the broker acts on when it routes the message. Nearly every header is taken
/// without decoding it ([`PublishedHeader::scan`]); the broker decodes the properties only
/// when they hold a headers table (routing by headers, CC and BCC read it) or extra flag
/// words, or when the scan finds them malformed (the codec then says what is wrong).
/// About 120 octets, against 460 for a decoded [`ContentHeader`] moved from frame to command.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishedHeader {
    body_size: u64,
    delivery_mode: Option<u8>,
    priority: Option<u8>,
    properties: PublishedProperties,
}

#[derive(Debug, Clone, PartialEq)]
enum PublishedProperties {
    /// Taken as they came: the flags word and list, and the two short strings the broker
    /// checks.
    Scanned {
        wire: Bytes,
        expiration: Option<Bytes>,
        user_id: Option<Bytes>,
    },
    /// Decoded; with the flags and list as they came unless they had extra flag words.
    Decoded {
        wire: Option<Bytes>,
        properties: Box<BasicProperties>,
    },
}

/// The property flag bits of class basic (spec 4.2.6.1, highest first) and how each
/// property is encoded; bit 0 says another flags word follows, bit 1 is unused.
const SCANNED_PROPERTIES: [(u16, PropertyType); 14] = [
    (15, PropertyType::ShortString), // content-type
    (14, PropertyType::ShortString), // content-encoding
    (13, PropertyType::Table),       // headers
    (12, PropertyType::Octet),       // delivery-mode
    (11, PropertyType::Octet),       // priority
    (10, PropertyType::ShortString), // correlation-id
    (9, PropertyType::ShortString),  // reply-to
    (8, PropertyType::ShortString),  // expiration
    (7, PropertyType::ShortString),  // message-id
    (6, PropertyType::Timestamp),    // timestamp
    (5, PropertyType::ShortString),  // type
    (4, PropertyType::ShortString),  // user-id
    (3, PropertyType::ShortString),  // app-id
    (2, PropertyType::ShortString),  // cluster-id
];

const HEADERS_FLAG: u16 = 1 << 13;
const DELIVERY_MODE_BIT: u16 = 12;
const PRIORITY_BIT: u16 = 11;
const EXPIRATION_BIT: u16 = 8;
const USER_ID_BIT: u16 = 4;

#[derive(Debug, Clone, Copy, PartialEq)]
enum PropertyType {
    ShortString,
    Table,
    Octet,
    Timestamp,
}

impl PublishedHeader {
    /// Takes a basic content header payload (class, weight, body size, flags, list) without
    /// decoding it, when that is all the broker needs: one flags word, no headers table, and
    /// a property list that holds exactly the properties the flags announce. None otherwise
    /// (extra flag words, a headers table, unknown flags, a list too short or too long):
    /// then [`PublishedHeader::from_decoded`] is the way, after the codec's decoder, which
    /// gives the error a malformed header deserves.
    pub fn scan(payload: &Bytes) -> Option<PublishedHeader> {
        let (&[_, _, _, _, s0, s1, s2, s3, s4, s5, s6, s7, f0, f1], _) =
            payload.split_first_chunk::<{ HEADER_PREFIX + 2 }>()?;
        let body_size = u64::from_be_bytes([s0, s1, s2, s3, s4, s5, s6, s7]);
        let flags = u16::from_be_bytes([f0, f1]);
        // Bit 0: another flags word follows; bit 1: no such property.
        if flags & (HEADERS_FLAG | 0b11) != 0 {
            return None;
        }
        let list = payload.get(HEADER_PREFIX + 2..)?;
        let mut at = 0usize;
        let (mut delivery_mode, mut priority) = (None, None);
        let (mut expiration, mut user_id) = (None, None);
        for (bit, kind) in SCANNED_PROPERTIES {
            if flags & (1 << bit) == 0 {
                continue;
            }
            match kind {
                PropertyType::Octet => {
                    let value = *list.get(at)?;
                    at += 1;
                    match bit {
                        DELIVERY_MODE_BIT => delivery_mode = Some(value),
                        PRIORITY_BIT => priority = Some(value),
                        _ => {}
                    }
                }
                PropertyType::Timestamp => {
                    at = at.checked_add(8).filter(|end| *end <= list.len())?;
                }
                PropertyType::ShortString => {
                    let len = usize::from(*list.get(at)?);
                    let start = at + 1;
                    let end = start.checked_add(len).filter(|end| *end <= list.len())?;
                    let value =
                        || payload.slice(HEADER_PREFIX + 2 + start..HEADER_PREFIX + 2 + end);
                    match bit {
                        EXPIRATION_BIT => expiration = Some(value()),
                        USER_ID_BIT => user_id = Some(value()),
                        _ => {}
                    }
                    at = end;
                }
                // Excluded by the flags check above: a table is decoded by the codec.
                PropertyType::Table => return None,
            }
        }
        if at != list.len() {
            return None;
        }
        Some(PublishedHeader {
            body_size,
            delivery_mode,
            priority,
            properties: PublishedProperties::Scanned {
                wire: payload.slice(HEADER_PREFIX..),
                expiration,
                user_id,
            },
        })
    }

    /// A header the codec decoded from `payload`.
    pub fn from_decoded(header: ContentHeader, payload: &Bytes) -> PublishedHeader {
        let properties = header.properties;
        PublishedHeader {
            body_size: header.body_size,
            delivery_mode: properties.delivery_mode,
            priority: properties.priority,
            properties: PublishedProperties::Decoded {
                wire: properties_of_header_payload(payload),
                properties: Box::new(properties),
            },
        }
    }

    /// The `delivery-mode` property.
    pub fn delivery_mode(&self) -> Option<u8> {
        self.delivery_mode
    }

    /// The `priority` property.
    pub fn priority(&self) -> Option<u8> {
        self.priority
    }

    /// The `expiration` property's octets.
    pub fn expiration(&self) -> Option<&[u8]> {
        match &self.properties {
            PublishedProperties::Scanned { expiration, .. } => expiration.as_deref(),
            PublishedProperties::Decoded { properties, .. } => {
                properties.expiration.as_ref().map(|value| value.as_bytes())
            }
        }
    }

    /// The `user-id` property's octets.
    pub fn user_id(&self) -> Option<&[u8]> {
        match &self.properties {
            PublishedProperties::Scanned { user_id, .. } => user_id.as_deref(),
            PublishedProperties::Decoded { properties, .. } => {
                properties.user_id.as_ref().map(|value| value.as_bytes())
            }
        }
    }

    /// The `headers` property (only a decoded header can have one).
    pub fn headers(&self) -> Option<&FieldTable> {
        match &self.properties {
            PublishedProperties::Scanned { .. } => None,
            PublishedProperties::Decoded { properties, .. } => properties.headers.as_ref(),
        }
    }

    /// Takes the BCC header out (sender-selected distribution): the properties then go on
    /// encoded again.
    pub fn remove_bcc(&mut self) {
        if let PublishedProperties::Decoded { wire, properties } = &mut self.properties {
            if let Some(headers) = properties.headers.as_mut() {
                if headers.remove("BCC").is_some() {
                    *wire = None;
                }
            }
        }
    }

    /// The property flags and list to pass on: as they came, or encoded again after a
    /// change or from extra flag words.
    pub fn properties_wire(&self) -> Bytes {
        match &self.properties {
            PublishedProperties::Scanned { wire, .. }
            | PublishedProperties::Decoded {
                wire: Some(wire), ..
            } => wire.clone(),
            PublishedProperties::Decoded {
                wire: None,
                properties,
            } => encode_properties(properties),
        }
    }
}

impl HeaderOfContent for PublishedHeader {
    fn class_id(&self) -> u16 {
        ContentHeader::BASIC_CLASS_ID
    }

    fn body_size(&self) -> u64 {
        self.body_size
    }
}

/// When a queued message expires: an instant, in nanoseconds since the broker's first
/// use of the clock, in eight octets (an [`Instant`] takes sixteen).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Deadline(NonZeroU64);

impl Deadline {
    /// The deadline at `at`.
    pub fn at(at: Instant) -> Deadline {
        let nanos = at.saturating_duration_since(epoch()).as_nanos();
        let nanos = u64::try_from(nanos).unwrap_or(u64::MAX);
        Deadline(NonZeroU64::new(nanos).unwrap_or(NonZeroU64::MIN))
    }

    /// Whether it passed before `now`.
    pub fn is_before(self, now: Instant) -> bool {
        self < Deadline::at(now)
    }

    /// The deadline as an instant.
    pub fn instant(self) -> Instant {
        epoch() + std::time::Duration::from_nanos(self.0.get())
    }
}

/// The instant deadlines count from.
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(|| {
        let now = Instant::now();
        // A second back, so that no deadline is ever the zero that stands for none.
        now.checked_sub(std::time::Duration::from_secs(1))
            .unwrap_or(now)
    })
}

/// A message in one queue.
#[derive(Debug, Clone)]
pub struct QueuedMessage {
    /// The shared content.
    pub content: Arc<MessageContent>,
    /// When it expires (per-queue x-message-ttl or per-message expiration), if ever.
    pub expires_at: Option<Deadline>,
    /// The store's id, for a persistent message in a durable queue (it is on disk).
    pub persist_id: Option<u64>,
    /// Whether it was delivered before (and not acked).
    pub redelivered: bool,
}

/// A ready message as its queue holds it: in memory, or paged out (its content is then only
/// in the store's log, under its store id). Four words, for a queue may hold millions.
#[derive(Debug)]
pub struct ReadyMessage {
    /// The content; None while paged out.
    content: Option<Arc<MessageContent>>,
    /// When it expires (per-queue x-message-ttl or per-message expiration), if ever.
    pub expires_at: Option<Deadline>,
    /// The store's id (they start at 1); 0: none.
    persist_id: u64,
    /// The body size, while paged out.
    paged_size: u32,
    /// Whether it was delivered before.
    redelivered: bool,
}

impl ReadyMessage {
    /// A message in memory.
    pub fn new(message: QueuedMessage) -> ReadyMessage {
        ReadyMessage {
            content: Some(message.content),
            expires_at: message.expires_at,
            persist_id: message.persist_id.unwrap_or(0),
            paged_size: 0,
            redelivered: message.redelivered,
        }
    }

    /// A message that is paged out from the start: recovered from the store, its body left
    /// in the log.
    pub fn paged_out(
        persist_id: u64,
        size: u32,
        redelivered: bool,
        expires_at: Option<Deadline>,
    ) -> ReadyMessage {
        ReadyMessage {
            content: None,
            expires_at,
            persist_id,
            paged_size: size,
            redelivered,
        }
    }

    /// The content, unless it is paged out.
    pub fn content(&self) -> Option<&Arc<MessageContent>> {
        self.content.as_ref()
    }

    /// Whether the content is paged out.
    pub fn is_paged_out(&self) -> bool {
        self.content.is_none()
    }

    /// The store's id, for a persistent message in a durable queue.
    pub fn persist_id(&self) -> Option<u64> {
        (self.persist_id != 0).then_some(self.persist_id)
    }

    /// Whether it was delivered before.
    pub fn redelivered(&self) -> bool {
        self.redelivered
    }

    /// Body size in bytes.
    pub fn size(&self) -> usize {
        match &self.content {
            Some(content) => content.size(),
            None => self.paged_size as usize,
        }
    }

    /// Whether it is persistent (a paged-out message always is).
    pub fn is_persistent(&self) -> bool {
        self.content.as_ref().is_none_or(|c| c.is_persistent())
    }

    /// The `priority` property (None while paged out: priority queues do not page).
    pub fn priority(&self) -> Option<u8> {
        self.content.as_ref().and_then(|c| c.priority())
    }

    /// Drops the content, keeping the store id: the message must be on disk for good.
    /// Returns the body bytes freed; None (nothing done) without a store id, when already
    /// paged out, or for a body too large to count in four octets.
    pub fn page_out(&mut self) -> Option<usize> {
        let size = u32::try_from(self.content.as_ref()?.size()).ok()?;
        if self.persist_id == 0 {
            return None;
        }
        self.content = None;
        self.paged_size = size;
        Some(size as usize)
    }

    /// Puts the content read back from the store in place.
    pub fn page_in(&mut self, content: Arc<MessageContent>) {
        self.content = Some(content);
        self.paged_size = 0;
    }

    /// The message, if it is in memory.
    pub fn into_queued(self) -> Option<QueuedMessage> {
        let persist_id = self.persist_id();
        Some(QueuedMessage {
            content: self.content?,
            expires_at: self.expires_at,
            persist_id,
            redelivered: self.redelivered,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amqp_codec::FieldValue;

    /// A basic content header payload: class, weight, body size, then `flags_and_list`.
    fn header_payload(body_size: u64, flags_and_list: &[u8]) -> Bytes {
        let mut payload = BytesMut::new();
        payload.put_u16(ContentHeader::BASIC_CLASS_ID);
        payload.put_u16(0);
        payload.put_u64(body_size);
        payload.put_slice(flags_and_list);
        payload.freeze()
    }

    fn decoded(payload: &Bytes) -> Result<ContentHeader, amqp_codec::DecodeError> {
        match decode_payload(
            FrameType::HEADER,
            1,
            payload.clone(),
            &Limits::with_frame_max(0),
        )? {
            Frame::Header(_, header) => Ok(header),
            other => panic!("not a header: {other:?}"),
        }
    }

    #[test]
    fn a_header_without_properties_is_taken_as_it_came() {
        let payload = header_payload(16, &[0, 0]);
        let header = PublishedHeader::scan(&payload).expect("scanned");
        assert_eq!(header.body_size(), 16);
        assert_eq!(&header.properties_wire()[..], &[0, 0]);
        assert_eq!(
            (
                header.delivery_mode(),
                header.priority(),
                header.expiration()
            ),
            (None, None, None)
        );
        assert_eq!((header.user_id(), header.headers()), (None, None));
    }

    #[test]
    fn scanned_properties_are_what_the_codec_decodes_and_go_on_unchanged() {
        let properties = BasicProperties {
            content_type: Some("text/plain".into()),
            content_encoding: Some("gzip".into()),
            delivery_mode: Some(2),
            priority: Some(7),
            correlation_id: Some("c".into()),
            reply_to: Some("amq.rabbitmq.reply-to".into()),
            expiration: Some("60000".into()),
            message_id: Some("".into()),
            timestamp: Some(0x0102_0304_0506_0708),
            kind: Some("t".into()),
            user_id: Some("guest".into()),
            app_id: Some("app".into()),
            cluster_id: Some("x".into()),
            headers: None,
        };
        let wire = encode_properties(&properties);
        let payload = header_payload(70_000, &wire);
        let header = PublishedHeader::scan(&payload).expect("scanned");
        assert_eq!(header.body_size(), 70_000);
        assert_eq!(header.properties_wire(), wire);
        assert_eq!(header.delivery_mode(), Some(2));
        assert_eq!(header.priority(), Some(7));
        assert_eq!(header.expiration(), Some(&b"60000"[..]));
        assert_eq!(header.user_id(), Some(&b"guest"[..]));
        assert_eq!(decoded(&payload).map(|h| h.properties), Ok(properties));
    }

    #[test]
    fn a_header_with_a_headers_table_is_decoded_and_its_bcc_taken_out_on_demand() {
        let mut properties = properties();
        let mut headers = properties.headers.take().unwrap_or_default();
        headers.insert("BCC", FieldValue::Array(vec![FieldValue::from("q")].into()));
        properties.headers = Some(headers);
        let payload = header_payload(3, &encode_properties(&properties));
        assert_eq!(PublishedHeader::scan(&payload), None);
        let mut header =
            PublishedHeader::from_decoded(decoded(&payload).expect("decodes"), &payload);
        assert_eq!(header.properties_wire(), payload.slice(HEADER_PREFIX..));
        assert_eq!(
            (header.delivery_mode(), header.priority()),
            (Some(2), Some(9))
        );
        assert_eq!(header.expiration(), Some(&b"1000"[..]));
        assert!(header.headers().is_some_and(|h| h.contains_key("BCC")));
        header.remove_bcc();
        assert!(header.headers().is_some_and(|h| !h.contains_key("BCC")));
        let passed_on = decode_properties(&header.properties_wire()).expect("decodes");
        assert_eq!(passed_on.headers.as_ref(), header.headers());
        assert_eq!(passed_on.message_id, properties.message_id);
    }

    #[test]
    fn extra_flag_words_are_left_to_the_codec_and_the_properties_encoded_again() {
        // delivery-mode, the continuation bit, then an empty second flags word.
        let payload = header_payload(1, &[0x10, 0x01, 0x00, 0x00, 2]);
        assert_eq!(PublishedHeader::scan(&payload), None);
        let header = PublishedHeader::from_decoded(decoded(&payload).expect("decodes"), &payload);
        assert_eq!(header.delivery_mode(), Some(2));
        assert_eq!(&header.properties_wire()[..], &[0x10, 0x00, 2]);
    }

    #[test]
    fn malformed_property_lists_are_not_scanned_and_the_codec_says_why() {
        let wire = encode_properties(&BasicProperties {
            content_type: Some("text/plain".into()),
            delivery_mode: Some(1),
            expiration: Some("5".into()),
            timestamp: Some(9),
            user_id: Some("u".into()),
            ..BasicProperties::default()
        });
        // Every truncation of the list, and one octet too many.
        for end in 2..wire.len() {
            let payload = header_payload(0, &wire[..end]);
            assert_eq!(PublishedHeader::scan(&payload), None, "cut at {end}");
            assert!(decoded(&payload).is_err(), "cut at {end}");
        }
        let mut long = wire.to_vec();
        long.push(0);
        let payload = header_payload(0, &long);
        assert_eq!(PublishedHeader::scan(&payload), None);
        assert!(decoded(&payload).is_err());
        // The unused flag bit 1, and a payload too short for its flags.
        assert_eq!(PublishedHeader::scan(&header_payload(0, &[0, 2])), None);
        assert!(decoded(&header_payload(0, &[0, 2])).is_err());
        assert_eq!(PublishedHeader::scan(&header_payload(0, &[0])), None);
        assert_eq!(PublishedHeader::scan(&Bytes::new()), None);
    }

    #[test]
    fn for_every_flags_word_the_scan_agrees_with_the_codec() {
        // Lists that parse under many flag combinations: short strings of length 1 and 0,
        // octets, and enough octets for timestamps.
        let lists: [&[u8]; 3] = [
            &[1; 40],
            &[0; 40],
            &[1, 0, 2, 0, 3, 1, 7, 0, 0, 0, 0, 0, 0, 0],
        ];
        for list in lists {
            for flags in 0..=u16::MAX {
                for len in [list.len(), list.len() / 2, 3] {
                    let mut flags_and_list = flags.to_be_bytes().to_vec();
                    flags_and_list.extend_from_slice(&list[..len]);
                    let payload = header_payload(5, &flags_and_list);
                    let scanned = PublishedHeader::scan(&payload);
                    let codec = decoded(&payload);
                    let plain = flags & (HEADERS_FLAG | 0b11) == 0;
                    match (&scanned, &codec) {
                        (Some(header), Ok(codec)) => {
                            let p = &codec.properties;
                            assert_eq!(header.delivery_mode(), p.delivery_mode);
                            assert_eq!(header.priority(), p.priority);
                            let expiration = p.expiration.as_ref().map(|e| e.as_bytes());
                            assert_eq!(header.expiration(), expiration);
                            let user_id = p.user_id.as_ref().map(|u| u.as_bytes());
                            assert_eq!(header.user_id(), user_id);
                            assert_eq!(header.properties_wire(), payload.slice(HEADER_PREFIX..));
                        }
                        (Some(_), Err(err)) => panic!("flags {flags:#06x}: scanned, codec: {err}"),
                        (None, Ok(_)) => assert!(!plain, "flags {flags:#06x}: not scanned"),
                        (None, Err(_)) => {}
                    }
                }
            }
        }
    }

    fn properties() -> BasicProperties {
        let mut headers = FieldTable::new();
        headers.insert("x-origin", "test");
        headers.insert("n", FieldValue::I32(3));
        BasicProperties {
            content_type: Some("application/json".into()),
            headers: Some(headers),
            delivery_mode: Some(2),
            priority: Some(9),
            expiration: Some("1000".into()),
            message_id: Some("m-1".into()),
            ..BasicProperties::default()
        }
    }

    #[test]
    fn a_small_message_keeps_its_parts_in_one_allocation_and_gives_them_back() {
        let body = Bytes::from_static(b"sixteen octets!!");
        let content =
            MessageContent::with_properties(b"amq.topic", b"a.b.c", &properties(), body.clone());
        assert!(matches!(content.data, Data::Inline(_)));
        assert_eq!(content.exchange(), b"amq.topic");
        assert_eq!(content.routing_key(), b"a.b.c");
        assert_eq!(content.body(), &body[..]);
        assert_eq!(content.size(), 16);
        assert_eq!(content.properties(), properties());
        assert_eq!(
            (content.delivery_mode(), content.priority()),
            (Some(2), Some(9))
        );
        assert!(content.is_persistent());
    }

    #[test]
    fn a_large_body_is_kept_as_received_not_copied() {
        let body = Bytes::from(vec![7u8; INLINE_BODY_MAX + 1]);
        let content =
            MessageContent::with_properties(b"", b"q", &BasicProperties::default(), body.clone());
        assert!(matches!(content.data, Data::Split(_)));
        assert_eq!(
            content.body().as_ptr(),
            body.as_ptr(),
            "the same octets, shared"
        );
        assert_eq!(content.body_bytes().as_ptr(), body.as_ptr());
        assert_eq!(content.properties(), BasicProperties::default());
        assert!(!content.is_persistent());
    }

    #[test]
    fn the_properties_of_a_content_header_are_kept_octet_for_octet() {
        let header = ContentHeader::basic(5, properties());
        let mut frame = BytesMut::new();
        Frame::Header(1, header).encode(&mut frame, 0).unwrap();
        let payload = Bytes::copy_from_slice(&frame[7..frame.len() - 1]);
        let wire = properties_of_header_payload(&payload).unwrap();
        assert_eq!(&wire[..], &payload[12..]);
        assert_eq!(decode_properties(&wire), Some(properties()));
        assert_eq!(encode_properties(&properties()), wire);
    }

    #[test]
    fn delivery_mode_and_priority_are_found_behind_the_properties_before_them() {
        for properties in [
            properties(),
            BasicProperties::default(),
            BasicProperties {
                priority: Some(3),
                ..BasicProperties::default()
            },
            BasicProperties {
                content_encoding: Some("gzip".into()),
                delivery_mode: Some(1),
                app_id: Some("app".into()),
                ..BasicProperties::default()
            },
        ] {
            let wire = encode_properties(&properties);
            assert_eq!(
                delivery_mode_and_priority(&wire),
                Some((properties.delivery_mode, properties.priority)),
                "{properties:?}"
            );
        }
    }

    #[test]
    fn delivery_mode_and_priority_are_not_read_past_the_end() {
        // Flags: priority; the priority octet is missing.
        assert_eq!(delivery_mode_and_priority(&[0x08, 0x00]), None);
        // Flags: headers, delivery-mode; a table of 10 octets of which 2 are there.
        assert_eq!(
            delivery_mode_and_priority(&[0x30, 0x00, 0, 0, 0, 10, 1, 2]),
            None
        );
        assert_eq!(delivery_mode_and_priority(&[0x00]), None);
        assert_eq!(
            delivery_mode_and_priority(&[0x00, 0x00]),
            Some((None, None))
        );
    }

    #[test]
    fn properties_with_a_continuation_flag_are_not_passed_on_as_they_are() {
        // class 60, weight 0, body size 0, flags: delivery-mode and the continuation bit,
        // then an empty second flags word, then delivery-mode 1.
        let payload = Bytes::from_static(&[
            0x00, 0x3c, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0x01, 0x00, 0x00, 0x01,
        ]);
        assert_eq!(properties_of_header_payload(&payload), None);
        assert_eq!(
            properties_of_header_payload(&Bytes::from_static(&[0x00, 0x3c])),
            None
        );
    }

    #[test]
    fn a_stored_message_comes_back_as_it_was_published() {
        let content = MessageContent::with_properties(
            b"ex",
            b"rk",
            &properties(),
            Bytes::from_static(b"body"),
        );
        let header = content.header_frame();
        let back = MessageContent::from_stored(b"ex", b"rk", &header, Bytes::from_static(b"body"))
            .unwrap();
        assert_eq!(back.properties_wire(), content.properties_wire());
        assert_eq!(
            (back.exchange(), back.routing_key(), back.body()),
            (&b"ex"[..], &b"rk"[..], &b"body"[..])
        );
        assert_eq!(back.priority(), Some(9));
        assert!(MessageContent::from_stored(
            b"",
            b"",
            &Bytes::from_static(b"\x02\x00"),
            Bytes::new()
        )
        .is_none());
    }

    #[test]
    fn a_ready_message_pages_out_to_its_id_and_size_and_back_in() {
        let content = Arc::new(MessageContent::with_properties(
            b"",
            b"q",
            &properties(),
            Bytes::from_static(b"0123456789"),
        ));
        let queued = |persist_id| QueuedMessage {
            content: content.clone(),
            expires_at: None,
            persist_id,
            redelivered: true,
        };
        assert_eq!(
            ReadyMessage::new(queued(None)).page_out(),
            None,
            "not on disk"
        );
        let mut ready = ReadyMessage::new(queued(Some(42)));
        assert_eq!(ready.page_out(), Some(10));
        assert!(ready.is_paged_out() && ready.is_persistent());
        assert_eq!(
            (ready.size(), ready.persist_id(), ready.redelivered()),
            (10, Some(42), true)
        );
        assert_eq!(ready.page_out(), None, "already out");
        ready.page_in(content.clone());
        let back = ready.into_queued().unwrap();
        assert!(Arc::ptr_eq(&back.content, &content));
        assert_eq!((back.persist_id, back.redelivered), (Some(42), true));
    }

    #[test]
    fn deadlines_order_as_the_instants_they_stand_for() {
        let now = Instant::now();
        let later = now + std::time::Duration::from_nanos(1);
        assert!(Deadline::at(now) < Deadline::at(later));
        assert!(Deadline::at(now).is_before(later));
        assert!(!Deadline::at(later).is_before(later));
        assert_eq!(Deadline::at(now).instant(), now);
    }

    #[test]
    fn queued_messages_stay_small() {
        assert_eq!(std::mem::size_of::<ReadyMessage>(), 32);
        assert!(std::mem::size_of::<QueuedMessage>() <= 40);
        assert!(std::mem::size_of::<MessageContent>() <= 40);
    }
}
