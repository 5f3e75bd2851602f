#include "overlays/i2p/sam.h"

#include <openssl/sha.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

namespace via::overlays::sam {

namespace {

bool IsUpper(char c) { return c >= 'A' && c <= 'Z'; }
bool IsKeyChar(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '_' || c == '-';
}

Status Malformed(size_t col, const std::string& what) {
  return Status::Error(EPROTO,
                       "malformed SAM reply (column " + std::to_string(col + 1) + "): " + what);
}

// A line shown in a message: printable, and cut after 200 characters.
std::string Shown(std::string_view line) {
  std::string out;
  for (char c : line.substr(0, 200)) {
    unsigned char u = static_cast<unsigned char>(c);
    if (u < 0x20 || u >= 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", u);
      out += buf;
    } else {
      out += c;
    }
  }
  if (line.size() > 200) out += "...";
  return out;
}

}  // namespace

const std::string* Reply::Get(std::string_view key) const {
  for (const auto& [k, v] : pairs) {
    if (k == key) return &v;
  }
  return nullptr;
}

std::string Reply::Result() const {
  const std::string* r = Get("RESULT");
  return r == nullptr ? "" : *r;
}

Result<Reply> ParseReply(std::string_view line) {
  if (line.empty()) return Malformed(0, "empty line");
  if (line.size() >= kMaxLine) {
    return Malformed(kMaxLine, "longer than " + std::to_string(kMaxLine - 1) + " bytes");
  }
  for (size_t i = 0; i < line.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(line[i]);
    if (c < 0x20 || c >= 0x7f) {
      char buf[48];
      std::snprintf(buf, sizeof buf, "byte 0x%02x is not printable ASCII", c);
      return Malformed(i, buf);
    }
  }
  Reply r;
  size_t i = 0;
  // TOPIC and SUBTOPIC.
  for (std::string* word : {&r.topic, &r.subtopic}) {
    size_t start = i;
    while (i < line.size() && IsUpper(line[i])) ++i;
    if (i == start) {
      return Malformed(i, word == &r.topic ? "expected a topic of capital letters"
                                           : "expected a subtopic of capital letters");
    }
    *word = std::string(line.substr(start, i - start));
    if (word == &r.topic) {
      if (i == line.size()) return Malformed(i, "the subtopic is missing");
      if (line[i] != ' ') return Malformed(i, "expected a space after the topic");
      ++i;
    }
  }
  while (i < line.size()) {
    if (line[i] != ' ') return Malformed(i, "expected a space before the next KEY=VALUE");
    ++i;
    size_t start = i;
    while (i < line.size() && IsKeyChar(line[i])) ++i;
    if (i == start) {
      return Malformed(i, i == line.size() ? "trailing space" : "expected a key");
    }
    std::string key(line.substr(start, i - start));
    if (i == line.size() || line[i] != '=') return Malformed(i, "key " + key + " has no '='");
    ++i;
    std::string value;
    if (i < line.size() && line[i] == '"') {
      size_t open = i++;
      bool closed = false;
      while (i < line.size()) {
        char c = line[i++];
        if (c == '"') {
          closed = true;
          break;
        }
        if (c == '\\') {
          if (i == line.size()) break;
          char e = line[i++];
          if (e != '"' && e != '\\')
            return Malformed(i - 1, "unknown escape \\" + std::string(1, e));
          c = e;
        }
        value += c;
      }
      if (!closed) return Malformed(open, "unterminated quoted value of " + key);
      if (i < line.size() && line[i] != ' ') {
        return Malformed(i, "expected a space after the quoted value of " + key);
      }
    } else {
      size_t vstart = i;
      while (i < line.size() && line[i] != ' ') {
        if (line[i] == '"') return Malformed(i, "a quote inside the value of " + key);
        ++i;
      }
      value = std::string(line.substr(vstart, i - vstart));
    }
    if (r.Get(key) != nullptr) return Malformed(start, "key " + key + " given twice");
    r.pairs.emplace_back(std::move(key), std::move(value));
  }
  return r;
}

int ResultToErrno(std::string_view result) {
  struct Entry {
    const char* name;
    int err;
  };
  static const Entry kTable[] = {
      {"OK", 0},
      {"CANT_REACH_PEER", EHOSTUNREACH},
      {"PEER_NOT_FOUND", EHOSTUNREACH},
      {"INVALID_KEY", ENXIO},
      {"KEY_NOT_FOUND", ENXIO},
      {"TIMEOUT", ETIMEDOUT},
      {"DUPLICATED_ID", EADDRINUSE},
      {"DUPLICATED_DEST", EADDRINUSE},
      {"INVALID_ID", ENETRESET},
      {"NOVERSION", EPROTONOSUPPORT},
      {"ALREADY_ACCEPTING", EBUSY},
      {"I2P_ERROR", ECONNABORTED},
  };
  for (const Entry& e : kTable) {
    if (result == e.name) return e.err;
  }
  return EPROTO;
}

Status Expect(const Reply& r, std::string_view line, std::string_view topic,
              std::string_view subtopic, std::string_view what) {
  const std::string quoted = "\"" + Shown(line) + "\"";
  if (r.topic != topic || r.subtopic != subtopic) {
    return Status::Error(EPROTO, "SAM " + std::string(what) + ": expected " + std::string(topic) +
                                     " " + std::string(subtopic) + ", got " + quoted);
  }
  const std::string* result = r.Get("RESULT");
  if (result == nullptr) {
    return Status::Error(EPROTO, "SAM " + std::string(what) + ": no RESULT in " + quoted);
  }
  int err = ResultToErrno(*result);
  if (err == 0) return Status::Ok();
  return Status::Error(err, "SAM " + std::string(what) + " failed: " + quoted);
}

// ---- commands --------------------------------------------------------------------------------

bool IsSafeToken(std::string_view s) {
  if (s.empty() || s.size() > 4096) return false;
  for (char c : s) {
    if (!IsKeyChar(c) && std::strchr("~=+/,:@", c) == nullptr) return false;
  }
  return true;
}

namespace {

Status Unsafe(std::string_view field, std::string_view value) {
  return Status::Invalid("SAM: " + std::string(field) + " " + "\"" + Shown(value) +
                         "\" cannot be sent (empty, too long, or a space, quote or control "
                         "character in it)");
}

}  // namespace

std::string Hello() { return "HELLO VERSION MIN=3.1 MAX=3.3\n"; }

Result<std::string> SessionCreate(std::string_view id, std::string_view destination,
                                  const std::vector<std::pair<std::string, std::string>>& options) {
  if (!IsSafeToken(id)) return Unsafe("ID", id);
  if (!IsSafeToken(destination)) return Unsafe("DESTINATION", destination);
  std::string out = "SESSION CREATE STYLE=STREAM ID=" + std::string(id) +
                    " DESTINATION=" + std::string(destination);
  bool sig = false;
  for (const auto& [k, v] : options) sig = sig || k == "SIGNATURE_TYPE";
  if (!sig) out += " SIGNATURE_TYPE=7";
  for (const auto& [k, v] : options) {
    if (!IsSafeToken(k) || k.find('=') != std::string::npos) return Unsafe("option", k);
    if (!IsSafeToken(v)) return Unsafe("option " + k, v);
    out += " " + k + "=" + v;
  }
  return out + "\n";
}

Result<std::string> StreamConnect(std::string_view id, std::string_view destination) {
  if (!IsSafeToken(id)) return Unsafe("ID", id);
  if (!IsSafeToken(destination)) return Unsafe("DESTINATION", destination);
  return "STREAM CONNECT ID=" + std::string(id) + " DESTINATION=" + std::string(destination) +
         " SILENT=false\n";
}

Result<std::string> StreamAccept(std::string_view id) {
  if (!IsSafeToken(id)) return Unsafe("ID", id);
  return "STREAM ACCEPT ID=" + std::string(id) + " SILENT=false\n";
}

Result<std::string> StreamForward(std::string_view id, uint16_t port) {
  if (!IsSafeToken(id)) return Unsafe("ID", id);
  if (port == 0) return Status::Invalid("SAM: STREAM FORWARD needs a port");
  return "STREAM FORWARD ID=" + std::string(id) + " PORT=" + std::to_string(port) +
         " SILENT=false\n";
}

Result<std::string> NamingLookup(std::string_view name) {
  if (!IsSafeToken(name)) return Unsafe("NAME", name);
  return "NAMING LOOKUP NAME=" + std::string(name) + "\n";
}

std::string DestGenerate() { return "DEST GENERATE SIGNATURE_TYPE=7\n"; }

// ---- encodings -------------------------------------------------------------------------------

bool DecodeBase64(std::string_view in, std::string* out) {
  auto value = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '-') return 62;
    if (c == '~') return 63;
    return -1;
  };
  if (in.empty() || in.size() % 4 != 0) return false;
  size_t pad = 0;
  while (pad < 2 && pad < in.size() && in[in.size() - 1 - pad] == '=') ++pad;
  out->clear();
  uint32_t acc = 0;
  int bits = 0;
  for (size_t i = 0; i < in.size() - pad; ++i) {
    int v = value(in[i]);
    if (v < 0) return false;
    acc = (acc << 6) | uint32_t(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out->push_back(char((acc >> bits) & 0xff));
    }
  }
  // Leftover bits must be zero (canonical encoding).
  return (acc & ((1u << bits) - 1)) == 0;
}

Result<std::string> PublicDestination(std::string_view base64) {
  std::string bin;
  if (!DecodeBase64(base64, &bin)) {
    return Status::Invalid("not an I2P base64 destination (" + std::to_string(base64.size()) +
                           " characters)");
  }
  if (bin.size() < 387) {
    return Status::Invalid("an I2P destination is at least 387 bytes, this one " +
                           std::to_string(bin.size()));
  }
  size_t cert_len = (size_t(uint8_t(bin[385])) << 8) | uint8_t(bin[386]);
  if (bin.size() < 387 + cert_len) {
    return Status::Invalid("the destination's certificate runs past its end");
  }
  return bin.substr(0, 387 + cert_len);
}

Result<std::string> B32Address(std::string_view base64) {
  Result<std::string> pub = PublicDestination(base64);
  if (!pub.ok()) return pub.status();
  uint8_t hash[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const uint8_t*>(pub->data()), pub->size(), hash);
  static const char kAlphabet[] = "abcdefghijklmnopqrstuvwxyz234567";
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  for (uint8_t b : hash) {
    acc = (acc << 8) | b;
    bits += 8;
    while (bits >= 5) {
      bits -= 5;
      out += kAlphabet[(acc >> bits) & 31];
    }
  }
  if (bits > 0) out += kAlphabet[(acc << (5 - bits)) & 31];
  return out + ".b32.i2p";
}

bool IsI2pName(std::string_view name) {
  return name.size() > 4 && name.substr(name.size() - 4) == ".i2p";
}

// ---- handshakes ------------------------------------------------------------------------------

LineHandshake::LineHandshake(std::vector<Step> steps) : steps_(std::move(steps)) {}

std::string_view LineHandshake::Output() const {
  if (failed_ || step_ >= steps_.size() || sent_) return {};
  return std::string_view(steps_[step_].command).substr(out_pos_);
}

void LineHandshake::Consumed(size_t n) {
  if (failed_ || step_ >= steps_.size() || sent_) return;
  out_pos_ += n;
  if (out_pos_ >= steps_[step_].command.size()) sent_ = true;
}

size_t LineHandshake::WantRead() const {
  if (failed_ || step_ >= steps_.size() || !sent_) return 0;
  return kMaxLine - line_.size();
}

Status LineHandshake::Feed(const uint8_t* data, size_t n) {
  if (failed_ || step_ >= steps_.size() || !sent_) {
    failed_ = true;
    return Status::Error(EPROTO, "SAM: unexpected bytes from the bridge");
  }
  for (size_t i = 0; i < n; ++i) {
    char c = char(data[i]);
    if (c != '\n') {
      line_ += c;
      if (line_.size() >= kMaxLine) {
        failed_ = true;
        return Status::Error(EPROTO, "SAM " + steps_[step_].what + ": reply longer than " +
                                         std::to_string(kMaxLine - 1) + " bytes");
      }
      continue;
    }
    if (i + 1 != n) {
      // ConnectOp reads through the first '\n' only; anything after it is the peer's.
      failed_ = true;
      return Status::Error(EPROTO, "SAM: bytes after a reply line were fed");
    }
    const Step& st = steps_[step_];
    Result<Reply> r = ParseReply(line_);
    if (!r.ok()) {
      failed_ = true;
      return Status::Error(
          EPROTO, "SAM " + st.what + ": " + r.status().message() + ": \"" + Shown(line_) + "\"");
    }
    if (Status s = Expect(*r, line_, st.topic, st.subtopic, st.what); !s.ok()) {
      failed_ = true;
      return s;
    }
    last_ = std::move(*r);
    line_.clear();
    ++step_;
    sent_ = false;
    out_pos_ = 0;
  }
  return Status::Ok();
}

namespace {

LineHandshake::Step HelloStep() { return {Hello(), "HELLO", "REPLY", "HELLO"}; }

}  // namespace

Result<std::unique_ptr<Handshake>> NewConnectHandshake(std::string_view id,
                                                       std::string_view destination) {
  Result<std::string> cmd = StreamConnect(id, destination);
  if (!cmd.ok()) return cmd.status();
  std::vector<LineHandshake::Step> steps = {HelloStep(),
                                            {*cmd, "STREAM", "STATUS", "STREAM CONNECT"}};
  return std::unique_ptr<Handshake>(new LineHandshake(std::move(steps)));
}

Result<std::unique_ptr<LineHandshake>> NewSessionHandshake(
    std::string_view id, std::string_view destination,
    const std::vector<std::pair<std::string, std::string>>& options) {
  Result<std::string> cmd = SessionCreate(id, destination, options);
  if (!cmd.ok()) return cmd.status();
  std::vector<LineHandshake::Step> steps = {HelloStep(),
                                            {*cmd, "SESSION", "STATUS", "SESSION CREATE"}};
  return std::make_unique<LineHandshake>(std::move(steps));
}

Result<std::unique_ptr<Handshake>> NewAcceptHandshake(std::string_view id) {
  Result<std::string> cmd = StreamAccept(id);
  if (!cmd.ok()) return cmd.status();
  std::vector<LineHandshake::Step> steps = {HelloStep(),
                                            {*cmd, "STREAM", "STATUS", "STREAM ACCEPT"}};
  return std::unique_ptr<Handshake>(new LineHandshake(std::move(steps)));
}

Result<std::string> ParsePeerLine(std::string_view line) {
  size_t sp = line.find(' ');
  std::string_view dest = line.substr(0, sp);
  if (dest.empty()) return Status::Error(EPROTO, "SAM: empty peer destination line");
  Result<std::string> b32 = B32Address(dest);
  if (!b32.ok()) {
    return Status::Error(EPROTO, "SAM: the accepted stream's first line is not a destination: " +
                                     b32.status().message());
  }
  return b32;
}

}  // namespace via::overlays::sam
