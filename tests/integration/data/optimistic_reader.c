/* A client for tests/integration/test_optimistic_data.py: connects to HOST:PORT by name (the
 * shim routes it), sends "GET PATH HTTP/1.0", and copies the whole response to stdout, read with
 * the call MODE names: read, recv, recvfrom, recvmsg, readv or recvmmsg.
 *
 *   optimistic_reader HOST PORT PATH MODE [peek] [nonblock] [epollet] [writefirst]
 *
 * peek: first a recv(MSG_PEEK) of 16 bytes, written to stderr as "peeked HEX" (the reply bytes
 * must not be in it, and must not be taken twice). nonblock: O_NONBLOCK after connect, reads
 * wait in poll() and EAGAIN counts as "try again" (printed once as "eagain" on stderr when the
 * first read gave it). epollet: as nonblock, but the reads wait in an edge-triggered epoll
 * registered before the first read (each EAGAIN waits for a new edge). writefirst: wait 500 ms
 * after connect before sending (a refused CONNECT's reply has come by then, so the send is where it
 * shows). Errors: "MODE errno NAME" on stderr, exit status 3 (connect: 2).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

static const char* errname(int e) {
  switch (e) {
    case ECONNREFUSED:
      return "ECONNREFUSED";
    case ECONNRESET:
      return "ECONNRESET";
    case ETIMEDOUT:
      return "ETIMEDOUT";
    case EHOSTUNREACH:
      return "EHOSTUNREACH";
    case ENETUNREACH:
      return "ENETUNREACH";
    case EAGAIN:
      return "EAGAIN";
    case EPIPE:
      return "EPIPE";
    default:
      return strerror(e);
  }
}

static ssize_t read_with(const char* mode, int fd, char* buf, size_t cap) {
  if (strcmp(mode, "read") == 0) return read(fd, buf, cap);
  if (strcmp(mode, "recv") == 0) return recv(fd, buf, cap, 0);
  if (strcmp(mode, "recvfrom") == 0) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    return recvfrom(fd, buf, cap, 0, (struct sockaddr*)&ss, &len);
  }
  /* Two pieces: the reply must be stripped whatever the vector looks like. */
  struct iovec iov[2] = {{buf, 7 < cap ? 7 : cap}, {buf + 7, cap > 7 ? cap - 7 : 0}};
  if (strcmp(mode, "readv") == 0) return readv(fd, iov, 2);
  struct msghdr m;
  memset(&m, 0, sizeof m);
  m.msg_iov = iov;
  m.msg_iovlen = 2;
  if (strcmp(mode, "recvmsg") == 0) return recvmsg(fd, &m, 0);
  if (strcmp(mode, "recvmmsg") == 0) {
    struct mmsghdr mm;
    memset(&mm, 0, sizeof mm);
    mm.msg_hdr = m;
    int r = recvmmsg(fd, &mm, 1, 0, NULL);
    return r < 0 ? -1 : (ssize_t)mm.msg_len;
  }
  fprintf(stderr, "unknown mode %s\n", mode);
  exit(64);
}

int main(int argc, char** argv) {
  if (argc < 5) {
    fprintf(stderr, "usage: %s HOST PORT PATH MODE [peek] [nonblock] [writefirst]\n", argv[0]);
    return 64;
  }
  const char* mode = argv[4];
  int peek = 0, nonblock = 0, writefirst = 0, epollet = 0;
  for (int i = 5; i < argc; ++i) {
    peek |= strcmp(argv[i], "peek") == 0;
    nonblock |= strcmp(argv[i], "nonblock") == 0;
    epollet |= strcmp(argv[i], "epollet") == 0;
    writefirst |= strcmp(argv[i], "writefirst") == 0;
  }
  struct addrinfo hints, *ai;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  int g = getaddrinfo(argv[1], argv[2], &hints, &ai);
  if (g != 0) {
    fprintf(stderr, "getaddrinfo: %s\n", gai_strerror(g));
    return 2;
  }
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
    fprintf(stderr, "connect errno %s\n", errname(errno));
    return 2;
  }
  nonblock |= epollet;
  if (nonblock) fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  int ep = -1;
  if (epollet) {
    ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLET, .data.fd = fd};
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
  }
  if (writefirst) usleep(500000);
  char req[512];
  int n = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n", argv[3], argv[1]);
  for (int off = 0; off < n;) {
    ssize_t w = send(fd, req + off, (size_t)(n - off), MSG_NOSIGNAL);
    if (w < 0 && errno == EAGAIN) {
      struct pollfd p = {fd, POLLOUT, 0};
      poll(&p, 1, 1000);
      continue;
    }
    if (w < 0) {
      fprintf(stderr, "send errno %s\n", errname(errno));
      return 3;
    }
    off += (int)w;
  }
  char buf[65536];
  if (peek) {
    ssize_t p;
    for (;;) {
      p = recv(fd, buf, 16, MSG_PEEK);
      if (p < 0 && errno == EAGAIN) {
        struct pollfd pf = {fd, POLLIN, 0};
        poll(&pf, 1, 1000);
        continue;
      }
      break;
    }
    if (p < 0) {
      fprintf(stderr, "peek errno %s\n", errname(errno));
      return 3;
    }
    fprintf(stderr, "peeked ");
    for (ssize_t i = 0; i < p; ++i) fprintf(stderr, "%02x", (unsigned char)buf[i]);
    fprintf(stderr, "\n");
  }
  int first = 1;
  for (;;) {
    ssize_t r = read_with(mode, fd, buf, sizeof buf);
    if (r < 0 && errno == EAGAIN && nonblock) {
      if (first) fprintf(stderr, "eagain\n");
      first = 0;
      if (epollet) {
        struct epoll_event ev;
        if (epoll_wait(ep, &ev, 1, 5000) == 0) {
          fprintf(stderr, "epoll: no edge within 5 s\n");
          return 4;
        }
        continue;
      }
      struct pollfd p = {fd, POLLIN, 0};
      poll(&p, 1, 1000);
      continue;
    }
    if (r < 0) {
      fprintf(stderr, "%s errno %s\n", mode, errname(errno));
      return 3;
    }
    first = 0;
    if (r == 0) break;
    fwrite(buf, 1, (size_t)r, stdout);
  }
  return 0;
}
