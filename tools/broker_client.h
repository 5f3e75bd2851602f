// BrokerClient: the command line's side of the wire protocol (docs/protocol.md).
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "common/status.h"
#include "common/unique_fd.h"
#include "common/wire.h"

namespace via::tools {

class BrokerClient {
 public:
  // Connects to the broker socket at `path`.
  static Result<BrokerClient> Connect(const std::string& path);

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
  Result<std::string> OpenSession(const std::string& network, bool explicit_sel = true,
                                  const SessionCommand& command = {},
                                  std::string* effective = nullptr);
  // SESSION_CHILD: `pid` (our child) is the session's command.
  Status SessionChild(const std::string& token, pid_t pid);
  // SESSION_DETACH: we exit; `pids` (our children now) carry the session on.
  Status SessionDetach(const std::string& token, const std::vector<pid_t>& pids);
  // RELOAD: the broker re-reads its config; the error is the config's error if it was rejected.
  Status Reload();
  // The broker's config fingerprint from the last HELLO or RELOAD reply.
  const std::string& fingerprint() const { return fingerprint_; }
  // CONNECT `fd` (our own socket) to name:port through the connection's network.
  Status ConnectByName(int fd, const std::string& name, uint16_t port);
  Result<std::string> StatusText();
  Status Shutdown();

  int fd() const { return fd_.get(); }

 private:
  // Sends `w` (with `pass_fd` attached if >= 0) and waits for the reply into `reply_`.
  Result<wire::Message> Exchange(const wire::Writer& w, int pass_fd = -1);
  static Status ReplyStatus(const wire::Message& m);

  UniqueFd fd_;
  uint32_t next_id_ = 1;
  std::string reply_;
  std::string fingerprint_;
};

}  // namespace via::tools
