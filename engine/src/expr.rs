//! [`Expr`]: a CEL expression as read from a policy file, with the file position of each
//! character, which the compiler reports its problems against.

use std::sync::Arc;

use crate::diag::Pos;

/// A CEL expression together with where it sits in its file.
#[derive(Debug, Clone)]
pub(crate) struct Expr {
    pub text: String,
    /// Position in the file of each character of `text`, plus one past the end.
    pub positions: Arc<[Pos]>,
}

impl Expr {
    /// The file position of character `offset` of the expression.
    pub(crate) fn pos_at(&self, offset: usize) -> Pos {
        let last = self.positions.len().saturating_sub(1);
        self.positions
            .get(offset.min(last))
            .copied()
            .unwrap_or_default()
    }
}
