/* Socket calls that the kernel accepts in forms a careless parser misses: built and run by
 * tests/integration/test_kernel_parity.py, once without via (the control: each reaches its
 * target) and once under via (each must be routed or refused).
 *
 * usage: parity CASE HOST4 TCP_PORT UDP_PORT IFACE MAC
 * Prints one word: "sent" (a datagram or frame went out), "created" (a socket exists), the
 * HTTP status the target answered ("200"), "answered" (a DNS answer), or the errno's name. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef MSG_FASTOPEN
#define MSG_FASTOPEN 0x20000000
#endif

static const char *host4;
static int tcp_port, udp_port;
static const char *iface, *mac;

static int fail(void) {
  const char *name = strerrorname_np(errno);
  printf("%s\n", name ? name : "error");
  return 0;
}

/* sockaddr_in6 of ::ffff:HOST4 */
static void mapped(struct sockaddr_in6 *s6, int port) {
  memset(s6, 0, sizeof *s6);
  s6->sin6_family = AF_INET6;
  s6->sin6_port = htons(port);
  s6->sin6_addr.s6_addr[10] = s6->sin6_addr.s6_addr[11] = 0xff;
  inet_pton(AF_INET, host4, &s6->sin6_addr.s6_addr[12]);
}

static void in4(struct sockaddr_in *s, sa_family_t family, int port) {
  memset(s, 0, sizeof *s);
  s->sin_family = family;
  s->sin_port = htons(port);
  inet_pton(AF_INET, host4, &s->sin_addr);
}

static char request[256];

/* After a connect (or a Fast Open send of the request): read the HTTP status. */
static int status(int fd, int send_request) {
  if (send_request && write(fd, request, strlen(request)) < 0) return fail();
  char buf[64] = {0};
  ssize_t n = read(fd, buf, sizeof buf - 1);
  if (n < 12) {
    if (n < 0) return fail();
    printf("short\n");
    return 0;
  }
  buf[12] = 0;
  printf("%s\n", buf + 9);
  return 0;
}

static int udp_send(const char *how, int domain, struct sockaddr *sa, socklen_t len,
                    const char *payload) {
  int fd = socket(domain, SOCK_DGRAM, 0);
  struct iovec iov = {(void *)payload, strlen(payload)};
  struct msghdr mh = {.msg_name = sa, .msg_namelen = len, .msg_iov = &iov, .msg_iovlen = 1};
  ssize_t r;
  if (!strcmp(how, "sendto")) {
    r = sendto(fd, payload, strlen(payload), 0, sa, len);
  } else if (!strcmp(how, "sendmsg")) {
    r = sendmsg(fd, &mh, 0);
  } else {
    struct mmsghdr v = {.msg_hdr = mh};
    int (*f)(int, struct mmsghdr *, unsigned, int) = sendmmsg;
    if (!strcmp(how, "__sendmmsg")) f = dlsym(RTLD_DEFAULT, "__sendmmsg");
    if (f == NULL) {
      printf("nosymbol\n");
      return 0;
    }
    r = f(fd, &v, 1, 0) == 1 ? 1 : -1;
  }
  if (r < 0) return fail();
  printf("sent\n");
  return 0;
}

/* A TCP connection opened by a send with MSG_FASTOPEN that carries the request. */
static int fastopen(const char *how, int domain, struct sockaddr *sa, socklen_t len,
                    const char *data, size_t n) {
  int fd = socket(domain, SOCK_STREAM, 0);
  struct iovec iov = {(void *)data, n};
  struct msghdr mh = {.msg_name = sa, .msg_namelen = len, .msg_iov = &iov, .msg_iovlen = 1};
  ssize_t r;
  if (!strcmp(how, "sendto")) {
    r = sendto(fd, data, n, MSG_FASTOPEN, sa, len);
  } else if (!strcmp(how, "sendmsg")) {
    r = sendmsg(fd, &mh, MSG_FASTOPEN);
  } else {
    struct mmsghdr v = {.msg_hdr = mh};
    r = sendmmsg(fd, &v, 1, MSG_FASTOPEN) == 1 ? (ssize_t)v.msg_len : -1;
  }
  if (r < 0) return fail();
  return fd;
}

/* An IPv4/UDP packet to HOST4:UDP_PORT carrying `payload`, in `out`; returns its length. */
static size_t ip_udp(uint8_t *out, const char *payload) {
  size_t plen = strlen(payload), total = 20 + 8 + plen;
  memset(out, 0, total);
  out[0] = 0x45;
  out[2] = total >> 8, out[3] = total & 0xff;
  out[8] = 64, out[9] = IPPROTO_UDP;
  inet_pton(AF_INET, "10.217.0.2", out + 12);
  inet_pton(AF_INET, host4, out + 16);
  uint32_t sum = 0;
  for (int i = 0; i < 20; i += 2) sum += (out[i] << 8) | out[i + 1];
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  sum = ~sum & 0xffff;
  out[10] = sum >> 8, out[11] = sum & 0xff;
  out[20] = 0x30, out[21] = 0x39; /* source port 12345 */
  out[22] = udp_port >> 8, out[23] = udp_port & 0xff;
  out[24] = (8 + plen) >> 8, out[25] = (8 + plen) & 0xff; /* checksum 0: none */
  memcpy(out + 28, payload, plen);
  return total;
}

static int packet(const char *how, const char *payload) {
  int (*sock)(int, int, int) = socket;
  if (!strcmp(how, "__socket")) sock = dlsym(RTLD_DEFAULT, "__socket");
  uint8_t frame[1500];
  unsigned m[6];
  sscanf(mac, "%x:%x:%x:%x:%x:%x", &m[0], &m[1], &m[2], &m[3], &m[4], &m[5]);
  if (!strcmp(how, "sock_packet")) {
    /* The obsolete (AF_INET, SOCK_PACKET): a packet socket that sends whole frames. */
    int fd = socket(AF_INET, SOCK_PACKET, htons(ETH_P_IP));
    if (fd < 0) return fail();
    for (int i = 0; i < 6; ++i) frame[i] = m[i];
    memset(frame + 6, 0x02, 6);
    frame[12] = 0x08, frame[13] = 0x00;
    size_t n = 14 + ip_udp(frame + 14, payload);
    struct sockaddr sp = {.sa_family = AF_PACKET};
    strncpy(sp.sa_data, iface, sizeof sp.sa_data);
    if (sendto(fd, frame, n, 0, &sp, sizeof sp) < 0) return fail();
    printf("sent\n");
    return 0;
  }
  int fd = sock(AF_PACKET, SOCK_DGRAM, htons(ETH_P_IP));
  if (fd < 0) return fail();
  struct sockaddr_ll ll = {.sll_family = AF_PACKET,
                           .sll_protocol = htons(ETH_P_IP),
                           .sll_ifindex = (int)if_nametoindex(iface),
                           .sll_halen = 6};
  for (int i = 0; i < 6; ++i) ll.sll_addr[i] = m[i];
  size_t n = ip_udp(frame, payload);
  if (sendto(fd, frame, n, 0, (struct sockaddr *)&ll, sizeof ll) < 0) return fail();
  printf("sent\n");
  return 0;
}

/* A DNS query over TCP for NAME (A), with its two-byte length, in `out`. */
static size_t dns_tcp_query(uint8_t *out, const char *name) {
  uint8_t *p = out + 2;
  static const uint8_t head[12] = {0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0};
  memcpy(p, head, 12);
  p += 12;
  for (const char *s = name; *s;) {
    const char *dot = strchr(s, '.');
    size_t l = dot ? (size_t)(dot - s) : strlen(s);
    *p++ = (uint8_t)l;
    memcpy(p, s, l);
    p += l;
    s += l + (dot ? 1 : 0);
  }
  *p++ = 0;
  *p++ = 0, *p++ = 1, *p++ = 0, *p++ = 1;
  size_t n = p - out - 2;
  out[0] = n >> 8, out[1] = n & 0xff;
  return n + 2;
}

int main(int argc, char **argv) {
  if (argc < 7) {
    fprintf(stderr, "usage: parity CASE HOST4 TCP_PORT UDP_PORT IFACE MAC\n");
    return 2;
  }
  const char *c = argv[1];
  host4 = argv[2], tcp_port = atoi(argv[3]), udp_port = atoi(argv[4]);
  iface = argv[5], mac = argv[6];
  snprintf(request, sizeof request, "GET /%s HTTP/1.0\r\nHost: far\r\n\r\n", c);
  struct sockaddr_in s4;
  struct sockaddr_in6 s6;
  unsigned char big[300] = {0};

  /* ---- UDP: the kernel sends these to HOST4 ---- */
  if (!strncmp(c, "udp6_24_", 8)) { /* IPv6 sockaddr of 24 bytes, v4-mapped */
    mapped(&s6, udp_port);
    return udp_send(c + 8, AF_INET6, (struct sockaddr *)&s6, 24, c);
  }
  if (!strncmp(c, "udp_unspec_", 11)) { /* sin_family = AF_UNSPEC: IPv4 to the kernel */
    in4(&s4, AF_UNSPEC, udp_port);
    return udp_send(c + 11, AF_INET, (struct sockaddr *)&s4, sizeof s4, c);
  }
  if (!strncmp(c, "udp6_in4_", 9)) { /* a sockaddr_in on an IPv6 socket: IPv4 to the kernel */
    in4(&s4, AF_INET, udp_port);
    return udp_send(c + 9, AF_INET6, (struct sockaddr *)&s4, sizeof s4, c);
  }
  if (!strcmp(c, "udp_sendmsg_oversize")) { /* msg_namelen 300: the kernel takes 128 */
    in4((struct sockaddr_in *)big, AF_INET, udp_port);
    return udp_send("sendmsg", AF_INET, (struct sockaddr *)big, sizeof big, c);
  }
  if (!strcmp(c, "udp_alias___sendmmsg")) {
    in4(&s4, AF_INET, udp_port);
    return udp_send("__sendmmsg", AF_INET, (struct sockaddr *)&s4, sizeof s4, c);
  }

  /* ---- TCP to HOST4: must be routed (the target then sees the proxy) ---- */
  if (!strcmp(c, "tcp6_24_connect")) {
    int fd = socket(AF_INET6, SOCK_STREAM, 0);
    mapped(&s6, tcp_port);
    if (connect(fd, (struct sockaddr *)&s6, 24) != 0) return fail();
    return status(fd, 1);
  }
  if (!strcmp(c, "tcp_connect_128")) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    in4((struct sockaddr_in *)big, AF_INET, tcp_port);
    if (connect(fd, (struct sockaddr *)big, 128) != 0) return fail();
    return status(fd, 1);
  }
  if (!strcmp(c, "tcp_alias___connect")) {
    int (*f)(int, const struct sockaddr *, socklen_t) = dlsym(RTLD_DEFAULT, "__connect");
    if (f == NULL) {
      printf("nosymbol\n");
      return 0;
    }
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    in4(&s4, AF_INET, tcp_port);
    if (f(fd, (struct sockaddr *)&s4, sizeof s4) != 0) return fail();
    return status(fd, 1);
  }
  if (!strncmp(c, "tfo_", 4)) { /* tfo_sendto, tfo_sendmsg, tfo_sendmmsg, tfo6_24_sendmsg */
    in4(&s4, AF_INET, tcp_port);
    int fd = fastopen(c + 4, AF_INET, (struct sockaddr *)&s4, sizeof s4, request, strlen(request));
    return fd > 0 ? status(fd, 0) : 0;
  }
  if (!strcmp(c, "tfo6_24_sendmsg")) {
    mapped(&s6, tcp_port);
    int fd = fastopen("sendmsg", AF_INET6, (struct sockaddr *)&s6, 24, request, strlen(request));
    return fd > 0 ? status(fd, 0) : 0;
  }

  /* ---- TCP Fast Open to the local resolver (127.0.0.1:53): refused ---- */
  if (!strncmp(c, "dns_tfo_", 8)) {
    uint8_t q[300];
    char name[64];
    snprintf(name, sizeof name, "%s.example.test", c);
    for (char *p = name; *p; ++p)
      if (*p == '_') *p = '-';
    size_t n = dns_tcp_query(q, name);
    struct sockaddr_in lo = {.sin_family = AF_INET, .sin_port = htons(53)};
    lo.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = fastopen(c + 8, AF_INET, (struct sockaddr *)&lo, sizeof lo, (char *)q, n);
    if (fd <= 0) return 0;
    uint8_t a[512];
    ssize_t r = read(fd, a, sizeof a);
    if (r < 0) return fail();
    printf(r > 2 ? "answered\n" : "short\n");
    return 0;
  }

  /* ---- a raw UDP socket writes its own ports: 127.0.0.1 "port 9" is the resolver's 53 ---- */
  if (!strcmp(c, "dns_raw_udp")) {
    int fd = socket(AF_INET, SOCK_RAW, IPPROTO_UDP);
    if (fd < 0) return fail();
    uint8_t pkt[300];
    size_t n = dns_tcp_query(pkt + 6, "dns-raw-udp.example.test") - 2; /* DNS at pkt + 8 */
    pkt[0] = 0x30, pkt[1] = 0x39;                                      /* source port 12345 */
    pkt[2] = 0, pkt[3] = 53;
    pkt[4] = (8 + n) >> 8, pkt[5] = (8 + n) & 0xff;
    pkt[6] = pkt[7] = 0; /* no checksum */
    struct sockaddr_in lo = {.sin_family = AF_INET, .sin_port = htons(9)};
    lo.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (sendto(fd, pkt, 8 + n, 0, (struct sockaddr *)&lo, sizeof lo) < 0) return fail();
    printf("sent\n");
    return 0;
  }

  /* ---- an IPv4 source route: a datagram "to 127.0.0.1" goes to the first hop (HOST4 + 1) ---- */
  if (!strncmp(c, "udp_lsrr_", 9)) { /* udp_lsrr_setsockopt, _syscall, _cmsg */
    uint8_t lsrr[8] = {1 /* NOP */, 0x83 /* LSRR */, 7, 4};
    inet_pton(AF_INET, host4, lsrr + 4);
    lsrr[7] += 1;
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in lo = {.sin_family = AF_INET, .sin_port = htons(9)};
    lo.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    const char *how = c + 9;
    if (!strcmp(how, "setsockopt") || !strcmp(how, "syscall")) {
      /* syscall: the option set where the shim cannot see it; the sendto is still judged */
      int r = !strcmp(how, "syscall")
                  ? (int)syscall(SYS_setsockopt, fd, IPPROTO_IP, IP_OPTIONS, lsrr, sizeof lsrr)
                  : setsockopt(fd, IPPROTO_IP, IP_OPTIONS, lsrr, sizeof lsrr);
      if (r != 0) return fail();
      if (sendto(fd, c, strlen(c), 0, (struct sockaddr *)&lo, sizeof lo) < 0) return fail();
    } else {
      union {
        char buf[CMSG_SPACE(sizeof lsrr)];
        struct cmsghdr align;
      } ctl;
      memset(&ctl, 0, sizeof ctl);
      struct iovec iov = {(void *)c, strlen(c)};
      struct msghdr mh = {.msg_name = &lo,
                          .msg_namelen = sizeof lo,
                          .msg_iov = &iov,
                          .msg_iovlen = 1,
                          .msg_control = ctl.buf,
                          .msg_controllen = sizeof ctl.buf};
      struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
      cm->cmsg_level = IPPROTO_IP;
      cm->cmsg_type = IP_RETOPTS;
      cm->cmsg_len = CMSG_LEN(sizeof lsrr);
      memcpy(CMSG_DATA(cm), lsrr, sizeof lsrr);
      if (sendmsg(fd, &mh, 0) < 0) return fail();
    }
    printf("sent\n");
    return 0;
  }

  /* ---- packet sockets: reach the wire without any inet address ---- */
  if (!strncmp(c, "packet_", 7)) return packet(c + 7, c); /* socket, __socket, sock_packet */

  fprintf(stderr, "unknown case %s\n", c);
  return 2;
}
