//! One TLS crypto provider for the process: rustls with `ring` (never aws-lc-rs).

use std::sync::Once;

static INSTALL: Once = Once::new();

/// Installs `rustls::crypto::ring::default_provider()` as the process default, once.
/// Idempotent and safe to call from every constructor; if another component already installed
/// a provider, that one is kept.
pub fn install_ring_provider() {
    INSTALL.call_once(|| {
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            // Err only means someone else won the race: their provider stays.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn idempotent() {
        super::install_ring_provider();
        super::install_ring_provider();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }
}
