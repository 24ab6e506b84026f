/* ws.h - WebSocket framing (RFC 6455) and permessage-deflate (RFC 7692).
 *
 * Owns: the opening-handshake checks and the Sec-WebSocket-Accept value, the
 * permessage-deflate negotiation, the incremental frame reader (unmasking,
 * fragmentation, control frames, UTF-8 validation, size limit, inflate) and
 * the frame writer (headers, deflate).  No I/O and no Python: conn.c feeds
 * bytes in and writes what comes out; the unit tests and fuzzers drive it
 * directly. */
#ifndef CORSAC_WS_H
#define CORSAC_WS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "parser.h"

enum { CS_WS_CONT = 0x0, CS_WS_TEXT = 0x1, CS_WS_BINARY = 0x2, CS_WS_CLOSE = 0x8, CS_WS_PING = 0x9, CS_WS_PONG = 0xA };

/* Close codes this server sends or reports. */
enum {
    CS_WS_NORMAL = 1000, CS_WS_GOING_AWAY = 1001, CS_WS_PROTOCOL_ERROR = 1002, CS_WS_NO_STATUS = 1005,
    CS_WS_ABNORMAL = 1006, CS_WS_INVALID_DATA = 1007, CS_WS_TOO_BIG = 1009, CS_WS_INTERNAL_ERROR = 1011
};

#define CS_WS_MAX_HEADER 10       /* server frames: unmasked */
#define CS_WS_ACCEPT_LEN 28       /* base64 of a SHA-1 digest */

/* ---- opening handshake ---------------------------------------------------- */

/* Is this request an upgrade to WebSocket (an Upgrade field naming
 * "websocket")?  The parser has already checked Connection: upgrade. */
int cs_ws_is_upgrade(const cs_header *h, size_t n);

/* Check the rest of the handshake (RFC 6455 4.2.1).  0 when valid, with
 * the key's value in *key; otherwise the HTTP status to answer: 400, or 426
 * for a version other than 13 (answer with "Sec-WebSocket-Version: 13"). */
int cs_ws_check_handshake(const char *method, size_t method_len, int minor_version, const cs_header *h, size_t n,
                          const char **key, size_t *key_len, const char **why);

/* Sec-WebSocket-Accept for a key: CS_WS_ACCEPT_LEN characters plus NUL. */
void cs_ws_accept_value(const char *key, size_t key_len, char out[CS_WS_ACCEPT_LEN + 1]);

/* ---- permessage-deflate --------------------------------------------------- */

typedef struct {
    unsigned enabled : 1;
    unsigned server_no_context : 1;   /* reset our compressor after each message */
    unsigned client_no_context : 1;   /* the client resets its compressor: so can we our inflater */
    unsigned no_compress : 1;         /* the client allows a window zlib cannot produce: send plain */
    int server_bits;                  /* our window, 9..15 */
} cs_ws_deflate_params;

/* Pick the first acceptable permessage-deflate offer among the request's
 * Sec-WebSocket-Extensions fields.  Fills p and writes the response value
 * into resp (NUL-terminated); 0 accepted, -1 nothing acceptable. */
int cs_ws_negotiate_deflate(const cs_header *h, size_t n, cs_ws_deflate_params *p, char *resp, size_t resp_len);

/* ---- UTF-8 ------------------------------------------------------------------ */

/* Incremental validator (RFC 3629: no overlongs, surrogates or values past
 * U+10FFFF).  Zero-initialize; feed returns -1 at the first invalid byte. */
typedef struct {
    uint8_t need;                     /* continuation bytes still expected */
    uint8_t lo, hi;                   /* allowed range of the next one */
} cs_utf8;

int cs_utf8_feed(cs_utf8 *u, const unsigned char *p, size_t n);
static inline int cs_utf8_complete(const cs_utf8 *u) { return u->need == 0; }

/* ---- frames ----------------------------------------------------------------- */

/* Can a peer send this close code (RFC 6455 7.4, IANA registry)? */
int cs_ws_close_code_ok(int code);

/* Write a server frame header for a payload of len bytes; its length. */
size_t cs_ws_frame_header(unsigned char out[CS_WS_MAX_HEADER], int opcode, int fin, int rsv1, uint64_t len);

/* XOR p with the mask, starting `offset` bytes into the frame's payload. */
void cs_ws_unmask(unsigned char *p, size_t n, const uint8_t mask[4], uint64_t offset);

/* ---- the reader ------------------------------------------------------------- */

typedef struct cs_ws_reader cs_ws_reader;

/* What the reader delivers.  Pointers are valid during the call only. */
typedef struct {
    /* A whole data message (CS_WS_TEXT, already validated, or CS_WS_BINARY). */
    void (*message)(void *ud, int opcode, const char *p, size_t n);
    /* A ping or pong (payload up to 125 bytes). */
    void (*control)(void *ud, int opcode, const char *p, size_t n);
    /* The peer's close frame: its code (CS_WS_NO_STATUS when it had none)
     * and reason (valid UTF-8).  The reader ignores everything after it. */
    void (*close)(void *ud, int code, const char *reason, size_t n);
} cs_ws_events;

/* max_size: the largest message (after inflating), 0 for no limit.
 * deflate: the negotiated parameters or NULL.  NULL on allocation failure. */
cs_ws_reader *cs_ws_reader_new(uint64_t max_size, const cs_ws_deflate_params *deflate);
void cs_ws_reader_free(cs_ws_reader *r);

/* Consume n bytes from the peer (they are unmasked in place).  0 when all
 * was taken, -1 when the peer broke the protocol: the close code to send is
 * in *code and a short reason in *why. */
int cs_ws_reader_feed(cs_ws_reader *r, unsigned char *p, size_t n, const cs_ws_events *ev, void *ud, int *code,
                      const char **why);

/* Bytes the reader holds between messages (fragments, inflate state aside). */
size_t cs_ws_reader_buffered(const cs_ws_reader *r);

/* ---- the writer's compressor ------------------------------------------------ */

typedef struct cs_ws_deflater cs_ws_deflater;

cs_ws_deflater *cs_ws_deflater_new(const cs_ws_deflate_params *p);
void cs_ws_deflater_free(cs_ws_deflater *d);

/* Compress one message.  1 with *out (malloc'd, the caller frees) and
 * *out_len; 0 when it must go as is (the negotiated window rules
 * compression out); -1 on failure (logged). */
int cs_ws_deflate(cs_ws_deflater *d, const char *p, size_t n, unsigned char **out, size_t *out_len);

#endif
