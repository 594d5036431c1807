//! Temporary stand-in for the lead's tests/tests.rs (S3 worktree only).

mod s3;
