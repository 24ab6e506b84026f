/* fuzz_parser.c - libFuzzer target for cs_parse_request.
 *
 * The input is parsed with small and with large limits; every result must
 * obey the contract in parser.h:
 *   - the return value is a head length in 1..len, CS_PARSE_AGAIN or
 *     CS_PARSE_ERROR, and an error carries a status (400/414/431/505) and text;
 *   - every returned pointer lies inside the head, num_headers <= max_fields;
 *   - the parser is a pure function: the head alone parses to the same length
 *     and the head minus its last byte is incomplete;
 *   - stored names are non-empty tokens without '_', stored values have no
 *     CR/LF/NUL and no surrounding whitespace. */
#include "parser.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond)                                                                  \
    do {                                                                             \
        if (!(cond)) {                                                               \
            fprintf(stderr, "fuzz_parser: invariant failed: %s (line %d)\n", #cond, \
                    __LINE__);                                                       \
            abort();                                                                 \
        }                                                                            \
    } while (0)

static int inside(const char *base, size_t n, const char *p, size_t plen)
{
    if (plen == 0)
        return 1;
    if (!p || p < base)
        return 0;
    return (size_t)(p - base) <= n && plen <= n - (size_t)(p - base);
}

static int is_tchar(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static int parse(const char *in, size_t len, const cs_limits *lim, cs_request *req,
                 cs_header *hdrs)
{
    /* exact-size copy so ASan sees any read past the end */
    char *buf = malloc(len ? len : 1);
    int r;
    CHECK(buf != NULL);
    if (len)
        memcpy(buf, in, len);
    memset(req, 0, sizeof *req);
    r = cs_parse_request(buf, len, req, hdrs, lim);
    free(buf);
    return r;
}

static void run(const char *buf, size_t len, const cs_limits *lim)
{
    cs_header *hdrs = malloc(lim->max_fields * sizeof *hdrs);
    cs_request req, again;
    size_t i, head;
    int r;

    CHECK(hdrs != NULL);
    memset(&req, 0, sizeof req);
    r = cs_parse_request(buf, len, &req, hdrs, lim);
    CHECK(r == CS_PARSE_ERROR || r == CS_PARSE_AGAIN || r > 0);

    if (r == CS_PARSE_ERROR) {
        CHECK(req.status == 400 || req.status == 414 || req.status == 431 || req.status == 505);
        CHECK(req.error != NULL && req.error[0] != '\0');
        free(hdrs);
        return;
    }
    if (r == CS_PARSE_AGAIN) {
        free(hdrs);
        return;
    }

    head = (size_t)r;
    CHECK(head <= len);
    CHECK(head >= 4 && memcmp(buf + head - 4, "\r\n\r\n", 4) == 0);
    CHECK(req.num_headers <= lim->max_fields);
    CHECK(req.minor_version == 0 || req.minor_version == 1);
    CHECK(req.body == CS_BODY_NONE || req.body == CS_BODY_LENGTH || req.body == CS_BODY_CHUNKED);
    CHECK(req.asterisk + req.absolute + req.authority <= 1);
    CHECK(req.method_len > 0 && inside(buf, head, req.method, req.method_len));
    CHECK(req.target_len > 0 && inside(buf, head, req.target, req.target_len));
    CHECK(inside(buf, head, req.path, req.path_len));
    CHECK(inside(buf, head, req.query, req.query_len));
    CHECK(inside(buf, head, req.host, req.host_len));
    for (i = 0; i < req.method_len; i++)
        CHECK(is_tchar((unsigned char)req.method[i]));
    for (i = 0; i < req.target_len; i++) {
        unsigned char c = (unsigned char)req.target[i];
        CHECK(c > 0x20 && c < 0x7f);
    }
    if (req.asterisk)
        CHECK(req.target_len == 1 && req.target[0] == '*');
    if (req.body == CS_BODY_CHUNKED)
        CHECK(req.minor_version == 1);
    for (i = 0; i < req.num_headers; i++) {
        const cs_header *h = &hdrs[i];
        size_t k;
        CHECK(h->name_len > 0 && inside(buf, head, h->name, h->name_len));
        CHECK(inside(buf, head, h->value, h->value_len));
        for (k = 0; k < h->name_len; k++)
            CHECK(is_tchar((unsigned char)h->name[k]) && h->name[k] != '_');
        for (k = 0; k < h->value_len; k++) {
            unsigned char c = (unsigned char)h->value[k];
            CHECK(c == '\t' || (c >= 0x20 && c != 0x7f));
        }
        if (h->value_len) {
            CHECK(h->value[0] != ' ' && h->value[0] != '\t');
            CHECK(h->value[h->value_len - 1] != ' ' && h->value[h->value_len - 1] != '\t');
        }
    }

    /* pure function of the bytes: the head alone gives the same answer, and
     * one byte less is incomplete */
    CHECK(parse(buf, head, lim, &again, hdrs) == r);
    CHECK(again.num_headers == req.num_headers && again.body == req.body &&
          again.keep_alive == req.keep_alive && again.host_len == req.host_len &&
          again.path_len == req.path_len && again.query_len == req.query_len);
    CHECK(parse(buf, head - 1, lim, &again, hdrs) == CS_PARSE_AGAIN);
    free(hdrs);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const cs_limits small = {48, 4, 40};
    static const cs_limits large = {8190, 100, 8190};
    const char *buf = (const char *)data;

    run(buf, size, &small);
    run(buf, size, &large);
    /* limits taken from the input itself, so the fuzzer explores boundaries */
    if (size >= 3) {
        cs_limits lim;
        lim.max_request_line = (size_t)data[0] + 1;
        lim.max_fields = (size_t)(data[1] & 15) + 1;
        lim.max_field_size = (size_t)data[2] + 1;
        run(buf + 3, size - 3, &lim);
    }
    return 0;
}
