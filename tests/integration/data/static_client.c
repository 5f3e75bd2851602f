/* A statically linkable client for the exec guard tests: GET /ARGV2 (default /static) from
 * 127.0.0.1:ARGV1, exit 0 when the target answered. */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
int main(int argc, char** argv) {  /* GET /ARGV2 from 127.0.0.1:ARGV1 */
  struct sockaddr_in a = {0};
  a.sin_family = AF_INET;
  a.sin_port = htons(atoi(argv[1]));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (connect(fd, (struct sockaddr*)&a, sizeof a) != 0) { perror("connect"); return 1; }
  char req[256];
  snprintf(req, sizeof req, "GET /%s HTTP/1.0\r\nHost: static\r\n\r\n", argc > 2 ? argv[2] : "static");
  write(fd, req, strlen(req));
  char buf[64];
  return read(fd, buf, sizeof buf) > 0 ? 0 : 1;
}
