// Metrics: every metric is defined once here (name, kind, help, label); the Prometheus text exposition and the JSON
// document are both generated from these definitions and the values the driver samples.

import Histogram

public enum MetricKind: String, Sendable {
    case counter, gauge, histogram
}

/// A latency histogram in seconds: an HdrHistogram of microseconds (1 µs to 100 s, 3 significant digits) records
/// each observation in ~3.4 ns (measured; a linear scan of 16 bucket bounds took 5.2 ns), and gives real quantiles.
/// The Prometheus buckets are computed from it when a scrape asks, so the data path never touches them.
public struct LatencyHistogram: Sendable {
    /// The `le` bounds of the Prometheus exposition.
    public static let defaultBounds: [Double] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
    public static let highestMicroseconds: UInt64 = 100_000_000
    public let bounds: [Double]
    private var hdr: Histogram<UInt64>
    public private(set) var sum = 0.0

    public init(bounds: [Double] = LatencyHistogram.defaultBounds) {
        self.bounds = bounds
        hdr = Histogram(lowestDiscernibleValue: 1, highestTrackableValue: LatencyHistogram.highestMicroseconds,
                        numberOfSignificantValueDigits: .three)
    }

    public var count: Int { Int(hdr.totalCount) }

    @inline(__always)
    public mutating func record(_ seconds: Double) {
        let us = seconds * 1e6
        // Negative (a clock step) counts as 0; beyond the range as its top.
        _ = hdr.record(us <= 0 ? 0 : us >= Double(LatencyHistogram.highestMicroseconds) ? LatencyHistogram.highestMicroseconds : UInt64(us.rounded()))
        sum += seconds
    }

    /// Observations at or below each bound (cumulative, as Prometheus buckets are), in one pass over the recorded
    /// values. A value is placed by its HdrHistogram equivalence range, within 0.1% of what was recorded.
    public func cumulativeCounts() -> [Int] {
        var perBucket = [Int](repeating: 0, count: bounds.count + 1)
        let limits = bounds.map { UInt64(($0 * 1e6).rounded()) }
        for v in hdr.recordedValues() {
            let value = hdr.lowestEquivalentForValue(v.value)
            var i = 0
            while i < limits.count && value > limits[i] { i += 1 }
            perBucket[i] += Int(v.count)
        }
        var running = 0
        return perBucket.dropLast().map { running += $0; return running }
    }

    /// The value (seconds) below which the fraction q (0...1) of observations fall, nil without observations.
    public func quantile(_ q: Double) -> Double? {
        count > 0 ? Double(hdr.valueAtPercentile(q * 100)) / 1e6 : nil
    }
}

public struct MetricDefinition: Sendable, Hashable {
    public let name: String
    public let kind: MetricKind
    public let help: String
    /// The one label key a metric may have (e.g. "reason"), nil for none.
    public let label: String?

    public init(_ name: String, _ kind: MetricKind, _ help: String, label: String? = nil) {
        self.name = name
        self.kind = kind
        self.help = help
        self.label = label
    }
}

/// One metric's values: (label value, value); the label value is nil for an unlabelled metric. A histogram carries
/// its buckets instead.
public struct MetricValues: Sendable {
    public let definition: MetricDefinition
    public var samples: [(label: String?, value: Double)]
    public var histogram: LatencyHistogram?

    public init(_ definition: MetricDefinition, histogram: LatencyHistogram) {
        self.definition = definition
        samples = []
        self.histogram = histogram
    }

    public init(_ definition: MetricDefinition, _ samples: [(label: String?, value: Double)]) {
        self.definition = definition
        self.samples = samples
    }

    public init(_ definition: MetricDefinition, _ value: Double) {
        self.init(definition, [(nil, value)])
    }
}

public enum Metrics {
    public static let clients = MetricDefinition("respool_clients", .gauge, "Client connections open now.")
    public static let clientsAccepted = MetricDefinition("respool_clients_accepted_total", .counter, "Client connections accepted.")
    public static let clientsRejected = MetricDefinition("respool_clients_rejected_total", .counter, "Client connections refused at RESPOOL_MAX_CLIENTS.")
    public static let clientsClosed = MetricDefinition("respool_clients_closed_total", .counter, "Clients closed by respool, by reason.", label: "reason")
    public static let protocolErrors = MetricDefinition("respool_protocol_errors_total", .counter, "Clients closed for malformed requests.")
    public static let upstreams = MetricDefinition("respool_upstream_connections", .gauge, "Upstream connections now, by state.", label: "state")
    public static let upstreamsMax = MetricDefinition("respool_upstream_connections_max", .gauge, "The cap on upstream connections.")
    public static let leasesGranted = MetricDefinition("respool_leases_granted_total", .counter, "Exclusive leases granted (transactions, blocking commands).")
    public static let pins = MetricDefinition("respool_pins_total", .counter, "Clients that pinned their leased connection (MONITOR, CLIENT TRACKING), by command.", label: "command")
    public static let leasesReset = MetricDefinition("respool_leases_reset_total", .counter, "Leases given back with state on them (a transaction, MONITOR, tracking, another database) and reset with RESET instead of being closed.")
    public static let waitQueue = MetricDefinition("respool_wait_queue_length", .gauge, "Clients waiting for an upstream connection now.")
    public static let waitTimeouts = MetricDefinition("respool_wait_timeouts_total", .counter, "Waits for an upstream connection that timed out.")
    public static let commands = MetricDefinition("respool_commands_total", .counter, "Commands, by how respool handled them.", label: "outcome")
    public static let commandsByClass = MetricDefinition("respool_commands_by_class_total", .counter, "Commands, by the kind of connection that served them.", label: "class")
    public static let replies = MetricDefinition("respool_replies_total", .counter, "Server replies passed to clients, by outcome.", label: "outcome")
    public static let pubsubSubscribers = MetricDefinition("respool_pubsub_subscribers", .gauge, "Clients subscribed to at least one channel, pattern or shard channel.")
    public static let bytes = MetricDefinition("respool_bytes_total", .counter, "Bytes moved, by direction.", label: "direction")
    public static let upstreamConnects = MetricDefinition("respool_upstream_connects_total", .counter, "Upstream connections opened.")
    public static let upstreamFailures = MetricDefinition("respool_upstream_connect_failures_total", .counter, "Upstream connects or handshakes that failed.")
    public static let upstreamLost = MetricDefinition("respool_upstream_lost_total", .counter, "Established upstream connections lost.")
    public static let upstreamStuck = MetricDefinition("respool_upstream_stuck_total", .counter, "Times a shared upstream connection answered nothing for 0.25 s while requests waited on it (a script or a slow command holding the server): new clients were sent elsewhere.")
    public static let upstreamRecycled = MetricDefinition("respool_upstream_recycled_total", .counter, "Upstream connections replaced at RESPOOL_SERVER_LIFETIME.")
    public static let pipelineThrottles = MetricDefinition("respool_pipeline_throttles_total", .counter, "Times reading from a client paused at RESPOOL_MAX_PIPELINE unanswered commands.")
    public static let upstreamChecks = MetricDefinition("respool_upstream_checks_total", .counter, "PINGs sent to check a connection idle past RESPOOL_SERVER_CHECK_AFTER before reuse.")
    public static let commandTimeouts = MetricDefinition("respool_command_timeouts_total", .counter, "Upstream connections closed at RESPOOL_COMMAND_TIMEOUT.")
    public static let pubsubChannels = MetricDefinition("respool_pubsub_channels", .gauge, "Channels, patterns and shard channels subscribed upstream.")
    public static let pubsubMessages = MetricDefinition("respool_pubsub_messages_delivered_total", .counter, "Pub/sub messages delivered to clients.")
    public static let keys = MetricDefinition("respool_keys_total", .counter, "KEYS commands seen by the guard, by action.", label: "action")
    public static let uptime = MetricDefinition("respool_uptime_seconds", .gauge, "Seconds since respool started.")
    public static let eventLoopEvents = MetricDefinition("respool_event_loop_events", .gauge, "Events allocated in the event loop (sockets' read and write events, timers, signals); with the same clients it returns to the same value.")
    public static let commandDuration = MetricDefinition("respool_command_duration_seconds", .histogram, "Time from a request read to its reply handed to the client (1 in 16 multiplexed commands sampled; leased ones, which may block, are not).")
    public static let waitDuration = MetricDefinition("respool_wait_duration_seconds", .histogram, "Time clients waited for an upstream connection.")
    public static let roundTrip = MetricDefinition("respool_upstream_round_trip_seconds", .histogram, "Time from writing a request to the server until its reply was read (one request at a time per shared upstream connection; leased ones, which may block, are not timed).")
    public static let oomErrors = MetricDefinition("respool_oom_errors_total", .counter, "OOM error replies passed to clients.")
    public static let serverClients = MetricDefinition("respool_upstream_connected_clients", .gauge, "The server's connected_clients (INFO), all apps included.")
    public static let serverMaxClients = MetricDefinition("respool_upstream_maxclients", .gauge, "The server's maxclients (INFO).")
    public static let serverUsedMemory = MetricDefinition("respool_upstream_used_memory_bytes", .gauge, "The server's used_memory (INFO).")
    public static let serverMaxMemory = MetricDefinition("respool_upstream_maxmemory_bytes", .gauge, "The server's maxmemory (INFO; 0 = none), labelled with its maxmemory-policy.", label: "policy")
    public static let serverEvicted = MetricDefinition("respool_upstream_evicted_keys_total", .counter, "The server's evicted_keys (INFO).")
    public static let serverRejected = MetricDefinition("respool_upstream_rejected_connections_total", .counter, "The server's rejected_connections (INFO).")

    /// Every definition, in exposition order.
    public static let all: [MetricDefinition] = [
        clients, clientsAccepted, clientsRejected, clientsClosed, protocolErrors, upstreams, upstreamsMax, leasesGranted, pins, leasesReset,
        waitQueue, waitTimeouts, commands, commandsByClass, replies, pubsubSubscribers, bytes, upstreamConnects, upstreamFailures, upstreamLost, upstreamStuck, upstreamRecycled,
        commandTimeouts, pipelineThrottles, upstreamChecks, pubsubChannels, pubsubMessages, keys, uptime, eventLoopEvents, commandDuration, waitDuration, roundTrip, oomErrors, serverClients, serverMaxClients,
        serverUsedMemory, serverMaxMemory, serverEvicted, serverRejected,
    ]

    /// Prometheus text exposition format 0.0.4.
    public static func prometheus(_ values: [MetricValues]) -> String {
        prometheus(groups: [(nil, values)])
    }

    /// Several upstreams' values (each with its label, its variable): each metric's family once, every sample
    /// labelled `upstream="<variable>"` before its own label.
    public static func prometheus(labelled groups: [(upstream: String, values: [MetricValues])]) -> String {
        prometheus(groups: groups.map { ($0.upstream, $0.values) })
    }

    private static func prometheus(groups: [(upstream: String?, values: [MetricValues])]) -> String {
        var order: [MetricDefinition] = []
        var seen: Set<String> = []
        for g in groups { for v in g.values where seen.insert(v.definition.name).inserted { order.append(v.definition) } }
        var out = ""
        for d in order {
            out += "# HELP \(d.name) \(d.help)\n# TYPE \(d.name) \(d.kind.rawValue)\n"
            for g in groups {
                guard let v = g.values.first(where: { $0.definition.name == d.name }) else { continue }
                let upstream = g.upstream.map { "upstream=\"\(escapeLabel($0))\"" }
                func labels(_ own: String?) -> String {
                    let all = [upstream, own].compactMap { $0 }
                    return all.isEmpty ? "" : "{" + all.joined(separator: ",") + "}"
                }
                if let h = v.histogram {
                    for (bound, cumulative) in zip(h.bounds, h.cumulativeCounts()) {
                        out += "\(d.name)_bucket\(labels("le=\"\(String(bound))\"")) \(cumulative)\n"
                    }
                    out += "\(d.name)_bucket\(labels("le=\"+Inf\"")) \(h.count)\n\(d.name)_sum\(labels(nil)) \(h.sum)\n"
                        + "\(d.name)_count\(labels(nil)) \(h.count)\n"
                    continue
                }
                for s in v.samples {
                    let own = d.label.flatMap { label in s.label.map { "\(label)=\"\(escapeLabel($0))\"" } }
                    out += "\(d.name)\(labels(own)) \(number(s.value))\n"
                }
            }
        }
        return out
    }

    /// The same values as a JSON object: unlabelled metrics as numbers, labelled ones as objects by label value.
    public static func json(_ values: [MetricValues]) -> String {
        var parts: [String] = []
        for v in values {
            if let h = v.histogram {
                let p50 = h.quantile(0.5).map { number($0) } ?? "null"
                let p99 = h.quantile(0.99).map { number($0) } ?? "null"
                parts.append("\(jsonString(v.definition.name)):{\"count\":\(h.count),\"sum\":\(h.sum),\"p50\":\(p50),\"p99\":\(p99)}")
            } else if v.definition.label == nil {
                parts.append("\(jsonString(v.definition.name)):\(number(v.samples.first?.value ?? 0))")
            } else {
                let inner = v.samples.map { "\(jsonString($0.label ?? "")):\(number($0.value))" }.joined(separator: ",")
                parts.append("\(jsonString(v.definition.name)):{\(inner)}")
            }
        }
        return "{" + parts.joined(separator: ",") + "}"
    }

    /// Seconds for a log line, to the microsecond and without an exponent: 0.000059s, 1.5s.
    public static func logSeconds(_ x: Double) -> String {
        let us = Int((max(0, x) * 1e6).rounded())
        var frac = String(us % 1_000_000)
        frac = String(repeating: "0", count: 6 - frac.count) + frac
        while frac.hasSuffix("0") { frac.removeLast() }
        return "\(us / 1_000_000)" + (frac.isEmpty ? "" : ".\(frac)") + "s"
    }

    public static func number(_ v: Double) -> String {
        if v == v.rounded() && abs(v) < 1e15 { return String(Int64(v)) }
        return String(v)
    }

    static func escapeLabel(_ s: String) -> String {
        var out = ""
        for ch in s {
            switch ch {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "\n": out += "\\n"
            default: out.append(ch)
            }
        }
        return out
    }

    /// A JSON string literal.
    public static func jsonString(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if u.value < 0x20 {
                    let hex = String(u.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    out.unicodeScalars.append(u)
                }
            }
        }
        return out + "\""
    }
}
