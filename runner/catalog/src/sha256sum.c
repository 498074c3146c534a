/* sha256sum: "DIGEST  NAME" per file (or stdin), as GNU sha256sum prints it (names holding a
 * newline or backslash are escaped and the line starts with "\"). With -c, read such lines
 * from the files given (or stdin) and print "NAME: OK" or "NAME: FAILED" for each; exit 1 when
 * one fails, cannot be read, or a line is not a checksum line (strict, like --strict).
 * SHA-256 per FIPS 180-4; tested against Python's hashlib and the host's sha256sum. */
#include "common.h"

typedef struct {
    uint32_t state[8];
    uint64_t length; /* bytes hashed so far */
    unsigned char block[64];
    size_t used;
} Sha256;

static const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static uint32_t rotr(uint32_t x, unsigned n) { return (x >> n) | (x << (32 - n)); }

static void sha256_init(Sha256 *h) {
    static const uint32_t H0[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(h->state, H0, sizeof H0);
    h->length = 0;
    h->used = 0;
}

static void sha256_block(Sha256 *h, const unsigned char *p) {
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 |
               (uint32_t)p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h->state[0], b = h->state[1], c = h->state[2], d = h->state[3];
    uint32_t e = h->state[4], f = h->state[5], g = h->state[6], k = h->state[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = k + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
        uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        k = g, g = f, f = e, e = d + t1, d = c, c = b, b = a, a = t1 + t2;
    }
    h->state[0] += a, h->state[1] += b, h->state[2] += c, h->state[3] += d;
    h->state[4] += e, h->state[5] += f, h->state[6] += g, h->state[7] += k;
}

static void sha256_update(Sha256 *h, const unsigned char *p, size_t n) {
    h->length += n;
    while (n > 0) {
        size_t take = 64 - h->used < n ? 64 - h->used : n;
        memcpy(h->block + h->used, p, take);
        h->used += take, p += take, n -= take;
        if (h->used == 64) {
            sha256_block(h, h->block);
            h->used = 0;
        }
    }
}

static void sha256_hex(Sha256 *h, char out[65]) {
    uint64_t bits = h->length * 8;
    unsigned char pad[72] = {0x80};
    size_t padlen = (h->used < 56 ? 56 : 120) - h->used;
    for (int i = 0; i < 8; i++) pad[padlen + (size_t)i] = (unsigned char)(bits >> (56 - 8 * i));
    sha256_update(h, pad, padlen + 8);
    for (int i = 0; i < 8; i++) snprintf(out + 8 * i, 9, "%08x", (unsigned)h->state[i]);
}

/* The digest of the file NAME ("-": stdin); 0 on success. */
static int digest_file(const char *name, char out[65]) {
    FILE *in = open_input(name);
    if (!in) return -1;
    Sha256 h;
    sha256_init(&h);
    unsigned char buf[65536];
    size_t got;
    while ((got = fread(buf, 1, sizeof buf, in)) > 0) sha256_update(&h, buf, got);
    int bad = ferror(in);
    close_input(in);
    if (bad) {
        warn("%s: read error", name);
        return -1;
    }
    sha256_hex(&h, out);
    return 0;
}

static void print_name(const char *name) {
    for (const char *p = name; *p; p++) {
        if (*p == '\\') fputs("\\\\", stdout);
        else if (*p == '\n') fputs("\\n", stdout);
        else putchar(*p);
    }
}

static int hash_files(int argc, char **argv, int first) {
    int status = 0;
    char *stdin_only[] = {"-"};
    char **names = first < argc ? argv + first : stdin_only;
    int n = first < argc ? argc - first : 1;
    for (int i = 0; i < n; i++) {
        char hex[65];
        if (digest_file(names[i], hex) != 0) {
            status = 1;
            continue;
        }
        int escaped = strchr(names[i], '\\') || strchr(names[i], '\n');
        printf("%s%s  ", escaped ? "\\" : "", hex);
        print_name(names[i]);
        putchar('\n');
    }
    return status;
}

/* Undo print_name's escapes in place; 0 when an escape is not one it makes. */
static int unescape(char *s) {
    char *w = s;
    for (char *r = s; *r; r++) {
        if (*r != '\\') {
            *w++ = *r;
            continue;
        }
        r++;
        if (*r == '\\') *w++ = '\\';
        else if (*r == 'n') *w++ = '\n';
        else return 0;
    }
    *w = '\0';
    return 1;
}

/* One "DIGEST  NAME" (or "DIGEST *NAME") line of a check list; -1 malformed, 0 ok, 1 failed,
 * 2 unreadable. */
static int check_line(char *line) {
    int escaped = line[0] == '\\';
    char *p = line + escaped;
    for (int i = 0; i < 64; i++)
        if (!((p[i] >= '0' && p[i] <= '9') || (p[i] >= 'a' && p[i] <= 'f') || (p[i] >= 'A' && p[i] <= 'F')))
            return -1;
    if (p[64] != ' ' || (p[65] != ' ' && p[65] != '*') || p[66] == '\0') return -1;
    char *name = p + 66;
    if (escaped && !unescape(name)) return -1;
    char hex[65];
    int ok = digest_file(name, hex) == 0;
    int match = 0;
    if (ok) {
        match = 1;
        for (int i = 0; i < 64; i++) {
            char c = p[i] >= 'A' && p[i] <= 'F' ? (char)(p[i] - 'A' + 'a') : p[i];
            if (c != hex[i]) match = 0;
        }
    }
    print_name(name);
    puts(!ok ? ": FAILED open or read" : match ? ": OK" : ": FAILED");
    return !ok ? 2 : match ? 0 : 1;
}

static int check_list(const char *listname) {
    FILE *in = open_input(listname);
    if (!in) return 1;
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    unsigned long lineno = 0, failed = 0, unreadable = 0, malformed = 0, good = 0;
    while ((len = getline(&line, &cap, in)) >= 0) {
        lineno++;
        if (len > 0 && line[len - 1] == '\n') line[--len] = '\0';
        if ((size_t)len != strlen(line)) {
            malformed++;
            warn("%s: %lu: a NUL byte in a checksum line", listname, lineno);
            continue;
        }
        int r = check_line(line);
        if (r < 0) {
            malformed++;
            warn("%s: %lu: improperly formatted SHA256 checksum line", listname, lineno);
        } else if (r == 2) {
            unreadable++;
        } else if (r > 0) {
            failed++;
        } else {
            good++;
        }
    }
    free(line);
    int bad = ferror(in);
    close_input(in);
    if (bad) warn("%s: read error", listname);
    if (malformed)
        warn("WARNING: %lu line%s improperly formatted", malformed, malformed == 1 ? " is" : "s are");
    if (unreadable)
        warn("WARNING: %lu listed file%s could not be read", unreadable, unreadable == 1 ? "" : "s");
    if (failed) warn("WARNING: %lu computed checksum%s did NOT match", failed, failed == 1 ? "" : "s");
    if (good + failed + unreadable == 0 && !bad) warn("%s: no properly formatted checksum lines found", listname);
    return bad || failed || unreadable || malformed || good + failed + unreadable == 0 ? 1 : 0;
}

int main(int argc, char **argv) {
    tool_name = "sha256sum";
    int first = 1, check = 0;
    for (; first < argc && argv[first][0] == '-' && argv[first][1] != '\0'; first++) {
        if (strcmp(argv[first], "--") == 0) {
            first++;
            break;
        }
        if (strcmp(argv[first], "-c") == 0 || strcmp(argv[first], "--check") == 0) check = 1;
        else {
            warn("unknown option %s (only -c)", argv[first]);
            return EXIT_TROUBLE;
        }
    }
    int status;
    if (!check) {
        status = hash_files(argc, argv, first);
    } else if (first == argc) {
        status = check_list("-");
    } else {
        status = 0;
        for (int i = first; i < argc; i++)
            if (check_list(argv[i]) != 0) status = 1;
    }
    if (fflush(stdout) != 0) status = 1;
    return status;
}
