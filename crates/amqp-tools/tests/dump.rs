//! `amqp-dump` on a whole conversation: the binary run as a process on a file and on stdin,
//! text and JSON output, streams with and without the protocol header, corrupt and cut
//! streams, `--body-limit`, `--offsets`, `--frame-max`, `--hex`; and `dump::run` fed one
//! octet at a time.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use amqp_codec::methods::{
    BasicAck, BasicConsume, BasicConsumeOk, BasicDeliver, BasicPublish, ChannelOpen, ChannelOpenOk,
    ConnectionOpen, ConnectionOpenOk, ConnectionStart, ConnectionStartOk, ConnectionTune,
    ConnectionTuneOk, QueueDeclare, QueueDeclareOk,
};
use amqp_codec::{
    BasicProperties, ContentHeader, FieldTable, FieldValue, Frame, LongString, ProtocolHeader,
};
use amqp_tools::dump::{run, DumpError, Options, Summary};
use bytes::{Bytes, BytesMut};
use serde_json::{json, Value};

/// A work-queues conversation (RabbitMQ tutorial 2), both directions in the order they
/// happen: the client connects, declares a durable queue, publishes a persistent message,
/// consumes it back and acknowledges it.
fn conversation() -> Vec<Frame> {
    let mut capabilities = FieldTable::new();
    capabilities.insert("publisher_confirms", true);
    capabilities.insert("basic.nack", true);
    let mut server_properties = FieldTable::new();
    server_properties.insert("capabilities", capabilities);
    server_properties.insert("product", "RabbitMQ");
    server_properties.insert("version", "3.13.7");
    let mut client_properties = FieldTable::new();
    client_properties.insert("product", "amqp-rs");
    client_properties.insert("connection_timeout", FieldValue::I32(60_000));
    let persistent = BasicProperties {
        delivery_mode: Some(2),
        ..Default::default()
    };
    let hello = Bytes::from_static(b"Hello World!");
    vec![
        Frame::ProtocolHeader(ProtocolHeader::AMQP_0_9_1),
        Frame::Method(
            0,
            ConnectionStart {
                version_major: 0,
                version_minor: 9,
                server_properties,
                mechanisms: "AMQPLAIN PLAIN".into(),
                locales: "en_US".into(),
            }
            .into(),
        ),
        Frame::Method(
            0,
            ConnectionStartOk {
                client_properties,
                mechanism: "PLAIN".into(),
                response: LongString::from("\0guest\0guest"),
                locale: "en_US".into(),
            }
            .into(),
        ),
        Frame::Method(
            0,
            ConnectionTune {
                channel_max: 2047,
                frame_max: 131_072,
                heartbeat: 60,
            }
            .into(),
        ),
        Frame::Method(
            0,
            ConnectionTuneOk {
                channel_max: 2047,
                frame_max: 131_072,
                heartbeat: 60,
            }
            .into(),
        ),
        Frame::Method(
            0,
            ConnectionOpen {
                virtual_host: "/".into(),
            }
            .into(),
        ),
        Frame::Method(0, ConnectionOpenOk.into()),
        Frame::Method(1, ChannelOpen.into()),
        Frame::Method(1, ChannelOpenOk.into()),
        Frame::Method(
            1,
            QueueDeclare {
                queue: "task_queue".into(),
                durable: true,
                ..Default::default()
            }
            .into(),
        ),
        Frame::Method(
            1,
            QueueDeclareOk {
                queue: "task_queue".into(),
                message_count: 0,
                consumer_count: 0,
            }
            .into(),
        ),
        Frame::Method(
            1,
            BasicPublish {
                exchange: "".into(),
                routing_key: "task_queue".into(),
                ..Default::default()
            }
            .into(),
        ),
        Frame::Header(1, ContentHeader::basic(12, persistent.clone())),
        Frame::Body(1, hello.clone()),
        Frame::Method(
            1,
            BasicConsume {
                queue: "task_queue".into(),
                consumer_tag: "ctag-1".into(),
                ..Default::default()
            }
            .into(),
        ),
        Frame::Method(
            1,
            BasicConsumeOk {
                consumer_tag: "ctag-1".into(),
            }
            .into(),
        ),
        Frame::Method(
            1,
            BasicDeliver {
                consumer_tag: "ctag-1".into(),
                delivery_tag: 1,
                redelivered: false,
                exchange: "".into(),
                routing_key: "task_queue".into(),
            }
            .into(),
        ),
        Frame::Header(1, ContentHeader::basic(12, persistent)),
        Frame::Body(1, hello),
        Frame::Method(
            1,
            BasicAck {
                delivery_tag: 1,
                multiple: false,
            }
            .into(),
        ),
        Frame::Heartbeat,
    ]
}

/// The text `amqp-dump` prints for [`conversation`], line by line.
const CONVERSATION_TEXT: &[&str] = &[
    "protocol-header AMQP 0-9-1",
    concat!(
        r#"ch=0 connection.start version_major=0 version_minor=9 server_properties="#,
        r#"{"capabilities": {"publisher_confirms": true, "basic.nack": true}, "#,
        r#""product": "RabbitMQ", "version": "3.13.7"} "#,
        r#"mechanisms="AMQPLAIN PLAIN" locales="en_US""#,
    ),
    concat!(
        r#"ch=0 connection.start-ok client_properties="#,
        r#"{"product": "amqp-rs", "connection_timeout": 60000} "#,
        r#"mechanism="PLAIN" response="\x00guest\x00guest" locale="en_US""#,
    ),
    "ch=0 connection.tune channel_max=2047 frame_max=131072 heartbeat=60",
    "ch=0 connection.tune-ok channel_max=2047 frame_max=131072 heartbeat=60",
    r#"ch=0 connection.open virtual_host="/""#,
    "ch=0 connection.open-ok",
    "ch=1 channel.open",
    "ch=1 channel.open-ok",
    concat!(
        r#"ch=1 queue.declare queue="task_queue" passive=false durable=true exclusive=false "#,
        r#"auto_delete=false no_wait=false arguments={}"#,
    ),
    r#"ch=1 queue.declare-ok queue="task_queue" message_count=0 consumer_count=0"#,
    r#"ch=1 basic.publish exchange="" routing_key="task_queue" mandatory=false immediate=false"#,
    "ch=1 content-header class=60 body_size=12 delivery_mode=2",
    r#"ch=1 content-body size=12 "Hello World!""#,
    concat!(
        r#"ch=1 basic.consume queue="task_queue" consumer_tag="ctag-1" no_local=false "#,
        r#"no_ack=false exclusive=false no_wait=false arguments={}"#,
    ),
    r#"ch=1 basic.consume-ok consumer_tag="ctag-1""#,
    concat!(
        r#"ch=1 basic.deliver consumer_tag="ctag-1" delivery_tag=1 redelivered=false "#,
        r#"exchange="" routing_key="task_queue""#,
    ),
    "ch=1 content-header class=60 body_size=12 delivery_mode=2",
    r#"ch=1 content-body size=12 "Hello World!""#,
    "ch=1 basic.ack delivery_tag=1 multiple=false",
    "ch=0 heartbeat",
];

/// Index of the basic.publish frame in [`conversation`].
const PUBLISH: usize = 11;

fn encode(frames: &[Frame]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    for frame in frames {
        frame.encode(&mut buf, 0).unwrap();
    }
    buf.to_vec()
}

/// Where each frame of `frames` starts in their encoding.
fn offsets(frames: &[Frame]) -> Vec<u64> {
    frames
        .iter()
        .scan(0u64, |at, frame| {
            let start = *at;
            *at += frame.encoded_len() as u64;
            Some(start)
        })
        .collect()
}

/// Writes `bytes` to a file of this name under the target's scratch directory.
fn scratch_file(name: &str, bytes: &[u8]) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Runs `amqp-dump` with `args`, feeding `stdin` to it.
fn amqp_dump(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_amqp-dump"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    let input = stdin.to_vec();
    let writer = thread::spawn(move || pipe.write_all(&input));
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    output
}

fn stdout_lines(output: &Output) -> Vec<String> {
    String::from_utf8(output.stdout.clone())
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn stderr_text(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

fn json_lines(output: &Output) -> Vec<Value> {
    stdout_lines(output)
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

/// Runs `dump::run` in memory.
fn run_to_string(input: impl Read, options: &Options) -> (Result<Summary, DumpError>, String) {
    let mut out = Vec::new();
    let result = run(input, &mut out, options);
    (result, String::from_utf8(out).unwrap())
}

#[test]
fn dump_file_prints_one_text_line_per_frame() {
    let path = scratch_file("conversation.bin", &encode(&conversation()));
    let output = amqp_dump(&[path.to_str().unwrap()], b"");
    assert!(output.status.success(), "{}", stderr_text(&output));
    assert_eq!(stdout_lines(&output), CONVERSATION_TEXT);
    assert_eq!(stderr_text(&output), "");
}

#[test]
fn dump_stdin_prints_the_same_lines_as_a_file() {
    let bytes = encode(&conversation());
    for args in [&[][..], &["-"][..]] {
        let output = amqp_dump(args, &bytes);
        assert!(
            output.status.success(),
            "{args:?}: {}",
            stderr_text(&output)
        );
        assert_eq!(stdout_lines(&output), CONVERSATION_TEXT, "{args:?}");
    }
}

#[test]
fn dump_stream_without_protocol_header_starts_at_first_frame() {
    // A server's side of a connection, or a capture begun after the handshake.
    let bytes = encode(&conversation()[1..]);
    let output = amqp_dump(&[], &bytes);
    assert!(output.status.success(), "{}", stderr_text(&output));
    assert_eq!(stdout_lines(&output), CONVERSATION_TEXT[1..]);
}

#[test]
fn dump_json_names_class_method_and_fields_by_spec_name() {
    let output = amqp_dump(&["--json"], &encode(&conversation()));
    assert!(output.status.success(), "{}", stderr_text(&output));
    let objects = json_lines(&output);
    assert_eq!(objects.len(), conversation().len());

    assert_eq!(
        objects[0],
        json!({"type": "protocol-header", "protocol_id": 0, "major": 0, "minor": 9, "revision": 1})
    );

    let start = &objects[1];
    assert_eq!(start["channel"], 0);
    assert_eq!(start["type"], "method");
    assert_eq!(start["class"], "connection");
    assert_eq!(start["method"], "start");
    assert_eq!(start["class_id"], 10);
    assert_eq!(start["method_id"], 10);
    let server = &start["fields"]["server-properties"];
    assert_eq!(server["product"], "RabbitMQ");
    assert_eq!(server["capabilities"]["publisher_confirms"], true);
    assert_eq!(server["capabilities"]["basic.nack"], true);
    assert_eq!(start["fields"]["mechanisms"], "AMQPLAIN PLAIN");

    let start_ok = &objects[2]["fields"];
    assert_eq!(start_ok["client-properties"]["connection_timeout"], 60_000);
    assert_eq!(start_ok["response"], "\0guest\0guest");

    assert_eq!(
        objects[3]["fields"],
        json!({"channel-max": 2047, "frame-max": 131072, "heartbeat": 60})
    );

    let declare = &objects[9];
    assert_eq!(
        (&declare["class"], &declare["method"]),
        (&json!("queue"), &json!("declare"))
    );
    assert_eq!(declare["fields"]["queue"], "task_queue");
    assert_eq!(declare["fields"]["durable"], true);
    assert_eq!(declare["fields"]["auto-delete"], false);
    assert_eq!(declare["fields"]["arguments"], json!({}));

    let publish = &objects[PUBLISH];
    assert_eq!(publish["channel"], 1);
    assert_eq!(
        (&publish["class"], &publish["method"]),
        (&json!("basic"), &json!("publish"))
    );
    assert_eq!(
        publish["fields"],
        json!({"exchange": "", "routing-key": "task_queue", "mandatory": false, "immediate": false})
    );

    let header = &objects[PUBLISH + 1];
    assert_eq!(header["type"], "header");
    assert_eq!(header["class"], "basic");
    assert_eq!(header["body_size"], 12);
    assert_eq!(header["properties"], json!({"delivery-mode": 2}));

    let body = &objects[PUBLISH + 2];
    assert_eq!(
        *body,
        json!({"channel": 1, "type": "body", "size": 12, "body": "Hello World!"})
    );

    let deliver = &objects[16];
    assert_eq!(deliver["method"], "deliver");
    assert_eq!(deliver["fields"]["delivery-tag"], 1);
    assert_eq!(deliver["fields"]["consumer-tag"], "ctag-1");
    assert_eq!(deliver["fields"]["redelivered"], false);

    assert_eq!(objects[19]["method"], "ack");
    assert_eq!(
        objects[19]["fields"],
        json!({"delivery-tag": 1, "multiple": false})
    );
    assert_eq!(objects[20], json!({"channel": 0, "type": "heartbeat"}));
}

#[test]
fn dump_corrupt_frame_end_names_its_offset_and_501_after_the_good_frames() {
    let frames = conversation();
    let mut bytes = encode(&frames);
    // The last octet of the basic.publish frame: its frame-end.
    let end = offsets(&frames)[PUBLISH] + frames[PUBLISH].encoded_len() as u64 - 1;
    bytes[end as usize] = 0x00;
    let output = amqp_dump(&[], &bytes);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(stdout_lines(&output), CONVERSATION_TEXT[..PUBLISH]);
    assert_eq!(
        stderr_text(&output),
        format!(
            "amqp-dump: error at offset {end}: 501 FRAME_ERROR: frame end octet is 0x00, expected 0xce\n"
        )
    );
}

#[test]
fn dump_unknown_frame_type_names_the_type_octet_and_501() {
    let frames = conversation();
    let mut bytes = encode(&frames);
    let at = offsets(&frames)[PUBLISH + 2];
    bytes[at as usize] = 0x09; // was 03, a body frame; there is no frame type 9
    let output = amqp_dump(&[], &bytes);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(stdout_lines(&output), CONVERSATION_TEXT[..PUBLISH + 2]);
    assert_eq!(
        stderr_text(&output),
        format!("amqp-dump: error at offset {at}: 501 FRAME_ERROR: unknown frame type 9\n")
    );
}

#[test]
fn dump_bad_payload_names_the_frame_offset_and_its_reply_code() {
    let frames = conversation();
    let at = offsets(&frames)[PUBLISH];
    // The method id of basic.publish (60.40) sits after the 7-octet header and the class id.
    let mut unknown_method = encode(&frames);
    unknown_method[at as usize + 10] = 99;
    let output = amqp_dump(&[], &unknown_method);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr_text(&output),
        format!("amqp-dump: error at offset {at}: 503 COMMAND_INVALID: unknown method 60.99\n")
    );

    // The content header's property flags (after class, weight and body size) with bit 0
    // clear and bit 1 set: a flag basic does not have.
    let header_at = offsets(&frames)[PUBLISH + 1];
    let mut bad_flags = encode(&frames);
    bad_flags[header_at as usize + 7 + 2 + 2 + 8 + 1] |= 0x02;
    let output = amqp_dump(&[], &bad_flags);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(stdout_lines(&output), CONVERSATION_TEXT[..PUBLISH + 1]);
    let stderr = stderr_text(&output);
    assert!(
        stderr.starts_with(&format!(
            "amqp-dump: error at offset {header_at}: 502 SYNTAX_ERROR: "
        )),
        "{stderr}"
    );
}

#[test]
fn dump_stream_cut_inside_a_frame_is_an_error_after_the_whole_frames() {
    let frames = conversation();
    let bytes = encode(&frames);
    let at = offsets(&frames)[PUBLISH];
    let cut = &bytes[..at as usize + 10];
    let output = amqp_dump(&[], cut);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(stdout_lines(&output), CONVERSATION_TEXT[..PUBLISH]);
    assert_eq!(
        stderr_text(&output),
        format!(
            "amqp-dump: error at offset {at}: 501 FRAME_ERROR: input ends inside a frame: 10 of its {} octets arrived\n",
            frames[PUBLISH].encoded_len()
        )
    );
}

#[test]
fn dump_body_limit_cuts_bodies_in_text_and_json() {
    let bytes = encode(&conversation());
    let text = amqp_dump(&["--body-limit", "5"], &bytes);
    assert!(text.status.success());
    assert_eq!(
        stdout_lines(&text)[PUBLISH + 2],
        r#"ch=1 content-body size=12 "Hello"..."#
    );

    let json = amqp_dump(&["--json", "--body-limit", "5"], &bytes);
    assert!(json.status.success());
    let body = &json_lines(&json)[PUBLISH + 2];
    assert_eq!(body["body"], "Hello");
    assert_eq!(body["body_truncated"], true);
    assert_eq!(body["size"], 12);
}

#[test]
fn dump_offsets_prefix_each_line_with_its_frame_offset() {
    let frames = conversation();
    let bytes = encode(&frames);
    let starts = offsets(&frames);

    let text = amqp_dump(&["--offsets"], &bytes);
    assert!(text.status.success());
    let lines = stdout_lines(&text);
    assert_eq!(lines.len(), frames.len());
    for ((line, start), expected) in lines.iter().zip(&starts).zip(CONVERSATION_TEXT) {
        assert_eq!(*line, format!("{start:>8} {expected}"));
    }

    let json = amqp_dump(&["--offsets", "--json"], &bytes);
    assert!(json.status.success());
    let objects = json_lines(&json);
    let found: Vec<u64> = objects
        .iter()
        .map(|o| o["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(found, starts);
    assert_eq!(objects[PUBLISH]["method"], "publish");
}

#[test]
fn dump_frame_max_refuses_a_larger_frame() {
    let frames = [
        Frame::Heartbeat,
        Frame::Body(1, Bytes::from(vec![b'x'; 5000])),
    ];
    let bytes = encode(&frames);
    let limited = amqp_dump(&["--frame-max", "4096"], &bytes);
    assert_eq!(limited.status.code(), Some(1));
    assert_eq!(stdout_lines(&limited), ["ch=0 heartbeat"]);
    assert_eq!(
        stderr_text(&limited),
        "amqp-dump: error at offset 8: 501 FRAME_ERROR: frame size 5000 exceeds the negotiated frame_max 4096\n"
    );

    let unlimited = amqp_dump(&[], &bytes);
    assert!(unlimited.status.success());
    assert_eq!(stdout_lines(&unlimited).len(), 2);
}

/// A client's opening and one basic.ack, by hand, one comment per field.
const HEX_FIXTURE: &str = "
    # protocol header
    41 4d 51 50                 # \"AMQP\"
    00 00 09 01                 # protocol id 0, version 0-9-1
    # basic.ack
    01                          # frame type: method
    00 01                       # channel 1
    00 00 00 0d                 # payload size: 13
    00 3c 00 50                 # class 60 (basic), method 80 (ack)
    00 00 00 00 00 00 00 2a     # delivery-tag: 42
    01                          # multiple: true
    ce                          # frame end
    # heartbeat, written without spaces
    08000000000000ce
";

#[test]
fn dump_hex_reads_commented_hex_text() {
    let output = amqp_dump(&["--hex"], HEX_FIXTURE.as_bytes());
    assert!(output.status.success(), "{}", stderr_text(&output));
    assert_eq!(
        stdout_lines(&output),
        [
            "protocol-header AMQP 0-9-1",
            "ch=1 basic.ack delivery_tag=42 multiple=true",
            "ch=0 heartbeat",
        ]
    );
}

#[test]
fn dump_hex_of_the_conversation_prints_what_the_bytes_print() {
    let hex: String = encode(&conversation())
        .chunks(16)
        .map(|line| {
            let octets: Vec<String> = line.iter().map(|b| format!("{b:02X}")).collect();
            octets.join(" ") + "\n"
        })
        .collect();
    let path = scratch_file("conversation.hex", hex.as_bytes());
    let output = amqp_dump(&["--hex", path.to_str().unwrap()], b"");
    assert!(output.status.success(), "{}", stderr_text(&output));
    assert_eq!(stdout_lines(&output), CONVERSATION_TEXT);
}

#[test]
fn dump_hex_rejects_a_non_hex_character_by_line_and_column_after_the_frames_before_it() {
    // A heartbeat, then one whose size was pasted with a "0x" in it.
    let output = amqp_dump(&["--hex"], b"08 0000 00000000 ce\n08 0000 0x000000 ce\n");
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(stdout_lines(&output), ["ch=0 heartbeat"]);
    assert_eq!(
        stderr_text(&output),
        "amqp-dump: hex input, line 2, column 10: 'x' is not a hex digit\n"
    );
}

#[test]
fn dump_hex_rejects_an_odd_number_of_digits() {
    let output = amqp_dump(&["--hex"], b"08 0000 00000000 c");
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr_text(&output),
        "amqp-dump: hex input, line 1: the text ends after an odd number of hex digits\n"
    );
}

#[test]
fn dump_missing_file_is_an_error() {
    let output = amqp_dump(&["/nonexistent/capture.bin"], b"");
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr_text(&output).starts_with("amqp-dump: cannot open /nonexistent/capture.bin: "));
}

#[test]
fn dump_prints_frames_as_they_arrive_on_a_pipe() {
    let frames = conversation();
    let bytes = encode(&frames);
    let first_two = offsets(&frames)[2] as usize;
    let mut child = Command::new(env!("CARGO_BIN_EXE_amqp-dump"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines_rx) = mpsc::channel();
    let reader = thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if lines_tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    // Only the protocol header and connection.start, and the pipe stays open: both lines
    // must come out before any more input does (the guard only keeps a broken build from
    // hanging the test run).
    stdin.write_all(&bytes[..first_two]).unwrap();
    stdin.flush().unwrap();
    let guard = Duration::from_secs(60);
    assert_eq!(lines_rx.recv_timeout(guard).unwrap(), CONVERSATION_TEXT[0]);
    assert_eq!(lines_rx.recv_timeout(guard).unwrap(), CONVERSATION_TEXT[1]);
    stdin.write_all(&bytes[first_two..]).unwrap();
    drop(stdin);
    let rest: Vec<String> = lines_rx.iter().collect();
    assert_eq!(rest, CONVERSATION_TEXT[2..]);
    assert!(child.wait().unwrap().success());
    reader.join().unwrap();
}

/// A reader that hands out one octet per `read`, as a slow socket might.
struct OneOctetAtATime<'a>(&'a [u8]);

impl Read for OneOctetAtATime<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match (self.0.split_first(), buf.first_mut()) {
            (Some((octet, rest)), Some(slot)) => {
                *slot = *octet;
                self.0 = rest;
                Ok(1)
            }
            _ => Ok(0),
        }
    }
}

#[test]
fn run_fed_one_octet_at_a_time_prints_every_frame() {
    let bytes = encode(&conversation());
    let (result, text) = run_to_string(OneOctetAtATime(&bytes), &Options::default());
    assert_eq!(
        result.unwrap(),
        Summary {
            frames: CONVERSATION_TEXT.len() as u64,
            octets: bytes.len() as u64,
        }
    );
    assert_eq!(text.lines().collect::<Vec<_>>(), CONVERSATION_TEXT);
}

#[test]
fn run_hex_fed_one_character_at_a_time_prints_every_frame() {
    let options = Options {
        hex: true,
        ..Options::default()
    };
    let (result, text) = run_to_string(OneOctetAtATime(HEX_FIXTURE.as_bytes()), &options);
    assert_eq!(result.unwrap().frames, 3);
    assert_eq!(
        text.lines().nth(1),
        Some("ch=1 basic.ack delivery_tag=42 multiple=true")
    );
}

#[test]
fn run_empty_input_prints_nothing_and_succeeds() {
    let (result, text) = run_to_string(&b""[..], &Options::default());
    assert_eq!(result.unwrap(), Summary::default());
    assert_eq!(text, "");
}

#[test]
fn run_error_knows_its_reply_code() {
    let (result, _) = run_to_string(
        &b"\x08\x00\x00\x00\x00\x00\x00\x00"[..],
        &Options::default(),
    );
    let error = result.unwrap_err();
    assert!(
        matches!(error, DumpError::Decode { offset: 7, .. }),
        "{error}"
    );
    assert_eq!(error.reply_code(), Some(amqp_codec::ReplyCode::FRAME_ERROR));
}

#[test]
fn run_large_capture_with_a_frame_spanning_reads_decodes_whole() {
    // A body larger than one read (64 KiB), so its frame arrives over several.
    let body = Bytes::from(vec![b'a'; 200_000]);
    let frames = [Frame::Body(5, body), Frame::Heartbeat];
    let bytes = encode(&frames);
    let (result, text) = run_to_string(&bytes[..], &Options::default());
    assert_eq!(result.unwrap().frames, 2);
    let first = text.lines().next().unwrap();
    assert_eq!(
        first,
        format!(r#"ch=5 content-body size=200000 "{}"..."#, "a".repeat(64))
    );
}

/// A method frame header announcing 0xffff_fff0 octets of payload, then 3 octets of it.
const HUGE_SIZE_FRAME: [u8; 10] = [
    0x01, // frame type: method
    0x00, 0x01, // channel 1
    0xff, 0xff, 0xff, 0xf0, // payload size: 4294967280
    0x00, 0x3c, 0x00, // the start of a payload
];

#[test]
fn run_corrupt_size_without_frame_max_reports_the_cut_at_the_end() {
    let (result, text) = run_to_string(&HUGE_SIZE_FRAME[..], &Options::default());
    assert_eq!(text, "");
    assert_eq!(
        result.unwrap_err().to_string(),
        "error at offset 0: 501 FRAME_ERROR: input ends inside a frame: 10 of its 4294967288 octets arrived"
    );
}

#[cfg(target_os = "linux")]
#[test]
fn dump_corrupt_size_does_not_reserve_the_announced_size() {
    // Under a 256 MiB address-space limit, reserving the 4 GiB the size announces would abort
    // the process; the buffer must only grow by what arrives.
    let mut child = Command::new("sh")
        .args(["-c", "ulimit -v 262144 && exec \"$0\""])
        .arg(env!("CARGO_BIN_EXE_amqp-dump"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&HUGE_SIZE_FRAME)
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", stderr_text(&output));
    assert_eq!(
        stderr_text(&output),
        "amqp-dump: error at offset 0: 501 FRAME_ERROR: input ends inside a frame: 10 of its 4294967288 octets arrived\n"
    );
}
