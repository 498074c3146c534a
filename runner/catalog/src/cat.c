/* cat: the files (or stdin; "-" is stdin) copied to stdout in order. Exit 1 if one is unreadable (as GNU cat). */
#include "common.h"

static int copy(FILE *in, const char *name) {
    char buf[65536];
    size_t got;
    while ((got = fread(buf, 1, sizeof buf, in)) > 0) {
        if (fwrite(buf, 1, got, stdout) != got) {
            warn("write error");
            return 1;
        }
    }
    if (ferror(in)) {
        warn("%s: read error", name);
        return 1;
    }
    return 0;
}

int main(int argc, char **argv) {
    tool_name = "cat";
    int status = 0;
    if (argc < 2) return copy(stdin, "-");
    for (int i = 1; i < argc; i++) {
        FILE *in = open_input(argv[i]);
        if (!in) {
            status = 1;
            continue;
        }
        if (copy(in, argv[i]) != 0) status = 1;
        close_input(in);
    }
    if (fflush(stdout) != 0) status = 1;
    return status;
}
