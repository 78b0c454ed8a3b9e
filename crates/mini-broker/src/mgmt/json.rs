//! JSON whose objects keep their keys in order, and the conversions between AMQP field
//! tables and JSON that RabbitMQ's management API makes.
//!
//! serde_json's own map sorts its keys (the workspace does not enable `preserve_order`, and
//! other crates' tests rely on that). Queue arguments must keep the order they were declared
//! in, because `rabbitmqctl list_queues arguments` prints them that way and `ctl` reads them
//! back from the API: hence this small [`Json`] type, serialised and parsed through serde.

use std::fmt;

use amqp_codec::{Decimal, FieldArray, FieldTable, FieldValue, LongString};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::Number;

/// A JSON value; objects are lists of entries in insertion order.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Json {
    /// `null`.
    #[default]
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// A number.
    Number(Number),
    /// A string.
    String(String),
    /// An array.
    Array(Vec<Json>),
    /// An object, keys in order.
    Object(Vec<(String, Json)>),
}

impl Json {
    /// An empty object.
    pub fn object() -> Json {
        Json::Object(Vec::new())
    }

    /// This object with `key` set to `value` (builder style).
    pub fn with(mut self, key: &str, value: impl Into<Json>) -> Json {
        self.set(key, value);
        self
    }

    /// Sets `key` on an object, replacing its value; does nothing on other values.
    pub fn set(&mut self, key: &str, value: impl Into<Json>) {
        if let Json::Object(entries) = self {
            let value = value.into();
            match entries.iter_mut().find(|(k, _)| k == key) {
                Some(entry) => entry.1 = value,
                None => entries.push((key.to_owned(), value)),
            }
        }
    }

    /// The value of `key`, if this is an object that has it.
    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The value at a dotted path (`queue_totals.messages`).
    pub fn path(&self, path: &str) -> Option<&Json> {
        path.split('.').try_fold(self, |value, key| value.get(key))
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::String(s) => Some(s),
            _ => None,
        }
    }

    /// The number as u64, if this is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Json::Number(n) => n.as_u64(),
            _ => None,
        }
    }

    /// The array's items, if this is one.
    pub fn as_array(&self) -> Option<&[Json]> {
        match self {
            Json::Array(items) => Some(items),
            _ => None,
        }
    }

    /// The object's entries, if this is one.
    pub fn as_object(&self) -> Option<&[(String, Json)]> {
        match self {
            Json::Object(entries) => Some(entries),
            _ => None,
        }
    }

    /// Parses JSON text.
    pub fn parse(text: &[u8]) -> Result<Json, serde_json::Error> {
        serde_json::from_slice(text)
    }

    /// The compact JSON text.
    pub fn to_text(&self) -> String {
        // Serialising a Json into a String cannot fail: every key is a string and NaN is
        // never stored (From<f64> maps it to null).
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl fmt::Display for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_text())
    }
}

impl From<bool> for Json {
    fn from(value: bool) -> Json {
        Json::Bool(value)
    }
}

macro_rules! json_from_integer {
    ($($t:ty),*) => {$(
        impl From<$t> for Json {
            fn from(value: $t) -> Json {
                Json::Number(Number::from(value))
            }
        }
    )*};
}
json_from_integer!(u8, u16, u32, u64, usize, i8, i16, i32, i64);

impl From<f64> for Json {
    fn from(value: f64) -> Json {
        Number::from_f64(value).map_or(Json::Null, Json::Number)
    }
}

impl From<&str> for Json {
    fn from(value: &str) -> Json {
        Json::String(value.to_owned())
    }
}

impl From<String> for Json {
    fn from(value: String) -> Json {
        Json::String(value)
    }
}

impl From<Vec<Json>> for Json {
    fn from(value: Vec<Json>) -> Json {
        Json::Array(value)
    }
}

impl<T: Into<Json>> From<Option<T>> for Json {
    fn from(value: Option<T>) -> Json {
        value.map_or(Json::Null, Into::into)
    }
}

impl Serialize for Json {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Json::Null => serializer.serialize_unit(),
            Json::Bool(b) => serializer.serialize_bool(*b),
            Json::Number(n) => n.serialize(serializer),
            Json::String(s) => serializer.serialize_str(s),
            Json::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Json::Object(entries) => {
                let mut map = serializer.serialize_map(Some(entries.len()))?;
                for (key, value) in entries {
                    map.serialize_entry(key, value)?;
                }
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Json, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Json, E> {
        Ok(Json::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Json, E> {
        Ok(Json::from(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Json, E> {
        Ok(Json::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Json, E> {
        Ok(Json::from(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Json, E> {
        Ok(Json::from(v))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Json, E> {
        Ok(Json::String(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Json, D::Error> {
        Json::deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut object = Json::object();
        while let Some((key, value)) = map.next_entry::<String, Json>()? {
            object.set(&key, value);
        }
        Ok(object)
    }
}

// ---- field tables <-> JSON --------------------------------------------------------------

/// A field table as the management API shows it: an object, entries in table order.
pub fn table_to_json(table: &FieldTable) -> Json {
    Json::Object(
        table
            .iter()
            .map(|(k, v)| (k.to_str_lossy().into_owned(), value_to_json(v)))
            .collect(),
    )
}

/// One field value as JSON: numbers as numbers, strings as strings (lossy UTF-8), a decimal
/// as its numeric value, a timestamp as seconds, void as null.
pub fn value_to_json(value: &FieldValue) -> Json {
    match value {
        FieldValue::Bool(v) => Json::Bool(*v),
        FieldValue::I8(v) => Json::from(*v),
        FieldValue::U8(v) => Json::from(*v),
        FieldValue::I16(v) => Json::from(*v),
        FieldValue::U16(v) => Json::from(*v),
        FieldValue::I32(v) => Json::from(*v),
        FieldValue::U32(v) => Json::from(*v),
        FieldValue::I64(v) => Json::from(*v),
        FieldValue::U64(v) => Json::from(*v),
        FieldValue::F32(v) => Json::from(f64::from(*v)),
        FieldValue::F64(v) => Json::from(*v),
        FieldValue::Decimal(Decimal { scale, value }) => {
            Json::from(f64::from(*value) / 10f64.powi(i32::from(*scale)))
        }
        FieldValue::LongString(s) => Json::String(s.to_str_lossy().into_owned()),
        FieldValue::ByteArray(b) => Json::String(String::from_utf8_lossy(b).into_owned()),
        FieldValue::Array(items) => Json::Array(items.iter().map(value_to_json).collect()),
        FieldValue::Timestamp(t) => Json::from(*t),
        FieldValue::Table(t) => table_to_json(t),
        FieldValue::Void => Json::Null,
    }
}

/// A JSON object as a field table, as RabbitMQ converts declare arguments and message
/// headers: integers become `long` (64-bit signed), other numbers `double`, strings
/// `longstr`, arrays arrays, objects tables, null void. None if `json` is not an object.
pub fn json_to_table(json: &Json) -> Option<FieldTable> {
    let entries = json.as_object()?;
    let mut table = FieldTable::new();
    for (key, value) in entries {
        table.insert(key.as_str(), json_to_value(value));
    }
    Some(table)
}

/// One JSON value as a field value (see [`json_to_table`]).
pub fn json_to_value(json: &Json) -> FieldValue {
    match json {
        Json::Null => FieldValue::Void,
        Json::Bool(b) => FieldValue::Bool(*b),
        Json::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => FieldValue::I64(i),
            (None, Some(u), _) => FieldValue::U64(u),
            (None, None, Some(f)) => FieldValue::F64(f),
            (None, None, None) => FieldValue::Void,
        },
        Json::String(s) => FieldValue::LongString(LongString::from(s.as_str())),
        Json::Array(items) => {
            FieldValue::Array(FieldArray(items.iter().map(json_to_value).collect()))
        }
        Json::Object(_) => FieldValue::Table(json_to_table(json).unwrap_or_default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_keys_keep_insertion_order_through_text() {
        let text = r#"{"z":1,"a":{"y":true,"b":null},"m":[1.5,"s"]}"#;
        let json = Json::parse(text.as_bytes()).unwrap();
        assert_eq!(json.to_text(), text);
        assert_eq!(json.path("a.y"), Some(&Json::Bool(true)));
    }

    #[test]
    fn set_replaces_an_existing_key_in_place() {
        let json = Json::object()
            .with("a", 1u32)
            .with("b", 2u32)
            .with("a", 3u32);
        assert_eq!(json.to_text(), r#"{"a":3,"b":2}"#);
    }

    #[test]
    fn table_round_trips_as_rabbitmq_converts_it() {
        let json = Json::parse(
            br#"{"x-max-length":10,"x-queue-type":"classic","t":{"n":-1},"l":[true,null],"f":0.5}"#,
        )
        .unwrap();
        let table = json_to_table(&json).unwrap();
        assert_eq!(table.get("x-max-length"), Some(&FieldValue::I64(10)));
        assert_eq!(
            table.get("x-queue-type"),
            Some(&FieldValue::from("classic"))
        );
        assert_eq!(table.get("f"), Some(&FieldValue::F64(0.5)));
        assert_eq!(table_to_json(&table), json);
    }

    #[test]
    fn decimal_shows_its_numeric_value() {
        let value = FieldValue::Decimal(Decimal {
            scale: 1,
            value: 15,
        });
        assert_eq!(value_to_json(&value), Json::from(1.5));
    }
}
