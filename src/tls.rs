//! TLS: owns the one process-wide rustls choice, the crypto provider.
//!
//! rustls 0.23 is linked with both of its providers compiled in (ureq asks
//! for `ring`, attohttpc, which rust-s3 and aws-creds use, pulls rustls'
//! default `aws-lc-rs`). With two candidates rustls cannot pick a default,
//! and `ClientConfig::builder()`, which attohttpc calls for every HTTPS
//! connection, panics. `main` therefore calls `install_crypto_provider` once,
//! on the main thread, before any thread or request exists.
//!
//! We install `ring`: ureq already brings its own `ring` provider, so every
//! TLS connection of the process then uses the same implementation, and it
//! needs no C toolchain should attohttpc ever stop enabling rustls' default
//! features (then aws-lc-rs drops out of the build entirely).

/// Install `ring` as rustls' process-wide default provider. Idempotent: a
/// second call (or a provider installed by someone else first) is harmless.
pub fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Err only means another thread won the race; either way a provider
        // is installed afterwards, which is all we need.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn installing_twice_is_harmless_and_leaves_a_default() {
        super::install_crypto_provider();
        super::install_crypto_provider();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }
}
