//! # keel-plugin: Keel policy plugins in Rust
//!
//! A plugin is a WebAssembly component implementing the WIT world `keel:policy/policy@1.0.0`
//! (`wasm-plugins/wit/policy.wit`): the host calls [`Plugin::init`] once per instance with the
//! policy's `config` as JSON, then [`Plugin::evaluate`] for each event the policy's `on` and
//! `when` select. The plugin sees the normalized [`Event`] and the decision time ([`Ctx::now`]),
//! and may call [`history::count`], [`history::resources`] and [`log`]; it has no clock,
//! filesystem, network or randomness.
//!
//! ```ignore
//! use keel_plugin::{Ctx, Decision, Event, Plugin};
//!
//! struct DrainReboots;
//!
//! impl Plugin for DrainReboots {
//!     fn evaluate(event: Event, _ctx: Ctx) -> Option<Decision> {
//!         let m = event.maintenance?;
//!         (m.type_ == "reboot").then(|| Decision::new("drain").reason("reboot announced"))
//!     }
//! }
//!
//! keel_plugin::export!(DrainReboots);
//! ```
//!
//! Build it as a `cdylib` for `wasm32-unknown-unknown` and wrap the module into a component
//! (`cargo run -p xtask -- build-plugins` does both for the plugins in this repository).

#![allow(unsafe_code)] // wit-bindgen's generated glue

use std::string::String;
use std::vec::Vec;

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "policy",
        pub_export_macro: true,
        export_macro_name: "__export_policy",
        default_bindings_module: "keel_plugin::bindings",
    });
}

pub use bindings::keel::policy::types::{
    Ctx, Decision, Event, Failure, Health, Kind, Level, Maintenance, Resource, Timestamp,
};

/// The interface major version this SDK builds plugins for.
pub const INTERFACE: &str = "keel:policy@1.0.0";

/// A policy plugin. Implement it on a unit struct and [`export!`] that struct.
pub trait Plugin {
    /// Called once per instance with the policy's `config` as JSON (`{}` when absent). An
    /// error refuses the whole policy set at load, with the policy's position.
    fn init(config: &str) -> Result<(), String> {
        let _ = config;
        Ok(())
    }

    /// Decides one event: `None` when the policy does not apply.
    fn evaluate(event: Event, ctx: Ctx) -> Option<Decision>;
}

#[doc(hidden)]
pub struct Adapter<T>(core::marker::PhantomData<T>);

impl<T: Plugin> bindings::exports::keel::policy::plugin::Guest for Adapter<T> {
    fn init(config: String) -> Result<(), String> {
        T::init(&config)
    }

    fn evaluate(event: Event, ctx: Ctx) -> Option<Decision> {
        T::evaluate(event, ctx)
    }
}

/// Exports a [`Plugin`] implementation as the component's `keel:policy/plugin` interface.
#[macro_export]
macro_rules! export {
    ($t:ty) => {
        #[doc(hidden)]
        type __KeelPluginAdapter = $crate::Adapter<$t>;
        $crate::bindings::__export_policy!(__KeelPluginAdapter with_types_in $crate::bindings);
    };
}

impl Decision {
    /// A decision with `action` (a wire name: `drain`, `defer`, `acknowledge`, ...).
    pub fn new(action: &str) -> Decision {
        Decision {
            action: action.into(),
            reason: None,
            params_json: None,
            due: None,
        }
    }

    /// The same decision with a reason.
    pub fn reason(mut self, reason: impl Into<String>) -> Decision {
        self.reason = Some(reason.into());
        self
    }

    /// The same decision with runbook parameters (a JSON object).
    pub fn params(mut self, params: serde_json::Value) -> Decision {
        self.params_json = Some(params.to_string());
        self
    }

    /// The same decision, due again at `due` (for `defer`).
    pub fn due(mut self, due: Timestamp) -> Decision {
        self.due = Some(due);
        self
    }
}

/// Correlation history queries: the window ends at the event's time.
pub mod history {
    use super::{String, Vec};

    fn owned(filter: &[(&str, &str)]) -> Vec<(String, String)> {
        filter
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    /// How many remembered events match `filter` (event path → value, e.g.
    /// `("failure.category", "vm_agent")`) in the last `window_s` seconds.
    pub fn count(filter: &[(&str, &str)], window_s: i64) -> Result<i64, String> {
        crate::bindings::keel::policy::host::history_count(&owned(filter), window_s)
    }

    /// From how many distinct resources those events came.
    pub fn resources(filter: &[(&str, &str)], window_s: i64) -> Result<i64, String> {
        crate::bindings::keel::policy::host::history_resources(&owned(filter), window_s)
    }
}

/// Logs a line; `Warn` and `Error` lines reach the decision's warnings.
pub fn log(level: Level, message: &str) {
    bindings::keel::policy::host::log(level, message)
}

/// Milliseconds in a second, for [`Timestamp`] arithmetic.
pub const MS_PER_S: i64 = 1000;
