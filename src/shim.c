/* Functions for what libev only offers as macros, and the layout table that
 * tests/layout.rs compares with the #[repr(C)] mirrors in src/sys.rs.
 * Also the handler of libev's fatal system errors (below). Compiled with
 * exactly the defines ev.c gets (see build.rs). */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include "ev.h"

typedef void (*conn_timer_cb)(struct ev_loop *, ev_timer *, int);
typedef void (*conn_async_cb)(struct ev_loop *, ev_async *, int);

void conn_ev_io_set(ev_io *w, int fd, int events) { ev_io_set(w, fd, events); }
void conn_ev_timer_init(ev_timer *w, conn_timer_cb cb, ev_tstamp after, ev_tstamp repeat) {
  ev_timer_init(w, cb, after, repeat);
}
void conn_ev_async_init(ev_async *w, conn_async_cb cb) { ev_async_init(w, cb); }

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
  CONST(EV_READ), CONST(EV_WRITE), CONST(EV_TIMER), CONST(EV_ASYNC), CONST(EV_ERROR),
  CONST(EVBACKEND_EPOLL), CONST(EVFLAG_NOENV), CONST(EVBREAK_ALL), CONST(EVRUN_NOWAIT),
  CONST(EV_VERSION_MAJOR), CONST(EV_VERSION_MINOR),
  {NULL, 0},
};
