/* wordcount: lines, words and bytes of each file named in argv, as a table (like `wc`). */
#include <ctype.h>
#include <stdio.h>

int main(int argc, char **argv) {
    long total[3] = {0, 0, 0};
    int status = 0;
    printf("%8s %8s %8s  %s\n", "lines", "words", "bytes", "file");
    for (int i = 1; i < argc; i++) {
        FILE *file = fopen(argv[i], "rb");
        if (!file) {
            perror(argv[i]);
            status = 1;
            continue;
        }
        long lines = 0, words = 0, bytes = 0;
        int c, in_word = 0;
        while ((c = fgetc(file)) != EOF) {
            bytes++;
            if (c == '\n') lines++;
            if (isspace(c)) in_word = 0;
            else if (!in_word) { in_word = 1; words++; }
        }
        fclose(file);
        printf("%8ld %8ld %8ld  %s\n", lines, words, bytes, argv[i]);
        total[0] += lines; total[1] += words; total[2] += bytes;
    }
    if (argc > 2) printf("%8ld %8ld %8ld  %s\n", total[0], total[1], total[2], "total");
    return status;
}
