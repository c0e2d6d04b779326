//! HuJSON (JSON with comments and trailing commas, tailscale `hujson`), as Headscale reads a
//! policy (`hujson.Parse` then `Standardize`).

use jsonc_parser::ParseOptions;
use serde_json::Value;

use super::PolicyError;

/// The largest policy document accepted (bytes): far above any real policy, a bound on input.
pub const MAX_POLICY_BYTES: usize = 1 << 20;

/// Parses a HuJSON document into JSON: `//` and `/* */` comments and trailing commas are
/// accepted, nothing else beyond JSON (no single quotes, unquoted keys, hex numbers, missing
/// commas), as tailscale's `hujson` package.
///
/// Errors: [`PolicyError::TooLarge`] above [`MAX_POLICY_BYTES`], [`PolicyError::Syntax`]
/// otherwise (an empty document included).
pub fn parse_hujson(text: &str) -> Result<Value, PolicyError> {
    if text.len() > MAX_POLICY_BYTES {
        return Err(PolicyError::TooLarge(text.len()));
    }
    let opts = ParseOptions {
        allow_comments: true,
        allow_trailing_commas: true,
        allow_loose_object_property_names: false,
        allow_missing_commas: false,
        allow_single_quoted_strings: false,
        allow_hexadecimal_numbers: false,
        allow_unary_plus_numbers: false,
        allow_bare_decimal_point_numbers: false,
        allow_non_finite_numbers: false,
        allow_extended_string_escapes: false,
    };
    let v: Option<Value> = jsonc_parser::parse_to_serde_value(text, &opts)
        .map_err(|e| PolicyError::Syntax(e.to_string()))?;
    v.ok_or_else(|| PolicyError::Syntax("empty document".to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_and_trailing_commas() {
        let v = parse_hujson("{ // c\n \"a\": [1, 2,], /* d */ }").unwrap();
        assert_eq!(v, serde_json::json!({"a": [1, 2]}));
    }

    #[test]
    fn refuses_json5_extensions() {
        for bad in [
            "{a: 1}",
            "{'a': 1}",
            "{\"a\": 0x1}",
            "{\"a\": 1 \"b\": 2}",
            "",
            "{",
        ] {
            assert!(parse_hujson(bad).is_err(), "{bad:?}");
        }
        let big = format!("[{}]", "1,".repeat(MAX_POLICY_BYTES));
        assert!(matches!(parse_hujson(&big), Err(PolicyError::TooLarge(_))));
    }
}
