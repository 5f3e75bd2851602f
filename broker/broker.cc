#include "broker/broker.h"

#include <signal.h>
#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <cstring>

#include "broker/event_loop.h"
#include "broker/server.h"

namespace via::broker {

namespace {

std::shared_ptr<spdlog::logger> MakeLogger(const BrokerOptions& options) {
  std::vector<spdlog::sink_ptr> sinks;
  if (!options.log_path.empty()) {
    try {
      sinks.push_back(std::make_shared<spdlog::sinks::basic_file_sink_mt>(options.log_path, false));
    } catch (const spdlog::spdlog_ex& e) {
      std::fprintf(stderr, "via broker: cannot open log %s: %s\n", options.log_path.c_str(),
                   e.what());
    }
  }
  if (options.foreground || sinks.empty()) {
    sinks.push_back(std::make_shared<spdlog::sinks::stderr_sink_mt>());
  }
  auto log = std::make_shared<spdlog::logger>("via-broker", sinks.begin(), sinks.end());
  log->set_pattern("%Y-%m-%dT%H:%M:%S.%e via-broker[%P] %l: %v");
  const char* level = std::getenv("VIA_LOG_LEVEL");
  log->set_level(level != nullptr ? spdlog::level::from_str(level) : spdlog::level::info);
  log->flush_on(spdlog::level::trace);
  return log;
}

}  // namespace

int RunBroker(const config::Config& config, const BrokerOptions& options, int ready_fd) {
  auto log = MakeLogger(options);
  EventLoop loop;
  if (Status s = loop.Init(); !s.ok()) {
    log->error("{}", s.message());
    return 1;
  }
  // Signals arrive through a signalfd inside the loop.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  sigset_t old;
  pthread_sigmask(SIG_BLOCK, &set, &old);
  signal(SIGPIPE, SIG_IGN);
  UniqueFd sfd(signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC));
  int status = 0;
  {
    Server server(config, options, &loop, log);
    if (Status s = server.Start(); !s.ok()) {
      log->error("cannot start: {}", s.message());
      pthread_sigmask(SIG_SETMASK, &old, nullptr);
      return 1;
    }
    if (sfd) {
      loop.Watch(sfd.get(), EPOLLIN, [&](uint32_t) {
        signalfd_siginfo si;
        while (read(sfd.get(), &si, sizeof si) == sizeof si) {
          if (si.ssi_signo == SIGHUP) {
            log->warn("SIGHUP: reloading is not supported yet; restart the broker to reload");
          } else {
            log->info("signal {}: exiting", si.ssi_signo);
            loop.Quit();
          }
        }
      });
    }
    if (ready_fd >= 0) {
      char one = 1;
      (void)!write(ready_fd, &one, 1);
      close(ready_fd);
    }
    loop.Run();
    if (sfd) loop.Unwatch(sfd.get());
  }
  log->info("stopped");
  log->flush();
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  return status;
}

}  // namespace via::broker
