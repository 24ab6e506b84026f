/* asgi.h - the ASGI bridge (ASGI 3.0, HTTP spec 2.4, lifespan).
 *
 * Runs ASGI applications on an asyncio or uvloop event loop that watches the
 * worker's epoll fd: connections are read, parsed and written by conn.c on
 * the loop's own thread, and this bridge builds the scope, provides receive
 * and send as C callables returning C awaitables, and runs each app call
 * eagerly inside its asyncio Task until it first suspends.  No Python
 * bytecode of ours runs per request. */
#ifndef CORSAC_ASGI_H
#define CORSAC_ASGI_H

#include <Python.h>

#include "config.h"
#include "worker.h"

typedef struct cs_asgi cs_asgi;

/* Register the bridge's types with the _core module (once). */
int cs_asgi_add_types(PyObject *module);

/* Prepare the bridge for one app and create its event loop.  NULL with a
 * one-line reason in err on failure. */
cs_asgi *cs_asgi_new(PyObject *app, const cs_config *cfg, char *err, size_t errlen);
void cs_asgi_free(cs_asgi *a);

/* "uvloop" or "asyncio": the loop in use. */
const char *cs_asgi_loop_name(const cs_asgi *a);

/* Lifespan startup, before the worker accepts connections.  0 to go on, -1
 * if the app reported startup.failed or (with --lifespan on) raised: the
 * reason is logged. */
int cs_asgi_startup(cs_asgi *a);
/* Lifespan shutdown (if startup ran), then cancel what is left on the loop. */
void cs_asgi_shutdown(cs_asgi *a);

/* Install the handler hooks into the worker (w->async and friends). */
void cs_asgi_attach(cs_asgi *a, cs_worker *w);

#endif
