//! Config errors: each one knows its file, line, column and key path, and they travel
//! together so that an operator sees every problem of a file in one run.

use std::fmt;

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    /// 1-based; 0 when the problem has no single place (an unreadable file).
    pub line: u64,
    pub column: u64,
    /// Dotted key path such as `listeners.web.bind[1]`; empty for the whole file.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A problem of the whole file (it cannot be read, a section is missing) has no place:
        // `FILE: message`, never a made-up `FILE:0:0:`.
        if self.line == 0 {
            write!(f, "{}: ", self.file)?;
        } else {
            write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", escape_controls(&self.key))?;
        }
        f.write_str(&escape_controls(&self.message))
    }
}

/// Keys and values come from the file: a newline or other control character in them must not
/// break an error over several lines (or forge a second error line), so it is escaped.
fn escape_controls(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(s);
    }
    std::borrow::Cow::Owned(
        s.chars()
            .flat_map(|c| {
                if c.is_control() {
                    c.escape_default().collect::<Vec<_>>()
                } else {
                    vec![c]
                }
            })
            .collect(),
    )
}

/// Every problem found in one file, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn single(file: &str, line: u64, column: u64, key: &str, message: String) -> Self {
        ConfigErrors(vec![ConfigError {
            file: file.to_owned(),
            line,
            column,
            key: key.to_owned(),
            message,
        }])
    }

    pub fn iter(&self) -> impl Iterator<Item = &ConfigError> {
        self.0.iter()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}
