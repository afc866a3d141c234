/// SplitMix64 (Steele, Lea & Flood 2014): the generator behind seeded weight
/// initialisation. Its output depends only on the seed, so the same seed gives
/// the same weights on every machine; `swiftunet.reference.init_params` is its
/// numpy twin.
public struct SplitMix64 {
    public var state: UInt64

    public init(seed: UInt64) { state = seed }

    @inline(__always)
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// A float in [0, 1) with 24 random bits (exact in float32).
    @inline(__always)
    public mutating func nextUnitFloat() -> Float {
        Float(next() >> 40) * (1.0 / 16_777_216.0)
    }
}
