//! The memcache example (`examples/memcache`): its protocol and store fed bytes
//! directly, answers checked byte for byte against what memcached 1.6.18 answers to
//! the same input (each transcript below was taken from it), whole, split into any
//! reads and through small output areas; no allocation per request once started.
#![allow(unsafe_code)]

mod util;

#[allow(dead_code)]
#[path = "../examples/memcache/proto.rs"]
mod proto;
#[allow(dead_code)]
#[path = "../examples/memcache/stats.rs"]
mod stats;
#[allow(dead_code)]
#[path = "../examples/memcache/store.rs"]
mod store;

use proto::{Area, Server, Session, Status, READ_BUFFER, STATS_ROOM, VERSION, WRITE_BUFFER};
use store::StoreConfig;
use util::alloc_count::{self, Counting};

#[global_allocator]
static GLOBAL: Counting = Counting::opted_in_threads();

fn server_with(memory: usize, item_max: usize) -> Server {
    let cfg = StoreConfig {
        memory,
        item_max,
        shards: 4,
    };
    Server::new(&cfg, 2, 1024).expect("store")
}

fn server() -> Server {
    server_with(64 << 20, 1 << 20)
}

/// What the engine does, in miniature: a read buffer of READ_BUFFER bytes filled
/// `step` bytes at a time, `process` until it needs input, the output area sent
/// whenever it asks. Returns every byte written and whether the session closed.
fn drive(srv: &Server, s: &mut Session, input: &[u8], step: usize, area: usize) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let mut out = Area::new(area);
    let mut buf: Vec<u8> = Vec::with_capacity(READ_BUFFER);
    let mut fed = 0;
    loop {
        let take = step.min(input.len() - fed).min(READ_BUFFER - buf.len());
        buf.extend_from_slice(&input[fed..fed + take]);
        fed += take;
        loop {
            let now = srv.clock.now();
            let (consumed, status) = s.process(srv, now, &buf, &mut out);
            buf.drain(..consumed);
            match status {
                Status::Flush | Status::Stream => {
                    assert!(!out.buf.is_empty(), "{status:?} with nothing to send");
                    got.extend_from_slice(&out.buf);
                    out.buf.clear();
                }
                Status::Answered(_) => {}
                Status::Close => {
                    got.extend_from_slice(&out.buf);
                    return (got, true);
                }
                Status::NeedInput { .. } => break,
            }
        }
        got.extend_from_slice(&out.buf);
        out.buf.clear();
        if fed == input.len() {
            return (got, false);
        }
    }
}

/// `input` on a fresh session, whole, in 1- and 7-byte reads and through a small
/// output area: always `want`.
fn check(srv: &Server, input: &[u8], want: &[u8]) {
    // Byte by byte costs too much for megabytes in a debug build: 997 then.
    let small = if input.len() > 65536 { 997 } else { 1 };
    for (step, area) in [
        (usize::MAX, WRITE_BUFFER),
        (small, WRITE_BUFFER),
        (7, WRITE_BUFFER),
        (4096, STATS_ROOM),
    ] {
        let mut s = Session::default();
        let (got, _) = drive(srv, &mut s, input, step, area);
        s.close(srv);
        srv.store.audit(true).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(want),
            "input {:?} in reads of {step}, output area {area}",
            String::from_utf8_lossy(&input[..input.len().min(200)])
        );
    }
}

/// `input` on session `s` at time `now`, processed until it needs more input:
/// everything written (one output area, never full here).
fn feed(srv: &Server, s: &mut Session, now: u32, mut input: &[u8]) -> Vec<u8> {
    let mut out = Area::new(WRITE_BUFFER);
    loop {
        let (n, st) = s.process(srv, now, input, &mut out);
        input = &input[n..];
        match st {
            Status::Answered(_) => {}
            Status::NeedInput { .. } | Status::Close => return out.buf,
            Status::Flush | Status::Stream => panic!("{st:?} in a short transcript"),
        }
    }
}

/// One session, one pass: for transcripts whose state carries over.
fn once(srv: &Server, input: &[u8]) -> Vec<u8> {
    let mut s = Session::default();
    let (got, _) = drive(srv, &mut s, input, usize::MAX, WRITE_BUFFER);
    s.close(srv);
    srv.store.audit(true).unwrap();
    got
}

fn version() -> String {
    format!("VERSION {VERSION}\r\n")
}

#[test]
fn storage_and_retrieval() {
    let srv = server();
    check(
        &srv,
        b"set a 0 0 1\r\nx\r\nget a\r\n",
        b"STORED\r\nVALUE a 0 1\r\nx\r\nEND\r\n",
    );
    check(
        &srv,
        b"set a 0 0 1 noreply\r\nx\r\nget a\r\n",
        b"VALUE a 0 1\r\nx\r\nEND\r\n",
    );
    check(
        &srv,
        b"set a 0 0 0\r\n\r\nget a\r\n",
        b"STORED\r\nVALUE a 0 0\r\n\r\nEND\r\n",
    );
    check(
        &srv,
        b"set  a  0  0  1 \r\nx\r\nget   a  \r\n",
        b"STORED\r\nVALUE a 0 1\r\nx\r\nEND\r\n",
    );
    // A bare \n ends a line too.
    check(
        &srv,
        b"set a 0 0 1\nx\r\nget a\n",
        b"STORED\r\nVALUE a 0 1\r\nx\r\nEND\r\n",
    );
    check(
        &srv,
        b"set a 0 0 01\r\nx\r\nset a 0 0 +1\r\nx\r\nset a 0 0 1x\r\nget a\r\n",
        b"STORED\r\nSTORED\r\nCLIENT_ERROR bad command line format\r\nVALUE a 0 1\r\nx\r\nEND\r\n",
    );
    // 32-bit flags; a larger number is cut to 32 bits, as memcached's assignment does.
    let out = once(
        &srv,
        b"set f 4294967295 0 1\r\nx\r\nget f\r\nset g 4294967296 0 1\r\ny\r\nget g\r\n",
    );
    assert_eq!(
        out,
        b"STORED\r\nVALUE f 4294967295 1\r\nx\r\nEND\r\nSTORED\r\nVALUE g 0 1\r\ny\r\nEND\r\n"
    );
    let out = once(&srv, b"set zz0 0 0 1\r\nq\r\nadd zz 5 0 1\r\nw\r\nadd zz 0 0 1\r\nq\r\nappend zz 9 9 2\r\nab\r\nprepend zz 0 0 2\r\ncd\r\nget zz\r\n");
    assert_eq!(
        out,
        b"STORED\r\nSTORED\r\nNOT_STORED\r\nSTORED\r\nSTORED\r\nVALUE zz 5 5\r\ncdwab\r\nEND\r\n"
    );
    check(&srv, b"append nx 0 0 1\r\nx\r\nprepend nx 0 0 1\r\ny\r\nreplace nx 0 0 1\r\nz\r\ncas nx 0 0 1 5\r\nx\r\n",
        b"NOT_STORED\r\nNOT_STORED\r\nNOT_STORED\r\nNOT_FOUND\r\n");
}

#[test]
fn cas_uniques() {
    let srv = server();
    let out = once(&srv, b"set c 1 0 1\r\nx\r\ngets c\r\n");
    let text = String::from_utf8(out).unwrap();
    let unique: u64 = text
        .lines()
        .nth(1)
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let bad = format!("cas c 0 0 1 {}\r\ny\r\ngets c\r\n", unique + 1000);
    let out = once(&srv, bad.as_bytes());
    assert_eq!(
        out,
        format!("EXISTS\r\nVALUE c 1 1 {unique}\r\nx\r\nEND\r\n").as_bytes()
    );
    let good =
        format!("cas c 7 0 1 {unique}\r\nz\r\ncas c 7 0 1 {unique} noreply\r\nw\r\nget c c\r\n");
    let out = once(&srv, good.as_bytes());
    assert_eq!(
        out,
        b"STORED\r\nVALUE c 7 1\r\nz\r\nVALUE c 7 1\r\nz\r\nEND\r\n"
    );
    let stats = String::from_utf8(once(&srv, b"stats\r\n")).unwrap();
    for line in [
        "STAT cas_hits 1\r\n",
        "STAT cas_badval 2\r\n",
        "STAT cas_misses 0\r\n",
    ] {
        assert!(stats.contains(line), "{line:?} in {stats}");
    }
}

#[test]
fn malformed_lines() {
    let srv = server();
    let v = version();
    let cases: &[(&[u8], String)] = &[
        (b"bogus\r\nversion\r\n", format!("ERROR\r\n{v}")),
        (b"\r\nversion\r\n", format!("ERROR\r\n{v}")),
        (b"\n\n\nversion\n", format!("ERROR\r\nERROR\r\nERROR\r\n{v}")),
        (b"  version  \r\n", v.clone()),
        (b"version\r\r\n", "ERROR\r\n".into()),
        (b"g\r\nversion\r\n", format!("ERROR\r\n{v}")),
        (b"get\r\nversion\r\n", format!("ERROR\r\n{v}")),
        (b"gets\r\ngat\r\ngats 1\r\nversion\r\n", format!("ERROR\r\nERROR\r\nEND\r\n{v}")),
        (b"SET a 0 0 1\r\nx\r\nversion\r\n", format!("ERROR\r\nERROR\r\n{v}")),
        (b"set a\t0 0 1\r\nx\r\nversion\r\n", format!("ERROR\r\nERROR\r\n{v}")),
        (b"set a 0 0\r\nversion\r\n", format!("ERROR\r\n{v}")),
        (b"set a 0 0 1 2 3\r\nversion\r\n", format!("ERROR\r\n{v}")),
        (b"set a -1 0 1\r\nx\r\nversion\r\n", format!("CLIENT_ERROR bad command line format\r\nERROR\r\n{v}")),
        (b"set a 0 0 -1\r\nx\r\nversion\r\n", format!("CLIENT_ERROR bad command line format\r\nERROR\r\n{v}")),
        (b"set a 0 0 abc\r\nx\r\nversion\r\n", format!("CLIENT_ERROR bad command line format\r\nERROR\r\n{v}")),
        (b"set a 0 0 2147483646\r\nx\r\nversion\r\n", format!("CLIENT_ERROR bad command line format\r\nERROR\r\n{v}")),
        (b"set a\x00b 0 0 1\r\nx\r\nversion\r\n", format!("ERROR\r\nERROR\r\n{v}")),
        (b"get a\x00 b\r\nversion\r\n", format!("END\r\n{v}")),
        (b"cas a 0 0 1\r\nx\r\nversion\r\n", format!("ERROR\r\nERROR\r\n{v}")),
        (b"cas a 0 0 1 x\r\nx\r\nversion\r\n", format!("CLIENT_ERROR bad command line format\r\nERROR\r\n{v}")),
        (b"incr\r\nincr a\r\ndecr a b c d\r\ntouch\r\nversion\r\n", format!("ERROR\r\nERROR\r\nERROR\r\nERROR\r\n{v}")),
        (b"stats foo\r\nversion\r\n", format!("ERROR\r\n{v}")),
        (b"shutdown\r\n", "ERROR: shutdown not enabled\r\n".into()),
        (b"version x y\r\nquit x\r\nversion\r\n", v.clone()),
        (b"verbosity\r\nverbosity 1\r\nverbosity x\r\nverbosity 1 noreply\r\nverbosity 1 2\r\nversion\r\n",
            format!("ERROR\r\nOK\r\nCLIENT_ERROR bad command line format\r\nOK\r\n{v}")),
        (b"delete a 0\r\ndelete a 1\r\ndelete a noreply\r\ndelete a 0 noreply\r\ndelete a x y\r\ndelete\r\ndelete a b c d\r\nversion\r\n",
            format!("NOT_FOUND\r\nCLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\nCLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\nERROR\r\nERROR\r\n{v}")),
        (b"touch a 10\r\ntouch a x\r\ntouch a\r\nversion\r\n", format!("NOT_FOUND\r\nCLIENT_ERROR invalid exptime argument\r\nERROR\r\n{v}")),
        (b"gat 10 a b\r\ngat x a\r\ngat 10\r\nversion\r\n", format!("END\r\nCLIENT_ERROR invalid exptime argument\r\nEND\r\n{v}")),
        (b"flush_all x\r\nflush_all noreply\r\nflush_all 1 2 3\r\nversion\r\n", format!("CLIENT_ERROR invalid exptime argument\r\nERROR\r\n{v}")),
        (b"set a 0 0 1 norepl\r\nx\r\nset a 0 0 1 noreplyx\r\nx\r\nversion\r\n", format!("STORED\r\nSTORED\r\n{v}")),
    ];
    for (input, want) in cases {
        check(&srv, input, want.as_bytes());
    }
}

#[test]
fn keys_up_to_250_bytes() {
    let srv = server();
    let v = version();
    let k250 = "k".repeat(250);
    let k251 = "k".repeat(251);
    check(
        &srv,
        format!("set {k250} 0 0 1\r\nx\r\nget {k250}\r\n").as_bytes(),
        format!("STORED\r\nVALUE {k250} 0 1\r\nx\r\nEND\r\n").as_bytes(),
    );
    check(
        &srv,
        format!("set {k251} 0 0 1\r\nx\r\nversion\r\n").as_bytes(),
        format!("CLIENT_ERROR bad command line format\r\nERROR\r\n{v}").as_bytes(),
    );
    // One long key anywhere in a get: only the error, no value.
    check(
        &srv,
        format!("set a 0 0 1\r\nx\r\nget a {k251}\r\nversion\r\n").as_bytes(),
        format!("STORED\r\nCLIENT_ERROR bad command line format\r\n{v}").as_bytes(),
    );
    let many = "a b c d e f g h i j k l m n o p q r s t u v w x y z a";
    check(
        &srv,
        format!("get {many} {k251}\r\nversion\r\n").as_bytes(),
        format!("CLIENT_ERROR bad command line format\r\n{v}").as_bytes(),
    );
    for cmd in ["touch {k} 1", "incr {k} 1", "delete {k}"] {
        let line = cmd.replace("{k}", &k251);
        check(
            &srv,
            format!("{line}\r\n").as_bytes(),
            b"CLIENT_ERROR bad command line format\r\n",
        );
    }
}

#[test]
fn data_block_not_ending_in_crlf() {
    let srv = server();
    let v = version();
    // memcached reads exactly <bytes>+2 and goes on right after them.
    check(
        &srv,
        b"set a 0 0 1\r\nx\r\nset a 0 0 1\r\nxy\r\nget a\r\n",
        b"STORED\r\nCLIENT_ERROR bad data chunk\r\nERROR\r\nVALUE a 0 1\r\nx\r\nEND\r\n",
    );
    check(
        &srv,
        b"set a 0 0 1\r\nxyz\r\nget a\r\n",
        b"CLIENT_ERROR bad data chunk\r\nERROR\r\nVALUE a 0 1\r\nx\r\nEND\r\n",
    );
    check(
        &srv,
        b"set a 0 0 1 noreply\r\nxx\r\nversion\r\n",
        format!("ERROR\r\n{v}").as_bytes(),
    );
}

#[test]
fn object_too_large_is_swallowed() {
    let srv = server();
    let v = version();
    // memcached's limit: its 48-byte item, 8 of CAS, key + NUL, flags if not 0, \r\n.
    let mut ok = b"set a 0 0 1048516\r\n".to_vec();
    ok.extend(std::iter::repeat(b'x').take(1048516));
    ok.extend_from_slice(b"\r\nversion\r\n");
    check(&srv, &ok, format!("STORED\r\n{v}").as_bytes());
    for (line, len) in [
        ("set a 0 0 1048517", 1048517),
        ("set a 1 0 1048513", 1048513),
    ] {
        let mut big = format!("{line}\r\n").into_bytes();
        big.extend(std::iter::repeat(b'y').take(len));
        big.extend_from_slice(b"\r\nversion\r\n");
        check(
            &srv,
            &big,
            format!("SERVER_ERROR object too large for cache\r\n{v}").as_bytes(),
        );
    }
    // A failed set removes the old value.
    let mut big = b"set a 0 0 2000000\r\n".to_vec();
    big.extend(std::iter::repeat(b'z').take(2_000_000));
    big.extend_from_slice(b"\r\nget a\r\n");
    check(
        &srv,
        &big,
        b"SERVER_ERROR object too large for cache\r\nEND\r\n",
    );
    // The length is read as memcached's 32-bit int: 4294967297 is 1.
    check(
        &srv,
        b"set a 0 0 4294967297\r\nx\r\nget a\r\n",
        b"STORED\r\nVALUE a 0 1\r\nx\r\nEND\r\n",
    );
}

#[test]
fn large_values_stream_both_ways() {
    let srv = server();
    let value: Vec<u8> = (0..1_000_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let mut input = b"set big 3 0 1000000\r\n".to_vec();
    input.extend_from_slice(&value);
    input.extend_from_slice(b"\r\nget big big\r\n");
    let mut want = b"STORED\r\n".to_vec();
    for _ in 0..2 {
        want.extend_from_slice(b"VALUE big 3 1000000\r\n");
        want.extend_from_slice(&value);
        want.extend_from_slice(b"\r\n");
    }
    want.extend_from_slice(b"END\r\n");
    for (step, area) in [
        (usize::MAX, WRITE_BUFFER),
        (1000, STATS_ROOM),
        (65536, STATS_ROOM + 1),
    ] {
        let mut s = Session::default();
        let (got, _) = drive(&srv, &mut s, &input, step, area);
        assert!(
            got == want,
            "reads of {step}, output area {area}: {} bytes",
            got.len()
        );
    }
    // Replaced while a reader streams it: the reader keeps the old bytes.
    let mut s = Session::default();
    let mut out = Area::new(WRITE_BUFFER);
    let now = srv.clock.now();
    let (n, st) = s.process(&srv, now, b"get big\r\n", &mut out);
    assert_eq!(st, Status::Stream);
    // (not `once`: its audit would find the pin held, rightly)
    let (set, _) = drive(
        &srv,
        &mut Session::default(),
        b"set big 0 0 1\r\nq\r\n",
        100,
        WRITE_BUFFER,
    );
    assert_eq!(set, b"STORED\r\n");
    let mut got = out.buf.clone();
    let mut input: &[u8] = &b"get big\r\n"[n..];
    loop {
        out.buf.clear();
        let (n, st) = s.process(&srv, now, input, &mut out);
        input = &input[n..];
        got.extend_from_slice(&out.buf);
        if matches!(st, Status::NeedInput { .. }) {
            break;
        }
    }
    let mut old = b"VALUE big 3 1000000\r\n".to_vec();
    old.extend_from_slice(&value);
    old.extend_from_slice(b"\r\nEND\r\n");
    assert!(got == old, "{} bytes", got.len());
    assert_eq!(once(&srv, b"get big\r\n"), b"VALUE big 0 1\r\nq\r\nEND\r\n");
}

#[test]
fn incr_decr() {
    let srv = server();
    let out = once(&srv, b"set n 0 0 2\r\n10\r\nincr n 5\r\ndecr n 100\r\nincr n 18446744073709551615\r\nincr n 1\r\n");
    assert_eq!(out, b"STORED\r\n15\r\n0\r\n18446744073709551615\r\n0\r\n");
    let out = once(
        &srv,
        b"set n 0 0 20\r\n18446744073709551615\r\nincr n 1\r\nget n\r\n",
    );
    assert_eq!(
        out,
        b"STORED\r\n0\r\nVALUE n 0 20\r\n0                   \r\nEND\r\n"
    );
    let out = once(
        &srv,
        b"set n 0 0 3\r\nabc\r\nincr n 1\r\nincr n x\r\nincr nope 1\r\nincr n -1\r\n",
    );
    assert_eq!(out, b"STORED\r\nCLIENT_ERROR cannot increment or decrement non-numeric value\r\nCLIENT_ERROR invalid numeric delta argument\r\nNOT_FOUND\r\nCLIENT_ERROR invalid numeric delta argument\r\n");
    let cases: &[(&[u8], &[u8])] = &[
        (
            b"set n 0 0 3\r\n12a\r\nincr n 1\r\n",
            b"STORED\r\nCLIENT_ERROR cannot increment or decrement non-numeric value\r\n",
        ),
        (
            b"set n 0 0 3\r\n100\r\ndecr n 1\r\nget n\r\n",
            b"STORED\r\n99\r\nVALUE n 0 3\r\n99 \r\nEND\r\n",
        ),
        (b"set n 0 0 2\r\n 5\r\nincr n 1\r\n", b"STORED\r\n6\r\n"),
        (
            b"set n 0 0 21\r\n123456789012345678901\r\nincr n 1\r\n",
            b"STORED\r\nCLIENT_ERROR cannot increment or decrement non-numeric value\r\n",
        ),
        (
            b"set n 0 0 30\r\n000000000000000000000000000001\r\nincr n 1\r\n",
            b"STORED\r\n2\r\n",
        ),
        (b"set n 0 0 3\r\n-00\r\nincr n 1\r\n", b"STORED\r\n1\r\n"),
        (
            b"set n 0 0 3\r\n+12\r\nincr n 1\r\ndecr n 20\r\n",
            b"STORED\r\n13\r\n0\r\n",
        ),
        (
            b"set n 0 0 2\r\n1 \r\nincr n 1\r\nincr n 99\r\nget n\r\n",
            b"STORED\r\n2\r\n101\r\nVALUE n 0 3\r\n101\r\nEND\r\n",
        ),
        (
            b"set n 5 0 1\r\n9\r\nincr n 1\r\nget n\r\nincr n 18446744073709551610\r\n",
            b"STORED\r\n10\r\nVALUE n 5 2\r\n10\r\nEND\r\n4\r\n",
        ),
        (
            b"set n 0 0 0\r\n\r\nincr n 1\r\n",
            b"STORED\r\nCLIENT_ERROR cannot increment or decrement non-numeric value\r\n",
        ),
        (
            b"set n 0 0 1\r\n0\r\nincr n 1 noreply\r\nget n\r\n",
            b"STORED\r\nVALUE n 0 1\r\n1\r\nEND\r\n",
        ),
    ];
    for (input, want) in cases {
        let got = once(&srv, input);
        assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(want));
    }
}

#[test]
fn exptime_rules() {
    let srv = server();
    let now = srv.clock.now();
    // Negative: gone at once. Over 30 days: a Unix time (in the past: gone).
    check(
        &srv,
        b"set a 0 -1 1\r\nx\r\nget a\r\n",
        b"STORED\r\nEND\r\n",
    );
    check(
        &srv,
        b"set a 0 2592001 1\r\nx\r\nget a\r\n",
        b"STORED\r\nEND\r\n",
    );
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let future = format!("set a 0 {} 1\r\nx\r\nget a\r\n", unix + 3600);
    check(
        &srv,
        future.as_bytes(),
        b"STORED\r\nVALUE a 0 1\r\nx\r\nEND\r\n",
    );
    check(
        &srv,
        b"set a 0 2592000 1\r\nx\r\nget a\r\n",
        b"STORED\r\nVALUE a 0 1\r\nx\r\nEND\r\n",
    );
    // Relative: read at a later time through the store's clock argument.
    let mut s = Session::default();
    let set = feed(&srv, &mut s, now, b"set t 0 5 1\r\nx\r\ntouch u 5\r\n");
    assert_eq!(set, b"STORED\r\nNOT_FOUND\r\n");
    let got = feed(&srv, &mut s, now + 4, b"get t\r\n");
    assert_eq!(got, b"VALUE t 0 1\r\nx\r\nEND\r\n");
    let got = feed(&srv, &mut s, now + 4, b"touch t 10\r\ngat 100 t\r\n");
    assert_eq!(got, b"TOUCHED\r\nVALUE t 0 1\r\nx\r\nEND\r\n");
    let got = feed(&srv, &mut s, now + 103, b"get t\r\n");
    assert_eq!(got, b"VALUE t 0 1\r\nx\r\nEND\r\n");
    let got = feed(&srv, &mut s, now + 104, b"get t\r\n");
    assert_eq!(got, b"END\r\n");
}

#[test]
fn flush_all_now_and_later() {
    let srv = server();
    let now = srv.clock.now();
    let mut s = Session::default();
    let got = feed(
        &srv,
        &mut s,
        now,
        b"set a 0 0 1\r\nx\r\nflush_all\r\nget a\r\nset b 0 0 1\r\ny\r\nget b\r\n",
    );
    assert_eq!(
        got,
        b"STORED\r\nOK\r\nEND\r\nSTORED\r\nVALUE b 0 1\r\ny\r\nEND\r\n"
    );
    let got = feed(&srv, &mut s, now, b"flush_all 10\r\nget b\r\n");
    assert_eq!(got, b"OK\r\nVALUE b 0 1\r\ny\r\nEND\r\n");
    let got = feed(&srv, &mut s, now + 10, b"get b\r\n");
    assert_eq!(got, b"END\r\n");
}

#[test]
fn pipelined_through_a_small_output_area() {
    let srv = server();
    let mut input = Vec::new();
    let mut want = Vec::new();
    let value = |i: usize| i.to_string().repeat(3);
    for i in 0..300 {
        let v = value(i);
        input.extend_from_slice(format!("set key{i} {i} 0 {}\r\n{v}\r\n", v.len()).as_bytes());
        want.extend_from_slice(b"STORED\r\n");
    }
    input.extend_from_slice(b"get");
    for i in 0..300 {
        let v = value(i);
        input.extend_from_slice(format!(" key{i}").as_bytes());
        want.extend_from_slice(format!("VALUE key{i} {i} {}\r\n{v}\r\n", v.len()).as_bytes());
    }
    input.extend_from_slice(b"\r\nversion\r\n");
    want.extend_from_slice(b"END\r\n");
    want.extend_from_slice(version().as_bytes());
    check(&srv, &input, &want);
}

#[test]
fn long_get_lines_stream() {
    let srv = server();
    once(&srv, b"set a 0 0 1\r\nx\r\n");
    let mut input = b"get".to_vec();
    let mut want = Vec::new();
    for _ in 0..5000 {
        input.extend_from_slice(b" a b");
        want.extend_from_slice(b"VALUE a 0 1\r\nx\r\n");
    }
    input.extend_from_slice(b"\r\nversion\r\n");
    want.extend_from_slice(b"END\r\n");
    want.extend_from_slice(version().as_bytes());
    check(&srv, &input, &want);
    // A line other than a get never ending: an error, then the connection closes.
    let mut s = Session::default();
    let (got, closed) = drive(&srv, &mut s, &[b'a'; 3000], usize::MAX, WRITE_BUFFER);
    assert_eq!(
        (got.as_slice(), closed),
        (&b"CLIENT_ERROR line too long\r\n"[..], true)
    );
    // quit closes, answering what came before it.
    let (got, closed) = drive(
        &srv,
        &mut Session::default(),
        b"version\r\nquit\r\nversion\r\n",
        1,
        WRITE_BUFFER,
    );
    assert_eq!((got, closed), (version().into_bytes(), true));
}

#[test]
fn stats_counts() {
    let srv = server();
    once(&srv, b"set a 0 0 1\r\nx\r\nget a b\r\ndelete a\r\ndelete a\r\ntouch a 1\r\nincr a 1\r\ndecr a 1\r\n");
    let text = String::from_utf8(once(&srv, b"stats\r\n")).unwrap();
    for want in [
        "STAT cmd_get 2\r\n",
        "STAT cmd_set 1\r\n",
        "STAT get_hits 1\r\n",
        "STAT get_misses 1\r\n",
        "STAT delete_hits 1\r\n",
        "STAT delete_misses 1\r\n",
        "STAT touch_misses 1\r\n",
        "STAT incr_misses 1\r\n",
        "STAT decr_misses 1\r\n",
        "STAT curr_items 0\r\n",
        "STAT total_items 1\r\n",
        "STAT limit_maxbytes 67108864\r\n",
        "STAT threads 2\r\n",
        "STAT evictions 0\r\n",
    ] {
        assert!(text.contains(want), "{want:?} in {text}");
    }
    assert!(text.starts_with(&format!("STAT pid {}\r\n", std::process::id())));
    assert!(text.ends_with("END\r\n"));
    assert_eq!(once(&srv, b"stats reset\r\n"), b"RESET\r\n");
}

#[test]
fn full_store_evicts_least_recently_used() {
    // 4 MB of pages: 1000-byte values, 10,000 of them, the first one kept hot.
    let srv = server_with(4 << 20, 1 << 20);
    let value = "v".repeat(1000);
    once(&srv, format!("set hot 0 0 1000\r\n{value}\r\n").as_bytes());
    for i in 0..10_000 {
        let out = once(
            &srv,
            format!("set k{i} 0 0 1000\r\n{value}\r\nget hot\r\n").as_bytes(),
        );
        assert!(
            out.starts_with(b"STORED\r\nVALUE hot"),
            "set {i}: {}",
            String::from_utf8_lossy(&out[..40.min(out.len())])
        );
    }
    assert_eq!(once(&srv, b"get k0\r\n"), b"END\r\n");
    assert!(once(&srv, b"get k9999\r\n").starts_with(b"VALUE k9999 0 1000\r\n"));
    let st = srv.store.stats();
    assert!(st.evictions > 5000, "{st:?}");
    assert!(st.curr_items > 3000 && st.bytes <= (6 << 20), "{st:?}");
}

#[test]
fn no_allocation_per_request() {
    let srv = server_with(8 << 20, 64 << 10);
    let mut s = Session::default();
    let mut out = Area::new(WRITE_BUFFER);
    let value = vec![b'v'; 50_000];
    let mut big = b"set big 0 0 50000\r\n".to_vec();
    big.extend_from_slice(&value);
    big.extend_from_slice(b"\r\n");
    let script: Vec<Vec<u8>> = vec![
        b"set a 1 0 5\r\nhello\r\nget a b\r\ngets a\r\n".to_vec(),
        big,
        b"get big\r\nappend a 0 0 1\r\n!\r\nincr n 1\r\nset n 0 0 1\r\n9\r\nincr n 1\r\n".to_vec(),
        b"decr n 100\r\ntouch a 100\r\ngat 10 a\r\ndelete a\r\nflush_all 0\r\nbogus\r\nset a 0 0 1\r\nxy\r\n".to_vec(),
        b"stats\r\nverbosity 1\r\nversion\r\nset x 0 0 70000\r\n".to_vec(),
        vec![b'x'; 70002],
        b"get a\r\nquit\r\n".to_vec(),
    ];
    let run = |s: &mut Session, out: &mut Area| {
        for part in &script {
            let mut input: &[u8] = part;
            loop {
                let (n, st) = s.process(&srv, srv.clock.now(), input, out);
                input = &input[n..];
                out.buf.clear();
                if matches!(st, Status::NeedInput { .. } | Status::Close) {
                    break;
                }
            }
        }
        // quit closed it: the slot's next connection.
        s.close(&srv);
    };
    // Warm-up: the pages, the thread's counter slot.
    for _ in 0..3 {
        run(&mut s, &mut out);
    }
    alloc_count::count_this_thread(true);
    for _ in 0..200 {
        run(&mut s, &mut out);
    }
    alloc_count::count_this_thread(false);
    assert_eq!(alloc_count::allocations(), 0);
}

// The example itself, on loopback: transcripts over TCP, a real client library
// (pymemcache), the drain and the upgrade.

mod running {
    use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
    use std::time::{Duration, Instant};

    use crate::util::{example, free_port};

    pub const IO_TIMEOUT: Duration = Duration::from_secs(20);

    /// The running example (and any process it upgraded to), killed on drop.
    pub struct Memcache {
        pub child: Child,
        pub addr: SocketAddr,
        pub stdout: BufReader<ChildStdout>,
        /// Pids of upgraded successors, to kill at the end.
        pub others: Vec<u32>,
    }

    impl Memcache {
        /// Starts it on a free loopback port with `args` (after `-p`), and waits
        /// until it says it serves.
        pub fn start(args: &[&str]) -> Memcache {
            let port = free_port();
            let mut child = Command::new(example::build("memcache"))
                .args(["-p", &port.to_string()])
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start the memcache example");
            let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
            let mut line = String::new();
            let _ = stdout.read_line(&mut line);
            assert!(line.starts_with("listening on "), "it said {line:?}");
            Memcache {
                child,
                addr: ([127, 0, 0, 1], port).into(),
                stdout,
                others: Vec::new(),
            }
        }

        pub fn connect(&self) -> TcpStream {
            let s = TcpStream::connect_timeout(&self.addr, IO_TIMEOUT).expect("connect");
            s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
            s.set_nodelay(true).unwrap();
            s
        }

        pub fn signal(&self, sig: i32) {
            // SAFETY: kill(2) on our own child's pid.
            let rc = unsafe { libc::kill(self.child.id() as i32, sig) };
            assert_eq!(rc, 0, "kill");
        }

        /// Waits (bounded) for the first process to exit.
        pub fn exit_within(&mut self, bound: Duration) -> Option<ExitStatus> {
            let until = Instant::now() + bound;
            while Instant::now() < until {
                if let Ok(Some(status)) = self.child.try_wait() {
                    return Some(status);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            None
        }

        /// The pid of the new process of an upgrade from `old`, once new connections
        /// reach it (the two share the listening sockets until the old one drains),
        /// remembered to be killed at the end.
        pub fn successor(&mut self, old: u32) -> u32 {
            let until = Instant::now() + IO_TIMEOUT;
            loop {
                let pid = self.serving_pid();
                if pid != old {
                    self.others.push(pid);
                    return pid;
                }
                assert!(Instant::now() < until, "no new process serves");
                std::thread::sleep(Duration::from_millis(10));
            }
        }

        /// The pid of the process that answers a new connection (`stats`).
        pub fn serving_pid(&self) -> u32 {
            let mut s = self.connect();
            s.write_all(b"stats\r\n").unwrap();
            let text = String::from_utf8(read_until(&mut s, b"END\r\n")).unwrap();
            text.lines()
                .find_map(|l| l.strip_prefix("STAT pid "))
                .and_then(|p| p.trim().parse().ok())
                .expect("STAT pid")
        }
    }

    impl Drop for Memcache {
        fn drop(&mut self) {
            for &pid in &self.others {
                // SAFETY: kill(2) of a process this test started (by upgrade).
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Reads until `suffix` ends what arrived (bounded by the read timeout).
    pub fn read_until(s: &mut TcpStream, suffix: &[u8]) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 65536];
        while !got.ends_with(suffix) {
            match s.read(&mut buf) {
                Ok(0) => panic!("EOF after {} bytes, before {:?}", got.len(), suffix),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => panic!("read: {e} after {} bytes", got.len()),
            }
        }
        got
    }

    /// Reads exactly `n` bytes.
    pub fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut got = vec![0; n];
        s.read_exact(&mut got).expect("read");
        got
    }

    /// Runs a Python script (pymemcache) against `addr`; panics with its output
    /// unless it exits 0.
    pub fn python(script: &str, addr: SocketAddr, extra: &[&str]) -> String {
        let out = Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(addr.port().to_string())
            .args(extra)
            .output()
            .expect("run python3");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "the pymemcache script failed ({}): is pymemcache installed? \
             (python3 -m pip install pymemcache)\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }
}

use running::{python, read_n, read_until, Memcache};
use std::io::Write as _;
use std::time::Duration;
use util::read_until_closed;

#[test]
fn tcp_pipelined_and_malformed() {
    let mc = Memcache::start(&["-t", "2"]);
    let v = version();
    let mut s = mc.connect();
    // One write, many commands, errors among them: answered in order.
    let batch = b"set a 0 0 1\r\nx\r\nget a b\r\nbogus\r\nset a 0 0 1\r\nxy\r\nincr a 1\r\n\
        set n 0 0 2\r\n10\r\nincr n 5\r\ndelete n\r\ndelete n\r\nversion\r\n";
    s.write_all(batch).unwrap();
    let want = format!(
        "STORED\r\nVALUE a 0 1\r\nx\r\nEND\r\nERROR\r\nCLIENT_ERROR bad data chunk\r\nERROR\r\n\
         CLIENT_ERROR cannot increment or decrement non-numeric value\r\nSTORED\r\n15\r\n\
         DELETED\r\nNOT_FOUND\r\n{v}"
    );
    assert_eq!(String::from_utf8(read_n(&mut s, want.len())).unwrap(), want);
    // The same connection, a command split across writes.
    for part in [&b"se"[..], b"t b 5 0 3\r", b"\nab", b"c\r\nget", b" b\r\n"] {
        s.write_all(part).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        read_until(&mut s, b"END\r\n"),
        b"STORED\r\nVALUE b 5 3\r\nabc\r\nEND\r\n"
    );
    // Too large: answered, its data thrown away, the connection still serves.
    let mut big = b"set big 0 0 2000000\r\n".to_vec();
    big.extend(std::iter::repeat(b'z').take(2_000_000));
    big.extend_from_slice(b"\r\nget b\r\n");
    s.write_all(&big).unwrap();
    assert_eq!(
        read_until(&mut s, b"END\r\n"),
        b"SERVER_ERROR object too large for cache\r\nVALUE b 5 3\r\nabc\r\nEND\r\n"
    );
    // A 1 MB value each way, twice in one get.
    let value: Vec<u8> = (0..1_000_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let mut set = b"set m 0 0 1000000\r\n".to_vec();
    set.extend_from_slice(&value);
    set.extend_from_slice(b"\r\nget m m\r\n");
    s.write_all(&set).unwrap();
    let got = read_until(&mut s, b"END\r\n");
    let mut want = b"STORED\r\n".to_vec();
    for _ in 0..2 {
        want.extend_from_slice(b"VALUE m 0 1000000\r\n");
        want.extend_from_slice(&value);
        want.extend_from_slice(b"\r\n");
    }
    want.extend_from_slice(b"END\r\n");
    assert!(got == want, "1 MB values: {} bytes back", got.len());
    // A line too long: the error, then the connection closes.
    let mut t = mc.connect();
    t.write_all(&[b'a'; 3000]).unwrap();
    assert_eq!(read_until_closed(&mut t), b"CLIENT_ERROR line too long\r\n");
    // quit.
    s.write_all(b"version\r\nquit\r\n").unwrap();
    assert_eq!(read_until_closed(&mut s), v.as_bytes());
}

/// pymemcache, a memcached client library, against the example.
const PYMEMCACHE: &str = r#"
import sys
from pymemcache.client.base import Client
port = int(sys.argv[1])
c = Client(("127.0.0.1", port), connect_timeout=10, timeout=10, default_noreply=False)
assert c.version().startswith(b"1.6")
assert c.set("a", b"1", expire=0)
assert c.get("a") == b"1"
assert c.get("missing") is None
assert c.set_many({"x": b"10", "y": b"20"}) == []
assert c.get_many(["x", "y", "nope"]) == {"x": b"10", "y": b"20"}
assert c.add("a", b"2") is False and c.add("z", b"3") is True
assert c.replace("nope", b"1") is False and c.replace("z", b"4") is True
assert c.append("z", b"5") and c.prepend("z", b"3") and c.get("z") == b"345"
value, cas = c.gets("z")
assert value == b"345"
assert c.cas("z", b"new", cas) is True
assert c.cas("z", b"newer", cas) is False
assert c.cas("nope", b"v", cas) is None
assert c.incr("x", 5) == 15 and c.decr("x", 20) == 0
assert c.incr("nope", 1) is None
c.set("n", b"18446744073709551615")
assert c.incr("n", 1) == 0
assert c.touch("a", 100) is True and c.touch("nope", 100) is False
assert c.delete("a") is True and c.delete("a", noreply=False) is False
big = bytes(range(256)) * 4000
assert c.set("big", big) and c.get("big") == big
for i in range(2000):
    c.set("k%d" % i, str(i).encode(), noreply=True)
got = c.get_many(["k%d" % i for i in range(2000)])
assert len(got) == 2000 and all(got["k%d" % i] == str(i).encode() for i in range(2000))
c.set("exp", b"v", expire=-1)
assert c.get("exp") is None
stats = c.stats()
for key in (b"pid", b"uptime", b"curr_items", b"total_items", b"bytes", b"curr_connections",
            b"cmd_get", b"cmd_set", b"get_hits", b"get_misses", b"evictions",
            b"limit_maxbytes", b"threads"):
    assert key in stats, key
assert stats[b"limit_maxbytes"] == 64 * 1024 * 1024 and stats[b"threads"] == 2
assert c.flush_all() is True and c.get("x") is None
c.close()
print("ok")
"#;

#[test]
fn pymemcache_client() {
    let mc = Memcache::start(&["-t", "2"]);
    assert_eq!(python(PYMEMCACHE, mc.addr, &[]).trim(), "ok");
}

#[test]
fn drain_on_sigterm_answers_what_was_asked() {
    let mut mc = Memcache::start(&["-t", "2"]);
    let value = vec![b'q'; 1_000_000];
    let mut s = mc.connect();
    let mut set = b"set big 0 0 1000000\r\n".to_vec();
    set.extend_from_slice(&value);
    set.extend_from_slice(b"\r\n");
    s.write_all(&set).unwrap();
    assert_eq!(read_n(&mut s, 8), b"STORED\r\n");
    // Idle between commands (a connection that never sent a byte may not even be
    // accepted yet: the listener defers accept until data arrives).
    let mut idle = mc.connect();
    idle.write_all(b"version\r\n").unwrap();
    assert_eq!(read_until(&mut idle, b"\r\n"), version().as_bytes());
    // 20 MB of answers asked for, not yet read: the server is still sending when
    // SIGTERM comes.
    s.write_all(&b"get big\r\n".repeat(20)).unwrap();
    let mut first = read_n(&mut s, 1);
    mc.signal(libc::SIGTERM);
    // The idle connection closes at once.
    assert_eq!(read_until_closed(&mut idle), b"");
    first.extend(read_until_closed(&mut s));
    let mut want = Vec::new();
    for _ in 0..20 {
        want.extend_from_slice(b"VALUE big 0 1000000\r\n");
        want.extend_from_slice(&value);
        want.extend_from_slice(b"\r\nEND\r\n");
    }
    assert!(
        first == want,
        "{} of {} bytes before EOF",
        first.len(),
        want.len()
    );
    let status = mc
        .exit_within(Duration::from_secs(20))
        .expect("exits after the drain");
    assert!(status.success(), "{status}");
}

#[test]
fn upgrade_finishes_a_value_under_way() {
    let mut mc = Memcache::start(&["-t", "2"]);
    let old = mc.serving_pid();
    let mut idle = mc.connect();
    idle.write_all(b"version\r\n").unwrap();
    assert_eq!(read_until(&mut idle, b"\r\n"), version().as_bytes());
    let mut s = mc.connect();
    s.write_all(b"set half 0 0 10\r\n01234").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    mc.signal(libc::SIGUSR2);
    // The new process announces itself on the same stdout.
    let mut line = String::new();
    std::io::BufRead::read_line(&mut mc.stdout, &mut line).unwrap();
    assert!(
        line.starts_with("listening on "),
        "the new process said {line:?}"
    );
    mc.successor(old);
    // The idle connection was closed: a client reconnects.
    assert_eq!(read_until_closed(&mut idle), b"");
    // The command under way is finished by the old process, then the connection
    // closes.
    s.write_all(b"56789\r\n").unwrap();
    assert_eq!(read_until_closed(&mut s), b"STORED\r\n");
    let status = mc
        .exit_within(Duration::from_secs(20))
        .expect("the old process exits");
    assert!(status.success(), "{status}");
    // The new process starts with an empty cache.
    let mut t = mc.connect();
    t.write_all(b"get half\r\n").unwrap();
    assert_eq!(read_until(&mut t, b"END\r\n"), b"END\r\n");
}

/// Clients under load through an upgrade: each keeps one connection, and on a
/// connection closed without an answer reconnects and sends the same command again
/// (safe for any command: the old process answers every command it read, so an
/// unanswered one was never executed).
const PYMEMCACHE_LOAD: &str = r#"
import sys, threading, time
from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheUnexpectedCloseError
port, seconds, flag = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
closes, done, bad, errors = [0], [0], [], []
lock = threading.Lock()

def call(c, f):
    for attempt in range(5):
        try:
            return f()
        except (MemcacheUnexpectedCloseError, ConnectionResetError, BrokenPipeError) as e:
            with lock:
                closes[0] += 1
            c.close()
    raise RuntimeError("no answer after 5 connections")

def client(n):
    try:
        c = Client(("127.0.0.1", port), connect_timeout=10, timeout=10, default_noreply=False)
        end = time.time() + seconds
        i = 0
        while time.time() < end:
            key, value = "c%d" % n, b"%d-%d" % (n, i)
            assert call(c, lambda: c.set(key, value)) is True
            got = call(c, lambda: c.get(key))
            # The value just set, or a miss if the set was the old process's and
            # the get the new one's (it starts empty).
            if got not in (value, None):
                bad.append((key, value, got))
            with lock:
                done[0] += 2
            i += 1
            if i % 50 == 0:
                time.sleep(0.01)
    except Exception as e:
        errors.append(repr(e))

threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
for t in threads: t.start()
open(flag, "w").close()
for t in threads: t.join()
print(done[0], closes[0], len(bad), len(errors))
if bad or errors:
    print(bad[:5], errors[:5])
    sys.exit(1)
"#;

#[test]
fn upgrade_under_pymemcache_load() {
    let mut mc = Memcache::start(&["-t", "2"]);
    let old = mc.serving_pid();
    let flag = std::env::temp_dir().join(format!("memcache-load-{}", std::process::id()));
    let _ = std::fs::remove_file(&flag);
    let addr = mc.addr;
    let flag_arg = flag.to_string_lossy().into_owned();
    let load = std::thread::spawn(move || python(PYMEMCACHE_LOAD, addr, &["4", &flag_arg]));
    // Once the clients run, and a little more: the upgrade.
    let until = std::time::Instant::now() + Duration::from_secs(20);
    while !flag.exists() {
        assert!(std::time::Instant::now() < until, "the load never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(1000));
    mc.signal(libc::SIGUSR2);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut mc.stdout, &mut line).unwrap();
    assert!(
        line.starts_with("listening on "),
        "the new process said {line:?}"
    );
    mc.successor(old);
    let status = mc
        .exit_within(Duration::from_secs(30))
        .expect("the old process exits");
    assert!(status.success(), "{status}");
    let report = load.join().expect("the load thread");
    let _ = std::fs::remove_file(&flag);
    let numbers: Vec<u64> = report
        .split_whitespace()
        .take(4)
        .map(|n| n.parse().unwrap())
        .collect();
    eprintln!("load through the upgrade: {report}");
    let (done, closes) = (numbers[0], numbers[1]);
    assert!(done > 1000, "{report}");
    // Each of the 8 clients saw its connection closed by the old process once (and
    // reconnected to the new one).
    assert!((8..=16).contains(&closes), "{report}");
}

#[test]
fn read_timeout_closes_a_command_that_stalls() {
    let mc = Memcache::start(&["-t", "1", "--read-timeout", "300"]);
    let mut idle = mc.connect();
    idle.write_all(b"version\r\n").unwrap();
    assert_eq!(read_until(&mut idle, b"\r\n"), version().as_bytes());
    let mut stalled = mc.connect();
    stalled.write_all(b"set a 0 0 10\r\n01234").unwrap();
    let start = std::time::Instant::now();
    assert_eq!(read_until_closed(&mut stalled), b"");
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(250),
        "closed after {waited:?}"
    );
    // The idle one (no command under way) is still served, and the half value
    // was not stored.
    idle.write_all(b"get a\r\n").unwrap();
    assert_eq!(read_until(&mut idle, b"END\r\n"), b"END\r\n");
}

#[test]
fn metrics_carry_the_caches_own_series() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let metrics = format!("127.0.0.1:{port}");
    let mc = Memcache::start(&["-t", "1", "--metrics", &metrics]);
    let mut s = mc.connect();
    s.write_all(b"set a 0 0 1\r\nx\r\nget a\r\nget a zz\r\n")
        .unwrap();
    assert_eq!(
        read_until(&mut s, b"END\r\nVALUE a 0 1\r\nx\r\nEND\r\n"),
        b"STORED\r\nVALUE a 0 1\r\nx\r\nEND\r\nVALUE a 0 1\r\nx\r\nEND\r\n"
    );
    let mut m = std::net::TcpStream::connect(&metrics).expect("connect to --metrics");
    m.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    m.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let text = String::from_utf8(read_until_closed(&mut m)).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    for (series, value) in [
        ("memcache_get_hits_total", 2),
        ("memcache_get_misses_total", 1),
        ("memcache_evictions_total", 0),
        ("memcache_items", 1),
    ] {
        let line = format!("\n{series} {value}\n");
        assert!(text.contains(&line), "no {line:?} in\n{text}");
    }
    // After the engine's own series, not instead of them.
    let engine = text
        .find("conn_daemon_responses_total")
        .expect("the engine's series");
    assert!(
        engine < text.find("memcache_get_hits_total").unwrap(),
        "{text}"
    );
}
