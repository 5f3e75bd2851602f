#include "broker/broker.h"

#include <signal.h>
#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

#include "broker/server.h"
#include "loop/event_loop.h"

namespace via::broker {

namespace {

std::shared_ptr<spdlog::logger> MakeLogger(const BrokerOptions& options) {
  std::vector<spdlog::sink_ptr> sinks;
  if (!options.log_path.empty()) {
    try {
      sinks.push_back(std::make_shared<spdlog::sinks::basic_file_sink_mt>(options.log_path,
                                                                          /*truncate=*/false));
    } catch (const spdlog::spdlog_ex& e) {
      std::fprintf(stderr, "via broker: cannot open log %s: %s\n", options.log_path.c_str(),
                   e.what());
    }
  }
  // With no file to write to, stderr is the only place left.
  if (options.foreground || sinks.empty()) {
    sinks.push_back(std::make_shared<spdlog::sinks::stderr_sink_mt>());
  }
  auto log = std::make_shared<spdlog::logger>("via-broker", sinks.begin(), sinks.end());
  log->set_pattern("%Y-%m-%dT%H:%M:%S.%e via-broker[%P] %l: %v");
  const char* level = std::getenv("VIA_LOG_LEVEL");
  log->set_level(level != nullptr ? spdlog::level::from_str(level) : spdlog::level::info);
  // Lines must be in the file when a test or a user looks, even if the broker is killed.
  log->flush_on(spdlog::level::trace);
  return log;
}

// Blocks SIGTERM/SIGINT/SIGHUP for this thread (they arrive through a signalfd instead) and
// restores the old mask on destruction.
class SignalBlock {
 public:
  SignalBlock() {
    sigemptyset(&set_);
    sigaddset(&set_, SIGTERM);
    sigaddset(&set_, SIGINT);
    sigaddset(&set_, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set_, &old_);
  }
  ~SignalBlock() { pthread_sigmask(SIG_SETMASK, &old_, nullptr); }
  const sigset_t& set() const { return set_; }

 private:
  sigset_t set_, old_;
};

}  // namespace

int RunBroker(const config::Config& config, const BrokerOptions& options, int ready_fd) {
  UniqueFd ready(ready_fd);
  auto log = MakeLogger(options);
  signal(SIGPIPE, SIG_IGN);  // every send uses MSG_NOSIGNAL; this covers anything else
  SignalBlock signals;
  UniqueFd sfd(signalfd(-1, &signals.set(), SFD_NONBLOCK | SFD_CLOEXEC));
  if (!sfd) {
    log->error("cannot start: signalfd: {}", std::strerror(errno));
    return 1;
  }
  EventLoop loop;
  if (Status s = loop.Init(); !s.ok()) {
    log->error("cannot start: {}", s.message());
    return 1;
  }
  Server server(std::make_shared<const config::Config>(config), options, &loop, log);
  if (Status s = server.Start(); !s.ok()) {
    log->error("cannot start: {}", s.message());
    return 1;
  }
  loop.Watch(sfd.get(), EPOLLIN, [&](uint32_t) {
    signalfd_siginfo si;
    while (read(sfd.get(), &si, sizeof si) == ssize_t(sizeof si)) {
      if (si.ssi_signo == SIGHUP) {
        (void)server.Reload("SIGHUP");
      } else {
        log->info("{}: exiting", strsignal(int(si.ssi_signo)));
        loop.Quit();
      }
    }
  });
  if (ready) {
    char one = 1;
    (void)!write(ready.get(), &one, 1);
    ready.reset();
  }
  loop.Run();
  loop.Unwatch(sfd.get());
  log->info("stopped");
  log->flush();
  return 0;
}

}  // namespace via::broker
