/* yaml-check: is each file (or stdin) YAML within a strict, plain subset (docs/catalog.md)?
 * Accepted: one document (an optional leading "---"); block mappings and sequences indented with
 * spaces; "- key: value" compact mappings; plain, 'single' and "double" quoted scalars on one
 * line; one-line flow collections [a, b] and {a: 1}; block scalars (| and >, with - or +);
 * comments. Refused: tabs (but in quoted or block scalars and comments), anchors, aliases, tags,
 * directives, "?" complex keys, flow entries that PyYAML would refuse (docs/catalog.md),
 * "<<" merge keys, empty keys, indentation indicators, multi-line plain, quoted or flow scalars,
 * a value starting with "- " or ": ", a second document,
 * duplicate keys in one mapping, control characters, invalid UTF-8, a byte order mark.
 * Prints "FILE: ok", or "FILE:LINE:COL: reason" at the first problem.
 * Exit 0 all accepted, 1 one is refused, 2 one is unreadable or a bad option. */
#include "common.h"

#define MAX_LEVELS 256

typedef struct {
    size_t col;
    char kind; /* 'M' mapping, 'S' sequence */
    uint32_t id;
} Level;

typedef struct {
    uint32_t map;
    uint32_t hash;
    const char *text;
    size_t len;
} KeySlot;

typedef struct {
    const char *error;
    unsigned long line;
    size_t col; /* 0-based byte column in the line */
    Level levels[MAX_LEVELS];
    int depth;
    uint32_t next_id;
    int pending;        /* 1 after "key:", 2 after a bare "-": the value may be a nested block */
    size_t pending_col; /* the column of the node that waits for it */
    int in_block;       /* inside a block scalar owned by a node at block_col */
    size_t block_col;
    size_t block_ind; /* its content's indentation, from its first line (0: not seen yet) */
    int seen_content, root_scalar;
    KeySlot *slots;
    size_t nslots, used;
} Checker;

static int fail(Checker *c, size_t col, const char *why) {
    if (!c->error) c->error = why, c->col = col;
    return 0;
}

static uint32_t hash_key(uint32_t map, const char *s, size_t n) {
    uint32_t h = 2166136261u ^ map;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

/* Record KEY in mapping MAP; 0 when that mapping already has it. */
static int add_key(Checker *c, uint32_t map, const char *s, size_t n) {
    if (c->used * 2 >= c->nslots) {
        size_t size = c->nslots ? c->nslots * 2 : 1024;
        KeySlot *slots = xrealloc(NULL, size * sizeof *slots);
        memset(slots, 0, size * sizeof *slots);
        for (size_t i = 0; i < c->nslots; i++) {
            if (!c->slots[i].text) continue;
            size_t at = c->slots[i].hash & (size - 1);
            while (slots[at].text) at = (at + 1) & (size - 1);
            slots[at] = c->slots[i];
        }
        free(c->slots);
        c->slots = slots, c->nslots = size;
    }
    uint32_t h = hash_key(map, s, n);
    size_t at = h & (c->nslots - 1);
    for (; c->slots[at].text; at = (at + 1) & (c->nslots - 1)) {
        KeySlot *k = &c->slots[at];
        if (k->map == map && k->hash == h && k->len == n && memcmp(k->text, s, n) == 0) return 0;
    }
    c->slots[at] = (KeySlot){map, h, s, n};
    c->used++;
    return 1;
}

static int at_end(const char *s, size_t i, size_t n) { return i >= n || s[i] == '#'; }

static size_t skip_spaces(const char *s, size_t i, size_t n) {
    while (i < n && s[i] == ' ') i++;
    return i;
}

/* After a scalar: only spaces and a comment (which needs a space before its '#'). */
static int rest_is_empty(Checker *c, const char *s, size_t i, size_t n) {
    size_t j = skip_spaces(s, i, n);
    if (j >= n) return 1;
    if (s[j] == '#' && j > i) return 1;
    return fail(c, j, "unexpected text after the value");
}

/* A quoted scalar starting at s[i]; returns the index after the closing quote, or 0. */
static size_t quoted(Checker *c, const char *s, size_t i, size_t n) {
    char q = s[i];
    for (size_t j = i + 1; j < n; j++) {
        if (q == '\'' && s[j] == '\'') {
            if (j + 1 < n && s[j + 1] == '\'') {
                j++;
                continue;
            }
            return j + 1;
        }
        if (q == '"' && s[j] == '"') return j + 1;
        if (q == '"' && s[j] == '\\') {
            if (++j >= n) break;
            const char *hex_len = strchr("xuU", s[j]);
            if (s[j] != '\0' && hex_len) {
                size_t need = s[j] == 'x' ? 2 : s[j] == 'u' ? 4 : 8;
                for (size_t k = 1; k <= need; k++) {
                    char h = j + k < n ? s[j + k] : '\0';
                    if (!((h >= '0' && h <= '9') || (h >= 'a' && h <= 'f') || (h >= 'A' && h <= 'F')))
                        return fail(c, j, "bad hex escape"), 0;
                }
                j += need;
            } else if (s[j] == '\0' || !strchr("0abtnvfre \"/\\N_LP\t", s[j])) {
                return fail(c, j, "unknown escape in a double-quoted scalar"), 0;
            }
        }
    }
    return fail(c, i, "quoted scalar not closed on its line (multi-line scalars are refused)"), 0;
}

static int indicator_refused(Checker *c, const char *s, size_t i) {
    switch (s[i]) {
    case '&': return fail(c, i, "anchors are refused");
    case '*': return fail(c, i, "aliases are refused");
    case '!': return fail(c, i, "tags are refused");
    case '%': return fail(c, i, "directives are refused");
    case '@':
    case '`': return fail(c, i, "reserved indicator");
    default: return 1;
    }
}

/* A one-line flow collection starting at s[i]. */
static int flow(Checker *c, const char *s, size_t i, size_t n) {
    char stack[64];
    unsigned char pair[64]; /* whether the current entry at each depth has had its ": " */
    int depth = 0;
    int token_start = 1, entry_empty = 1;
    while (i < n) {
        char ch = s[i];
        if (ch == '[' || ch == '{') {
            if (!token_start) return fail(c, i, "a bracket inside a plain scalar");
            if (depth == (int)sizeof stack) return fail(c, i, "flow collection nested too deep");
            pair[depth] = 0;
            stack[depth++] = ch == '[' ? ']' : '}';
            token_start = entry_empty = 1;
            i++;
        } else if (ch == ']' || ch == '}') {
            if (depth == 0 || stack[depth - 1] != ch) return fail(c, i, "mismatched bracket");
            depth--;
            i++;
            token_start = entry_empty = 0;
            if (depth == 0) return rest_is_empty(c, s, i, n);
            i = skip_spaces(s, i, n);
            if (i < n && !strchr(",]}:", s[i])) return fail(c, i, "expected ',' or a closing bracket");
        } else if (ch == '"' || ch == '\'') {
            if (!token_start) return fail(c, i, "quote inside a plain scalar");
            i = quoted(c, s, i, n);
            if (!i) return 0;
            entry_empty = 0;
            i = skip_spaces(s, i, n);
            if (i < n && !strchr(",]}:", s[i])) return fail(c, i, "expected ',' or a closing bracket");
            token_start = 0;
        } else if (ch == ',') {
            if (entry_empty) return fail(c, i, "empty flow entry");
            if (depth > 0) pair[depth - 1] = 0;
            token_start = entry_empty = 1;
            i++;
        } else if (ch == ' ') {
            i++;
        } else if (ch == '#' && s[i - 1] == ' ') {
            break;
        } else {
            if (token_start && !indicator_refused(c, s, i)) return 0;
            if (ch == '?') return fail(c, i, "\"?\" in a flow collection");
            if (ch == '\t') return fail(c, i, "tab outside a quoted scalar");
            if (token_start && ch == '#') return fail(c, i, "'#' starts a comment only after a space");
            if (token_start && (ch == '|' || ch == '>' || (ch == '-' && i + 1 < n && s[i + 1] == ' ')))
                return fail(c, i, "a block indicator inside a flow collection");
            int separator = ch == ':' && (i + 1 >= n || strchr(" ,]}", s[i + 1]));
            if (separator && entry_empty) return fail(c, i, "empty key");
            if (token_start && ch == ':' && !separator) return fail(c, i, "':' cannot start a flow scalar");
            entry_empty = 0;
            if (separator) {
                if (depth == 0 || pair[depth - 1]) return fail(c, i, "a second \": \" in one flow entry");
                pair[depth - 1] = 1;
                token_start = 1;
            } else {
                token_start = 0;
            }
            i++;
        }
    }
    return fail(c, i, "flow collection not closed on its line (multi-line flow is refused)");
}

/* A value at s[i] (not empty), belonging to a node at column OWNER. */
static int scalar(Checker *c, const char *s, size_t i, size_t n, size_t owner) {
    char ch = s[i];
    if (ch == '|' || ch == '>') {
        size_t j = i + 1;
        while (j < n && (s[j] == '-' || s[j] == '+')) j++;
        if (j < n && s[j] >= '0' && s[j] <= '9') return fail(c, j, "indentation indicators are refused");
        if (!rest_is_empty(c, s, j, n)) return 0;
        c->in_block = 1, c->block_col = owner, c->block_ind = 0;
        return 1;
    }
    if (ch == '"' || ch == '\'') {
        size_t j = quoted(c, s, i, n);
        return j && rest_is_empty(c, s, j, n);
    }
    if (ch == '[' || ch == '{') return flow(c, s, i, n);
    if (ch == '?' && (i + 1 >= n || s[i + 1] == ' ')) return fail(c, i, "\"?\" keys are refused");
    if ((ch == '-' || ch == ':') && (i + 1 >= n || s[i + 1] == ' '))
        return fail(c, i, "a block indicator inside a value");
    if (ch == ']' || ch == '}' || ch == ',') return fail(c, i, "unexpected flow indicator");
    if (!indicator_refused(c, s, i)) return 0;
    for (size_t j = i; j < n; j++) {
        if (s[j] == '#' && s[j - 1] == ' ') break;
        if (s[j] == '\t') return fail(c, j, "tab outside a quoted scalar");
        if (s[j] == ':' && (j + 1 >= n || s[j + 1] == ' ')) return fail(c, j, "a mapping inside a plain scalar");
    }
    return 1;
}

/* The end of a key starting at s[i] (the index of its ':'), or 0 when the line holds no key. */
static size_t key_end(Checker *c, const char *s, size_t i, size_t n) {
    if (s[i] == '"' || s[i] == '\'') {
        size_t j = quoted(c, s, i, n);
        if (!j) return 0;
        j = skip_spaces(s, j, n);
        return j < n && s[j] == ':' && (j + 1 >= n || s[j + 1] == ' ') ? j : 0;
    }
    for (size_t j = i; j < n; j++) {
        if (s[j] == '#' && j > i && s[j - 1] == ' ') return 0;
        if (s[j] == '\t') return fail(c, j, "tab outside a quoted scalar"), 0;
        if (s[j] == ':' && (j + 1 >= n || s[j + 1] == ' ')) return j;
    }
    return 0;
}

static int push(Checker *c, size_t col, char kind) {
    if (c->depth == MAX_LEVELS) return fail(c, col, "nested deeper than 256 levels");
    c->levels[c->depth++] = (Level){col, kind, c->next_id++};
    return 1;
}

static char kind_of(const char *s, size_t i, size_t n) {
    return s[i] == '-' && (i + 1 >= n || s[i + 1] == ' ') ? 'S' : 'M';
}

/* The node content at s[i], whose level (of the right kind) is on top of the stack. */
static int node(Checker *c, const char *s, size_t i, size_t n) {
    Level *top = &c->levels[c->depth - 1];
    if (top->kind == 'S') {
        size_t j = skip_spaces(s, i + 1, n);
        if (at_end(s, j, n)) {
            c->pending = 2, c->pending_col = top->col;
            return 1;
        }
        char kind = kind_of(s, j, n);
        if (kind == 'S' || (s[j] != '[' && s[j] != '{' && key_end(c, s, j, n))) {
            if (c->error || !push(c, j, kind)) return 0;
            return node(c, s, j, n);
        }
        return !c->error && scalar(c, s, j, n, top->col);
    }
    if (s[i] == '?' && (i + 1 >= n || s[i + 1] == ' ')) return fail(c, i, "\"?\" keys are refused");
    if (strchr("[]{}#&*!|>%@`,", s[i])) {
        if (!indicator_refused(c, s, i)) return 0;
        return fail(c, i, "expected \"key: value\"");
    }
    if (s[i] == ':' && (i + 1 >= n || s[i + 1] == ' ')) return fail(c, i, "empty key");
    size_t colon = key_end(c, s, i, n);
    if (!colon) return fail(c, i, "expected \"key: value\"");
    const char *key = s + i;
    size_t len = colon - i;
    while (len > 0 && key[len - 1] == ' ') len--;
    if (key[0] == '"' || key[0] == '\'') key++, len -= 2;
    else if (len == 2 && memcmp(key, "<<", 2) == 0) return fail(c, i, "merge keys are refused");
    else if (!indicator_refused(c, s, i)) return 0;
    if (!add_key(c, top->id, key, len)) return fail(c, i, "duplicate key in this mapping");
    size_t j = skip_spaces(s, colon + 1, n);
    if (at_end(s, j, n)) {
        c->pending = 1, c->pending_col = top->col;
        return 1;
    }
    return scalar(c, s, j, n, top->col);
}

static int line(Checker *c, const char *s, size_t n) {
    size_t ind = 0, text = 0;
    while (ind < n && s[ind] == ' ') ind++;
    for (text = ind; text < n && (s[text] == ' ' || s[text] == '\t');) text++;
    if (c->in_block) { /* content: blank, or indented like its first line (beyond its owner) */
        if (text >= n) return 1;
        if (c->block_ind == 0 && ind > c->block_col) c->block_ind = ind;
        if (c->block_ind != 0 && ind >= c->block_ind) return 1;
        c->in_block = 0;
    }
    if (text != ind && memchr(s + ind, '\t', text - ind)) return fail(c, ind, "tab in indentation");
    if (at_end(s, text, n)) return 1;
    if (ind == 0 && n >= 3 && (memcmp(s, "---", 3) == 0 || memcmp(s, "...", 3) == 0) &&
        (n == 3 || s[3] == ' ')) {
        if (s[0] == '.' || c->seen_content) return fail(c, 0, "one document only");
        c->seen_content = 1;
        return rest_is_empty(c, s, 3, n);
    }
    if (c->root_scalar) return fail(c, ind, "text after the document's only scalar");
    c->seen_content = 1;
    char kind = kind_of(s, ind, n);
    if (c->pending) {
        int nested = ind > c->pending_col || (c->pending == 1 && ind == c->pending_col && kind == 'S');
        c->pending = 0;
        if (nested) return push(c, ind, kind) && node(c, s, ind, n);
    }
    while (c->depth > 0) {
        Level *top = &c->levels[c->depth - 1];
        int same_col_value = c->depth > 1 && top->col == ind && top->kind != kind && c->levels[c->depth - 2].col == ind;
        if (top->col <= ind && !same_col_value) break;
        c->depth--;
    }
    if (c->depth == 0) {
        if (kind == 'M' && s[ind] != '[' && s[ind] != '{' && !key_end(c, s, ind, n)) {
            if (c->error) return 0;
            c->root_scalar = 1;
            return scalar(c, s, ind, n, 0);
        }
        if (c->next_id > 0) return fail(c, ind, "a second root node");
        if (s[ind] == '[' || s[ind] == '{') {
            c->root_scalar = 1;
            return flow(c, s, ind, n);
        }
        if (!push(c, ind, kind)) return 0;
    }
    Level *top = &c->levels[c->depth - 1];
    if (top->col != ind) return fail(c, ind, "bad indentation");
    if (top->kind != kind) return fail(c, ind, kind == 'S' ? "expected \"key: value\"" : "expected \"- item\"");
    return node(c, s, ind, n);
}

/* Every byte valid UTF-8, no control characters but tab and newline (CR only before LF). */
static size_t bad_byte(const char *text, size_t n, const char **why) {
    const unsigned char *s = (const unsigned char *)text;
    if (n >= 3 && memcmp(s, "\xEF\xBB\xBF", 3) == 0) return *why = "byte order mark", 0;
    for (size_t i = 0; i < n;) {
        if (s[i] == '\r' && i + 1 < n && s[i + 1] == '\n') {
            i++;
            continue;
        }
        if ((s[i] < 0x20 && s[i] != '\t' && s[i] != '\n') || s[i] == 0x7F) return *why = "control character", i;
        size_t len = utf8_sequence(s + i, n - i);
        if (len == 0) return *why = "invalid UTF-8", i;
        i += len;
    }
    return *why = NULL, n;
}

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
    const char *shown = strcmp(name, "-") == 0 ? "(stdin)" : name;
    Checker *c = xrealloc(NULL, sizeof *c);
    memset(c, 0, sizeof *c);
    const char *why;
    size_t bad = bad_byte(text, n, &why);
    size_t start = 0;
    c->line = 1;
    if (why) {
        for (size_t i = 0; i < bad; i++)
            if (text[i] == '\n') c->line++, start = i + 1;
        c->error = why, c->col = bad - start;
    }
    while (!c->error && start < n) {
        size_t end = start;
        while (end < n && text[end] != '\n') end++;
        size_t len = end - start;
        if (len > 0 && text[start + len - 1] == '\r') len--;
        if (!line(c, text + start, len)) break;
        start = end + 1;
        c->line++;
    }
    int status = 0;
    if (c->error) {
        size_t col = 1;
        for (size_t i = 0; i < c->col; i++)
            if (((unsigned char)text[start + i] & 0xC0) != 0x80) col++;
        printf("%s:%lu:%zu: %s\n", shown, c->line, col, c->error);
        status = EXIT_NO;
    } else {
        printf("%s: ok\n", shown);
    }
    free(c->slots);
    free(c);
    free(text);
    return status;
}

int main(int argc, char **argv) {
    tool_name = "yaml-check";
    return check_each_file(argc, argv, check);
}
