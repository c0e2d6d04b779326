//! `HEADSCALE_API_KEY` as the API key source. Alone in its own test binary because it sets a
//! process environment variable.

use headcni_headscale::secret::{HEADSCALE_API_KEY_ENV, Secret, SecretError};

#[test]
fn api_key_from_env_when_no_file() {
    // SAFETY: the only test in this binary; no other thread reads the environment meanwhile.
    unsafe { std::env::remove_var(HEADSCALE_API_KEY_ENV) };
    assert!(matches!(
        Secret::load_api_key(None),
        Err(SecretError::Missing { .. })
    ));
    // SAFETY: as above.
    unsafe { std::env::set_var(HEADSCALE_API_KEY_ENV, "  hskey-api-env-secret\n") };
    let s = Secret::load_api_key(None).unwrap();
    assert_eq!(s.expose(), "hskey-api-env-secret");
    assert!(!format!("{s:?}").contains("env-secret"));
    // SAFETY: as above.
    unsafe { std::env::set_var(HEADSCALE_API_KEY_ENV, "   ") };
    assert!(matches!(
        Secret::load_api_key(None),
        Err(SecretError::Empty { .. })
    ));
    // SAFETY: as above.
    unsafe { std::env::remove_var(HEADSCALE_API_KEY_ENV) };
}
