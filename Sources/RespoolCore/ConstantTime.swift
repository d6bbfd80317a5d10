// ConstantTime: comparing a secret with what a client sent, in time that depends only on the length of what was sent.

public enum ConstantTime {
    /// True when `guess` and `secret` are the same bytes. Every byte of `guess` is compared (against the secret
    /// repeated), and the lengths are compared in full width, so neither an early exit nor a truncated length tells
    /// an attacker how much of a guess was right (a password followed by NUL bytes once passed, its length having
    /// been compared in 8 bits).
    /// Generic so a test can count the reads (ConstantTimeTests): the same number for every guess of a length.
    public static func equal<Guess: Collection, Secret: RandomAccessCollection>(_ guess: Guess, _ secret: Secret) -> Bool
        where Guess.Element == UInt8, Secret.Element == UInt8, Secret.Index == Int {
        var diff = UInt(bitPattern: guess.count ^ secret.count)
        if secret.isEmpty { return guess.isEmpty }
        var j = secret.startIndex
        for b in guess {
            diff |= UInt(b ^ secret[j])
            j += 1
            if j == secret.endIndex { j = secret.startIndex }
        }
        return diff == 0
    }
}
