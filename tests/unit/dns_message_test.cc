// The broker's DNS answers to queries programs send themselves: a strict parser (one class of
// malformed input per test), the answers for A/AAAA/PTR/other types, and the reverse names.
#include "broker/dns_message.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>

#include <cctype>
#include <optional>
#include <random>
#include <string>

#include "tests/unit/mutate.h"

namespace via::broker {
namespace {

wire::Addr Ip(const char* text) {
  wire::Addr a;
  if (inet_pton(AF_INET, text, a.bytes) == 1) {
    a.family = 4;
  } else {
    EXPECT_EQ(inet_pton(AF_INET6, text, a.bytes), 1) << text;
    a.family = 6;
  }
  return a;
}

// A query as dig sends it: id 0x1234, RD, one question, optionally an EDNS0 OPT record.
std::string Query(const std::string& name, uint16_t qtype, bool edns = false,
                  uint16_t qclass = kDnsClassIn) {
  std::string p = {0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, char(edns ? 1 : 0)};
  size_t start = 0;
  while (start < name.size()) {
    size_t dot = name.find('.', start);
    if (dot == std::string::npos) dot = name.size();
    p.push_back(char(dot - start));
    p += name.substr(start, dot - start);
    start = dot + 1;
  }
  p.push_back(0);
  p += {char(qtype >> 8), char(qtype & 0xff), char(qclass >> 8), char(qclass & 0xff)};
  if (edns) p += std::string("\0\0\x29\x04\xd0\0\0\0\0\0\0", 11);  // root, OPT, 1232, rdlen 0
  return p;
}

class DnsTest : public ::testing::Test {
 protected:
  DnsTest() {
    policy_.lookup = [this](const std::string& name) {
      looked_up_ += name + ";";
      return std::make_pair(Ip("198.18.0.7"), Ip("fd76:6961:ff00::7"));
    };
    policy_.reverse = [](const wire::Addr& a) -> std::optional<std::string> {
      if (a == Ip("198.18.0.7") || a == Ip("fd76:6961:ff00::7")) return "example.test";
      return std::nullopt;
    };
  }

  // Answers `packet`; returns the rcode (-1: no answer) and fills answer_.
  int Answer(const std::string& packet) {
    auto a = AnswerDnsQuery(packet, policy_, &summary_);
    if (!a) return -1;
    answer_ = *a;
    EXPECT_GE(answer_.size(), 12u);
    EXPECT_EQ(answer_.substr(0, 2), packet.substr(0, 2));  // the id
    EXPECT_TRUE(uint8_t(answer_[2]) & 0x80);               // QR
    return uint8_t(answer_[3]) & 0x0f;
  }
  int AnswerCount() const { return (uint8_t(answer_[6]) << 8) | uint8_t(answer_[7]); }
  // The rdata of the only answer record.
  std::string Rdata(const std::string& query) const {
    size_t off = query.size() - (query[11] ? 11 : 0) + 10;  // question, then name ptr+type+...
    size_t len = (uint8_t(answer_[off]) << 8) | uint8_t(answer_[off + 1]);
    return answer_.substr(off + 2, len);
  }
  std::string FormErr(const std::string& packet) {
    EXPECT_EQ(Answer(packet), kDnsFormErr) << summary_;
    return summary_;
  }

  DnsPolicy policy_;
  std::string summary_, answer_, looked_up_;
};

TEST_F(DnsTest, AQueryGetsTheFakeIpv4Address) {
  std::string q = Query("Example.TEST", kDnsA);
  EXPECT_EQ(Answer(q), kDnsNoError);
  EXPECT_EQ(AnswerCount(), 1);
  EXPECT_EQ(Rdata(q), std::string("\xc6\x12\x00\x07", 4));
  EXPECT_EQ(looked_up_, "example.test;");
  EXPECT_EQ(summary_, "A example.test -> 198.18.0.7");
  EXPECT_EQ(answer_.substr(12, q.size() - 12), q.substr(12));  // the question, copied
  EXPECT_EQ(answer_[2] & 0x01, 0x01);                          // RD copied
}

TEST_F(DnsTest, AaaaQueryWithEdnsGetsTheFakeIpv6Address) {
  std::string q = Query("example.test", kDnsAaaa, true);
  EXPECT_EQ(Answer(q), kDnsNoError);
  EXPECT_EQ(AnswerCount(), 1);
  EXPECT_EQ(Rdata(q).size(), 16u);
  EXPECT_EQ(summary_, "AAAA example.test -> fd76:6961:ff00::7");
}

TEST_F(DnsTest, LocalhostIsLoopbackAndNeverLookedUp) {
  EXPECT_EQ(Answer(Query("localhost", kDnsA)), kDnsNoError);
  EXPECT_EQ(summary_, "A localhost -> 127.0.0.1");
  EXPECT_EQ(looked_up_, "");
}

TEST_F(DnsTest, PtrOfAFakeAddressGivesItsName) {
  EXPECT_EQ(Answer(Query("7.0.18.198.in-addr.arpa", kDnsPtr)), kDnsNoError);
  EXPECT_EQ(AnswerCount(), 1);
  EXPECT_NE(answer_.find(std::string("\x07"
                                     "example\x04test\x00",
                                     14)),
            std::string::npos);
  EXPECT_EQ(Answer(Query("1.0.0.10.in-addr.arpa", kDnsPtr)), kDnsNxDomain);
}

TEST_F(DnsTest, OtherTypesGetNoRecords) {
  EXPECT_EQ(Answer(Query("example.test", 65)), kDnsNoError);  // HTTPS
  EXPECT_EQ(AnswerCount(), 0);
  EXPECT_EQ(Answer(Query("example.test", 15)), kDnsNoError);  // MX
  EXPECT_EQ(looked_up_, "");
}

TEST_F(DnsTest, NamesThatAreNotHostNamesAndOtherClassesAreRefused) {
  EXPECT_EQ(Answer(Query("exa mple.test", kDnsA)), kDnsRefused);
  EXPECT_EQ(summary_, "A exa\\032mple.test -> REFUSED (not a host name)");
  std::string dotted = Query("x.test", kDnsA);
  dotted[13] = '.';  // a label holding a dot
  EXPECT_EQ(Answer(dotted), kDnsRefused);
  EXPECT_EQ(Answer(Query("", kDnsA)), kDnsRefused);
  EXPECT_EQ(Answer(Query("example.test", kDnsA, false, 3)), kDnsRefused);  // CHAOS
  EXPECT_EQ(looked_up_, "");
}

TEST_F(DnsTest, TooShortOrAResponseIsNotAnswered) {
  EXPECT_EQ(Answer(std::string("\x12\x34\x01", 3)), -1);
  EXPECT_EQ(Answer(""), -1);
  std::string response = Query("example.test", kDnsA);
  response[2] = char(0x81);
  EXPECT_EQ(Answer(response), -1);
  EXPECT_EQ(summary_, "malformed query (the packet is a response, not a query): not answered");
}

TEST_F(DnsTest, OtherOpcodesAreNotImplemented) {
  std::string q = Query("example.test", kDnsA);
  q[2] = char(0x28);  // opcode 5 (UPDATE)
  EXPECT_EQ(Answer(q), kDnsNotImp);
}

TEST_F(DnsTest, TruncatedQuestion) {
  std::string q = Query("example.test", kDnsA);
  EXPECT_EQ(FormErr(q.substr(0, q.size() - 2)),
            "malformed query (question: type/class run past the end): FORMERR");
  EXPECT_EQ(FormErr(q.substr(0, 16)),
            "malformed query (question: label runs past the end of the packet): FORMERR");
  EXPECT_EQ(FormErr(q.substr(0, 12)),
            "malformed query (question: name runs past the end of the packet): FORMERR");
}

TEST_F(DnsTest, WrongCounts) {
  std::string q = Query("example.test", kDnsA);
  std::string two = q;
  two[5] = 2;
  EXPECT_EQ(FormErr(two), "malformed query (2 questions (exactly 1 allowed)): FORMERR");
  std::string none = q;
  none[5] = 0;
  FormErr(none);
  std::string answers = q;
  answers[7] = 1;
  FormErr(answers);
  std::string additional = q;
  additional[11] = 2;
  FormErr(additional);
}

TEST_F(DnsTest, CompressionPointersAndBadLabelTypes) {
  std::string q = Query("example.test", kDnsA);
  std::string ptr = q;
  ptr[12] = char(0xc0);
  ptr[13] = 12;  // points at itself: a loop a lax parser would follow
  EXPECT_EQ(FormErr(ptr),
            "malformed query (question: compression pointer in a query name): FORMERR");
  std::string ext = q;
  ext[12] = char(0x41);
  FormErr(ext);
}

TEST_F(DnsTest, OverlongNames) {
  std::string label(63, 'a');
  std::string name = label + "." + label + "." + label + "." + label;  // 4*64 + 1 = 257 bytes
  EXPECT_EQ(FormErr(Query(name, kDnsA)),
            "malformed query (question: name longer than 255 bytes): FORMERR");
}

TEST_F(DnsTest, TrailingBytesAndBadAdditionalRecords) {
  EXPECT_EQ(FormErr(Query("example.test", kDnsA) + "x"),
            "malformed query (1 bytes after the last record): FORMERR");
  std::string edns = Query("example.test", kDnsA, true);
  FormErr(edns.substr(0, edns.size() - 3));  // OPT record cut short
  std::string not_opt = edns;
  not_opt[not_opt.size() - 9] = 1;  // type A instead of OPT
  EXPECT_EQ(FormErr(not_opt),
            "malformed query (the additional record is not an EDNS0 OPT record at the root): "
            "FORMERR");
  std::string rdlen = edns;
  rdlen[rdlen.size() - 1] = 5;  // rdata longer than what is left
  EXPECT_EQ(FormErr(rdlen), "malformed query (OPT record data runs past the end): FORMERR");
}

TEST_F(DnsTest, OversizedPacket) {
  std::string q = Query("example.test", kDnsA) + std::string(kMaxDnsPacket, 'x');
  FormErr(q);
}

TEST_F(DnsTest, FormErrKeepsIdAndHasNoQuestion) {
  std::string q = Query("example.test", kDnsA) + "x";
  ASSERT_EQ(Answer(q), kDnsFormErr);
  EXPECT_EQ(answer_.size(), 12u);
}

// Queries with random edits (bytes, counts and lengths changed, cut, inserted, repeated), as a
// buggy or hostile program could send them. Each is answered with the query's id, QR set and a
// known rcode, or dropped only when it cannot be answered (shorter than an id, or a response);
// the fake-address table is only ever asked about well-formed host names. Deterministic.
TEST_F(DnsTest, MutatedQueriesAreAnsweredCleanlyOrDropped) {
  const std::string templates[] = {
      Query("example.test", kDnsA),
      Query("example.test", kDnsAaaa, true),
      Query("7.0.18.198.in-addr.arpa", kDnsPtr),
      Query("a-b_c.d.e.f", 16 /* TXT */),
      Query("example.test", kDnsA, false, 3),
  };
  std::mt19937 rng(1035);
  int answered = 0, dropped = 0, with_records = 0;
  for (int i = 0; i < 20000; ++i) {
    std::string q = templates[rng() % std::size(templates)];
    // New bytes: random, small (counts, lengths), or 0xc0 (a compression pointer).
    via::test::EditBytes(q, rng, 1 + int(rng() % 3), [&] {
      uint32_t pick = rng() % 4;
      return char(pick < 2 ? rng() : pick == 2 ? rng() % 4 : 0xc0);
    });
    looked_up_.clear();
    std::optional<std::string> a = AnswerDnsQuery(q, policy_, &summary_);
    if (!a) {
      ASSERT_TRUE(q.size() < 12 || (uint8_t(q[2]) & 0x80) != 0) << i << ": " << summary_;
      ++dropped;
      continue;
    }
    ++answered;
    ASSERT_GE(a->size(), 12u) << i;
    ASSERT_EQ(a->substr(0, 2), q.substr(0, 2)) << i;
    ASSERT_TRUE(uint8_t((*a)[2]) & 0x80) << i;
    ASSERT_LE(uint8_t((*a)[3]) & 0x0f, kDnsRefused) << i;
    ASSERT_LE(a->size(), 12 + q.size() + 64) << i;  // a question and at most one record
    if (((uint8_t((*a)[6]) << 8) | uint8_t((*a)[7])) > 0) ++with_records;
    for (size_t start = 0; start < looked_up_.size();) {
      size_t end = looked_up_.find(';', start);
      std::string name = looked_up_.substr(start, end - start);
      ASSERT_FALSE(name.empty()) << i;
      ASSERT_LE(name.size(), 253u) << i;
      for (char c : name) {
        ASSERT_TRUE(std::isalnum(uint8_t(c)) || c == '-' || c == '_' || c == '.')
            << i << ": looked up " << name;
      }
      start = end + 1;
    }
  }
  EXPECT_GT(answered, 10000);
  EXPECT_GT(dropped, 0);
  EXPECT_GT(with_records, 100);
}

TEST(DnsReverseName, Ipv4AndIpv6) {
  EXPECT_EQ(ParseReverseName("7.0.18.198.in-addr.arpa"), Ip("198.18.0.7"));
  EXPECT_EQ(
      ParseReverseName("7.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.f.f.1.6.9.6.6.7.d.f.ip6.arpa"),
      Ip("fd76:6961:ff00::7"));
  EXPECT_FALSE(ParseReverseName("0.18.198.in-addr.arpa"));
  EXPECT_FALSE(ParseReverseName("1.7.0.18.198.in-addr.arpa"));
  EXPECT_FALSE(ParseReverseName("256.0.18.198.in-addr.arpa"));
  EXPECT_FALSE(ParseReverseName("07.0.18.198.in-addr.arpa"));
  EXPECT_FALSE(ParseReverseName(".0.18.198.in-addr.arpa"));
  EXPECT_FALSE(ParseReverseName("in-addr.arpa"));
  EXPECT_FALSE(ParseReverseName("7.0.0.ip6.arpa"));
  EXPECT_FALSE(ParseReverseName("example.test"));
}

}  // namespace
}  // namespace via::broker
