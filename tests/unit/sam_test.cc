// Tests for overlays/i2p/sam.h: every class of malformed SAM reply line, RESULT → errno, command
// builders refusing injected tokens, I2P base64/b32, the line handshakes, and the fuzz corpus.
#include "overlays/i2p/sam.h"

#include <dirent.h>
#include <gtest/gtest.h>

#include <cerrno>
#include <fstream>
#include <sstream>
#include <string>

#include "overlays/factory.h"
#include "overlays/i2p/i2p_overlay.h"

namespace via::overlays::sam {
namespace {

// A destination and its private keys from i2pd 2.45.1's DEST GENERATE SIGNATURE_TYPE=7; the b32
// was computed independently (Python: sha256 + base32 of the decoded public destination).
const char kPub[] =
    "NJHKss1fN1ISw50kvqELjSZIeHU4iVYJUQPFbYGxHsk0kcqyzV83UhLDnSS-oQuNJkh4dTiJVglRA8VtgbEeyTSRyr"
    "LNXzdSEsOdJL6hC40mSHh1OIlWCVEDxW2BsR7JNJHKss1fN1ISw50kvqELjSZIeHU4iVYJUQPFbYGxHsk0kcqyzV83"
    "UhLDnSS-oQuNJkh4dTiJVglRA8VtgbEeyTSRyrLNXzdSEsOdJL6hC40mSHh1OIlWCVEDxW2BsR7JNJHKss1fN1ISw5"
    "0kvqELjSZIeHU4iVYJUQPFbYGxHsk0kcqyzV83UhLDnSS-oQuNJkh4dTiJVglRA8VtgbEeyTSRyrLNXzdSEsOdJL6h"
    "C40mSHh1OIlWCVEDxW2BsR7JNJHKss1fN1ISw50kvqELjSZIeHU4iVYJUQPFbYGxHsk0kcqyzV83UhLDnSS-oQuNJk"
    "h4dTiJVglRA8VtgbEeyer4uOdM4GjTWDZAPBKvOPNIjM7p3sG84fjDF~zCK774BQAEAAcAAA==";
const char kPriv[] =
    "NJHKss1fN1ISw50kvqELjSZIeHU4iVYJUQPFbYGxHsk0kcqyzV83UhLDnSS-oQuNJkh4dTiJVglRA8VtgbEeyTSRyr"
    "LNXzdSEsOdJL6hC40mSHh1OIlWCVEDxW2BsR7JNJHKss1fN1ISw50kvqELjSZIeHU4iVYJUQPFbYGxHsk0kcqyzV83"
    "UhLDnSS-oQuNJkh4dTiJVglRA8VtgbEeyTSRyrLNXzdSEsOdJL6hC40mSHh1OIlWCVEDxW2BsR7JNJHKss1fN1ISw5"
    "0kvqELjSZIeHU4iVYJUQPFbYGxHsk0kcqyzV83UhLDnSS-oQuNJkh4dTiJVglRA8VtgbEeyTSRyrLNXzdSEsOdJL6h"
    "C40mSHh1OIlWCVEDxW2BsR7JNJHKss1fN1ISw50kvqELjSZIeHU4iVYJUQPFbYGxHsk0kcqyzV83UhLDnSS-oQuNJk"
    "h4dTiJVglRA8VtgbEeyer4uOdM4GjTWDZAPBKvOPNIjM7p3sG84fjDF~zCK774BQAEAAcAADJ6351QymhI3PhMIdx1"
    "xYx4LKFEsW4iYGfI1ZeaIUcgLHsJNTeP-uVzfSfARVrc0PGAKPLa2UuCPGslieYDJKqGYQclbFanHGq21V8QEGfY70"
    "5-Jj2j9OB5cRf1Ar5iFSgTpdI2jdXrRDCVvBijiwgHiKhxl8ZsQ6cQGUinZc8EWycvToX-9Y~BUbROk-Fm~emmNiOY"
    "6m9eEGkEybl8QjKMnVN9oV7I1j-yT94sck4bCYoK0kuEFNo~RcjZY1QItWQIC-f8dE2ulMe97bLuamgQw0rjTCGVlY"
    "KYoUbdAjC6KmskdVUGLZ5mzzn9peHDc8QKWHHJw1p2MaTM2cTPnA1fXpr7J~P8uGbB8pNJI~wICfcABoo-kHVhhuYd"
    "PUICCQ==";
const char kB32[] = "hetdgolhrodpkfn64gcy4xazv2um4nt5t5pqvih3o2fux5dtsowq.b32.i2p";

std::string Err(std::string_view line) { return ParseReply(line).status().message(); }

TEST(SamReply, ParsesPairsInOrder) {
  auto r = ParseReply("HELLO REPLY RESULT=OK VERSION=3.1");
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(r->topic, "HELLO");
  EXPECT_EQ(r->subtopic, "REPLY");
  ASSERT_EQ(r->pairs.size(), 2u);
  EXPECT_EQ(r->pairs[0].first, "RESULT");
  EXPECT_EQ(*r->Get("VERSION"), "3.1");
  EXPECT_EQ(r->Result(), "OK");
  EXPECT_EQ(r->Get("NOPE"), nullptr);
}

TEST(SamReply, QuotedValueWithEscapes) {
  auto r = ParseReply(R"(SESSION STATUS RESULT=I2P_ERROR MESSAGE="a \"quoted\" \\ word")");
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(*r->Get("MESSAGE"), R"(a "quoted" \ word)");
}

TEST(SamReply, EmptyBareAndQuotedValues) {
  auto r = ParseReply(R"(NAMING REPLY RESULT=OK NAME= VALUE="")");
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(*r->Get("NAME"), "");
  EXPECT_EQ(*r->Get("VALUE"), "");
}

TEST(SamReply, TopicOnlyWithNoPairs) {
  auto r = ParseReply("STREAM STATUS");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->Result(), "");
}

TEST(SamReply, Malformed) {
  EXPECT_EQ(Err(""), "malformed SAM reply (column 1): empty line");
  EXPECT_EQ(Err("hello REPLY"),
            "malformed SAM reply (column 1): expected a topic of capital letters");
  EXPECT_EQ(Err(" HELLO REPLY"),
            "malformed SAM reply (column 1): expected a topic of capital letters");
  EXPECT_EQ(Err("HELLO"), "malformed SAM reply (column 6): the subtopic is missing");
  EXPECT_EQ(Err("HELLO1 REPLY"),
            "malformed SAM reply (column 6): expected a space after the topic");
  EXPECT_EQ(Err("HELLO  REPLY"),
            "malformed SAM reply (column 7): expected a subtopic of capital letters");
  EXPECT_EQ(Err("HELLO reply"),
            "malformed SAM reply (column 7): expected a subtopic of capital letters");
  EXPECT_EQ(Err("HELLO REPLY "), "malformed SAM reply (column 13): trailing space");
  EXPECT_EQ(Err("HELLO REPLY  RESULT=OK"), "malformed SAM reply (column 13): expected a key");
  EXPECT_EQ(Err("HELLO REPLYX=1"),
            "malformed SAM reply (column 13): expected a space before the next KEY=VALUE");
  EXPECT_EQ(Err("HELLO REPLY RESULT"), "malformed SAM reply (column 19): key RESULT has no '='");
  EXPECT_EQ(Err("HELLO REPLY RESULT:OK"), "malformed SAM reply (column 19): key RESULT has no '='");
  EXPECT_EQ(Err("HELLO REPLY =OK"), "malformed SAM reply (column 13): expected a key");
  EXPECT_EQ(Err("HELLO REPLY RESULT=O\"K"),
            "malformed SAM reply (column 21): a quote inside the value of RESULT");
  EXPECT_EQ(Err("HELLO REPLY M=\"open"),
            "malformed SAM reply (column 15): unterminated quoted value of M");
  EXPECT_EQ(Err("HELLO REPLY M=\"a\\\""),
            "malformed SAM reply (column 15): unterminated quoted value of M");
  EXPECT_EQ(Err("HELLO REPLY M=\"a\\"),
            "malformed SAM reply (column 15): unterminated quoted value of M");
  EXPECT_EQ(Err("HELLO REPLY M=\"a\\n\""), "malformed SAM reply (column 18): unknown escape \\n");
  EXPECT_EQ(Err("HELLO REPLY M=\"a\"b"),
            "malformed SAM reply (column 18): expected a space after the quoted value of M");
  EXPECT_EQ(Err("HELLO REPLY A=1 A=2"), "malformed SAM reply (column 17): key A given twice");
  EXPECT_EQ(Err("HELLO REPLY RESULT=OK\r"),
            "malformed SAM reply (column 22): byte 0x0d is not printable ASCII");
  EXPECT_EQ(Err(std::string("HELLO REPLY R=\0", 15)),
            "malformed SAM reply (column 15): byte 0x00 is not printable ASCII");
  EXPECT_EQ(Err("HELLO REPLY R=\xc3\xa9"),
            "malformed SAM reply (column 15): byte 0xc3 is not printable ASCII");
  EXPECT_EQ(Err("HELLO REPLY R=\x7f"),
            "malformed SAM reply (column 15): byte 0x7f is not printable ASCII");
  EXPECT_EQ(Err("HELLO REPLY K\xff=1"),
            "malformed SAM reply (column 14): byte 0xff is not printable ASCII");
  EXPECT_EQ(Err("HELLO REPLY R=" + std::string(kMaxLine, 'a')),
            "malformed SAM reply (column 8193): longer than 8191 bytes");
}

TEST(SamReply, ResultErrnos) {
  EXPECT_EQ(ResultToErrno("OK"), 0);
  EXPECT_EQ(ResultToErrno("CANT_REACH_PEER"), EHOSTUNREACH);
  EXPECT_EQ(ResultToErrno("PEER_NOT_FOUND"), EHOSTUNREACH);
  EXPECT_EQ(ResultToErrno("INVALID_KEY"), ENXIO);
  EXPECT_EQ(ResultToErrno("KEY_NOT_FOUND"), ENXIO);
  EXPECT_EQ(ResultToErrno("TIMEOUT"), ETIMEDOUT);
  EXPECT_EQ(ResultToErrno("DUPLICATED_ID"), EADDRINUSE);
  EXPECT_EQ(ResultToErrno("DUPLICATED_DEST"), EADDRINUSE);
  EXPECT_EQ(ResultToErrno("INVALID_ID"), ENETRESET);
  EXPECT_EQ(ResultToErrno("NOVERSION"), EPROTONOSUPPORT);
  EXPECT_EQ(ResultToErrno("ALREADY_ACCEPTING"), EBUSY);
  EXPECT_EQ(ResultToErrno("I2P_ERROR"), ECONNABORTED);
  EXPECT_EQ(ResultToErrno("ok"), EPROTO);
  EXPECT_EQ(ResultToErrno(""), EPROTO);
}

TEST(SamReply, ExpectQuotesTheLine) {
  std::string line = "STREAM STATUS RESULT=CANT_REACH_PEER";
  Status s = Expect(*ParseReply(line), line, "STREAM", "STATUS", "STREAM CONNECT");
  EXPECT_EQ(s.code(), EHOSTUNREACH);
  EXPECT_EQ(s.message(), "SAM STREAM CONNECT failed: \"STREAM STATUS RESULT=CANT_REACH_PEER\"");
  line = "SESSION STATUS RESULT=OK";
  s = Expect(*ParseReply(line), line, "STREAM", "STATUS", "STREAM CONNECT");
  EXPECT_EQ(s.code(), EPROTO);
  EXPECT_EQ(s.message(),
            "SAM STREAM CONNECT: expected STREAM STATUS, got \"SESSION STATUS RESULT=OK\"");
  line = "STREAM STATUS MESSAGE=x";
  s = Expect(*ParseReply(line), line, "STREAM", "STATUS", "STREAM CONNECT");
  EXPECT_EQ(s.code(), EPROTO);
  EXPECT_EQ(s.message(), "SAM STREAM CONNECT: no RESULT in \"STREAM STATUS MESSAGE=x\"");
}

TEST(SamCommands, Builders) {
  EXPECT_EQ(Hello(), "HELLO VERSION MIN=3.1 MAX=3.3\n");
  EXPECT_EQ(*SessionCreate("via-1", "TRANSIENT", {{"inbound.length", "0"}}),
            "SESSION CREATE STYLE=STREAM ID=via-1 DESTINATION=TRANSIENT SIGNATURE_TYPE=7 "
            "inbound.length=0\n");
  EXPECT_EQ(*SessionCreate("x", "TRANSIENT", {{"SIGNATURE_TYPE", "EdDSA_SHA512_Ed25519"}}),
            "SESSION CREATE STYLE=STREAM ID=x DESTINATION=TRANSIENT "
            "SIGNATURE_TYPE=EdDSA_SHA512_Ed25519\n");
  EXPECT_EQ(*StreamConnect("via-1", "abc.b32.i2p"),
            "STREAM CONNECT ID=via-1 DESTINATION=abc.b32.i2p SILENT=false\n");
  EXPECT_EQ(*StreamAccept("l"), "STREAM ACCEPT ID=l SILENT=false\n");
  EXPECT_EQ(*StreamForward("l", 8080), "STREAM FORWARD ID=l PORT=8080 SILENT=false\n");
  EXPECT_EQ(*NamingLookup("ME"), "NAMING LOOKUP NAME=ME\n");
  EXPECT_EQ(DestGenerate(), "DEST GENERATE SIGNATURE_TYPE=7\n");
}

TEST(SamCommands, RefuseInjection) {
  EXPECT_EQ(StreamConnect("a", "x.i2p SILENT=true").status().code(), EINVAL);
  EXPECT_EQ(StreamConnect("a", "x.i2p\nSESSION CREATE").status().code(), EINVAL);
  EXPECT_EQ(StreamConnect("a b", "x.i2p").status().code(), EINVAL);
  EXPECT_EQ(StreamConnect("a", "").status().code(), EINVAL);
  EXPECT_EQ(StreamConnect("a", "\"x\"").status().code(), EINVAL);
  EXPECT_EQ(SessionCreate("a", "TRANSIENT", {{"k", "v w"}}).status().code(), EINVAL);
  EXPECT_EQ(SessionCreate("a", "TRANSIENT", {{"k=v", "w"}}).status().code(), EINVAL);
  EXPECT_EQ(NamingLookup("a\tb").status().code(), EINVAL);
  EXPECT_EQ(StreamForward("a", 0).status().code(), EINVAL);
  EXPECT_EQ(StreamConnect("a", "x y").status().message(),
            "SAM: DESTINATION \"x y\" cannot be sent (empty, too long, or a space, quote or "
            "control character in it)");
}

TEST(SamEncoding, B32OfARealDestination) {
  EXPECT_EQ(*B32Address(kPub), kB32);
  EXPECT_EQ(*B32Address(kPriv), kB32);  // private keys start with the public destination
  auto pub = PublicDestination(kPriv);
  ASSERT_TRUE(pub.ok());
  EXPECT_EQ(pub->size(), 391u);
}

TEST(SamEncoding, Base64Errors) {
  std::string out;
  EXPECT_TRUE(DecodeBase64("QUJD", &out));
  EXPECT_EQ(out, "ABC");
  EXPECT_TRUE(DecodeBase64("-~-~", &out));
  EXPECT_EQ(out, "\xfb\xff\xbf");
  EXPECT_FALSE(DecodeBase64("", &out));
  EXPECT_FALSE(DecodeBase64("QUJ", &out));   // not a multiple of 4
  EXPECT_FALSE(DecodeBase64("QU+D", &out));  // '+' is standard base64, not I2P's
  EXPECT_FALSE(DecodeBase64("QU/D", &out));
  EXPECT_FALSE(DecodeBase64("Q===", &out));      // too much padding
  EXPECT_FALSE(DecodeBase64("QUI=QUI=", &out));  // padding in the middle
  EXPECT_FALSE(DecodeBase64("QUJ=", &out));      // non-zero leftover bits
  EXPECT_EQ(B32Address("QUJD").status().message(),
            "an I2P destination is at least 387 bytes, this one 3");
  EXPECT_EQ(B32Address("not base64!").status().message(),
            "not an I2P base64 destination (11 characters)");
  // A certificate length that runs past the end.
  std::string bin(387, '\0');
  bin[385] = 0x01;
  std::string b64;
  static const char kAlpha[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-~";
  for (size_t i = 0; i < bin.size(); i += 3) {
    uint32_t v = (uint8_t(bin[i]) << 16) | (uint8_t(bin[i + 1]) << 8) | uint8_t(bin[i + 2]);
    for (int k = 3; k >= 0; --k) b64 += kAlpha[(v >> (6 * k)) & 63];
  }
  EXPECT_EQ(B32Address(b64).status().message(), "the destination's certificate runs past its end");
}

TEST(SamEncoding, I2pNames) {
  EXPECT_TRUE(IsI2pName("a.i2p"));
  EXPECT_TRUE(IsI2pName(kB32));
  EXPECT_FALSE(IsI2pName(".i2p"));
  EXPECT_FALSE(IsI2pName("example.com"));
  EXPECT_FALSE(IsI2pName("i2p"));
}

TEST(SamEncoding, PeerLine) {
  EXPECT_EQ(*ParsePeerLine(kPub), kB32);
  EXPECT_EQ(*ParsePeerLine(std::string(kPub) + " FROM_PORT=0 TO_PORT=0"), kB32);
  EXPECT_EQ(ParsePeerLine("").status().code(), EPROTO);
  EXPECT_EQ(ParsePeerLine("GET / HTTP/1.0").status().code(), EPROTO);
}

// ---- line handshakes ---------------------------------------------------------------------------

class SamHandshakeTest : public ::testing::Test {
 protected:
  // Sends everything the handshake wants to send and returns it.
  static std::string Drain(Handshake& h) {
    std::string out(h.Output());
    h.Consumed(out.size());
    return out;
  }
  static Status Feed(Handshake& h, std::string_view bytes) {
    return h.Feed(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
  }
};

TEST_F(SamHandshakeTest, ConnectSucceeds) {
  auto h = NewConnectHandshake("via-1", kB32);
  ASSERT_TRUE(h.ok());
  EXPECT_TRUE((*h)->LineMode());
  EXPECT_EQ((*h)->WantRead(), 0u);
  EXPECT_EQ(Drain(**h), "HELLO VERSION MIN=3.1 MAX=3.3\n");
  EXPECT_EQ((*h)->WantRead(), kMaxLine);
  EXPECT_TRUE(Feed(**h, "HELLO REPLY RES").ok());
  EXPECT_EQ((*h)->WantRead(), kMaxLine - 15);
  EXPECT_TRUE(Feed(**h, "ULT=OK VERSION=3.1\n").ok());
  EXPECT_EQ(Drain(**h),
            "STREAM CONNECT ID=via-1 DESTINATION=" + std::string(kB32) + " SILENT=false\n");
  EXPECT_FALSE((*h)->Done());
  EXPECT_TRUE(Feed(**h, "STREAM STATUS RESULT=OK\n").ok());
  EXPECT_TRUE((*h)->Done());
  EXPECT_EQ((*h)->WantRead(), 0u);
  EXPECT_TRUE((*h)->Output().empty());
}

TEST_F(SamHandshakeTest, SplitIntoSingleBytes) {
  auto h = NewConnectHandshake("via-1", "x.i2p");
  Drain(**h);
  for (char c : std::string("HELLO REPLY RESULT=OK VERSION=3.1\n")) {
    ASSERT_TRUE(Feed(**h, std::string_view(&c, 1)).ok());
  }
  EXPECT_FALSE(Drain(**h).empty());
}

TEST_F(SamHandshakeTest, ErrorsBecomeErrnos) {
  struct Case {
    const char* reply;
    int err;
  } cases[] = {{"STREAM STATUS RESULT=CANT_REACH_PEER\n", EHOSTUNREACH},
               {"STREAM STATUS RESULT=INVALID_KEY\n", ENXIO},
               {"STREAM STATUS RESULT=INVALID_ID\n", ENETRESET},
               {"STREAM STATUS RESULT=TIMEOUT\n", ETIMEDOUT},
               {"STREAM STATUS RESULT=I2P_ERROR MESSAGE=\"no\"\n", ECONNABORTED},
               {"STREAM STATUS RESULT=WHAT\n", EPROTO},
               {"STREAM STATUS\n", EPROTO},
               {"SESSION STATUS RESULT=OK\n", EPROTO},
               {"STREAM STATUS RESULT=OK \n", EPROTO},
               {"garbage\n", EPROTO}};
  for (const Case& c : cases) {
    auto h = NewConnectHandshake("via-1", "x.i2p");
    Drain(**h);
    ASSERT_TRUE(Feed(**h, "HELLO REPLY RESULT=OK VERSION=3.1\n").ok());
    Drain(**h);
    Status s = Feed(**h, c.reply);
    EXPECT_EQ(s.code(), c.err) << c.reply << s.message();
    EXPECT_FALSE((*h)->Done());
    EXPECT_EQ((*h)->WantRead(), 0u);
  }
}

TEST_F(SamHandshakeTest, NoVersion) {
  auto h = NewConnectHandshake("via-1", "x.i2p");
  Drain(**h);
  Status s = Feed(**h, "HELLO REPLY RESULT=NOVERSION\n");
  EXPECT_EQ(s.code(), EPROTONOSUPPORT);
  EXPECT_EQ(s.message(), "SAM HELLO failed: \"HELLO REPLY RESULT=NOVERSION\"");
}

TEST_F(SamHandshakeTest, OverlongLine) {
  auto h = NewConnectHandshake("via-1", "x.i2p");
  Drain(**h);
  std::string big(kMaxLine - 1, 'A');
  EXPECT_TRUE(Feed(**h, big).ok());
  EXPECT_EQ(Feed(**h, "A").code(), EPROTO);
}

TEST_F(SamHandshakeTest, BytesAfterTheLineAreRefused) {
  // The reader must stop at '\n'; a handshake handed more has been misused.
  auto h = NewConnectHandshake("via-1", "x.i2p");
  Drain(**h);
  EXPECT_EQ(Feed(**h, "HELLO REPLY RESULT=OK\nSTREAM").code(), EPROTO);
}

TEST_F(SamHandshakeTest, BytesBeforeAnyCommandAreRefused) {
  auto h = NewConnectHandshake("via-1", "x.i2p");
  EXPECT_EQ(Feed(**h, "HELLO REPLY RESULT=OK\n").code(), EPROTO);
}

TEST_F(SamHandshakeTest, SessionCreateKeepsTheDestination) {
  auto h = NewSessionHandshake("s", "TRANSIENT", {});
  ASSERT_TRUE(h.ok());
  Drain(**h);
  ASSERT_TRUE(Feed(**h, "HELLO REPLY RESULT=OK VERSION=3.1\n").ok());
  EXPECT_EQ(Drain(**h),
            "SESSION CREATE STYLE=STREAM ID=s DESTINATION=TRANSIENT SIGNATURE_TYPE=7\n");
  ASSERT_TRUE(Feed(**h, "SESSION STATUS RESULT=OK DESTINATION=" + std::string(kPriv) + "\n").ok());
  ASSERT_TRUE((*h)->Done());
  EXPECT_EQ(*(*h)->last_reply().Get("DESTINATION"), kPriv);
}

TEST_F(SamHandshakeTest, SessionDuplicatedId) {
  auto h = NewSessionHandshake("s", "TRANSIENT", {});
  Drain(**h);
  ASSERT_TRUE(Feed(**h, "HELLO REPLY RESULT=OK VERSION=3.1\n").ok());
  Drain(**h);
  EXPECT_EQ(Feed(**h, "SESSION STATUS RESULT=DUPLICATED_ID\n").code(), EADDRINUSE);
}

TEST_F(SamHandshakeTest, Accept) {
  auto h = NewAcceptHandshake("l");
  Drain(**h);
  ASSERT_TRUE(Feed(**h, "HELLO REPLY RESULT=OK VERSION=3.1\n").ok());
  EXPECT_EQ(Drain(**h), "STREAM ACCEPT ID=l SILENT=false\n");
  ASSERT_TRUE(Feed(**h, "STREAM STATUS RESULT=OK\n").ok());
  EXPECT_TRUE((*h)->Done());
}

// ---- the fuzz corpus, replayed deterministically
// -------------------------------------------------

std::string CorpusDir() {
#ifdef VIA_FUZZ_CORPUS_DIR
  return VIA_FUZZ_CORPUS_DIR;
#else
  std::string here = __FILE__;
  return here.substr(0, here.rfind("/unit/")) + "/fuzz/sam_corpus";
#endif
}

TEST(SamFuzzCorpus, EveryEntryParsesOrFailsCleanly) {
  DIR* d = opendir(CorpusDir().c_str());
  ASSERT_NE(d, nullptr) << CorpusDir();
  int files = 0;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] == '.') continue;
    std::ifstream in(CorpusDir() + "/" + e->d_name, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    std::string data = ss.str();
    ++files;
    auto r = ParseReply(data);
    if (r.ok()) {
      EXPECT_FALSE(r->topic.empty()) << e->d_name;
      EXPECT_FALSE(r->subtopic.empty()) << e->d_name;
    } else {
      EXPECT_EQ(r.status().code(), EPROTO) << e->d_name;
    }
    // And fed as a reply to a handshake, in one piece and byte by byte.
    for (size_t chunk : {data.size(), size_t(1)}) {
      auto h = NewConnectHandshake("x", "y.i2p");
      std::string out((*h)->Output());
      (*h)->Consumed(out.size());
      Status st;
      for (size_t i = 0; i < data.size() && st.ok() && (*h)->WantRead() > 0; i += chunk) {
        size_t n = std::min({chunk, data.size() - i, (*h)->WantRead()});
        st = (*h)->Feed(reinterpret_cast<const uint8_t*>(data.data() + i), n);
        if (st.ok() && !(*h)->Output().empty()) (*h)->Consumed((*h)->Output().size());
      }
    }
  }
  closedir(d);
  EXPECT_GE(files, 10);
}

}  // namespace
}  // namespace via::overlays::sam

namespace via::overlays {
namespace {

config::Overlay I2pOverlay(const std::string& host) {
  config::Overlay o;
  o.id = "app:i2p";
  o.ns = "app";
  o.name = "i2p";
  o.kind = config::OverlayKind::kI2p;
  o.kind_name = "network.i2p";
  o.i2p.host = host;
  o.i2p.port = 7656;
  return o;
}

TEST(I2pDriver, CreatesWithTheSamEndpoint) {
  config::Overlay o = I2pOverlay("127.0.0.1");
  auto d = CreateOverlay(o);
  ASSERT_TRUE(d.ok()) << d.status().message();
  ASSERT_EQ((*d)->endpoints().size(), 1u);
  EXPECT_EQ((*d)->endpoints()[0].text, "127.0.0.1:7656");
  EXPECT_EQ((*d)->connect_timeout_ms(), 60000);
}

TEST(I2pDriver, UnresolvableHost) {
  config::Overlay o = I2pOverlay("no-such-host.invalid");
  auto d = CreateOverlay(o);
  EXPECT_EQ(d.status().code(), EHOSTUNREACH);
  EXPECT_EQ(d.status().message().rfind("overlay app:i2p: cannot resolve SAM host "
                                       "\"no-such-host.invalid\": ",
                                       0),
            0u)
      << d.status().message();
}

TEST(I2pDriver, OnlyI2pNamesWithASession) {
  config::Overlay o = I2pOverlay("127.0.0.1");
  auto d = I2pOverlay::Create(o);
  ASSERT_TRUE(d.ok());
  Target t;
  t.name = "example.com";
  t.port = 80;
  auto hs = (*d)->NewHandshake(t);
  EXPECT_EQ(hs.status().code(), ENETUNREACH);
  EXPECT_EQ(hs.status().message(),
            "I2P reaches only .i2p names (example.com:80 is not one; SAM has no outproxy)");
  t.name = "";
  t.addr.family = 4;
  EXPECT_EQ((*d)->NewHandshake(t).status().code(), ENETUNREACH);
  t.name = "site.i2p";
  EXPECT_EQ((*d)->NewHandshake(t).status().message(), "no SAM session is up");
  (*d)->set_session("via-1");
  hs = (*d)->NewHandshake(t);
  ASSERT_TRUE(hs.ok());
  EXPECT_EQ((*hs)->Output(), "HELLO VERSION MIN=3.1 MAX=3.3\n");
}

}  // namespace
}  // namespace via::overlays
