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

/// Most items [`few`] names before it counts the rest.
const FEW_ITEMS: usize = 8;
/// Most characters of the items [`few`] names (an item longer than [`FEW_ITEM_CHARS`] is cut).
const FEW_CHARS: usize = 160;
/// Most characters of one item [`few`] names.
const FEW_ITEM_CHARS: usize = 60;

/// `items` for an error line: the first few (at most `FEW_ITEMS`, about `FEW_CHARS` characters), then
/// `and N more`. An error is one line a person reads: a list of 10,000 folder names or a million block counts would
/// make it megabytes.
pub fn few<T: fmt::Display>(items: &[T]) -> String {
    let mut out = String::new();
    let mut shown = 0;
    for item in items.iter().take(FEW_ITEMS) {
        let text = clip(&item.to_string(), FEW_ITEM_CHARS);
        if shown > 0 && out.len() + text.len() > FEW_CHARS {
            break;
        }
        if shown > 0 {
            out.push_str(", ");
        }
        out.push_str(&text);
        shown += 1;
    }
    if shown < items.len() {
        out.push_str(&format!(" and {} more", items.len() - shown));
    }
    out
}

/// `text` cut to its first `max` characters, with `…` and the length it had when cut.
pub fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_string(),
        Some((end, _)) => format!("{}… ({} characters)", &text[..end], text.chars().count()),
    }
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

    #[test]
    fn few_names_the_first_items_and_counts_the_rest() {
        assert_eq!(few(&["a", "b"]), "a, b");
        assert_eq!(few::<u8>(&[]), "");
        let many: Vec<usize> = (0..10_000).collect();
        assert_eq!(few(&many), "0, 1, 2, 3, 4, 5, 6, 7 and 9992 more");
        let long: Vec<String> = (0..100)
            .map(|k| format!("{k}{}", "x".repeat(300)))
            .collect();
        let line = few(&long);
        assert!(line.len() < 2 * FEW_CHARS, "{line}");
        assert!(line.starts_with("0xx") && line.ends_with(" more"), "{line}");
        assert_eq!(clip("abcdef", 3), "abc… (6 characters)");
        assert_eq!(clip("abc", 3), "abc");
    }
}
