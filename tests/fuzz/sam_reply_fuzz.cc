// Fuzz target for the SAM v3 reply parser and the line handshakes (overlays/i2p/sam.h).
//
// With clang (-DVIA_FUZZ=ON, CXX=clang++) a libFuzzer target, else a standalone driver that
// replays the corpus and deterministic mutations (standalone_main.h); docs/fuzzing.md.
#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "overlays/i2p/sam.h"

namespace sam = via::overlays::sam;

namespace {

// Feeds `data` to a handshake in chunks of at most 7 bytes, the way ConnectOp would (never past
// a '\n'); a failure must carry an errno and leave the handshake unfinished.
void Drive(via::overlays::Handshake& h, const uint8_t* data, size_t size) {
  size_t i = 0;
  while (i < size) {
    std::string out(h.Output());
    h.Consumed(out.size());
    size_t want = h.WantRead();
    if (want == 0) break;
    size_t n = std::min<size_t>({7, size - i, want});
    const void* nl = std::memchr(data + i, '\n', n);
    if (nl != nullptr) n = size_t(static_cast<const uint8_t*>(nl) - (data + i)) + 1;
    via::Status st = h.Feed(data + i, n);
    i += n;
    if (!st.ok()) {
      if (st.code() == 0 || h.Done()) std::abort();
      break;
    }
  }
}

// A value the I2P runtime decodes (SESSION CREATE's DESTINATION, a peer line, a NAMING LOOKUP
// VALUE): I2P base64, the public destination inside it, its .b32.i2p name.
void Decode(std::string_view v) {
  std::string bin;
  (void)sam::DecodeBase64(v, &bin);
  auto pub = sam::PublicDestination(v);
  if (!pub.ok() && pub.status().code() == 0) std::abort();
  auto b32 = sam::B32Address(v);
  if (b32.ok() && (b32->size() != 60 || !b32->ends_with(".b32.i2p"))) std::abort();
  (void)sam::IsI2pName(v);
  (void)sam::IsSafeToken(v);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  auto r = sam::ParseReply(in);
  if (r.ok()) {
    if (r->topic.empty() || r->subtopic.empty()) std::abort();
    for (const auto& [k, v] : r->pairs) {
      if (k.empty() || k.find('=') != std::string::npos) std::abort();
      Decode(v);
    }
    (void)sam::Expect(*r, in, "STREAM", "STATUS", "fuzz");
  } else if (r.status().code() != EPROTO) {
    std::abort();
  }
  (void)sam::ParsePeerLine(in);
  Decode(in.substr(0, in.find(' ')));
  // The same bytes as the bridge's replies to the three handshakes the broker runs.
  auto connect = sam::NewConnectHandshake("fuzz", "x.i2p");
  if (!connect.ok()) std::abort();
  Drive(**connect, data, size);
  auto accept = sam::NewAcceptHandshake("fuzz");
  if (!accept.ok()) std::abort();
  Drive(**accept, data, size);
  auto session = sam::NewSessionHandshake("fuzz", "TRANSIENT", {{"inbound.length", "1"}});
  if (!session.ok()) std::abort();
  Drive(**session, data, size);
  if ((*session)->Done()) {
    for (const auto& [k, v] : (*session)->last_reply().pairs) Decode(v);
  }
  return 0;
}

#define VIA_FUZZ_NAME "sam_reply_fuzz"
#include "tests/fuzz/standalone_main.h"
