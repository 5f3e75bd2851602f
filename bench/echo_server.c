/* echo_server: a loopback TCP echo server for the benchmarks, fast enough not to be the
 * bottleneck (epoll, non-blocking, one SO_REUSEPORT listener and loop per thread).
 *
 *   echo_server PORT [THREADS]        listens on 127.0.0.1:PORT only; prints "ready"
 *   echo_server PORT 1 bulk           bulk mode, a thread per connection: the client sends a
 *                                     16-byte header (two big-endian u64: UP, DOWN), then UP
 *                                     bytes, which are discarded; the server then sends DOWN
 *                                     bytes and closes. (A plain echo of gigabytes deadlocks
 *                                     proxies whose relay loop blocks on write, e.g. microsocks.)
 *
 * Each connection echoes everything it reads; on EOF it flushes what is pending and closes.
 * Back-pressure: while a connection has unsent bytes it is not read from.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF (256 * 1024)

struct conn {
  int fd;
  int eof;
  size_t len, off;
  unsigned char buf[BUF];
};

static int port;

static int make_listener(void) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
  struct sockaddr_in a = {0};
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(fd, (struct sockaddr*)&a, sizeof a) != 0 || listen(fd, 4096) != 0) {
    perror("echo_server: bind/listen");
    exit(1);
  }
  return fd;
}

static void drop(int ep, struct conn* c) {
  epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
  close(c->fd);
  free(c);
}

/* Writes what is pending; returns 0 when done, 1 when the socket is full, -1 on error. */
static int flush(struct conn* c) {
  while (c->off < c->len) {
    ssize_t w = write(c->fd, c->buf + c->off, c->len - c->off);
    if (w < 0) return errno == EAGAIN ? 1 : -1;
    c->off += (size_t)w;
  }
  c->off = c->len = 0;
  return 0;
}

static void* loop(void* arg) {
  int lfd = make_listener();
  int ep = epoll_create1(0);
  struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
  epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
  if (arg) {
    printf("ready\n");
    fflush(stdout);
  }
  struct epoll_event evs[256];
  for (;;) {
    int n = epoll_wait(ep, evs, 256, -1);
    for (int i = 0; i < n; ++i) {
      struct conn* c = evs[i].data.ptr;
      if (!c) {
        int fd;
        while ((fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
          int one = 1;
          setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
          struct conn* nc = malloc(sizeof *nc);
          nc->fd = fd;
          nc->eof = 0;
          nc->len = nc->off = 0;
          struct epoll_event e = {.events = EPOLLIN, .data.ptr = nc};
          epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
        }
        continue;
      }
      int r = flush(c);
      if (r < 0) {
        drop(ep, c);
        continue;
      }
      while (r == 0 && !c->eof) {
        ssize_t got = read(c->fd, c->buf, BUF);
        if (got == 0) c->eof = 1;
        if (got < 0 && errno != EAGAIN) {
          r = -1;
          break;
        }
        if (got <= 0) break;
        c->len = (size_t)got;
        r = flush(c);
        if ((size_t)got < BUF) break; /* likely drained; let epoll tell us */
      }
      if (r < 0 || (r == 0 && c->eof)) {
        drop(ep, c);
        continue;
      }
      struct epoll_event e = {.events = r == 1 ? EPOLLOUT : EPOLLIN, .data.ptr = c};
      epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e);
    }
  }
  return NULL;
}

static int read_all(int fd, unsigned char* b, size_t n) {
  while (n) {
    ssize_t r = read(fd, b, n);
    if (r <= 0) return -1;
    b += r;
    n -= (size_t)r;
  }
  return 0;
}

static void* bulk_conn(void* arg) {
  int fd = (int)(long)arg;
  static __thread unsigned char buf[BUF];
  unsigned char h[16];
  if (read_all(fd, h, 16) == 0) {
    unsigned long long up = 0, down = 0;
    for (int i = 0; i < 8; ++i) up = up << 8 | h[i], down = down << 8 | h[8 + i];
    while (up) {
      ssize_t r = read(fd, buf, up < BUF ? up : BUF);
      if (r <= 0) break;
      up -= (unsigned long long)r;
    }
    memset(buf, 'd', BUF);
    while (!up && down) {
      ssize_t w = write(fd, buf, down < BUF ? down : BUF);
      if (w <= 0) break;
      down -= (unsigned long long)w;
    }
  }
  close(fd);
  return NULL;
}

static void bulk_server(void) {
  int lfd = make_listener();
  fcntl(lfd, F_SETFL, 0);
  printf("ready\n");
  fflush(stdout);
  for (;;) {
    int fd = accept(lfd, NULL, NULL);
    if (fd < 0) continue;
    pthread_t t;
    pthread_create(&t, NULL, bulk_conn, (void*)(long)fd);
    pthread_detach(t);
  }
}

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s PORT [THREADS]\n", argv[0]);
    return 2;
  }
  port = atoi(argv[1]);
  if (argc > 3 && strcmp(argv[3], "bulk") == 0) bulk_server();
  int threads = argc > 2 ? atoi(argv[2]) : 1;
  for (int i = 1; i < threads; ++i) {
    pthread_t t;
    pthread_create(&t, NULL, loop, NULL);
  }
  loop((void*)1);
  return 0;
}
