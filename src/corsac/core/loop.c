/* loop.c - epoll backend and timer list for loop.h. */
#include "loop.h"
#include "log.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
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
    return l;
}

void cs_loop_free(cs_loop *l)
{
    if (!l)
        return;
    close(l->epfd);
    free(l);
}

int cs_loop_watch(cs_loop *l, cs_io *io, uint32_t events)
{
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

uint64_t cs_loop_now(const cs_loop *l) { return l->now; }

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
        for (int i = 0; i < n; i++) {
            cs_io *io = l->events[i].data.ptr;
            io->fn(l, io, l->events[i].events);
        }
        for (int i = 0; i < l->ntimers; i++) {
            cs_timer *t = &l->timers[i];
            if (l->now >= t->next) {
                t->next = l->now + t->every;
                t->fn(l, t->data);
            }
        }
    }
    return 0;
}
