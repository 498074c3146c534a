/* json-check: is each file (or stdin) one valid JSON text (RFC 8259), strictly? Refused: invalid
 * UTF-8 (overlong forms, surrogates), a byte order mark, lone surrogate escapes, duplicate keys in
 * an object (compared after unescaping), nesting deeper than 512, anything but whitespace after
 * the value. Prints "FILE: ok", or "FILE:LINE:COL: reason" at the first problem.
 * Exit 0 all valid, 1 one is invalid, 2 one is unreadable or a bad option. */
#include "common.h"

#define MAX_DEPTH 512

typedef struct {
    const unsigned char *s;
    size_t n, at;
    const char *error;
    size_t error_at;
} Parser;

typedef struct {
    char *text;
    size_t len;
} Key;

static int fail(Parser *p, const char *why) {
    if (!p->error) p->error = why, p->error_at = p->at;
    return 0;
}

static void skip_space(Parser *p) {
    while (p->at < p->n && (p->s[p->at] == ' ' || p->s[p->at] == '\t' || p->s[p->at] == '\n' || p->s[p->at] == '\r'))
        p->at++;
}

static int hex4(Parser *p, unsigned *out) {
    unsigned v = 0;
    for (int i = 0; i < 4; i++, p->at++) {
        if (p->at >= p->n) return fail(p, "unterminated \\u escape");
        unsigned c = p->s[p->at];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= c - '0';
        else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
        else return fail(p, "bad \\u escape");
    }
    *out = v;
    return 1;
}

/* A string at p->at (on its quote); when KEY is set, its decoded bytes go there. */
static int string(Parser *p, Key *key) {
    p->at++;
    size_t cap = 0;
    if (key) key->text = NULL, key->len = 0;
    for (;;) {
        if (p->at >= p->n) return fail(p, "unterminated string");
        unsigned c = p->s[p->at];
        unsigned char piece[4];
        size_t plen = 0;
        if (c == '"') {
            p->at++;
            return 1;
        } else if (c < 0x20) {
            return fail(p, "control character in a string (escape it)");
        } else if (c == '\\') {
            if (++p->at >= p->n) return fail(p, "unterminated string");
            c = p->s[p->at++];
            static const char escapes[] = "\"\\/bfnrt", decoded[] = "\"\\/\b\f\n\r\t";
            const char *simple = c != 0 ? strchr(escapes, (int)c) : NULL;
            if (simple) {
                piece[plen++] = (unsigned char)decoded[simple - escapes];
            } else if (c == 'u') {
                unsigned cp, low;
                if (!hex4(p, &cp)) return 0;
                if (cp >= 0xDC00 && cp <= 0xDFFF) return fail(p, "lone low surrogate escape");
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    if (p->at + 1 >= p->n || p->s[p->at] != '\\' || p->s[p->at + 1] != 'u')
                        return fail(p, "high surrogate escape without its low half");
                    p->at += 2;
                    if (!hex4(p, &low)) return 0;
                    if (low < 0xDC00 || low > 0xDFFF) return fail(p, "high surrogate escape without its low half");
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
                }
                if (cp < 0x80) piece[plen++] = (unsigned char)cp;
                else if (cp < 0x800) {
                    piece[plen++] = (unsigned char)(0xC0 | cp >> 6);
                    piece[plen++] = (unsigned char)(0x80 | (cp & 0x3F));
                } else if (cp < 0x10000) {
                    piece[plen++] = (unsigned char)(0xE0 | cp >> 12);
                    piece[plen++] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
                    piece[plen++] = (unsigned char)(0x80 | (cp & 0x3F));
                } else {
                    piece[plen++] = (unsigned char)(0xF0 | cp >> 18);
                    piece[plen++] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
                    piece[plen++] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
                    piece[plen++] = (unsigned char)(0x80 | (cp & 0x3F));
                }
            } else {
                p->at--;
                return fail(p, "unknown escape");
            }
        } else {
            size_t len = utf8_sequence(p->s + p->at, p->n - p->at);
            if (len == 0) return fail(p, "invalid UTF-8");
            memcpy(piece, p->s + p->at, len);
            plen = len;
            p->at += len;
        }
        if (key) {
            if (key->len + plen > cap) {
                cap = cap ? cap * 2 : 32;
                key->text = xrealloc(key->text, cap);
            }
            memcpy(key->text + key->len, piece, plen);
            key->len += plen;
        }
    }
}

static int digits(Parser *p) {
    size_t start = p->at;
    while (p->at < p->n && p->s[p->at] >= '0' && p->s[p->at] <= '9') p->at++;
    return p->at > start;
}

static int number(Parser *p) {
    if (p->s[p->at] == '-') p->at++;
    if (p->at < p->n && p->s[p->at] == '0') p->at++;
    else if (!digits(p)) return fail(p, "bad number");
    if (p->at < p->n && p->s[p->at] == '.') {
        p->at++;
        if (!digits(p)) return fail(p, "bad number: digits must follow '.'");
    }
    if (p->at < p->n && (p->s[p->at] == 'e' || p->s[p->at] == 'E')) {
        p->at++;
        if (p->at < p->n && (p->s[p->at] == '+' || p->s[p->at] == '-')) p->at++;
        if (!digits(p)) return fail(p, "bad number: digits must follow the exponent");
    }
    return 1;
}

static int literal(Parser *p, const char *word) {
    size_t len = strlen(word);
    if (p->n - p->at < len || memcmp(p->s + p->at, word, len) != 0) return fail(p, "unexpected character");
    p->at += len;
    return 1;
}

static int compare_keys(const void *a, const void *b) {
    const Key *x = a, *y = b;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = n ? memcmp(x->text, y->text, n) : 0;
    return c ? c : (x->len > y->len) - (x->len < y->len);
}

static int value(Parser *p, int depth);

static int object(Parser *p, int depth) {
    size_t start = p->at++, nkeys = 0, cap = 0;
    Key *keys = NULL;
    int ok = 1;
    skip_space(p);
    if (p->at < p->n && p->s[p->at] == '}') {
        p->at++;
        return 1;
    }
    for (;;) {
        skip_space(p);
        if (p->at >= p->n || p->s[p->at] != '"') {
            ok = fail(p, "expected a string key");
            break;
        }
        if (nkeys == cap) {
            cap = cap ? cap * 2 : 8;
            keys = xrealloc(keys, cap * sizeof *keys);
        }
        if (!string(p, &keys[nkeys])) {
            free(keys[nkeys].text);
            ok = 0;
            break;
        }
        nkeys++;
        skip_space(p);
        if (p->at >= p->n || p->s[p->at] != ':') {
            ok = fail(p, "expected ':' after the key");
            break;
        }
        p->at++;
        if (!value(p, depth + 1)) {
            ok = 0;
            break;
        }
        skip_space(p);
        if (p->at < p->n && p->s[p->at] == ',') {
            p->at++;
            continue;
        }
        if (p->at < p->n && p->s[p->at] == '}') {
            p->at++;
            break;
        }
        ok = fail(p, "expected ',' or '}'");
        break;
    }
    if (ok && nkeys > 1) {
        qsort(keys, nkeys, sizeof *keys, compare_keys);
        for (size_t i = 1; i < nkeys; i++) {
            if (compare_keys(&keys[i - 1], &keys[i]) == 0) {
                p->at = start;
                ok = fail(p, "duplicate key in this object");
                break;
            }
        }
    }
    for (size_t i = 0; i < nkeys; i++) free(keys[i].text);
    free(keys);
    return ok;
}

static int array(Parser *p, int depth) {
    p->at++;
    skip_space(p);
    if (p->at < p->n && p->s[p->at] == ']') {
        p->at++;
        return 1;
    }
    for (;;) {
        if (!value(p, depth + 1)) return 0;
        skip_space(p);
        if (p->at < p->n && p->s[p->at] == ',') {
            p->at++;
            continue;
        }
        if (p->at < p->n && p->s[p->at] == ']') {
            p->at++;
            return 1;
        }
        return fail(p, "expected ',' or ']'");
    }
}

static int value(Parser *p, int depth) {
    if (depth > MAX_DEPTH) return fail(p, "nested deeper than 512");
    skip_space(p);
    if (p->at >= p->n) return fail(p, "expected a value");
    switch (p->s[p->at]) {
    case '{': return object(p, depth);
    case '[': return array(p, depth);
    case '"': return string(p, NULL);
    case 't': return literal(p, "true");
    case 'f': return literal(p, "false");
    case 'n': return literal(p, "null");
    default:
        if (p->s[p->at] == '-' || (p->s[p->at] >= '0' && p->s[p->at] <= '9')) return number(p);
        return fail(p, "unexpected character");
    }
}

/* 0 valid, 1 invalid, 2 unreadable. */
static int check(const char *name) {
    FILE *in = open_input(name);
    if (!in) return EXIT_TROUBLE;
    size_t n;
    char *text = read_all(in, &n);
    close_input(in);
    if (!text) {
        warn("%s: read error", name);
        return EXIT_TROUBLE;
    }
    Parser p = {(const unsigned char *)text, n, 0, NULL, 0};
    if (n >= 3 && memcmp(text, "\xEF\xBB\xBF", 3) == 0) fail(&p, "byte order mark");
    else if (value(&p, 0)) {
        skip_space(&p);
        if (p.at < p.n) fail(&p, "text after the JSON value");
    }
    const char *shown = strcmp(name, "-") == 0 ? "(stdin)" : name;
    if (!p.error) {
        printf("%s: ok\n", shown);
        free(text);
        return 0;
    }
    unsigned long line = 1, col = 1;
    for (size_t i = 0; i < p.error_at && i < n; i++) {
        if (text[i] == '\n') line++, col = 1;
        else if (((unsigned char)text[i] & 0xC0) != 0x80) col++;
    }
    printf("%s:%lu:%lu: %s\n", shown, line, col, p.error);
    free(text);
    return EXIT_NO;
}

int main(int argc, char **argv) {
    tool_name = "json-check";
    return check_each_file(argc, argv, check);
}
