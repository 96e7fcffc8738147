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

/// Builds an [`Error`] from a format string: `bail!("{}: wrong magic {:#x}", path.display(), magic)`.
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => { return Err($crate::error::Error(format!($($arg)*))) };
}
