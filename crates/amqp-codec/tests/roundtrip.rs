//! Round trips: every value goes to bytes and back unchanged, with nothing left over and the
//! size predicted; every method of the spec is decoded and encoded; and no bytes, however
//! hostile and however they are split across reads, make `decode` panic or disagree with
//! itself.
//!
//! Values are built with the `arbitrary` feature: proptest draws a byte vector and
//! `arbitrary::Unstructured` turns it into a `Frame`, `Method`, `FieldTable` or
//! `BasicProperties`, so proptest shrinks the bytes and the value shrinks with them.

use std::collections::BTreeSet;
use std::fmt::Debug;

use amqp_codec::methods::{ExchangeDeclare, QueueDeclare};
use amqp_codec::spec::{FieldInfo, FieldRef, MethodInfo, WireType, METHODS};
use amqp_codec::{
    decode, BasicProperties, ContentHeader, DecodeError, FieldTable, FieldValue, Frame, Limits,
    LongString, Method, ShortString,
};
use arbitrary::{Arbitrary, Unstructured};
use bytes::{BufMut, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

/// Values of `T` built by `arbitrary` from up to 4 KiB of proptest's bytes.
fn arb<T>() -> impl Strategy<Value = T>
where
    T: for<'a> Arbitrary<'a> + Debug,
{
    vec(any::<u8>(), 0..4096).prop_filter_map("arbitrary could not build a value", |data| {
        T::arbitrary(&mut Unstructured::new(&data)).ok()
    })
}

/// No frame_max, the default nesting depth: what a peer that wrote these frames accepts.
fn unlimited() -> Limits {
    Limits {
        frame_max: 0,
        ..Limits::default()
    }
}

/// Small limits, so hostile input reaches the frame_max and depth checks.
fn small() -> Limits {
    Limits {
        frame_max: 4096,
        max_table_depth: 2,
    }
}

/// Encodes `frame`, checks the predicted size, decodes it back and checks nothing is left.
fn round_trip(frame: &Frame) -> Result<Frame, TestCaseError> {
    let mut buf = BytesMut::new();
    frame
        .encode(&mut buf, 0)
        .map_err(|e| TestCaseError::fail(format!("{frame:?} does not encode: {e}")))?;
    prop_assert_eq!(buf.len(), frame.encoded_len(), "encoded_len of {:?}", frame);
    let decoded = decode(&mut buf, &unlimited());
    prop_assert!(
        buf.is_empty(),
        "{} octets left after {:?}",
        buf.len(),
        decoded
    );
    match decoded {
        Ok(Some(decoded)) => Ok(decoded),
        other => Err(TestCaseError::fail(format!(
            "{frame:?} decoded as {other:?}"
        ))),
    }
}

/// How a run of `decode` calls ended.
#[derive(Debug)]
enum End {
    /// `Ok(None)` with this many octets still buffered.
    NeedMore(usize),
    /// An error.
    Error(DecodeError),
}

/// Decodes `bytes` handed over in one piece.
fn decode_whole(bytes: &[u8], limits: &Limits) -> (Vec<Frame>, End) {
    let mut buf = BytesMut::from(bytes);
    let mut frames = Vec::new();
    loop {
        match decode(&mut buf, limits) {
            Ok(Some(frame)) => frames.push(frame),
            Ok(None) => return (frames, End::NeedMore(buf.len())),
            Err(e) => return (frames, End::Error(e)),
        }
    }
}

/// Decodes `bytes` handed over in pieces of the given sizes (cycled), as reads would. Checks
/// that `Ok(None)` never consumes or changes what is buffered.
fn decode_in_pieces(bytes: &[u8], sizes: &[usize], limits: &Limits) -> (Vec<Frame>, End) {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut rest = bytes;
    let mut sizes = sizes.iter().copied().cycle();
    while !rest.is_empty() {
        let take = sizes.next().unwrap_or(1).clamp(1, rest.len());
        buf.extend_from_slice(&rest[..take]);
        rest = &rest[take..];
        loop {
            let before = buf.clone();
            match decode(&mut buf, limits) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => {
                    assert_eq!(buf, before, "Ok(None) changed the buffer");
                    break;
                }
                Err(e) => return (frames, End::Error(e)),
            }
        }
    }
    let left = buf.len();
    (frames, End::NeedMore(left))
}

/// Both runs must give the same frames and end the same way. Errors may differ in what they
/// quote of the input (a bad protocol header is refused after fewer octets when they arrive
/// one at a time) but not in kind or reply code.
fn assert_same_decoding(
    whole: &(Vec<Frame>, End),
    pieces: &(Vec<Frame>, End),
) -> Result<(), TestCaseError> {
    prop_assert_eq!(&whole.0, &pieces.0);
    match (&whole.1, &pieces.1) {
        (End::NeedMore(a), End::NeedMore(b)) => prop_assert_eq!(a, b),
        (End::Error(a), End::Error(b)) => {
            prop_assert_eq!(
                std::mem::discriminant(a),
                std::mem::discriminant(b),
                "{} vs {}",
                a,
                b
            );
            prop_assert_eq!(a.reply_code(), b.reply_code());
            if !matches!(a, DecodeError::BadProtocolHeader { .. }) {
                prop_assert_eq!(a, b);
            }
        }
        (a, b) => prop_assert!(false, "whole: {:?}, in pieces: {:?}", a, b),
    }
    Ok(())
}

/// Decodes `bytes` every way: whole and one octet at a time, with small and default limits.
/// Whatever decodes must encode and decode again to itself.
fn check_decoding(bytes: &[u8], piece_sizes: &[usize]) -> Result<(), TestCaseError> {
    for limits in [small(), Limits::default()] {
        let whole = decode_whole(bytes, &limits);
        let trickled = decode_in_pieces(bytes, &[1], &limits);
        assert_same_decoding(&whole, &trickled)?;
        let chunked = decode_in_pieces(bytes, piece_sizes, &limits);
        assert_same_decoding(&whole, &chunked)?;
        for frame in &whole.0 {
            prop_assert_eq!(&round_trip(frame)?, frame);
            // Re-encoding never grows a frame (it may shrink one: reserved fields and
            // continuation flag words are written in their shortest form).
            prop_assert!(
                frame.encoded_len() <= limits.frame_max as usize,
                "a {} octet frame passed frame_max {}",
                frame.encoded_len(),
                limits.frame_max
            );
        }
    }
    Ok(())
}

/// The octets of a whole stream of frames.
fn encode_all(frames: &[Frame]) -> BytesMut {
    let mut buf = BytesMut::new();
    for frame in frames {
        frame.encode(&mut buf, 0).unwrap();
    }
    buf
}

// 256 cases each by default; set PROPTEST_CASES for a longer run.
proptest! {
    #[test]
    fn arbitrary_frame_round_trips(frame in arb::<Frame>()) {
        prop_assert_eq!(round_trip(&frame)?, frame);
    }

    #[test]
    fn arbitrary_method_round_trips_with_predicted_size(
        channel in any::<u16>(),
        method in arb::<Method>(),
    ) {
        let frame = Frame::Method(channel, method.clone());
        // Header, class and method ids, arguments, end octet.
        prop_assert_eq!(frame.encoded_len(), 7 + 4 + method.arguments_len() + 1);
        let decoded = round_trip(&frame)?;
        prop_assert_eq!(decoded.channel(), channel);
        prop_assert_eq!(&decoded, &frame);
        let Frame::Method(_, decoded) = decoded else { unreachable!() };
        prop_assert!(std::ptr::eq(decoded.info(), method.info()));
    }

    #[test]
    fn arbitrary_basic_properties_round_trip_in_a_content_header(
        channel in any::<u16>(),
        body_size in any::<u64>(),
        properties in arb::<BasicProperties>(),
    ) {
        let frame = Frame::Header(channel, ContentHeader::basic(body_size, properties.clone()));
        // Header, class, weight, body size, flags, properties, end octet.
        prop_assert_eq!(frame.encoded_len(), 7 + 2 + 2 + 8 + 2 + properties.encoded_len() + 1);
        let Frame::Header(_, decoded) = round_trip(&frame)? else {
            return Err(TestCaseError::fail("not a header frame"));
        };
        prop_assert_eq!(decoded.properties.flags(), properties.flags());
        prop_assert_eq!(decoded.body_size, body_size);
        prop_assert_eq!(decoded.properties, properties);
    }

    #[test]
    fn arbitrary_field_table_round_trips_by_value(table in arb::<FieldTable>()) {
        let declare = QueueDeclare { arguments: table.clone(), ..Default::default() };
        let Frame::Method(_, Method::QueueDeclare(decoded)) =
            round_trip(&Frame::Method(1, declare.into()))?
        else {
            return Err(TestCaseError::fail("not a queue.declare"));
        };
        prop_assert_eq!(decoded.arguments.len(), table.len());
        for ((key, value), (got_key, got_value)) in table.iter().zip(decoded.arguments.iter()) {
            prop_assert_eq!(key, got_key);
            prop_assert_eq!(value, got_value);
        }
        prop_assert!(decoded.arguments.same_entries(&table));
        prop_assert_eq!(decoded.arguments, table);
    }

    #[test]
    fn arbitrary_field_table_round_trips_as_message_headers(table in arb::<FieldTable>()) {
        let properties = BasicProperties { headers: Some(table.clone()), ..Default::default() };
        let frame = Frame::Header(3, ContentHeader::basic(0, properties));
        let Frame::Header(_, decoded) = round_trip(&frame)? else {
            return Err(TestCaseError::fail("not a header frame"));
        };
        prop_assert_eq!(decoded.properties.headers, Some(table));
    }

    #[test]
    fn arbitrary_bytes_never_panic_decode(
        bytes in vec(any::<u8>(), 0..4096),
        piece_sizes in vec(1usize..64, 1..8),
    ) {
        check_decoding(&bytes, &piece_sizes)?;
    }

    #[test]
    fn arbitrary_bytes_behind_a_valid_frame_header_never_panic_decode(
        frame_type in prop::sample::select(vec![1u8, 2, 3, 8]),
        channel in 0u16..4,
        payload in vec(any::<u8>(), 0..512),
    ) {
        // Random bytes rarely look like a frame; these always do, so the payload parsers see them.
        let mut bytes = BytesMut::new();
        bytes.put_u8(frame_type);
        bytes.put_u16(channel);
        bytes.put_u32(payload.len() as u32);
        bytes.put_slice(&payload);
        bytes.put_u8(0xce);
        check_decoding(&bytes, &[3, 5, 7])?;
    }

    #[test]
    fn mutated_frame_stream_never_panics_decode(
        frames in vec(arb::<Frame>(), 1..6),
        mutations in vec((any::<Index>(), any::<u8>()), 1..6),
        cut in any::<Index>(),
        piece_sizes in vec(1usize..64, 1..8),
    ) {
        let mut bytes = encode_all(&frames).to_vec();
        for (at, octet) in &mutations {
            let at = at.index(bytes.len());
            bytes[at] = *octet;
        }
        bytes.truncate(cut.index(bytes.len() + 1));
        check_decoding(&bytes, &piece_sizes)?;
    }

    #[test]
    fn frame_stream_decodes_the_same_whole_or_one_octet_at_a_time(
        frames in vec(arb::<Frame>(), 0..6),
        piece_sizes in vec(1usize..300, 1..8),
    ) {
        let bytes = encode_all(&frames);
        let whole = decode_whole(&bytes, &unlimited());
        prop_assert_eq!(&whole.0, &frames);
        prop_assert!(matches!(whole.1, End::NeedMore(0)), "{:?}", whole.1);
        assert_same_decoding(&whole, &decode_in_pieces(&bytes, &[1], &unlimited()))?;
        assert_same_decoding(&whole, &decode_in_pieces(&bytes, &piece_sizes, &unlimited()))?;
    }
}

/// How a test fills the arguments of a method it builds from the spec table.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fill {
    /// Every octet zero, every string and table empty.
    Zero,
    /// Distinct non-zero values; `true` or `false` alternately for bits, starting with `true`.
    Values,
    /// As `Values`, with the bits the other way round.
    ValuesBitsInverted,
}

/// An owned copy of a field value, to compare with what `for_each_field` reports.
#[derive(Debug, Clone, PartialEq)]
enum Expected {
    Bit(bool),
    Octet(u8),
    Short(u16),
    Long(u32),
    LongLong(u64),
    Timestamp(u64),
    ShortStr(ShortString),
    LongStr(LongString),
    Table(FieldTable),
}

impl From<FieldRef<'_>> for Expected {
    fn from(field: FieldRef<'_>) -> Self {
        match field {
            FieldRef::Bit(v) => Expected::Bit(v),
            FieldRef::Octet(v) => Expected::Octet(v),
            FieldRef::Short(v) => Expected::Short(v),
            FieldRef::Long(v) => Expected::Long(v),
            FieldRef::LongLong(v) => Expected::LongLong(v),
            FieldRef::Timestamp(v) => Expected::Timestamp(v),
            FieldRef::ShortStr(v) => Expected::ShortStr(v.clone()),
            FieldRef::LongStr(v) => Expected::LongStr(v.clone()),
            FieldRef::Table(v) => Expected::Table(v.clone()),
        }
    }
}

/// The value field number `index` gets under `fill` (reserved fields always hold zero).
fn field_value(field: &FieldInfo, index: usize, fill: Fill) -> Expected {
    let zero = fill == Fill::Zero || field.reserved;
    let n = index as u64 + 1;
    match field.wire {
        WireType::Bit if zero => Expected::Bit(false),
        WireType::Bit => Expected::Bit((index % 2 == 1) != (fill == Fill::Values)),
        WireType::Octet => Expected::Octet(if zero { 0 } else { 0xa0 + n as u8 }),
        WireType::Short => Expected::Short(if zero { 0 } else { 0xb100 + n as u16 }),
        WireType::Long => Expected::Long(if zero { 0 } else { 0xc200_0000 + n as u32 }),
        WireType::LongLong => Expected::LongLong(if zero { 0 } else { 0xd300_0000_0000_0000 + n }),
        WireType::Timestamp => Expected::Timestamp(if zero { 0 } else { 1_700_000_000 + n }),
        WireType::ShortStr if zero => Expected::ShortStr(ShortString::default()),
        WireType::ShortStr => Expected::ShortStr(field.name.into()),
        WireType::LongStr if zero => Expected::LongStr(LongString::default()),
        WireType::LongStr => Expected::LongStr(format!("long {}", field.name).into()),
        WireType::Table if zero => Expected::Table(FieldTable::new()),
        WireType::Table => {
            let mut table = FieldTable::new();
            table.insert(field.name, index as i32);
            table.insert("nested", FieldTable::from_iter([("x", true)]));
            Expected::Table(table)
        }
    }
}

/// Writes the arguments of `info` by hand from the spec table: consecutive bits share octets,
/// least significant bit first (spec 4.2.5.2). Returns the octets and the value of each
/// non-reserved field, in order.
fn build_arguments(info: &MethodInfo, fill: Fill) -> (Vec<u8>, Vec<(&'static str, Expected)>) {
    let mut out = Vec::new();
    let mut expected = Vec::new();
    let mut bits: Option<(u8, u32)> = None;
    for (index, field) in info.fields.iter().enumerate() {
        let value = field_value(field, index, fill);
        if let Expected::Bit(set) = value {
            let (octet, count) = match bits {
                Some((octet, count)) if count < 8 => (octet, count),
                Some((octet, _)) => {
                    out.push(octet);
                    (0, 0)
                }
                None => (0, 0),
            };
            bits = Some((octet | (u8::from(set) << count), count + 1));
        } else if let Some((octet, _)) = bits.take() {
            out.push(octet);
        }
        match &value {
            Expected::Bit(_) => {}
            Expected::Octet(v) => out.push(*v),
            Expected::Short(v) => out.extend(v.to_be_bytes()),
            Expected::Long(v) => out.extend(v.to_be_bytes()),
            Expected::LongLong(v) | Expected::Timestamp(v) => out.extend(v.to_be_bytes()),
            Expected::ShortStr(v) => {
                out.push(u8::try_from(v.len()).unwrap());
                out.extend(v.as_bytes());
            }
            Expected::LongStr(v) => {
                out.extend(u32::try_from(v.len()).unwrap().to_be_bytes());
                out.extend(v.as_bytes());
            }
            Expected::Table(v) => out.extend(hand_written_table(v)),
        }
        if !field.reserved {
            expected.push((field.name, value));
        }
    }
    if let Some((octet, _)) = bits {
        out.push(octet);
    }
    (out, expected)
}

/// A field table of `t` (booleans), `I` (32-bit integers) and `F` (tables), written by hand.
fn hand_written_table(table: &FieldTable) -> Vec<u8> {
    let mut entries = Vec::new();
    for (key, value) in table.iter() {
        entries.push(u8::try_from(key.len()).unwrap());
        entries.extend(key.as_bytes());
        match value {
            FieldValue::Bool(v) => entries.extend([b't', u8::from(*v)]),
            FieldValue::I32(v) => {
                entries.push(b'I');
                entries.extend(v.to_be_bytes());
            }
            FieldValue::Table(v) => {
                entries.push(b'F');
                entries.extend(hand_written_table(v));
            }
            other => panic!("no hand-written encoding for {other:?}"),
        }
    }
    let mut out = u32::try_from(entries.len()).unwrap().to_be_bytes().to_vec();
    out.extend(entries);
    out
}

/// A method frame on channel 5 around `arguments`.
fn method_frame(info: &MethodInfo, arguments: &[u8]) -> BytesMut {
    let mut buf = BytesMut::new();
    buf.put_u8(1);
    buf.put_u16(5);
    buf.put_u32(u32::try_from(4 + arguments.len()).unwrap());
    buf.put_u16(info.class_id);
    buf.put_u16(info.method_id);
    buf.put_slice(arguments);
    buf.put_u8(0xce);
    buf
}

#[test]
fn every_spec_method_decodes_and_encodes_back_from_hand_built_arguments() {
    let mut covered = BTreeSet::new();
    for info in METHODS.iter() {
        for fill in [Fill::Zero, Fill::Values, Fill::ValuesBitsInverted] {
            let (arguments, expected) = build_arguments(info, fill);
            let bytes = method_frame(info, &arguments);
            let mut buf = bytes.clone();
            let frame = decode(&mut buf, &Limits::default())
                .unwrap_or_else(|e| panic!("{} ({fill:?}): {e}", info.name))
                .unwrap_or_else(|| panic!("{} ({fill:?}): incomplete", info.name));
            assert!(buf.is_empty(), "{}: octets left over", info.name);
            let Frame::Method(5, method) = &frame else {
                panic!("{}: decoded as {frame:?}", info.name);
            };
            assert!(
                std::ptr::eq(method.info(), info),
                "{} decoded as {}",
                info.name,
                method.name()
            );
            assert_eq!(
                (method.class_id(), method.method_id()),
                (info.class_id, info.method_id)
            );
            assert_eq!(method.name(), info.name);
            assert_eq!(method.has_content(), info.content);
            assert_eq!(
                method.arguments_len(),
                arguments.len(),
                "{} ({fill:?})",
                info.name
            );

            let mut fields = Vec::new();
            method.for_each_field(&mut |name, value| fields.push((name, Expected::from(value))));
            assert_eq!(fields, expected, "{} ({fill:?})", info.name);

            let mut out = BytesMut::new();
            frame.encode(&mut out, 0).unwrap();
            assert_eq!(out, bytes, "{} ({fill:?}) encodes differently", info.name);
            assert_eq!(frame.encoded_len(), bytes.len());
            covered.insert((info.class_id, info.method_id));
        }
    }
    // Every method, and no two entries for one id pair.
    assert_eq!(covered.len(), METHODS.len());
    assert!(
        METHODS.len() >= 58,
        "only {} methods in the table",
        METHODS.len()
    );
}

#[test]
fn every_spec_method_refuses_its_arguments_one_octet_short() {
    for info in METHODS.iter() {
        let (arguments, _) = build_arguments(info, Fill::Values);
        let Some((_, short)) = arguments.split_last() else {
            continue; // No arguments: nothing to cut.
        };
        let mut buf = method_frame(info, short);
        let error = decode(&mut buf, &Limits::default()).unwrap_err();
        assert_eq!(error, DecodeError::Truncated(info.name), "{}", info.name);
        assert_eq!(error.reply_code().0, 502);
    }
}

#[test]
fn every_spec_method_refuses_one_octet_more_than_its_arguments() {
    for info in METHODS.iter() {
        let (mut arguments, _) = build_arguments(info, Fill::Values);
        arguments.push(0);
        let mut buf = method_frame(info, &arguments);
        let error = decode(&mut buf, &Limits::default()).unwrap_err();
        assert_eq!(
            error,
            DecodeError::TrailingBytes {
                what: info.name,
                left: 1
            },
            "{}",
            info.name
        );
        assert_eq!(error.reply_code().0, 502);
    }
}

#[test]
fn exchange_declare_with_arguments_round_trips() {
    // A concrete, readable case next to the generated ones: RabbitMQ's alternate-exchange.
    let declare = ExchangeDeclare {
        exchange: "logs".into(),
        kind: "fanout".into(),
        durable: true,
        arguments: FieldTable::from_iter([("alternate-exchange", "unrouted")]),
        ..Default::default()
    };
    let frame = Frame::Method(7, declare.into());
    let mut buf = BytesMut::new();
    frame.encode(&mut buf, 0).unwrap();
    assert_eq!(buf.len(), frame.encoded_len());
    assert_eq!(decode(&mut buf, &Limits::default()).unwrap(), Some(frame));
    assert!(buf.is_empty());
}
