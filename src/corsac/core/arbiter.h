/* arbiter.h - the pre-fork process manager.
 *
 * The arbiter binds nothing itself (module.c does, before it starts) and runs
 * no app code: it forks the workers that share the listening sockets,
 * watches their heartbeats in shared memory, replaces the dead, the hung and
 * the retiring, and turns signals into graceful stops, reloads and scaling.
 * It is the one other place (besides the worker) that holds process state. */
#ifndef CORSAC_ARBITER_H
#define CORSAC_ARBITER_H

#include <stdatomic.h>
#include <stdint.h>

#include "config.h"

enum { CS_SLOT_BOOTING = 0, CS_SLOT_READY, CS_SLOT_RETIRE };

/* One worker's shared-memory slot: written by the worker, read by the arbiter. */
typedef struct {
    atomic_int pid;
    atomic_int state;               /* CS_SLOT_* */
    atomic_uint_fast64_t heartbeat; /* CLOCK_MONOTONIC ms of the last sign of life */
    atomic_uint_fast64_t requests;  /* requests served */
    char kind[96];                  /* what the worker runs, for the start-up lines */
} cs_slot;

#define CS_IN_WORKER (-100)         /* cs_arbiter_run returned inside a new worker */
#define CS_EXIT_BOOT 3              /* a worker's exit code: the app could not be loaded */
#define CS_EXIT_APP 4               /* ... the app refused to start (lifespan): stop everything */

/* Fork and supervise nworkers workers until stopped.  In the arbiter it
 * returns the process exit code.  In a freshly forked worker it returns
 * CS_IN_WORKER with *slot and *worker_id set: the caller runs the worker.
 * on_ready runs once, when the first worker reports ready (with the kind it
 * put in its slot): start-up lines wait for it, so an app that cannot load
 * prints its one error line alone. */
int cs_arbiter_run(const cs_config *cfg, int nworkers, void (*on_ready)(void *, const char *), void *ready_data,
                   cs_slot **slot, int *worker_id);

/* CPUs this process may use: affinity mask and cgroup CPU quota. */
int cs_cpu_count(void);

/* What ps shows for this process (argv area and comm). */
void cs_set_process_title(const char *title);

#endif
