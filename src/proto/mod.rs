//! conn-daemon's own protocol (docs/protocol.md): `GET /test/fast` answered at
//! once, `GET /test/slow` after `--slow-duration` on a worker.
#![forbid(unsafe_code)]

use std::thread;
use std::time::Duration;

use crate::task::Task;

pub mod parser;

/// The slow request's work: wait `--slow-duration`, as the reference does.
#[derive(Debug)]
pub struct SlowTask {
    /// How long the "slow business logic" takes.
    pub duration: Duration,
}

impl Task for SlowTask {
    fn run(self) {
        thread::sleep(self.duration);
    }
}
