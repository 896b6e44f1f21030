//! [`super::to_redacted_string`] without building a [`serde_json::Value`] first: a serializer
//! that writes JSON text directly, blanking secrets as it goes.
//!
//! Its output is byte for byte what `serde_json::to_value`, [`super::redact`] and
//! `serde_json::to_string` give (the test module holds it to that): object keys in the
//! order a `Value`'s map keeps them (sorted by their bytes; of a key given twice, the last),
//! numbers as a `Value` holds them (`f32` widened to `f64`, a non-finite float as `null`,
//! 128-bit integers only within 64 bits), a secret key's value `"[redacted]"` unless it is
//! `null`, and every string holding a PEM private key `"[redacted]"`. Anything it does not
//! write the way a `Value` would (serde_json's raw values) is refused with [`Unsupported`],
//! and the caller takes the `Value` path instead.
//!
//! Building the `Value` allocated every key and string of an event once more, then freed
//! them: it was a sixth of the host's ingest path. Here everything is written into one
//! buffer: an object's entries (each key's text, then its value's JSON) are written where
//! the object goes, then sorted and rewritten in place through a scratch buffer shared by
//! the whole value, so a call allocates a few buffers whatever the value holds.

use std::ops::Range;

use serde::ser::{self, Impossible, Serialize};

use super::{is_private_key_text, is_secret_key_bytes, REDACTED};

/// The name serde_json gives its raw values' struct, which a `Value` parses.
const RAW_VALUE_TOKEN: &str = "$serde_json::private::RawValue";

/// Why the direct path gave up: the value holds something only the `Value` path writes
/// exactly (a raw value).
pub(super) const UNSUPPORTED: &str = "keel-redact: unsupported by the direct writer";

/// The most a thread's buffers keep between two calls.
const KEEP_BYTES: usize = 64 << 10;

thread_local! {
    /// The buffers of the calls on this thread, kept from one call to the next.
    static BUFFERS: std::cell::RefCell<Ctx> = const {
        std::cell::RefCell::new(Ctx {
            out: Vec::new(),
            entries: Vec::new(),
            tmp: Vec::new(),
        })
    };
}

/// `t` as redacted JSON.
pub(super) fn write<T: Serialize + ?Sized>(t: &T) -> serde_json::Result<Vec<u8>> {
    let run = |cx: &mut Ctx| {
        cx.out.clear();
        cx.entries.clear();
        let r = t.serialize(W { cx }).map(|()| cx.out.as_slice().to_vec());
        // One large value does not keep its buffers' size for the thread's life.
        if cx.out.capacity() > KEEP_BYTES || cx.tmp.capacity() > KEEP_BYTES {
            *cx = Ctx {
                out: Vec::new(),
                entries: Vec::new(),
                tmp: Vec::new(),
            };
        }
        r
    };
    BUFFERS.with(|b| match b.try_borrow_mut() {
        Ok(mut cx) => run(&mut cx),
        // A `Serialize` that redacts something itself: fresh buffers for the inner call.
        Err(_) => run(&mut Ctx {
            out: Vec::new(),
            entries: Vec::new(),
            tmp: Vec::new(),
        }),
    })
}

/// An error of this serializer.
fn custom(msg: &str) -> serde_json::Error {
    ser::Error::custom(msg)
}

/// A JSON string, escaped as serde_json escapes it.
fn string(out: &mut Vec<u8>, s: &str) -> serde_json::Result<()> {
    serde_json::to_writer(out, s)
}

/// A string value: `"[redacted]"` when it holds a private key.
fn string_value(out: &mut Vec<u8>, s: &str) -> serde_json::Result<()> {
    string(out, if is_private_key_text(s) { REDACTED } else { s })
}

/// The buffers of one call.
struct Ctx {
    /// The JSON written so far; an object not yet ended holds its entries' text here, each
    /// key unescaped and followed by its value's JSON.
    out: Vec<u8>,
    /// The entries of the objects not yet ended (innermost last): key and value, as ranges
    /// of `out`.
    entries: Vec<(Range<usize>, Range<usize>)>,
    /// Where an ending object is written in key order, before it replaces its entries.
    tmp: Vec<u8>,
}

/// Where an object began: in `out`, and in `entries`.
#[derive(Clone, Copy)]
struct Mark {
    start: usize,
    first: usize,
}

impl Ctx {
    /// Begins an object.
    fn open(&self) -> Mark {
        Mark {
            start: self.out.len(),
            first: self.entries.len(),
        }
    }

    /// Writes an entry's key text; its value follows.
    fn key(&mut self, key: &str) -> Range<usize> {
        let start = self.out.len();
        self.out.extend_from_slice(key.as_bytes());
        start..self.out.len()
    }

    /// One entry of an object: its key, then its value.
    fn field<T: Serialize + ?Sized>(&mut self, key: &str, v: &T) -> serde_json::Result<()> {
        let key = self.key(key);
        v.serialize(W { cx: self })?;
        self.push(key);
        Ok(())
    }

    /// One element of an array (`first`: none was written yet).
    fn element<T: Serialize + ?Sized>(
        &mut self,
        first: &mut bool,
        v: &T,
    ) -> serde_json::Result<()> {
        if !*first {
            self.out.push(b',');
        }
        *first = false;
        v.serialize(W { cx: self })
    }

    /// Ends the entry whose key is at `key` and whose value follows it, up to the end of
    /// `out`; a secret key's value, unless `null`, becomes `"[redacted]"` (it was serialized
    /// all the same: its errors are the `Value` path's too).
    fn push(&mut self, key: Range<usize>) {
        let start = key.end;
        if is_secret_key_bytes(&self.out[key.clone()]) && &self.out[start..] != b"null" {
            self.out.truncate(start);
            // Writing into a `Vec` cannot fail.
            let _ = string(&mut self.out, REDACTED);
        }
        self.entries.push((key, start..self.out.len()));
    }

    /// Ends the object begun at `m`: its entries, sorted by key (stable: of a key given
    /// twice, the last is kept, as a `Value`'s map keeps one entry per key), replace their
    /// text.
    fn close(&mut self, m: Mark) {
        let Ctx { out, entries, tmp } = self;
        let mine = &mut entries[m.first..];
        mine.sort_by(|a, b| out[a.0.clone()].cmp(&out[b.0.clone()]));
        tmp.clear();
        tmp.push(b'{');
        let mut first = true;
        for (i, (k, v)) in mine.iter().enumerate() {
            let key = &out[k.clone()];
            if mine
                .get(i + 1)
                .is_some_and(|(next, _)| &out[next.clone()] == key)
            {
                continue;
            }
            if !first {
                tmp.push(b',');
            }
            first = false;
            // The key's bytes came from a `str`.
            let _ = string(tmp, std::str::from_utf8(key).unwrap_or_default());
            tmp.push(b':');
            tmp.extend_from_slice(&out[v.clone()]);
        }
        tmp.push(b'}');
        out.truncate(m.start);
        out.extend_from_slice(tmp);
        entries.truncate(m.first);
    }
}

/// Writes one value.
struct W<'a> {
    cx: &'a mut Ctx,
}

/// A string of at most 64 bytes on the stack, for `collect_str` (timestamps).
struct Small {
    buf: [u8; 64],
    len: usize,
}

impl std::fmt::Write for Small {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        self.buf
            .get_mut(self.len..end)
            .ok_or(std::fmt::Error)?
            .copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

impl<'a> ser::Serializer for W<'a> {
    type Ok = ();
    type Error = serde_json::Error;
    type SerializeSeq = Seq<'a>;
    type SerializeTuple = Seq<'a>;
    type SerializeTupleStruct = Seq<'a>;
    type SerializeTupleVariant = TupleVariant<'a>;
    type SerializeMap = Map<'a>;
    type SerializeStruct = Map<'a>;
    type SerializeStructVariant = StructVariant<'a>;

    fn serialize_bool(self, v: bool) -> serde_json::Result<()> {
        serde_json::to_writer(&mut self.cx.out, &v)
    }
    fn serialize_i8(self, v: i8) -> serde_json::Result<()> {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i16(self, v: i16) -> serde_json::Result<()> {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i32(self, v: i32) -> serde_json::Result<()> {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i64(self, v: i64) -> serde_json::Result<()> {
        serde_json::to_writer(&mut self.cx.out, &v)
    }
    fn serialize_i128(self, v: i128) -> serde_json::Result<()> {
        // A `Value` holds 64-bit numbers only (without serde_json's arbitrary precision).
        if let Ok(v) = u64::try_from(v) {
            self.serialize_u64(v)
        } else if let Ok(v) = i64::try_from(v) {
            self.serialize_i64(v)
        } else {
            Err(custom("number out of range"))
        }
    }
    fn serialize_u8(self, v: u8) -> serde_json::Result<()> {
        self.serialize_u64(u64::from(v))
    }
    fn serialize_u16(self, v: u16) -> serde_json::Result<()> {
        self.serialize_u64(u64::from(v))
    }
    fn serialize_u32(self, v: u32) -> serde_json::Result<()> {
        self.serialize_u64(u64::from(v))
    }
    fn serialize_u64(self, v: u64) -> serde_json::Result<()> {
        serde_json::to_writer(&mut self.cx.out, &v)
    }
    fn serialize_u128(self, v: u128) -> serde_json::Result<()> {
        match u64::try_from(v) {
            Ok(v) => self.serialize_u64(v),
            Err(_) => Err(custom("number out of range")),
        }
    }
    fn serialize_f32(self, v: f32) -> serde_json::Result<()> {
        self.serialize_f64(f64::from(v))
    }
    fn serialize_f64(self, v: f64) -> serde_json::Result<()> {
        // Non-finite: `null`, as in a `Value`.
        serde_json::to_writer(&mut self.cx.out, &v)
    }
    fn serialize_char(self, v: char) -> serde_json::Result<()> {
        self.serialize_str(v.encode_utf8(&mut [0; 4]))
    }
    fn serialize_str(self, v: &str) -> serde_json::Result<()> {
        string_value(&mut self.cx.out, v)
    }
    fn collect_str<T: std::fmt::Display + ?Sized>(self, v: &T) -> serde_json::Result<()> {
        use std::fmt::Write as _;
        let mut small = Small {
            buf: [0; 64],
            len: 0,
        };
        if write!(small, "{v}").is_ok() {
            // Whole `str`s were copied in: valid UTF-8.
            let text = std::str::from_utf8(&small.buf[..small.len]).unwrap_or_default();
            return self.serialize_str(text);
        }
        self.serialize_str(&v.to_string())
    }
    fn serialize_bytes(self, v: &[u8]) -> serde_json::Result<()> {
        let mut seq = Seq::open(self.cx);
        for b in v {
            seq.element(b)?;
        }
        seq.close();
        Ok(())
    }
    fn serialize_none(self) -> serde_json::Result<()> {
        self.serialize_unit()
    }
    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> serde_json::Result<()> {
        v.serialize(self)
    }
    fn serialize_unit(self) -> serde_json::Result<()> {
        self.cx.out.extend_from_slice(b"null");
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> serde_json::Result<()> {
        self.serialize_unit()
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> serde_json::Result<()> {
        self.serialize_str(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        v: &T,
    ) -> serde_json::Result<()> {
        if name == RAW_VALUE_TOKEN {
            return Err(custom(UNSUPPORTED));
        }
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        v: &T,
    ) -> serde_json::Result<()> {
        // `{"variant": v}`: an object of one key, redacted like any other.
        let m = self.cx.open();
        self.cx.field(variant, v)?;
        self.cx.close(m);
        Ok(())
    }
    fn serialize_seq(self, _: Option<usize>) -> serde_json::Result<Seq<'a>> {
        Ok(Seq::open(self.cx))
    }
    fn serialize_tuple(self, _: usize) -> serde_json::Result<Seq<'a>> {
        Ok(Seq::open(self.cx))
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> serde_json::Result<Seq<'a>> {
        Ok(Seq::open(self.cx))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> serde_json::Result<TupleVariant<'a>> {
        let outer = self.cx.open();
        let key = self.cx.key(variant);
        self.cx.out.push(b'[');
        Ok(TupleVariant {
            cx: self.cx,
            outer,
            key,
            first: true,
        })
    }
    fn serialize_map(self, _: Option<usize>) -> serde_json::Result<Map<'a>> {
        let mark = self.cx.open();
        Ok(Map {
            cx: self.cx,
            mark,
            key: None,
        })
    }
    fn serialize_struct(self, name: &'static str, _: usize) -> serde_json::Result<Map<'a>> {
        if name == RAW_VALUE_TOKEN {
            return Err(custom(UNSUPPORTED));
        }
        self.serialize_map(None)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> serde_json::Result<StructVariant<'a>> {
        let outer = self.cx.open();
        let key = self.cx.key(variant);
        let inner = self.cx.open();
        Ok(StructVariant {
            cx: self.cx,
            outer,
            key,
            inner,
        })
    }
}

/// An array being written.
pub(super) struct Seq<'a> {
    cx: &'a mut Ctx,
    first: bool,
}

impl<'a> Seq<'a> {
    fn open(cx: &'a mut Ctx) -> Seq<'a> {
        cx.out.push(b'[');
        Seq { cx, first: true }
    }

    fn element<T: Serialize + ?Sized>(&mut self, v: &T) -> serde_json::Result<()> {
        self.cx.element(&mut self.first, v)
    }

    fn close(self) {
        self.cx.out.push(b']');
    }
}

/// The three kinds of sequence, written alike.
macro_rules! seq_impl {
    ($trait:ident, $method:ident) => {
        impl ser::$trait for Seq<'_> {
            type Ok = ();
            type Error = serde_json::Error;
            fn $method<T: Serialize + ?Sized>(&mut self, v: &T) -> serde_json::Result<()> {
                self.element(v)
            }
            fn end(self) -> serde_json::Result<()> {
                self.close();
                Ok(())
            }
        }
    };
}
seq_impl!(SerializeSeq, serialize_element);
seq_impl!(SerializeTuple, serialize_element);
seq_impl!(SerializeTupleStruct, serialize_field);

/// A map or a struct being written.
pub(super) struct Map<'a> {
    cx: &'a mut Ctx,
    mark: Mark,
    /// A map's key, given before its value.
    key: Option<Range<usize>>,
}

impl ser::SerializeMap for Map<'_> {
    type Ok = ();
    type Error = serde_json::Error;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> serde_json::Result<()> {
        let start = self.cx.out.len();
        key.serialize(Key {
            out: &mut self.cx.out,
        })?;
        self.key = Some(start..self.cx.out.len());
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> serde_json::Result<()> {
        let key = self
            .key
            .take()
            .ok_or_else(|| custom("serialize_value called before serialize_key"))?;
        v.serialize(W { cx: self.cx })?;
        self.cx.push(key);
        Ok(())
    }
    fn end(self) -> serde_json::Result<()> {
        self.cx.close(self.mark);
        Ok(())
    }
}

impl ser::SerializeStruct for Map<'_> {
    type Ok = ();
    type Error = serde_json::Error;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        v: &T,
    ) -> serde_json::Result<()> {
        self.cx.field(key, v)
    }
    fn end(self) -> serde_json::Result<()> {
        self.cx.close(self.mark);
        Ok(())
    }
}

/// A tuple variant being written, `{"variant": [...]}`: an object of one key, redacted like
/// any other.
pub(super) struct TupleVariant<'a> {
    cx: &'a mut Ctx,
    outer: Mark,
    key: Range<usize>,
    first: bool,
}

impl ser::SerializeTupleVariant for TupleVariant<'_> {
    type Ok = ();
    type Error = serde_json::Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, v: &T) -> serde_json::Result<()> {
        self.cx.element(&mut self.first, v)
    }
    fn end(self) -> serde_json::Result<()> {
        self.cx.out.push(b']');
        self.cx.push(self.key);
        self.cx.close(self.outer);
        Ok(())
    }
}

/// A struct variant being written, `{"variant": {...}}`.
pub(super) struct StructVariant<'a> {
    cx: &'a mut Ctx,
    outer: Mark,
    key: Range<usize>,
    inner: Mark,
}

impl ser::SerializeStructVariant for StructVariant<'_> {
    type Ok = ();
    type Error = serde_json::Error;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        v: &T,
    ) -> serde_json::Result<()> {
        self.cx.field(key, v)
    }
    fn end(self) -> serde_json::Result<()> {
        self.cx.close(self.inner);
        self.cx.push(self.key);
        self.cx.close(self.outer);
        Ok(())
    }
}

/// An integer map key: its decimal text.
macro_rules! decimal_keys {
    ($($method:ident: $t:ty),*) => {
        $(fn $method(self, v: $t) -> serde_json::Result<()> {
            use std::io::Write as _;
            write!(self.out, "{v}").map_err(serde_json::Error::io)
        })*
    };
}

/// Writes a map key's text, unescaped, as a `Value`'s map would hold it: strings and chars
/// as they are, integers in decimal; booleans and floats are left to the `Value` path
/// ([`UNSUPPORTED`]); anything else is not a key.
struct Key<'a> {
    out: &'a mut Vec<u8>,
}

/// What a map key cannot be.
fn not_a_key() -> serde_json::Error {
    custom("key must be a string")
}

impl ser::Serializer for Key<'_> {
    type Ok = ();
    type Error = serde_json::Error;
    type SerializeSeq = Impossible<(), serde_json::Error>;
    type SerializeTuple = Impossible<(), serde_json::Error>;
    type SerializeTupleStruct = Impossible<(), serde_json::Error>;
    type SerializeTupleVariant = Impossible<(), serde_json::Error>;
    type SerializeMap = Impossible<(), serde_json::Error>;
    type SerializeStruct = Impossible<(), serde_json::Error>;
    type SerializeStructVariant = Impossible<(), serde_json::Error>;

    fn serialize_bool(self, _: bool) -> serde_json::Result<()> {
        // The text serde_json makes of it depends on its version: its own path decides.
        Err(custom(UNSUPPORTED))
    }
    decimal_keys!(
        serialize_i8: i8,
        serialize_i16: i16,
        serialize_i32: i32,
        serialize_i64: i64,
        serialize_i128: i128,
        serialize_u8: u8,
        serialize_u16: u16,
        serialize_u32: u32,
        serialize_u64: u64,
        serialize_u128: u128
    );
    fn serialize_f32(self, _: f32) -> serde_json::Result<()> {
        Err(custom(UNSUPPORTED))
    }
    fn serialize_f64(self, _: f64) -> serde_json::Result<()> {
        Err(custom(UNSUPPORTED))
    }
    fn serialize_char(self, v: char) -> serde_json::Result<()> {
        self.serialize_str(v.encode_utf8(&mut [0; 4]))
    }
    fn serialize_str(self, v: &str) -> serde_json::Result<()> {
        self.out.extend_from_slice(v.as_bytes());
        Ok(())
    }
    fn serialize_bytes(self, _: &[u8]) -> serde_json::Result<()> {
        Err(not_a_key())
    }
    fn serialize_none(self) -> serde_json::Result<()> {
        Err(not_a_key())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> serde_json::Result<()> {
        Err(not_a_key())
    }
    fn serialize_unit(self) -> serde_json::Result<()> {
        Err(not_a_key())
    }
    fn serialize_unit_struct(self, _: &'static str) -> serde_json::Result<()> {
        Err(not_a_key())
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> serde_json::Result<()> {
        self.serialize_str(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        v: &T,
    ) -> serde_json::Result<()> {
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> serde_json::Result<()> {
        Err(not_a_key())
    }
    fn serialize_seq(self, _: Option<usize>) -> serde_json::Result<Self::SerializeSeq> {
        Err(not_a_key())
    }
    fn serialize_tuple(self, _: usize) -> serde_json::Result<Self::SerializeTuple> {
        Err(not_a_key())
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> serde_json::Result<Self::SerializeTupleStruct> {
        Err(not_a_key())
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> serde_json::Result<Self::SerializeTupleVariant> {
        Err(not_a_key())
    }
    fn serialize_map(self, _: Option<usize>) -> serde_json::Result<Self::SerializeMap> {
        Err(not_a_key())
    }
    fn serialize_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> serde_json::Result<Self::SerializeStruct> {
        Err(not_a_key())
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> serde_json::Result<Self::SerializeStructVariant> {
        Err(not_a_key())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::{BTreeMap, HashMap};

    use proptest::prelude::*;
    use serde::Serialize;
    use serde_json::Value;

    use super::super::{to_redacted_string, via_value};

    /// Keys: secret ones in several spellings, ordinary ones, and ones that sort or escape
    /// oddly.
    fn key() -> BoxedStrategy<String> {
        prop_oneof![
            proptest::sample::select(vec![
                "password",
                "adminPassword",
                "Admin_Password",
                "x-api-key",
                "token",
                "sasUrl",
                "customData",
                "id",
                "name",
                "Name",
                "",
                "é",
                "a\"b",
                "line\nbreak",
                "zeta",
                "alpha",
                "10",
                "9",
                "secrets",
                "tokens",
            ])
            .prop_map(String::from),
            "[a-zA-Z_\\-]{0,12}",
            any::<String>(),
        ]
        .boxed()
    }

    fn leaf() -> BoxedStrategy<Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            proptest::sample::select(vec![
                "[redacted]",
                "-----BEGIN RSA PRIVATE KEY-----\nMII\n-----END RSA PRIVATE KEY-----",
                "ok",
                "\u{0}\u{1f}\"\\",
            ])
            .prop_map(Value::from),
            any::<String>().prop_map(Value::from),
        ]
        .boxed()
    }

    fn value() -> BoxedStrategy<Value> {
        leaf()
            .prop_recursive(4, 48, 6, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                    proptest::collection::vec((key(), inner), 0..6)
                        .prop_map(|kv| Value::Object(kv.into_iter().collect())),
                ]
            })
            .boxed()
    }

    /// Every shape serde gives a serializer: fields out of order, options, maps of several
    /// key types (a `HashMap` in no order), a flattened map whose keys may repeat a field's,
    /// and every kind of enum variant.
    #[derive(Serialize, Debug, Clone)]
    struct Typed {
        zeta: Option<String>,
        alpha: Vec<Variant>,
        #[serde(skip_serializing_if = "Option::is_none")]
        mid: Option<f64>,
        narrow: f32,
        letter: char,
        wide: i128,
        unsigned: u128,
        password: Option<Value>,
        by_name: HashMap<String, Value>,
        by_number: BTreeMap<i32, String>,
        unit: (),
        pair: (u8, String),
        shown: Shown,
        #[serde(flatten)]
        rest: BTreeMap<String, Value>,
    }

    /// A value serialized through its `Display` (as timestamps are).
    #[derive(Debug, Clone)]
    struct Shown(String);

    impl Serialize for Shown {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_str(&self.0)
        }
    }

    #[derive(Serialize, Debug, Clone)]
    enum Variant {
        Unit,
        Secret(String),
        Tuple(i32, String),
        Token { data: Value, b: u8 },
        Plain { password: String },
    }

    fn variant() -> BoxedStrategy<Variant> {
        prop_oneof![
            Just(Variant::Unit),
            any::<String>().prop_map(Variant::Secret),
            (any::<i32>(), any::<String>()).prop_map(|(a, b)| Variant::Tuple(a, b)),
            (value(), any::<u8>()).prop_map(|(data, b)| Variant::Token { data, b }),
            any::<String>().prop_map(|password| Variant::Plain { password }),
        ]
        .boxed()
    }

    prop_compose! {
        fn typed()(
            zeta in proptest::option::of(any::<String>()),
            alpha in proptest::collection::vec(variant(), 0..4),
            mid in proptest::option::of(any::<f64>()),
            narrow in any::<f32>(),
            letter in any::<char>(),
            // Mostly within 64 bits: beyond, both paths refuse the whole value.
            wide in prop_oneof![
                20 => any::<i64>().prop_map(i128::from),
                1 => any::<i128>(),
            ],
            unsigned in prop_oneof![
                20 => any::<u64>().prop_map(u128::from),
                1 => any::<u128>(),
            ],
            password in proptest::option::of(value()),
            by_name in proptest::collection::hash_map(key(), value(), 0..5),
            by_number in proptest::collection::btree_map(any::<i32>(), any::<String>(), 0..4),
            pair in (any::<u8>(), any::<String>()),
            // Short (written on the stack) and long.
            shown in prop_oneof![".{0,20}", ".{60,90}"].prop_map(Shown),
            rest in proptest::collection::btree_map(key(), value(), 0..4),
        ) -> Typed {
            Typed {
                zeta, alpha, mid, narrow, letter, wide, unsigned, password, by_name,
                by_number, unit: (), pair, shown, rest,
            }
        }
    }

    /// Both paths: equal text, or both an error.
    fn same<T: Serialize>(t: &T) -> Result<(), TestCaseError> {
        let direct = to_redacted_string(t).map_err(|e| e.to_string());
        let reference = via_value(t).map_err(|e| e.to_string());
        prop_assert_eq!(
            direct.is_ok(),
            reference.is_ok(),
            "{:?} {:?}",
            direct,
            reference
        );
        if let (Ok(a), Ok(b)) = (direct, reference) {
            prop_assert_eq!(a, b);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn any_value_is_written_as_the_value_path_writes_it(v in value()) {
            same(&v)?;
        }

        #[test]
        fn any_typed_value_is_written_as_the_value_path_writes_it(t in typed()) {
            same(&t)?;
        }
    }

    /// The capacity of this thread's kept buffers (`out`, `tmp`).
    fn kept() -> (usize, usize) {
        super::BUFFERS.with(|b| {
            let cx = b.borrow();
            (cx.out.capacity(), cx.tmp.capacity())
        })
    }

    #[test]
    fn a_thread_keeps_its_buffers_between_values_but_not_a_large_ones() {
        let small = serde_json::json!({"b": 1, "a": [1, 2]});
        to_redacted_string(&small).unwrap();
        let (out, tmp) = kept();
        assert!(out > 0 && tmp > 0, "kept: {out}, {tmp}");
        // A large string alone: only `out` grows past the bound.
        to_redacted_string(&"x".repeat(super::KEEP_BYTES * 2)).unwrap();
        assert!(kept().0 <= super::KEEP_BYTES, "{:?}", kept());
        // A large object: `tmp` grows too.
        to_redacted_string(&serde_json::json!({"k": "x".repeat(super::KEEP_BYTES * 2)})).unwrap();
        let (out, tmp) = kept();
        assert!(
            out <= super::KEEP_BYTES && tmp <= super::KEEP_BYTES,
            "{out}, {tmp}"
        );
        // Below the bound, both are kept.
        to_redacted_string(&serde_json::json!({"k": "x".repeat(super::KEEP_BYTES / 4)})).unwrap();
        let (out, tmp) = kept();
        assert!(
            out >= super::KEEP_BYTES / 4 && tmp >= super::KEEP_BYTES / 4,
            "{out}, {tmp}"
        );
    }

    /// A map whose keys are floats.
    struct FloatKeys(Vec<(f64, &'static str)>);

    impl Serialize for FloatKeys {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_map(self.0.iter().copied())
        }
    }

    /// A value whose serialization redacts another value itself.
    struct Reentrant;

    impl Serialize for Reentrant {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let inner = to_redacted_string(&serde_json::json!({"password": "x", "b": 1}))
                .map_err(serde::ser::Error::custom)?;
            s.collect_map([("z", inner.as_str()), ("a", "-")])
        }
    }

    #[test]
    fn a_value_that_redacts_while_being_redacted_gets_buffers_of_its_own() {
        same(&Reentrant).unwrap();
        assert_eq!(
            to_redacted_string(&Reentrant).unwrap(),
            r#"{"a":"-","z":"{\"b\":1,\"password\":\"[redacted]\"}"}"#
        );
    }

    #[test]
    fn float_and_bool_map_keys_are_written_as_the_value_path_writes_them() {
        same(&FloatKeys(vec![
            (0.5, "x"),
            (-1.0, "password"),
            (1e300, "y"),
        ]))
        .unwrap();
        same(&FloatKeys(vec![(f64::NAN, "x")])).unwrap();
        same(&HashMap::from([(true, "x"), (false, "password")])).unwrap();
    }
}
