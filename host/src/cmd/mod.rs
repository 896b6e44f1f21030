//! One module per subcommand.

pub mod check;
pub mod eval;
pub mod normalize;
pub mod test;
