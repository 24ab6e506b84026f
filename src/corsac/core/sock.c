/* sock.c - bind specs to listening sockets. */
#include "sock.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

static int listen_unix(const char *path, const cs_listen_opts *o, cs_listener *out, char *err, size_t errlen)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(sa.sun_path)) {
        snprintf(err, errlen, "unix socket path too long: %s", path);
        return -1;
    }
    strcpy(sa.sun_path, path);
    struct stat st;
    if (stat(path, &st) == 0 && S_ISSOCK(st.st_mode))
        unlink(path);   /* a stale socket from an earlier run */
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket(AF_UNIX): %s", strerror(errno));
        return -1;
    }
    mode_t old = o->umask >= 0 ? umask((mode_t)o->umask) : 0;
    int rc = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
    if (o->umask >= 0)
        umask(old);
    if (rc < 0 || listen(fd, o->backlog) < 0) {
        snprintf(err, errlen, "cannot bind unix:%s: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    out->fd = fd;
    out->family = AF_UNIX;
    out->unix_path = strdup(path);
    snprintf(out->display, sizeof(out->display), "unix:%s", path);
    snprintf(out->server_name, sizeof(out->server_name), "%s", path);
    out->server_port[0] = '\0';
    return 0;
}

/* socket + options + bind + listen for a TCP address.  fd, or -1 with err
 * ("what" names the address in the message). */
static int open_tcp(const struct sockaddr *addr, socklen_t len, int reuse_port, int backlog, const char *what,
                    char *err, size_t errlen)
{
    int fd = socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -1;
    }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (reuse_port)
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    if (addr->sa_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, addr, len) < 0 || listen(fd, backlog) < 0) {
        snprintf(err, errlen, "cannot bind %s: %s", what, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

/* Describe a bound socket (after bind or when inherited). */
static void describe(cs_listener *out)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    char addr[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (getsockname(out->fd, (struct sockaddr *)&ss, &sl) < 0)
        return;
    out->family = ss.ss_family;
    if (ss.ss_family == AF_UNIX) {
        struct sockaddr_un *su = (struct sockaddr_un *)&ss;
        snprintf(out->display, sizeof(out->display), "unix:%s", su->sun_path);
        snprintf(out->server_name, sizeof(out->server_name), "%s", su->sun_path);
        out->server_port[0] = '\0';
        return;
    }
    if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        inet_ntop(AF_INET6, &s6->sin6_addr, addr, sizeof(addr));
        port = ntohs(s6->sin6_port);
        snprintf(out->display, sizeof(out->display), "http://[%s]:%d", addr, port);
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
        inet_ntop(AF_INET, &s4->sin_addr, addr, sizeof(addr));
        port = ntohs(s4->sin_port);
        snprintf(out->display, sizeof(out->display), "http://%s:%d", addr, port);
    }
    snprintf(out->server_name, sizeof(out->server_name), "%s", addr);
    snprintf(out->server_port, sizeof(out->server_port), "%d", port);
}

/* "fd://N": a listening socket inherited from whoever started us. */
static int listen_fd(const char *num, cs_listener *out, char *err, size_t errlen)
{
    char *end;
    long fd = strtol(num, &end, 10);
    int acc = 0;
    socklen_t al = sizeof(acc);
    if (end == num || *end || fd < 0 || fd > 65535 ||
        getsockopt((int)fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &al) < 0 || !acc) {
        snprintf(err, errlen, "fd://%s is not a listening socket", num);
        return -1;
    }
    int fl = fcntl((int)fd, F_GETFL);
    if (fl < 0 || fcntl((int)fd, F_SETFL, fl | O_NONBLOCK) < 0 || fcntl((int)fd, F_SETFD, FD_CLOEXEC) < 0) {
        snprintf(err, errlen, "fd://%s: %s", num, strerror(errno));
        return -1;
    }
    out->fd = (int)fd;
    describe(out);
    return 0;
}

int cs_listen(const char *spec, const cs_listen_opts *o, cs_listener *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    out->fd = -1;
    if (strncmp(spec, "unix:", 5) == 0)
        return listen_unix(spec + 5, o, out, err, errlen);
    if (strncmp(spec, "fd://", 5) == 0)
        return listen_fd(spec + 5, out, err, errlen);

    char host[256], port[16] = "8000";
    const char *colon;
    if (spec[0] && strspn(spec, "0123456789") == strlen(spec)) {
        /* a bare port: loopback, like the default */
        char full[32];
        snprintf(full, sizeof(full), "127.0.0.1:%.8s", spec);
        return cs_listen(full, o, out, err, errlen);
    }
    if (spec[0] == '[') {
        const char *rb = strchr(spec, ']');
        if (!rb || (size_t)(rb - spec - 1) >= sizeof(host) || (rb[1] && rb[1] != ':')) {
            snprintf(err, errlen, "invalid bind address: %s", spec);
            return -1;
        }
        memcpy(host, spec + 1, (size_t)(rb - spec - 1));
        host[rb - spec - 1] = '\0';
        colon = rb[1] == ':' ? rb + 1 : NULL;
    } else {
        colon = strrchr(spec, ':');
        size_t hl = colon ? (size_t)(colon - spec) : strlen(spec);
        if (hl >= sizeof(host)) {
            snprintf(err, errlen, "invalid bind address: %s", spec);
            return -1;
        }
        memcpy(host, spec, hl);
        host[hl] = '\0';
        if (hl == 0)
            strcpy(host, "0.0.0.0");
    }
    if (colon) {
        const char *p = colon + 1;
        size_t pl = strlen(p);
        if (pl == 0 || pl >= sizeof(port) || strspn(p, "0123456789") != pl || atoi(p) > 65535) {
            snprintf(err, errlen, "invalid port in bind address: %s", spec);
            return -1;
        }
        strcpy(port, p);
    }

    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV}, *res;
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0) {
        snprintf(err, errlen, "cannot resolve %s: %s", spec, gai_strerror(rc));
        return -1;
    }
    int fd = open_tcp(res->ai_addr, res->ai_addrlen, o->reuse_port, o->backlog, spec, err, errlen);
    if (fd < 0) {
        freeaddrinfo(res);
        return -1;
    }
    freeaddrinfo(res);
    out->fd = fd;
    describe(out);
    return 0;
}

int cs_listen_again(const cs_listener *shared, int backlog, cs_listener *out, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    memset(out, 0, sizeof(*out));
    out->fd = -1;
    if (getsockname(shared->fd, (struct sockaddr *)&ss, &sl) < 0) {
        snprintf(err, errlen, "getsockname: %s", strerror(errno));
        return -1;
    }
    char what[340];
    snprintf(what, sizeof(what), "a SO_REUSEPORT socket at %s", shared->display);
    int fd = open_tcp((struct sockaddr *)&ss, sl, 1, backlog, what, err, errlen);
    if (fd < 0)
        return -1;
    out->fd = fd;
    describe(out);
    /* the same name as the shared socket, so the environ does not depend on which accepted */
    memcpy(out->server_name, shared->server_name, sizeof(out->server_name));
    memcpy(out->server_port, shared->server_port, sizeof(out->server_port));
    return 0;
}

void cs_listener_close(cs_listener *l)
{
    if (l->fd >= 0)
        close(l->fd);
    l->fd = -1;
    if (l->unix_path) {
        unlink(l->unix_path);
        free(l->unix_path);
        l->unix_path = NULL;
    }
}
