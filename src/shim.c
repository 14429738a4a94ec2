/* Functions for what libev only offers as macros, and the layout table that
 * tests/layout.rs compares with the #[repr(C)] mirrors in src/sys.rs.
 * Also the handler of libev's fatal system errors (below). Compiled with
 * exactly the defines ev.c gets (see build.rs). */
#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include "ev.h"

typedef void (*conn_timer_cb)(struct ev_loop *, ev_timer *, int);
typedef void (*conn_async_cb)(struct ev_loop *, ev_async *, int);
typedef void (*conn_signal_cb)(struct ev_loop *, ev_signal *, int);
typedef void (*conn_child_cb)(struct ev_loop *, ev_child *, int);
typedef void (*conn_periodic_cb)(struct ev_loop *, ev_periodic *, int);
typedef void (*conn_stat_cb)(struct ev_loop *, ev_stat *, int);
typedef void (*conn_idle_cb)(struct ev_loop *, ev_idle *, int);
typedef void (*conn_prepare_cb)(struct ev_loop *, ev_prepare *, int);
typedef void (*conn_check_cb)(struct ev_loop *, ev_check *, int);
typedef void (*conn_fork_cb)(struct ev_loop *, ev_fork *, int);
typedef void (*conn_cleanup_cb)(struct ev_loop *, ev_cleanup *, int);

void conn_ev_io_set(ev_io *w, int fd, int events) { ev_io_set(w, fd, events); }
void conn_ev_timer_init(ev_timer *w, conn_timer_cb cb, ev_tstamp after, ev_tstamp repeat) {
  ev_timer_init(w, cb, after, repeat);
}
void conn_ev_async_init(ev_async *w, conn_async_cb cb) { ev_async_init(w, cb); }
void conn_ev_signal_init(ev_signal *w, conn_signal_cb cb, int signum) {
  ev_signal_init(w, cb, signum);
}
void conn_ev_child_init(ev_child *w, conn_child_cb cb, int pid, int trace) {
  ev_child_init(w, cb, pid, trace);
}
void conn_ev_periodic_init(ev_periodic *w, conn_periodic_cb cb, ev_tstamp offset,
                           ev_tstamp interval) {
  ev_periodic_init(w, cb, offset, interval, 0);
}
void conn_ev_stat_init(ev_stat *w, conn_stat_cb cb, const char *path, ev_tstamp interval) {
  ev_stat_init(w, cb, path, interval);
}
void conn_ev_idle_init(ev_idle *w, conn_idle_cb cb) { ev_idle_init(w, cb); }
void conn_ev_prepare_init(ev_prepare *w, conn_prepare_cb cb) { ev_prepare_init(w, cb); }
void conn_ev_check_init(ev_check *w, conn_check_cb cb) { ev_check_init(w, cb); }
void conn_ev_fork_init(ev_fork *w, conn_fork_cb cb) { ev_fork_init(w, cb); }
void conn_ev_cleanup_init(ev_cleanup *w, conn_cleanup_cb cb) { ev_cleanup_init(w, cb); }

/* libev's fatal system errors (ev_syserr: an eventfd that cannot be created
 * when an ev_async starts, epoll_wait failing with anything but EINTR) end the
 * process as every start-up error does: one line on stderr, then the exit
 * status src/start_error.rs decides for a failed system call (10 for ENOMEM or
 * EAGAIN, else 100), instead of libev's perror and abort (a core dump). The
 * callback must not return: libev would carry on with the failed fd, or spin.
 * _exit, not exit: other threads still run, and no destructor may run under
 * them. Start-up checks the fd budget before any loop exists
 * (src/server.rs), so this is the last resort, not the usual path. */
static void conn_ev_syserr(const char *msg) {
  int err = errno;
  char line[256];
  int n = snprintf(line, sizeof line, "conn-daemon: %s: %s\n", msg, strerror(err));
  if (n > 0) {
    size_t len = (size_t)n < sizeof line ? (size_t)n : sizeof line - 1;
    ssize_t ignored = write(2, line, len);
    (void)ignored;
  }
  _exit(err == ENOMEM || err == EAGAIN ? 10 : 100);
}

/* Installed before main, so before any loop exists (libev reads the callback
 * without synchronisation) and in every program linking the crate. */
__attribute__((constructor)) static void conn_ev_install_syserr(void) {
  ev_set_syserr_cb(conn_ev_syserr);
}

struct conn_ev_layout_entry {
  const char *name;
  size_t value;
};

#define SIZE(t) {"sizeof " #t, sizeof(t)}
#define ALIGN(t) {"alignof " #t, _Alignof(t)}
#define FIELD(t, f) {#t "." #f, offsetof(t, f)}
#define CONST(c) {#c, (size_t)(c)}

const struct conn_ev_layout_entry conn_ev_layout[] = {
  SIZE(ev_io), ALIGN(ev_io),
  FIELD(ev_io, active), FIELD(ev_io, pending), FIELD(ev_io, data), FIELD(ev_io, cb),
  FIELD(ev_io, next), FIELD(ev_io, fd), FIELD(ev_io, events),
  SIZE(ev_timer), ALIGN(ev_timer),
  FIELD(ev_timer, active), FIELD(ev_timer, pending), FIELD(ev_timer, data), FIELD(ev_timer, cb),
  FIELD(ev_timer, at), FIELD(ev_timer, repeat),
  SIZE(ev_async), ALIGN(ev_async),
  FIELD(ev_async, active), FIELD(ev_async, pending), FIELD(ev_async, data), FIELD(ev_async, cb),
  FIELD(ev_async, sent),
  SIZE(ev_signal), ALIGN(ev_signal),
  FIELD(ev_signal, active), FIELD(ev_signal, pending), FIELD(ev_signal, data), FIELD(ev_signal, cb),
  FIELD(ev_signal, next), FIELD(ev_signal, signum),
  SIZE(ev_child), ALIGN(ev_child),
  FIELD(ev_child, active), FIELD(ev_child, pending), FIELD(ev_child, data), FIELD(ev_child, cb),
  FIELD(ev_child, next), FIELD(ev_child, flags), FIELD(ev_child, pid), FIELD(ev_child, rpid),
  FIELD(ev_child, rstatus),
  SIZE(ev_periodic), ALIGN(ev_periodic),
  FIELD(ev_periodic, active), FIELD(ev_periodic, pending), FIELD(ev_periodic, data),
  FIELD(ev_periodic, cb), FIELD(ev_periodic, at), FIELD(ev_periodic, offset),
  FIELD(ev_periodic, interval), FIELD(ev_periodic, reschedule_cb),
  SIZE(ev_stat), ALIGN(ev_stat),
  FIELD(ev_stat, active), FIELD(ev_stat, pending), FIELD(ev_stat, data), FIELD(ev_stat, cb),
  FIELD(ev_stat, next), FIELD(ev_stat, timer), FIELD(ev_stat, interval), FIELD(ev_stat, path),
  FIELD(ev_stat, prev), FIELD(ev_stat, attr), FIELD(ev_stat, wd),
#define PLAIN(t) SIZE(t), ALIGN(t), FIELD(t, active), FIELD(t, pending), FIELD(t, data), FIELD(t, cb)
  PLAIN(ev_idle), PLAIN(ev_prepare), PLAIN(ev_check), PLAIN(ev_fork), PLAIN(ev_cleanup),
  CONST(EV_READ), CONST(EV_WRITE), CONST(EV_TIMER), CONST(EV_ASYNC), CONST(EV_ERROR),
  CONST(EV_PERIODIC), CONST(EV_SIGNAL), CONST(EV_CHILD), CONST(EV_STAT), CONST(EV_IDLE),
  CONST(EV_PREPARE), CONST(EV_CHECK), CONST(EV_FORK), CONST(EV_CLEANUP),
  {"EV_NSIG", (size_t)NSIG}, /* ev.c's EV_NSIG on Linux */
  CONST(EVBACKEND_EPOLL), CONST(EVFLAG_NOENV), CONST(EVBREAK_ALL), CONST(EVRUN_NOWAIT),
  CONST(EV_VERSION_MAJOR), CONST(EV_VERSION_MINOR),
  {NULL, 0},
};
