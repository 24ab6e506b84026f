/* arbiter.c - fork, supervise and replace workers.
 *
 * One rule drives every change of the worker set (boot, respawn, reload,
 * TTIN/TTOU, retirement, timeouts): workers carry a generation; reconcile()
 * starts workers of the current generation until there are `target` of them,
 * and tells old-generation workers to drain only as current ones report
 * ready.  So a reload or a recycle never leaves the sockets unserved.  The
 * first worker boots alone: an app that cannot load fails once, not N times. */
#include <Python.h>

#include "arbiter.h"
#include "log.h"
#include "loop.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_CHILDREN 1024
#define TICK_MS 200
#define ABORT_GRACE_MS 5000
#define MAX_BOOT_FAILURES 5
#define BOOT_ALLOWANCE_MS 60000   /* least time a booting worker gets, whatever --timeout */

typedef struct {
    pid_t pid;
    int id;                 /* "worker K" */
    int gen;                /* -1: retired, waiting for its replacement */
    int slot;
    int stopping;           /* we told it to go: its exit is expected */
    int ever_ready;
    int boot_timeout;       /* killed for not booting in time */
    uint64_t spawned;
    uint64_t retire_at;     /* --workers-lifetime, jittered; 0: never */
    uint64_t kill_at;       /* SIGKILL then, if still alive */
} cs_child;

enum { RUNNING, GRACEFUL, QUITTING };

typedef struct {
    const cs_config *cfg;
    cs_loop *loop;
    cs_io sig;
    cs_slot *slots;
    cs_child children[MAX_CHILDREN];
    int nchildren;
    int target;
    int gen;
    int booted;             /* the first worker reported ready */
    int mode;
    uint64_t stop_deadline;
    int killed_all;
    uint64_t next_spawn_ok;
    int boot_failures;
    int exit_code;
    int in_child;           /* set in a new worker on its way out */
    int child_slot, child_id;
    pid_t pid;              /* the arbiter's own */
    unsigned long ticks;
    void (*on_ready)(void *, const char *);
    void *ready_data;
} cs_arbiter;

/* Arbiter state reachable from the signal handler. */
static int arb_pipe[2] = {-1, -1};

static void on_signal(int sig)
{
    int saved = errno;
    unsigned char b = (unsigned char)sig;
    if (write(arb_pipe[1], &b, 1) < 0) {
        /* full: the arbiter has plenty to do already */
    }
    errno = saved;
}

static const int handled[] = {SIGCHLD, SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGTTIN, SIGTTOU, SIGUSR1, 0};

/* ---- process title -------------------------------------------------------- */

void cs_set_process_title(const char *title)
{
    prctl(PR_SET_NAME, title, 0, 0, 0);
    /* rewrite the original argv area, which is what ps and /proc/PID/cmdline show */
    FILE *f = fopen("/proc/self/stat", "r");
    if (!f)
        return;
    char buf[2048];
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    if (!p)
        return;
    /* fields after "(comm)": state is field 3; arg_start/arg_end are 48/49 */
    unsigned long long v, arg_start = 0, arg_end = 0;
    int field = 2;
    for (char *tok = strtok(p + 1, " "); tok; tok = strtok(NULL, " ")) {
        field++;
        if (field == 48 || field == 49) {
            v = strtoull(tok, NULL, 10);
            if (field == 48)
                arg_start = v;
            else
                arg_end = v;
        }
    }
    if (!arg_start || arg_end <= arg_start + 1)
        return;
    size_t room = (size_t)(arg_end - arg_start);
    char *area = (char *)(uintptr_t)arg_start;
    size_t len = strlen(title);
    if (len >= room)
        len = room - 1;
    memcpy(area, title, len);
    memset(area + len, 0, room - len);
}

/* ---- CPU count ------------------------------------------------------------ */

static int read_two(const char *path, long long *a, long long *b)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    char s[128] = "";
    int ok = fgets(s, sizeof(s), f) != NULL;
    fclose(f);
    if (!ok)
        return -1;
    if (strncmp(s, "max", 3) == 0)
        return 0;
    return sscanf(s, "%lld %lld", a, b) == 2 ? 1 : -1;
}

int cs_cpu_count(void)
{
    int n = 1;
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0)
        n = CPU_COUNT(&set);
    long long quota, period;
    if (read_two("/sys/fs/cgroup/cpu.max", &quota, &period) == 1 && quota > 0 && period > 0) {
        int q = (int)((quota + period - 1) / period);
        if (q < n)
            n = q;
    }
    return n > 0 ? n : 1;
}

/* Resident memory of a process in MiB, or 0 if unknown. */
static long rss_mib(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/statm", (int)pid);
    FILE *f = fopen(path, "r");
    long size, resident = 0;
    if (!f)
        return 0;
    if (fscanf(f, "%ld %ld", &size, &resident) != 2)
        resident = 0;
    fclose(f);
    return resident * (sysconf(_SC_PAGESIZE) / 1024) / 1024;
}

/* ---- children ------------------------------------------------------------- */

static cs_child *find(cs_arbiter *a, pid_t pid)
{
    for (int i = 0; i < a->nchildren; i++)
        if (a->children[i].pid == pid)
            return &a->children[i];
    return NULL;
}

static void stop_child(cs_arbiter *a, cs_child *c, int sig)
{
    if (c->stopping && sig != SIGQUIT && sig != SIGKILL)
        return;
    c->stopping = 1;
    if (!c->kill_at)
        c->kill_at = cs_now_ms() + (uint64_t)(a->cfg->graceful_timeout * 1000) + 1000;
    if (kill(c->pid, sig) < 0 && errno != ESRCH)
        cs_log(CS_LOG_ERROR, "arbiter: kill(%d, %d): %s", (int)c->pid, sig, strerror(errno));
}

/* Fork one worker.  1 in the new worker, 0 in the arbiter, -1 on failure. */
static int spawn(cs_arbiter *a)
{
    if (a->nchildren == MAX_CHILDREN)
        return -1;
    int slot = -1;
    for (int i = 0; i < MAX_CHILDREN && slot < 0; i++) {
        int used = 0;
        for (int k = 0; k < a->nchildren && !used; k++)
            used = a->children[k].slot == i;
        if (!used)
            slot = i;
    }
    int id = 1;
    for (int again = 1; again;) {
        again = 0;
        for (int k = 0; k < a->nchildren; k++)
            if (a->children[k].id == id) {
                id++;
                again = 1;
            }
    }
    cs_slot *s = &a->slots[slot];
    atomic_store(&s->pid, 0);
    atomic_store(&s->state, CS_SLOT_BOOTING);
    atomic_store(&s->heartbeat, cs_now_ms());
    atomic_store(&s->requests, 0);

    fflush(NULL);
    PyOS_BeforeFork();
    pid_t pid = fork();
    if (pid == 0) {
        PyOS_AfterFork_Child();
        a->in_child = 1;
        a->child_slot = slot;
        a->child_id = id;
        cs_loop_stop(a->loop);
        return 1;
    }
    PyOS_AfterFork_Parent();
    if (pid < 0) {
        cs_log(CS_LOG_ERROR, "arbiter: fork: %s", strerror(errno));
        a->next_spawn_ok = cs_now_ms() + 1000;
        return -1;
    }
    atomic_store(&s->pid, pid);
    uint64_t now = cs_now_ms(), retire_at = 0;
    if (a->cfg->workers_lifetime > 0) {
        double life = a->cfg->workers_lifetime * (1.0 + 0.1 * (double)random() / RAND_MAX);
        retire_at = now + (uint64_t)(life * 1000);
    }
    a->children[a->nchildren++] = (cs_child){.pid = pid, .id = id, .gen = a->gen, .slot = slot,
                                             .spawned = now, .retire_at = retire_at};
    cs_log(a->booted ? CS_LOG_INFO : CS_LOG_DEBUG, "Booting worker with pid: %d", (int)pid);
    return 0;
}

static void begin_stop(cs_arbiter *a, int mode)
{
    if (a->mode == QUITTING || (a->mode == GRACEFUL && mode == GRACEFUL))
        return;
    a->mode = mode;
    uint64_t grace = mode == GRACEFUL ? (uint64_t)(a->cfg->graceful_timeout * 1000) + 1000 : 2000;
    a->stop_deadline = cs_now_ms() + grace;
    for (int i = 0; i < a->nchildren; i++) {
        a->children[i].kill_at = a->stop_deadline;
        stop_child(a, &a->children[i], mode == GRACEFUL ? SIGTERM : SIGQUIT);
    }
}

static void reap(cs_arbiter *a)
{
    int st;
    pid_t pid;
    while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
        cs_child *c = find(a, pid);
        if (!c)
            continue;
        int ready = c->ever_ready || atomic_load(&a->slots[c->slot].state) != CS_SLOT_BOOTING;
        int boot_error = (WIFEXITED(st) && WEXITSTATUS(st) == CS_EXIT_BOOT) || c->boot_timeout;
        if (WIFEXITED(st) && WEXITSTATUS(st) == CS_EXIT_APP) {
            /* the app itself refused to start (its worker logged why) */
            if (a->mode == RUNNING)
                cs_log(CS_LOG_ERROR, "Worker (pid:%d) failed to start the app; stopping", (int)pid);
            a->exit_code = 1;
            begin_stop(a, QUITTING);
        } else if (!c->stopping || boot_error) {
            if (!boot_error && WIFSIGNALED(st))
                cs_log(CS_LOG_ERROR, "Worker (pid:%d) was killed by signal %d", (int)pid, WTERMSIG(st));
            else if (!boot_error)
                cs_log(CS_LOG_ERROR, "Worker (pid:%d) exited with code %d", (int)pid, WEXITSTATUS(st));
            a->next_spawn_ok = cs_now_ms() + (uint64_t)(a->cfg->respawn_interval * 1000);
            if (boot_error || !ready) {
                if (!a->booted) {
                    /* the very first worker: its own error line said why */
                    a->exit_code = 1;
                    begin_stop(a, QUITTING);
                } else if (++a->boot_failures >= MAX_BOOT_FAILURES) {
                    cs_log(CS_LOG_ERROR, "%d workers in a row failed to boot; stopping", a->boot_failures);
                    a->exit_code = 1;
                    begin_stop(a, QUITTING);
                } else {
                    /* e.g. a reload with broken code: keep serving with the
                     * workers that run, retry with a growing pause */
                    int keep = -1;
                    for (int k = 0; k < a->nchildren; k++) {
                        cs_child *o = &a->children[k];
                        if (o != c && o->ever_ready && !o->stopping && o->gen >= 0 && o->gen != a->gen)
                            keep = o->gen > keep ? o->gen : keep;
                    }
                    if (c->gen == a->gen && keep >= 0) {
                        cs_log(CS_LOG_ERROR, "New workers cannot load the app; keeping the running ones");
                        a->gen = keep;
                    }
                    uint64_t pause = 1000ULL << (a->boot_failures < 5 ? a->boot_failures : 5);
                    a->next_spawn_ok = cs_now_ms() + pause;
                }
            }
        }
        atomic_store(&a->slots[c->slot].pid, 0);
        *c = a->children[--a->nchildren];
    }
}

/* Bring the worker set to what it should be (see the file comment). */
static void reconcile(cs_arbiter *a)
{
    uint64_t now = cs_now_ms();
    if (a->mode != RUNNING) {
        if (a->nchildren == 0) {
            cs_loop_stop(a->loop);
        } else if (now >= a->stop_deadline && !a->killed_all) {
            cs_log(CS_LOG_WARNING, "arbiter: %d workers still running after the timeout; killing them",
                   a->nchildren);
            for (int i = 0; i < a->nchildren; i++)
                kill(a->children[i].pid, SIGKILL);
            a->killed_all = 1;
        }
        return;
    }
    int target = a->booted ? a->target : 1;
    int current = 0, ready = 0;
    for (int i = 0; i < a->nchildren; i++) {
        cs_child *c = &a->children[i];
        if (c->gen != a->gen || c->stopping)
            continue;
        current++;
        if (c->ever_ready)
            ready++;
    }
    while (current < target && now >= a->next_spawn_ok) {
        int r = spawn(a);
        if (r != 0)
            return;   /* in the new worker (1), or fork failed (-1) */
        current++;
    }
    /* TTOU: drop the newest extras */
    for (int i = a->nchildren - 1; i >= 0 && current > target; i--) {
        cs_child *c = &a->children[i];
        if (c->gen == a->gen && !c->stopping) {
            stop_child(a, c, SIGTERM);
            current--;
            if (c->ever_ready)
                ready--;
        }
    }
    /* old generations drain as the current one comes up */
    int old = 0;
    for (int i = 0; i < a->nchildren; i++)
        old += a->children[i].gen != a->gen && !a->children[i].stopping;
    int allowed = target - ready > 0 ? target - ready : 0;
    for (int i = 0; i < a->nchildren && old > allowed; i++) {
        cs_child *c = &a->children[i];
        if (c->gen != a->gen && !c->stopping) {
            stop_child(a, c, SIGTERM);
            old--;
        }
    }
}

static void tick(cs_loop *loop, void *data)
{
    cs_arbiter *a = data;
    uint64_t now = cs_now_ms();
    uint64_t timeout = (uint64_t)(a->cfg->timeout * 1000);
    (void)loop;
    a->ticks++;
    reap(a);
    for (int i = 0; i < a->nchildren; i++) {
        cs_child *c = &a->children[i];
        cs_slot *s = &a->slots[c->slot];
        int state = atomic_load(&s->state);
        if (!c->ever_ready && state != CS_SLOT_BOOTING) {
            c->ever_ready = 1;
            a->boot_failures = 0;
            if (!a->booted) {
                a->booted = 1;
                if (a->on_ready)
                    a->on_ready(a->ready_data, s->kind);
                /* its boot line was held back with the banner */
                cs_log(CS_LOG_INFO, "Booting worker with pid: %d", (int)c->pid);
            }
        }
        if (c->kill_at && now >= c->kill_at) {
            kill(c->pid, SIGKILL);
            c->kill_at = 0;
            continue;
        }
        if (c->stopping)
            continue;
        /* importing a big app may take longer than a request may */
        uint64_t allowed = c->ever_ready || timeout > BOOT_ALLOWANCE_MS ? timeout : BOOT_ALLOWANCE_MS;
        if (timeout && now > atomic_load(&s->heartbeat) + allowed) {
            cs_log(CS_LOG_CRITICAL, "WORKER TIMEOUT (pid:%d)%s", (int)c->pid, c->ever_ready ? "" : " while booting");
            if (!c->ever_ready)
                c->boot_timeout = 1;
            c->gen = -1;
            c->stopping = 1;
            c->kill_at = now + ABORT_GRACE_MS;
            kill(c->pid, SIGABRT);
            continue;
        }
        if (c->gen != a->gen)
            continue;
        if (state == CS_SLOT_RETIRE) {
            cs_log(CS_LOG_INFO, "Worker (pid:%d) asked to be replaced", (int)c->pid);
            c->gen = -1;
        } else if (c->retire_at && now >= c->retire_at && c->ever_ready) {
            cs_log(CS_LOG_INFO, "Worker (pid:%d) reached --workers-lifetime; replacing it", (int)c->pid);
            c->gen = -1;
        } else if (a->cfg->workers_max_rss && c->ever_ready && (a->ticks % 5) == 0) {
            long rss = rss_mib(c->pid);
            if (rss > a->cfg->workers_max_rss) {
                cs_log(CS_LOG_WARNING, "Worker (pid:%d) uses %ld MiB (over --workers-max-rss %ld); replacing it",
                       (int)c->pid, rss, a->cfg->workers_max_rss);
                c->gen = -1;
            }
        }
    }
    reconcile(a);
}

static void on_sig(cs_loop *loop, cs_io *io, uint32_t events)
{
    cs_arbiter *a = (cs_arbiter *)((char *)io - offsetof(cs_arbiter, sig));
    unsigned char buf[64];
    (void)loop;
    (void)events;
    ssize_t n = read(io->fd, buf, sizeof(buf));
    for (ssize_t i = 0; i < n && !a->in_child; i++) {
        int sig = buf[i];
        switch (sig) {
        case SIGCHLD:
            break;
        case SIGTERM:
        case SIGINT:
            cs_log(CS_LOG_INFO, "Handling signal: %s", sig == SIGTERM ? "term" : "int");
            begin_stop(a, GRACEFUL);
            break;
        case SIGQUIT:
            cs_log(CS_LOG_INFO, "Handling signal: quit");
            begin_stop(a, QUITTING);
            break;
        case SIGHUP:
            if (a->mode == RUNNING) {
                cs_log(CS_LOG_INFO, "Handling signal: hup; starting new workers");
                a->gen++;
            }
            break;
        case SIGTTIN:
            if (a->mode == RUNNING && a->target < MAX_CHILDREN / 2) {
                a->target++;
                cs_log(CS_LOG_INFO, "Handling signal: ttin; %d workers", a->target);
            }
            break;
        case SIGTTOU:
            if (a->mode == RUNNING && a->target > 1) {
                a->target--;
                cs_log(CS_LOG_INFO, "Handling signal: ttou; %d workers", a->target);
            }
            break;
        case SIGUSR1:
            cs_log_reopen();
            for (int k = 0; k < a->nchildren; k++)
                kill(a->children[k].pid, SIGUSR1);
            break;
        default:
            break;
        }
    }
    if (!a->in_child)
        tick(a->loop, a);
}

int cs_arbiter_run(const cs_config *cfg, int nworkers, void (*on_ready)(void *, const char *), void *ready_data,
                   cs_slot **slot, int *worker_id)
{
    cs_arbiter *a = calloc(1, sizeof(*a));
    if (!a) {
        cs_log(CS_LOG_ERROR, "arbiter: out of memory");
        return 1;
    }
    a->cfg = cfg;
    a->target = nworkers;
    a->pid = getpid();
    a->on_ready = on_ready;
    a->ready_data = ready_data;
    a->slots = mmap(NULL, sizeof(cs_slot) * MAX_CHILDREN, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                    -1, 0);
    int rc = 1;
    struct sigaction old[16];
    int nsig = 0;
    if (a->slots == MAP_FAILED) {
        cs_log(CS_LOG_ERROR, "arbiter: mmap of the worker slots: %s", strerror(errno));
        free(a);
        return 1;
    }
    if (!(a->loop = cs_loop_new()))
        goto out;
    if (pipe2(arb_pipe, O_NONBLOCK | O_CLOEXEC) < 0) {
        cs_log(CS_LOG_ERROR, "arbiter: pipe: %s", strerror(errno));
        goto out;
    }
    a->sig = (cs_io){.fd = arb_pipe[0], .fn = on_sig};
    if (cs_loop_watch(a->loop, &a->sig, EPOLLIN) < 0)
        goto out;
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    for (; handled[nsig]; nsig++)
        sigaction(handled[nsig], &sa, &old[nsig]);
    cs_loop_every(a->loop, TICK_MS, tick, a);

    reconcile(a);                       /* the first worker */
    if (!a->in_child)
        cs_loop_run(a->loop);

    if (a->in_child) {
        /* a new worker: shed the arbiter, keep only our slot.  Stop signals
         * wait (blocked) until the worker's loop can handle them: a TERM that
         * comes while the app is importing then still ends in a graceful exit. */
        sigset_t stops;
        sigemptyset(&stops);
        sigaddset(&stops, SIGTERM);
        sigaddset(&stops, SIGINT);
        sigaddset(&stops, SIGQUIT);
        sigprocmask(SIG_BLOCK, &stops, NULL);
        for (int i = 0; i < nsig; i++)
            sigaction(handled[i], &old[i], NULL);
        close(arb_pipe[0]);
        close(arb_pipe[1]);
        arb_pipe[0] = arb_pipe[1] = -1;
        cs_loop_free(a->loop);
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != a->pid)       /* the arbiter died before prctl took effect */
            _exit(1);
        *slot = &a->slots[a->child_slot];
        *worker_id = a->child_id;
        free(a);
        return CS_IN_WORKER;
    }
    rc = a->exit_code;
    if (a->booted)
        cs_log(CS_LOG_INFO, "Shutting down: %s", rc ? "a worker failed to boot" : "done");
out:
    for (int i = 0; i < nsig; i++)
        sigaction(handled[i], &old[i], NULL);
    if (arb_pipe[0] >= 0) {
        close(arb_pipe[0]);
        close(arb_pipe[1]);
        arb_pipe[0] = arb_pipe[1] = -1;
    }
    cs_loop_free(a->loop);
    munmap(a->slots, sizeof(cs_slot) * MAX_CHILDREN);
    free(a);
    return rc;
}
