/* true: exit 0, ignoring the arguments. */
int main(void) { return 0; }
