// COpenSSL: the OpenSSL calls respool's TLS upstream connections need. Macros do not import into Swift: the few used
// are wrapped in static inline functions here.
#ifndef RESPOOL_COPENSSL_SHIM_H
#define RESPOOL_COPENSSL_SHIM_H
#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

/// Partial writes (one TLS record at a time from an evbuffer), a write buffer that may move between retries, and read
/// and write buffers released while a connection is idle.
static inline void respool_ssl_set_modes(SSL *ssl) {
    SSL_set_mode(ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_RELEASE_BUFFERS);
}

/// Server Name Indication.
static inline int respool_ssl_set_sni(SSL *ssl, const char *name) {
    return (int)SSL_set_tlsext_host_name(ssl, name);
}

/// TLS 1.2 at least.
static inline int respool_ssl_ctx_min_tls12(SSL_CTX *ctx) {
    return (int)SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
}
#endif
