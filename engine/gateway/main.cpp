// m2mvault-gateway: a TLS terminator in front of a CSE, built only on the
// vault — TLS-PSK with the psk-lookup-table from the vault
// (libm2mvault-tls) and/or ECDHE-ECDSA with a certificate whose private key
// stays in the vault (the OpenSSL provider `m2mvault`). It forwards
// plaintext to the CSE and logs every session's authenticated AE-ID/CSE-ID.
// docs/GATEWAY.md describes it.
#include <fmt/format.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "api/error.h"
#include "engine/gateway/gateway.h"
#include "engine/gateway/net.h"
#include "engine/gateway/session.h"
#include "engine/gateway/tls_setup.h"

namespace {

using m2mvault::Error;
using namespace m2mvault::gateway;

std::atomic<Gateway*> running_gateway{nullptr};

extern "C" void on_stop_signal(int) {
  if (Gateway* g = running_gateway.load()) g->stop();
}

void print_line(const std::string& line) {
  std::fputs(line.c_str(), stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);
}

int tls_version(const std::string& v) {
  return v == "1.3" ? TLS1_3_VERSION : TLS1_2_VERSION;
}

std::chrono::milliseconds seconds(double s) {
  return std::chrono::milliseconds(static_cast<long long>(s * 1000));
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"m2mvault-gateway: TLS in front of a CSE, with keys from the m2mvault vault"};
  std::string listen_address, forward_address, min_tls = "1.2", max_tls = "1.3";
  TlsOptions tls;
  std::size_t max_connections = 64;
  double handshake_timeout = 10, idle_timeout = 300, connect_timeout = 5, drain = 15;

  app.add_option("--listen", listen_address, "Address to accept TLS on, host:port (port 0: any)")
      ->required();
  app.add_option("--forward", forward_address, "The CSE's plaintext address, host:port")
      ->required();
  app.add_flag("--psk", tls.psk,
               "Accept TLS-PSK clients; each psk_identity (KpsaId) is looked up in the vault");
  auto* key = app.add_option("--key", tls.key_name,
                             "Vault signing key of the gateway's certificate (m2mvault:<name>)");
  auto* cert = app.add_option("--cert", tls.cert_file, "Certificate chain (PEM) for --key")
                   ->check(CLI::ExistingFile);
  key->needs(cert);
  cert->needs(key);
  app.add_option("--client-ca", tls.client_ca_file,
                 "Require client certificates issued by these CAs (PEM)")
      ->check(CLI::ExistingFile);
  app.add_option("--socket", tls.socket_path,
                 "m2mvaultd socket (default: $M2MVAULT_SOCKET, else /run/m2mvault/m2mvault.sock)");
  app.add_option("--provider-dir", tls.provider_dir,
                 "Directory of the m2mvault provider module (default: $OPENSSL_MODULES)");
  app.add_option("--ciphers", tls.ciphers,
                 "TLS 1.2 cipher list (default: PSK-AES128-CBC-SHA256 and/or "
                 "ECDHE-ECDSA-AES128-SHA256, the oneM2M suites)");
  app.add_option("--ciphersuites", tls.ciphersuites, "TLS 1.3 cipher suites (default: OpenSSL's)");
  app.add_option("--min-tls", min_tls, "Lowest TLS version")->check(CLI::IsMember({"1.2", "1.3"}));
  app.add_option("--max-tls", max_tls, "Highest TLS version")->check(CLI::IsMember({"1.2", "1.3"}));
  app.add_option("--max-connections", max_connections, "Sessions served at once")
      ->check(CLI::Range(1, 10000));
  app.add_option("--handshake-timeout", handshake_timeout, "Seconds for a TLS handshake")
      ->check(CLI::PositiveNumber);
  app.add_option("--idle-timeout", idle_timeout, "Seconds a session may stay silent")
      ->check(CLI::PositiveNumber);
  app.add_option("--connect-timeout", connect_timeout, "Seconds to connect to the CSE")
      ->check(CLI::PositiveNumber);
  app.add_option("--drain", drain, "Seconds sessions get to end after SIGTERM")
      ->check(CLI::NonNegativeNumber);
  CLI11_PARSE(app, argc, argv);

  tls.min_version = tls_version(min_tls);
  tls.max_version = tls_version(max_tls);
  if (tls.min_version > tls.max_version) {
    std::fprintf(stderr, "m2mvault-gateway: invalid_argument: --min-tls is above --max-tls\n");
    return 2;
  }

  ::signal(SIGPIPE, SIG_IGN);
  try {
    parse_host_port(forward_address);  // a typo fails now, not at the first client
    SslCtxPtr ctx = make_server_context(tls);
    const int listen_fd = listen_tcp(listen_address, 128);
    SessionLimits limits{seconds(handshake_timeout), seconds(connect_timeout),
                         seconds(idle_timeout)};
    Gateway gateway(ctx.get(), listen_fd, forward_address, limits, max_connections, print_line);

    running_gateway = &gateway;
    struct sigaction sa {};
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    ::sigaction(SIGTERM, &sa, nullptr);
    ::sigaction(SIGINT, &sa, nullptr);

    std::string modes = tls.psk ? "psk" : "";
    if (!tls.key_name.empty())
      modes += std::string(modes.empty() ? "" : ", ") + "certificate " + tls.key_name;
    print_line(fmt::format("m2mvault-gateway: listening on {} ({}), forwarding to {}",
                           local_address(listen_fd), modes, forward_address));

    const std::size_t left = gateway.run(seconds(drain));
    running_gateway = nullptr;
    ::close(listen_fd);
    if (left > 0) {
      // Detached sessions still use the gateway: leave without unwinding.
      print_line(fmt::format("m2mvault-gateway: stopped; {} session(s) did not end in time", left));
      std::_Exit(0);
    }
    print_line("m2mvault-gateway: stopped");
    return 0;
  } catch (const Error& e) {
    std::fprintf(stderr, "m2mvault-gateway: %s: %s\n",
                 std::string(m2mvault::to_string(e.code())).c_str(), e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "m2mvault-gateway: internal: %s\n", e.what());
    return 1;
  }
}
