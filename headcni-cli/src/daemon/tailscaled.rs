//! The daemon's daemon mode: supervising a dedicated tailscaled.
