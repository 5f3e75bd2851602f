// The network "none" (overlays/factory.h, NewNoNetwork).
#include <cerrno>
#include <memory>
#include <string>
#include <vector>

#include "overlays/factory.h"

namespace via::overlays {

namespace {

constexpr char kWhy[] = "no network: this program runs with network none";

class NoNetwork final : public Overlay {
 public:
  const std::string& id() const override { return id_; }
  const std::vector<Endpoint>& endpoints() const override { return endpoints_; }
  const char* endpoint_role() const override { return "network"; }
  Result<std::unique_ptr<Handshake>> NewHandshake(const Target& /*target*/) override {
    return Status::Error(ENETUNREACH, kWhy);
  }
  int connect_timeout_ms() const override { return 1000; }
  // Names are not resolved either, not even to fake addresses: the lookup itself fails.
  bool ResolvesRemotely(const Target& /*target*/) const override { return true; }
  Result<std::unique_ptr<ResolveHandshake>> NewResolveHandshake(const Target& /*t*/) override {
    return Status::Error(ENETUNREACH, kWhy);
  }
  Result<std::unique_ptr<InboundListener>> Listen(uint16_t /*port*/, const std::string& /*owner*/,
                                                  InboundListener::Events /*events*/) override {
    return Status::Error(ENETUNREACH, kWhy);
  }

 private:
  std::string id_ = "none";
  std::vector<Endpoint> endpoints_;
};

}  // namespace

std::unique_ptr<Overlay> NewNoNetwork() { return std::make_unique<NoNetwork>(); }

}  // namespace via::overlays
