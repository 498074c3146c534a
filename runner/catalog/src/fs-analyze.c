/* fs-analyze: a summary of each folder given, one JSON object per line:
 *   {"path": P, "files": N, "directories": N, "symlinks": N, "other": N, "bytes": N,
 *    "max_depth": N, "largest": [{"path": REL, "bytes": N}, ...]}
 * bytes sums regular files; depth 1 is the folder's own entries; symbolic links are counted,
 * never followed; largest lists the --top N (default 10, at most 1000) biggest regular files,
 * biggest first, ties by path. Entries are read in sorted order, so the output depends only on
 * the tree. Exit 0, or 2 when something could not be read (the summary is still printed). */
#include <sys/stat.h>

#include "common.h"

typedef struct {
    char *path;
    unsigned long long bytes;
} Entry;

typedef struct {
    unsigned long long files, directories, symlinks, other, bytes;
    int max_depth;
    Entry *largest;
    size_t nlargest;
} Summary;

static size_t top = 10;
static int status;

static int before(const Entry *a, const Entry *b) {
    if (a->bytes != b->bytes) return a->bytes > b->bytes;
    return strcmp(a->path, b->path) < 0;
}

/* Keep REL if it is among the `top` largest so far (insertion into a sorted, bounded list). */
static void offer(Summary *s, const char *rel, unsigned long long bytes) {
    Entry e = {(char *)rel, bytes};
    if (top == 0) return;
    if (s->nlargest == top) {
        if (!before(&e, &s->largest[top - 1])) return;
        free(s->largest[top - 1].path); /* the smallest one leaves */
        s->nlargest--;
    }
    size_t at = s->nlargest++;
    while (at > 0 && before(&e, &s->largest[at - 1])) {
        s->largest[at] = s->largest[at - 1];
        at--;
    }
    size_t len = strlen(rel);
    s->largest[at].path = xrealloc(NULL, len + 1);
    memcpy(s->largest[at].path, rel, len + 1);
    s->largest[at].bytes = bytes;
}

static void walk(Summary *s, const char *path, const char *rel, int depth) {
    char **names;
    long n = list_dir_within_depth(path, depth, &names);
    if (n < 0) {
        status = EXIT_TROUBLE;
        return;
    }
    for (long i = 0; i < n; i++) {
        char *child = join_path(path, names[i]);
        char *child_rel = join_path(rel, names[i]); /* rel is "" at the top */
        struct stat st;
        if (lstat(child, &st) != 0) {
            warn("%s: %s", child, strerror(errno));
            status = EXIT_TROUBLE;
        } else {
            if (depth > s->max_depth) s->max_depth = depth;
            if (S_ISLNK(st.st_mode)) {
                s->symlinks++;
            } else if (S_ISDIR(st.st_mode)) {
                s->directories++;
                walk(s, child, child_rel, depth + 1);
            } else if (S_ISREG(st.st_mode)) {
                s->files++;
                s->bytes += (unsigned long long)st.st_size;
                offer(s, child_rel, (unsigned long long)st.st_size);
            } else {
                s->other++;
            }
        }
        free(child);
        free(child_rel);
    }
    free_list(names, n);
}

static void report(const char *path) {
    Summary s = {0, 0, 0, 0, 0, 0, NULL, 0};
    s.largest = xrealloc(NULL, (top ? top : 1) * sizeof *s.largest);
    walk(&s, path, "", 1);
    fputs("{\"path\": ", stdout);
    put_json_string(stdout, path);
    printf(", \"files\": %llu, \"directories\": %llu, \"symlinks\": %llu, \"other\": %llu, \"bytes\": %llu, "
           "\"max_depth\": %d, \"largest\": [",
           s.files, s.directories, s.symlinks, s.other, s.bytes, s.max_depth);
    for (size_t i = 0; i < s.nlargest; i++) {
        fputs(i ? ", {\"path\": " : "{\"path\": ", stdout);
        put_json_string(stdout, s.largest[i].path);
        printf(", \"bytes\": %llu}", s.largest[i].bytes);
        free(s.largest[i].path);
    }
    fputs("]}\n", stdout);
    free(s.largest);
}

int main(int argc, char **argv) {
    tool_name = "fs-analyze";
    int i = 1;
    if (i + 1 < argc && strcmp(argv[i], "--top") == 0) {
        char *end;
        errno = 0;
        unsigned long n = strtoul(argv[i + 1], &end, 10);
        if (errno != 0 || *end != '\0' || argv[i + 1][0] < '0' || argv[i + 1][0] > '9' || n > 1000) {
            warn("--top wants a number from 0 to 1000");
            return EXIT_TROUBLE;
        }
        top = (size_t)n;
        i += 2;
    }
    if (i == argc) {
        warn("usage: fs-analyze [--top N] FOLDER...");
        return EXIT_TROUBLE;
    }
    for (; i < argc; i++) report(argv[i]);
    if (fflush(stdout) != 0) status = EXIT_TROUBLE;
    return status;
}
