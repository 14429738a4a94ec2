/* libev's one translation unit, with what needs its private loop struct.
 *
 * libev keeps two clocks per loop: ev_rt_now (the wall clock, which ev_now
 * returns) and mn_now (CLOCK_MONOTONIC), both cached once per iteration. Only
 * ev.c can see mn_now, so the accessor lives here, after ev.c has undone its
 * field-name macros (ev_wrap.h, included a second time at its end). */
#include "ev.c"

/* The loop's cached CLOCK_MONOTONIC time in seconds, as its timers use it: set
 * by ev_loop_new and by every iteration, so reading it costs no clock call. */
ev_tstamp conn_ev_mono_now(struct ev_loop *loop) { return loop->mn_now; }
