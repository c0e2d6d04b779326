//! Lenient serde helpers for protojson and Go JSON.

use serde::{Deserialize, Deserializer};

/// Decodes protojson `uint64`: a decimal string (what the gateway emits) or a number.
pub(crate) fn de_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        S(String),
        N(u64),
        Null(()),
    }
    match Repr::deserialize(d)? {
        Repr::S(s) if s.is_empty() => Ok(0),
        Repr::S(s) => s.parse().map_err(serde::de::Error::custom),
        Repr::N(n) => Ok(n),
        Repr::Null(()) => Ok(0),
    }
}

/// Decodes a value whose `null` means "default" (protojson never emits null for scalars and
/// lists, but be lenient).
pub(crate) fn de_null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}
