// Non-blocking connect edge cases (test_nonblocking_connect.py): connects a non-blocking TCP
// socket to HOST:PORT (getaddrinfo, IPv4) and waits for it the way MODE says, then sends
// "GET /MODE" and prints the reply's status line. Every line it prints is "key=value ...".
//
//   nbconnect MODE HOST PORT
//
// MODE: error (poll for POLLOUT, print SO_ERROR), epoll-before / epoll-after (EPOLLET
// registration before / after connect), oneshot (EPOLLONESHOT after connect), pollin (poll for
// POLLIN only: nothing may show before the request is sent), select, again (getpeername
// ENOTCONN, EALREADY, then EISCONN, getpeername the target), close (close while pending, 300 ms
// in, then wait 3 s), fork (fork while pending; both wait), exec (exec while pending, the socket
// inherited: the new program, "exec-child HOST PORT FD", sends the request), blocking (a blocking
// socket).
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static const char* ename(int e) {
  const char* n = strerrorname_np(e);
  return e == 0 ? "0" : n ? n : "?";
}

static int so_error(int fd) {
  int err = -1;
  socklen_t len = sizeof err;
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) return -errno;
  return err;
}

static int wait_out(int fd, int ms) {
  struct pollfd p = {fd, POLLOUT, 0};
  return poll(&p, 1, ms);
}

// Sends the request and prints the status line: status=200 (or status=none).
static void request(int fd, const char* mode, const char* host, const char* port) {
  int fl = fcntl(fd, F_GETFL);
  fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
  char req[256];
  int n = snprintf(req, sizeof req, "GET /%s HTTP/1.0\r\nHost: %s:%s\r\n\r\n", mode, host, port);
  if (send(fd, req, n, MSG_NOSIGNAL) != n) {
    printf("status=none send=%s\n", ename(errno));
    return;
  }
  char buf[64] = {0};
  ssize_t r = recv(fd, buf, sizeof buf - 1, MSG_WAITALL);
  int code = 0;
  if (r > 12 && sscanf(buf, "HTTP/1.%*d %d", &code) == 1) {
    printf("status=%d\n", code);
  } else {
    printf("status=none got=%zd\n", r);
  }
}

int main(int argc, char** argv) {
  if (argc != 4 && argc != 5) {
    fprintf(stderr, "usage: nbconnect MODE HOST PORT\n");
    return 2;
  }
  const char *mode = argv[1], *host = argv[2], *port = argv[3];
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (strcmp(mode, "exec-child") == 0) {  // exec'ed by "exec" with the socket as argv[4]
    int fd = atoi(argv[4]);
    printf("child_so_error=%s\n", ename(so_error(fd)));
    request(fd, "exec", host, port);
    return 0;
  }
  struct addrinfo hints = {0}, *ai;
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  if (getaddrinfo(host, port, &hints, &ai) != 0) {
    printf("getaddrinfo=failed\n");
    return 1;
  }
  const int blocking = strcmp(mode, "blocking") == 0;
  const int inherit = strcmp(mode, "exec") == 0;  // no FD_CLOEXEC: the new program gets it
  int fd = socket(AF_INET,
                  SOCK_STREAM | (inherit ? 0 : SOCK_CLOEXEC) | (blocking ? 0 : SOCK_NONBLOCK), 0);
  int ep = -1;
  if (strcmp(mode, "epoll-before") == 0) {
    ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLOUT | EPOLLET, .data.u64 = 42};
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
  }
  long long t0 = now_ms();
  // "fastopen": a TCP Fast Open send instead of connect; without a cookie the kernel answers
  // EINPROGRESS and sends nothing, and so must the shim.
  const int fastopen = strcmp(mode, "fastopen") == 0 || strcmp(mode, "fastopen-msg") == 0;
  int r;
  if (strcmp(mode, "fastopen-msg") == 0) {
    struct iovec iov = {(void*)"G", 1};
    struct msghdr m = {
        .msg_name = ai->ai_addr, .msg_namelen = ai->ai_addrlen, .msg_iov = &iov, .msg_iovlen = 1};
    r = (int)sendmsg(fd, &m, MSG_FASTOPEN | MSG_NOSIGNAL);
  } else if (fastopen) {
    r = (int)sendto(fd, "G", 1, MSG_FASTOPEN | MSG_NOSIGNAL, ai->ai_addr, ai->ai_addrlen);
  } else {
    r = connect(fd, ai->ai_addr, ai->ai_addrlen);
  }
  int cerr = r >= 0 ? 0 : errno;
  printf("connect=%s connect_ms=%lld\n", ename(cerr), now_ms() - t0);
  if (blocking) {
    if (r == 0) request(fd, mode, host, port);
    return 0;
  }
  if (cerr != EINPROGRESS) return 0;

  if (fastopen) {
    ssize_t r2 = sendto(fd, "G", 1, MSG_FASTOPEN | MSG_NOSIGNAL, ai->ai_addr, ai->ai_addrlen);
    printf("second=%s\n", r2 >= 0 ? "sent" : ename(errno));
    int w = wait_out(fd, 30000);
    printf("poll=%d first_ms=%lld so_error=%s\n", w, now_ms() - t0, ename(so_error(fd)));
    request(fd, mode, host, port);
    return 0;
  }
  if (strcmp(mode, "io-pending") == 0) {  // reads and writes before the socket is writable
    char c;
    ssize_t w = write(fd, "x", 1);
    const char* we = w < 0 ? ename(errno) : "sent";
    ssize_t r = read(fd, &c, 1);
    const char* re = r < 0 ? ename(errno) : "got";
    ssize_t s = send(fd, "x", 1, MSG_NOSIGNAL);
    const char* se = s < 0 ? ename(errno) : "sent";
    ssize_t v = recv(fd, &c, 1, 0);
    const char* ve = v < 0 ? ename(errno) : "got";
    printf("write=%s read=%s send=%s recv=%s\n", we, re, se, ve);
    int wo = wait_out(fd, 30000);
    printf("poll=%d first_ms=%lld so_error=%s\n", wo, now_ms() - t0, ename(so_error(fd)));
    request(fd, mode, host, port);
    return 0;
  }
  if (strcmp(mode, "io-blocking") == 0) {  // made blocking while pending, then written at once
    request(fd, mode, host, port);
    printf("first_ms=%lld\n", now_ms() - t0);
    return 0;
  }
  if (strcmp(mode, "error") == 0) {
    int w = wait_out(fd, 30000);
    printf("poll=%d so_error=%s elapsed_ms=%lld\n", w, ename(so_error(fd)), now_ms() - t0);
    return 0;
  }
  if (strcmp(mode, "epoll-before") == 0 || strcmp(mode, "epoll-after") == 0 ||
      strcmp(mode, "oneshot") == 0) {
    if (ep < 0) {
      ep = epoll_create1(EPOLL_CLOEXEC);
      unsigned flag = strcmp(mode, "oneshot") == 0 ? EPOLLONESHOT : EPOLLET;
      struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN | flag, .data.u64 = 42};
      epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    }
    // Count events for 2.5 s after the first: edge-triggered and one-shot registrations
    // report the connection once.
    struct epoll_event got;
    long long first = -1;
    int events = 0;
    unsigned what = 0;
    while (first < 0 ? now_ms() - t0 < 30000 : now_ms() - first < 2500) {
      int n = epoll_wait(ep, &got, 1, 100);
      if (n == 1) {
        if (first < 0) first = now_ms();
        ++events;
        what |= got.events;
      }
    }
    printf("events=%d first_ms=%lld out=%d data=%llu so_error=%s\n", events,
           first < 0 ? -1 : first - t0, (what & EPOLLOUT) != 0, (unsigned long long)got.data.u64,
           ename(so_error(fd)));
    request(fd, mode, host, port);
    return 0;
  }
  if (strcmp(mode, "pollin") == 0) {
    struct pollfd p = {fd, POLLIN, 0};
    int n = poll(&p, 1, 2500);  // the proxy answers after 1 s; the target says nothing first
    printf("pollin=%d revents=%d so_error=%s\n", n, p.revents, ename(so_error(fd)));
    request(fd, mode, host, port);
    return 0;
  }
  if (strcmp(mode, "ppoll") == 0) {  // the signal-mask variant, with a timeout to spare
    struct pollfd p = {fd, POLLOUT, 0};
    struct timespec ts = {30, 0};
    sigset_t none;
    sigemptyset(&none);
    int n = ppoll(&p, 1, &ts, &none);
    printf("ppoll=%d revents=%d first_ms=%lld so_error=%s\n", n, p.revents, now_ms() - t0,
           ename(so_error(fd)));
    request(fd, mode, host, port);
    return 0;
  }
  if (strcmp(mode, "pselect") == 0) {
    fd_set w;
    FD_ZERO(&w);
    FD_SET(fd, &w);
    struct timespec ts = {30, 0};
    sigset_t none;
    sigemptyset(&none);
    int n = pselect(fd + 1, NULL, &w, NULL, &ts, &none);
    printf("pselect=%d writable=%d first_ms=%lld so_error=%s\n", n, FD_ISSET(fd, &w), now_ms() - t0,
           ename(so_error(fd)));
    request(fd, mode, host, port);
    return 0;
  }
  if (strcmp(mode, "select") == 0) {
    fd_set w;
    FD_ZERO(&w);
    FD_SET(fd, &w);
    struct timeval tv = {30, 0};
    int n = select(fd + 1, NULL, &w, NULL, &tv);
    printf("select=%d writable=%d first_ms=%lld so_error=%s\n", n, FD_ISSET(fd, &w), now_ms() - t0,
           ename(so_error(fd)));
    request(fd, mode, host, port);
    return 0;
  }
  if (strcmp(mode, "again") == 0) {
    struct sockaddr_storage peer;
    socklen_t plen = sizeof peer;
    int pr = getpeername(fd, (struct sockaddr*)&peer, &plen);
    printf("peer_pending=%s\n", pr == 0 ? "0" : ename(errno));
    int r2 = connect(fd, ai->ai_addr, ai->ai_addrlen);
    printf("second=%s\n", r2 == 0 ? "0" : ename(errno));
    wait_out(fd, 30000);
    printf("so_error=%s\n", ename(so_error(fd)));
    int r3 = connect(fd, ai->ai_addr, ai->ai_addrlen);
    printf("third=%s\n", r3 == 0 ? "0" : ename(errno));
    plen = sizeof peer;
    pr = getpeername(fd, (struct sockaddr*)&peer, &plen);
    // The address the program connected to (the name's fake address), not the proxy's.
    printf("peer_is_target=%d\n",
           pr == 0 && plen == ai->ai_addrlen && memcmp(&peer, ai->ai_addr, plen) == 0);
    request(fd, mode, host, port);
    return 0;
  }
  if (strcmp(mode, "close") == 0) {
    usleep(300 * 1000);  // the handshake has sent the request by then
    close(fd);
    sleep(3);
    printf("closed=1\n");
    return 0;
  }
  if (inherit) {
    char fdtext[16];
    snprintf(fdtext, sizeof fdtext, "%d", fd);
    execl("/proc/self/exe", argv[0], "exec-child", host, port, fdtext, (char*)NULL);
    printf("exec=%s\n", ename(errno));
    return 1;
  }
  if (strcmp(mode, "fork") == 0) {
    pid_t pid = fork();
    if (pid == 0) {
      int w = wait_out(fd, 30000);
      printf("child_poll=%d child_so_error=%s child_ms=%lld\n", w, ename(so_error(fd)),
             now_ms() - t0);
      _exit(0);
    }
    int w = wait_out(fd, 30000);
    printf("parent_poll=%d parent_so_error=%s parent_ms=%lld\n", w, ename(so_error(fd)),
           now_ms() - t0);
    int st;
    waitpid(pid, &st, 0);
    request(fd, mode, host, port);
    return 0;
  }
  printf("unknown mode\n");
  return 2;
}
