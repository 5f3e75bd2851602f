/* gai_cost: times N sequential getaddrinfo() calls (run it under `via run` to measure a lookup
 * answered by the broker's fake-address table).
 *
 *   gai_cost NAME N          the same name each time
 *   gai_cost -u SUFFIX N     a different name each time: n0.SUFFIX, n1.SUFFIX, ...
 *
 * Prints p50/p99/mean in microseconds. Never connects anywhere.
 */
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

static double now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int cmp(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char** argv) {
  int unique = argc == 4 && strcmp(argv[1], "-u") == 0;
  if (argc != 3 && !unique) {
    fprintf(stderr, "usage: %s NAME N | -u SUFFIX N\n", argv[0]);
    return 2;
  }
  const char* name = argv[argc - 2];
  int n = atoi(argv[argc - 1]);
  double* t = calloc((size_t)n, sizeof(double));
  char buf[300];
  struct addrinfo hints = {0};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  for (int i = 0; i < n; ++i) {
    const char* q = name;
    if (unique) {
      snprintf(buf, sizeof buf, "n%d.%s", i, name);
      q = buf;
    }
    struct addrinfo* res = NULL;
    double start = now_us();
    int rc = getaddrinfo(q, "80", &hints, &res);
    t[i] = now_us() - start;
    if (rc != 0) {
      fprintf(stderr, "getaddrinfo(%s) %d: %s\n", q, i, gai_strerror(rc));
      return 1;
    }
    freeaddrinfo(res);
  }
  double sum = 0;
  for (int i = 0; i < n; ++i) sum += t[i];
  qsort(t, (size_t)n, sizeof(double), cmp);
  printf("n=%d p50=%.1fus p99=%.1fus mean=%.1fus\n", n, t[n / 2], t[(n * 99) / 100], sum / n);
  return 0;
}
