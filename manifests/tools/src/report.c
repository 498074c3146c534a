/* report OUTPUT FILE...: write a small Markdown report (size and first line of each FILE) to
 * OUTPUT, e.g. `report /out/report.md /src/README.md` with /src mounted ro and /out rw. */
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: report OUTPUT FILE...\n");
        return 2;
    }
    FILE *out = fopen(argv[1], "w");
    if (!out) {
        perror(argv[1]);
        return 1;
    }
    fprintf(out, "# Report\n\n| file | bytes | first line |\n| --- | ---: | --- |\n");
    int status = 0;
    for (int i = 2; i < argc; i++) {
        FILE *in = fopen(argv[i], "rb");
        if (!in) {
            perror(argv[i]);
            status = 1;
            continue;
        }
        char first[120] = "";
        if (!fgets(first, sizeof first, in)) first[0] = 0;
        first[strcspn(first, "\r\n|")] = 0;
        fseek(in, 0, SEEK_END);
        long size = ftell(in);
        fclose(in);
        fprintf(out, "| %s | %ld | %s |\n", argv[i], size, first);
    }
    if (fclose(out) != 0) {
        perror(argv[1]);
        return 1;
    }
    printf("wrote %s (%d file(s))\n", argv[1], argc - 2);
    return status;
}
