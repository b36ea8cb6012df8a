//! JSON read the way Go's `encoding/json` reads it into a struct, for
//! surfaces whose original server was written in Go (Portainer): an
//! object's key matches a field of the struct exactly or, failing that,
//! case-insensitively; keys no field takes are ignored; `null` for a field
//! leaves it at its default. Map keys are data and stay as they are.
//!
//! ```
//! #[derive(serde::Deserialize, Default)]
//! #[serde(default)]
//! struct Auth {
//!     #[serde(rename = "Username")]
//!     username: String,
//!     #[serde(rename = "Password")]
//!     password: String,
//! }
//! let auth: Auth = berth_sdk::gojson::from_slice(br#"{"username":"admin","PASSWORD":"pw","x":1}"#).unwrap();
//! assert_eq!((auth.username.as_str(), auth.password.as_str()), ("admin", "pw"));
//! ```
//!
//! The type (usually with `#[serde(default)]`, as every Go field has its
//! zero value) decides the rest: a value of the wrong type is an error.

use serde::de::value::{MapDeserializer, SeqDeserializer};
use serde::de::{self, DeserializeOwned, IntoDeserializer, Visitor};
use serde::forward_to_deserialize_any;
use serde_json::{Map, Value};

/// Read `T` from JSON text by Go's rules.
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, serde_json::Error> {
    from_value(serde_json::from_slice(bytes)?)
}

/// Read `T` from a JSON value by Go's rules.
pub fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, serde_json::Error> {
    T::deserialize(Go(value))
}

/// A JSON value whose objects, read as structs, match keys the Go way.
struct Go(Value);

impl<'de> IntoDeserializer<'de, serde_json::Error> for Go {
    type Deserializer = Go;

    fn into_deserializer(self) -> Go {
        self
    }
}

/// Rename `object`'s keys to the `fields` they match, Go's way: an exact
/// match first, then the first key equal to a field but for ASCII case.
/// `null` values are dropped (Go leaves the field as it was).
fn match_fields(object: Map<String, Value>, fields: &[&str]) -> Map<String, Value> {
    let mut out = Map::new();
    for (key, value) in object {
        if value.is_null() {
            continue;
        }
        let name = if fields.contains(&key.as_str()) {
            key
        } else {
            match fields.iter().find(|f| f.eq_ignore_ascii_case(&key)) {
                Some(field) => field.to_string(),
                None => key,
            }
        };
        out.entry(name).or_insert(value);
    }
    out
}

fn visit_object<'de, V: Visitor<'de>>(
    object: Map<String, Value>,
    visitor: V,
) -> Result<V::Value, serde_json::Error> {
    let mut entries = MapDeserializer::new(object.into_iter().map(|(k, v)| (k, Go(v))));
    let value = visitor.visit_map(&mut entries)?;
    entries.end()?;
    Ok(value)
}

impl<'de> de::Deserializer<'de> for Go {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Object(object) => visit_object(object, visitor),
            Value::Array(items) => {
                let mut items = SeqDeserializer::new(items.into_iter().map(Go));
                let value = visitor.visit_seq(&mut items)?;
                items.end()?;
                Ok(value)
            }
            other => other.deserialize_any(visitor),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Object(object) => {
                // Exact keys first: `{"Name":1,"name":2}` gives `Name` 1
                // whatever the order (Go takes the last in the text, which a
                // parsed object no longer has).
                let (exact, folded): (Map<String, Value>, Map<String, Value>) = object
                    .into_iter()
                    .partition(|(k, _)| fields.contains(&k.as_str()));
                let mut object = match_fields(exact, fields);
                for (k, v) in match_fields(folded, fields) {
                    object.entry(k).or_insert(v);
                }
                visit_object(object, visitor)
            }
            other => other.deserialize_struct(name, fields, visitor),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            other => visitor.visit_some(Go(other)),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_enum(name, variants, visitor)
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map identifier
        ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::collections::BTreeMap;

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(default)]
    struct Pair {
        name: String,
        value: String,
    }

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(default, rename_all = "PascalCase")]
    struct Body {
        name: String,
        endpoint_id: u32,
        env: Vec<Pair>,
        labels: BTreeMap<String, String>,
        public: Option<bool>,
        inner: Option<Box<Body>>,
    }

    #[test]
    fn keys_match_fields_whatever_their_case_at_every_depth() {
        let body: Body = from_slice(
            br#"{"name":"web","ENDPOINTID":3,"Env":[{"NAME":"a","Value":"1"}],
                 "labels":{"Mixed.Case":"kept"},"public":true,"unknown":[1,2],
                 "inner":{"nAmE":"deep"}}"#,
        )
        .unwrap();
        assert_eq!(body.name, "web");
        assert_eq!(body.endpoint_id, 3);
        assert_eq!(
            body.env,
            vec![Pair {
                name: "a".into(),
                value: "1".into()
            }]
        );
        assert_eq!(body.labels["Mixed.Case"], "kept", "map keys are data");
        assert_eq!(body.public, Some(true));
        assert_eq!(body.inner.unwrap().name, "deep");
    }

    #[test]
    fn an_exact_key_wins_and_null_leaves_the_default() {
        let body: Body =
            from_slice(br#"{"name":"folded","Name":"exact","EndpointID":null}"#).unwrap();
        assert_eq!(body.name, "exact");
        assert_eq!(body.endpoint_id, 0);
        let body: Body = from_slice(br#"{"Name":"exact","name":"folded"}"#).unwrap();
        assert_eq!(body.name, "exact");
    }

    #[test]
    fn a_value_of_the_wrong_type_is_an_error() {
        let err = from_slice::<Body>(br#"{"EndpointID":"three"}"#).unwrap_err();
        assert!(err.to_string().contains("invalid type"), "{err}");
        assert!(from_slice::<Body>(b"[1]").is_err());
        assert!(from_slice::<Body>(b"{").is_err());
    }
}
