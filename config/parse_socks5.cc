// `kind: network.socks5` entries.
#include "config/parse_util.h"

namespace via::config::detail {

Status ParseSocks5(const EntryReader& r, Socks5Settings* s) {
  if (Status st = r.CheckKnown({"host", "port", "username", "password", "isolate_streams",
                                "connect_timeout", "remote_resolve", "pipeline"});
      !st.ok()) {
    return st;
  }
  if (Status st = r.HostPort(&s->host, &s->port); !st.ok()) return st;
  if (Status st = r.String("username", &s->username, kMaxCredentialBytes); !st.ok()) return st;
  if (Status st = r.String("password", &s->password, kMaxCredentialBytes); !st.ok()) return st;
  if (Status st = r.Bool("isolate_streams", &s->isolate_streams); !st.ok()) return st;
  if (Status st = r.Bool("remote_resolve", &s->remote_resolve); !st.ok()) return st;
  if (Status st = r.Bool("pipeline", &s->pipeline); !st.ok()) return st;
  return r.Duration("connect_timeout", &s->connect_timeout_ms);
}

}  // namespace via::config::detail
