/* worker.c - a worker: listeners on the loop, signals, the app thread pool.
 *
 * Threading: with --threads 1 the loop thread runs handlers inline and holds
 * the GIL except while blocked in epoll_wait (taken once per batch of
 * events).  With --threads N the loop thread never touches the GIL: it
 * parses, frames and writes, and hands ready requests to N pool threads. */
#include <Python.h>

#include "conn.h"
#include "log.h"
#include "worker.h"

#include <errno.h>
#include <stdint.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#define SWEEP_MS 200

/* Signals meant for the arbiter; a worker started by hand ignores them too. */
static const int arbiter_only[] = {SIGHUP, SIGTTIN, SIGTTOU, SIGUSR2, 0};

/* Worker state reachable from the signal handler: its only way out. */
static int sig_pipe[2] = {-1, -1};

static void on_signal(int sig)
{
    int saved = errno;
    unsigned char b = (unsigned char)sig;
    if (write(sig_pipe[1], &b, 1) < 0) {
        /* pipe full: a stop is already pending */
    }
    errno = saved;
}

/* Which in-flight record a handler thread uses: 0 for the loop thread. */
static _Thread_local int handler_index;

cs_inflight *cs_worker_inflight(cs_worker *w) { return &w->inflight[handler_index]; }

void cs_worker_retire(cs_worker *w, const char *why)
{
    if (atomic_exchange(&w->retiring, 1))
        return;
    cs_log(CS_LOG_INFO, "Worker retiring: %s", why);
    if (w->slot) {
        atomic_store(&w->slot->state, CS_SLOT_RETIRE);
        kill(getppid(), SIGCHLD);   /* wake the arbiter: start the replacement now */
    }
}

/* --request-timeout: a plain C thread, so it runs while a handler holds the GIL. */
static void *watchdog_main(void *arg)
{
    cs_worker *w = arg;
    while (!atomic_load(&w->watchdog_exit)) {
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
        uint64_t now = cs_now_ms();
        for (int i = 0; i < w->ninflight; i++) {
            cs_inflight *f = &w->inflight[i];
            int fired = 0;
            pthread_mutex_lock(&f->mu);
            if (f->conn && now - f->started > w->request_ms) {
                cs_conn_timed_out(f->conn, now - f->started);
                f->conn = NULL;
                fired = 1;
            }
            pthread_mutex_unlock(&f->mu);
            if (fired)
                cs_worker_retire(w, "a request ran over --request-timeout");
        }
    }
    return NULL;
}

static int start_watchdog(cs_worker *w)
{
    w->ninflight = w->threads > 1 ? w->threads : 1;
    w->inflight = calloc((size_t)w->ninflight, sizeof(cs_inflight));
    if (!w->inflight) {
        cs_log(CS_LOG_ERROR, "worker: out of memory for the request watchdog");
        return -1;
    }
    for (int i = 0; i < w->ninflight; i++)
        pthread_mutex_init(&w->inflight[i].mu, NULL);
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int rc = pthread_create(&w->watchdog, NULL, watchdog_main, w);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc) {
        cs_log(CS_LOG_ERROR, "worker: cannot start the request watchdog: %s", strerror(rc));
        return -1;
    }
    return 0;
}

static void *gil_unlock(void) { return PyEval_SaveThread(); }
static void *gil_enter(void) { return (void *)(intptr_t)PyGILState_Ensure(); }
static void gil_leave(void *t) { PyGILState_Release((PyGILState_STATE)(intptr_t)t); }
static void gil_relock(void *ts) { PyEval_RestoreThread(ts); }

/* Inline mode: hold the GIL for a whole batch of events. */
static PyThreadState *loop_ts;
static void before_wait(void *data) { (void)data; loop_ts = PyEval_SaveThread(); }
static void after_wait(void *data) { (void)data; PyEval_RestoreThread(loop_ts); }

static void stop_accepting(cs_worker *w)
{
    for (int i = 0; i < w->nlisteners; i++) {
        cs_listen_io *lio = &w->lio[i];
        cs_loop_watch(w->loop, &lio->io, 0);
        if (lio->own && lio->l->fd >= 0) {
            /* our own SO_REUSEPORT socket: nobody else accepts from it, so
             * take what is queued (served, then closed) and leave the group */
            cs_conn_accept(w, lio);
            close(lio->l->fd);
            lio->l->fd = -1;
        }
    }
}

static void begin_stop(cs_worker *w, int sig)
{
    if (sig == SIGQUIT) {
        cs_log(CS_LOG_INFO, "Handling signal: quit; stopping now");
        w->quitting = 1;
        cs_loop_stop(w->loop);
        return;
    }
    /* Ctrl-C or a signal to the process group reaches a worker directly and
     * again through the arbiter: a repeat must not cut in-flight requests. */
    if (atomic_load(&w->stopping))
        return;
    cs_log(CS_LOG_INFO, "Handling signal: %s; finishing in-flight requests (up to %.0f s)",
           sig == SIGINT ? "int" : "term", w->graceful_ms / 1000.0);
    atomic_store(&w->stopping, 1);
    w->stop_deadline = cs_now_ms() + w->graceful_ms;
    stop_accepting(w);
}

static void sig_io(cs_loop *loop, cs_io *io, uint32_t events)
{
    cs_worker *w = (cs_worker *)((char *)io - offsetof(cs_worker, sig));
    unsigned char buf[16];
    (void)loop;
    (void)events;
    ssize_t n = read(io->fd, buf, sizeof(buf));
    for (ssize_t i = 0; i < n; i++) {
        if (buf[i] == SIGUSR1)
            cs_log_reopen();
        else
            begin_stop(w, buf[i]);
    }
}

static void listen_io(cs_loop *loop, cs_io *io, uint32_t events)
{
    cs_listen_io *lio = (cs_listen_io *)io;
    (void)loop;
    (void)events;
    cs_conn_accept(lio->w, lio);
}

/* Pool threads hand connections back through the done list + eventfd. */
static void wake_io(cs_loop *loop, cs_io *io, uint32_t events)
{
    cs_worker *w = (cs_worker *)((char *)io - offsetof(cs_worker, wake));
    uint64_t v;
    (void)loop;
    (void)events;
    if (read(io->fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
        cs_log(CS_LOG_ERROR, "worker: eventfd read: %s", strerror(errno));
    pthread_mutex_lock(&w->mu);
    cs_conn *c = w->done;
    w->done = NULL;
    pthread_mutex_unlock(&w->mu);
    while (c) {
        cs_conn *next = *cs_conn_qnext(c);
        *cs_conn_qnext(c) = NULL;
        cs_conn_resume(c);
        c = next;
    }
}

void cs_worker_submit(cs_worker *w, cs_conn *c)
{
    pthread_mutex_lock(&w->mu);
    *cs_conn_qnext(c) = NULL;
    if (w->jobs_tail)
        *cs_conn_qnext(w->jobs_tail) = c;
    else
        w->jobs_head = c;
    w->jobs_tail = c;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

void cs_worker_hand_back(cs_worker *w, cs_conn *c)
{
    pthread_mutex_lock(&w->mu);
    int first = w->done == NULL;
    *cs_conn_qnext(c) = w->done;
    w->done = c;
    pthread_mutex_unlock(&w->mu);
    uint64_t one = 1;
    if (first && write(w->wake.fd, &one, sizeof(one)) < 0)
        cs_log(CS_LOG_ERROR, "worker: eventfd write: %s", strerror(errno));
}

static void *pool_main(void *arg)
{
    cs_worker *w = arg;
    int me = atomic_fetch_add(&w->next_thread, 1);
    handler_index = me;
    PyGILState_STATE g = PyGILState_Ensure();
    PyThreadState *ts = PyEval_SaveThread();
    for (;;) {
        pthread_mutex_lock(&w->mu);
        while (!w->jobs_head && !w->pool_exit)
            pthread_cond_wait(&w->cv, &w->mu);
        cs_conn *c = w->jobs_head;
        if (!c) {
            pthread_mutex_unlock(&w->mu);
            break;
        }
        w->jobs_head = *cs_conn_qnext(c);
        if (!w->jobs_head)
            w->jobs_tail = NULL;
        w->busy++;
        pthread_mutex_unlock(&w->mu);

        atomic_store(&w->busy_since[me], cs_now_ms());
        PyEval_RestoreThread(ts);
        cs_conn_run(c);
        ts = PyEval_SaveThread();
        atomic_store(&w->busy_since[me], 0);

        pthread_mutex_lock(&w->mu);
        w->busy--;
        pthread_mutex_unlock(&w->mu);
        cs_worker_hand_back(w, c);
    }
    PyEval_RestoreThread(ts);
    PyGILState_Release(g);
    return NULL;
}

/* Tell the arbiter we are alive, unless a handler has been stuck past
 * --timeout (with --threads 1 a stuck handler stops this loop altogether). */
static void heartbeat(cs_worker *w)
{
    if (!w->slot)
        return;
    uint64_t now = cs_now_ms();
    for (int i = 0; w->busy_since && i < w->threads; i++) {
        uint64_t t = atomic_load(&w->busy_since[i]);
        if (w->timeout_ms && t && now - t > w->timeout_ms)
            return;
    }
    atomic_store(&w->slot->heartbeat, now);
    atomic_store(&w->slot->requests, atomic_load(&w->served));
}

void cs_worker_request_done(cs_worker *w)
{
    uint64_t served = atomic_fetch_add(&w->served, 1) + 1;
    if (w->max_requests && served == w->max_requests) {
        if (w->slot)
            atomic_store(&w->slot->requests, served);
        cs_worker_retire(w, "--max-requests reached");
    }
}

static void sweep(cs_loop *loop, void *data)
{
    cs_worker *w = data;
    heartbeat(w);
    if (atomic_load(&w->retiring) == 1) {
        atomic_store(&w->retiring, 2);     /* the replacement takes the new connections */
        stop_accepting(w);
    }
    cs_conn_sweep(w);
    if (atomic_load(&w->stopping)) {
        if (w->nconns == 0)
            cs_loop_stop(loop);
        else if (cs_now_ms() >= w->stop_deadline) {
            cs_log(CS_LOG_WARNING, "graceful timeout: dropping %zu connections", w->nconns);
            cs_loop_stop(loop);
        }
    }
}

static int start_wake(cs_worker *w)
{
    int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (efd < 0) {
        cs_log(CS_LOG_ERROR, "worker: eventfd: %s", strerror(errno));
        return -1;
    }
    w->wake = (cs_io){.fd = efd, .fn = wake_io};
    return cs_loop_watch(w->loop, &w->wake, EPOLLIN);
}

static int start_pool(cs_worker *w)
{
    if (start_wake(w) < 0)
        return -1;
    w->pool = calloc((size_t)w->threads, sizeof(pthread_t));
    w->busy_since = calloc((size_t)w->threads, sizeof(*w->busy_since));
    if (!w->pool || !w->busy_since) {
        cs_log(CS_LOG_ERROR, "worker: out of memory for %d threads", w->threads);
        return -1;
    }
    /* signals belong to the loop thread */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    for (int i = 0; i < w->threads; i++) {
        int rc = pthread_create(&w->pool[i], NULL, pool_main, w);
        if (rc) {
            cs_log(CS_LOG_ERROR, "worker: cannot start app thread %d: %s", i, strerror(rc));
            w->threads = i;
            break;
        }
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return w->threads > 0 ? 0 : -1;
}

static int stop_pool(cs_worker *w)
{
    pthread_mutex_lock(&w->mu);
    w->pool_exit = 1;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    for (int i = 0; i < w->threads && w->pool; i++)
        pthread_join(w->pool[i], NULL);
    free(w->pool);
    w->pool = NULL;
    free((void *)w->busy_since);
    w->busy_since = NULL;
    return 0;
}

int cs_worker_run(cs_worker *w)
{
    int rc = 1, pooled = w->threads > 1;
    struct sigaction sa = {.sa_handler = on_signal}, old_int, old_term, old_quit, old_usr1, ign = {.sa_handler = SIG_IGN},
                     old_pipe;
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    atomic_init(&w->stopping, 0);
    w->sig.fd = -1;
    w->wake.fd = -1;
    if (!(w->loop = cs_loop_new()))
        return 1;
    if (pipe2(sig_pipe, O_NONBLOCK | O_CLOEXEC) < 0) {
        cs_log(CS_LOG_ERROR, "worker: pipe: %s", strerror(errno));
        goto out;
    }
    w->sig = (cs_io){.fd = sig_pipe[0], .fn = sig_io};
    if (cs_loop_watch(w->loop, &w->sig, EPOLLIN) < 0)
        goto out;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    sigaction(SIGQUIT, &sa, &old_quit);
    sigaction(SIGUSR1, &sa, &old_usr1);
    sigaction(SIGPIPE, &ign, &old_pipe);
    for (int i = 0; arbiter_only[i]; i++)
        sigaction(arbiter_only[i], &ign, NULL);
    /* a stop that arrived while we booted (see arbiter.c) is delivered now */
    sigset_t stops;
    sigemptyset(&stops);
    sigaddset(&stops, SIGTERM);
    sigaddset(&stops, SIGINT);
    sigaddset(&stops, SIGQUIT);
    pthread_sigmask(SIG_UNBLOCK, &stops, NULL);

    for (int i = 0; i < w->nlisteners; i++) {
        w->lio[i].io = (cs_io){.fd = w->lio[i].l->fd, .fn = listen_io};
        w->lio[i].w = w;
        if (cs_loop_watch(w->loop, &w->lio[i].io, EPOLLIN) < 0)
            goto restore;
    }
    cs_loop_every(w->loop, SWEEP_MS, sweep, w);
    atomic_init(&w->served, 0);
    atomic_init(&w->next_thread, 0);
    if (w->slot) {
        heartbeat(w);
        atomic_store(&w->slot->state, CS_SLOT_READY);
    }
    w->unlock = gil_unlock;
    w->relock = gil_relock;

    if (w->request_ms && !w->async && start_watchdog(w) < 0)
        goto restore;
    PyThreadState *ts = NULL;
    if (pooled) {
        w->app_enter = gil_enter;
        w->app_leave = gil_leave;
        ts = PyEval_SaveThread();
        if (start_pool(w) < 0) {
            PyEval_RestoreThread(ts);
            goto restore;
        }
    } else if (w->async) {
        if (start_wake(w) < 0 || cs_loop_embed(w->loop) < 0)
            goto restore;
    } else {
        cs_loop_set_wait_hooks(w->loop, before_wait, after_wait, NULL);
    }
    rc = (w->async ? w->drive(w) : cs_loop_run(w->loop)) < 0 ? 1 : 0;

    if (pooled) {
        pthread_mutex_lock(&w->mu);
        int busy = w->busy;
        pthread_mutex_unlock(&w->mu);
        if (busy) {
            /* handlers are still running app code past the graceful timeout:
             * their threads cannot be joined, so leave without them */
            cs_log(CS_LOG_WARNING, "Exiting with %d requests still running", busy);
            fflush(NULL);
            _exit(rc);
        }
        stop_pool(w);
        PyEval_RestoreThread(ts);
    }
    cs_conn_close_all(w);
    if (w->inflight) {
        atomic_store(&w->watchdog_exit, 1);
        pthread_join(w->watchdog, NULL);
        free(w->inflight);
        w->inflight = NULL;
    }
restore:
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    sigaction(SIGQUIT, &old_quit, NULL);
    sigaction(SIGUSR1, &old_usr1, NULL);
    sigaction(SIGPIPE, &old_pipe, NULL);
out:
    if (w->wake.fd >= 0)
        close(w->wake.fd);
    if (sig_pipe[0] >= 0) {
        close(sig_pipe[0]);
        close(sig_pipe[1]);
        sig_pipe[0] = sig_pipe[1] = -1;
    }
    cs_loop_free(w->loop);
    w->loop = NULL;
    return rc;
}
