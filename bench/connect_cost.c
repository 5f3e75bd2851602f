/* connect_cost: times N sequential "connect + 1-byte echo" round trips.
 *
 *   connect_cost plain HOST PORT N          connect() to HOST:PORT (run it under via: the shim
 *                                           routes it through the overlay)
 *   connect_cost socks5 PROXY_PORT HOST PORT N
 *                                           speaks SOCKS5 itself to 127.0.0.1:PROXY_PORT (the
 *                                           floor a preload tool is compared with)
 *
 *   connect_cost bulk plain HOST PORT MIB
 *   connect_cost bulk socks5 PROXY_PORT HOST PORT MIB
 *                                           one connection to `echo_server PORT 1 bulk`: uploads
 *                                           MIB MiB, then downloads MIB MiB; prints MiB/s
 *   connect_cost hold HOST PORT N           opens N connections (each checked with a 1-byte
 *                                           echo) and keeps them all open; prints "held=N" and
 *                                           waits until stdin reaches end-of-file
 *
 * HOST is an IPv4 literal or a name (plain: resolved with getaddrinfo each time; socks5: sent
 * to the proxy with ATYP 3). Prints p50/p99/mean in microseconds. Environment:
 *   CONNECT_COST_SAMPLES=FILE   also write every latency (us), one a line
 *   CONNECT_COST_SECONDS=S      stop after S seconds (or N connects); prints the count
 * Only ever used against servers on loopback.
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

static int write_all(int fd, const unsigned char* b, size_t n) {
  while (n) {
    ssize_t w = write(fd, b, n);
    if (w <= 0) return -1;
    b += w;
    n -= (size_t)w;
  }
  return 0;
}

/* Against `echo_server PORT 1 bulk`: upload `total` bytes, then download `total` bytes. */
static int bulk(int fd, long long total) {
  static unsigned char buf[256 * 1024];
  for (size_t i = 0; i < sizeof buf; ++i) buf[i] = (unsigned char)(i * 131u);
  unsigned char h[16];
  for (int i = 0; i < 8; ++i) h[i] = h[8 + i] = (unsigned char)(total >> (56 - 8 * i));
  double t0 = now_us();
  if (write_all(fd, h, 16) != 0) return 1;
  for (long long sent = 0; sent < total;) {
    size_t want = total - sent < (long long)sizeof buf ? (size_t)(total - sent) : sizeof buf;
    if (write_all(fd, buf, want) != 0) {
      fprintf(stderr, "bulk: upload failed at %lld\n", sent);
      return 1;
    }
    sent += (long long)want;
  }
  double t1 = now_us();
  long long got = 0;
  for (;;) {
    ssize_t r = read(fd, buf, sizeof buf);
    if (r <= 0) break;
    got += r;
  }
  double t2 = now_us();
  if (got != total) {
    fprintf(stderr, "bulk: downloaded %lld of %lld bytes\n", got, total);
    return 1;
  }
  /* The upload clock stops when the last byte is in the kernel's buffers; the download's
     first byte follows the server having read everything, so the total is the honest one. */
  double mib = total / 1048576.0;
  printf("bytes=%lld up_MiBps=%.1f down_MiBps=%.1f MiBps=%.1f\n", total, mib / ((t1 - t0) / 1e6),
         mib / ((t2 - t1) / 1e6), 2 * mib / ((t2 - t0) / 1e6));
  return 0;
}

/* N open connections at once, for the broker's memory with many routed connections alive. */
static int hold(const char* host, const char* port, int n) {
  int* fds = calloc((size_t)n, sizeof(int));
  for (int i = 0; i < n; ++i) {
    fds[i] = open_plain(host, port);
    unsigned char c = 'h';
    if (fds[i] < 0 || write(fds[i], &c, 1) != 1 || read_n(fds[i], &c, 1) != 0) {
      fprintf(stderr, "hold: connection %d failed\n", i);
      return 1;
    }
  }
  printf("held=%d\n", n);
  fflush(stdout);
  char buf[64];
  while (read(0, buf, sizeof buf) > 0) {
  }
  for (int i = 0; i < n; ++i) close(fds[i]);
  return 0;
}

int main(int argc, char** argv) {
  if (argc == 5 && strcmp(argv[1], "hold") == 0) return hold(argv[2], argv[3], atoi(argv[4]));
  if (argc >= 2 && strcmp(argv[1], "bulk") == 0) {
    int bs = argc == 7 && strcmp(argv[2], "socks5") == 0;
    int bp = argc == 6 && strcmp(argv[2], "plain") == 0;
    if (!bs && !bp) {
      fprintf(stderr, "usage: %s bulk plain HOST PORT MIB | bulk socks5 PROXY_PORT HOST PORT MIB\n",
              argv[0]);
      return 2;
    }
    int fd = bs ? open_socks5(atoi(argv[3]), argv[4], atoi(argv[5])) : open_plain(argv[3], argv[4]);
    if (fd < 0) {
      fprintf(stderr, "bulk: connect failed\n");
      return 1;
    }
    return bulk(fd, atoll(argv[argc - 1]) * 1048576LL);
  }
  int socks = argc == 6 && strcmp(argv[1], "socks5") == 0;
  int plain = argc == 5 && strcmp(argv[1], "plain") == 0;
  if (!socks && !plain) {
    fprintf(stderr, "usage: %s plain HOST PORT N | socks5 PROXY_PORT HOST PORT N\n", argv[0]);
    return 2;
  }
  int n = atoi(argv[argc - 1]);
  const char* secs_env = getenv("CONNECT_COST_SECONDS");
  double deadline = secs_env ? now_us() + atof(secs_env) * 1e6 : 0;
  double* t = calloc((size_t)n, sizeof(double));
  int done = 0;
  for (int i = 0; i < n; ++i) {
    double start = now_us();
    if (deadline && start >= deadline) break;
    int fd =
        socks ? open_socks5(atoi(argv[2]), argv[3], atoi(argv[4])) : open_plain(argv[2], argv[3]);
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
    done = i + 1;
  }
  n = done;
  if (n == 0) {
    fprintf(stderr, "no connects\n");
    return 1;
  }
  const char* dump = getenv("CONNECT_COST_SAMPLES");
  if (dump) {
    FILE* f = fopen(dump, "w");
    if (!f) {
      perror(dump);
      return 1;
    }
    for (int i = 0; i < n; ++i) fprintf(f, "%.1f\n", t[i]);
    fclose(f);
  }
  double sum = 0;
  for (int i = 0; i < n; ++i) sum += t[i];
  qsort(t, (size_t)n, sizeof(double), cmp);
  printf("n=%d p50=%.1fus p99=%.1fus mean=%.1fus\n", n, t[n / 2], t[(n * 99) / 100], sum / n);
  return 0;
}
