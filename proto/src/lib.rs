//! The ratemesh gRPC contract (package `ratemesh.v1`) and its generated Rust code.
//!
//! The `.proto` files in `proto/ratemesh/v1/` are the source of truth; `build.rs` compiles
//! them with protox (no system `protoc`) and tonic-prost-build. This crate exposes:
//!
//! - [`v1`]: messages, enums, `*_client` and `*_server` modules for every service, e.g.
//!   `v1::rate_service_server::RateServiceServer`. Server traits have default methods
//!   that answer `UNIMPLEMENTED`.
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors (with well-known imports and source
//!   comments) for `tonic-reflection`.
//! - The full service names ([`SERVICE_NAMES`] and one const per service) for health and
//!   reflection registration.
//!
//! Conventions of the contract (decimal strings, paging, cursors, error details) are in
//! `proto/README.md`.

/// Generated code for package `ratemesh.v1`.
#[allow(
    unreachable_pub,
    missing_docs,
    rust_2018_idioms,
    clippy::all,
    clippy::pedantic,
    clippy::nursery
)]
pub mod v1 {
    tonic::include_proto!("ratemesh.v1");
}

/// Encoded `google.protobuf.FileDescriptorSet` of every `ratemesh.v1` file and its
/// imports, for `tonic_reflection::server::Builder::register_encoded_file_descriptor_set`.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("ratemesh_descriptor");

/// The protobuf package every ratemesh service lives in.
pub const PACKAGE: &str = "ratemesh.v1";

/// Full name of the ERP ingest service.
pub const INVENTORY_INGEST: &str = v1::inventory_ingest_server::SERVICE_NAME;
/// Full name of the rate read service.
pub const RATE_SERVICE: &str = v1::rate_service_server::SERVICE_NAME;
/// Full name of the merchandiser override service.
pub const OVERRIDE_SERVICE: &str = v1::override_service_server::SERVICE_NAME;
/// Full name of the flash incentive service.
pub const INCENTIVE_SERVICE: &str = v1::incentive_service_server::SERVICE_NAME;
/// Full name of the partner webhook service.
pub const PARTNER_SERVICE: &str = v1::partner_service_server::SERVICE_NAME;

/// Full names of every `ratemesh.v1` service, for health and reflection registration.
pub const SERVICE_NAMES: [&str; 5] = [
    INVENTORY_INGEST,
    RATE_SERVICE,
    OVERRIDE_SERVICE,
    INCENTIVE_SERVICE,
    PARTNER_SERVICE,
];
