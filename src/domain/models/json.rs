//! JSON text exactly as Aether's `json.dumps` writes it: `", "` / `": "`
//! separators, `ensure_ascii` escapes and Python's `repr(float)`, so values
//! we cache are byte-identical to Aether's for the same row.

use std::io::{self, Write};

use serde::Serialize;

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
        writer.write_all(python_float(value).as_bytes())
    }

    fn write_f32<W: ?Sized + Write>(&mut self, writer: &mut W, value: f32) -> io::Result<()> {
        writer.write_all(python_float(f64::from(value)).as_bytes())
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

/// Python's `repr(float)`: the shortest round-trip digits, in fixed notation
/// when the decimal exponent is in -4..16, else `d.ddde+XX`.
fn python_float(value: f64) -> String {
    if !value.is_finite() {
        // Python writes NaN / Infinity (not JSON); serde_json writes null.
        return "null".to_owned();
    }
    if value == 0.0 {
        return if value.is_sign_negative() { "-0.0" } else { "0.0" }.to_owned();
    }
    // `{:e}` gives the shortest round-trip digits as `d.ddde<exp>`; only
    // their layout differs from Python's.
    let scientific = format!("{:e}", value.abs());
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let exp10 = exponent.parse::<i32>().unwrap_or(0);
    let digits = mantissa.replace('.', "");
    let sign = if value < 0.0 { "-" } else { "" };
    let body = if (-4..16).contains(&exp10) {
        if exp10 >= 0 {
            let int_len = exp10 as usize + 1;
            if digits.len() > int_len {
                format!("{}.{}", &digits[..int_len], &digits[int_len..])
            } else {
                format!("{digits}{}.0", "0".repeat(int_len - digits.len()))
            }
        } else {
            format!("0.{}{digits}", "0".repeat((-exp10 - 1) as usize))
        }
    } else {
        let (first, rest) = digits.split_at(1);
        let fraction = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let exp_sign = if exp10 < 0 { '-' } else { '+' };
        format!("{first}{fraction}e{exp_sign}{:02}", exp10.abs())
    };
    format!("{sign}{body}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn floats_read_like_python_repr() {
        // Expected strings from CPython's repr(float).
        for (value, python) in [
            (1.0, "1.0"),
            (0.5, "0.5"),
            (3.0, "3.0"),
            (15.0, "15.0"),
            (0.1, "0.1"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (123.456, "123.456"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.2345e20, "1.2345e+20"),
            (-2.5, "-2.5"),
            (-0.0, "-0.0"),
            (1735689600.123456, "1735689600.123456"),
            (1e-310, "1e-310"),
        ] {
            assert_eq!(python_float(value), python, "{value:e}");
        }
    }

    #[test]
    fn separators_and_escapes_match_json_dumps() {
        let value = json!({"b": [1, 2.0, null], "a": "é\u{7f}\n😀\"", "c": true});
        // json.dumps({"a": "é\x7f\n😀\"", "b": [1, 2.0, None], "c": True})
        assert_eq!(
            to_python_json(&value),
            r#"{"a": "\u00e9\u007f\n\ud83d\ude00\"", "b": [1, 2.0, null], "c": true}"#
        );
    }
}
