//! Why start-up failed, and the exit status that says so: one type for every
//! part of start-up (the binding, the queues, each loop's thread, the workers'),
//! so that an error built where it happened reaches `main` with its cause.
#![forbid(unsafe_code)]

use std::fmt;
use std::io;

/// Exit status for a failed system call at start-up (the reference's).
pub const EXIT_SYSTEM: i32 = 100;
/// Exit status for a refused command line (the reference's), here one that only
/// binding shows to be wrong.
pub const EXIT_USAGE: i32 = 1;
/// Exit status when the pools cannot be reserved (the reference's).
pub const EXIT_NO_MEMORY: i32 = 10;

/// What kind of start-up failure a [`StartError`] is: it decides the exit status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartFailure {
    /// The command line is wrong in a way only binding shows: the sockets
    /// handed over, or `--listen` addresses that overlap on one port.
    Usage,
    /// A system call failed, or what was handed over is not what it must be.
    System,
    /// The host cannot give what the command line asks for (threads, memory).
    NoMemory,
}

/// Why the server did not start: what failed ([`fmt::Display`]), its cause
/// ([`std::error::Error::source`]), the one line for stderr
/// ([`StartError::report`]) and the exit status ([`StartError::exit_status`]).
///
/// The cause is shown once: `Display` is only what failed, so that anything
/// that walks the `source()` chain (`report`, `anyhow`, a logger) prints the
/// cause once, as the Rust API guidelines ask.
#[derive(Debug)]
pub struct StartError {
    failure: StartFailure,
    /// What failed; `None` when the cause says it all (see `from_cause`).
    context: Option<String>,
    cause: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl StartError {
    /// `what` failed with `err`; the line is `what: err`.
    pub fn system(what: impl fmt::Display, err: io::Error) -> Self {
        StartError {
            failure: StartFailure::System,
            context: Some(what.to_string()),
            cause: Some(Box::new(err)),
        }
    }

    /// A command line that cannot work (exit 1): what a ported server's own
    /// option checks return.
    pub fn usage(line: impl Into<String>) -> Self {
        StartError::new(StartFailure::Usage, line.into())
    }

    /// The host cannot give what the command line asks for (exit 10): a
    /// protocol's own reservation at start-up that failed.
    pub fn no_memory(line: impl Into<String>) -> Self {
        StartError::new(StartFailure::NoMemory, line.into())
    }

    /// A failure with no error below it.
    pub(crate) fn new(failure: StartFailure, message: String) -> Self {
        StartError {
            failure,
            context: Some(message),
            cause: None,
        }
    }

    /// A failure whose line is its cause's own: transparent, its `Display` and
    /// `source()` are the cause's.
    pub(crate) fn from_cause(
        failure: StartFailure,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StartError {
            failure,
            context: None,
            cause: Some(Box::new(cause)),
        }
    }

    /// The whole chain on one line, `what: cause: its cause`: what `main`
    /// writes to stderr.
    pub fn report(&self) -> impl fmt::Display + '_ {
        Report(self)
    }

    /// What kind of failure it is.
    pub fn failure(&self) -> StartFailure {
        self.failure
    }

    /// The process exit status for this error, the one place it is decided:
    /// 1 for a command line only the handed sockets refute, 10 when the pools
    /// or threads cannot be had (a system call that failed with ENOMEM
    /// included, whichever thread it was in, and a thread that could not be
    /// created: `pthread_create`'s EAGAIN, its stack refused by an address-space
    /// limit or the thread limit reached), 100 for any other system error.
    pub fn exit_status(&self) -> i32 {
        let enomem = self
            .cause
            .as_deref()
            .and_then(|e| e.downcast_ref::<io::Error>())
            .is_some_and(|e| matches!(e.raw_os_error(), Some(libc::ENOMEM | libc::EAGAIN)));
        match self.failure {
            StartFailure::Usage => EXIT_USAGE,
            StartFailure::NoMemory => EXIT_NO_MEMORY,
            StartFailure::System if enomem => EXIT_NO_MEMORY,
            StartFailure::System => EXIT_SYSTEM,
        }
    }
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.context, &self.cause) {
            (Some(context), _) => f.write_str(context),
            (None, Some(cause)) => cause.fmt(f),
            (None, None) => f.write_str("start-up failed"),
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        let cause = self.cause.as_deref()?;
        if self.context.is_some() {
            Some(cause as &(dyn std::error::Error + 'static))
        } else {
            // Transparent: the cause is this error's own line.
            cause.source()
        }
    }
}

/// [`StartError::report`]: the error and every source, `: `-separated.
struct Report<'a>(&'a StartError);

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = std::error::Error::source(self.0);
        while let Some(e) = next {
            write!(f, ": {e}")?;
            next = e.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_function_maps_errors_to_exit_statuses_and_causes_are_kept() {
        let enomem =
            StartError::system("cannot reserve", io::Error::from_raw_os_error(libc::ENOMEM));
        assert_eq!(enomem.exit_status(), EXIT_NO_MEMORY);
        let source = std::error::Error::source(&enomem).expect("a source");
        let io = source.downcast_ref::<io::Error>().expect("an io::Error");
        assert_eq!(io.raw_os_error(), Some(libc::ENOMEM));
        // The cause once: in the chain, not again in the error's own line.
        assert_eq!(enomem.to_string(), "cannot reserve");
        let enomem_text = io::Error::from_raw_os_error(libc::ENOMEM).to_string();
        assert_eq!(
            enomem.report().to_string(),
            format!("cannot reserve: {enomem_text}")
        );
        let adopted = StartError::from_cause(StartFailure::System, enomem);
        assert_eq!(
            adopted.report().to_string(),
            format!("cannot reserve: {enomem_text}")
        );
        assert_eq!(adopted.exit_status(), EXIT_SYSTEM);
        let no_thread = StartError::system("thread", io::Error::from_raw_os_error(libc::EAGAIN));
        assert_eq!(no_thread.exit_status(), EXIT_NO_MEMORY);
        let busy = StartError::system("port", io::Error::from_raw_os_error(libc::EADDRINUSE));
        assert_eq!(busy.exit_status(), EXIT_SYSTEM);
        assert_eq!(
            StartError::new(StartFailure::Usage, "x".into()).exit_status(),
            EXIT_USAGE
        );
        assert_eq!(
            StartError::new(StartFailure::NoMemory, "x".into()).exit_status(),
            EXIT_NO_MEMORY
        );
    }
}
