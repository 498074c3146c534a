/* false: exit 1, ignoring the arguments. */
int main(void) { return 1; }
