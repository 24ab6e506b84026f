/* wsgi.h - the WSGI bridge (PEP 3333).
 *
 * Consumes a cs_req and runs a WSGI application for it: builds the environ,
 * provides start_response/write, wsgi.input and wsgi.file_wrapper, iterates
 * the response and always calls its close().  All of it through the C API:
 * no Python bytecode of ours runs per request. */
#ifndef CORSAC_WSGI_H
#define CORSAC_WSGI_H

#include <Python.h>

#include "config.h"
#include "request.h"

typedef struct cs_wsgi cs_wsgi;

/* Register the bridge's types with the _core module (once). */
int cs_wsgi_add_types(PyObject *module);

/* Prepare the bridge for one app.  NULL with a Python error set on failure. */
cs_wsgi *cs_wsgi_new(PyObject *app, const cs_config *cfg, int multiprocess);
void cs_wsgi_free(cs_wsgi *w);

/* cs_handler_fn: run the app for one request.  Called with the GIL held. */
void cs_wsgi_handle(cs_req *req, void *data);
/* Continue a response that suspended because its client was behind. */
void cs_wsgi_resume(cs_req *req, void *data);
/* Drop a suspended response whose connection is gone (close() is called). */
void cs_wsgi_cancel(cs_req *req, void *data);

#endif
