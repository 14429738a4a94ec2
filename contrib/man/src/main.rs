//! `conn-daemon-man`: writes the man page conn-daemon(8) to stdout.
//!
//! NAME, SYNOPSIS, DESCRIPTION and OPTIONS come from the server's own clap
//! command (`conn_daemon::config::command`), so the page cannot drift from
//! what the binary accepts; SIGNALS, UPGRADE, FILES, EXIT STATUS and EXAMPLES
//! are written below, for what clap does not know. `contrib/debian/build.sh`
//! runs it for the package (`usr/share/man/man8/conn-daemon.8.gz`).
#![forbid(unsafe_code)]

use std::io::{self, Write};
use std::process::ExitCode;

use clap_mangen::roff::{bold, italic, roman, Inline, Roff};
use clap_mangen::Man;

/// One paragraph of a written section.
enum Para {
    /// Running text.
    Text(&'static str),
    /// A tagged paragraph (`.TP`): the tag in bold, then its text.
    Item(&'static str, &'static str),
    /// Literal lines, not filled (commands to type).
    Code(&'static [&'static str]),
}

use Para::{Code, Item, Text};

/// The written sections, in the order of man-pages(7).
const SECTIONS: &[(&str, &[Para])] = &[
    (
        "SIGNALS",
        &[
            Text("One thread owns these signals; they are blocked everywhere else from the start, so a signal sent during start-up waits for the server instead of killing it."),
            Item("SIGTERM", "The graceful drain: each listener takes what waits in its backlog and closes, connections without a complete request are closed, complete ones (slow ones too) are answered, then the process exits 0. Bounded by --shutdown-timeout. A repeated SIGTERM changes nothing (a supervisor escalates with SIGKILL)."),
            Item("SIGINT", "The same drain; a second SIGINT exits at once with status 1."),
            Item("SIGQUIT", "Exits at once with status 1, nothing drained; the pid file is left behind."),
            Item("SIGUSR2, SIGHUP", "Zero-downtime upgrade to the executable now at the path the server was started from: see UPGRADE. While one is under way, another is ignored with one line."),
            Item("SIGPIPE", "Ignored."),
        ],
    ),
    (
        "UPGRADE",
        &[
            Text("On SIGUSR2 or SIGHUP the server starts the executable at the path it was started from (symlinks unresolved), with the same arguments, and hands it every listening socket (LISTEN_FDS, by the systemd convention). The new process serves those very sockets, so nothing waiting in their queues is lost, writes the pid file, and tells the old one. Only then does the old process stop accepting, finish every connection it had accepted (bounded by --shutdown-timeout) and exit 0."),
            Text("If the new executable is missing, exits, crashes, or does not serve within --upgrade-timeout, the old process logs one line (upgrade failed: ...; still serving) and goes on serving. Install a new binary by rename in the same directory, never by writing over the old file."),
            Text("Under systemd, systemctl reload conn-daemon sends the signal; the new process tells systemd its pid (MAINPID=) and READY=1, and systemctl status shows Status: \"serving on N address(es)\", or \"serving (upgrade failed)\". The Debian package does this on upgrade: dpkg -i of a newer version reloads the running service instead of restarting it."),
        ],
    ),
    (
        "FILES",
        &[
            Item("/usr/bin/conn-daemon", "The server; an upgrade executes whatever is at this path then."),
            Item("/lib/systemd/system/conn-daemon.service", "The service: Type=notify, reload = SIGUSR2, stop = SIGTERM and a bounded wait for the drain, DynamicUser=yes with no capabilities. Override settings with systemctl edit conn-daemon."),
            Item("/etc/conn-daemon/conn-daemon.conf", "The settings (--config in the unit): the long options, name = value, one per line. Edit it, then systemctl reload conn-daemon: the new process reads it anew; a file it refuses leaves the old one serving, with one line naming the file and the line. conn-daemon --config FILE --check-config checks it."),
            Item("/lib/systemd/system/conn-daemon.socket", "The listening socket, bound by systemd (0.0.0.0:9000 by default) and passed to the service as fd 3; it outlives restarts and upgrades."),
            Item("/run/conn-daemon/conn-daemon.pid", "The serving process's pid (--pid-file in the unit), rewritten by an upgrade's new process."),
            Item("/usr/share/doc/conn-daemon/", "The README: the protocol, every option, operating notes."),
        ],
    ),
    (
        "EXIT STATUS",
        &[
            Item("0", "Stopped by SIGTERM or SIGINT after the drain, or the old process of a successful upgrade; --help and --version."),
            Item("1", "A bad command line (the error and the usage on stderr), a bad --config file or a refused --user or --group (one line), --check-config that finds an error, a second SIGINT, or SIGQUIT."),
            Item("10", "Not enough memory for the connection pools at start-up."),
            Item("100", "A system error at start-up: an address the host lacks, a port in use, an inherited fd that is not a listening TCP socket; one line on stderr names it."),
        ],
    ),
    (
        "EXAMPLES",
        &[
            Text("Two accept threads on port 9000 of every address, slow requests taking 50 ms:"),
            Code(&["conn-daemon -A 2 -D 50"]),
            Text("Only on loopback, IPv4 and IPv6, with a pid file:"),
            Code(&["conn-daemon --listen 127.0.0.1:9000 --listen '[::1]:9000' --pid-file /run/conn-daemon.pid"]),
            Text("Upgrade a server by hand:"),
            Code(&[
                "install -m 755 new/conn-daemon /usr/local/bin/.conn-daemon.new",
                "mv -f /usr/local/bin/.conn-daemon.new /usr/local/bin/conn-daemon",
                "kill -USR2 \"$(cat /run/conn-daemon.pid)\"",
            ]),
            Text("With the Debian package (systemd):"),
            Code(&[
                "systemctl status conn-daemon      # Status: \"serving on 1 address\"",
                "systemctl reload conn-daemon      # the zero-downtime upgrade",
                "systemctl stop conn-daemon        # the graceful drain",
                "journalctl -u conn-daemon         # one line per event",
            ]),
        ],
    ),
    (
        "SEE ALSO",
        &[Text("systemctl(1), systemd.service(5), systemd.socket(5), sd_notify(3)")],
    ),
];

fn render(out: &mut dyn Write) -> io::Result<()> {
    let man = Man::new(conn_daemon::config::command())
        .section("8")
        .manual("System Administration");
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    let mut roff = Roff::default();
    for (heading, paras) in SECTIONS {
        roff.control("SH", [*heading]);
        for para in *paras {
            match para {
                Text(text) => {
                    roff.control("PP", []);
                    roff.text(inlines(text));
                }
                Item(tag, text) => {
                    roff.control("TP", []);
                    roff.text([bold(*tag)]);
                    roff.text(inlines(text));
                }
                Code(lines) => {
                    roff.control("PP", []);
                    roff.control("nf", []);
                    roff.control("RS", ["4"]);
                    for line in *lines {
                        roff.text([roman(*line)]);
                    }
                    roff.control("RE", []);
                    roff.control("fi", []);
                }
            }
        }
    }
    roff.to_writer(out)?;
    man.render_version_section(out)
}

/// Running text, with the option names in bold and the man page references
/// (`name(N)`) in italics, as man-pages(7) asks.
fn inlines(text: &str) -> Vec<Inline> {
    let mut out = Vec::new();
    let mut plain = String::new();
    for word in text.split_inclusive(' ') {
        let bare = word.trim_end_matches([' ', ',', '.', ';', ':']);
        let rest = &word[bare.len()..];
        let styled = if bare.starts_with("--") && bare.len() > 2 {
            Some(bold(bare))
        } else if is_page_ref(bare) {
            Some(italic(bare))
        } else {
            None
        };
        match styled {
            Some(inline) => {
                if !plain.is_empty() {
                    out.push(roman(std::mem::take(&mut plain)));
                }
                out.push(inline);
                plain.push_str(rest);
            }
            None => plain.push_str(word),
        }
    }
    if !plain.is_empty() {
        out.push(roman(plain));
    }
    out
}

/// `systemctl(1)`: a name, then a section number in parentheses.
fn is_page_ref(word: &str) -> bool {
    let Some((name, section)) = word.split_once('(') else {
        return false;
    };
    !name.is_empty()
        && section.len() >= 2
        && section.ends_with(')')
        && section[..section.len() - 1]
            .bytes()
            .all(|b| b.is_ascii_digit())
}

fn main() -> ExitCode {
    let stdout = io::stdout();
    let mut out = stdout.lock();
    match render(&mut out).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("conn-daemon-man: cannot write the man page: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page() -> String {
        let mut out = Vec::new();
        render(&mut out).expect("rendering into memory");
        String::from_utf8(out).expect("roff is text")
    }

    #[test]
    fn every_section_is_there_once() {
        let page = page();
        for heading in [
            "NAME",
            "SYNOPSIS",
            "DESCRIPTION",
            "OPTIONS",
            "SIGNALS",
            "UPGRADE",
            "FILES",
            "EXIT STATUS",
            "EXAMPLES",
            "SEE ALSO",
            "VERSION",
        ] {
            let line = if heading.contains(' ') {
                format!(".SH \"{heading}\"\n")
            } else {
                format!(".SH {heading}\n")
            };
            assert_eq!(page.matches(&line).count(), 1, "{heading} in:\n{page}");
        }
        assert!(page.contains(".TH conn-daemon 8 "), "title in:\n{page}");
    }

    #[test]
    fn the_options_come_from_the_server() {
        let page = page();
        for arg in conn_daemon::config::command().get_arguments() {
            if let Some(long) = arg.get_long() {
                let roff_long = format!("\\-\\-{}", long.replace('-', "\\-"));
                assert!(page.contains(&roff_long), "--{long} missing");
            }
        }
    }

    #[test]
    fn page_references_are_recognised() {
        assert!(is_page_ref("systemctl(1)"));
        assert!(is_page_ref("sd_notify(3)"));
        assert!(!is_page_ref("address(es)"));
        assert!(!is_page_ref("(1)"));
    }
}
