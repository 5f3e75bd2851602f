// BrokerClient: the command line's side of the wire protocol (docs/protocol.md).
#pragma once

#include <string>

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
  // OPEN_SESSION; returns the token.
  Result<std::string> OpenSession(const std::string& network);
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
};

}  // namespace via::tools
