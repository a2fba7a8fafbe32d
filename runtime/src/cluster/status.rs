//! The coordinator's HTTP status page (being built).
