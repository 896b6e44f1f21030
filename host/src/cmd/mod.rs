//! One module per subcommand.

pub mod check;
pub mod demo;
pub mod eval;
pub mod normalize;
pub mod pause;
pub mod policies;
pub mod run;
pub mod status;
pub mod test;
