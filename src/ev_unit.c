/* libev's one translation unit, with what needs its private loop struct.
 *
 * libev keeps two clocks per loop: ev_rt_now (the wall clock, which ev_now
 * returns) and mn_now (CLOCK_MONOTONIC), both cached once per iteration. Only
 * ev.c can see mn_now, so the accessor lives here, after ev.c has undone its
 * field-name macros (ev_wrap.h, included a second time at its end). The same
 * goes for the cleanup watchers, which only ev_loop_destroy invokes. */
#include "ev.c"

/* The loop's cached CLOCK_MONOTONIC time in seconds, as its timers use it: set
 * by ev_loop_new and by every iteration, so reading it costs no clock call. */
ev_tstamp conn_ev_mono_now(struct ev_loop *loop) { return loop->mn_now; }

/* The first step of ev_loop_destroy on its own: queue every started cleanup
 * watcher and invoke what is pending, so that the callbacks run while the
 * caller still has a handler to give them (see Loop::destroy). */
void conn_ev_invoke_cleanups(struct ev_loop *loop) {
  if (loop->cleanupcnt) {
    queue_events(loop, (W *)loop->cleanups, loop->cleanupcnt, EV_CLEANUP);
    ev_invoke_pending(loop);
  }
}
