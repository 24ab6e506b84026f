/* config.h - the command line: one option table drives the flags, their
 * CORSAC_* environment variables and the grouped --help.
 *
 * Precedence: built-in default < environment < command line. */
#ifndef CORSAC_CONFIG_H
#define CORSAC_CONFIG_H

#include <stddef.h>

#ifndef CORSAC_VERSION
#define CORSAC_VERSION "0.1.0"
#endif
#define CS_MAX_BINDS 16

enum { CS_IFACE_AUTO, CS_IFACE_WSGI, CS_IFACE_ASGI };
enum { CS_LOOP_AUTO, CS_LOOP_ASYNCIO, CS_LOOP_UVLOOP };
enum { CS_HTTP_AUTO, CS_HTTP_1, CS_HTTP_2 };
enum { CS_CERT_NONE, CS_CERT_OPTIONAL, CS_CERT_REQUIRED };
enum { CS_LIFESPAN_AUTO, CS_LIFESPAN_ON, CS_LIFESPAN_OFF };

typedef struct {
    char *app;
    char *app_dir;
    int factory;
    int interface;
    char *binds[CS_MAX_BINDS];
    int nbinds;
    long backlog;
    int reuse_port;
    char *umask;                    /* octal text, "" = leave the process umask */
    long workers;                   /* 0: one per CPU this process may use */
    long threads;
    double timeout;                 /* worker heartbeat */
    long max_requests;
    long max_requests_jitter;
    double respawn_interval;
    double workers_lifetime;        /* 0: forever */
    long workers_max_rss;           /* MiB, 0: no limit */
    double request_timeout;         /* 0: none */
    int preload;
    char *process_name;
    char *pid_file;
    int log_level;
    char *log_file;
    char *on_starting, *post_fork, *worker_exit;   /* module:func hooks */
    char *root_path;
    int loop;                       /* CS_LOOP_* */
    int lifespan;                   /* CS_LIFESPAN_* */
    long limit_concurrency;         /* 0: none */
    int ws;                         /* accept WebSocket upgrades (ASGI) */
    long ws_max_size;
    double ws_ping_interval;        /* 0: no pings */
    double ws_ping_timeout;
    int ws_deflate;                 /* negotiate permessage-deflate */
    char *ssl_certfile, *ssl_keyfile, *ssl_keyfile_password, *ssl_ca_certs, *ssl_ciphers;
    int ssl_cert_reqs;              /* CS_CERT_* */
    int http;                       /* CS_HTTP_* */
    long h2_max_streams;
    long h2_window;
    long h2_max_header_list;
    long limit_request_line;
    long limit_request_fields;
    long limit_request_field_size;
    long limit_request_body;        /* 0: unlimited */
    double timeout_keep_alive;
    double header_read_timeout;
    double body_read_timeout;
    double graceful_timeout;
} cs_config;

enum { CS_CONFIG_OK = 0, CS_CONFIG_EXIT = 1, CS_CONFIG_ERROR = -1 };

/* Fill cfg from defaults, environment and argv.  CS_CONFIG_EXIT means --help
 * or --version was printed; CS_CONFIG_ERROR leaves a one-line reason in err. */
int cs_config_load(cs_config *cfg, int argc, char **argv, char *err, size_t errlen);
void cs_config_free(cs_config *cfg);

#endif
