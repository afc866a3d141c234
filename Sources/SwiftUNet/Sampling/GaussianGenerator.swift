#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The seeded standard-normal generator of sampling (docs/sampling.md), defined
/// exactly so that `swiftunet.reference.randn` reproduces it:
///
/// SplitMix64 seeded with `seed`; normals come in pairs from two draws,
/// `u1 = Double((next() >> 11) + 1) · 2⁻⁵³` (in (0, 1]),
/// `u2 = Double(next() >> 11) · 2⁻⁵³` (in [0, 1)),
/// `r = sqrt(-2·ln u1)`, `z0 = r·cos(2π·u2)`, `z1 = r·sin(2π·u2)` (Box–Muller,
/// float64, with 2π the double nearest it), each rounded to float32. A tensor
/// is filled in C order with z0, z1, z0, z1, …; an odd count drops the last z1.
/// Every `fill` starts a new pair, so a stream is a sequence of whole tensors.
public struct GaussianGenerator {
    public var rng: SplitMix64

    public init(seed: UInt64) { rng = SplitMix64(seed: seed) }

    /// The generator of `seed` moved past its first `skipping` SplitMix64 outputs
    /// (SplitMix64's state only advances by a constant, so this is one multiply).
    public init(seed: UInt64, skipping outputs: UInt64) {
        rng = SplitMix64(seed: seed &+ outputs &* 0x9E37_79B9_7F4A_7C15)
    }

    /// Fills `count` floats with normals `first ..< first + count` of the tensor
    /// that `GaussianGenerator(seed:).fill` would write from the start of the
    /// stream: normal j is element `j % 2` of pair `j / 2`, and pair p uses
    /// outputs 2p and 2p + 1. So the rows of one large tensor can be drawn apart.
    public static func fill(seed: UInt64, normalsFrom first: UInt64, count: Int,
                            into out: UnsafeMutablePointer<Float>) {
        if count <= 0 { return }
        var g = GaussianGenerator(seed: seed, skipping: (first / 2) &* 2)
        var written = 0
        if first % 2 == 1 {
            out[0] = g.nextPair().1
            written = 1
        }
        g.fill(out + written, count: count - written)
    }

    @inline(__always)
    mutating func nextPair() -> (Float, Float) {
        let scale = 1.0 / 9_007_199_254_740_992.0  // 2^-53
        let u1 = Double((rng.next() >> 11) + 1) * scale
        let u2 = Double(rng.next() >> 11) * scale
        let r = (-2 * log(u1)).squareRoot()
        let angle = (2 * Double.pi) * u2
        return (Float(r * cos(angle)), Float(r * sin(angle)))
    }

    /// Fills `count` floats with standard normals (C order).
    public mutating func fill(_ out: UnsafeMutablePointer<Float>, count: Int) {
        var i = 0
        while i + 1 < count {
            let (a, b) = nextPair()
            out[i] = a
            out[i + 1] = b
            i += 2
        }
        if i < count { out[i] = nextPair().0 }
    }

    /// `count` standard normals as an array.
    public mutating func normals(_ count: Int) -> [Float] {
        var v = [Float](repeating: 0, count: count)
        v.withUnsafeMutableBufferPointer { if let p = $0.baseAddress { fill(p, count: count) } }
        return v
    }
}
