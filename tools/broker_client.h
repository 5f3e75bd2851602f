// BrokerClient: the command line's side of the wire protocol (docs/protocol.md): the requests
// and what their replies mean, on one connection. Sending and waiting for replies is
// wire::RequestClient (common/request_client.h), the same client as the shim's.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "common/request_client.h"
#include "common/socks5_plan.h"
#include "common/status.h"
#include "common/unique_fd.h"
#include "common/wire.h"

namespace via::tools {

class BrokerClient {
 public:
  // Deadlines (docs/protocol.md, "Deadlines"): the connect and every request end within
  // kQuickMs (ETIMEDOUT and a message naming the broker), CONNECT within kQuickMs plus the
  // WAIT_MS of the HELLO reply. A stopped or stuck broker gives an error, never a hang.
  static constexpr int kQuickMs = 10000;

  // Connects to the broker socket at `path`; a full backlog is retried until `timeout_ms`.
  static Result<BrokerClient> Connect(const std::string& path, int timeout_ms = kQuickMs);

  // HELLO selecting `network` ("" = the session's or the default). Returns the effective network.
  Result<std::string> Hello(const std::string& network, const std::string& session = "");
  // HELLO for a control connection (status, stop, reload, opening sessions): no network.
  Status HelloControl();
  // OPEN_SESSION for a command about to be started: `network` ("" = let the broker decide),
  // `explicit_sel` when the user gave --network/--direct. Returns the token; *effective gets the
  // session's network.
  struct SessionCommand {
    std::string exe;
    std::vector<std::string> argv;
  };
  // `routes`: `via run --route` specs, in order (checked by the broker, policy included).
  Result<std::string> OpenSession(const std::string& network, bool explicit_sel = true,
                                  const SessionCommand& command = {},
                                  std::string* effective = nullptr,
                                  const std::vector<std::string>& routes = {});
  // SESSION_CHILD: `pid` (our child) is the session's command; `flags`: kFlagSessionStrict,
  // kFlagSessionAudit (how it runs, for `via status`).
  Status SessionChild(const std::string& token, pid_t pid, uint32_t flags = 0);
  // SESSION_DETACH: we exit; `pids` (our children now) carry the session on.
  Status SessionDetach(const std::string& token, const std::vector<pid_t>& pids);
  // RELOAD: the broker re-reads its config; the error is the config's error if it was rejected.
  Status Reload();
  // NEWNYM: new credentials for later connects through `network` ("" = every overlay that has
  // them). The broker's report, one line per overlay; *renewed gets how many started anew.
  Result<std::string> Newnym(const std::string& network, uint32_t* renewed);
  // The broker's config fingerprint from the last HELLO or RELOAD reply.
  const std::string& fingerprint() const { return fingerprint_; }
  // CONNECT `fd` (our own socket) to name:port through the connection's network.
  Status ConnectByName(int fd, const std::string& name, uint16_t port);
  // CONNECT `fd` to `addr` (a fake address stands for its name).
  Status ConnectAddr(int fd, const wire::Addr& addr);
  // RESOLVE of `name` (both families): its addresses (IPv4 first) and, in *hold_ms, how long
  // the broker promises not to give them to another name (0: no promise).
  Result<std::vector<wire::Addr>> Resolve(const std::string& name, uint32_t* hold_ms);
  // DNS_QUERY: the broker's answer to one DNS query ("" when it gives none).
  Result<std::string> DnsQuery(const void* packet, size_t len);
  // FLAGS of the last HELLO reply (wire::kFlag*).
  uint32_t hello_flags() const { return hello_flags_; }
  // The fake-address ranges of the last HELLO reply (FAKE_NET: the port field is the prefix
  // length), when it gave them.
  const std::vector<wire::Addr>& fake_nets() const { return fake_nets_; }
  // The last HELLO reply's plan for running SOCKS5 without the broker (kFlagShimSocks5), or
  // nullptr.
  const Socks5Plan* socks5_plan() const { return has_plan_ ? &plan_ : nullptr; }
  Result<std::string> StatusText();
  // STATUS with kFlagStatusJson: the broker's status as one JSON object (docs/json.md).
  Result<std::string> StatusJson();
  Status Shutdown();

  int fd() const { return fd_.get(); }

 private:
  // Sends `w` (with `pass_fd` attached if >= 0) and waits for the reply into `reply_`, at most
  // `timeout_ms` (kQuickMs when < 0).
  Result<wire::Message> Exchange(const wire::Writer& w, int pass_fd = -1, int64_t timeout_ms = -1);
  static Status ReplyStatus(const wire::Message& m);
  // The error for a broker that did not answer within `ms`.
  Status NoAnswer(int64_t ms) const;

  UniqueFd fd_;
  std::string path_;
  pid_t broker_pid_ = 0;      // SO_PEERCRED
  int64_t wait_ms_ = 180000;  // HELLO's WAIT_MS
  wire::RequestClient rpc_;   // on fd_
  std::vector<uint8_t> reply_;
  std::string fingerprint_;
  uint32_t hello_flags_ = 0;
  std::vector<wire::Addr> fake_nets_;
  Socks5Plan plan_{};
  bool has_plan_ = false;
};

}  // namespace via::tools
