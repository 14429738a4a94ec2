//! The progress line on stderr while rounds run.

use std::io::{IsTerminal, Write};

/// Rewrites one status line in place on a terminal; prints plain lines when
/// stderr is a file or pipe (CI logs), where `\r` would just pile up.
pub struct Progress {
    tty: bool,
    dirty: bool,
}

impl Progress {
    /// A progress line on stderr.
    pub fn new() -> Self {
        Progress {
            tty: std::io::stderr().is_terminal(),
            dirty: false,
        }
    }

    /// Shows `message` as the current status.
    pub fn update(&mut self, message: &str) {
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[K{message}");
            self.dirty = true;
        } else {
            let _ = writeln!(err, "{message}");
        }
        let _ = err.flush();
    }

    /// Ends the status line so later output starts on a fresh line.
    pub fn finish(&mut self) {
        if self.dirty {
            let _ = writeln!(std::io::stderr());
            self.dirty = false;
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}
