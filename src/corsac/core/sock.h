/* sock.h - listening sockets: parse a --bind spec, bind, listen, describe.
 *
 * Specs: "host:port", "[v6addr]:port", "unix:/path", "host" (port 8000),
 * "PORT" (127.0.0.1), "fd://N" (an inherited listening socket).
 * The arbiter binds once and every worker inherits the same fds. */
#ifndef CORSAC_SOCK_H
#define CORSAC_SOCK_H

#include <stddef.h>

typedef struct {
    int fd;
    int family;                 /* AF_INET, AF_INET6 or AF_UNIX */
    char display[300];          /* "http://127.0.0.1:8000" or "unix:/path" */
    char server_name[256];      /* WSGI SERVER_NAME */
    char server_port[8];        /* WSGI SERVER_PORT ("" for unix) */
    char *unix_path;            /* owned; unlinked on close */
} cs_listener;

typedef struct {
    int backlog;
    int reuse_port;             /* SO_REUSEPORT on TCP sockets */
    int umask;                  /* for unix socket files; -1: the process umask */
} cs_listen_opts;

/* Bind and listen (non-blocking, close-on-exec).  0, or -1 with err filled. */
int cs_listen(const char *spec, const cs_listen_opts *o, cs_listener *out, char *err, size_t errlen);

/* A worker's own SO_REUSEPORT socket at the address of a shared TCP listener. */
int cs_listen_again(const cs_listener *shared, int backlog, cs_listener *out, char *err, size_t errlen);
void cs_listener_close(cs_listener *l);

#endif
