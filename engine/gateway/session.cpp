#include "engine/gateway/session.h"

#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <vector>

#include "engine/gateway/net.h"
#include "engine/gateway/tls_setup.h"
#include "engine/tls/m2mvault_tls.h"

namespace m2mvault::gateway {
namespace {

using SslPtr = std::unique_ptr<SSL, decltype(&SSL_free)>;

struct Fd {
  int fd = -1;
  explicit Fd(int f) : fd(f) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

constexpr std::size_t kChunk = 16 * 1024;

// Why a handshake failed, in one line: the vault's answer when the PSK
// look-up failed, else OpenSSL's reason.
std::string handshake_failure(int ssl_error) {
  std::string reason;
  if (m2mvault_tls_last_error() != M2MVAULT_TLS_OK) reason = m2mvault_tls_last_error_message();
  std::string openssl_reason = drain_openssl_errors();
  if (reason.empty()) reason = openssl_reason;
  if (reason.empty()) {
    reason = ssl_error == SSL_ERROR_SYSCALL || ssl_error == SSL_ERROR_ZERO_RETURN
                 ? "the client closed the connection"
                 : "handshake failed";
  }
  return reason;
}

// The entity a client certificate names: its first URI or DNS
// subjectAltName (AE-IDs are URIs, CSE-IDs domain names, TS-0003 10.1).
std::string certificate_entity(X509* cert) {
  std::string entity;
  auto* names =
      static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
  if (names == nullptr) return entity;
  for (int i = 0; i < sk_GENERAL_NAME_num(names) && entity.empty(); ++i) {
    const GENERAL_NAME* name = sk_GENERAL_NAME_value(names, i);
    if (name->type == GEN_URI || name->type == GEN_DNS) {
      const ASN1_IA5STRING* s =
          name->type == GEN_URI ? name->d.uniformResourceIdentifier : name->d.dNSName;
      entity.assign(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)),
                    static_cast<std::size_t>(ASN1_STRING_length(s)));
    }
  }
  GENERAL_NAMES_free(names);
  return entity;
}

void record_peer(SessionRecord& r, SSL* ssl) {
  r.protocol = SSL_get_version(ssl);
  r.cipher = SSL_get_cipher_name(ssl);
  if (const char* id = m2mvault_tls_peer_psk_id(ssl)) {
    r.kpsa_id = id;
    if (const char* entity = m2mvault_tls_peer_entity(ssl)) r.entity = entity;
  }
  if (X509* cert = SSL_get1_peer_certificate(ssl)) {
    char subject[512];
    X509_NAME_oneline(X509_get_subject_name(cert), subject, sizeof subject);
    r.subject = subject;
    r.entity = certificate_entity(cert);
    X509_free(cert);
  }
}

bool needs_quotes(const std::string& v) {
  return v.empty() || v.find_first_of(" \"\\=") != std::string::npos;
}

std::string field(const char* name, const std::string& value) {
  std::string out = std::string(" ") + name + "=";
  if (!needs_quotes(value)) return out + value;
  out += '"';
  for (char c : value) {
    if (c == '"' || c == '\\') out += '\\';
    out += static_cast<unsigned char>(c) < 0x20 ? '?' : c;
  }
  return out + '"';
}

}  // namespace

std::string format_record(const SessionRecord& r) {
  std::string line = "session";
  line += field("peer", r.peer);
  line += field("outcome", r.outcome);
  line += field("entity", r.entity.empty() ? "-" : r.entity);
  if (!r.kpsa_id.empty()) line += field("kpsa_id", r.kpsa_id);
  if (!r.subject.empty()) line += field("subject", r.subject);
  if (!r.protocol.empty()) line += field("protocol", r.protocol);
  if (!r.cipher.empty()) line += field("cipher", r.cipher);
  line += " bytes_in=" + std::to_string(r.bytes_in);
  line += " bytes_out=" + std::to_string(r.bytes_out);
  line += " duration_ms=" + std::to_string(r.duration.count());
  if (!r.reason.empty()) line += field("reason", r.reason);
  return line;
}

SessionRecord serve_session(SSL_CTX* ctx, int client_fd, const std::string& forward_address,
                            const SessionLimits& limits, int stop_fd) {
  const auto started = Clock::now();
  Fd client(client_fd);
  SessionRecord r;
  r.peer = peer_address(client_fd);
  auto finish = [&](const char* outcome, std::string reason) {
    r.outcome = outcome;
    r.reason = std::move(reason);
    r.duration = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started);
    return r;
  };
  set_nonblocking(client_fd);
  SslPtr ssl(SSL_new(ctx), &SSL_free);
  if (!ssl || SSL_set_fd(ssl.get(), client_fd) != 1)
    return finish("handshake_failed", drain_openssl_errors());

  // --- TLS handshake, bounded by the handshake timeout.
  ERR_clear_error();
  m2mvault_tls_clear_error();
  const auto handshake_deadline = Clock::now() + limits.handshake_timeout;
  for (;;) {
    const int rc = SSL_accept(ssl.get());
    if (rc == 1) break;
    const int err = SSL_get_error(ssl.get(), rc);
    if (err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE)
      return finish("handshake_failed", handshake_failure(err));
    bool timed_out = false;
    if (!wait_ready(client_fd, err == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, stop_fd,
                    handshake_deadline, timed_out)) {
      return timed_out
                 ? finish("timeout", "no complete TLS handshake within " +
                                         std::to_string(limits.handshake_timeout.count()) + " ms")
                 : finish("shutdown", "the gateway is stopping");
    }
  }
  record_peer(r, ssl.get());

  // --- The CSE.
  std::string error;
  Fd cse(connect_tcp(forward_address, limits.connect_timeout, error));
  if (cse.fd < 0) {
    SSL_shutdown(ssl.get());
    return finish("forward_failed", error);
  }

  // --- Relay: plaintext from the TLS client to the CSE and back.
  std::vector<char> to_cse, to_client;  // pending bytes
  bool client_eof = false, cse_eof = false, cse_write_closed = false;
  bool ssl_write_wants_read = false, ssl_read_wants_write = false;
  auto idle_deadline = Clock::now() + limits.idle_timeout;
  char buf[kChunk];
  for (;;) {
    bool progress = false;
    // TLS -> to_cse
    if (to_cse.empty() && !client_eof) {
      ssl_read_wants_write = false;
      const int n = SSL_read(ssl.get(), buf, sizeof buf);
      if (n > 0) {
        to_cse.assign(buf, buf + n);
        r.bytes_in += static_cast<std::uint64_t>(n);
        progress = true;
      } else {
        const int err = SSL_get_error(ssl.get(), n);
        if (err == SSL_ERROR_WANT_WRITE) {
          ssl_read_wants_write = true;
        } else if (err != SSL_ERROR_WANT_READ) {
          client_eof = true;  // close_notify, TCP close or a TLS error
          ERR_clear_error();
          progress = true;
        }
      }
    }
    // to_cse -> CSE
    if (!to_cse.empty()) {
      const ssize_t n = ::send(cse.fd, to_cse.data(), to_cse.size(), MSG_NOSIGNAL);
      if (n > 0) {
        to_cse.erase(to_cse.begin(), to_cse.begin() + n);
        progress = true;
      } else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        to_cse.clear();
        cse_eof = true;  // the CSE is gone
        progress = true;
      }
    }
    if (client_eof && to_cse.empty() && !cse_write_closed) {
      ::shutdown(cse.fd, SHUT_WR);  // pass the client's end on to the CSE
      cse_write_closed = true;
    }
    // CSE -> to_client
    if (to_client.empty() && !cse_eof) {
      const ssize_t n = ::recv(cse.fd, buf, sizeof buf, 0);
      if (n > 0) {
        to_client.assign(buf, buf + n);
        progress = true;
      } else if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
        cse_eof = true;
        progress = true;
      }
    }
    // to_client -> TLS
    if (!to_client.empty()) {
      ssl_write_wants_read = false;
      const int n = SSL_write(ssl.get(), to_client.data(), static_cast<int>(to_client.size()));
      if (n > 0) {
        to_client.erase(to_client.begin(), to_client.begin() + n);
        r.bytes_out += static_cast<std::uint64_t>(n);
        progress = true;
      } else {
        const int err = SSL_get_error(ssl.get(), n);
        if (err == SSL_ERROR_WANT_READ) {
          ssl_write_wants_read = true;
        } else if (err != SSL_ERROR_WANT_WRITE) {
          to_client.clear();
          client_eof = true;
          cse_eof = true;  // nobody to deliver to
          ERR_clear_error();
          progress = true;
        }
      }
    }
    // The CSE has finished and everything it sent is delivered: end the
    // TLS session (close_notify). Also when both sides are done.
    if (cse_eof && to_client.empty()) {
      SSL_shutdown(ssl.get());
      return finish("closed", "");
    }
    if (progress) {
      idle_deadline = Clock::now() + limits.idle_timeout;
      continue;
    }

    // Nothing to do until a socket is ready.
    short client_events = 0, cse_events = 0;
    if ((to_cse.empty() && !client_eof) || ssl_write_wants_read) client_events |= POLLIN;
    if ((!to_client.empty() && !ssl_write_wants_read) || ssl_read_wants_write)
      client_events |= POLLOUT;
    if (to_client.empty() && !cse_eof) cse_events |= POLLIN;
    if (!to_cse.empty()) cse_events |= POLLOUT;
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(idle_deadline - Clock::now()).count();
    if (left <= 0) {
      SSL_shutdown(ssl.get());
      return finish("timeout", "idle for " + std::to_string(limits.idle_timeout.count()) + " ms");
    }
    // A socket we wait nothing from is left out: poll() would report its
    // hang-up again and again.
    pollfd fds[3] = {{client_events ? client_fd : -1, client_events, 0},
                     {cse_events ? cse.fd : -1, cse_events, 0},
                     {stop_fd, POLLIN, 0}};
    const int n = ::poll(fds, 3, static_cast<int>(std::min<long long>(left, 1000)));
    if (n < 0 && errno != EINTR)
      return finish("closed", std::string("poll: ") + std::strerror(errno));
    if (n > 0 && (fds[2].revents & POLLIN)) {
      SSL_shutdown(ssl.get());
      return finish("shutdown", "the gateway is stopping");
    }
    // A hang-up shows as readable: the next recv/SSL_read reports it.
  }
}

}  // namespace m2mvault::gateway
