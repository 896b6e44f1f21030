//! The exit codes of every `keel` command, one enum (listed in `keel --help` and the README).

/// How a `keel` command ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: success.
    Ok,
    /// 1: test failures (`keel test`), the demo did not complete, or (`keel eval --fail`) a
    /// decision has errors.
    Failed,
    /// 2: usage error (a path given that does not exist), or an input (event file, replay file) that cannot be read or parsed.
    Usage,
    /// 3: invalid policy set, test file or configuration.
    Invalid,
    /// 4: the host could not start or stopped on an error: the state database, its lock, the
    /// listen address, the runtime; for `keel pause`, `keel resume` and `keel status`, the
    /// state database could not be opened, read or written.
    Host,
}

impl Exit {
    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::Failed => 1,
            Exit::Usage => 2,
            Exit::Invalid => 3,
            Exit::Host => 4,
        }
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        std::process::ExitCode::from(e.code())
    }
}
