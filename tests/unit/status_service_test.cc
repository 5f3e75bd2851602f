// The status as data (broker/status_service.h): one StatusData rendered as the text `via status`
// prints and as the JSON of `via status --json` (docs/json.md). No broker.
#include "broker/status_service.h"

#include <gtest/gtest.h>

#include <string>

namespace via::broker {
namespace {

class StatusRenderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    d_.pid = 42;
    d_.config = "/srv/app/via.yaml";
    d_.fingerprint = "f00d";
    d_.socket = "/run/via/broker.sock";
    d_.program_rules = 1;
    d_.policies = 2;
    d_.uptime_s = 7;
    StatusData::Overlay tor;
    tor.id = "app:tor";
    tor.kind = "network.socks5";
    tor.settings = " 127.0.0.1:9050 isolate_streams=on";
    tor.available = true;
    tor.connects_ok = 3;
    tor.connects_failed = 1;
    StatusData::Overlay i2p;
    i2p.id = "app:i2p";
    i2p.kind = "network.i2p";
    i2p.error = "SAM bridge unreachable";
    i2p.lines = {"sam session x: ready"};
    d_.overlays = {i2p, tor};
    StatusData::Session strict{"4567cdef", "app:tor", 1, false, 0, true, true, {}};
    strict.refused = {{"UDP send", 3}, {"io_uring_setup", 1}};
    d_.sessions = {{"0123abcd", "app:tor", 2, true, 1, false, false, {}}, strict};
    d_.listeners = {{"app:i2p", "127.0.0.1:8080", "", 0, "pid 9 /usr/bin/python3"}};
    d_.clients = 4;
    d_.connects_in_flight = 1;
    d_.open_descriptors = 90;
    d_.descriptor_limit = 100;
    d_.caps = {64, 16, 24};
    d_.load.refused_other_uid = 5;
    StatusData::Program curl{7, "/usr/bin/curl", "app:tor", "rule app:web", false, ""};
    StatusData::Program denied{8, "/usr/bin/\"q\"", "app:i2p", "", true, "denied by app:deny"};
    d_.programs = {curl, denied};
    d_.fake_names = 12;
    d_.fake_ipv4 = "198.18.0.0/15";
    d_.fake_ipv6 = "fd76:6961:ff00::/64";
  }
  StatusData d_;
};

TEST_F(StatusRenderTest, TextIsWhatViaStatusPrints) {
  EXPECT_EQ(RenderStatusText(d_),
            "broker pid 42, config /srv/app/via.yaml (fingerprint f00d, 1 program rules, 2 "
            "network.select policies), socket /run/via/broker.sock, up 7s\n"
            "overlay app:i2p network.i2p unavailable: SAM bridge unreachable\n"
            "overlay app:tor network.socks5 127.0.0.1:9050 isolate_streams=on connects ok=3 "
            "failed=1\n"
            "sessions: 2\n"
            "session 0123abcd network app:tor clients=2 detached heirs=1\n"
            "session 4567cdef network app:tor clients=1 strict (audit) refused: UDP send x3, "
            "io_uring_setup x1\n"
            "sam session x: ready\n"
            "listeners: 1\n"
            "listener app:i2p 127.0.0.1:8080 (not ready) accepted=0 pid 9 /usr/bin/python3\n"
            "clients: 4, connects in flight: 1\n"
            "descriptors: 90 of 100 in use (RLIMIT_NOFILE); clients at most 64, 16 per process\n"
            "WARNING: the broker is near its descriptor limit (90 of 100): new clients may be "
            "refused; raise `ulimit -n` for the broker, or find the program holding many "
            "connections (the program lines below)\n"
            "refused clients: 5 since start (descriptor limit 0, client cap 0, per-process cap 0, "
            "other uid 5)\n"
            "backpressure: 0 time(s) a client's unread replies or connects stopped the broker "
            "reading its requests; 0 client(s) paused now; 0 log line(s) suppressed\n"
            "program pid 7 /usr/bin/curl network app:tor (rule app:web)\n"
            "program pid 8 /usr/bin/\"q\" network app:i2p REFUSED: denied by app:deny\n"
            "fake addresses: 12 names (pool 198.18.0.0/15, fd76:6961:ff00::/64)\n");
}

TEST_F(StatusRenderTest, JsonCarriesTheSameFacts) {
  const std::string j = RenderStatusJson(d_);
  EXPECT_EQ(j.front(), '{');
  EXPECT_EQ(j.back(), '}');
  EXPECT_EQ(j.find('\n'), std::string::npos);
  for (const char* member : {
           R"("broker":{"pid":42,"config":"/srv/app/via.yaml","fingerprint":"f00d")",
           R"({"id":"app:i2p","kind":"network.i2p","settings":"","available":false,)"
           R"("error":"SAM bridge unreachable","connects_ok":0,"connects_failed":0,)"
           R"("lines":["sam session x: ready"]})",
           R"("settings":"127.0.0.1:9050 isolate_streams=on","available":true,"error":null,)"
           R"("connects_ok":3,"connects_failed":1,"lines":[])",
           R"("sessions":[{"token_prefix":"0123abcd","network":"app:tor","clients":2,)"
           R"("detached":true,"heirs":1,"strict":false,"audit":false,"refused_by_kind":{}},)",
           R"({"token_prefix":"4567cdef","network":"app:tor","clients":1,"detached":false,)"
           R"("heirs":0,"strict":true,"audit":true,"refused_by_kind":{"UDP send":3,)"
           R"("io_uring_setup":1}}])",
           R"("address":null,"accepted":0)",
           R"("clients":4,"connects_in_flight":1)",
           R"("refused":{"descriptor_limit":0,"client_cap":0,"per_process_cap":0,"other_uid":5})",
           R"({"pid":7,"exe":"/usr/bin/curl","network":"app:tor","origin":"rule app:web",)"
           R"("error":null})",
           R"({"pid":8,"exe":"/usr/bin/\"q\"","network":"app:i2p","origin":null,)"
           R"("error":"denied by app:deny"})",
           R"("fake_addresses":{"names":12,"ipv4":"198.18.0.0/15","ipv6":"fd76:6961:ff00::/64"})",
       }) {
    EXPECT_NE(j.find(member), std::string::npos) << member << "\nin " << j;
  }
}

}  // namespace
}  // namespace via::broker
