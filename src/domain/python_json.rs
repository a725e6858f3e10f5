//! Aether's cache text, byte for byte: what Python's `json.dumps` (default
//! arguments: `", "` / `": "` separators, `ensure_ascii=True`, floats by
//! `repr`) and `datetime.isoformat()` write, and a JSON value that keeps
//! object members in document order as a Python `dict` does.

use std::fmt::{self, Write as _};
use std::io::{self, Write};

use chrono::{DateTime, FixedOffset, NaiveDateTime, Offset as _, Timelike, Utc};
use serde::Serialize;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// A JSON value as Python's `json.loads` holds it: integers stay integers,
/// and object members keep their first position (a repeated key keeps the
/// last value, as in a `dict`).
#[derive(Clone, Debug, PartialEq)]
pub enum OrderedJson {
    /// `null`.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// A number written without fraction or exponent.
    Int(i128),
    /// Any other number.
    Float(f64),
    /// A string.
    String(String),
    /// An array.
    Array(Vec<OrderedJson>),
    /// An object, members in document order.
    Object(Vec<(String, OrderedJson)>),
}

impl OrderedJson {
    /// Parses JSON text.
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// The text `json.dumps` writes for this value.
    pub fn dumps(&self) -> String {
        let mut out = String::new();
        self.write_to(&mut out);
        out
    }

    /// Appends the `json.dumps` text of this value to `out`.
    pub fn write_to(&self, out: &mut String) {
        match self {
            Self::Null => out.push_str("null"),
            Self::Bool(value) => write_bool(out, *value),
            Self::Int(value) => {
                let _ = write!(out, "{value}");
            }
            Self::Float(value) => write_float(out, *value),
            Self::String(value) => write_str(out, value),
            Self::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    item.write_to(out);
                }
                out.push(']');
            }
            Self::Object(members) => {
                out.push('{');
                for (i, (key, value)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    write_str(out, key);
                    out.push_str(": ");
                    value.write_to(out);
                }
                out.push('}');
            }
        }
    }
}

impl<'de> Deserialize<'de> for OrderedJson {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(OrderedJsonVisitor)
    }
}

struct OrderedJsonVisitor;

impl<'de> Visitor<'de> for OrderedJsonVisitor {
    type Value = OrderedJson;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(OrderedJson::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(OrderedJson::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<Self::Value, E> {
        Ok(OrderedJson::Bool(value))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Self::Value, E> {
        Ok(OrderedJson::Int(value.into()))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
        Ok(OrderedJson::Int(value.into()))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Self::Value, E> {
        Ok(OrderedJson::Float(value))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
        Ok(OrderedJson::String(value.to_owned()))
    }

    fn visit_string<E: de::Error>(self, value: String) -> Result<Self::Value, E> {
        Ok(OrderedJson::String(value))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(OrderedJson::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut members: Vec<(String, OrderedJson)> = Vec::new();
        while let Some((key, value)) = map.next_entry::<String, OrderedJson>()? {
            match members.iter_mut().find(|(k, _)| *k == key) {
                Some(member) => member.1 = value,
                None => members.push((key, value)),
            }
        }
        Ok(OrderedJson::Object(members))
    }
}

/// Appends `true` / `false`.
pub fn write_bool(out: &mut String, value: bool) {
    out.push_str(if value { "true" } else { "false" });
}

/// Appends `value` as a JSON string with `ensure_ascii=True`: `"` and `\`
/// escaped, `\b \f \n \r \t` by name, every other character outside
/// `' '..='~'` as `\uXXXX` (lower-case hex; UTF-16 surrogate pairs above
/// U+FFFF).
pub fn write_str(out: &mut String, value: &str) {
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
    }
    out.push('"');
}

/// Appends `value` as Python's `float.__repr__` writes it (what `json.dumps`
/// uses): the shortest round-trip digits, positional for decimal exponents
/// -4..16 (always with a fraction, `1.0`), scientific otherwise with a signed
/// two-digit-minimum exponent (`1e-05`, `1.5e+16`); `NaN`, `Infinity`.
pub fn write_float(out: &mut String, value: f64) {
    if value.is_nan() {
        out.push_str("NaN");
        return;
    }
    if value.is_infinite() {
        out.push_str(if value > 0.0 { "Infinity" } else { "-Infinity" });
        return;
    }
    if value.is_sign_negative() {
        out.push('-');
    }
    // Rust's `{:e}` gives the shortest round-trip digits, e.g. `1.2345e-5`,
    // but breaks a tie between two such strings upwards where Python takes
    // the one nearer the exact value (half to even), which is what the
    // correctly rounded `{:.N$e}` at that length gives; keep it when it
    // still round-trips.
    let abs = value.abs();
    let shortest = format!("{abs:e}");
    let significant = shortest
        .split('e')
        .next()
        .map_or(1, |m| m.chars().filter(char::is_ascii_digit).count());
    let nearest = format!("{abs:.*e}", significant.saturating_sub(1));
    let scientific = if nearest.parse::<f64>() == Ok(abs) {
        nearest
    } else {
        shortest
    };
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((scientific.as_str(), "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    if !(-4..16).contains(&exponent) {
        let sign = if exponent < 0 { '-' } else { '+' };
        let _ = write!(out, "{mantissa}e{sign}{:02}", exponent.unsigned_abs());
        return;
    }
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    if exponent < 0 {
        out.push_str("0.");
        for _ in 0..(-exponent - 1) {
            out.push('0');
        }
        out.push_str(&digits);
        return;
    }
    let int_len = exponent as usize + 1;
    if digits.len() <= int_len {
        out.push_str(&digits);
        for _ in digits.len()..int_len {
            out.push('0');
        }
        out.push_str(".0");
    } else {
        out.push_str(&digits[..int_len]);
        out.push('.');
        out.push_str(&digits[int_len..]);
    }
}

/// `datetime.isoformat()` of an aware datetime: `YYYY-MM-DDTHH:MM:SS`, then
/// `.ffffff` unless the microseconds are 0, then the offset `+HH:MM` (with
/// `:SS` when it has seconds). Sub-microsecond digits are dropped, as Python
/// never has them.
pub fn isoformat(value: &DateTime<FixedOffset>) -> String {
    let mut out = value.format("%Y-%m-%dT%H:%M:%S").to_string();
    let micros = (value.nanosecond() % 1_000_000_000) / 1_000;
    if micros != 0 {
        let _ = write!(out, ".{micros:06}");
    }
    let offset = value.offset().local_minus_utc();
    let sign = if offset < 0 { '-' } else { '+' };
    let offset = offset.unsigned_abs();
    let _ = write!(out, "{sign}{:02}:{:02}", offset / 3600, offset % 3600 / 60);
    if !offset.is_multiple_of(60) {
        let _ = write!(out, ":{:02}", offset % 60);
    }
    out
}

/// Reads what `isoformat()` wrote (and RFC 3339 generally). A value without
/// an offset (a naive Python datetime) is taken as UTC.
pub fn parse_isoformat(text: &str) -> Option<DateTime<FixedOffset>> {
    if let Ok(value) = DateTime::parse_from_rfc3339(text) {
        return Some(value);
    }
    if let Ok(value) = DateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f%:z") {
        return Some(value);
    }
    NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .map(|naive| naive.and_utc().with_timezone(&Utc.fix()))
}

/// serde_json formatter with Python `json.dumps` defaults.
struct PythonFormatter;

impl serde_json::ser::Formatter for PythonFormatter {
    fn begin_object_key<W: ?Sized + Write>(&mut self, writer: &mut W, first: bool) -> io::Result<()> {
        if first { Ok(()) } else { writer.write_all(b", ") }
    }

    fn begin_object_value<W: ?Sized + Write>(&mut self, writer: &mut W) -> io::Result<()> {
        writer.write_all(b": ")
    }

    fn begin_array_value<W: ?Sized + Write>(&mut self, writer: &mut W, first: bool) -> io::Result<()> {
        if first { Ok(()) } else { writer.write_all(b", ") }
    }

    fn write_f64<W: ?Sized + Write>(&mut self, writer: &mut W, value: f64) -> io::Result<()> {
        let mut text = String::new();
        write_float(&mut text, value);
        writer.write_all(text.as_bytes())
    }

    fn write_f32<W: ?Sized + Write>(&mut self, writer: &mut W, value: f32) -> io::Result<()> {
        self.write_f64(writer, f64::from(value))
    }

    // serde_json already escapes `"`, `\` and C0 controls as Python does;
    // `ensure_ascii` also escapes DEL and everything beyond ASCII.
    fn write_string_fragment<W: ?Sized + Write>(&mut self, writer: &mut W, fragment: &str) -> io::Result<()> {
        let mut units = [0u16; 2];
        for c in fragment.chars() {
            if (' '..='~').contains(&c) {
                writer.write_all(&[c as u8])?;
            } else {
                for unit in c.encode_utf16(&mut units) {
                    write!(writer, "\\u{unit:04x}")?;
                }
            }
        }
        Ok(())
    }
}

/// `value` as Python's `json.dumps(value)` text.
pub fn to_python_json<T: Serialize>(value: &T) -> String {
    let mut out = Vec::with_capacity(256);
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, PythonFormatter);
    // Plain data into a Vec: serialization cannot fail, and the formatter
    // writes ASCII only.
    if value.serialize(&mut serializer).is_err() {
        return String::new();
    }
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn float(value: f64) -> String {
        let mut out = String::new();
        write_float(&mut out, value);
        out
    }

    #[test]
    fn floats_match_python_repr() {
        // Expected values are Python 3's repr() of the same floats.
        let cases: [(f64, &str); 24] = [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (12.5, "12.5"),
            (0.1, "0.1"),
            (100.0, "100.0"),
            (0.0001, "0.0001"),
            (0.00012, "0.00012"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (1e15, "1000000000000000.0"),
            (9999999999999998.0, "9999999999999998.0"),
            (1e16, "1e+16"),
            (1.2345678901234568e17, "1.2345678901234568e+17"),
            (1e22, "1e+22"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (5e-324, "5e-324"),
            (123456.789, "123456.789"),
            (-3.25, "-3.25"),
            (628_661_958_223_826.0 + 0.25, "628661958223826.2"),
            (9_674_580_786_058.0 + 0.8125, "9674580786058.812"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "Infinity"),
            (f64::NEG_INFINITY, "-Infinity"),
        ];
        for (value, python) in cases {
            assert_eq!(float(value), python, "{value:?}");
        }
    }

    #[test]
    fn strings_are_ascii_escaped() {
        let mut out = String::new();
        write_str(&mut out, "a\"b\\c\n\t\u{1}\u{7f}é€😀 *?[]:");
        assert_eq!(out, r#""a\"b\\c\n\t\u0001\u007f\u00e9\u20ac\ud83d\ude00 *?[]:""#);
    }

    #[test]
    fn objects_keep_document_order_and_python_separators() {
        let value = OrderedJson::parse(r#"{"z":1,"a":[true,null,1.0,2.5e-5],"m":{"y":"é","x":{}},"z":3,"e":[]}"#)
            .expect("valid json");
        assert_eq!(
            value.dumps(),
            r#"{"z": 3, "a": [true, null, 1.0, 2.5e-05], "m": {"y": "\u00e9", "x": {}}, "e": []}"#
        );
    }

    #[test]
    fn isoformat_matches_python() {
        let utc = Utc.fix();
        let at = utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap();
        assert_eq!(isoformat(&at), "2025-01-01T00:00:00+00:00");
        let at = at.with_nanosecond(123_456_789).unwrap();
        assert_eq!(isoformat(&at), "2025-01-01T00:00:00.123456+00:00");
        let east = FixedOffset::east_opt(8 * 3600).unwrap();
        let at = east.with_ymd_and_hms(999, 12, 31, 23, 59, 59).unwrap();
        assert_eq!(isoformat(&at), "0999-12-31T23:59:59+08:00");
        let west = FixedOffset::west_opt(3 * 3600 + 30 * 60 + 5).unwrap();
        let at = west.with_ymd_and_hms(2025, 6, 1, 12, 0, 0).unwrap();
        assert_eq!(isoformat(&at), "2025-06-01T12:00:00-03:30:05");
    }

    #[test]
    fn isoformat_round_trips() {
        for text in [
            "2025-01-01T00:00:00+00:00",
            "2025-01-01T00:00:00.123456+00:00",
            "2024-02-29T23:59:59.000001+08:00",
            "2024-02-29T23:59:59-05:30",
        ] {
            let parsed = parse_isoformat(text).expect(text);
            assert_eq!(isoformat(&parsed), text);
        }
        let naive = parse_isoformat("2025-01-01T00:00:00.5").expect("naive");
        assert_eq!(isoformat(&naive), "2025-01-01T00:00:00.500000+00:00");
        assert!(parse_isoformat("yesterday").is_none());
    }

    #[test]
    fn separators_and_escapes_match_json_dumps() {
        let value = serde_json::json!({"b": [1, 2.0, null], "a": "é\u{7f}\n😀\"", "c": true});
        // json.dumps({"a": "é\x7f\n😀\"", "b": [1, 2.0, None], "c": True})
        assert_eq!(
            to_python_json(&value),
            r#"{"a": "\u00e9\u007f\n\ud83d\ude00\"", "b": [1, 2.0, null], "c": true}"#
        );
    }

    #[test]
    fn floats_in_json_read_like_python_repr() {
        // Expected strings from CPython's repr(float).
        for (value, python) in [
            (0.00001, "1e-05"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (-0.0, "-0.0"),
            (1735689600.123456, "1735689600.123456"),
            (1e-310, "1e-310"),
        ] {
            assert_eq!(to_python_json(&value), python, "{value:e}");
        }
    }
}
