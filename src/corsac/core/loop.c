/* loop.c - epoll backend and timer list for loop.h. */
#include "loop.h"
#include "log.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define MAX_EVENTS 256
#define MAX_TIMERS 8

typedef struct {
    unsigned every;
    uint64_t next;
    cs_timer_fn *fn;
    void *data;
} cs_timer;

struct cs_loop {
    int epfd;
    int stop;
    uint64_t now;
    int ntimers;
    cs_timer timers[MAX_TIMERS];
    cs_hook_fn *before, *after;
    void *hook_data;
    cs_io tick;                 /* embedded mode: a timerfd that wakes the host loop */
    cs_io kick;                 /* eventfd: readable while kicked ios wait */
    cs_io *kicked;              /* ios to call as if readable (cs_loop_kick) */
    struct epoll_event events[MAX_EVENTS];
};

uint64_t cs_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

cs_loop *cs_loop_new(void)
{
    cs_loop *l = calloc(1, sizeof(*l));
    if (!l) {
        cs_log(CS_LOG_ERROR, "loop: out of memory");
        return NULL;
    }
    l->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (l->epfd < 0) {
        cs_log(CS_LOG_ERROR, "loop: epoll_create1: %s", strerror(errno));
        free(l);
        return NULL;
    }
    l->now = cs_now_ms();
    l->tick.fd = -1;
    l->kick.fd = -1;
    return l;
}

static void kick_io(cs_loop *l, cs_io *io, uint32_t events)
{
    uint64_t v;
    (void)l;
    (void)events;
    /* only a wake-up: the kicked ios run after the whole batch (run_kicks) */
    if (read(io->fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
        cs_log(CS_LOG_ERROR, "loop: eventfd read: %s", strerror(errno));
}

/* After a batch of events, never inside one: an io freed by a kicked
 * callback may still have its own event later in the batch. */
static void run_kicks(cs_loop *l)
{
    /* each call consumes the data that caused the kick; a bound all the same */
    for (int i = 0; i < 4096 && l->kicked; i++) {
        cs_io *k = l->kicked;
        l->kicked = k->kick_next;
        k->kick_next = NULL;
        k->kick_pending = 0;
        if (k->events & EPOLLIN)
            k->fn(l, k, EPOLLIN);
    }
    if (l->kicked) {
        uint64_t one = 1;
        if (write(l->kick.fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
            cs_log(CS_LOG_ERROR, "loop: eventfd write: %s", strerror(errno));
    }
}

int cs_loop_kick(cs_loop *l, cs_io *io)
{
    if (io->kick_pending)
        return 0;
    if (l->kick.fd < 0) {
        int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (fd < 0) {
            cs_log(CS_LOG_ERROR, "loop: eventfd: %s", strerror(errno));
            return -1;
        }
        l->kick = (cs_io){.fd = fd, .fn = kick_io};
        if (cs_loop_watch(l, &l->kick, EPOLLIN) < 0) {
            close(fd);
            l->kick.fd = -1;
            return -1;
        }
    }
    if (!l->kicked) {
        uint64_t one = 1;
        if (write(l->kick.fd, &one, sizeof(one)) < 0 && errno != EAGAIN) {
            cs_log(CS_LOG_ERROR, "loop: eventfd write: %s", strerror(errno));
            return -1;
        }
    }
    io->kick_pending = 1;
    io->kick_next = l->kicked;
    l->kicked = io;
    return 0;
}

void cs_loop_free(cs_loop *l)
{
    if (!l)
        return;
    if (l->tick.fd >= 0)
        close(l->tick.fd);
    if (l->kick.fd >= 0)
        close(l->kick.fd);
    close(l->epfd);
    free(l);
}

int cs_loop_watch(cs_loop *l, cs_io *io, uint32_t events)
{
    if (events == 0 && io->kick_pending) {
        for (cs_io **p = &l->kicked; *p; p = &(*p)->kick_next)
            if (*p == io) {
                *p = io->kick_next;
                break;
            }
        io->kick_pending = 0;
        io->kick_next = NULL;
    }
    if (events == io->events)
        return 0;
    struct epoll_event ev = {.events = events, .data.ptr = io};
    int op = events == 0 ? EPOLL_CTL_DEL : io->events == 0 ? EPOLL_CTL_ADD : EPOLL_CTL_MOD;
    if (epoll_ctl(l->epfd, op, io->fd, &ev) < 0) {
        cs_log(CS_LOG_ERROR, "loop: epoll_ctl(fd %d): %s", io->fd, strerror(errno));
        return -1;
    }
    io->events = events;
    return 0;
}

int cs_loop_every(cs_loop *l, unsigned ms, cs_timer_fn *fn, void *data)
{
    if (l->ntimers == MAX_TIMERS)
        return -1;
    l->timers[l->ntimers++] = (cs_timer){ms, cs_now_ms() + ms, fn, data};
    return 0;
}

void cs_loop_set_wait_hooks(cs_loop *l, cs_hook_fn *before, cs_hook_fn *after, void *data)
{
    l->before = before;
    l->after = after;
    l->hook_data = data;
}

void cs_loop_stop(cs_loop *l) { l->stop = 1; }

static void run_timers(cs_loop *l)
{
    for (int i = 0; i < l->ntimers; i++) {
        cs_timer *t = &l->timers[i];
        if (l->now >= t->next) {
            t->next = l->now + t->every;
            t->fn(l, t->data);
        }
    }
}

static void run_kicks(cs_loop *l);

static void dispatch(cs_loop *l, int n)
{
    for (int i = 0; i < n; i++) {
        cs_io *io = l->events[i].data.ptr;
        io->fn(l, io, l->events[i].events);
    }
    if (l->kicked)
        run_kicks(l);
}

int cs_loop_run(cs_loop *l)
{
    l->stop = 0;
    while (!l->stop) {
        int timeout = -1;
        for (int i = 0; i < l->ntimers; i++) {
            int64_t d = (int64_t)(l->timers[i].next - l->now);
            if (d < 0)
                d = 0;
            if (timeout < 0 || d < timeout)
                timeout = (int)d;
        }
        if (l->before)
            l->before(l->hook_data);
        int n = epoll_wait(l->epfd, l->events, MAX_EVENTS, timeout);
        int err = errno;
        if (l->after)
            l->after(l->hook_data);
        l->now = cs_now_ms();
        if (n < 0) {
            if (err == EINTR)
                continue;
            cs_log(CS_LOG_ERROR, "loop: epoll_wait: %s", strerror(err));
            return -1;
        }
        dispatch(l, n);
        run_timers(l);
    }
    return 0;
}

static void tick_io(cs_loop *l, cs_io *io, uint32_t events)
{
    uint64_t expirations;
    (void)l;
    (void)events;
    if (read(io->fd, &expirations, sizeof(expirations)) < 0 && errno != EAGAIN)
        cs_log(CS_LOG_ERROR, "loop: timerfd read: %s", strerror(errno));
}

int cs_loop_embed(cs_loop *l)
{
    unsigned every = 0;
    for (int i = 0; i < l->ntimers; i++)
        if (!every || l->timers[i].every < every)
            every = l->timers[i].every;
    if (!every)
        return 0;
    int fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (fd < 0) {
        cs_log(CS_LOG_ERROR, "loop: timerfd_create: %s", strerror(errno));
        return -1;
    }
    struct timespec ts = {every / 1000, (long)(every % 1000) * 1000000};
    struct itimerspec its = {ts, ts};
    l->tick = (cs_io){.fd = fd, .fn = tick_io};
    if (timerfd_settime(fd, 0, &its, NULL) < 0) {
        cs_log(CS_LOG_ERROR, "loop: timerfd_settime: %s", strerror(errno));
        return -1;
    }
    return cs_loop_watch(l, &l->tick, EPOLLIN);
}

int cs_loop_fd(const cs_loop *l) { return l->epfd; }

int cs_loop_poll(cs_loop *l)
{
    int n = epoll_wait(l->epfd, l->events, MAX_EVENTS, 0);
    if (n < 0 && errno != EINTR) {
        cs_log(CS_LOG_ERROR, "loop: epoll_wait: %s", strerror(errno));
        return -1;
    }
    l->now = cs_now_ms();
    dispatch(l, n > 0 ? n : 0);
    run_timers(l);
    return l->stop;
}
