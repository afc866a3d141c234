#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// e^x for 16 lanes: Cody–Waite reduction x = n·ln2 + r, |r| <= ln2/2, then a
/// degree-6 Taylor polynomial (truncation < 1.2e-7 relative) scaled by 2^n.
/// Inputs are clamped to [-87.3, 88.3] so 2^n stays a normal float.
@inline(__always)
func exp16(_ x: SIMD16<Float>) -> SIMD16<Float> {
    // pointwiseMin/Max and integer lane ops compile to single AVX-512 instructions;
    // SIMD `rounded` and float→int conversions do not (they are scalarised), hence
    // the round-to-nearest via the 1.5·2^23 "magic" addend.
    let xc = pointwiseMax(pointwiseMin(x, SIMD16(repeating: 88.3)), SIMD16(repeating: -87.3))
    let magic = SIMD16<Float>(repeating: 12_582_912)     // 1.5·2^23: t's low mantissa bits hold round(x·log2e)
    let t = xc * 1.442_695_04 + magic
    let n = t - magic
    var r = xc - n * 0.693_145_75           // ln2 high part (exact product with small n)
    r = r - n * 1.428_606_8e-6              // ln2 low part
    var p = SIMD16<Float>(repeating: 1.0 / 720)
    p = p * r + 1.0 / 120
    p = p * r + 1.0 / 24
    p = p * r + 1.0 / 6
    p = p * r + 0.5
    p = p * r + 1
    p = p * r + 1
    let exponent = (unsafeBitCast(t, to: SIMD16<Int32>.self) &- 0x4B40_0000 &+ 127) &<< 23
    return p * unsafeBitCast(exponent, to: SIMD16<Float>.self)
}

/// x·sigmoid(x) for 16 lanes.
@inline(__always)
func silu16(_ v: SIMD16<Float>) -> SIMD16<Float> {
    v / (1 + exp16(-v))
}

/// x [B, C, H, W] → y [B, C, H, W]: GroupNorm(groups, C) with affine gamma/beta,
/// followed by SiLU when `silu` is set (fused: one read, one write).
///
/// Statistics are the biased mean and variance over (C/groups × H × W) per
/// sample (two passes: mean, then squared deviations), summed in a fixed order
/// (16 float lanes per channel, channels then added in float64), so a sample's
/// result depends on neither the batch nor the thread count.
func groupNormForward(
    _ x: UnsafePointer<Float>, batch: Int, channels: Int, spatial: Int, groups: Int,
    gamma: UnsafePointer<Float>, beta: UnsafePointer<Float>, eps: Float, silu: Bool,
    y: UnsafeMutablePointer<Float>
) {
    let cpg = channels / groups
    ThreadPool.shared.parallelFor(batch * groups) { task in
        let b = task / groups, g = task % groups
        let base = (b * channels + g * cpg) * spatial
        let stats = groupStatistics(x + base, channels: cpg, spatial: spatial, eps: eps)
        for c in 0..<cpg {
            let ch = g * cpg + c
            groupNormChannel(x + base + c * spatial, y + base + c * spatial, spatial: spatial, mean: stats.mean,
                             scale: Float(stats.invStd) * gamma[ch], shift: beta[ch], silu: silu)
        }
    }
}

/// GroupNorm (+ SiLU) applied on the way into a convolution's input planes
/// (`PhasePlanes.fill(..., normalize:)`): the normalised activations are never stored whole.
struct GroupNormSpec {
    let groups: Int
    let gamma: UnsafePointer<Float>
    let beta: UnsafePointer<Float>
    let eps: Float
    let silu: Bool
}

/// Mean and 1/sqrt(variance + eps) of one group: x [cpg, spatial] (biased variance;
/// two passes, 16 float lanes per channel, channels added in float64 in order).
@inline(__always)
func groupStatistics(_ src: UnsafePointer<Float>, channels cpg: Int, spatial: Int, eps: Float) -> (mean: Float, invStd: Double) {
    let groupSize = cpg * spatial
    let vectorEnd = spatial & ~15
    var sum = 0.0
    for c in 0..<cpg {
        let s = src + c * spatial
        var lanes = SIMD16<Float>()
        var i = 0
        while i < vectorEnd { lanes += load16(s + i); i += 16 }
        var tail: Float = 0
        while i < spatial { tail += s[i]; i += 1 }
        sum += Double(lanes.sum()) + Double(tail)
    }
    let mean = sum / Double(groupSize)
    let meanF = Float(mean)
    var sq = 0.0
    for c in 0..<cpg {
        let s = src + c * spatial
        var lanes = SIMD16<Float>()
        let m16 = SIMD16<Float>(repeating: meanF)
        var i = 0
        while i < vectorEnd { let d = load16(s + i) - m16; lanes += d * d; i += 16 }
        var tail: Float = 0
        while i < spatial { let d = s[i] - meanF; tail += d * d; i += 1 }
        sq += Double(lanes.sum()) + Double(tail)
    }
    return (meanF, 1.0 / (sq / Double(groupSize) + Double(eps)).squareRoot())
}

/// One channel: d = (s - mean)·scale + shift, then SiLU when `silu`. s, d [spatial]
@inline(__always)
func groupNormChannel(_ s: UnsafePointer<Float>, _ d: UnsafeMutablePointer<Float>, spatial: Int,
                      mean meanF: Float, scale: Float, shift: Float, silu: Bool) {
    // (x - mean) first: folding the mean into the shift loses accuracy
    // when the variance is tiny and the scale huge.
    let vectorEnd = spatial & ~15
    let scale16 = SIMD16<Float>(repeating: scale), shift16 = SIMD16<Float>(repeating: shift)
    let m16 = SIMD16<Float>(repeating: meanF)
    var i = 0
    while i < vectorEnd {
        let v = (load16(s + i) - m16) * scale16 + shift16
        store16(silu ? silu16(v) : v, d + i)
        i += 16
    }
    if i < spatial {
        // Tail: the same vector arithmetic on a zero-padded copy.
        var lanes = SIMD16<Float>()
        for t in 0..<(spatial - i) { lanes[t] = s[i + t] }
        var v = (lanes - m16) * scale16 + shift16
        if silu { v = silu16(v) }
        for t in 0..<(spatial - i) { d[i + t] = v[t] }
    }
}

/// Plain twin of `groupNormForward`.
/// x [B, C, H, W] → y [B, C, H, W]
func groupNormNaive(
    _ x: UnsafePointer<Float>, batch: Int, channels: Int, spatial: Int, groups: Int,
    gamma: UnsafePointer<Float>, beta: UnsafePointer<Float>, eps: Float, silu: Bool,
    y: UnsafeMutablePointer<Float>
) {
    let cpg = channels / groups
    for b in 0..<batch {
        for g in 0..<groups {
            var values: [Double] = []
            for c in 0..<cpg {
                for i in 0..<spatial { values.append(Double(x[((b * channels) + g * cpg + c) * spatial + i])) }
            }
            let mean = values.reduce(0, +) / Double(values.count)
            let variance = values.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(values.count)
            for c in 0..<cpg {
                let ch = g * cpg + c
                for i in 0..<spatial {
                    let o = (b * channels + ch) * spatial + i
                    var v = (Double(x[o]) - mean) / (variance + Double(eps)).squareRoot() * Double(gamma[ch]) + Double(beta[ch])
                    if silu { v = v / (1 + exp(-v)) }
                    y[o] = Float(v)
                }
            }
        }
    }
}
