//! The rate policy configuration: the file format ([`config`]), its resolved and
//! validated form ([`Policy`]), band tables with hysteresis ([`bands`]), peak windows
//! ([`peak`]) and flash-incentive rules ([`flash`]).

pub mod bands;
pub mod config;
pub mod flash;
pub mod peak;
mod resolve;

pub use resolve::{
    CategoryPolicy, EXAMPLE_POLICY_TOML, NetworkRules, Policy, PolicyError, VelocitySettings,
};
