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
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::time::Duration;

    #[test]
    fn installing_twice_is_harmless_and_leaves_a_default() {
        super::install_crypto_provider();
        super::install_crypto_provider();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }

    /// A local "TLS" endpoint that answers every ClientHello with plain
    /// HTTP: the handshake must fail with an error, not panic, through both
    /// HTTPS clients this binary links (attohttpc for S3, ureq for children).
    #[test]
    fn first_https_requests_fail_cleanly_instead_of_panicking() {
        super::install_crypto_provider();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("bound address").port();
        let server = std::thread::spawn(move || {
            // Exactly the two connections made below, then the thread ends.
            for _ in 0..2 {
                let Ok((mut conn, _)) = listener.accept() else {
                    return;
                };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let mut hello = [0u8; 4096];
                let _ = conn.read(&mut hello);
                let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\nnot TLS\n");
            }
        });
        let url = format!("https://127.0.0.1:{port}/");

        let atto = attohttpc::get(&url).timeout(Duration::from_secs(10)).send();
        assert!(atto.is_err(), "attohttpc accepted a non-TLS server");

        let ureq = ureq::get(&url)
            .config()
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .call();
        assert!(ureq.is_err(), "ureq accepted a non-TLS server");
        let _ = server.join();
    }
}
