// The shim's connection to the broker (broker_link.cc): one per thread, opened lazily,
// re-opened after fork or if the program closed or replaced the descriptor. Each call returns 0
// or an errno; `msg` (if given) gets the broker's message. Requests and replies are
// docs/protocol.md.
#pragma once

#include <cstddef>
#include <cstdint>

#include "common/wire.h"
#include "shim/socks5_plan.h"

namespace via::shim {

struct HelloInfo {
  uint32_t flags = 0;
};
int BrokerHello(HelloInfo* info, char* msg, size_t msgcap);
// Whether a HELLO in this process was answered with an overlay or an error (not "direct").
bool BrokerRoutedThisProcess();
// One HELLO on a connection of its own, closed before returning: touches no state of the shim's
// links, waits for no lock and allocates nothing (for exec in a vfork child). Uses VIA_SOCKET,
// the socket path `via broker --ensure` gave this process, or runs it (EnsureBrokerDetached:
// ESRCH when no configuration exists anywhere). 0 with *flags, the broker's ERRNO (with its
// message in `msg`), or an errno of the link. Bounded wait.
int BrokerHelloDetached(uint32_t* flags, char* msg, size_t msgcap);
// `via broker --ensure` found no configuration at all (exit status 3).
bool NoConfigAnywhere();
// Returned by BrokerResolve and BrokerConnect when the broker's answer is "direct" (a route to
// direct, or no route for a direct process; wire::kFlagRouteDirect): resolve the name with the
// system resolver, connect the socket directly. Never an errno.
constexpr int kRouteDirect = 0x7fff0001;
int BrokerConnect(int fd, const wire::Addr& dest, char* msg, size_t msgcap);
// The id of the next request on this thread's link (a Writer is built with it).
uint32_t BrokerNextId();
// A request on this thread's link whose reply carries one descriptor (PROXY_SOCKET): 0 with *m
// (backed by `reply`) and *fd (close-on-exec), or an errno with the reason in `msg` (EPROTO
// when no descriptor came).
int BrokerCallForFd(wire::Writer& w, uint8_t* reply, size_t cap, wire::Message* m, int* fd,
                    char* msg, size_t msgcap);
// A connection to the broker of its own, greeted as this process's, for a caller that keeps a
// request outstanding on it (strict_socket.cc): *fd (close-on-exec, non-blocking, out of the low
// descriptor numbers), or an errno with the reason in `msg`.
int BrokerOpenLink(int* fd, char* msg, size_t msgcap);
// With HELLO flag kFlagRoutes: whether a connect to `addr` must ask the broker, because it lies in
// a route's range (ROUTE_NET), or (`with_fake`) in a fake range. False without routes.
bool RoutesCover(const wire::Addr& addr, bool with_fake);
// With HELLO flag kFlagRoutes: whether a route's name glob matches `name` (any case, a trailing
// dot ignored), so that a direct process asks the broker about this name. False without routes.
bool RouteNamesMatch(const char* name);
// The calling thread's link, greeted: *plan points at its Socks5Plan when the shim may run SOCKS5
// itself, nullptr when sockets go to the broker (CONNECT). 0 or an errno (the link failed).
int BrokerSocks5Plan(const Socks5Plan** plan, char* msg, size_t msgcap);
// Tells the broker how a connect the shim ran itself went (REPORT): `name` (or nullptr: `dest`
// as the program gave it), the errno and message. A success is sent without waiting (and dropped
// if the link is congested); a failure waits until the broker has logged it.
void BrokerReport(const wire::Addr& dest, const char* name, int err, const char* msg);
// Sends the calling thread's count of successful connects now (BrokerReport batches them): for a
// thread that is not the program's (pending_connect.cc), whose count no exit would flush.
void BrokerFlushReports();
// Fills up to `cap` fake addresses for `name` (family 0 any, 4, 6); *count gets how many.
int BrokerResolve(const char* name, int family, wire::Addr* out, int cap, int* count, char* msg,
                  size_t msgcap);
// Name of a fake address; ENOENT if `addr` is not one.
int BrokerReverse(const wire::Addr& addr, char* name, size_t namecap);
// LISTEN (docs/protocol.md): `pass_fd` is the broker's end of the listener's socketpair, `bound`
// what the program bound. *flags gets the reply's FLAGS, `address` the overlay address (or "").
int BrokerListen(int pass_fd, const wire::Addr& bound, uint32_t* flags, char* address,
                 size_t addrcap, char* msg, size_t msgcap);

// A DNS query the program sent itself, answered by the broker from its fake-address table.
// *answer_len = 0 when the broker sends no answer (a malformed packet it drops).
constexpr size_t kMaxDnsQuery = 4096;
int BrokerDnsQuery(const void* query, size_t n, uint8_t* answer, size_t cap, size_t* answer_len,
                   char* msg, size_t msgcap);

// A loopback UDP responder in the broker, connected to the program's socket bound at `local`,
// that answers the DNS queries that socket sends it (even by raw system calls).
int BrokerDnsSocket(const wire::Addr& local, wire::Addr* responder, char* msg, size_t msgcap);

}  // namespace via::shim
