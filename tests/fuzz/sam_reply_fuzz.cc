// Fuzz target for the SAM v3 reply parser and the line handshakes (overlays/sam.h).
//
// With clang (-DVIA_FUZZ=ON, CXX=clang++) a libFuzzer target, else a standalone driver that
// replays the corpus and deterministic mutations (standalone_main.h); docs/fuzzing.md.
#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "overlays/sam.h"

namespace sam = via::overlays::sam;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  auto r = sam::ParseReply(in);
  if (r.ok()) {
    if (r->topic.empty() || r->subtopic.empty()) std::abort();
    for (const auto& [k, v] : r->pairs) {
      if (k.empty() || k.find('=') != std::string::npos) std::abort();
    }
    (void)sam::Expect(*r, in, "STREAM", "STATUS", "fuzz");
  } else if (r.status().code() != EPROTO) {
    std::abort();
  }
  (void)sam::ParsePeerLine(in);
  // Fed to a handshake in chunks of 7 bytes, the way ConnectOp would (never past a '\n').
  auto h = sam::NewConnectHandshake("fuzz", "x.i2p");
  if (!h.ok()) std::abort();
  size_t i = 0;
  while (i < size) {
    std::string out((*h)->Output());
    (*h)->Consumed(out.size());
    size_t want = (*h)->WantRead();
    if (want == 0) break;
    size_t n = std::min<size_t>({7, size - i, want});
    const void* nl = std::memchr(data + i, '\n', n);
    if (nl != nullptr) n = size_t(static_cast<const uint8_t*>(nl) - (data + i)) + 1;
    via::Status st = (*h)->Feed(data + i, n);
    i += n;
    if (!st.ok()) {
      if (st.code() == 0 || (*h)->Done()) std::abort();
      break;
    }
  }
  return 0;
}

#define VIA_FUZZ_NAME "sam_reply_fuzz"
#include "tests/fuzz/standalone_main.h"
