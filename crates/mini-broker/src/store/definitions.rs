//! Durable definitions: exchanges, queues and bindings that survive a restart, kept in
//! `<data-dir>/definitions.json` in a shape close to RabbitMQ's definitions export.
//!
//! Argument tables keep their AMQP types: each value is `{"type": "<letter>", "value": ...}`
//! with RabbitMQ's field-table type letter, so that a redeclare after a restart compares
//! equal to the original declaration.

use std::collections::BTreeMap;
use std::path::Path;

use amqp_codec::{Decimal, FieldArray, FieldTable, FieldValue};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::StoreError;

/// Every vhost's durable definitions.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Definitions {
    /// By vhost name.
    pub vhosts: BTreeMap<String, VHostDefinitions>,
}

/// One vhost's durable exchanges, queues and bindings.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct VHostDefinitions {
    /// Durable exchanges (the standard ones are not listed: every vhost has them).
    pub exchanges: Vec<ExchangeDefinition>,
    /// Durable queues.
    pub queues: Vec<QueueDefinition>,
    /// Bindings whose source and destination are both durable.
    pub bindings: Vec<BindingDefinition>,
}

/// A durable exchange.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExchangeDefinition {
    /// Name.
    pub name: String,
    /// `direct`, `fanout`, `topic` or `headers`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Deleted with its last binding.
    pub auto_delete: bool,
    /// Not for publishing to.
    pub internal: bool,
    /// Declaration arguments.
    pub arguments: Value,
}

/// A durable queue.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct QueueDefinition {
    /// Name.
    pub name: String,
    /// Deleted with its last consumer.
    pub auto_delete: bool,
    /// Declaration arguments.
    pub arguments: Value,
}

/// A binding between durable ends.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BindingDefinition {
    /// The source exchange.
    pub source: String,
    /// The destination's name.
    pub destination: String,
    /// `queue` or `exchange`.
    pub destination_type: String,
    /// The binding key.
    pub routing_key: String,
    /// Binding arguments.
    pub arguments: Value,
}

impl Definitions {
    /// Reads `<dir>/definitions.json`; an absent file means no definitions yet.
    pub fn load(dir: &Path) -> Result<Definitions, StoreError> {
        let path = dir.join("definitions.json");
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| StoreError::Definitions {
                path,
                what: e.to_string(),
            }),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Definitions::default()),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    /// Writes `<dir>/definitions.json` atomically: a temporary file, fsync, rename, fsync of
    /// the directory.
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        super::write_atomically(&dir.join("definitions.json"), text.as_bytes())
    }
}

/// A field table as typed JSON.
pub fn table_to_json(table: &FieldTable) -> Value {
    let map: serde_json::Map<String, Value> = table
        .iter()
        .map(|(key, value)| (key.to_string(), value_to_json(value)))
        .collect();
    Value::Object(map)
}

fn value_to_json(value: &FieldValue) -> Value {
    let letter = char::from(value.type_letter()).to_string();
    let inner = match value {
        FieldValue::Bool(v) => json!(v),
        FieldValue::I8(v) => json!(v),
        FieldValue::U8(v) => json!(v),
        FieldValue::I16(v) => json!(v),
        FieldValue::U16(v) => json!(v),
        FieldValue::I32(v) => json!(v),
        FieldValue::U32(v) => json!(v),
        FieldValue::I64(v) => json!(v),
        FieldValue::U64(v) => json!(v),
        FieldValue::F32(v) => json!(v),
        FieldValue::F64(v) => json!(v),
        FieldValue::Decimal(d) => json!([d.scale, d.value]),
        FieldValue::LongString(s) => json!(s.to_string()),
        FieldValue::ByteArray(b) => json!(b.to_vec()),
        FieldValue::Array(a) => Value::Array(a.iter().map(value_to_json).collect()),
        FieldValue::Timestamp(t) => json!(t),
        FieldValue::Table(t) => table_to_json(t),
        FieldValue::Void => Value::Null,
    };
    json!({ "type": letter, "value": inner })
}

/// A field table from typed JSON (what [`table_to_json`] wrote).
pub fn table_from_json(value: &Value) -> Option<FieldTable> {
    let mut table = FieldTable::new();
    for (key, value) in value.as_object()? {
        table.insert(key.as_str(), value_from_json(value)?);
    }
    Some(table)
}

fn value_from_json(value: &Value) -> Option<FieldValue> {
    let letter = value.get("type")?.as_str()?;
    let v = value.get("value")?;
    Some(match letter {
        "t" => FieldValue::Bool(v.as_bool()?),
        "b" => FieldValue::I8(i8::try_from(v.as_i64()?).ok()?),
        "B" => FieldValue::U8(u8::try_from(v.as_u64()?).ok()?),
        "s" => FieldValue::I16(i16::try_from(v.as_i64()?).ok()?),
        "u" => FieldValue::U16(u16::try_from(v.as_u64()?).ok()?),
        "I" => FieldValue::I32(i32::try_from(v.as_i64()?).ok()?),
        "i" => FieldValue::U32(u32::try_from(v.as_u64()?).ok()?),
        "l" => FieldValue::I64(v.as_i64()?),
        "L" => FieldValue::U64(v.as_u64()?),
        "f" => FieldValue::F32(v.as_f64()? as f32),
        "d" => FieldValue::F64(v.as_f64()?),
        "D" => FieldValue::Decimal(Decimal {
            scale: u8::try_from(v.get(0)?.as_u64()?).ok()?,
            value: u32::try_from(v.get(1)?.as_u64()?).ok()?,
        }),
        "S" => FieldValue::LongString(v.as_str()?.into()),
        "x" => FieldValue::ByteArray(
            v.as_array()?
                .iter()
                .map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                .collect::<Option<Vec<u8>>>()?
                .into(),
        ),
        "A" => FieldValue::Array(FieldArray(
            v.as_array()?
                .iter()
                .map(value_from_json)
                .collect::<Option<Vec<_>>>()?,
        )),
        "T" => FieldValue::Timestamp(v.as_u64()?),
        "F" => FieldValue::Table(table_from_json(v)?),
        "V" => FieldValue::Void,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_type_survives_json() {
        let mut table = FieldTable::new();
        table.insert("x-message-ttl", FieldValue::I32(1000));
        table.insert("x-max-length", FieldValue::I64(10));
        table.insert("x-queue-type", "quorum");
        table.insert("flag", true);
        table.insert("bytes", FieldValue::ByteArray(vec![1u8, 2, 3].into()));
        table.insert("when", FieldValue::Timestamp(1_700_000_000));
        table.insert(
            "nested",
            FieldValue::Table([("a", 1i32)].into_iter().collect()),
        );
        table.insert(
            "list",
            FieldValue::Array(FieldArray(vec![FieldValue::U8(1), FieldValue::Void])),
        );
        table.insert(
            "dec",
            FieldValue::Decimal(Decimal {
                scale: 2,
                value: 150,
            }),
        );
        let json = table_to_json(&table);
        // JSON objects keep no order; the entries and their types must all come back.
        assert!(table_from_json(&json).unwrap().same_entries(&table));
    }

    #[test]
    fn definitions_save_and_load_round_trip() {
        let dir = super::super::log::tests_support::tempdir();
        let mut definitions = Definitions::default();
        definitions.vhosts.insert(
            "/".into(),
            VHostDefinitions {
                queues: vec![QueueDefinition {
                    name: "task_queue".into(),
                    auto_delete: false,
                    arguments: json!({}),
                }],
                ..Default::default()
            },
        );
        definitions.save(&dir).unwrap();
        assert_eq!(Definitions::load(&dir).unwrap(), definitions);
    }
}
