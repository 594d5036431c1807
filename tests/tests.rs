//! The one integration-test binary: each module tests one area against the
//! real binaries; `common` is the shared harness.

mod common;
mod core;
mod frontdoor;
mod proxy;
mod s3;
