//! Go's `encoding/json` rules for the prefs bodies tailscaled decodes (`PATCH prefs` into
//! `ipn.MaskedPrefs`, `start`'s `UpdatePrefs` into `ipn.Prefs`), so that [`crate::LocalApi`]
//! refuses exactly what the real decoder refuses:
//!
//! - object keys match struct fields exactly, else case-insensitively (Go's `EqualFold`
//!   fallback); unknown keys are ignored (tailscaled does not call `DisallowUnknownFields`);
//! - a value of the wrong JSON type is an `UnmarshalTypeError` (`json: cannot unmarshal string
//!   into Go struct field MaskedPrefs.RouteAll of type bool`), checked for every known field
//!   whether or not its `<Field>Set` is true, because the whole body is decoded first;
//! - `null` leaves a bool, string, int or list unchanged (no error);
//! - `opt.Bool` (`NoStatefulFiltering`) accepts only `true`, `false` and `null`
//!   (tailscale `types/opt/bool.go` `UnmarshalJSON`: `invalid opt.Bool value "\"true\""`);
//! - `netip.Prefix` (`AdvertiseRoutes`) is text that `netip.ParsePrefix` accepts (an address
//!   without `/bits` is refused).
//!
//! Sources: tailscale v1.102.3 `ipn/localapi/localapi.go` (`servePrefs`: `Decode` error →
//! HTTP 400 text), `ipn/prefs.go` (field types), `types/opt/bool.go`; Go `encoding/json`
//! (`decode.go`: field matching and `UnmarshalTypeError`).

use serde_json::{Map, Value};

/// The Go type of a prefs field, as far as JSON decoding is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GoType {
    Bool,
    Str,
    Int,
    OptBool,
    Strings,
    Prefixes,
    Object,
}

impl GoType {
    fn name(self) -> &'static str {
        match self {
            GoType::Bool => "bool",
            GoType::Str => "string",
            GoType::Int => "preftype.NetfilterMode",
            GoType::OptBool => "opt.Bool",
            GoType::Strings => "[]string",
            GoType::Prefixes => "[]netip.Prefix",
            GoType::Object => "struct",
        }
    }
}

/// `ipn.Prefs` fields the fakes model, with their Go types (ipn/prefs.go@v1.102.3). Fields of
/// the real struct that are missing here are treated as unknown keys (ignored, not checked).
const FIELDS: &[(&str, GoType)] = &[
    ("ControlURL", GoType::Str),
    ("RouteAll", GoType::Bool),
    ("ExitNodeID", GoType::Str),
    ("ExitNodeIP", GoType::Str),
    ("ExitNodeAllowLANAccess", GoType::Bool),
    ("CorpDNS", GoType::Bool),
    ("RunSSH", GoType::Bool),
    ("RunWebClient", GoType::Bool),
    ("WantRunning", GoType::Bool),
    ("LoggedOut", GoType::Bool),
    ("ShieldsUp", GoType::Bool),
    ("AdvertiseTags", GoType::Strings),
    ("Hostname", GoType::Str),
    ("AdvertiseRoutes", GoType::Prefixes),
    ("NoSNAT", GoType::Bool),
    ("NoStatefulFiltering", GoType::OptBool),
    ("NetfilterMode", GoType::Int),
    ("OperatorUser", GoType::Str),
    ("ProfileName", GoType::Str),
    ("AutoUpdate", GoType::Object),
    ("AppConnector", GoType::Object),
    ("PostureChecking", GoType::Bool),
];

/// The JSON kind word Go prints in an `UnmarshalTypeError`.
fn kind(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(_) => "bool".into(),
        Value::Number(n) => format!("number {n}"),
        Value::String(_) => "string".into(),
        Value::Array(_) => "array".into(),
        Value::Object(_) => "object".into(),
    }
}

fn type_error(strukt: &str, field: &str, v: &Value, t: &str) -> String {
    format!(
        "json: cannot unmarshal {} into Go struct field {strukt}.{field} of type {t}",
        kind(v)
    )
}

/// Checks `v` against `t`; `Err` is the Go decoder's message.
fn check(strukt: &str, field: &str, t: GoType, v: &Value) -> Result<(), String> {
    let bad = || Err(type_error(strukt, field, v, t.name()));
    match (t, v) {
        (GoType::OptBool, Value::Null | Value::Bool(_)) => Ok(()),
        (GoType::OptBool, other) => Err(format!(
            "invalid opt.Bool value {:?}",
            serde_json::to_string(other).unwrap_or_default()
        )),
        (_, Value::Null) => Ok(()),
        (GoType::Bool, Value::Bool(_)) | (GoType::Str, Value::String(_)) => Ok(()),
        (GoType::Object, Value::Object(_)) => Ok(()),
        (GoType::Int, Value::Number(n)) if n.is_i64() => Ok(()),
        (GoType::Int, Value::Number(_)) => Err(format!(
            "json: cannot unmarshal {} into Go struct field {strukt}.{field} of type {}",
            kind(v),
            t.name()
        )),
        (GoType::Strings, Value::Array(items)) => {
            for i in items {
                if !(i.is_string() || i.is_null()) {
                    return Err(type_error(strukt, field, i, "string"));
                }
            }
            Ok(())
        }
        (GoType::Prefixes, Value::Array(items)) => {
            for i in items {
                match i {
                    Value::Null => {}
                    Value::String(s) => parse_prefix(s)?,
                    other => return Err(type_error(strukt, field, other, "netip.Prefix")),
                }
            }
            Ok(())
        }
        _ => bad(),
    }
}

/// `netip.ParsePrefix` as far as the fakes need it: `addr/bits`, bits in range.
fn parse_prefix(s: &str) -> Result<(), String> {
    let err = |why: &str| Err(format!("netip.ParsePrefix({s:?}): {why}"));
    let Some((addr, bits)) = s.split_once('/') else {
        return err("no '/'");
    };
    let Ok(ip) = addr.parse::<std::net::IpAddr>() else {
        return err("ParseAddr: unable to parse IP");
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    match bits.parse::<u8>() {
        Ok(b) if b <= max && !bits.starts_with('+') && (bits == "0" || !bits.starts_with('0')) => {
            Ok(())
        }
        _ => err(&format!("bad bits after slash: {bits:?}")),
    }
}

/// Go's field lookup: the exact name, else the first case-insensitive match.
fn field_of<'a>(key: &str, names: &[&'a str]) -> Option<&'a str> {
    names
        .iter()
        .find(|n| **n == key)
        .or_else(|| names.iter().find(|n| n.eq_ignore_ascii_case(key)))
        .copied()
}

/// Decodes `body` as Go decodes it into `ipn.MaskedPrefs` (`masked`) or `ipn.Prefs`: returns
/// the object with every known key renamed to its field's exact name (`XSet` keys included
/// when `masked`), unknown keys dropped; `Err` is the decoder's message (the LocalAPI answers
/// it as HTTP 400 text). `without` lists fields this tailscaled version does not have (their
/// keys are unknown, hence ignored).
pub(crate) fn decode_prefs(
    body: &Value,
    masked: bool,
    without: &[&str],
) -> Result<Map<String, Value>, String> {
    let strukt = if masked { "MaskedPrefs" } else { "Prefs" };
    let Value::Object(obj) = body else {
        return Err(format!(
            "json: cannot unmarshal {} into Go value of type ipn.{strukt}",
            kind(body)
        ));
    };
    let fields: Vec<(&str, GoType)> = FIELDS
        .iter()
        .filter(|(n, _)| !without.contains(n))
        .copied()
        .collect();
    let set_names: Vec<String> = fields.iter().map(|(n, _)| format!("{n}Set")).collect();
    let mut names: Vec<&str> = fields.iter().map(|(n, _)| *n).collect();
    if masked {
        names.extend(set_names.iter().map(String::as_str));
    }
    let mut out = Map::new();
    for (key, v) in obj {
        let Some(name) = field_of(key, &names) else {
            continue;
        };
        let t = fields
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, t)| *t)
            .unwrap_or(GoType::Bool);
        check(strukt, name, t, v)?;
        // Go: `null` leaves a non-pointer field unchanged (opt.Bool's UnmarshalJSON does see
        // it: ExplicitlyUnset).
        if v.is_null() && t != GoType::OptBool {
            continue;
        }
        out.insert(name.to_string(), v.clone());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn opt_bool_accepts_only_true_false_null() {
        for ok in [json!(true), json!(false), Value::Null] {
            let b = json!({"NoStatefulFilteringSet": true, "NoStatefulFiltering": ok});
            assert!(decode_prefs(&b, true, &[]).is_ok(), "{b}");
        }
        for bad in [json!("true"), json!(1), json!(""), json!({})] {
            let b = json!({"NoStatefulFilteringSet": true, "NoStatefulFiltering": bad});
            let e = decode_prefs(&b, true, &[]).unwrap_err();
            assert!(e.starts_with("invalid opt.Bool value"), "{e}");
        }
        // the exact text Go prints for a JSON string
        let e = decode_prefs(&json!({"NoStatefulFiltering": "true"}), true, &[]).unwrap_err();
        assert_eq!(e, r#"invalid opt.Bool value "\"true\"""#);
    }

    #[test]
    fn mistyped_fields_refused_even_when_not_set() {
        let e = decode_prefs(&json!({"RouteAll": "yes"}), true, &[]).unwrap_err();
        assert_eq!(
            e,
            "json: cannot unmarshal string into Go struct field MaskedPrefs.RouteAll of type bool"
        );
        assert!(decode_prefs(&json!({"RouteAllSet": 1}), true, &[]).is_err());
        assert!(decode_prefs(&json!({"NetfilterMode": 2.5}), true, &[]).is_err());
        assert!(decode_prefs(&json!({"NetfilterMode": "2"}), true, &[]).is_err());
        assert!(decode_prefs(&json!({"AdvertiseRoutes": "10.0.0.0/8"}), true, &[]).is_err());
        assert!(decode_prefs(&json!({"AdvertiseRoutes": ["10.0.0.0"]}), true, &[]).is_err());
        assert!(decode_prefs(&json!({"AdvertiseRoutes": ["10.0.0.0/33"]}), true, &[]).is_err());
        assert!(decode_prefs(&json!({"AdvertiseTags": [1]}), true, &[]).is_err());
        assert!(decode_prefs(&json!([]), true, &[]).is_err());
    }

    #[test]
    fn case_insensitive_keys_unknown_ignored_null_is_no_op() {
        let m = decode_prefs(
            &json!({"routeall": true, "ROUTEALLSET": true, "Bogus": "x", "Hostname": null}),
            true,
            &[],
        )
        .unwrap();
        assert_eq!(m.get("RouteAll"), Some(&json!(true)));
        assert_eq!(m.get("RouteAllSet"), Some(&json!(true)));
        assert!(!m.contains_key("Bogus") && !m.contains_key("Hostname"));
        // a version without the field: its keys are unknown, even mistyped
        let m = decode_prefs(
            &json!({"NoStatefulFilteringSet": "x", "NoStatefulFiltering": "x"}),
            true,
            &["NoStatefulFiltering"],
        )
        .unwrap();
        assert!(m.is_empty());
    }
}
