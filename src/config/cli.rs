//! The command line (the `cli` feature, on by default): clap's definition of
//! the reference's options, their parsers, and the reports of a refused line.

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::parser::ValueSource;
use clap::{ArgAction, CommandFactory, FromArgMatches, Parser};

use super::file::{self, FileError};

use super::{default_accept_threads, Config};
use super::{Delegate, LogLevel as Level};

/// Upper bound on `--accept-capacity`: connection ids must fit the pool's index space,
/// and a bigger pool per thread is a typo rather than a plan.
const MAX_ACCEPT_CAPACITY: u64 = 16_777_216;

/// The defaults, as the command line shows and applies them: read from
/// [`Config::default`], where they are written.
fn defaults() -> Config {
    Config::default()
}

/// Milliseconds of `d`, for an option given in milliseconds.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Why a command line, or the config file it names, is refused.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConfigError {
    /// The command line itself (and `--help`, `--version`, which clap reports
    /// as errors too): printed with the usage, exit 1 (help and version: 0).
    CommandLine(clap::Error),
    /// `--config FILE`: one line naming the file, the line and the reason.
    File(FileError),
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigError::CommandLine(e) => write!(f, "{}", e.render().to_string().trim_end()),
            ConfigError::File(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ConfigError {}

impl From<clap::Error> for ConfigError {
    fn from(e: clap::Error) -> Self {
        ConfigError::CommandLine(e)
    }
}

impl Config {
    /// Parses `args` (`args[0]` is the program name), and the file of
    /// `--config` if there is one (the command line overrides it). Err carries
    /// the clap error (help and version are Err too, as clap does) or the
    /// file's, so callers decide how to print and exit.
    pub fn try_parse_from<I, T>(args: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        // Not `Args::try_parse_from`: that would rebuild the command without the
        // settings `command()` adds below.
        let mut matches = command().try_get_matches_from(&args)?;
        let Some(path) = matches.get_one::<PathBuf>("config").cloned() else {
            let parsed = Args::from_arg_matches_mut(&mut matches)?;
            return Ok(parsed.into_config()?);
        };
        let from_file = file_args(&path, &matches)?;
        // The file's settings first, then the command line, which the file's
        // lines for the same options have already made way for.
        let mut all = vec![args
            .first()
            .cloned()
            .unwrap_or_else(|| "conn-daemon".into())];
        all.extend(from_file);
        all.extend(args.into_iter().skip(1));
        let whole = |e: clap::Error| {
            ConfigError::File(FileError {
                path: path.clone(),
                line: None,
                reason: one_line(&e),
            })
        };
        let mut matches = command().try_get_matches_from(all).map_err(whole)?;
        let parsed = Args::from_arg_matches_mut(&mut matches).map_err(whole)?;
        parsed.into_config().map_err(whole)
    }

    /// Parses `std::env::args_os()` (and `--config`); on an error prints it and
    /// exits: help and version go to stdout with status 0, a bad command line
    /// goes to stderr with the full usage and status 1 (the reference's status;
    /// clap's own `Error::exit` would use 2), a bad config file is one line on
    /// stderr and status 1. (`--check-config` is the caller's: see
    /// [`Config::valid`].)
    pub fn from_env() -> Config {
        match Config::try_parse_from(std::env::args_os()) {
            Ok(config) => config,
            Err(ConfigError::File(e)) => {
                crate::error!("{e}");
                std::process::exit(1);
            }
            Err(ConfigError::CommandLine(err)) => match err.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                    // A closed stdout (`conn-daemon --help | head -0`) is not an error
                    // worth reporting: the user asked for text and went away.
                    let _ = err.print();
                    std::process::exit(0);
                }
                _ => {
                    eprint!("{}", error_report(err));
                    std::process::exit(1);
                }
            },
        }
    }
}

impl Config {
    /// What `--check-config` says once everything checked is valid.
    pub fn valid(&self) -> String {
        match &self.config_file {
            Some(path) => format!("{} and the command line: valid", path.display()),
            None => "the command line: valid".to_string(),
        }
    }
}

/// Options a config file may not set: they are about this run of the
/// command, not about the server.
const NOT_IN_FILE: [&str; 4] = ["config", "check-config", "help", "version"];

/// The settings of `path` as command-line arguments (`--name=value`, `--name`),
/// each checked on its own so that an error names its line; those the command
/// line (`matches`) sets itself are left out: it overrides the file.
fn file_args(
    path: &std::path::Path,
    matches: &clap::ArgMatches,
) -> Result<Vec<OsString>, ConfigError> {
    let entries = file::read(path).map_err(ConfigError::File)?;
    let cmd = command();
    let refuse = |line: usize, reason: String| {
        ConfigError::File(FileError {
            path: path.to_owned(),
            line: Some(line),
            reason,
        })
    };
    let mut args = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    for entry in &entries {
        let name = entry.name.as_str();
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(name) && !NOT_IN_FILE.contains(&name))
            .ok_or_else(|| refuse(entry.line, format!("unknown option {name:?}")))?;
        let takes_value = arg.get_action().takes_values();
        let text = match (&entry.value, takes_value) {
            (Some(value), true) => format!("--{name}={value}"),
            (None, false) => format!("--{name}"),
            (None, true) => {
                return Err(refuse(
                    entry.line,
                    format!("{name} needs a value: `{name} = ...`"),
                ))
            }
            (Some(_), false) => {
                return Err(refuse(
                    entry.line,
                    format!("{name} is a flag: write it alone, without `=`"),
                ))
            }
        };
        let repeatable = matches!(arg.get_action(), ArgAction::Append);
        if !repeatable && seen.contains(&name) {
            return Err(refuse(entry.line, format!("{name} is set twice")));
        }
        seen.push(name);
        // The line on its own, through the command line's parsers.
        command()
            .try_get_matches_from(["conn-daemon", text.as_str()])
            .map_err(|e| refuse(entry.line, one_line(&e)))?;
        let id = arg.get_id().as_str();
        if matches.value_source(id) != Some(ValueSource::CommandLine) {
            args.push(OsString::from(text));
        }
    }
    Ok(args)
}

/// A clap error as one line: its first, without clap's `error: `.
fn one_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let first = text.lines().next().unwrap_or_default();
    first.strip_prefix("error: ").unwrap_or(first).to_string()
}

/// The clap command, with the settings the derive attributes cannot express:
/// what parses the command line, and what `contrib/man` renders as the man page.
pub fn command() -> clap::Command {
    // Fixed name: the usage text must not depend on how the binary was invoked, so
    // scripts and tests can match it.
    Args::command()
        .bin_name("conn-daemon")
        .version(crate::config::version::DESCRIPTION)
}

/// Text for a command-line error: the error (with clap's tips), then the full help, as
/// AutoOpts prints it. Clap's short "Usage:" line and its "try '--help'" hint are
/// dropped because the full help that follows makes them redundant.
fn error_report(mut err: clap::Error) -> String {
    err.remove(ContextKind::Usage);
    let help = command().render_help().to_string();
    if let Some(message) = ambiguity(&err) {
        return format!("{message}\n\n{}\n", help.trim_end());
    }
    let message = err.render().to_string();
    let message = message
        .strip_suffix("\n\nFor more information, try '--help'.\n")
        .unwrap_or(&message)
        .trim_end();
    format!("{message}\n\n{}\n", help.trim_end())
}

/// The message for a long-option prefix that matches several options (`--acc`).
/// Clap reports it as an unknown argument with a "similar argument" tip naming one of
/// them, which reads as if the prefix were misspelt; AutoOpts says it is ambiguous.
fn ambiguity(err: &clap::Error) -> Option<String> {
    if err.kind() != ErrorKind::UnknownArgument {
        return None;
    }
    let Some(ContextValue::String(arg)) = err.get(ContextKind::InvalidArg) else {
        return None;
    };
    let prefix = arg.strip_prefix("--")?;
    let prefix = prefix.split_once('=').map_or(prefix, |(name, _)| name);
    let cmd = command();
    let matches: Vec<String> = cmd
        .get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|long| long.starts_with(prefix))
        .map(|long| format!("'--{long}'"))
        .collect();
    (!prefix.is_empty() && matches.len() > 1).then(|| {
        format!(
            "error: ambiguous option '--{prefix}': it could be {}",
            matches.join(" or ")
        )
    })
}

/// Parses a whole number in `min..=max` into `T`, written as the reference's
/// AutoOpts reads it (C's `strtol` with base 0, then "nothing may follow"):
/// decimal, `0x`/`0X` hexadecimal (`0x57e4` is 22500), or octal after a leading
/// `0` (`054000` is 22528), after optional leading blanks and an optional `+`.
/// Unlike the reference, a value out of range (a negative one included) is
/// refused instead of wrapping, and so is anything after the digits.
fn number<T: TryFrom<u64>>(text: &str, min: u64, max: u64) -> Result<T, String> {
    let refuse = || format!("expected a whole number from {min} to {max}");
    let value = c_number(text).ok_or_else(refuse)?;
    if !(min..=max).contains(&value) {
        return Err(refuse());
    }
    T::try_from(value).map_err(|_| refuse())
}

/// The value of `text` as `strtoul(text, &end, 0)` reads it with `*end == '\0'`
/// required; `None` for anything else, a sign other than `+` and overflow
/// included.
fn c_number(text: &str) -> Option<u64> {
    // strtol skips what isspace() accepts in the C locale.
    let text = text.trim_start_matches([' ', '\t', '\n', '\x0b', '\x0c', '\r']);
    let text = text.strip_prefix('+').unwrap_or(text);
    let (digits, radix) =
        if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
            (hex, 16)
        } else if text.len() > 1 && text.starts_with('0') {
            (&text[1..], 8)
        } else {
            (text, 10)
        };
    // Checked by hand: from_str_radix would take a second sign.
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

/// `usize::MAX` as u64 (u64 is at least as wide on every supported target).
fn usize_max() -> u64 {
    u64::try_from(usize::MAX).unwrap_or(u64::MAX)
}

/// `--port`: 0 would make the kernel pick a port, which no client could guess.
fn parse_port(text: &str) -> Result<u16, String> {
    number(text, 1, u64::from(u16::MAX))
}

/// A `--listen` address as written: the port is optional (`-p` fills it in).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ListenArg {
    ip: IpAddr,
    port: Option<u16>,
}

/// `--listen`: an IP address, not a host name (a name would resolve differently
/// from one start to the next), with an optional port: `127.0.0.1`,
/// `0.0.0.0:9001`, `[::1]:9002`, `[::]`, or a bare IPv6 address such as `::1`.
fn parse_listen(text: &str) -> Result<ListenArg, String> {
    let refuse = || {
        String::from(
            "expected an IP address with an optional port (127.0.0.1, 0.0.0.0:9001, \
             [::1]:9002, [::]); host names are not resolved",
        )
    };
    let (ip, port) = if let Some(rest) = text.strip_prefix('[') {
        let (ip, after) = rest.split_once(']').ok_or_else(refuse)?;
        let ip: Ipv6Addr = ip.parse().map_err(|_| refuse())?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or_else(refuse)?),
        };
        (IpAddr::V6(ip), port)
    } else if let Ok(ip) = text.parse::<Ipv6Addr>() {
        (IpAddr::V6(ip), None)
    } else {
        let (ip, port) = match text.split_once(':') {
            Some((ip, port)) => (ip, Some(port)),
            None => (text, None),
        };
        let ip: Ipv4Addr = ip.parse().map_err(|_| refuse())?;
        (IpAddr::V4(ip), port)
    };
    let port = port
        .map(|p| parse_port(p).map_err(|e| format!("port: {e}")))
        .transpose()?;
    Ok(ListenArg { ip, port })
}

/// `--pid-file`: made absolute at once, before `-d` changes directory.
fn parse_pid_file(text: &str) -> Result<PathBuf, String> {
    if text.is_empty() {
        return Err("expected a file path".into());
    }
    std::path::absolute(text).map_err(|e| format!("{text}: {e}"))
}

/// `--config`: made absolute at once, like `--pid-file`.
fn parse_config_file(text: &str) -> Result<PathBuf, String> {
    parse_pid_file(text)
}

/// `--user`, `--group`: a name (looked up at start-up).
fn parse_name(text: &str) -> Result<String, String> {
    if text.is_empty() || text.contains(['\0', ':', '/']) || text.trim() != text {
        return Err("expected a user or group name".into());
    }
    Ok(text.to_string())
}

/// `--log-level`: one of the levels' names.
fn parse_log_level(text: &str) -> Result<Level, String> {
    Level::from_label(text)
        .ok_or_else(|| format!("{text:?} is not a level: error, warn, info or debug"))
}

/// `--accept-threads`: at least the main thread.
fn parse_accept_threads(text: &str) -> Result<usize, String> {
    number(text, 1, usize_max())
}

/// `--accept-capacity`: a pool of 0 connections could never answer anybody.
fn parse_accept_capacity(text: &str) -> Result<usize, String> {
    number(text, 1, MAX_ACCEPT_CAPACITY.min(usize_max()))
}

/// `--worker-threads`: 0 is meaningful (slow requests answered inline).
fn parse_worker_threads(text: &str) -> Result<usize, String> {
    number(text, 0, usize_max())
}

/// Durations in milliseconds: any u64 fits a `Duration` and an `Instant` offset.
fn parse_millis(text: &str) -> Result<u64, String> {
    number(text, 0, u64::MAX)
}

/// `--metrics`: an IPv4 or bracketed IPv6 address and a port. Host names are
/// refused rather than resolved: what the listener binds must be what was written.
fn parse_delegate(text: &str) -> Result<Delegate, String> {
    Delegate::from_label(text)
        .ok_or_else(|| format!("{text:?} is not a mode: task, socket or loop"))
}

fn parse_metrics_addr(text: &str) -> Result<SocketAddr, String> {
    match text.parse::<SocketAddr>() {
        Ok(addr) if addr.port() != 0 => Ok(addr),
        _ => Err(
            "expected IPV4:PORT or [IPV6]:PORT with a port from 1 to 65535, \
                  e.g. 127.0.0.1:19100 or [::1]:19100 (host names are not resolved)"
                .to_string(),
        ),
    }
}

/// The command line as clap sees it; the doc comments are the help text.
#[derive(Parser, Debug)]
#[command(
    name = "conn-daemon",
    version,
    about = "Event loop + worker threads connection server: answers GET /test/fast at once \
             and GET /test/slow after --slow-duration ms",
    // `-?` is the reference's help flag and `-h` the habit; `--version` is long-only
    // because `-v` means verbose.
    disable_help_flag = true,
    disable_version_flag = true,
    // AutoOpts accepts any unique prefix of a long option (`--slow=5`).
    infer_long_args = true
)]
struct Args {
    /// Print debug lines to stdout
    #[arg(short = 'v', long = "verbose")]
    verbose: bool,

    /// Run in the background, detached from the terminal
    #[arg(
        short = 'd',
        long = "daemonize",
        // `--d` was a unique prefix of `--daemonize` in the reference;
        // `--delegate` would make it ambiguous.
        alias = "d"
    )]
    daemonize: bool,

    /// TCP port to listen on, on all addresses (1..=65535)
    #[arg(
        short = 'p',
        long = "port",
        // `--p` was a unique prefix of `--port` in the reference; `--pid-file`
        // would make it ambiguous.
        alias = "p",
        value_name = "PORT",
        default_value_t = defaults().port,
        value_parser = parse_port,
        allow_negative_numbers = true
    )]
    port: u16,

    /// Address to listen on, with an optional port (default: -p); repeatable:
    /// 127.0.0.1, 0.0.0.0:9001, [::1]:9002, [::] [default: 0.0.0.0]
    #[arg(
        long = "listen",
        value_name = "ADDR",
        value_parser = parse_listen,
        action = ArgAction::Append
    )]
    listen: Vec<ListenArg>,

    /// Accept threads, each with its own listening socket and event loop (>= 1)
    /// [default: number of CPUs]
    #[arg(
        short = 'A',
        long = "accept-threads",
        value_name = "N",
        value_parser = parse_accept_threads,
        allow_negative_numbers = true
    )]
    accept_threads: Option<usize>,

    /// Connections each accept thread can hold at once, reserved at start-up
    /// (1..=16777216); with workers, 32 bytes of task queue per connection are
    /// committed at once, the rest only when used
    #[arg(
        short = 'C',
        long = "accept-capacity",
        value_name = "N",
        default_value_t = defaults().accept_capacity,
        value_parser = parse_accept_capacity,
        allow_negative_numbers = true
    )]
    accept_capacity: usize,

    /// Threads that run slow requests; 0 answers them inline like fast ones
    /// [default: the number of accept threads]
    #[arg(
        short = 'w',
        long = "worker-threads",
        value_name = "N",
        value_parser = parse_worker_threads,
        allow_negative_numbers = true
    )]
    worker_threads: Option<usize>,

    /// Milliseconds a slow request takes
    #[arg(
        short = 'D',
        long = "slow-duration",
        value_name = "MS",
        default_value_t = millis(defaults().slow_duration),
        value_parser = parse_millis,
        allow_negative_numbers = true
    )]
    slow_duration: u64,

    /// Milliseconds from accept to the end of the request before the connection is
    /// closed; 0 waits forever
    #[arg(
        long = "read-timeout",
        value_name = "MS",
        default_value_t = defaults().read_timeout.map_or(0, millis),
        value_parser = parse_millis,
        allow_negative_numbers = true
    )]
    read_timeout: u64,

    /// Milliseconds allowed for in-flight requests to finish after SIGTERM or SIGINT
    #[arg(
        long = "shutdown-timeout",
        value_name = "MS",
        default_value_t = millis(defaults().shutdown_timeout),
        value_parser = parse_millis,
        allow_negative_numbers = true
    )]
    shutdown_timeout: u64,

    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (an IP address, not a
    /// host name; never the service port) [default: off]
    #[arg(
        long = "metrics",
        value_name = "ADDR:PORT",
        value_parser = parse_metrics_addr
    )]
    metrics: Option<SocketAddr>,

    /// How a complete slow request reaches a worker: task (the task goes, the accept
    /// loop answers: slow throughput is workers / duration), socket (the connection
    /// goes to a blocking worker, which answers under a write deadline of
    /// --read-timeout, 60 s if 0: workers / duration) or loop (the connection moves
    /// onto a worker's own event loop, where the slow work is a timer of
    /// --slow-duration, modelling work that waits on a backend: one worker holds
    /// many). Capacity: socket queues up to -A x -C connections for the workers;
    /// loop gives each worker a queue and pool of ceil(-A x -C / -w); when full, a
    /// connection waits in its accept loop. -w 0 answers inline in every mode
    #[arg(
        long = "delegate",
        value_name = "MODE",
        default_value = "task",
        value_parser = parse_delegate
    )]
    delegate: Delegate,

    /// File the serving process writes its pid to (rewritten by an upgrade's new
    /// process, removed at exit)
    #[arg(long = "pid-file", value_name = "PATH", value_parser = parse_pid_file)]
    pid_file: Option<PathBuf>,

    /// Milliseconds a new binary started by SIGUSR2 or SIGHUP has to serve before
    /// the upgrade is abandoned
    #[arg(
        long = "upgrade-timeout",
        value_name = "MS",
        default_value_t = millis(defaults().upgrade_timeout),
        value_parser = parse_millis,
        allow_negative_numbers = true
    )]
    upgrade_timeout: u64,

    /// Read the options from FILE first, one per line (`name = value`, or the
    /// name alone for a flag; `#` comments); the command line overrides it. An
    /// upgrade (SIGHUP, SIGUSR2) reads it anew
    #[arg(long = "config", value_name = "FILE", value_parser = parse_config_file)]
    config: Option<PathBuf>,

    /// Check the command line and the --config file, print one line and exit:
    /// 0 if they are valid, 1 if not
    #[arg(long = "check-config")]
    check_config: bool,

    /// Lines to log: error, warn, info (serving, each upgrade step, the end
    /// of a drain) or debug; to stderr (under systemd with the journal's
    /// priority prefixes) or, with -d, to syslog. -v still prints debug lines
    /// to stdout
    #[arg(
        long = "log-level",
        value_name = "LEVEL",
        default_value = "warn",
        value_parser = parse_log_level
    )]
    log_level: Level,

    /// Once the listeners are bound, drop root and run as USER (every thread;
    /// supplementary groups dropped too), like memcached's -u; only root can
    /// [default: keep the user]
    #[arg(long = "user", value_name = "USER", value_parser = parse_name)]
    user: Option<String>,

    /// With --user: the group to run as [default: the user's primary group]
    #[arg(long = "group", value_name = "GROUP", value_parser = parse_name)]
    group: Option<String>,

    /// Print this help and exit
    // `-!` is AutoOpts' "help through a pager": here the same help, without one.
    #[arg(short = '?', long = "help", short_aliases = ['h', '!'], action = ArgAction::Help)]
    help: Option<bool>,

    /// Print the version and exit
    #[arg(long = "version", action = ArgAction::Version)]
    version: Option<bool>,
}

impl Args {
    /// Resolves the defaults that depend on other options (workers = accept threads,
    /// listen ports = `-p`).
    fn into_config(self) -> Result<Config, clap::Error> {
        let accept_threads = self.accept_threads.unwrap_or_else(default_accept_threads);
        let mut listen: Vec<SocketAddr> = Vec::new();
        for arg in &self.listen {
            let addr = SocketAddr::new(arg.ip, arg.port.unwrap_or(self.port));
            if listen.contains(&addr) {
                return Err(command().error(
                    ErrorKind::ArgumentConflict,
                    format!("--listen {addr} is given twice"),
                ));
            }
            listen.push(addr);
        }
        if listen.is_empty() {
            listen.push(SocketAddr::from((Ipv4Addr::UNSPECIFIED, self.port)));
        }
        if let Some(metrics) = self.metrics {
            if listen.iter().any(|l| l.port() == metrics.port()) {
                return Err(command().error(
                    ErrorKind::ArgumentConflict,
                    format!(
                        "--metrics must not use the service port {}: give it a port of its own",
                        metrics.port()
                    ),
                ));
            }
        }
        Ok(Config {
            verbose: self.verbose,
            daemonize: self.daemonize,
            port: self.port,
            listen,
            pid_file: self.pid_file,
            upgrade_timeout: Duration::from_millis(self.upgrade_timeout),
            accept_threads,
            accept_capacity: self.accept_capacity,
            worker_threads: self.worker_threads.unwrap_or(accept_threads),
            slow_duration: Duration::from_millis(self.slow_duration),
            read_timeout: match self.read_timeout {
                0 => None,
                ms => Some(Duration::from_millis(ms)),
            },
            idle_timeout: None,
            shutdown_timeout: Duration::from_millis(self.shutdown_timeout),
            metrics: self.metrics,
            delegate: self.delegate,
            config_file: self.config,
            check_config: self.check_config,
            log_level: self.log_level,
            user: self.user,
            group: self.group,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `args` after a program name.
    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        match Config::try_parse_from(std::iter::once("conn-daemon").chain(args.iter().copied())) {
            Ok(c) => Ok(c),
            Err(ConfigError::CommandLine(e)) => Err(e),
            Err(e) => panic!("{args:?}: not a command-line error: {e}"),
        }
    }

    /// Parses `args`, which must be accepted.
    fn ok(args: &[&str]) -> Config {
        parse(args).unwrap_or_else(|e| panic!("{args:?} refused: {e}"))
    }

    /// Parses `args`, which must be refused as a command-line error (not help/version).
    fn refused(args: &[&str]) -> clap::Error {
        match parse(args) {
            Ok(c) => panic!("{args:?} accepted: {c:?}"),
            Err(e) => {
                assert!(
                    !matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion),
                    "{args:?}: {:?}",
                    e.kind()
                );
                e
            }
        }
    }

    /// Every spelling of an option with an argument: short separate, short attached,
    /// long separate, long `=`, and the unique prefix both ways.
    fn spellings(short: Option<char>, long: &str, prefix: &str, value: &str) -> Vec<Vec<String>> {
        let mut all = Vec::new();
        if let Some(s) = short {
            all.push(vec![format!("-{s}"), value.to_string()]);
            all.push(vec![format!("-{s}{value}")]);
        }
        all.push(vec![format!("--{long}"), value.to_string()]);
        all.push(vec![format!("--{long}={value}")]);
        all.push(vec![format!("--{prefix}"), value.to_string()]);
        all.push(vec![format!("--{prefix}={value}")]);
        all
    }

    /// Checks every spelling of one option against the field it sets.
    fn check_all(
        short: Option<char>,
        long: &str,
        prefix: &str,
        value: &str,
        check: impl Fn(&Config),
    ) {
        for args in spellings(short, long, prefix, value) {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            check(&ok(&args));
        }
    }

    #[test]
    fn defaults() {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        let expected = Config {
            verbose: false,
            daemonize: false,
            port: 9000,
            listen: vec!["0.0.0.0:9000".parse().unwrap()],
            pid_file: None,
            upgrade_timeout: Duration::from_millis(10_000),
            accept_threads: cpus,
            accept_capacity: 100_000,
            worker_threads: cpus,
            slow_duration: Duration::from_millis(30),
            read_timeout: Some(Duration::from_millis(60_000)),
            idle_timeout: None,
            shutdown_timeout: Duration::from_millis(10_000),
            metrics: None,
            delegate: Delegate::Task,
            config_file: None,
            check_config: false,
            log_level: Level::Warn,
            user: None,
            group: None,
        };
        assert_eq!(ok(&[]), expected);
        assert_eq!(Config::default(), expected);
    }

    #[test]
    fn delegate_modes() {
        assert_eq!(ok(&["--delegate", "socket"]).delegate, Delegate::Socket);
        assert_eq!(ok(&["--delegate=loop"]).delegate, Delegate::Loop);
        assert_eq!(ok(&["--deleg", "task"]).delegate, Delegate::Task);
        let err = refused(&["--delegate", "thread"]);
        assert!(err.to_string().contains("task, socket or loop"), "{err}");
    }

    #[test]
    fn workers_follow_accept_threads() {
        let c = ok(&["-A", "3"]);
        assert_eq!((c.accept_threads, c.worker_threads), (3, 3));
        let c = ok(&["-A", "3", "-w", "5"]);
        assert_eq!((c.accept_threads, c.worker_threads), (3, 5));
        let c = ok(&["-w", "0", "-A", "7"]);
        assert_eq!((c.accept_threads, c.worker_threads), (7, 0));
    }

    #[test]
    fn flags() {
        for args in [&["-v"][..], &["--verbose"], &["--verb"]] {
            let c = ok(args);
            assert!(c.verbose && !c.daemonize, "{args:?}");
        }
        for args in [&["-d"][..], &["--daemonize"], &["--d"], &["--dae"]] {
            let c = ok(args);
            assert!(c.daemonize && !c.verbose, "{args:?}");
        }
        let c = ok(&["-vd"]);
        assert!(c.verbose && c.daemonize);
        // Bundled flags followed by an option with its value attached.
        let c = ok(&["-vdp9001"]);
        assert!(c.verbose && c.daemonize);
        assert_eq!(c.port, 9001);
    }

    #[test]
    fn port() {
        check_all(Some('p'), "port", "po", "9001", |c| {
            assert_eq!(c.port, 9001)
        });
        check_all(Some('p'), "port", "p", "1", |c| assert_eq!(c.port, 1));
        check_all(Some('p'), "port", "por", "65535", |c| {
            assert_eq!(c.port, 65535)
        });
        // As C's strtol with base 0 reads them (AutoOpts): hexadecimal, octal.
        assert_eq!(ok(&["-p", "0x57e4"]).port, 22500);
        assert_eq!(ok(&["-p", "0X57E4"]).port, 22500);
        assert_eq!(ok(&["-p", "054000"]).port, 22528);
        assert_eq!(ok(&["--port=+9000"]).port, 9000);
        assert_eq!(ok(&["-p", " 9000"]).port, 9000);
        for bad in ["09000", "0x", "0x-1", "08", "0b1", "++9", "+-9", "-0x1"] {
            refused(&["-p", bad]);
        }
    }

    #[test]
    fn every_numeric_option_reads_c_numbers() {
        let c = ok(&[
            "-A",
            "0x3",
            "-C",
            "010",
            "-w",
            "0",
            "-D",
            "0x10",
            "--read-timeout",
            "0100",
            "--shutdown-timeout",
            "0x20",
            "--upgrade-timeout",
            "+07",
        ]);
        assert_eq!(c.accept_threads, 3);
        assert_eq!(c.accept_capacity, 8);
        assert_eq!(c.worker_threads, 0);
        assert_eq!(c.slow_duration, Duration::from_millis(16));
        assert_eq!(c.read_timeout, Some(Duration::from_millis(64)));
        assert_eq!(c.shutdown_timeout, Duration::from_millis(32));
        assert_eq!(c.upgrade_timeout, Duration::from_millis(7));
        assert_eq!(ok(&["-w", "00"]).worker_threads, 0);
        assert_eq!(ok(&["-C", "0x1000000"]).accept_capacity, 16_777_216);
        refused(&["-C", "0x1000001"]);
        refused(&["-A", "0x0"]);
        refused(&["-D", "0x10000000000000000"]);
    }

    #[test]
    fn accept_threads() {
        check_all(Some('A'), "accept-threads", "accept-t", "4", |c| {
            assert_eq!(c.accept_threads, 4);
            assert_eq!(c.worker_threads, 4);
        });
        check_all(Some('A'), "accept-threads", "accept-threads", "1", |c| {
            assert_eq!(c.accept_threads, 1)
        });
    }

    #[test]
    fn accept_capacity() {
        check_all(Some('C'), "accept-capacity", "accept-c", "2", |c| {
            assert_eq!(c.accept_capacity, 2)
        });
        check_all(
            Some('C'),
            "accept-capacity",
            "accept-cap",
            "16777216",
            |c| assert_eq!(c.accept_capacity, 16_777_216),
        );
        check_all(Some('C'), "accept-capacity", "accept-capacit", "1", |c| {
            assert_eq!(c.accept_capacity, 1)
        });
    }

    #[test]
    fn worker_threads() {
        check_all(Some('w'), "worker-threads", "w", "0", |c| {
            assert_eq!(c.worker_threads, 0)
        });
        check_all(Some('w'), "worker-threads", "wor", "12", |c| {
            assert_eq!(c.worker_threads, 12)
        });
    }

    #[test]
    fn slow_duration() {
        check_all(Some('D'), "slow-duration", "slow", "5", |c| {
            assert_eq!(c.slow_duration, Duration::from_millis(5))
        });
        check_all(Some('D'), "slow-duration", "sl", "0", |c| {
            assert_eq!(c.slow_duration, Duration::ZERO)
        });
        let max = u64::MAX.to_string();
        check_all(Some('D'), "slow-duration", "slow-d", &max, |c| {
            assert_eq!(c.slow_duration, Duration::from_millis(u64::MAX))
        });
    }

    #[test]
    fn read_timeout() {
        check_all(None, "read-timeout", "re", "250", |c| {
            assert_eq!(c.read_timeout, Some(Duration::from_millis(250)))
        });
        check_all(None, "read-timeout", "r", "0", |c| {
            assert_eq!(c.read_timeout, None)
        });
    }

    #[test]
    fn shutdown_timeout() {
        check_all(None, "shutdown-timeout", "sh", "1500", |c| {
            assert_eq!(c.shutdown_timeout, Duration::from_millis(1500))
        });
        check_all(None, "shutdown-timeout", "shutdown", "0", |c| {
            assert_eq!(c.shutdown_timeout, Duration::ZERO)
        });
    }

    #[test]
    fn metrics() {
        let v4 = SocketAddr::from(([127, 0, 0, 1], 9100));
        check_all(None, "metrics", "m", "127.0.0.1:9100", |c| {
            assert_eq!(c.metrics, Some(v4))
        });
        let v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 9100));
        check_all(None, "metrics", "metr", "[::1]:9100", |c| {
            assert_eq!(c.metrics, Some(v6))
        });
        let any = ok(&["--metrics", "0.0.0.0:65535"]).metrics.unwrap();
        assert_eq!((any.ip().is_unspecified(), any.port()), (true, 65535));
        assert_eq!(
            ok(&["-p", "9001", "--metrics", "[::]:9000"])
                .metrics
                .unwrap()
                .port(),
            9000
        );
        for bad in [
            "localhost:9100",
            "metrics.example:9100",
            "127.0.0.1",
            "9100",
            ":9100",
            "::1:9100",
            "[::1]",
            "127.0.0.1:0",
            "127.0.0.1:65536",
            "127.0.0.1:-1",
            "",
        ] {
            let err = refused(&["--metrics", bad]);
            assert_eq!(err.kind(), ErrorKind::ValueValidation, "{bad:?}");
            let report = error_report(err);
            assert!(
                report.contains("host names are not resolved") && report.contains("Usage:"),
                "{report}"
            );
        }
        // Never the service port, whichever address it names.
        for args in [
            &["--metrics", "127.0.0.1:9000"][..],
            &["-p", "9100", "--metrics", "[::1]:9100"],
            &["--listen", "[::1]:9200", "--metrics", "127.0.0.1:9200"],
        ] {
            let err = refused(args);
            assert_eq!(err.kind(), ErrorKind::ArgumentConflict, "{args:?}");
            assert!(
                error_report(err).starts_with("error: --metrics must not use the service port"),
                "{args:?}"
            );
        }
    }

    #[test]
    fn everything_at_once() {
        let c = ok(&[
            "-v",
            "-d",
            "-p9100",
            "--accept-threads=2",
            "-C",
            "64",
            "--wor",
            "1",
            "--slow=5",
            "--read-timeout",
            "0",
            "--shut=200",
            "--metrics=127.0.0.1:9101",
            "--listen",
            "127.0.0.1",
            "--pid-file=/run/cd.pid",
            "--upgrade-timeout",
            "500",
        ]);
        assert_eq!(
            c,
            Config {
                verbose: true,
                daemonize: true,
                port: 9100,
                listen: vec!["127.0.0.1:9100".parse().unwrap()],
                pid_file: Some("/run/cd.pid".into()),
                upgrade_timeout: Duration::from_millis(500),
                accept_threads: 2,
                accept_capacity: 64,
                worker_threads: 1,
                slow_duration: Duration::from_millis(5),
                read_timeout: None,
                idle_timeout: None,
                shutdown_timeout: Duration::from_millis(200),
                metrics: Some(SocketAddr::from(([127, 0, 0, 1], 9101))),
                delegate: Delegate::Task,
                config_file: None,
                check_config: false,
                log_level: Level::Warn,
                user: None,
                group: None,
            }
        );
    }

    #[test]
    fn listen_addresses() {
        let addrs = |args: &[&str]| -> Vec<String> {
            ok(args).listen.iter().map(|a| a.to_string()).collect()
        };
        assert_eq!(addrs(&["-p", "9001"]), ["0.0.0.0:9001"]);
        assert_eq!(
            addrs(&[
                "-p",
                "9001",
                "--listen",
                "127.0.0.1",
                "--listen=0.0.0.0:9002",
                "--listen",
                "[::1]:9003",
                "--listen",
                "[::]",
                "--lis",
                "::1",
            ]),
            [
                "127.0.0.1:9001",
                "0.0.0.0:9002",
                "[::1]:9003",
                "[::]:9001",
                "[::1]:9001"
            ]
        );
        // The port of a later -p still applies to addresses without one.
        assert_eq!(
            addrs(&["--listen", "127.0.0.1", "-p", "9005"]),
            ["127.0.0.1:9005"]
        );
        for bad in [
            "localhost",
            "example.com:80",
            "127.0.0.1:0",
            "127.0.0.1:70000",
            "127.0.0.1:",
            "127.0.0.256",
            "[::1]9000",
            "[::1",
            "::1:9000:",
            "[127.0.0.1]:9000",
            "",
        ] {
            let e = refused(&["--listen", bad]);
            assert_eq!(e.kind(), ErrorKind::ValueValidation, "--listen {bad:?}");
        }
        let e = refused(&[
            "--listen",
            "127.0.0.1:9000",
            "--listen",
            "127.0.0.1",
            "-p9000",
        ]);
        assert!(e.to_string().contains("given twice"), "{e}");
    }

    #[test]
    fn relative_pid_file_becomes_absolute() {
        let c = ok(&["--pid-file", "cd.pid"]);
        let path = c.pid_file.unwrap();
        assert!(path.is_absolute() && path.ends_with("cd.pid"), "{path:?}");
    }

    #[test]
    fn refused_values() {
        let cases: &[&[&str]] = &[
            // Port out of range: the reference listened on 70000 % 65536.
            &["--port", "0"],
            &["-p0"],
            &["--port", "70000"],
            &["--port=65536"],
            &["-p", "-1"],
            &["-p", "abc"],
            &["-p", ""],
            &["--port="],
            &["-p", "9000 "],
            &["-p", "0x2328g"],
            &["-p", "90.5"],
            // Negative numbers, every spelling.
            &["-w", "-1"],
            &["-w-1"],
            &["--worker-threads=-1"],
            &["--worker-threads", "-1"],
            &["-D", "-5"],
            &["--slow=-5"],
            &["--read-timeout", "-1"],
            &["--shutdown-timeout=-1"],
            // Zero where at least one is needed.
            &["-A", "0"],
            &["--accept-threads=0"],
            &["-C", "0"],
            &["--accept-capacity=0"],
            &["-C", "16777217"],
            // Non-numbers.
            &["-A", "two"],
            &["-C", "1e5"],
            &["-w", "x"],
            &["-D", "30ms"],
            &["--read-timeout", "1.5"],
            // Overflow.
            &["-D", "18446744073709551616"],
            &["-w", "99999999999999999999999"],
            &["-A", "18446744073709551616"],
            &["--read-timeout=18446744073709551616"],
            &["--shutdown-timeout", "99999999999999999999999"],
            // Missing values.
            &["-p"],
            &["--port"],
            &["-p", "-v"],
            &["--slow-duration"],
            // Ambiguous prefixes.
            &["--acc", "1"],
            &["--acc=1"],
            &["--accept", "1"],
            &["--s=5"],
            &["--ver"],
            &["--ve"],
            // Unknown options.
            &["--bogus"],
            &["-x"],
            &["-V"],
            &["--port-number=9000"],
            &["--verbose=yes"],
            // Positional arguments.
            &["9000"],
            &["-v", "extra"],
            &["--", "9000"],
            // Repeated options, which AutoOpts refuses by default too.
            &["-p", "1", "-p", "2"],
            &["-v", "-v"],
        ];
        for args in cases {
            refused(args);
        }
    }

    #[test]
    fn refused_kinds() {
        assert_eq!(
            refused(&["--port", "70000"]).kind(),
            ErrorKind::ValueValidation
        );
        assert_eq!(refused(&["-w", "-1"]).kind(), ErrorKind::ValueValidation);
        assert_eq!(refused(&["-p", "abc"]).kind(), ErrorKind::ValueValidation);
        assert_eq!(refused(&["--bogus"]).kind(), ErrorKind::UnknownArgument);
        assert_eq!(refused(&["--acc", "1"]).kind(), ErrorKind::UnknownArgument);
        assert_eq!(refused(&["stray"]).kind(), ErrorKind::UnknownArgument);
    }

    #[test]
    fn help() {
        for args in [
            &["--help"][..],
            &["-?"],
            &["-h"],
            &["-!"],
            &["--he"],
            &["--h"],
            &["-v", "-?"],
        ] {
            let err = parse(args).expect_err("help is an Err");
            assert_eq!(err.kind(), ErrorKind::DisplayHelp, "{args:?}");
            assert!(!err.use_stderr());
        }
        let help = command().render_help().to_string();
        assert!(help.contains("Usage: conn-daemon [OPTIONS]"), "{help}");
        for item in [
            "-v, --verbose",
            "-d, --daemonize",
            "-p, --port <PORT>",
            "-A, --accept-threads <N>",
            "-C, --accept-capacity <N>",
            "-w, --worker-threads <N>",
            "-D, --slow-duration <MS>",
            "--read-timeout <MS>",
            "--shutdown-timeout <MS>",
            "--metrics <ADDR:PORT>",
            "-?, --help",
            "--version",
            "[default: 9000]",
            "[default: 100000]",
            "[default: 30]",
            "[default: 60000]",
            "[default: 10000]",
        ] {
            assert!(help.contains(item), "{item:?} missing from\n{help}");
        }
    }

    #[test]
    fn version() {
        for args in [&["--version"][..], &["--vers"]] {
            let err = parse(args).expect_err("version is an Err");
            assert_eq!(err.kind(), ErrorKind::DisplayVersion, "{args:?}");
            let text = err.render().to_string();
            assert_eq!(
                text,
                format!("conn-daemon {}\n", crate::config::version::DESCRIPTION)
            );
            assert!(text.starts_with(&format!("conn-daemon {} (git ", env!("CARGO_PKG_VERSION"))));
        }
    }

    #[test]
    fn error_report_has_error_and_full_help() {
        let help = command().render_help().to_string();
        for args in [
            &["--port", "70000"][..],
            &["--acc", "1"],
            &["-w", "-1"],
            &["x"],
        ] {
            let report = error_report(refused(args));
            assert!(report.starts_with("error: "), "{report}");
            assert!(
                report.ends_with(&format!("\n\n{}\n", help.trim_end())),
                "{report}"
            );
            // The short usage line and the "try --help" hint would be redundant.
            assert_eq!(report.matches("Usage:").count(), 1, "{report}");
            assert!(!report.contains("For more information"), "{report}");
        }
        let report = error_report(refused(&["--port", "70000"]));
        assert!(
            report.starts_with(
                "error: invalid value '70000' for '--port <PORT>': \
                 expected a whole number from 1 to 65535\n\n"
            ),
            "{report}"
        );
        for (args, prefix) in [(&["--acc", "1"][..], "acc"), (&["--accept=1"], "accept")] {
            let report = error_report(refused(args));
            assert!(
                report.starts_with(&format!(
                    "error: ambiguous option '--{prefix}': it could be \
                     '--accept-threads' or '--accept-capacity'\n\n"
                )),
                "{report}"
            );
        }
        let report = error_report(refused(&["--s=5"]));
        assert!(
            report.starts_with(
                "error: ambiguous option '--s': it could be \
                 '--slow-duration' or '--shutdown-timeout'\n\n"
            ),
            "{report}"
        );
        let report = error_report(refused(&["--ver"]));
        assert!(
            report.starts_with(
                "error: ambiguous option '--ver': it could be '--verbose' or '--version'\n\n"
            ),
            "{report}"
        );
        // A plain unknown option keeps clap's message and tip.
        let report = error_report(refused(&["--bogus"]));
        assert!(
            report.starts_with("error: unexpected argument '--bogus' found"),
            "{report}"
        );
        let report = error_report(refused(&["-w", "-1"]));
        assert!(
            report.starts_with("error: invalid value '-1' for '--worker-threads <N>'"),
            "{report}"
        );
    }

    #[test]
    fn number_bounds() {
        assert_eq!(number::<u8>("255", 0, 255), Ok(255));
        assert!(number::<u8>("256", 0, u64::MAX).is_err());
        assert!(number::<u64>("", 0, 10).is_err());
        assert!(number::<u64>("11", 0, 10).is_err());
        assert!(number::<u64>("4", 5, 10).is_err());
        assert_eq!(
            number::<u64>("18446744073709551615", 0, u64::MAX),
            Ok(u64::MAX)
        );
        assert!(number::<u64>("18446744073709551616", 0, u64::MAX).is_err());
    }
}
