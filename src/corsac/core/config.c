/* config.c - option table, parsing and help text. */
#include "config.h"
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { T_STR, T_INT, T_FLOAT, T_BOOL, T_CHOICE, T_LIST, T_FD };

typedef struct {
    const char *name;        /* long flag without "--" */
    const char *alias;       /* another accepted long flag, or NULL */
    char short_name;
    int type;
    size_t offset;
    const char *def;         /* default, as text: parsed like user input */
    const char *const *choices;
    double min, max;         /* numeric range */
    const char *group;
    const char *metavar;
    const char *help;
} cs_option;

static const char *const iface_choices[] = {"auto", "wsgi", "asgi", NULL};
static const char *const loop_choices[] = {"auto", "asyncio", "uvloop", NULL};
static const char *const lifespan_choices[] = {"auto", "on", "off", NULL};
static const char *const http_choices[] = {"auto", "1", "2", NULL};
static const char *const cert_reqs_choices[] = {"none", "optional", "required", NULL};

#define OFF(f) offsetof(cs_config, f)
static const cs_option options[] = {
    {"app-dir", NULL, 0, T_STR, OFF(app_dir), ".", NULL, 0, 0, "Application", "DIR",
     "directory put first on sys.path before the app is imported"},
    {"factory", NULL, 0, T_BOOL, OFF(factory), "false", NULL, 0, 0, "Application", NULL,
     "treat APP as a callable returning the application"},
    {"interface", NULL, 0, T_CHOICE, OFF(interface), "auto", iface_choices, 0, 0, "Application", "auto|wsgi|asgi",
     "application interface; auto inspects the callable"},
    {"root-path", NULL, 0, T_STR, OFF(root_path), "", NULL, 0, 0, "Application", "PATH",
     "mount point of the app: SCRIPT_NAME (WSGI) or root_path (ASGI)"},
    {"loop", NULL, 0, T_CHOICE, OFF(loop), "auto", loop_choices, 0, 0, "ASGI", "auto|asyncio|uvloop",
     "event loop for ASGI apps; auto takes uvloop when it is installed"},
    {"lifespan", NULL, 0, T_CHOICE, OFF(lifespan), "auto", lifespan_choices, 0, 0, "ASGI", "auto|on|off",
     "ASGI lifespan events; auto goes on without them if the app does not support them"},
    {"limit-concurrency", NULL, 0, T_INT, OFF(limit_concurrency), "0", NULL, 0, 1e9, "ASGI", "N",
     "answer 503 to new requests while N run in the app (per worker); 0 = no limit"},
    {"ws", NULL, 0, T_BOOL, OFF(ws), "true", NULL, 0, 0, "WebSocket", NULL,
     "accept WebSocket upgrades for ASGI apps (--no-ws: they reach the app as plain HTTP)"},
    {"ws-max-size", NULL, 0, T_INT, OFF(ws_max_size), "16777216", NULL, 1, 1e12, "WebSocket", "BYTES",
     "largest incoming message, after decompression (closed with 1009 beyond)"},
    {"ws-ping-interval", NULL, 0, T_FLOAT, OFF(ws_ping_interval), "20", NULL, 0, 86400, "WebSocket", "SECONDS",
     "ping each open WebSocket this often; 0 = never"},
    {"ws-ping-timeout", NULL, 0, T_FLOAT, OFF(ws_ping_timeout), "20", NULL, 0.01, 86400, "WebSocket", "SECONDS",
     "close a WebSocket whose pong does not come within this"},
    {"ws-per-message-deflate", NULL, 0, T_BOOL, OFF(ws_deflate), "true", NULL, 0, 0, "WebSocket", NULL,
     "negotiate permessage-deflate compression when the client offers it"},
    {"bind", NULL, 'b', T_LIST, OFF(binds), "127.0.0.1:8000", NULL, 0, 0, "Binding", "ADDR",
     "HOST:PORT, [IPV6]:PORT, unix:PATH or fd://N; repeat for several (systemd LISTEN_FDS are used "
     "when no bind is given)"},
    {"fd", NULL, 0, T_FD, OFF(binds), "", NULL, 0, 0, "Binding", "N",
     "serve an inherited listening socket: the same as --bind fd://N"},
    {"backlog", NULL, 0, T_INT, OFF(backlog), "2048", NULL, 1, 1e6, "Binding", "N",
     "listen(2) queue length"},
    {"reuse-port", NULL, 0, T_BOOL, OFF(reuse_port), "false", NULL, 0, 0, "Binding", NULL,
     "give each worker its own SO_REUSEPORT socket (the kernel spreads connections)"},
    {"umask", NULL, 0, T_STR, OFF(umask), "", NULL, 0, 0, "Binding", "OCTAL",
     "umask for unix socket files, e.g. 007 for srwxrwx---"},
    {"workers", NULL, 'w', T_INT, OFF(workers), "0", NULL, 0, 1024, "Workers", "N",
     "worker processes; 0 = one per CPU this process may use"},
    {"threads", NULL, 0, T_INT, OFF(threads), "1", NULL, 1, 1024, "Workers", "N",
     "app threads per worker; 1 runs the app on the I/O thread"},
    {"timeout", NULL, 't', T_FLOAT, OFF(timeout), "30", NULL, 0, 86400, "Workers", "SECONDS",
     "kill and replace a worker silent (or stuck in one request) this long; 0 = never"},
    {"max-requests", "limit-max-requests", 0, T_INT, OFF(max_requests), "0", NULL, 0, 1e12, "Workers", "N",
     "replace a worker after this many requests; 0 = never"},
    {"max-requests-jitter", NULL, 0, T_INT, OFF(max_requests_jitter), "0", NULL, 0, 1e12, "Workers", "N",
     "add up to this many to each worker's --max-requests"},
    {"respawn-interval", NULL, 0, T_FLOAT, OFF(respawn_interval), "0.5", NULL, 0, 3600, "Workers", "SECONDS",
     "least time between respawns after a worker died"},
    {"workers-lifetime", NULL, 0, T_FLOAT, OFF(workers_lifetime), "0", NULL, 0, 1e9, "Workers", "SECONDS",
     "replace each worker after about this long (up to 10% jitter); 0 = never"},
    {"workers-max-rss", NULL, 0, T_INT, OFF(workers_max_rss), "0", NULL, 0, 1e7, "Workers", "MIB",
     "replace a worker whose resident memory passes this; 0 = no limit"},
    {"request-timeout", NULL, 0, T_FLOAT, OFF(request_timeout), "0", NULL, 0, 86400, "Workers", "SECONDS",
     "answer 504 to a request running longer and replace its worker; 0 = none"},
    {"preload", NULL, 0, T_BOOL, OFF(preload), "false", NULL, 0, 0, "Workers", NULL,
     "import the app in the arbiter before forking the workers"},
    {"process-name", NULL, 0, T_STR, OFF(process_name), "corsac", NULL, 0, 0, "Workers", "NAME",
     "name shown by ps: 'NAME: arbiter', 'NAME: worker K'"},
    {"pid", NULL, 0, T_STR, OFF(pid_file), "", NULL, 0, 0, "Workers", "FILE",
     "write the arbiter's pid here (removed at exit)"},
    {"limit-request-line", NULL, 0, T_INT, OFF(limit_request_line), "8190", NULL, 64, 1 << 20, "HTTP limits", "BYTES",
     "longest request line (414 beyond)"},
    {"ssl-certfile", "certfile", 0, T_STR, OFF(ssl_certfile), "", NULL, 0, 0, "TLS", "FILE",
     "PEM certificate chain (leaf first); turns TLS on for every bind"},
    {"ssl-keyfile", "keyfile", 0, T_STR, OFF(ssl_keyfile), "", NULL, 0, 0, "TLS", "FILE",
     "PEM private key (default: in the certfile)"},
    {"ssl-keyfile-password", NULL, 0, T_STR, OFF(ssl_keyfile_password), "", NULL, 0, 0, "TLS", "PASSWORD",
     "password of an encrypted keyfile"},
    {"ssl-ca-certs", "ca-certs", 0, T_STR, OFF(ssl_ca_certs), "", NULL, 0, 0, "TLS", "FILE",
     "PEM CA certificates that verify client certificates"},
    {"ssl-cert-reqs", "cert-reqs", 0, T_CHOICE, OFF(ssl_cert_reqs), "none", cert_reqs_choices, 0, 0, "TLS",
     "none|optional|required", "ask clients for a certificate; required fails the handshake without one"},
    {"ssl-ciphers", "ciphers", 0, T_STR, OFF(ssl_ciphers), "ECDHE+AESGCM:ECDHE+CHACHA20", NULL, 0, 0, "TLS",
     "LIST", "OpenSSL cipher list for TLS 1.2 (TLS 1.3 suites are OpenSSL's defaults)"},
    {"http", NULL, 0, T_CHOICE, OFF(http), "auto", http_choices, 0, 0, "HTTP/2", "auto|1|2",
     "auto: HTTP/2 via ALPN on TLS and with prior knowledge on plaintext; 1: HTTP/1.1 only; 2: HTTP/2 only"},
    {"h2-max-concurrent-streams", NULL, 0, T_INT, OFF(h2_max_streams), "128", NULL, 1, 1 << 20, "HTTP/2", "N",
     "streams a client may have open at once on one connection"},
    {"h2-initial-window-size", NULL, 0, T_INT, OFF(h2_window), "1048576", NULL, 65535, 2147483647, "HTTP/2",
     "BYTES", "flow-control window for each request body (the connection's matches it)"},
    {"h2-max-header-list-size", NULL, 0, T_INT, OFF(h2_max_header_list), "65536", NULL, 1024, 1 << 24, "HTTP/2",
     "BYTES", "largest request header block, decoded (431 beyond)"},
    {"limit-request-fields", NULL, 0, T_INT, OFF(limit_request_fields), "100", NULL, 1, 1000, "HTTP limits", "N",
     "most header fields in a request (431 beyond)"},
    {"limit-request-field-size", NULL, 0, T_INT, OFF(limit_request_field_size), "8190", NULL, 64, 1 << 20,
     "HTTP limits", "BYTES", "longest header field line (431 beyond)"},
    {"limit-request-body", NULL, 0, T_INT, OFF(limit_request_body), "0", NULL, 0, 1e18, "HTTP limits", "BYTES",
     "largest request body, 0 for no limit (413 beyond)"},
    {"timeout-keep-alive", "keep-alive", 0, T_FLOAT, OFF(timeout_keep_alive), "5", NULL, 0, 86400, "Timeouts",
     "SECONDS", "close an idle keep-alive connection after this"},
    {"header-read-timeout", NULL, 0, T_FLOAT, OFF(header_read_timeout), "10", NULL, 0.1, 86400, "Timeouts",
     "SECONDS", "a request head must arrive within this (408 beyond)"},
    {"body-read-timeout", NULL, 0, T_FLOAT, OFF(body_read_timeout), "30", NULL, 0.1, 86400, "Timeouts",
     "SECONDS", "longest stall reading a body or writing a response"},
    {"graceful-timeout", "timeout-graceful-shutdown", 0, T_FLOAT, OFF(graceful_timeout), "30", NULL, 0, 86400,
     "Timeouts", "SECONDS", "on TERM/INT, how long in-flight requests may finish"},
    {"log-file", "error-logfile", 0, T_STR, OFF(log_file), "", NULL, 0, 0, "Logging", "FILE",
     "append the error log (and the app's stderr) here; USR1 reopens it"},
    {"on-starting", NULL, 0, T_STR, OFF(on_starting), "", NULL, 0, 0, "Hooks", "MODULE:FUNC",
     "called in the arbiter before the first worker starts"},
    {"post-fork", NULL, 0, T_STR, OFF(post_fork), "", NULL, 0, 0, "Hooks", "MODULE:FUNC",
     "called in each new worker, before it loads the app: func(worker)"},
    {"worker-exit", NULL, 0, T_STR, OFF(worker_exit), "", NULL, 0, 0, "Hooks", "MODULE:FUNC",
     "called in a worker as it exits: func(worker)"},
    {"log-level", NULL, 0, T_CHOICE, OFF(log_level), "info", cs_log_level_names, 0, 0, "Logging",
     "LEVEL", "debug, info, warning, error or critical"},
};
#define NOPTIONS (sizeof(options) / sizeof(options[0]))

static const char *const group_order[] = {"Application", "ASGI",    "WebSocket", "Binding", "TLS", "HTTP/2", "Workers",
                                          "HTTP limits", "Timeouts", "Logging",   "Hooks",   NULL};

static int fail(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return CS_CONFIG_ERROR;
}

static void clear_list(cs_config *cfg)
{
    for (int i = 0; i < cfg->nbinds; i++)
        free(cfg->binds[i]);
    cfg->nbinds = 0;
}

static size_t bind_option(void);

/* Apply one textual value to an option.  `from` names the source for errors. */
static int set_value(cs_config *cfg, const cs_option *o, const char *v, const char *from, char *err, size_t errlen)
{
    char *field = (char *)cfg + o->offset;
    char *end;
    switch (o->type) {
    case T_STR: {
        char *dup = strdup(v);
        if (!dup)
            return fail(err, errlen, "out of memory");
        free(*(char **)field);
        *(char **)field = dup;
        return 0;
    }
    case T_INT: {
        errno = 0;
        long long n = strtoll(v, &end, 10);
        if (errno || end == v || *end || n < o->min || n > o->max)
            return fail(err, errlen, "%s: expected a whole number from %.0f to %.0f, got '%s'", from, o->min,
                        o->max, v);
        *(long *)field = (long)n;
        return 0;
    }
    case T_FLOAT: {
        errno = 0;
        double d = strtod(v, &end);
        if (errno || end == v || *end || d < o->min || d > o->max)
            return fail(err, errlen, "%s: expected a number of seconds from %g to %g, got '%s'", from, o->min,
                        o->max, v);
        *(double *)field = d;
        return 0;
    }
    case T_BOOL:
        if (!strcmp(v, "1") || !strcasecmp(v, "true") || !strcasecmp(v, "yes") || !strcasecmp(v, "on"))
            *(int *)field = 1;
        else if (!strcmp(v, "0") || !strcasecmp(v, "false") || !strcasecmp(v, "no") || !strcasecmp(v, "off"))
            *(int *)field = 0;
        else
            return fail(err, errlen, "%s: expected true or false, got '%s'", from, v);
        return 0;
    case T_CHOICE:
        for (int i = 0; o->choices[i]; i++)
            if (!strcasecmp(v, o->choices[i])) {
                *(int *)field = i;
                return 0;
            }
        return fail(err, errlen, "%s: invalid choice '%s' (choose from %s)", from, v, o->metavar);
    case T_FD: {
        /* sugar: each number becomes an "fd://N" bind */
        char spec[48];
        const char *p = v;
        while (*p) {
            const char *c = strchr(p, ',');
            size_t n = c ? (size_t)(c - p) : strlen(p);
            if (n == 0 || n > 8 || strspn(p, "0123456789") < n)
                return fail(err, errlen, "%s: expected a file descriptor number, got '%s'", from, v);
            snprintf(spec, sizeof(spec), "fd://%.*s", (int)n, p);
            if (set_value(cfg, &options[bind_option()], spec, from, err, errlen))
                return CS_CONFIG_ERROR;
            p += n + (c ? 1 : 0);
        }
        return 0;
    }
    case T_LIST: {
        /* comma-separated; each call appends */
        const char *p = v;
        while (*p) {
            const char *c = strchr(p, ',');
            size_t n = c ? (size_t)(c - p) : strlen(p);
            if (n) {
                if (cfg->nbinds == CS_MAX_BINDS)
                    return fail(err, errlen, "%s: at most %d addresses", from, CS_MAX_BINDS);
                char *dup = strndup(p, n);
                if (!dup)
                    return fail(err, errlen, "out of memory");
                cfg->binds[cfg->nbinds++] = dup;
            }
            p += n + (c ? 1 : 0);
        }
        return 0;
    }
    }
    return fail(err, errlen, "internal: bad option type");
}

static size_t bind_option(void)
{
    size_t i = 0;
    while (options[i].type != T_LIST)
        i++;
    return i;
}

static void env_name(const cs_option *o, char *buf, size_t len)
{
    size_t i = (size_t)snprintf(buf, len, "CORSAC_");
    for (const char *p = o->name; *p && i + 1 < len; p++)
        buf[i++] = *p == '-' ? '_' : (char)(*p >= 'a' && *p <= 'z' ? *p - 32 : *p);
    buf[i] = '\0';
}

static const cs_option *find_long(const char *name, size_t len)
{
    for (size_t i = 0; i < NOPTIONS; i++) {
        const cs_option *o = &options[i];
        if ((strlen(o->name) == len && !strncmp(o->name, name, len)) ||
            (o->alias && strlen(o->alias) == len && !strncmp(o->alias, name, len)))
            return o;
    }
    return NULL;
}

static void print_help(const char *prog)
{
    printf("usage: %s [OPTIONS] APP\n\n"
           "Serve a Python WSGI or ASGI application with Corsac %s.\n\n"
           "  APP                     module:attribute (attribute may be dotted); also CORSAC_APP\n"
           "  -h, --help              show this help and exit\n"
           "  --version               show the version and exit\n",
           prog, CORSAC_VERSION);
    for (int g = 0; group_order[g]; g++) {
        printf("\n%s:\n", group_order[g]);
        for (size_t i = 0; i < NOPTIONS; i++) {
            const cs_option *o = &options[i];
            if (strcmp(o->group, group_order[g]))
                continue;
            char flag[96], env[64];
            int n = o->short_name ? snprintf(flag, sizeof(flag), "-%c, --%s", o->short_name, o->name)
                                  : snprintf(flag, sizeof(flag), "--%s", o->name);
            if (o->metavar && o->type != T_BOOL)
                snprintf(flag + n, sizeof(flag) - (size_t)n, " %s", o->metavar);
            env_name(o, env, sizeof(env));
            printf("  %-40s %s\n", flag, o->help);
            printf("  %-40s [default: %s] [env: %s]%s%s%s\n", "", o->def[0] ? o->def : "\"\"", env,
                   o->alias ? " [alias: --" : "", o->alias ? o->alias : "", o->alias ? "]" : "");
        }
    }
}

int cs_config_load(cs_config *cfg, int argc, char **argv, char *err, size_t errlen)
{
    memset(cfg, 0, sizeof(*cfg));
    for (size_t i = 0; i < NOPTIONS; i++)
        if (set_value(cfg, &options[i], options[i].def, "default", err, errlen))
            return CS_CONFIG_ERROR;

    /* environment */
    for (size_t i = 0; i < NOPTIONS; i++) {
        char env[64];
        env_name(&options[i], env, sizeof(env));
        const char *v = getenv(env);
        if (!v)
            continue;
        if (options[i].type == T_LIST || options[i].type == T_FD)
            clear_list(cfg);
        if (set_value(cfg, &options[i], v, env, err, errlen))
            return CS_CONFIG_ERROR;
    }
    const char *envapp = getenv("CORSAC_APP");
    if (envapp && *envapp && !(cfg->app = strdup(envapp)))
        return fail(err, errlen, "out of memory");

    /* command line */
    int list_from_cli = 0, only_positional = 0, app_from_cli = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (only_positional || a[0] != '-' || a[1] == '\0') {
            if (app_from_cli)
                return fail(err, errlen, "unexpected extra argument '%s'", a);
            app_from_cli = 1;
            free(cfg->app);
            if (!(cfg->app = strdup(a)))
                return fail(err, errlen, "out of memory");
            continue;
        }
        if (!strcmp(a, "--")) {
            only_positional = 1;
            continue;
        }
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            print_help("corsac");
            return CS_CONFIG_EXIT;
        }
        if (!strcmp(a, "--version")) {
            printf("corsac %s\n", CORSAC_VERSION);
            return CS_CONFIG_EXIT;
        }
        const cs_option *o = NULL;
        const char *val = NULL;
        int negated = 0;
        char flagname[80];
        if (a[1] == '-') {
            const char *name = a + 2, *eq = strchr(name, '=');
            size_t len = eq ? (size_t)(eq - name) : strlen(name);
            o = find_long(name, len);
            if (!o && len > 3 && !strncmp(name, "no-", 3)) {
                o = find_long(name + 3, len - 3);
                negated = o && o->type == T_BOOL;
                if (!negated)
                    o = NULL;
            }
            if (!o)
                return fail(err, errlen, "unrecognized option '--%.*s'", (int)len, name);
            if (eq)
                val = eq + 1;
            snprintf(flagname, sizeof(flagname), "--%.*s", (int)len, name);
        } else {
            for (size_t k = 0; k < NOPTIONS; k++)
                if (options[k].short_name == a[1])
                    o = &options[k];
            if (!o)
                return fail(err, errlen, "unrecognized option '-%c'", a[1]);
            if (a[2])
                val = a + 2;
            snprintf(flagname, sizeof(flagname), "-%c", a[1]);
        }
        if (o->type == T_BOOL && !val) {
            val = negated ? "false" : "true";
        } else if (!val) {
            if (i + 1 >= argc)
                return fail(err, errlen, "option %s needs a value", flagname);
            val = argv[++i];
        }
        if ((o->type == T_LIST || o->type == T_FD) && !list_from_cli) {
            clear_list(cfg);
            list_from_cli = 1;
        }
        if (set_value(cfg, o, val, flagname, err, errlen))
            return CS_CONFIG_ERROR;
    }
    if (!cfg->app)
        return fail(err, errlen, "missing APP (module:attribute); see 'corsac --help'");
    /* systemd socket activation: its sockets replace the default bind */
    const char *lpid = getenv("LISTEN_PID"), *lfds = getenv("LISTEN_FDS");
    if (!list_from_cli && !getenv("CORSAC_BIND") && !getenv("CORSAC_FD") && lpid && lfds && atol(lpid) == (long)getpid()) {
        long n = atol(lfds);
        if (n > 0 && n <= CS_MAX_BINDS) {
            clear_list(cfg);
            for (long i = 0; i < n; i++) {
                char spec[32];
                snprintf(spec, sizeof(spec), "fd://%ld", 3 + i);
                if (set_value(cfg, &options[bind_option()], spec, "LISTEN_FDS", err, errlen))
                    return CS_CONFIG_ERROR;
            }
        }
        unsetenv("LISTEN_PID");
        unsetenv("LISTEN_FDS");
        unsetenv("LISTEN_FDNAMES");
    }
    return CS_CONFIG_OK;
}

void cs_config_free(cs_config *cfg)
{
    for (size_t i = 0; i < NOPTIONS; i++)
        if (options[i].type == T_STR) {
            free(*(char **)((char *)cfg + options[i].offset));
            *(char **)((char *)cfg + options[i].offset) = NULL;
        }
    clear_list(cfg);
    free(cfg->app);
    cfg->app = NULL;
}
