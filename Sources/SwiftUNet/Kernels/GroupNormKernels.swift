#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// x [B, C, H, W] → y [B, C, H, W]: GroupNorm(groups, C) with affine gamma/beta,
/// followed by SiLU when `silu` is set.
///
/// Statistics are the biased mean and variance over (C/groups × H × W) per
/// sample, accumulated in float64 in a fixed order, so a sample's result does
/// not depend on the batch or the thread count.
func groupNormForward(
    _ x: UnsafePointer<Float>, batch: Int, channels: Int, spatial: Int, groups: Int,
    gamma: UnsafePointer<Float>, beta: UnsafePointer<Float>, eps: Float, silu: Bool,
    y: UnsafeMutablePointer<Float>
) {
    let cpg = channels / groups
    let groupSize = cpg * spatial
    ThreadPool.shared.parallelFor(batch * groups) { task in
        let b = task / groups, g = task % groups
        let base = (b * channels + g * cpg) * spatial
        let src = x + base
        var sum = 0.0
        for i in 0..<groupSize { sum += Double(src[i]) }
        let mean = sum / Double(groupSize)
        var sq = 0.0
        for i in 0..<groupSize {
            let d = Double(src[i]) - mean
            sq += d * d
        }
        let invStd = 1.0 / (sq / Double(groupSize) + Double(eps)).squareRoot()
        for c in 0..<cpg {
            let ch = g * cpg + c
            // (x - mean) first: folding the mean into the shift loses accuracy
            // when the variance is tiny and the scale huge.
            let scale = Float(invStd) * gamma[ch], shift = beta[ch], m = Float(mean)
            let s = src + c * spatial, d = y + base + c * spatial
            if silu {
                for i in 0..<spatial {
                    let v = (s[i] - m) * scale + shift
                    d[i] = v / (1 + expf(-v))
                }
            } else {
                for i in 0..<spatial { d[i] = (s[i] - m) * scale + shift }
            }
        }
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
