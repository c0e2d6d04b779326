//! The daemon's the daemon configuration: TOML file, environment and flag overrides, validation.
