/* Functions for what libev only offers as macros, and the layout table that
 * tests/layout.rs compares with the #[repr(C)] mirrors in src/sys.rs.
 * Compiled with exactly the defines ev.c gets (see build.rs). */
#include <stddef.h>
#include "ev.h"

typedef void (*conn_timer_cb)(struct ev_loop *, ev_timer *, int);
typedef void (*conn_async_cb)(struct ev_loop *, ev_async *, int);

void conn_ev_io_set(ev_io *w, int fd, int events) { ev_io_set(w, fd, events); }
void conn_ev_timer_init(ev_timer *w, conn_timer_cb cb, ev_tstamp after, ev_tstamp repeat) {
  ev_timer_init(w, cb, after, repeat);
}
void conn_ev_async_init(ev_async *w, conn_async_cb cb) { ev_async_init(w, cb); }

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
