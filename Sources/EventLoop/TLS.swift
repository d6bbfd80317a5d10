// TLS: client-side TLS over a non-blocking socket (OpenSSL), for rediss:// upstreams. The connection keeps its own
// events: a session only replaces read() with SSL_read and the evbuffer write with SSL_write, and says when the
// handshake or a write has to wait for the socket.
internal import CLibevent
internal import COpenSSL
import Glibc

/// Which part of the TLS set-up failed at start-up (the caller names its setting).
public enum TLSSetupError: Error, CustomStringConvertible {
    case context(String)
    case caFile(String)
    case certificate(String)
    case privateKey(String)

    public var description: String {
        switch self {
        case .context(let s), .caFile(let s), .certificate(let s), .privateKey(let s): return s
        }
    }
}

/// OpenSSL's error queue as one line ("" when empty); the queue is cleared.
private func drainErrors() -> String {
    var parts: [String] = []
    while true {
        let e = ERR_get_error()
        if e == 0 { break }
        var buf = [CChar](repeating: 0, count: 256)
        ERR_error_string_n(e, &buf, buf.count)
        let s = String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        if !parts.contains(s) { parts.append(s) }
    }
    return parts.joined(separator: "; ")
}

/// Why an SSL call failed (SSL_ERROR_SYSCALL or SSL_ERROR_SSL): OpenSSL's queue, else errno's text; nil when both
/// are empty (the peer closed the connection).
private func failureReason() -> String? {
    let e = respool_errno()
    let queued = drainErrors()
    if !queued.isEmpty { return queued }
    return e == 0 ? nil : SystemError("", errno: e).reason
}

/// The settings every TLS upstream connection shares (one SSL_CTX per process).
public final class TLSContext {
    let ctx: OpaquePointer
    public let verify: Bool

    /// `verify`: check the server's certificate chain and name. `caFile`: PEM trust anchors (the system's store when
    /// nil). `certFile`/`keyFile`: a client certificate for servers that ask for one (tls-auth-clients).
    public init(verify: Bool, caFile: String?, certFile: String?, keyFile: String?) throws(TLSSetupError) {
        ERR_clear_error()
        guard let c = SSL_CTX_new(TLS_client_method()) else { throw .context("SSL_CTX_new failed: \(drainErrors())") }
        ctx = c
        self.verify = verify
        // From here a throw runs deinit, which frees the context.
        if respool_ssl_ctx_min_tls12(c) != 1 {
            throw .context("cannot require TLS 1.2: \(drainErrors())")
        }
        if let caFile {
            if SSL_CTX_load_verify_locations(c, caFile, nil) != 1 {
                let why = drainErrors()
                throw .caFile("cannot load CA certificates from \(caFile): \(why.isEmpty ? "unreadable" : why)")
            }
        } else if verify {
            _ = SSL_CTX_set_default_verify_paths(c)
        }
        if let certFile {
            if SSL_CTX_use_certificate_chain_file(c, certFile) != 1 {
                let why = drainErrors()
                throw .certificate("cannot load the certificate from \(certFile): \(why.isEmpty ? "unreadable" : why)")
            }
        }
        if let keyFile {
            if SSL_CTX_use_PrivateKey_file(c, keyFile, SSL_FILETYPE_PEM) != 1 || SSL_CTX_check_private_key(c) != 1 {
                let why = drainErrors()
                throw .privateKey("cannot use the private key in \(keyFile): \(why.isEmpty ? "unreadable" : why)")
            }
        }
        SSL_CTX_set_verify(c, verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, nil)
    }

    deinit { SSL_CTX_free(ctx) }
}

public enum TLSProgress {
    case done
    case wantRead
    case wantWrite
    case failed(String)
}

public enum TLSReadResult {
    case data(Int)
    /// Nothing to read yet (or OpenSSL needs the socket writable first: `wantsWrite`).
    case wouldBlock(wantsWrite: Bool)
    case eof
    case failed(String)
}

/// One TLS connection over a connected non-blocking socket.
public final class TLSSession {
    private var ssl: OpaquePointer?
    /// The last write stopped because OpenSSL needs to read first (the caller retries the flush after a read).
    public private(set) var writeWantsRead = false

    /// `serverName`: sent as SNI (unless an IP address) and checked against the certificate when verifying.
    public init(context: TLSContext, fd: Int32, serverName: String) throws(SystemError) {
        ERR_clear_error()
        guard let s = SSL_new(context.ctx) else { throw SystemError("SSL_new: \(drainErrors())", errno: 0) }
        ssl = s
        // From here a throw runs deinit, which frees the session.
        respool_ssl_set_modes(s)
        guard SSL_set_fd(s, fd) == 1 else { throw SystemError("SSL_set_fd: \(drainErrors())", errno: 0) }
        let isIP = TLSSession.isIPAddress(serverName)
        if !isIP { _ = respool_ssl_set_sni(s, serverName) }
        if context.verify {
            let ok = isIP ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(s), serverName) : SSL_set1_host(s, serverName)
            if ok != 1 { throw SystemError("cannot check the server name \(serverName): \(drainErrors())", errno: 0) }
        }
        SSL_set_connect_state(s)
    }

    deinit { free() }

    static func isIPAddress(_ s: String) -> Bool {
        var v4 = in_addr()
        var v6 = in6_addr()
        return inet_pton(AF_INET, s, &v4) == 1 || inet_pton(AF_INET6, s, &v6) == 1
    }

    /// Advances the handshake.
    public func handshake() -> TLSProgress {
        guard let s = ssl else { return .failed("TLS session closed") }
        ERR_clear_error()
        let rc = SSL_do_handshake(s)
        if rc == 1 { return .done }
        switch SSL_get_error(s, rc) {
        case SSL_ERROR_WANT_READ: return .wantRead
        case SSL_ERROR_WANT_WRITE: return .wantWrite
        case SSL_ERROR_SYSCALL:
            return .failed("TLS handshake failed: \(failureReason() ?? "connection closed by server")")
        default:
            let verify = SSL_get_verify_result(s)
            if verify != X509_V_OK, let text = X509_verify_cert_error_string(verify) {
                _ = drainErrors()
                return .failed("TLS handshake failed: certificate verify failed (\(String(cString: text)))")
            }
            return .failed("TLS handshake failed: \(failureReason() ?? "protocol error")")
        }
    }

    /// The negotiated protocol and cipher, e.g. "TLSv1.3 TLS_AES_256_GCM_SHA384".
    public var description: String {
        guard let s = ssl else { return "closed" }
        let version = SSL_get_version(s).map { String(cString: $0) } ?? "?"
        let cipher = SSL_CIPHER_get_name(SSL_get_current_cipher(s)).map { String(cString: $0) } ?? "?"
        return "\(version) \(cipher)"
    }

    /// OpenSSL holds bytes read from the socket that no SSL_read has returned yet (the read event will not fire for
    /// them).
    @inline(__always)
    public var hasPending: Bool {
        guard let s = ssl else { return false }
        return SSL_has_pending(s) == 1
    }

    /// One SSL_read into `buffer` (at most one TLS record, 16 KiB).
    @inline(__always)
    public func read(into buffer: UnsafeMutableRawPointer, capacity: Int) -> TLSReadResult {
        guard let s = ssl else { return .failed("TLS session closed") }
        ERR_clear_error() // SSL_get_error needs an empty queue
        let n = SSL_read(s, buffer, Int32(min(capacity, Int(Int32.max))))
        if n > 0 { return .data(Int(n)) }
        let err = SSL_get_error(s, n)
        switch err {
        case SSL_ERROR_WANT_READ: return .wouldBlock(wantsWrite: false)
        case SSL_ERROR_WANT_WRITE: return .wouldBlock(wantsWrite: true)
        case SSL_ERROR_ZERO_RETURN: return .eof
        case SSL_ERROR_SYSCALL:
            return failureReason().map { .failed("TLS read: \($0)") } ?? .eof
        default:
            return .failed("TLS read: \(failureReason() ?? "protocol error")")
        }
    }

    /// Writes as much of `chain` as the socket takes, one TLS record (up to 16 KiB, gathered from the chain's
    /// blocks) per SSL_write. Returns the bytes written (0 when the socket is full), or an error.
    public func write(_ chain: ByteChain) -> Result<Int, SystemError> {
        guard let s = ssl else { return .failure(SystemError("TLS session closed", errno: EPIPE)) }
        writeWantsRead = false
        var total = 0
        while true {
            let length = evbuffer_get_length(chain.raw)
            if length == 0 { break }
            let record = min(length, 16 << 10)
            guard let p = evbuffer_pullup(chain.raw, record) else { return .failure(SystemError("evbuffer_pullup", errno: ENOMEM)) }
            ERR_clear_error()
            let n = SSL_write(s, p, Int32(record))
            if n > 0 {
                evbuffer_drain(chain.raw, Int(n))
                total += Int(n)
                continue
            }
            switch SSL_get_error(s, n) {
            case SSL_ERROR_WANT_WRITE:
                return .success(total)
            case SSL_ERROR_WANT_READ:
                writeWantsRead = true
                return .success(total)
            default:
                // Its `reason` becomes the connection's close reason: OpenSSL's text when it has one, else errno's.
                let e = respool_errno()
                let queued = drainErrors()
                if !queued.isEmpty { return .failure(SystemError("TLS write (\(queued))", errno: 0)) }
                return .failure(SystemError("write", errno: e == 0 ? EPIPE : e))
            }
        }
        return .success(total)
    }

    /// Sends close_notify once (best effort, never waits) and frees the session. The socket is the caller's.
    public func free() {
        guard let s = ssl else { return }
        ssl = nil
        ERR_clear_error()
        if SSL_is_init_finished(s) == 1 { _ = SSL_shutdown(s) }
        SSL_free(s)
        ERR_clear_error()
    }
}
