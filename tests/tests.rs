//! The one integration-test binary: each module tests one area against the
//! real binaries; `common` is the shared harness.

mod accounts;
mod budget;
mod budget_views;
mod budgets;
mod common;
mod conn;
mod console;
mod core;
mod day;
mod dialect;
mod edge;
mod frontdoor;
mod gentle;
mod keepalive;
mod leases;
mod models;
mod operate;
mod proxy;
mod realchild;
mod s3;
mod upstream_child;
mod writeback;
