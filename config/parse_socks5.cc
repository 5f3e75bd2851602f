// `kind: network.socks5` entries.
#include "config/parse_util.h"

namespace via::config::detail {

namespace {

// `isolation:`, and `isolate_streams: true` as its older spelling of `connection`.
Status ParseIsolation(const EntryReader& r, Socks5Settings* s) {
  std::string name;
  if (Status st = r.String("isolation", &name); !st.ok()) return st;
  if (name.empty()) {
    if (r.Has("isolation")) return r.Error("isolation", "must not be empty");
    s->isolation = s->isolate_streams ? Isolation::kConnection : Isolation::kNone;
    return Status::Ok();
  }
  static constexpr Isolation kAll[] = {Isolation::kNone,        Isolation::kConnection,
                                       Isolation::kDestination, Isolation::kProcess,
                                       Isolation::kProgram,     Isolation::kSession};
  bool found = false;
  for (Isolation i : kAll) {
    if (name == IsolationName(i)) {
      s->isolation = i;
      found = true;
    }
  }
  if (!found) {
    return r.Error("isolation",
                   "must be connection, destination, process, program, session or "
                   "none, not " +
                       Quote(name));
  }
  if (r.Has("isolate_streams") && s->isolate_streams != (s->isolation == Isolation::kConnection)) {
    return r.Error("isolate_streams", std::string("contradicts isolation: ") + name +
                                          " (isolate_streams: true means isolation: connection;"
                                          " give only one)");
  }
  s->isolate_streams = s->isolation == Isolation::kConnection;
  return Status::Ok();
}

Status ParseControlPort(const EntryReader& r, Socks5Settings* s) {
  if (Status st = r.String("control_password", &s->control_password); !st.ok()) return st;
  const YAML::Node* v = r.Value("control_port");
  if (v == nullptr || v->IsNull()) {
    if (!s->control_password.empty()) {
      return r.Error("control_password", "needs control_port (Tor's ControlPort on host)");
    }
    return Status::Ok();
  }
  int port = 0;
  if (!v->IsScalar() || !YAML::convert<int>::decode(*v, port) || port < 1 || port > 65535) {
    return r.Error("control_port", "must be a port number (1-65535)");
  }
  s->control_port = port;
  return Status::Ok();
}

}  // namespace

Status ParseSocks5(const EntryReader& r, Socks5Settings* s) {
  if (Status st = r.CheckKnown({"host", "port", "username", "password", "isolate_streams",
                                "isolation", "connect_timeout", "remote_resolve", "pipeline",
                                "optimistic_data", "control_port", "control_password", "tor"});
      !st.ok()) {
    return st;
  }
  if (Status st = r.HostPort(&s->host, &s->port); !st.ok()) return st;
  if (Status st = r.String("username", &s->username, kMaxCredentialBytes); !st.ok()) return st;
  if (Status st = r.String("password", &s->password, kMaxCredentialBytes); !st.ok()) return st;
  if (Status st = r.Bool("isolate_streams", &s->isolate_streams); !st.ok()) return st;
  if (Status st = ParseIsolation(r, s); !st.ok()) return st;
  if (Status st = ParseControlPort(r, s); !st.ok()) return st;
  if (Status st = r.Bool("remote_resolve", &s->remote_resolve); !st.ok()) return st;
  if (Status st = r.Bool("pipeline", &s->pipeline); !st.ok()) return st;
  if (Status st = r.Bool("optimistic_data", &s->optimistic_data); !st.ok()) return st;
  if (r.Has("tor")) {
    bool tor = false;
    if (Status st = r.Bool("tor", &tor); !st.ok()) return st;
    s->tor = tor ? 1 : 0;
  }
  return r.Duration("connect_timeout", &s->connect_timeout_ms);
}

}  // namespace via::config::detail
