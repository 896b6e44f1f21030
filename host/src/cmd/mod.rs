//! One module per subcommand.

pub mod check;
pub mod demo;
pub mod eval;
pub mod normalize;
pub mod run;
pub mod test;
