//! The `--metrics` listener as the tests see it: an address for it, one HTTP
//! exchange with it, and a scrape parsed once into its samples, which a test
//! then asks for one series, a sum over labels, or waits on.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use super::{free_port, read_to_end, send, End, IO_TIMEOUT};

/// A loopback address for `--metrics` whose port was free a moment ago.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// One HTTP exchange with the metrics listener: (status line, head, body), or
/// what went wrong. Only a response closed with EOF within `IO_TIMEOUT`
/// counts: the listener closes after every answer, and a reset means the
/// answer may be cut short.
pub fn exchange(addr: SocketAddr, request: &[u8]) -> Result<(String, String, String), String> {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    send(&s, request);
    let r = read_to_end(&s, IO_TIMEOUT);
    let text = String::from_utf8(r.bytes).map_err(|e| format!("not UTF-8: {e}"))?;
    match (r.end, text.split_once("\r\n\r\n")) {
        (End::Eof, Some((head, body))) => {
            let status = head.lines().next().unwrap_or_default().to_string();
            Ok((status, head.to_string(), body.to_string()))
        }
        (end, _) => Err(format!("{addr}: got {text:?}, then {end:?}")),
    }
}

/// [`exchange`], which must succeed.
#[track_caller]
pub fn http(addr: SocketAddr, request: &[u8]) -> (String, String, String) {
    exchange(addr, request).unwrap_or_else(|e| panic!("{e}"))
}

/// One `GET /metrics`: the body as the server sent it, and each sample line's
/// series (name and labels, exactly as written) with its value.
pub struct Scrape {
    /// The body, unparsed: promtool's input, and what a failed assertion shows.
    pub text: String,
    samples: BTreeMap<String, f64>,
}

impl Scrape {
    /// Scrapes `addr`. Panics unless the answer is a whole `200 OK` of the
    /// Prometheus text format whose `Content-Length` is the body's, and every
    /// sample line is a series and a number: no test can read a half answer.
    #[track_caller]
    pub fn get(addr: SocketAddr) -> Scrape {
        let (status, head, body) = http(addr, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(
            head.contains("\r\nContent-Type: text/plain; version=0.0.4\r\n"),
            "{head}"
        );
        assert!(
            head.contains(&format!("\r\nContent-Length: {}\r\n", body.len())),
            "{head}"
        );
        let samples = body
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                let (series, value) = l.rsplit_once(' ').expect("series value");
                (series.to_string(), value.parse().expect("a number"))
            })
            .collect();
        Scrape {
            text: body,
            samples,
        }
    }

    /// The sample of exactly this series (`name{labels}` as the server writes
    /// it), if there is one.
    pub fn sample(&self, series: &str) -> Option<f64> {
        self.samples.get(series).copied()
    }

    /// The sample of exactly this series, which must be there.
    #[track_caller]
    pub fn one(&self, series: &str) -> f64 {
        self.sample(series)
            .unwrap_or_else(|| panic!("{series} missing from\n{}", self.text))
    }

    /// Samples of the metric `name` (not of another whose name it begins)
    /// whose label set, `{...}` or "", passes `keep`.
    fn matching<'a>(
        &'a self,
        name: &'a str,
        keep: impl Fn(&str) -> bool + 'a,
    ) -> impl Iterator<Item = f64> + 'a {
        self.samples.iter().filter_map(move |(series, v)| {
            let labels = series.strip_prefix(name)?;
            ((labels.is_empty() || labels.starts_with('{')) && keep(labels)).then_some(*v)
        })
    }

    /// Sum over the samples of `name` whose labels include every `k="v"` of
    /// `labels` (all accept threads, say, with `&[]`).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, |l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .sum()
    }

    /// Sum over the samples of `name` that carry the label `key`, whatever its
    /// value (every worker's, say, and no accept thread's).
    pub fn sum_labelled(&self, name: &str, key: &str) -> f64 {
        self.matching(name, |l| l.contains(&format!("{key}=\"")))
            .sum()
    }

    /// How many samples `name` has (one per label set).
    pub fn count(&self, name: &str) -> usize {
        self.matching(name, |_| true).count()
    }
}

/// The body as the server sent it, so that `{m:?}` in an assertion's message
/// shows the scrape the way promtool and a person read it.
impl fmt::Debug for Scrape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Scrapes `addr` until `ok` holds and returns that scrape; panics naming
/// `what`, with the last scrape, if it does not hold within `within`. Each
/// scrape is itself bounded (see [`exchange`]).
#[track_caller]
pub fn wait_for(
    addr: SocketAddr,
    what: &str,
    within: Duration,
    ok: impl Fn(&Scrape) -> bool,
) -> Scrape {
    let deadline = Instant::now() + within;
    loop {
        let m = Scrape::get(addr);
        if ok(&m) {
            return m;
        }
        if Instant::now() >= deadline {
            panic!(
                "{what}: not seen within {within:?}; last scrape:\n{}",
                m.text
            );
        }
        thread::sleep(Duration::from_millis(10));
    }
}
