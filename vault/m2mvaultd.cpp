// m2mvaultd: the m2mvault daemon.
//
//   m2mvaultd --state-dir DIR [--config FILE] [--socket PATH] [--log-level LEVEL]
//             [--backend pkcs11|tpm2] [--tcti TCTI]
//
// Start order: configuration, state directory (initialized on first start),
// token, catalog, reconciliation, then the socket. Any failure before the
// socket opens stops the daemon with one clear line and exit status 1.
#include <fmt/format.h>
#include <signal.h>
#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <memory>
#include <optional>
#include <thread>

#include "api/error.h"
#include "api/server.h"
#include "hsm/pkcs11/pkcs11_backend.h"
#include "hsm/tpm2/connection.h"
#include "hsm/tpm2/tpm2_backend.h"
#include "policies/policy.h"
#include "vault/audit_trail.h"
#include "vault/catalog.h"
#include "vault/config.h"
#include "vault/dispatch.h"
#include "vault/handshakes.h"
#include "vault/state_dir.h"
#include "vault/vault.h"

namespace {

using namespace m2mvault;

// Key bytes pass through this process: it must never leave a core file.
void forbid_core_dumps() {
  struct rlimit none {};
  ::setrlimit(RLIMIT_CORE, &none);
  ::prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
}

void setup_logging(const vault::Config& config) {
  std::vector<spdlog::sink_ptr> sinks;
  sinks.push_back(std::make_shared<spdlog::sinks::stderr_sink_mt>());
  if (!config.log_file.empty()) {
    sinks.push_back(std::make_shared<spdlog::sinks::basic_file_sink_mt>(config.log_file.string()));
  }
  auto logger = std::make_shared<spdlog::logger>("m2mvaultd", sinks.begin(), sinks.end());
  auto level = spdlog::level::from_str(config.log_level);
  if (level == spdlog::level::off && config.log_level != "off") {
    throw Error(
        ErrorCode::invalid_argument,
        fmt::format("unknown log level '{}' (trace, debug, info, warn, error)", config.log_level));
  }
  logger->set_level(level);
  logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e %l %v");
  logger->flush_on(spdlog::level::info);
  spdlog::set_default_logger(logger);
}

int run(int argc, char** argv) {
  CLI::App app{"m2mvaultd - the m2mvault credential vault daemon"};
  std::string state_dir;
  std::string config_file;
  std::string socket;
  std::string log_level;
  std::string policy_file;
  std::string backend;
  std::string tcti;
  bool verify_audit = false;
  app.add_option("--state-dir", state_dir, "State directory (catalog, embedded token)");
  app.add_option("--config", config_file, "TOML configuration file")->check(CLI::ExistingFile);
  app.add_option("--socket", socket, "Unix socket path (default /run/m2mvault/m2mvault.sock)");
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error");
  app.add_option("--policy", policy_file, "Policy file (docs/POLICY.md); default: admins only");
  app.add_option("--backend", backend, "Secure element: pkcs11 (default) or tpm2");
  app.add_option("--tcti", tcti,
                 "TPM connection for --backend tpm2 (default device:/dev/tpmrm0; swtpm:port=N)");
  app.add_flag("--verify-audit", verify_audit,
               "Verify the audit log with the token's audit key and exit (0: intact, 3: broken); "
               "for when the daemon cannot start. The daemon must not be running");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? 0 : 2;
  }

  vault::Config config = vault::load_config(
      config_file.empty() ? std::nullopt : std::optional<std::filesystem::path>(config_file));
  if (!state_dir.empty()) config.state_dir = state_dir;
  if (!socket.empty()) config.socket = socket;
  if (!log_level.empty()) config.log_level = log_level;
  if (!policy_file.empty()) config.policy_file = policy_file;
  if (!backend.empty()) config.backend = backend;
  if (!tcti.empty()) config.tcti = tcti;
  vault::check_backend(config);
  setup_logging(config);
  forbid_core_dumps();

  // Signals are taken by one thread with sigwait; every other thread
  // inherits the blocked mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  ::signal(SIGPIPE, SIG_IGN);

  vault::StateDir state(config);
  if (state.initialized_now() && config.tpm()) {
    spdlog::info("initialized {} for the TPM backend", state.path().string());
  } else if (state.initialized_now()) {
    spdlog::info("created a SoftHSM2 token and its key-encryption key in {}",
                 state.path().string());
    if (config.embedded()) {
      spdlog::warn("the token's SO PIN is in {}: move it offline",
                   (state.path() / hsm::pkcs11::EmbeddedLayout::so_pin).string());
    }
  }
  std::unique_ptr<hsm::SecureElement> se;
  try {
    if (config.tpm()) {
      const auto tpm = state.tpm2_config();
      if (!hsm::tpm2::is_resource_manager(tpm.tpm.tcti)) {
        // The core flushed every transient object and session at connect.
        spdlog::warn(
            "TCTI {} is not a resource manager: m2mvaultd needs exclusive use of this TPM "
            "(it flushes every loaded object and session at start, and counts on the slots)",
            tpm.tpm.tcti);
      }
      se = hsm::tpm2::open(tpm);
    } else {
      se = hsm::pkcs11::open(state.pkcs11_config());
    }
  } catch (const hsm::Error& e) {
    throw Error(ErrorCode::backend_unavailable, e.what());
  }
  auto catalog = vault::Catalog::open(state.catalog_path());
  if (verify_audit) {
    const auto report =
        vault::verify_audit_trail(vault::audit_path(config, state.path()), *catalog, *se);
    std::printf("%s\n", report.dump(2).c_str());
    return report.value("intact", false) ? 0 : 3;
  }
  vault::Vault vault(*catalog, *se);
  auto report = vault.reconcile();
  if (report.completed + report.dropped + report.destroyed > 0) {
    spdlog::warn(
        "reconciled catalog and token after an interrupted run: {} completed, {} dropped, "
        "{} orphan objects destroyed",
        report.completed, report.dropped, report.destroyed);
  }

  policies::PolicyStore policies(config.policy_file.empty()
                                     ? std::nullopt
                                     : std::optional<std::filesystem::path>(config.policy_file),
                                 ::geteuid());
  spdlog::info("policy: {}", policies.current()->describe());
  vault::Handshakes handshakes(vault, *se, config);
  std::unique_ptr<vault::AuditTrail> audit;
  if (config.audit.enabled) {
    try {
      audit = std::make_unique<vault::AuditTrail>(config, state.path(), *catalog, *se);
    } catch (const Error& e) {
      throw Error(e.code(), fmt::format("{} (inspect it with 'm2mvaultd --state-dir {} "
                                        "--verify-audit'; the daemon will not run unaudited)",
                                        e.what(), state.path().string()));
    }
  } else {
    spdlog::warn("the audit log is disabled ([audit] enabled = false): no request is recorded");
  }
  vault::Dispatcher dispatcher(vault, handshakes, policies, audit.get());
  api::ServerConfig server_config;
  server_config.socket_path = config.socket;
  server_config.threads = config.threads;
  server_config.max_connections = config.max_connections;
  server_config.frame_timeout = config.frame_timeout;
  server_config.idle_timeout = config.idle_timeout;
  // [limits] connections_per_principal of the policy in force; administrators are exempt.
  server_config.connections_per_principal = [&policies](const api::Principal& p) -> std::size_t {
    const auto policy = policies.current();
    if (policy->is_administrator({p.uid, p.gid, p.groups})) return 0;
    return policy->limits().connections_per_principal;
  };
  api::Server server(server_config, dispatcher);

  std::thread signal_thread([&] {
    int sig = 0;
    while (sigwait(&signals, &sig) == 0) {
      if (sig == SIGHUP) {
        // Audited as the daemon's own doing: by whom the signal came is unknown.
        const std::string source =
            config.policy_file.empty() ? std::string() : config.policy_file.string();
        try {
          spdlog::info("SIGHUP: policy reloaded: {}", policies.reload());
          if (audit) {
            const auto& limits = policies.current()->limits();
            audit->set_flood_limits(limits.denial_flood_threshold, limits.denial_flood_window);
            audit->record_daemon_event("policy.reload", source, "ok", "");
          }
        } catch (const std::exception& e) {
          spdlog::error("SIGHUP: policy not reloaded, the old one stays in force: {}", e.what());
          try {
            if (audit)
              audit->record_daemon_event("policy.reload", source, "error", "invalid_argument");
          } catch (const std::exception& failure) {
            spdlog::error("SIGHUP: reload not audited: {}", failure.what());
          }
        }
        continue;
      }
      spdlog::info("signal {}: shutting down", sig);
      server.stop();
      return;
    }
  });

  auto info = se->info();
  spdlog::info("m2mvaultd ready: socket {} backend {} token '{}' ({}), {} keys",
               config.socket.string(), info.backend, info.token_label, info.token_model,
               vault.count());
  auto stop_signal_thread = [&] {
    pthread_kill(signal_thread.native_handle(), SIGTERM);
    signal_thread.join();
  };
  try {
    server.run();
  } catch (...) {
    stop_signal_thread();
    throw;
  }
  stop_signal_thread();
  spdlog::info("m2mvaultd stopped");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const m2mvault::Error& e) {
    std::fprintf(stderr, "m2mvaultd: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "m2mvaultd: %s\n", e.what());
    return 1;
  }
}
