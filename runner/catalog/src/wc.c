/* wc: newline, word and byte counts of each file (or stdin), formatted as GNU wc does:
 * -l lines, -w words, -c bytes (default: all three, in that order); a "total" line for
 * several files; exit 1 if a file is unreadable. C locale: a word is a run between white space
 * holding at least one printable ASCII byte (other bytes neither make nor break words). */
#include <sys/stat.h>

#include "common.h"

typedef struct {
    unsigned long long lines, words, bytes;
    int ok, regular;
    long long size;
} Counts;

static int is_space(int c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

static Counts count(FILE *in, const char *name) {
    Counts k = {0, 0, 0, 1, 0, 0};
    struct stat st;
    if (fstat(fileno(in), &st) == 0 && S_ISREG(st.st_mode)) {
        k.regular = 1;
        k.size = (long long)st.st_size;
    }
    unsigned char buf[65536];
    size_t got;
    int in_word = 0;
    while ((got = fread(buf, 1, sizeof buf, in)) > 0) {
        k.bytes += got;
        for (size_t i = 0; i < got; i++) {
            if (buf[i] == '\n') k.lines++;
            if (is_space(buf[i])) {
                k.words += (unsigned long long)in_word;
                in_word = 0;
            } else if (buf[i] > ' ' && buf[i] < 0x7F) {
                in_word = 1; /* other bytes neither make nor break a word, as in GNU wc */
            }
        }
    }
    k.words += (unsigned long long)in_word;
    if (ferror(in)) {
        warn("%s: read error", name);
        k.ok = 0;
    }
    return k;
}

static int show_lines, show_words, show_bytes;

static void print(const Counts *k, int width, const char *name) {
    const char *sep = "";
    if (show_lines) printf("%s%*llu", sep, width, k->lines), sep = " ";
    if (show_words) printf("%s%*llu", sep, width, k->words), sep = " ";
    if (show_bytes) printf("%s%*llu", sep, width, k->bytes);
    if (name) printf(" %s", name);
    putchar('\n');
}

static int choose_count(char flag) {
    if (flag == 'l') show_lines = 1;
    else if (flag == 'w') show_words = 1;
    else if (flag == 'c') show_bytes = 1;
    else return 0;
    return 1;
}

int main(int argc, char **argv) {
    tool_name = "wc";
    int first = parse_letters(argc, argv, choose_count, "only -l, -w, -c");
    if (first < 0) return EXIT_TROUBLE;
    if (!show_lines && !show_words && !show_bytes) show_lines = show_words = show_bytes = 1;
    int nfiles = argc - first;
    int status = 0;
    Counts total = {0, 0, 0, 1, 1, 0};
    Counts *all = xrealloc(NULL, (size_t)(nfiles > 0 ? nfiles : 1) * sizeof *all);
    if (nfiles == 0) {
        all[0] = count(stdin, "-");
        if (!all[0].ok) status = 1;
    }
    for (int i = 0; i < nfiles; i++) {
        FILE *in = open_input(argv[first + i]);
        if (!in) {
            all[i] = (Counts){0, 0, 0, 0, 0, 0};
            status = 1;
            continue;
        }
        all[i] = count(in, argv[first + i]);
        if (!all[i].ok) status = 1;
        close_input(in);
    }
    /* GNU's width: digits of the regular files' total size, at least 7 when one input is not a
     * regular file; 1 when a single input prints a single count. */
    int n = nfiles > 0 ? nfiles : 1;
    int width = 1, minimum = 1;
    unsigned long long regular_total = 0;
    if (all[0].ok) {
        for (int i = 0; i < n; i++) {
            if (!all[i].ok) continue;
            if (!all[i].regular) minimum = 7;
            else regular_total += (unsigned long long)all[i].size;
        }
        for (; regular_total >= 10; regular_total /= 10) width++;
        if (width < minimum) width = minimum;
    }
    if (n == 1 && show_lines + show_words + show_bytes == 1) width = 1;
    for (int i = 0; i < n; i++) {
        if (!all[i].ok) continue;
        print(&all[i], width, nfiles > 0 ? argv[first + i] : NULL);
        total.lines += all[i].lines;
        total.words += all[i].words;
        total.bytes += all[i].bytes;
    }
    if (nfiles > 1) print(&total, width, "total");
    free(all);
    if (fflush(stdout) != 0) status = 1;
    return status;
}
