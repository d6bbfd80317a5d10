// Stats: every counter respool keeps, defined once here: its slot, its name in the SIGUSR1 log line, and the metrics
// (with label value) it is exposed as. The data path increments a slot (one add); the log line and the stats
// endpoint are generated from this table.
import RespoolCore

enum Counter: Int, CaseIterable {
    case clientsAccepted, clientsRejected, clientBytesIn, bytesToClients, upstreamBytesIn, upstreamBytesOut
    case okReplies, errorReplies, commandsLeased, commandsForwarded, commandsLocal, commandsRefused, commandsFailed
    case leasesGranted, pubsubSubscribes, waitTimeouts, idleTimeouts, transactionIdleTimeouts, outputLimitCloses
    case protocolErrors, upstreamRecycled, commandTimeouts, pipelineThrottles, upstreamChecks, oomErrors
    case keysSeen, keysDenied, keysScanned, pubsubMessages, upstreamConnects, upstreamConnectFailures, upstreamLost
    case upstreamStuck, pinsMonitor, pinsTracking, leasesReset

    /// The key in the SIGUSR1 stats line.
    var logName: String {
        switch self {
        case .clientsAccepted: return "clients_accepted"
        case .clientsRejected: return "clients_rejected"
        case .clientBytesIn: return "bytes_from_clients"
        case .bytesToClients: return "bytes_to_clients"
        case .upstreamBytesIn: return "bytes_from_upstream"
        case .upstreamBytesOut: return "bytes_to_upstream"
        case .okReplies: return "replies_ok"
        case .errorReplies: return "replies_error"
        case .commandsLeased: return "commands_leased"
        case .commandsForwarded: return "commands_forwarded"
        case .commandsLocal: return "commands_local"
        case .commandsRefused: return "commands_refused"
        case .commandsFailed: return "commands_failed"
        case .leasesGranted: return "leases_granted"
        case .pubsubSubscribes: return "pubsub_subscribes"
        case .waitTimeouts: return "wait_timeouts"
        case .idleTimeouts: return "idle_timeouts"
        case .transactionIdleTimeouts: return "transaction_idle_timeouts"
        case .outputLimitCloses: return "output_limit_closes"
        case .protocolErrors: return "protocol_errors"
        case .upstreamRecycled: return "upstream_recycled"
        case .commandTimeouts: return "command_timeouts"
        case .pipelineThrottles: return "pipeline_throttles"
        case .upstreamChecks: return "upstream_checks"
        case .oomErrors: return "oom_errors"
        case .keysSeen: return "keys_seen"
        case .keysDenied: return "keys_denied"
        case .keysScanned: return "keys_scanned"
        case .pubsubMessages: return "pubsub_messages_out"
        case .upstreamConnects: return "upstream_connects"
        case .upstreamConnectFailures: return "upstream_connect_failures"
        case .upstreamLost: return "upstream_lost"
        case .upstreamStuck: return "upstream_stuck"
        case .pinsMonitor: return "pins_monitor"
        case .pinsTracking: return "pins_tracking"
        case .leasesReset: return "leases_reset"
        }
    }

    /// The metrics it is a sample of, with its label value (nil for an unlabelled metric).
    var metrics: [(MetricDefinition, String?)] {
        switch self {
        case .clientsAccepted: return [(Metrics.clientsAccepted, nil)]
        case .clientsRejected: return [(Metrics.clientsRejected, nil)]
        case .clientBytesIn: return [(Metrics.bytes, "from_clients")]
        case .bytesToClients: return [(Metrics.bytes, "to_clients")]
        case .upstreamBytesIn: return [(Metrics.bytes, "from_upstream")]
        case .upstreamBytesOut: return [(Metrics.bytes, "to_upstream")]
        case .okReplies: return [(Metrics.replies, "ok")]
        case .errorReplies: return [(Metrics.replies, "error")]
        case .commandsLeased: return [(Metrics.commandsByClass, "leased")]
        case .commandsForwarded: return [(Metrics.commands, "forwarded")]
        case .commandsLocal: return [(Metrics.commands, "local"), (Metrics.commandsByClass, "local")]
        case .commandsRefused: return [(Metrics.commands, "refused")]
        case .commandsFailed: return [(Metrics.commands, "failed")]
        case .leasesGranted: return [(Metrics.leasesGranted, nil)]
        case .pubsubSubscribes: return [(Metrics.commandsByClass, "pubsub")]
        case .waitTimeouts: return [(Metrics.waitTimeouts, nil)]
        case .idleTimeouts: return [(Metrics.clientsClosed, "idle_timeout")]
        case .transactionIdleTimeouts: return [(Metrics.clientsClosed, "transaction_idle_timeout")]
        case .outputLimitCloses: return [(Metrics.clientsClosed, "output_limit")]
        case .protocolErrors: return [(Metrics.clientsClosed, "protocol_error"), (Metrics.protocolErrors, nil)]
        case .upstreamRecycled: return [(Metrics.upstreamRecycled, nil)]
        case .commandTimeouts: return [(Metrics.commandTimeouts, nil)]
        case .pipelineThrottles: return [(Metrics.pipelineThrottles, nil)]
        case .upstreamChecks: return [(Metrics.upstreamChecks, nil)]
        case .oomErrors: return [(Metrics.oomErrors, nil)]
        case .keysSeen: return [(Metrics.keys, "seen")]
        case .keysDenied: return [(Metrics.keys, "denied")]
        case .keysScanned: return [(Metrics.keys, "scanned")]
        case .pubsubMessages: return [(Metrics.pubsubMessages, nil)]
        case .upstreamConnects: return [(Metrics.upstreamConnects, nil)]
        case .upstreamConnectFailures: return [(Metrics.upstreamFailures, nil)]
        case .upstreamLost: return [(Metrics.upstreamLost, nil)]
        case .upstreamStuck: return [(Metrics.upstreamStuck, nil)]
        case .pinsMonitor: return [(Metrics.pins, "monitor")]
        case .pinsTracking: return [(Metrics.pins, "tracking")]
        case .leasesReset: return [(Metrics.leasesReset, nil)]
        }
    }
}

/// The counters' values: one slot each in raw storage (no uniqueness checks or ARC on the data path). A struct holding
/// only the pointer, so `proxy.stats[.x] &+= 1` is one load and one add; the owner calls `deallocate` once.
struct Counters {
    private let values: UnsafeMutablePointer<Int>

    init() {
        values = .allocate(capacity: Counter.allCases.count)
        values.initialize(repeating: 0, count: Counter.allCases.count)
    }

    func deallocate() { values.deallocate() }

    @inline(__always)
    subscript(_ c: Counter) -> Int {
        get { values[c.rawValue] }
        nonmutating set { values[c.rawValue] = newValue }
    }

    /// Every counter as key=value pairs for a log line.
    var logMetadata: [(String, Int)] { Counter.allCases.map { ($0.logName, self[$0]) } }

    /// The samples of every counter-backed metric, by metric name, in table order; plus the samples derived from
    /// counters (multiplexed commands: forwarded minus leased; proxy errors: failed plus refused).
    func samples() -> [String: [(label: String?, value: Double)]] {
        var out: [String: [(label: String?, value: Double)]] = [:]
        for c in Counter.allCases {
            for (metric, label) in c.metrics { out[metric.name, default: []].append((label, Double(self[c]))) }
        }
        out[Metrics.commandsByClass.name, default: []].insert(("multiplexed", Double(self[.commandsForwarded] - self[.commandsLeased])), at: 0)
        out[Metrics.replies.name, default: []].append(("proxy_error", Double(self[.commandsFailed] + self[.commandsRefused])))
        return out
    }
}
