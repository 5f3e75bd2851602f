// A protocol handshake as a pure state machine: no I/O, no clock. The broker's ConnectOp moves
// bytes between the socket and the machine; unit tests feed byte vectors.
//
// Contract:
//  - Output() is what must be written next (possibly empty); call Consumed(n) after writing n.
//  - WantRead() is exactly how many bytes to read next; never read more, because what follows
//    the handshake on the stream belongs to the program. 0 while output is pending or when done.
//  - Feed(p, n) with n <= WantRead() bytes. Returns an error Status (errno + message) on a
//    refusal or a malformed reply; the machine is then finished.
//  - Done() is true after success.
//  - LineMode(): a line-based protocol (SAM). WantRead() is then the most the current line may
//    still take, and the reader passes bytes only up to and including the first '\n' (it peeks
//    first), so bytes after the last reply line stay in the socket for the program.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "common/status.h"
#include "common/wire.h"

namespace via::overlays {

// Where the program wanted to go: a name (from the fake-address table, sent as a name) or an
// address, and a port.
// Who asks, as the broker knows it from the kernel (SO_PEERCRED, /proc) and the session table:
// what SOCKS5 isolation (process, program, session) keys on.
struct Requester {
  pid_t pid = 0;
  uint64_t start = 0;   // the process's start time: (pid, start) names one process
  std::string exe;      // its executable
  std::string session;  // the token of its `via run` session ("" if none)
};

struct Target {
  std::string name;  // non-empty: connect by name
  wire::Addr addr;   // used when name is empty (family 4 or 6)
  uint16_t port = 0;
  Requester who;  // the program the connect (or lookup) is for

  std::string ToString() const;  // "example.test:80", "1.2.3.4:80", "[::1]:80"
};

class Handshake {
 public:
  virtual ~Handshake() = default;
  virtual std::string_view Output() const = 0;
  virtual void Consumed(size_t n) = 0;
  virtual size_t WantRead() const = 0;
  virtual Status Feed(const uint8_t* data, size_t n) = 0;
  virtual bool Done() const = 0;
  virtual bool LineMode() const { return false; }
  // Appended to the message when the handshake times out: what the stall may mean ("" when
  // nothing useful can be said).
  virtual std::string_view StallHint() const { return {}; }
};

// A handshake that asks the overlay for a name's address or an address's name (Tor's RESOLVE
// and RESOLVE_PTR) instead of connecting; it carries its own answer.
class ResolveHandshake : public Handshake {
 public:
  // After Done(): the address a name resolved to (family 0 if none), or the name of an address
  // ("" if none).
  virtual wire::Addr ResolvedAddr() const = 0;
  virtual std::string ResolvedName() const = 0;
};

}  // namespace via::overlays
