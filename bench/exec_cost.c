/* exec_cost: mean wall time of fork+exec+wait of a program, N times, with the current
 * environment (set LD_PRELOAD around it to measure a preload library's cost).
 *
 *   exec_cost N /bin/true
 *
 * EXEC_COST_PRELOAD=LIB sets LD_PRELOAD=LIB in the child only (after fork, before exec): the
 * cost of loading LIB into the exec'd program, without the parent's own exec hooks.
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char** argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s N PROGRAM [ARGS...]\n", argv[0]);
    return 2;
  }
  int n = atoi(argv[1]);
  struct timespec a, b;
  clock_gettime(CLOCK_MONOTONIC, &a);
  for (int i = 0; i < n; ++i) {
    pid_t pid = fork();
    if (pid == 0) {
      const char* lib = getenv("EXEC_COST_PRELOAD");
      if (lib) setenv("LD_PRELOAD", lib, 1);
      execv(argv[2], argv + 2);
      _exit(127);
    }
    int st;
    waitpid(pid, &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
      fprintf(stderr, "run %d failed\n", i);
      return 1;
    }
  }
  clock_gettime(CLOCK_MONOTONIC, &b);
  double us = ((b.tv_sec - a.tv_sec) * 1e6 + (b.tv_nsec - a.tv_nsec) / 1e3) / n;
  printf("n=%d mean=%.1fus\n", n, us);
  return 0;
}
