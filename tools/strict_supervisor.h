// Strict mode's supervisor (tools/strict.h): `via run`'s side of the sandbox. It holds the
// seccomp listener and the namespace's resolver socket, and serves the command's calls:
//   strict_supervisor.cc  the notification workers, connect (placing host sockets), REPORT
//   strict_names.cc       the resolver socket (DNS_QUERY, RESOLVE answers and their names)
//   strict_listen.cc      listen/accept/getsockname: listeners served by the overlay (LISTEN)
//   strict_audit.cc       --audit: what would have left outside the overlay
// Its threads may outlive the command by a moment: it is never freed (strict.cc).
#pragma once

#include <linux/seccomp.h>
#include <sys/socket.h>
#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/kernel_sockaddr.h"
#include "common/socks5_plan.h"
#include "common/status.h"
#include "common/unique_fd.h"
#include "common/wire.h"
#include "tools/broker_client.h"
#include "tools/strict_proc.h"

namespace via::tools::strict {

class Supervisor {
 public:
  // `fake_nets`: the configuration's fake-address ranges, for a HELLO that sends none.
  Supervisor(UniqueFd listener, UniqueFd dns, std::string socket, std::string token, bool quiet,
             bool audit, bool listeners, std::vector<wire::Addr> fake_nets);

  // The first broker connection: its HELLO reply says how loopback destinations go. False,
  // with *why, when the session cannot be served (no overlay, no broker).
  bool Start(std::string* why);

  // Serves until `command` exits and, after it, every process it left in the sandbox (orphans
  // re-parented to via run, the subreaper; reaped as they exit); the command's wait status.
  int Run(pid_t command);

  const std::string& network() const { return network_; }

  // --audit: what would have left outside the overlay, by process, at the command's exit.
  void Report(const std::string& network);

 private:
  // How one process's connects go: the session's network, or the one a program rule gives it
  // (STRICT_PROCESS, then HELLO: strict_routes.cc).
  struct Route {
    std::string network;
    uint32_t flags = 0;              // of its HELLO reply (wire::kFlag*)
    std::optional<Socks5Plan> plan;  // SOCKS5 without the broker, when the HELLO allows it
  };
  using RoutePtr = std::shared_ptr<const Route>;

  // ---- strict_supervisor.cc: workers, connect, REPORT
  // A broker connection greeted as the session's opener (HELLO with the token); for `pid` != 0
  // then greeted again for that process of the session (STRICT_PROCESS).
  Result<BrokerClient> Open(pid_t pid = 0, std::string* network = nullptr);
  // A connection of the pool for `route`'s network, or a new one greeted for `pid`.
  Result<BrokerClient> Take(const Route& route, pid_t pid);
  void Give(const Route& route, BrokerClient c);
  // Sends `w` on `c` past BrokerClient (for the requests it has no call for) and waits for the
  // reply with the same id, at most `timeout_ms`: its ERRNO (0 or the error) with *msg, and the
  // reply in *m (backed by *buf).
  static int RawExchange(BrokerClient& c, const wire::Writer& w, int pass_fd, int timeout_ms,
                         std::vector<uint8_t>* buf, wire::Message* m, std::string* msg);
  uint32_t RawId();
  void Respond(uint64_t id, int err, uint32_t flags = 0);
  // Puts `src` on descriptor `fd` of `pid` (keeping that descriptor's close-on-exec) for
  // notification `id`; false when the notification is gone (the caller went away).
  bool PlaceOn(uint64_t id, int src, pid_t pid, int fd);
  // The kernel runs the call as the program made it, in the program's namespace: only for
  // calls that cannot leave it.
  void Continue(uint64_t id) { Respond(id, 0, SECCOMP_USER_NOTIF_FLAG_CONTINUE); }
  // Whether notification `id` is still waiting (the caller did not go away meanwhile).
  bool StillWaiting(uint64_t id);
  void StartWorker();
  // Run's switch to serving the processes the command left behind (once): says so, and from now
  // on records SIGINT/SIGTERM/SIGHUP for Run to pass on to every process left.
  void ServeLeftBehind();
  void Work();
  void Handle(const seccomp_notif& n);
  void HandleConnect(const seccomp_notif& n);
  // `*spare`: the key of the spare to make once the program has its socket (SpareKey), or "".
  int Connect(int fd, const wire::Addr& a, const RoutePtr& route, pid_t pid, std::string* spare);
  int ConnectSocks5(int fd, const wire::Addr& a, const std::optional<std::string>& name,
                    const RoutePtr& route, pid_t pid, std::string* spare);
  // REPORT of a connect via run handshook itself (as the shim's, docs/protocol.md): failures at
  // once, successes counted and sent in batches (or each, when the broker logs them).
  void ReportConnect(const wire::Addr& a, const std::optional<std::string>& name, int err,
                     const char* msg, const RoutePtr& route, pid_t pid);
  void FlushReports(bool force);
  static void Complain(const std::string& what);

  // ---- strict_spare.cc: a socket connected to the proxy and greeted ahead of the next connect
  // (as the shim's spare, docs/architecture.md "Strict mode"), for the SOCKS5 handshakes via run
  // runs itself. Keyed by network, credentials and family: processes of the session with the
  // same credential share it.
  // The key for `route`'s connects on a socket of `domain`, or "" when they may not use one
  // (no SOCKS5 here, routes, a credential per connect).
  static std::string SpareKey(const Route& route, int domain);
  // Puts a young spare for `key` that the proxy has not closed on our socket `fd`: true, or
  // false (none ready).
  bool TakeSpare(const std::string& key, int fd);
  // Makes the spare for `key` unless one exists or is being made (after a connect was answered,
  // off the program's path; a failure leaves none).
  void RefillSpare(const std::string& key, const Socks5Plan& plan, int domain);

  // ---- strict_routes.cc: which network each process gets
  // The route of process `pid` (cached by pid and executable: an exec may change the rule).
  RoutePtr RouteOf(pid_t pid);
  static RoutePtr RouteFrom(const BrokerClient& c, const std::string& network);

  // ---- strict_names.cc: the namespace's resolver (its own thread: answers_, a_answered_ and
  // dns_client_ are that thread's once Run started it)
  void ServeDns();
  void OnDnsQuery(const char* q, size_t n, const sockaddr_storage& from, socklen_t fl);
  // An A/AAAA answer from RESOLVE (*looked_up: a name was looked up), or nullopt (DNS_QUERY).
  std::optional<std::string> AnswerFromResolve(std::string_view packet, bool* looked_up);
  void Remember(const wire::Addr& fake, const std::string& name, uint32_t hold_ms);
  std::optional<std::string> NameOf(const wire::Addr& fake);

  // ---- strict_listen.cc: listeners through the overlay
  struct Listener {
    wire::Addr bound;  // what the program bound (getsockname answers it)
  };
  void HandleListen(const seccomp_notif& n);
  void HandleAccept(const seccomp_notif& n);
  void HandleGetsockname(const seccomp_notif& n);
  // getpeername on a socket placed for a connect: the destination the program connected to
  // (its fake address for a name), not the proxy's address the kernel would give.
  void HandleGetpeername(const seccomp_notif& n);
  // Remembers, by inode, what a placed socket `host` stands for (`dest`, as the program gave it).
  void RememberPeer(int host, const wire::Addr& dest);
  // The listener whose socketpair end `sock` is (by inode), or nullopt.
  std::optional<Listener> ListenerOf(const CallerSocket& sock);
  // LISTEN for `bound` with `theirs` attached: 0, or an errno with *msg; *flags and *address
  // from the reply.
  int BrokerListen(pid_t pid, int theirs, const wire::Addr& bound, uint32_t* flags,
                   std::string* address, std::string* msg);
  // Waits for one ACCEPTED on `sock` for notification `id`: the connected socket, or an errno
  // (0 when the call went away).
  int ReceiveAccepted(const seccomp_notif& n, int sock, bool nonblocking, UniqueFd* out,
                      wire::Addr* peer);

  // ---- strict_audit.cc
  void AuditSend(const seccomp_notif& n);
  void AuditDestination(pid_t pid, int domain, wire::SockKind kind, wire::AddrCall call,
                        bool fastopen, const char* sa, socklen_t len);
  void Record(pid_t pid, const std::string& what, const std::string& dest);

  UniqueFd listener_, dns_;
  std::string socket_, token_;
  size_t notif_size_ = sizeof(seccomp_notif);
  std::string network_;  // the session's, for messages
  RoutePtr session_;     // the session's route
  std::vector<wire::Addr> fake_nets_;  // HELLO's, else the configuration's
  // The DNS thread's RESOLVE answers by name, while half their promise lasts.
  struct Answer {
    wire::Addr v4, v6;
    int64_t until;
  };
  std::map<std::string, Answer> answers_;
  // "<source sockaddr>\0<name>" -> until when (MonotonicMs) an AAAA from there is the second
  // of glibc's A/AAAA pair (strict_names.cc). The DNS thread's, as answers_.
  std::map<std::string, int64_t> a_answered_;
  bool quiet_;
  bool audit_on_;
  bool serving_left_ = false;  // the command exited; Run serves what it left (main thread)
  bool accept_hooked_;  // the filter takes accept and getsockname (EnterSandbox's `listeners`)
  std::optional<BrokerClient> dns_client_;
  PidfdCache pidfds_;
  static constexpr int kWorkers = 32;
  std::mutex mu_;  // guards the rest
  // Fake address ("198.18.0.5:0") -> its name and until when (MonotonicMs) it may be used.
  std::map<std::string, std::pair<std::string, int64_t>> names_;
  std::map<std::string, int> audit_;        // "pid N EXE: what to where" -> times
  std::map<ino_t, Listener> listeners_;     // by the inode of the program's socketpair end
  // Sockets placed for a connect, by inode: the program's destination, and the peer the kernel
  // knows (the proxy), which a reused inode would not have. At most kMaxPeers (then cleared).
  struct Peer {
    wire::Addr dest, kernel;
  };
  std::map<ino_t, Peer> peers_;
  static constexpr size_t kMaxPeers = 4096;
  std::atomic<bool> has_listeners_{false};  // listeners_ was ever non-empty (read without mu_)
  std::map<std::string, std::vector<BrokerClient>> pools_;  // by network
  std::map<std::string, RoutePtr> routes_;                  // by "pid executable"
  int workers_ = 0, busy_ = 0;
  // Successful connects not yet REPORTed, by network: how many, and a process to greet for.
  struct Unreported {
    RoutePtr route;
    pid_t pid = 0;
    uint32_t count = 0;
  };
  std::map<std::string, Unreported> unreported_;
  std::map<std::string, uint32_t> refused_;  // --audit: refusals by kind not yet REPORTed
  // Spares by SpareKey: the socket (invalid while it is being made) and when it was made.
  struct Spare {
    UniqueFd fd;
    int64_t made_ms = 0;
  };
  std::map<std::string, Spare> spares_;
  static constexpr size_t kMaxSpares = 16;
  int64_t reported_ms_ = 0;   // when they were last
  uint32_t next_raw_id_ = 0;  // ids of requests sent past BrokerClient (see ReportConnect)
};

}  // namespace via::tools::strict
