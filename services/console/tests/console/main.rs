//! The console against a real ratemesh on a real redis-server: its JSON gateway over HTTP
//! ([`gateway`]) and its pages in a real browser, headless Chromium driven over WebDriver
//! ([`browser`]).

// The support modules are shared by the test modules of this one binary.
#![allow(unreachable_pub)]

mod browser;
mod gateway;
mod support;
