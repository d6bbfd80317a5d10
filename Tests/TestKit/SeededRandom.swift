// TestKit: what every test target shares. SeededRandom: SplitMix64, small and fast, the same sequence for a seed on
// every machine, so every random test (fuzzing, model tests, seeded workloads) is reproducible from its seed.

public struct SeededRandom: RandomNumberGenerator, Sendable {
    private var state: UInt64

    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// True with probability `p`.
    public mutating func chance(_ p: Double) -> Bool { Double.random(in: 0..<1, using: &self) < p }

    public mutating func int(_ r: ClosedRange<Int>) -> Int { Int.random(in: r, using: &self) }

    /// `n` letters and digits.
    public mutating func letters(_ n: Int) -> String {
        let alphabet = Array("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
        var s = ""
        s.reserveCapacity(n)
        for _ in 0..<n { s.append(alphabet[Int(next() % UInt64(alphabet.count))]) }
        return s
    }

    /// `n` random bytes.
    public mutating func bytes(_ n: Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: n)
        var i = 0
        while i < n {
            var r = next()
            for _ in 0..<8 where i < n {
                out[i] = UInt8(truncatingIfNeeded: r)
                r >>= 8
                i += 1
            }
        }
        return out
    }
}
