//! Writing results: a table for people or the API's JSON for scripts, and the `--wait` spinner.

use crate::cli::Output;
use crate::error::CtlError;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::io::{IsTerminal, Write};

#[derive(Debug, Clone, Copy)]
pub struct Out {
    pub format: Output,
}

impl Out {
    /// `json` pretty-printed with `--output json`, otherwise what `table` makes of it.
    pub fn show(self, json: &Value, table: impl FnOnce(&Value) -> String) -> Result<(), CtlError> {
        match self.format {
            Output::Json => {
                let text = serde_json::to_string_pretty(json)
                    .map_err(|e| CtlError::Output(std::io::Error::other(e)))?;
                write_stdout(&format!("{text}\n"))
            }
            Output::Table => write_stdout(&table(json)),
        }
    }

    /// As [`Out::show`], the table made from the answer read as the API's type `T`
    /// (`backfill_api`). `--output json` prints the answer as it came, fields newer than this
    /// client included.
    pub fn show_as<T: DeserializeOwned>(
        self,
        json: &Value,
        table: impl FnOnce(&T) -> String,
    ) -> Result<(), CtlError> {
        match self.format {
            Output::Json => self.show(json, |_| String::new()),
            Output::Table => {
                let typed = typed::<T>(json)?;
                write_stdout(&table(&typed))
            }
        }
    }

    /// A line for people; nothing with `--output json`.
    pub fn say(self, line: &str) -> Result<(), CtlError> {
        match self.format {
            Output::Json => Ok(()),
            Output::Table => write_stdout(&format!("{line}\n")),
        }
    }
}

/// An answer as the API's type `T`. The types take unknown fields and fill absent ones with
/// defaults, so only a field of the wrong kind (a string for a number) fails here.
pub fn typed<T: DeserializeOwned>(json: &Value) -> Result<T, CtlError> {
    T::deserialize(json).map_err(|e| CtlError::BadResponse {
        url: "the API".into(),
        detail: format!(
            "not a {} ({e})",
            std::any::type_name::<T>()
                .rsplit("::")
                .next()
                .unwrap_or("known answer")
        ),
    })
}

/// A closed pipe (`| head`) is not an error worth an exit code.
fn write_stdout(text: &str) -> Result<(), CtlError> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(CtlError::Output(e)),
        _ => Ok(()),
    }
}

/// A one-line progress indicator on stderr, drawn only when stderr is a terminal.
pub struct Spinner {
    enabled: bool,
    frame: usize,
}

impl Spinner {
    pub fn new() -> Spinner {
        Spinner {
            enabled: std::io::stderr().is_terminal(),
            frame: 0,
        }
    }

    pub fn tick(&mut self, text: &str) {
        if !self.enabled {
            return;
        }
        const FRAMES: [char; 4] = ['|', '/', '-', '\\'];
        let c = FRAMES[self.frame % FRAMES.len()];
        self.frame += 1;
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K{c} {text}");
        let _ = err.flush();
    }

    pub fn clear(&mut self) {
        if self.enabled && self.frame > 0 {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
        }
        self.frame = 0;
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.clear();
    }
}

/// A remark for people on stderr (never part of the parseable output).
pub fn note(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "backfillctl: {line}");
}
