// SAM v3 (https://geti2p.net/en/docs/api/samv3): a strict reply-line parser, command builders,
// the mapping of RESULT values to errnos, I2P base64/base32 helpers, and the line-based
// handshakes the broker runs on a socket to the SAM bridge (pure state machines, no I/O).
//
// i2pd 2.45 facts these follow (../shared/notes/i2p-lab.md): only HELLO may come first; an
// unknown command closes the socket (so no PING); STREAM STATUS RESULT=OK on CONNECT means the
// lease set was found, not that the peer answered; failed lookups answer INVALID_KEY.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status.h"
#include "overlays/handshake.h"

namespace via::overlays::sam {

// Longest reply line accepted, '\n' included. A SESSION STATUS carrying a private key with a
// post-quantum or large certificate stays well below this.
constexpr size_t kMaxLine = 8192;

// One reply line: "TOPIC SUBTOPIC KEY=VALUE KEY=\"quoted value\" ...".
struct Reply {
  std::string topic;     // "HELLO", "SESSION", "STREAM", "NAMING", "DEST"
  std::string subtopic;  // "REPLY", "STATUS"
  std::vector<std::pair<std::string, std::string>> pairs;  // in order, values unquoted

  // The value of `key`, or nullptr.
  const std::string* Get(std::string_view key) const;
  std::string Result() const;  // RESULT's value, "" if absent
};

// Parses exactly one line, without its '\n'. Strict: printable ASCII only; single spaces between
// tokens; TOPIC and SUBTOPIC of capital letters; KEY=VALUE pairs with keys of letters, digits,
// '.', '_', '-'; a value is bare (no space, no '"') or quoted with \" and \\ escapes; no key
// twice. Errors (EPROTO) name the problem and the column.
Result<Reply> ParseReply(std::string_view line);

// The errno for a RESULT value: OK 0, CANT_REACH_PEER/PEER_NOT_FOUND EHOSTUNREACH,
// INVALID_KEY/KEY_NOT_FOUND ENXIO, TIMEOUT ETIMEDOUT, DUPLICATED_ID/DUPLICATED_DEST EADDRINUSE,
// INVALID_ID ENETRESET, NOVERSION EPROTONOSUPPORT, ALREADY_ACCEPTING EBUSY, I2P_ERROR
// ECONNABORTED, anything else EPROTO.
int ResultToErrno(std::string_view result);

// Checks that `r` is "<topic> <subtopic>" with RESULT=OK. Otherwise an error with the errno of
// its RESULT and a message quoting the whole line: `SAM <what> failed: "<line>"`.
Status Expect(const Reply& r, std::string_view line, std::string_view topic,
              std::string_view subtopic, std::string_view what);

// ---- commands (each ends with '\n') --------------------------------------------------------
// A token that goes into a command: letters, digits and "._-~=+/," with no space, '"' or
// control character. Builders refuse anything else (EINVAL), so a value can never inject a
// second command or pair.
bool IsSafeToken(std::string_view s);

std::string Hello();  // "HELLO VERSION MIN=3.1 MAX=3.3\n" (i2pd answers 3.1)
// STYLE=STREAM; `destination` is "TRANSIENT" or base64 private keys; SIGNATURE_TYPE=7 (EdDSA)
// unless `options` sets one; then every option as KEY=VALUE.
Result<std::string> SessionCreate(std::string_view id, std::string_view destination,
                                  const std::vector<std::pair<std::string, std::string>>& options);
Result<std::string> StreamConnect(std::string_view id, std::string_view destination);
Result<std::string> StreamAccept(std::string_view id);
Result<std::string> StreamForward(std::string_view id, uint16_t port);
Result<std::string> NamingLookup(std::string_view name);
std::string DestGenerate();  // SIGNATURE_TYPE=7

// ---- I2P encodings ---------------------------------------------------------------------------
// I2P's base64 alphabet: A-Z a-z 0-9 '-' '~', '=' padding. False on any other character or bad
// padding.
bool DecodeBase64(std::string_view in, std::string* out);
// The public destination inside a base64 destination or private-key blob: 384 bytes of keys,
// then a certificate (type, 2-byte length, payload). EINVAL if it is not one.
Result<std::string> PublicDestination(std::string_view base64);
// "<52 base32 chars>.b32.i2p": base32 (lowercase, unpadded) of SHA-256 of the binary public
// destination of `base64` (a destination or private keys).
Result<std::string> B32Address(std::string_view base64);
// Whether `name` is a .i2p name the SAM bridge should resolve (ends in ".i2p").
bool IsI2pName(std::string_view name);

// ---- handshakes ------------------------------------------------------------------------------

// A sequence of command → reply steps on one SAM socket, read line by line (LineMode): never a
// byte past the '\n' of the last reply, so what the peer sends next stays in the socket.
class LineHandshake : public Handshake {
 public:
  struct Step {
    std::string command;  // sent as is
    std::string topic, subtopic, what;
  };
  explicit LineHandshake(std::vector<Step> steps);

  std::string_view Output() const override;
  void Consumed(size_t n) override;
  size_t WantRead() const override;
  Status Feed(const uint8_t* data, size_t n) override;
  bool Done() const override { return step_ >= steps_.size() && !failed_; }
  bool LineMode() const override { return true; }

  // The last step's reply (valid once Done()).
  const Reply& last_reply() const { return last_; }

 private:
  std::vector<Step> steps_;
  size_t step_ = 0;
  size_t out_pos_ = 0;
  bool sent_ = false;
  bool failed_ = false;
  std::string line_;
  Reply last_;
};

// HELLO then STREAM CONNECT ID=<id> DESTINATION=<dest> SILENT=false.
Result<std::unique_ptr<Handshake>> NewConnectHandshake(std::string_view id,
                                                       std::string_view destination);
// HELLO then SESSION CREATE (the session's control socket).
Result<std::unique_ptr<LineHandshake>> NewSessionHandshake(
    std::string_view id, std::string_view destination,
    const std::vector<std::pair<std::string, std::string>>& options);
// HELLO then STREAM ACCEPT ID=<id> SILENT=false. The peer's destination line follows later.
Result<std::unique_ptr<Handshake>> NewAcceptHandshake(std::string_view id);

// Parses the line that starts an accepted stream with SILENT=false: the peer's base64
// destination (optionally followed by " FROM_PORT=.. TO_PORT=.."). Returns its .b32.i2p name.
Result<std::string> ParsePeerLine(std::string_view line);

}  // namespace via::overlays::sam
