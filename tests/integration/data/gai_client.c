/* getaddrinfo + connect + GET /ARGV3 from ARGV1:ARGV2; prints the answer's body. TFO=1: the
 * connect rides on sendto(MSG_FASTOPEN); RAW=1: connect by syscall(SYS_connect). Linked
 * statically by the strict-mode tests (a program the shim cannot cover). */
#include <netdb.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(int argc, char** argv) {
  if (getenv("PRINT_ARGV0")) printf("argv0=%s\n", argv[0]);
  struct addrinfo hints = {0}, *res;
  hints.ai_socktype = SOCK_STREAM;
  int e = getaddrinfo(argv[1], argv[2], &hints, &res);
  if (e) { fprintf(stderr, "getaddrinfo: %s\n", gai_strerror(e)); return 2; }
  int fd = socket(res->ai_family, SOCK_STREAM, 0);
  char req[256];
  snprintf(req, sizeof req, "GET /%s HTTP/1.0\r\nHost: %s\r\n\r\n", argv[3], argv[1]);
  if (getenv("TFO")) {  /* TCP Fast Open: the connect rides on the first send */
    if (sendto(fd, req, strlen(req), MSG_FASTOPEN, res->ai_addr, res->ai_addrlen) < 0) {
      perror("sendto");
      return 1;
    }
  } else {
    /* RAW=1: the system call itself, as Go and io-heavy runtimes make it */
    int r = getenv("RAW") ? (int)syscall(SYS_connect, fd, res->ai_addr, res->ai_addrlen)
                          : connect(fd, res->ai_addr, res->ai_addrlen);
    if (r) { perror("connect"); return 1; }
    write(fd, req, strlen(req));
  }
  char buf[1024];
  int n = read(fd, buf, sizeof buf - 1);
  if (n <= 0) return 1;
  buf[n] = 0;
  char* body = strstr(buf, "\r\n\r\n");
  printf("%s\n", body ? body + 4 : buf);
  return 0;
}
