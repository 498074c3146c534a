/* sandrun_http.h - the sandrun:http host interface for WASI guests (any toolchain).
 *
 * A guest performs HTTP(S) requests through the host: the host parses the URL strictly, checks
 * the job's network grant (scheme, host, port, method, path), resolves the name and refuses it
 * when any answer is blocked, dials only the checked address, verifies TLS for the URL's name,
 * adds the job's secrets on their exact origin (the guest never sees them) and records each hop
 * in the audit log. Denials and failures are negative codes, never traps. See docs/http.md.
 *
 * A simple request is three host calls:
 *
 *     sandrun_http_response_t out;
 *     int32_t h = sandrun_http_request(json, strlen(json), NULL, 0, &out);
 *     if (h < 0) { char msg[256]; int32_t n = sandrun_http_last_error(msg, sizeof msg); ... }
 *     int32_t n = sandrun_http_read_body(h, buf, out.body_len);   // buf has room for body_len
 *     sandrun_http_close(h);
 *
 * The request is strict JSON: {"url": "https://api.example.org/x", "method": "GET",
 * "headers": {"Accept": "application/json"}, "redirects": 0, "timeout_ms": 5000}; only "url" is
 * required, unknown or duplicate keys are refused, "redirects" is 0..5 (default 0: a 3xx is
 * returned as it is).
 */
#ifndef SANDRUN_HTTP_H
#define SANDRUN_HTTP_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SANDRUN_HTTP_IMPORT(name) __attribute__((import_module("sandrun:http"), import_name(name)))

/* Error codes (negative returns). sandrun_http_last_error gives "[rule] message". */
#define SANDRUN_HTTP_EINVAL      (-1)  /* malformed request JSON, URL, method or header */
#define SANDRUN_HTTP_EFAULT      (-2)  /* a pointer/length outside the guest's memory */
#define SANDRUN_HTTP_EDENIED     (-3)  /* refused by the grant or the blocks (or no grant) */
#define SANDRUN_HTTP_EDNS        (-4)  /* the name did not resolve */
#define SANDRUN_HTTP_ECONNECT    (-5)  /* the checked address did not accept the connection */
#define SANDRUN_HTTP_ETLS        (-6)  /* TLS failed: bad certificate, wrong name, handshake */
#define SANDRUN_HTTP_ETIMEOUT    (-7)  /* the request's timeout or the job's deadline passed */
#define SANDRUN_HTTP_ETOOLARGE   (-8)  /* the request or response body exceeds the cap */
#define SANDRUN_HTTP_ELIMIT      (-9)  /* too many requests or open handles for this job */
#define SANDRUN_HTTP_EPROTOCOL  (-10)  /* the server's answer is not valid HTTP/1.1 */
#define SANDRUN_HTTP_EHANDLE    (-11)  /* no open response with this handle */

typedef struct {
    uint32_t status;      /* HTTP status code */
    uint32_t headers_len; /* bytes of the "Name: value\r\n" header block */
    uint32_t body_len;    /* bytes of the body (already complete and capped) */
} sandrun_http_response_t;

/* Perform a request; on success write *out and return a handle (> 0). */
SANDRUN_HTTP_IMPORT("request")
int32_t sandrun_http_request(const char *json, uint32_t json_len, const uint8_t *body, uint32_t body_len,
                             sandrun_http_response_t *out);

/* Copy the next bytes of the header block / body into buf; return the count, 0 at the end. */
SANDRUN_HTTP_IMPORT("read_headers")
int32_t sandrun_http_read_headers(int32_t handle, uint8_t *buf, uint32_t cap);
SANDRUN_HTTP_IMPORT("read_body")
int32_t sandrun_http_read_body(int32_t handle, uint8_t *buf, uint32_t cap);

/* Free a response (0, or SANDRUN_HTTP_EHANDLE). */
SANDRUN_HTTP_IMPORT("close")
int32_t sandrun_http_close(int32_t handle);

/* Copy the text of the last error (cut to cap); return its full length. */
SANDRUN_HTTP_IMPORT("last_error")
int32_t sandrun_http_last_error(char *buf, uint32_t cap);

#ifdef __cplusplus
}
#endif

#endif /* SANDRUN_HTTP_H */
