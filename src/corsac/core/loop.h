/* loop.h - the event loop: epoll readiness callbacks plus periodic timers.
 *
 * Modeled on Redis's ae: a handful of calls, everything above is callbacks.
 * Owners embed a cs_io (fd + callback) and get it back in the callback, so
 * the loop needs no fd-indexed tables.  Single-threaded: only the thread
 * running cs_loop_run may call these, except cs_loop_wake. */
#ifndef CORSAC_LOOP_H
#define CORSAC_LOOP_H

#include <stdint.h>
#include <sys/epoll.h>

typedef struct cs_loop cs_loop;
typedef struct cs_io cs_io;
typedef void cs_io_fn(cs_loop *loop, cs_io *io, uint32_t events);
typedef void cs_timer_fn(cs_loop *loop, void *data);
typedef void cs_hook_fn(void *data);

struct cs_io {
    int fd;
    uint32_t events;     /* currently registered mask, 0 when not registered */
    cs_io_fn *fn;
    cs_io *kick_next;    /* the loop's kicked list (cs_loop_kick) */
    int kick_pending;
};

cs_loop *cs_loop_new(void);
void cs_loop_free(cs_loop *loop);

/* Register, change or (with events == 0) remove interest in io->fd.  -1 on error. */
int cs_loop_watch(cs_loop *loop, cs_io *io, uint32_t events);

/* Call io->fn(EPOLLIN) on the next iteration, as if the fd were readable,
 * if it is still watched for reading then: for input buffered in user space
 * (TLS records already decrypted) that epoll cannot see.  Removing the io
 * (cs_loop_watch with 0) cancels it.  -1 on error. */
int cs_loop_kick(cs_loop *loop, cs_io *io);

/* Run fn every ms milliseconds (after the events of an iteration).  -1 if full. */
int cs_loop_every(cs_loop *loop, unsigned ms, cs_timer_fn *fn, void *data);

/* Called just before blocking in epoll_wait and right after it returns
 * (the WSGI worker uses them to release and retake the GIL per batch). */
void cs_loop_set_wait_hooks(cs_loop *loop, cs_hook_fn *before, cs_hook_fn *after, void *data);

/* Run until cs_loop_stop.  Returns 0, or -1 if epoll_wait failed. */
int cs_loop_run(cs_loop *loop);
void cs_loop_stop(cs_loop *loop);

/* Embedded mode (the ASGI worker): a host loop (asyncio, uvloop) watches
 * cs_loop_fd() for readability and calls cs_loop_poll(), which handles what
 * is ready without blocking.  cs_loop_embed adds a timerfd so the timers
 * fire with no other traffic; call it after the last cs_loop_every.
 * cs_loop_poll returns 1 once cs_loop_stop was called, -1 on error. */
int cs_loop_embed(cs_loop *loop);
int cs_loop_fd(const cs_loop *loop);
int cs_loop_poll(cs_loop *loop);

/* Monotonic milliseconds. */
uint64_t cs_now_ms(void);

#endif
