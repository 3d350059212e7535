//! The one place the CLI reads the clock (the same clock as the control plane's); the
//! verifying libraries take the time as a parameter.

pub use veil_client::clock::now;
