/* connect_cost: times N sequential "connect + 1-byte echo" round trips.
 *
 *   connect_cost plain HOST PORT N          connect() to HOST:PORT (run it under via: the shim
 *                                           routes it through the overlay)
 *   connect_cost socks5 PROXY_PORT HOST PORT N
 *                                           speaks SOCKS5 itself to 127.0.0.1:PROXY_PORT (the
 *                                           floor a preload tool is compared with)
 *
 * HOST is an IPv4 literal or, in plain mode, a name resolved with getaddrinfo each time.
 * Prints p50/p99/mean in microseconds. Only ever used against servers on loopback.
 */
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int cmp(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return x < y ? -1 : x > y;
}

static int read_n(int fd, unsigned char* buf, size_t n) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = read(fd, buf + got, n - got);
    if (r <= 0) return -1;
    got += (size_t)r;
  }
  return 0;
}

static int open_plain(const char* host, const char* port) {
  struct addrinfo hints = {0}, *res = NULL;
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  if (getaddrinfo(host, port, &hints, &res) != 0) return -1;
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd >= 0 && connect(fd, res->ai_addr, res->ai_addrlen) != 0) {
    close(fd);
    fd = -1;
  }
  freeaddrinfo(res);
  return fd;
}

static int open_socks5(int proxy_port, const char* host, int port) {
  struct sockaddr_in p = {0};
  p.sin_family = AF_INET;
  p.sin_port = htons((uint16_t)proxy_port);
  p.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0 || connect(fd, (struct sockaddr*)&p, sizeof p) != 0) goto fail;
  unsigned char hello[3] = {5, 1, 0}, rep[32];
  if (write(fd, hello, 3) != 3 || read_n(fd, rep, 2) != 0 || rep[1] != 0) goto fail;
  unsigned char req[300];
  size_t len = 0;
  req[len++] = 5;
  req[len++] = 1;
  req[len++] = 0;
  struct in_addr a;
  if (inet_pton(AF_INET, host, &a) == 1) {
    req[len++] = 1;
    memcpy(req + len, &a, 4);
    len += 4;
  } else {
    size_t hl = strlen(host);
    req[len++] = 3;
    req[len++] = (unsigned char)hl;
    memcpy(req + len, host, hl);
    len += hl;
  }
  req[len++] = (unsigned char)(port >> 8);
  req[len++] = (unsigned char)port;
  if (write(fd, req, len) != (ssize_t)len || read_n(fd, rep, 10) != 0 || rep[1] != 0) goto fail;
  return fd;
fail:
  if (fd >= 0) close(fd);
  return -1;
}

int main(int argc, char** argv) {
  int socks = argc == 6 && strcmp(argv[1], "socks5") == 0;
  int plain = argc == 5 && strcmp(argv[1], "plain") == 0;
  if (!socks && !plain) {
    fprintf(stderr, "usage: %s plain HOST PORT N | socks5 PROXY_PORT HOST PORT N\n", argv[0]);
    return 2;
  }
  int n = atoi(argv[argc - 1]);
  double* t = calloc((size_t)n, sizeof(double));
  for (int i = 0; i < n; ++i) {
    double start = now_us();
    int fd = socks ? open_socks5(atoi(argv[2]), argv[3], atoi(argv[4])) : open_plain(argv[2], argv[3]);
    if (fd < 0) {
      fprintf(stderr, "connect %d failed\n", i);
      return 1;
    }
    unsigned char c = 'x';
    if (write(fd, &c, 1) != 1 || read_n(fd, &c, 1) != 0) {
      fprintf(stderr, "echo %d failed\n", i);
      return 1;
    }
    close(fd);
    t[i] = now_us() - start;
  }
  double sum = 0;
  for (int i = 0; i < n; ++i) sum += t[i];
  qsort(t, (size_t)n, sizeof(double), cmp);
  printf("n=%d p50=%.1fus p99=%.1fus mean=%.1fus\n", n, t[n / 2], t[(n * 99) / 100], sum / n);
  return 0;
}
