//! The `#[repr(C)]` mirrors in `src/sys.rs` must match libev's structs as the C
//! compiler lays them out with the defines in `build.rs` (libz-sys checks the same
//! with ctest). The C side reports itself through `conn_ev_layout` in `shim.c`.
#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::ffi::CStr;
use std::mem::{align_of, offset_of, size_of};

use conn_daemon::sys::{
    self, ev_async, ev_check, ev_child, ev_cleanup, ev_fork, ev_idle, ev_io, ev_periodic,
    ev_prepare, ev_signal, ev_stat, ev_timer,
};

/// Every entry of the shim's table, by name.
fn c_layout() -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    // SAFETY: the table is a static array ending with a null name.
    unsafe {
        let mut row = std::ptr::addr_of!(sys::conn_ev_layout).cast::<sys::conn_ev_layout_entry>();
        while !(*row).name.is_null() {
            let name = CStr::from_ptr((*row).name).to_str().unwrap().to_owned();
            out.insert(name, (*row).value);
            row = row.add(1);
        }
    }
    out
}

/// The Rust side of every entry the C side reports.
fn rust_layout() -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    let mut put = |k: &str, v: usize| {
        out.insert(k.to_owned(), v);
    };
    macro_rules! watcher {
        ($t:ident: $($f:ident),*) => {
            put(concat!("sizeof ", stringify!($t)), size_of::<$t>());
            put(concat!("alignof ", stringify!($t)), align_of::<$t>());
            $( put(concat!(stringify!($t), ".", stringify!($f)), offset_of!($t, $f)); )*
        };
    }
    watcher!(ev_io: active, pending, data, cb, next, fd, events);
    watcher!(ev_timer: active, pending, data, cb, at, repeat);
    watcher!(ev_async: active, pending, data, cb, sent);
    watcher!(ev_signal: active, pending, data, cb, next, signum);
    watcher!(ev_child: active, pending, data, cb, next, flags, pid, rpid, rstatus);
    watcher!(ev_periodic: active, pending, data, cb, at, offset, interval, reschedule_cb);
    watcher!(ev_stat: active, pending, data, cb, next, timer, interval, path, prev, attr, wd);
    watcher!(ev_idle: active, pending, data, cb);
    watcher!(ev_prepare: active, pending, data, cb);
    watcher!(ev_check: active, pending, data, cb);
    watcher!(ev_fork: active, pending, data, cb);
    watcher!(ev_cleanup: active, pending, data, cb);
    put("EV_READ", sys::EV_READ as usize);
    put("EV_WRITE", sys::EV_WRITE as usize);
    put("EV_TIMER", sys::EV_TIMER as usize);
    put("EV_ASYNC", sys::EV_ASYNC as usize);
    put("EV_ERROR", sys::EV_ERROR as isize as usize);
    put("EV_PERIODIC", sys::EV_PERIODIC as usize);
    put("EV_SIGNAL", sys::EV_SIGNAL as usize);
    put("EV_CHILD", sys::EV_CHILD as usize);
    put("EV_STAT", sys::EV_STAT as usize);
    put("EV_IDLE", sys::EV_IDLE as usize);
    put("EV_PREPARE", sys::EV_PREPARE as usize);
    put("EV_CHECK", sys::EV_CHECK as usize);
    put("EV_FORK", sys::EV_FORK as usize);
    put("EV_CLEANUP", sys::EV_CLEANUP as usize);
    put("EV_NSIG", sys::EV_NSIG as usize);
    put("EVBACKEND_EPOLL", sys::EVBACKEND_EPOLL as usize);
    put("EVFLAG_NOENV", sys::EVFLAG_NOENV as usize);
    put("EVBREAK_ALL", sys::EVBREAK_ALL as usize);
    put("EVRUN_NOWAIT", sys::EVRUN_NOWAIT as usize);
    put("EV_VERSION_MAJOR", sys::EV_VERSION_MAJOR as usize);
    put("EV_VERSION_MINOR", sys::EV_VERSION_MINOR as usize);
    out
}

#[test]
fn rust_mirrors_equal_the_c_layout() {
    let c = c_layout();
    let rust = rust_layout();
    assert!(c.len() >= 30, "shim reported too little: {c:?}");
    for (name, c_value) in &c {
        assert_eq!(rust.get(name), Some(c_value), "{name}: Rust differs from C");
    }
    assert_eq!(
        c.keys().collect::<Vec<_>>(),
        rust.keys().collect::<Vec<_>>(),
        "the two tables name different items"
    );
}

#[test]
fn loop_uses_epoll() {
    struct Nothing;
    // Every callback has a no-op default.
    impl conn_daemon::ev::Handler for Nothing {}
    let lp = conn_daemon::ev::Loop::<Nothing>::new().unwrap();
    assert_eq!(lp.backend(), sys::EVBACKEND_EPOLL);
}
