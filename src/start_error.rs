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

/// Why the server did not start: one line for stderr ([`fmt::Display`]), the
/// cause ([`std::error::Error::source`]) and the exit status
/// ([`StartError::exit_status`]).
#[derive(Debug)]
pub struct StartError {
    failure: StartFailure,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl StartError {
    /// `what` failed with `err`; the line is `what: err`.
    pub fn system(what: impl fmt::Display, err: io::Error) -> Self {
        StartError {
            failure: StartFailure::System,
            message: format!("{what}: {err}"),
            source: Some(Box::new(err)),
        }
    }

    /// A failure with no error below it.
    pub(crate) fn new(failure: StartFailure, message: String) -> Self {
        StartError {
            failure,
            message,
            source: None,
        }
    }

    /// A failure whose line is its cause's own.
    pub(crate) fn from_cause(
        failure: StartFailure,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StartError {
            failure,
            message: cause.to_string(),
            source: Some(Box::new(cause)),
        }
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
            .source
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
        f.write_str(&self.message)
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
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
