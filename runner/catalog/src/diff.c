/* diff: whether two files or two directory trees differ, reported as `diff -q -r` does:
 * "Files A and B differ", "Only in DIR: NAME", "File A is a directory while file B is a regular
 * file". It prints no hunks. -q and -r are accepted and always on. Exit 0 when equal, 1 when they
 * differ, 2 on trouble (an unreadable file or folder). Symbolic links are compared as the files
 * they lead to (the sandbox keeps them inside the mounts). */
#include <sys/stat.h>

#include "common.h"

static int status;

static void trouble(const char *path) {
    warn("%s: %s", path, strerror(errno));
    status = EXIT_TROUBLE;
}

/* 0 same bytes, 1 different, -1 trouble. */
static int same_file(const char *a, const char *b) {
    FILE *fa = fopen(a, "rb");
    if (!fa) {
        trouble(a);
        return -1;
    }
    FILE *fb = fopen(b, "rb");
    if (!fb) {
        fclose(fa);
        trouble(b);
        return -1;
    }
    static unsigned char ba[65536], bb[65536]; /* not on the 256 KiB stack */
    int result = 0;
    for (;;) {
        size_t na = fread(ba, 1, sizeof ba, fa), nb = fread(bb, 1, sizeof bb, fb);
        if (na != nb || memcmp(ba, bb, na) != 0) {
            result = 1;
            break;
        }
        if (na == 0) break;
    }
    if (ferror(fa) || ferror(fb)) {
        warn("%s or %s: read error", a, b);
        status = EXIT_TROUBLE;
        result = -1;
    }
    fclose(fa);
    fclose(fb);
    return result;
}

static const char *kind(const struct stat *st) {
    if (S_ISDIR(st->st_mode)) return "directory";
    if (S_ISREG(st->st_mode)) return st->st_size == 0 ? "regular empty file" : "regular file";
    return "special file";
}

static void compare(const char *a, const char *b, int depth);

static void compare_dirs(const char *a, const char *b, int depth) {
    char **na, **nb;
    long ca = list_dir(a, &na);
    if (ca < 0) {
        trouble(a);
        return;
    }
    long cb = list_dir(b, &nb);
    if (cb < 0) {
        free_list(na, ca);
        trouble(b);
        return;
    }
    long i = 0, j = 0;
    while (i < ca || j < cb) {
        int order = i == ca ? 1 : j == cb ? -1 : strcmp(na[i], nb[j]);
        if (order < 0) {
            printf("Only in %s: %s\n", a, na[i++]);
            if (status == 0) status = EXIT_NO;
        } else if (order > 0) {
            printf("Only in %s: %s\n", b, nb[j++]);
            if (status == 0) status = EXIT_NO;
        } else {
            char *pa = join_path(a, na[i++]), *pb = join_path(b, nb[j++]);
            compare(pa, pb, depth + 1);
            free(pa);
            free(pb);
        }
    }
    free_list(na, ca);
    free_list(nb, cb);
}

static void compare(const char *a, const char *b, int depth) {
    struct stat sa, sb;
    if (stat(a, &sa) != 0 || stat(b, &sb) != 0) {
        trouble(stat(a, &sa) != 0 ? a : b);
        return;
    }
    if (depth > 256) {
        warn("%s: more than 256 levels of folders", a);
        status = EXIT_TROUBLE;
        return;
    }
    if (S_ISDIR(sa.st_mode) && S_ISDIR(sb.st_mode)) {
        compare_dirs(a, b, depth);
        return;
    }
    if (S_ISDIR(sa.st_mode) != S_ISDIR(sb.st_mode)) {
        printf("File %s is a %s while file %s is a %s\n", a, kind(&sa), b, kind(&sb));
        if (status == 0) status = EXIT_NO;
        return;
    }
    if (same_file(a, b) == 1) {
        printf("Files %s and %s differ\n", a, b);
        if (status == 0) status = EXIT_NO;
    }
}

/* -q and -r are what this diff always does. */
static int quiet_or_recursive(char flag) { return flag == 'q' || flag == 'r'; }

int main(int argc, char **argv) {
    tool_name = "diff";
    int first = parse_letters(argc, argv, quiet_or_recursive, "only -q and -r, both always on");
    if (first < 0) return EXIT_TROUBLE;
    if (argc - first != 2) {
        warn("usage: diff [-q] [-r] PATH1 PATH2");
        return EXIT_TROUBLE;
    }
    compare(argv[first], argv[first + 1], 0);
    if (fflush(stdout) != 0) status = EXIT_TROUBLE;
    return status;
}
