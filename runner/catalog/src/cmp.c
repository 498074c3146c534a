/* cmp: compare two files byte by byte, as POSIX and GNU cmp (C locale) do. Exit 0 when equal;
 * 1 when they differ, printing "A B differ: char N, line M" (or, on stderr, "cmp: EOF on A after
 * byte N, ..." when one is a prefix of the other); 2 on trouble. -s prints nothing. "-" is stdin. */
#include "common.h"

int main(int argc, char **argv) {
    tool_name = "cmp";
    int first = 1, silent = 0;
    if (first < argc && strcmp(argv[first], "-s") == 0) silent = 1, first++;
    if (first < argc && strcmp(argv[first], "--") == 0) first++;
    if (argc - first != 2) {
        warn("usage: cmp [-s] FILE1 FILE2");
        return EXIT_TROUBLE;
    }
    const char *name[2] = {argv[first], argv[first + 1]};
    if (strcmp(name[0], "-") == 0 && strcmp(name[1], "-") == 0) return 0;
    FILE *in[2] = {open_input(name[0]), NULL};
    if (!in[0]) return EXIT_TROUBLE;
    in[1] = open_input(name[1]);
    if (!in[1]) {
        close_input(in[0]);
        return EXIT_TROUBLE;
    }
    unsigned long long byte = 0, line = 1;
    int status = 0, at_line_start = 1;
    for (;;) {
        int a = getc(in[0]), b = getc(in[1]);
        if (a == EOF || b == EOF) {
            for (int i = 0; i < 2; i++) {
                if (ferror(in[i])) {
                    warn("%s: read error", name[i]);
                    status = EXIT_TROUBLE;
                }
            }
            if (status == 0 && a != b) {
                const char *shorter = a == EOF ? name[0] : name[1];
                if (!silent && byte == 0) warn("EOF on %s which is empty", shorter);
                else if (!silent)
                    warn("EOF on %s after byte %llu, %sline %llu", shorter, byte, at_line_start ? "" : "in ",
                         at_line_start ? line - 1 : line);
                status = EXIT_NO;
            }
            break;
        }
        byte++;
        if (a != b) {
            if (!silent) printf("%s %s differ: char %llu, line %llu\n", name[0], name[1], byte, line);
            status = EXIT_NO;
            break;
        }
        at_line_start = a == '\n';
        if (a == '\n') line++;
    }
    close_input(in[0]);
    close_input(in[1]);
    if (fflush(stdout) != 0) status = EXIT_TROUBLE;
    return status;
}
