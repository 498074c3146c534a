/* Helpers shared by the built-in tools (header-only: each tool is its own module, built alone).
 * Every tool exits 0 on success, 1 for a negative answer (a mismatch, no match, an invalid
 * document) and 2 for trouble (bad usage, an unreadable file), like grep, cmp and diff. */
#ifndef SANDRUN_CATALOG_COMMON_H
#define SANDRUN_CATALOG_COMMON_H

#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EXIT_NO 1
#define EXIT_TROUBLE 2

static const char *tool_name = "builtin";

/* "TOOL: message" on stderr. */
static inline void warn(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", tool_name);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* Out of memory ends the tool: the sandbox's memory limit is the only sane response. */
static inline void *xrealloc(void *old, size_t size) {
    void *p = realloc(old, size ? size : 1);
    if (!p) {
        warn("out of memory");
        exit(EXIT_TROUBLE);
    }
    return p;
}

/* Open PATH for reading, "-" meaning stdin; NULL (and a warning) on failure. */
static inline FILE *open_input(const char *path) {
    if (strcmp(path, "-") == 0) return stdin;
    FILE *f = fopen(path, "rb");
    if (!f) warn("%s: %s", path, strerror(errno));
    return f;
}

static inline void close_input(FILE *f) {
    if (f && f != stdin) fclose(f);
}

/* The whole content of F in a NUL-terminated buffer (the NUL is not counted in *len). */
static inline char *read_all(FILE *f, size_t *len) {
    size_t cap = 65536, n = 0;
    char *buf = xrealloc(NULL, cap);
    for (;;) {
        if (cap - n < 2) {
            if (cap > SIZE_MAX / 2) {
                warn("input too large");
                exit(EXIT_TROUBLE);
            }
            cap *= 2;
            buf = xrealloc(buf, cap);
        }
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0) break;
    }
    if (ferror(f)) {
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

/* For tools whose operands are all files to check and that take no options: CHECK runs over each
 * operand ("-", stdin, when there is none) and the worst status wins. */
static inline int check_each_file(int argc, char **argv, int (*check)(const char *)) {
    if (argc > 1 && argv[1][0] == '-' && argv[1][1] != '\0') {
        warn("no options; usage: %s [FILE...]", tool_name);
        return EXIT_TROUBLE;
    }
    int status = argc < 2 ? check("-") : 0;
    for (int i = 1; i < argc; i++) {
        int r = check(argv[i]);
        if (r > status) status = r;
    }
    if (fflush(stdout) != 0) status = EXIT_TROUBLE;
    return status;
}

/* Reads leading single-letter options ("-lw", "-c"; "--" ends them), handing each letter to
 * ACCEPT, which returns 0 to refuse it. Returns the index of the first operand, or -1 after
 * warning about a refused letter (HELP says which letters there are). */
static inline int parse_letters(int argc, char **argv, int (*accept)(char), const char *help) {
    int first = 1;
    for (; first < argc && argv[first][0] == '-' && argv[first][1] != '\0'; first++) {
        if (strcmp(argv[first], "--") == 0) return first + 1;
        for (const char *f = argv[first] + 1; *f; f++) {
            if (!accept(*f)) {
                warn("unknown option -%c (%s)", *f, help);
                return -1;
            }
        }
    }
    return first;
}

static inline int cmp_names(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The entries of directory PATH except "." and "..", sorted bytewise (so output never depends on
 * the host's readdir order). Returns the count, or -1 (errno set) when it cannot be read. */
static inline long list_dir(const char *path, char ***names) {
    DIR *dir = opendir(path);
    if (!dir) return -1;
    size_t n = 0, cap = 16;
    char **list = xrealloc(NULL, cap * sizeof *list);
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
        if (strcmp(entry->d_name, ".") == 0 || strcmp(entry->d_name, "..") == 0) continue;
        if (n == cap) {
            cap *= 2;
            list = xrealloc(list, cap * sizeof *list);
        }
        size_t len = strlen(entry->d_name);
        list[n] = xrealloc(NULL, len + 1);
        memcpy(list[n], entry->d_name, len + 1);
        n++;
    }
    closedir(dir);
    qsort(list, n, sizeof *list, cmp_names);
    *names = list;
    return (long)n;
}

/* list_dir for a folder DEPTH levels below where a walk began: a walk stops (and warns) past 256
 * levels, so a deep tree cannot exhaust the stack. Returns -1 (warned) when it cannot go on. */
static inline long list_dir_within_depth(const char *path, int depth, char ***names) {
    long n = depth > 256 ? -1 : list_dir(path, names);
    if (n < 0) warn("%s: %s", path, depth > 256 ? "more than 256 levels of folders" : strerror(errno));
    return n;
}

static inline void free_list(char **names, long n) {
    for (long i = 0; i < n; i++) free(names[i]);
    free(names);
}

/* DIR + "/" + NAME in a fresh buffer. */
static inline char *join_path(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    int slash = a > 0 && dir[a - 1] != '/';
    char *out = xrealloc(NULL, a + (size_t)slash + b + 1);
    memcpy(out, dir, a);
    if (slash) out[a] = '/';
    memcpy(out + a + (size_t)slash, name, b + 1);
    return out;
}

/* Length of the valid UTF-8 sequence at S (at most N bytes), or 0 when it is not one
 * (overlong forms, surrogates and code points above U+10FFFF are not valid). */
static inline size_t utf8_sequence(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    size_t len;
    uint32_t cp;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) len = 2, cp = c & 0x1F;
    else if (c >= 0xE0 && c <= 0xEF) len = 3, cp = c & 0x0F;
    else if (c >= 0xF0 && c <= 0xF4) len = 4, cp = c & 0x07;
    else return 0;
    if (n < len) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000)) return 0;
    if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    return len;
}

/* S as a JSON string: control characters escaped, invalid UTF-8 bytes replaced by U+FFFD. */
static inline void put_json_string(FILE *out, const char *text) {
    const unsigned char *s = (const unsigned char *)text;
    size_t n = strlen(text);
    fputc('"', out);
    for (size_t i = 0; i < n;) {
        unsigned c = s[i];
        if (c == '"' || c == '\\') {
            fputc('\\', out);
            fputc((int)c, out);
            i++;
        } else if (c < 0x20 || c == 0x7F) {
            fprintf(out, "\\u%04x", c);
            i++;
        } else {
            size_t len = utf8_sequence(s + i, n - i);
            if (len == 0) {
                fputs("\\ufffd", out);
                i++;
            } else {
                fwrite(s + i, 1, len, out);
                i += len;
            }
        }
    }
    fputc('"', out);
}

#endif
