//! The one error type of the library: every failure a user can cause names the file, key or flag at fault.

use std::fmt;

/// A failure with a message meant for the user, e.g. `data/train.gz: truncated: header says 60000 images, file holds 12`.
#[derive(Debug)]
pub struct Error(pub String);

/// `std::result::Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An error with the message `msg`.
    pub fn new(msg: impl Into<String>) -> Self {
        Error(msg.into())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// Says what was being done when a step failed: `fs::read(p).context(p.display())` fails with
/// `data/x.gz: No such file or directory (os error 2)`, the message `"{context}: {cause}"`.
pub trait Context<T> {
    /// The error's message preceded by `context`.
    fn context(self, context: impl fmt::Display) -> Result<T>;
    /// [`Context::context`] with a context built only on failure (for one that is formatted).
    fn with_context<C: fmt::Display>(self, context: impl FnOnce() -> C) -> Result<T>;
}

impl<T, E: fmt::Display> Context<T> for std::result::Result<T, E> {
    fn context(self, context: impl fmt::Display) -> Result<T> {
        self.map_err(|e| Error(format!("{context}: {e}")))
    }

    fn with_context<C: fmt::Display>(self, context: impl FnOnce() -> C) -> Result<T> {
        self.map_err(|e| Error(format!("{}: {e}", context())))
    }
}

/// Builds an [`Error`] from a format string: `bail!("{}: wrong magic {:#x}", path.display(), magic)`.
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => { return Err($crate::error::Error(format!($($arg)*))) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_precedes_the_cause() {
        let read: std::result::Result<(), std::io::Error> =
            Err(std::io::Error::other("no such file"));
        assert_eq!(
            read.context("data/x.gz").unwrap_err().to_string(),
            "data/x.gz: no such file"
        );
        let parsed = "x"
            .parse::<usize>()
            .with_context(|| format!("--seed `{}`", "x"));
        assert_eq!(
            parsed.unwrap_err().to_string(),
            "--seed `x`: invalid digit found in string"
        );
        assert_eq!(Ok::<_, Error>(3).context("unused").unwrap(), 3);
    }
}
