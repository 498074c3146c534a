/* fail: fails on purpose (message on stderr, exit code 3), to show a failed job in the reports. */
#include <stdio.h>

int main(void) {
    fprintf(stderr, "fail: this tool always fails (exit code 3), on purpose\n");
    return 3;
}
