/* grep: print the lines that match, for pattern gates in CI. Exit 0 when a line was selected, 1
 * when none was, 2 on trouble (a bad pattern or option, an unreadable file), as grep does; with -q
 * a match wins over trouble.
 *   grep [-E|-F] [-i] [-v] [-c] [-l] [-n] [-q] [-r] [-e PATTERN]... [PATTERN] [FILE...]
 * Patterns are POSIX basic regular expressions (-E extended, -F fixed strings); several -e
 * patterns match when any does. -r reads folders recursively, in sorted order. No FILE: stdin.
 * A line is matched up to its first NUL byte. */
#include <ctype.h>
#include <regex.h>
#include <sys/stat.h>

#include "common.h"

static int fixed, extended, ignore_case, invert, count_only, list_files, line_numbers, quiet, recursive;
static int show_names;
static char **patterns;
static size_t npatterns;
static regex_t *compiled;
static int status = EXIT_NO;

static int fixed_match(const char *line, const char *pattern) {
    size_t m = strlen(pattern);
    if (m == 0) return 1;
    for (const char *p = line; *p; p++) {
        size_t i = 0;
        while (i < m && p[i] &&
               (ignore_case ? tolower((unsigned char)p[i]) == tolower((unsigned char)pattern[i]) : p[i] == pattern[i]))
            i++;
        if (i == m) return 1;
    }
    return 0;
}

static int matches(const char *line) {
    for (size_t i = 0; i < npatterns; i++) {
        if (fixed ? fixed_match(line, patterns[i]) : regexec(&compiled[i], line, 0, NULL, 0) == 0) return 1;
    }
    return 0;
}

static void grep_stream(FILE *in, const char *name) {
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    unsigned long long lineno = 0, selected = 0;
    while ((len = getline(&line, &cap, in)) >= 0) {
        lineno++;
        if (len > 0 && line[len - 1] == '\n') line[--len] = '\0';
        if (matches(line) == invert) continue;
        selected++;
        status = status == EXIT_TROUBLE ? EXIT_TROUBLE : 0;
        if (quiet) exit(0); /* the answer is known */
        if (list_files) break;
        if (count_only) continue;
        if (show_names) printf("%s:", name);
        if (line_numbers) printf("%llu:", lineno);
        fwrite(line, 1, (size_t)len, stdout);
        putchar('\n');
    }
    free(line);
    if (ferror(in)) {
        warn("%s: read error", name);
        status = EXIT_TROUBLE;
    }
    if (count_only && !list_files) {
        if (show_names) printf("%s:", name);
        printf("%llu\n", selected);
    }
    if (list_files && selected) printf("%s\n", name);
}

static void grep_path(const char *path, int depth) {
    struct stat st;
    if (recursive && stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        char **names;
        long n = list_dir_within_depth(path, depth, &names);
        if (n < 0) {
            status = EXIT_TROUBLE;
            return;
        }
        for (long i = 0; i < n; i++) {
            char *child = join_path(path, names[i]);
            grep_path(child, depth + 1);
            free(child);
        }
        free_list(names, n);
        return;
    }
    FILE *in = open_input(path);
    if (!in) {
        status = EXIT_TROUBLE;
        return;
    }
    grep_stream(in, strcmp(path, "-") == 0 ? "(standard input)" : path);
    close_input(in);
}

static void add_pattern(char *pattern) {
    patterns = xrealloc(patterns, (npatterns + 1) * sizeof *patterns);
    patterns[npatterns++] = pattern;
}

int main(int argc, char **argv) {
    tool_name = "grep";
    int i = 1;
    for (; i < argc && argv[i][0] == '-' && argv[i][1] != '\0'; i++) {
        if (strcmp(argv[i], "--") == 0) {
            i++;
            break;
        }
        for (const char *f = argv[i] + 1; *f; f++) {
            switch (*f) {
            case 'E': extended = 1, fixed = 0; break;
            case 'F': fixed = 1, extended = 0; break;
            case 'i': ignore_case = 1; break;
            case 'v': invert = 1; break;
            case 'c': count_only = 1; break;
            case 'l': list_files = 1; break;
            case 'n': line_numbers = 1; break;
            case 'q': quiet = 1; break;
            case 'r': recursive = 1; break;
            case 'e':
                if (f[1] != '\0') add_pattern((char *)f + 1);
                else if (i + 1 < argc) add_pattern(argv[++i]);
                else {
                    warn("option -e needs a pattern");
                    return EXIT_TROUBLE;
                }
                f += strlen(f) - 1; /* the rest of this argument was the pattern */
                break;
            default: warn("unknown option -%c", *f); return EXIT_TROUBLE;
            }
        }
    }
    if (npatterns == 0) {
        if (i == argc) {
            warn("usage: grep [-E|-F] [-i] [-v] [-c] [-l] [-n] [-q] [-r] [-e PATTERN]... [PATTERN] [FILE...]");
            return EXIT_TROUBLE;
        }
        add_pattern(argv[i++]);
    }
    if (!fixed) {
        compiled = xrealloc(NULL, npatterns * sizeof *compiled);
        for (size_t k = 0; k < npatterns; k++) {
            int flags = REG_NOSUB | (extended ? REG_EXTENDED : 0) | (ignore_case ? REG_ICASE : 0);
            int error = regcomp(&compiled[k], patterns[k], flags);
            if (error != 0) {
                char message[256];
                regerror(error, &compiled[k], message, sizeof message);
                warn("bad pattern %s: %s", patterns[k], message);
                return EXIT_TROUBLE;
            }
        }
    }
    int nfiles = argc - i;
    show_names = nfiles > 1 || recursive;
    if (nfiles == 0) grep_path("-", 0);
    for (; i < argc; i++) grep_path(argv[i], 0);
    if (fflush(stdout) != 0) status = EXIT_TROUBLE;
    return status;
}
