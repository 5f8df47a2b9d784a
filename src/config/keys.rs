//! The keys the schema knows, read from the schema types themselves.
//!
//! serde's derive hands a deserializer the field names of every struct it reads
//! (`deserialize_struct(name, fields, visitor)`). [`Keys::of`] walks a schema type with a
//! deserializer that writes them down at each dotted path and feeds every field a stand-in
//! value, so the keys suggested for a misspelt one come from the same place as the keys serde
//! accepts, and a key added to the schema is known everywhere at once.

use serde::de::value::{Error, StrDeserializer};
use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess};
use serde::de::{Deserializer, Visitor};
use std::cell::RefCell;
use std::collections::BTreeMap;

/// A schema type's keys by the dotted path of the table that holds them: `""` for the type's
/// own, `allow.*` for those of every table in its `allow` list, `risk` for its `risk` table.
#[derive(Debug, Default)]
pub struct Keys(BTreeMap<String, &'static [&'static str]>);

impl Keys {
    pub fn of<T: DeserializeOwned>() -> Self {
        Self::walk::<T>().unwrap_or_else(|partial| partial)
    }

    /// The walk behind [`Keys::of`]; `Err` with the keys found so far when it met a type it
    /// cannot feed (an enum, say), which stops it there: the keys of the tables below that
    /// field, and after it in its table, stay unknown.
    pub fn walk<T: DeserializeOwned>() -> Result<Self, Self> {
        let found = RefCell::new(BTreeMap::new());
        // Only the structs passed through matter, not the value built from the stand-ins.
        let walked = T::deserialize(Walk {
            path: String::new(),
            found: &found,
        });
        let keys = Keys(found.into_inner());
        match walked {
            Ok(_) => Ok(keys),
            Err(_) => Err(keys),
        }
    }

    /// The keys of the table at `path`, written as in the document (`allow.2`); none where
    /// the schema has a map (whose keys are the operator's) or nothing at all.
    pub fn at(&self, path: &str) -> &'static [&'static str] {
        let pattern: Vec<&str> = path
            .split('.')
            .filter(|s| !s.is_empty())
            .map(|s| {
                if s.bytes().all(|b| b.is_ascii_digit()) {
                    "*"
                } else {
                    s
                }
            })
            .collect();
        self.0.get(&pattern.join(".")).copied().unwrap_or(&[])
    }

    /// Every key as a dotted pattern (`listen`, `allow.*.spiffe`).
    #[cfg(test)]
    pub fn paths(&self) -> impl Iterator<Item = String> + '_ {
        self.0.iter().flat_map(|(table, keys)| {
            keys.iter().map(move |key| match table.as_str() {
                "" => (*key).to_owned(),
                table => format!("{table}.{key}"),
            })
        })
    }
}

/// The deserializer that walks a schema type, at one dotted path.
struct Walk<'a> {
    path: String,
    found: &'a RefCell<BTreeMap<String, &'static [&'static str]>>,
}

impl<'a> Walk<'a> {
    fn below(&self, key: &str) -> Walk<'a> {
        Walk {
            path: match self.path.as_str() {
                "" => key.to_owned(),
                path => format!("{path}.{key}"),
            },
            found: self.found,
        }
    }
}

/// Methods that answer with a stand-in value of the type asked for.
macro_rules! stand_in {
    ($($method:ident => $visit:ident($($value:expr)?);)*) => {
        $(fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            visitor.$visit($($value)?)
        })*
    };
}

impl<'de> Deserializer<'de> for Walk<'_> {
    type Error = Error;

    stand_in! {
        deserialize_bool => visit_bool(false);
        deserialize_i8 => visit_u64(1);
        deserialize_i16 => visit_u64(1);
        deserialize_i32 => visit_u64(1);
        deserialize_i64 => visit_u64(1);
        deserialize_i128 => visit_u64(1);
        deserialize_u8 => visit_u64(1);
        deserialize_u16 => visit_u64(1);
        deserialize_u32 => visit_u64(1);
        deserialize_u64 => visit_u64(1);
        deserialize_u128 => visit_u64(1);
        deserialize_f32 => visit_f64(1.0);
        deserialize_f64 => visit_f64(1.0);
        deserialize_char => visit_char('1');
        // A string every string in the schema accepts: durations parse it too.
        deserialize_str => visit_str("1s");
        deserialize_string => visit_str("1s");
        deserialize_identifier => visit_str("1s");
        deserialize_bytes => visit_bytes(b"");
        deserialize_byte_buf => visit_bytes(b"");
        deserialize_unit => visit_unit();
        deserialize_ignored_any => visit_unit();
    }

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
        Err(de::Error::custom(format!(
            "{}: the walk needs to know the type",
            self.path
        )))
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_some(self)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    /// A list of one item, whose tables are written down at `path.*`.
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_seq(Item(Some(self.below("*"))))
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _: usize, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_any(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_any(visitor)
    }

    /// An empty map: a map's keys are the operator's, not the schema's.
    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_map(Fields {
            walk: self,
            fields: [].iter(),
            current: "",
        })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.found.borrow_mut().insert(self.path.clone(), fields);
        visitor.visit_map(Fields {
            walk: self,
            fields: fields.iter(),
            current: "",
        })
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_any(visitor)
    }
}

/// A struct's fields, each once, each with a walk below it as its value.
struct Fields<'a> {
    walk: Walk<'a>,
    fields: std::slice::Iter<'static, &'static str>,
    current: &'static str,
}

impl<'de> MapAccess<'de> for Fields<'_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some(&field) = self.fields.next() else {
            return Ok(None);
        };
        self.current = field;
        let key: StrDeserializer<'static, Error> = field.into_deserializer();
        seed.deserialize(key).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        seed.deserialize(self.walk.below(self.current))
    }
}

/// The one item of a walked list.
struct Item<'a>(Option<Walk<'a>>);

impl<'de> SeqAccess<'de> for Item<'_> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        self.0.take().map(|walk| seed.deserialize(walk)).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::schema::{RouteSection, ServerSection};

    #[test]
    fn keys_are_read_from_the_schema_at_every_depth() {
        let route = Keys::of::<RouteSection>();
        assert!(route.at("").contains(&"upgrades"), "{route:?}");
        assert!(route.at("allow.3").contains(&"spiffe"), "{route:?}");
        assert_eq!(route.at("risk"), ["low", "medium", "high"]);
        // Maps take any key.
        assert!(route.at("headers").is_empty());
        assert!(route.paths().any(|p| p == "allow.*.max_check_in_age"));
        let server = Keys::of::<ServerSection>();
        assert!(server.at("").contains(&"max_target_bytes"), "{server:?}");
        assert_eq!(server.at("proxy_protocol"), ["from", "timeout"]);
        assert_eq!(server.paths().count(), server.at("").len() + 2);
    }
}
