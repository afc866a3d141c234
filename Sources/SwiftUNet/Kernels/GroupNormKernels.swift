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
    // Fused multiply-adds throughout (`addingProduct`): half the instructions of
    // separate multiplies and adds, and one rounding per step instead of two.
    let t = magic.addingProduct(xc, SIMD16(repeating: 1.442_695_04))
    let n = t - magic
    var r = xc.addingProduct(n, SIMD16(repeating: -0.693_145_75))   // ln2 high part
    r = r.addingProduct(n, SIMD16(repeating: -1.428_606_8e-6))      // ln2 low part
    var p = SIMD16<Float>(repeating: 1.0 / 720)
    p = SIMD16(repeating: 1.0 / 120).addingProduct(p, r)
    p = SIMD16(repeating: 1.0 / 24).addingProduct(p, r)
    p = SIMD16(repeating: 1.0 / 6).addingProduct(p, r)
    p = SIMD16(repeating: 0.5).addingProduct(p, r)
    p = SIMD16(repeating: 1).addingProduct(p, r)
    p = SIMD16(repeating: 1).addingProduct(p, r)
    let exponent = (unsafeBitCast(t, to: SIMD16<Int32>.self) &- 0x4B40_0000 &+ 127) &<< 23
    return p * unsafeBitCast(exponent, to: SIMD16<Float>.self)
}

/// x·sigmoid(x) for 16 lanes. (A Newton-refined reciprocal instead of the division
/// measured slower here: its dependent multiplies cost more than the divider.)
@inline(__always)
func silu16(_ v: SIMD16<Float>) -> SIMD16<Float> {
    v / (1 + exp16(-v))
}

/// x [B, C, H, W] → y [B, C, H, W]: GroupNorm(groups, C) with affine gamma/beta,
/// followed by SiLU when `silu` is set (fused: one read, one write).
///
/// Statistics are the biased mean and variance over (C/groups × H × W) per
/// sample (two passes: mean, then squared deviations), summed in a fixed order
/// (4 × 16 float lanes per channel, channels then added in float64), so a sample's
/// result depends on neither the batch nor the thread count.
func groupNormForward(
    _ x: UnsafePointer<Float>, batch: Int, channels: Int, spatial: Int, groups: Int,
    gamma: UnsafePointer<Float>, beta: UnsafePointer<Float>, eps: Float, silu: Bool,
    y: UnsafeMutablePointer<Float>
) {
    let pool = ThreadPool.shared
    pool.parallelFor(batch * groups, maxThreads: pool.threadsFor(batch * groups),
                     GroupNormTasks(x: x, y: y, gamma: gamma, beta: beta, channels: channels, spatial: spatial,
                                    groups: groups, eps: eps, silu: silu))
}

/// The tasks of `groupNormForward`: task = (image, group).
private struct GroupNormTasks: ParallelTasks {
    let x: UnsafePointer<Float>
    let y: UnsafeMutablePointer<Float>
    let gamma: UnsafePointer<Float>
    let beta: UnsafePointer<Float>
    let channels: Int
    let spatial: Int
    let groups: Int
    let eps: Float
    let silu: Bool

    func run(_ task: Int, thread: Int) {
        let cpg = channels / groups
        let b = task / groups, g = task % groups
        let base = (b * channels + g * cpg) * spatial
        let stats = groupStatistics(x + base, channels: cpg, spatial: spatial, eps: eps)
        if spatial >= groupNormBlockMinimumSpatial {
            groupNormBlock(x + base, y + base, channels: cpg, spatial: spatial, mean: stats.mean,
                           invStd: Float(stats.invStd), gamma: gamma + g * cpg, beta: beta + g * cpg, silu: silu)
            return
        }
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

/// Mean and 1/sqrt(variance + eps) of one group: x [cpg, spatial], contiguous (biased
/// variance; two passes, each `groupSum` over the whole group).
@inline(__always)
func groupStatistics(_ src: UnsafePointer<Float>, channels cpg: Int, spatial: Int, eps: Float) -> (mean: Float, invStd: Double) {
    let count = cpg * spatial
    let mean = groupSum(src, count: count) { $0 } / Double(count)
    let meanF = Float(mean)
    let m16 = SIMD16<Float>(repeating: meanF)
    let squares = groupSum(src, count: count) { let d = $0 - m16; return d * d }
    return (meanF, 1.0 / (squares / Double(count) + Double(eps)).squareRoot())
}

/// Σ term(x) over src[0..<count], in a fixed order: blocks of up to 1,024 floats, each
/// summed in four 16-lane float accumulators (so no float lane adds more than 16 terms),
/// then widened to float64 lanes (exactly) and added; the last partial vector zero-padded
/// after `term`; one horizontal sum at the end. Over the group as one run instead of
/// channel by channel, images of 7×7 or 14×14 pixels leave no per-channel tails.
@inline(__always)
func groupSum(_ src: UnsafePointer<Float>, count: Int, _ term: (SIMD16<Float>) -> SIMD16<Float>) -> Double {
    let vectorEnd = count & ~15
    var total = SIMD8<Double>()
    var i = 0
    while i < vectorEnd {
        let blockEnd = min(vectorEnd, i + 1024)
        // Four accumulators: one would wait on each add's latency.
        var l0 = SIMD16<Float>(), l1 = SIMD16<Float>(), l2 = SIMD16<Float>(), l3 = SIMD16<Float>()
        while i + 64 <= blockEnd {
            l0 += term(load16(src + i)); l1 += term(load16(src + i + 16))
            l2 += term(load16(src + i + 32)); l3 += term(load16(src + i + 48))
            i += 64
        }
        while i < blockEnd { l0 += term(load16(src + i)); i += 16 }
        total += widenedHalves((l0 + l1) + (l2 + l3))
    }
    if i < count {
        let tail = term(loadPrefix16(src + i, count: count - i))
        total += widenedHalves(tail.replacing(with: 0, where: laneIndices16 .>= Int32(count - i)))
    }
    return total.sum()
}

/// v's two halves in float64, added lane by lane: 16 floats → 8 doubles, exactly
/// (each double holds the sum of two floats without rounding).
@inline(__always)
func widenedHalves(_ v: SIMD16<Float>) -> SIMD8<Double> {
    SIMD8<Double>(v.lowHalf) + SIMD8<Double>(v.highHalf)
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
        var v = (loadPrefix16(s + i, count: spatial - i) - m16) * scale16 + shift16
        if silu { v = silu16(v) }
        storePrefix16(v, d + i, count: spatial - i)
    }
}

/// Channels of fewer pixels leave vectors spanning three or more channels, which
/// `groupNormBlock` does not handle: they go channel by channel (`groupNormChannel`).
let groupNormBlockMinimumSpatial = 16

/// A whole group at once: d = (s - mean)·scale_c + shift_c (+ SiLU) over s [cpg, spatial],
/// channel c's scale being invStd·gamma[c] and its shift beta[c] (gamma and beta start at
/// the group's first channel). A vector that reaches into the next channel takes that
/// channel's scale and shift in those lanes, so every element gets the arithmetic of
/// `groupNormChannel`; with spatial ≥ 16 a vector spans at most two channels. Only the
/// group's last partial vector goes through a zero-padded copy.
@inline(__always)
func groupNormBlock(_ s: UnsafePointer<Float>, _ d: UnsafeMutablePointer<Float>, channels cpg: Int, spatial: Int,
                    mean meanF: Float, invStd: Float, gamma: UnsafePointer<Float>, beta: UnsafePointer<Float>,
                    silu: Bool) {
    precondition(spatial >= groupNormBlockMinimumSpatial, "groupNormBlock needs at least 16 pixels per channel")
    let count = cpg * spatial
    let m16 = SIMD16<Float>(repeating: meanF)
    var c = 0, channelEnd = spatial
    var i = 0
    while i < count {
        var scale = SIMD16<Float>(repeating: invStd * gamma[c]), shift = SIMD16<Float>(repeating: beta[c])
        if channelEnd - i < 16 && c + 1 < cpg {
            let next = laneIndices16 .>= Int32(channelEnd - i)
            scale = scale.replacing(with: invStd * gamma[c + 1], where: next)
            shift = shift.replacing(with: beta[c + 1], where: next)
        }
        let lanes = min(16, count - i)
        if lanes == 16 {
            let v = (load16(s + i) - m16) * scale + shift
            store16(silu ? silu16(v) : v, d + i)
        } else {
            var v = (loadPrefix16(s + i, count: lanes) - m16) * scale + shift
            if silu { v = silu16(v) }
            storePrefix16(v, d + i, count: lanes)
        }
        i += 16
        if i >= channelEnd {
            c += 1
            channelEnd += spatial
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

// MARK: training: forward with statistics, backward

/// As `groupNormForward`, and also keeps what the backward needs: the mean and
/// 1/sqrt(var + eps) of every (image, group), mean/rstd [B, groups]. The
/// normalised values are computed exactly as `groupNormForward` computes them.
func groupNormTrainingForward(
    _ x: UnsafePointer<Float>, batch: Int, channels: Int, spatial: Int, groups: Int,
    gamma: UnsafePointer<Float>, beta: UnsafePointer<Float>, eps: Float, silu: Bool,
    y: UnsafeMutablePointer<Float>, mean: UnsafeMutablePointer<Float>, rstd: UnsafeMutablePointer<Float>
) {
    let cpg = channels / groups
    let pool = ThreadPool.shared
    pool.parallelFor(batch * groups) { task in
        let b = task / groups, g = task % groups
        let base = (b * channels + g * cpg) * spatial
        let stats = groupStatistics(x + base, channels: cpg, spatial: spatial, eps: eps)
        mean[task] = stats.mean
        rstd[task] = Float(stats.invStd)
        for c in 0..<cpg {
            let ch = g * cpg + c
            groupNormChannel(x + base + c * spatial, y + base + c * spatial, spatial: spatial, mean: stats.mean,
                             scale: Float(stats.invStd) * gamma[ch], shift: beta[ch], silu: silu)
        }
    }
}

/// `groupNormTrainingForward`'s y again from its saved statistics, with the same arithmetic
/// (so the same bits): x [B, C, spatial], mean/rstd [B·groups] → y. The backward recomputes
/// a normalised input this way instead of keeping it through the step.
func groupNormApply(
    _ x: UnsafePointer<Float>, batch: Int, channels: Int, spatial: Int, groups: Int,
    gamma: UnsafePointer<Float>, beta: UnsafePointer<Float>, silu: Bool,
    mean: UnsafePointer<Float>, rstd: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>
) {
    let cpg = channels / groups
    ThreadPool.shared.parallelFor(batch * groups) { task in
        let g = task % groups
        let base = (task / groups * channels + g * cpg) * spatial
        for c in 0..<cpg {
            let ch = g * cpg + c
            groupNormChannel(x + base + c * spatial, y + base + c * spatial, spatial: spatial, mean: mean[task],
                             scale: rstd[task] * gamma[ch], shift: beta[ch], silu: silu)
        }
    }
}

/// d/da SiLU(a) = s·(1 + a·(1 - s)), s = sigmoid(a), for 16 lanes.
@inline(__always)
func siluDerivative16(_ a: SIMD16<Float>) -> SIMD16<Float> {
    let s = 1 / (1 + exp16(-a))
    return s * (1 + a * (1 - s))
}

/// The gradient of `groupNormTrainingForward` (PyTorch's GroupNorm backward, with the
/// SiLU's when `silu`): dy, x [B, C, spatial] and the saved mean/rstd → dx = (overwritten),
/// dGamma, dBeta [C] +=.
///
/// With x̂ = (x - mean)·rstd, a = γ·x̂ + β and da = dy·SiLU'(a) (da = dy without SiLU):
/// dβ = Σ da, dγ = Σ da·x̂, and over each group of N elements
/// dx = rstd·(γ·da - mean(γ·da) - x̂·mean(γ·da·x̂)).
/// Tasks are (image, group); the per-image parts of dγ and dβ are then added in image
/// order, so the result does not depend on the thread count.
func groupNormBackward(
    _ dy: UnsafePointer<Float>, x: UnsafePointer<Float>, batch: Int, channels: Int, spatial: Int, groups: Int,
    gamma: UnsafePointer<Float>, beta: UnsafePointer<Float>, silu: Bool,
    mean: UnsafePointer<Float>, rstd: UnsafePointer<Float>,
    dx: UnsafeMutablePointer<Float>, dGamma: UnsafeMutablePointer<Float>, dBeta: UnsafeMutablePointer<Float>,
    workspace: Workspace
) throws {
    let cpg = channels / groups
    let mark = workspace.mark()
    defer { workspace.release(to: mark) }
    // Per (image, channel): Σ da·x̂ and Σ da.
    let parts = try workspace.floats(2 * batch * channels)
    ThreadPool.shared.parallelFor(batch * groups) { task in
        let b = task / groups, g = task % groups
        let base = (b * channels + g * cpg) * spatial
        let m = mean[task], r = rstd[task]
        let m16 = SIMD16<Float>(repeating: m), r16 = SIMD16<Float>(repeating: r)
        var sumA = 0.0, sumB = 0.0   // Σ γ·da, Σ γ·da·x̂ over the group
        for c in 0..<cpg {
            let ch = g * cpg + c
            let xs = x + base + c * spatial, ds = dy + base + c * spatial, out = dx + base + c * spatial
            let gm = gamma[ch], bt = beta[ch]
            let scale16 = SIMD16<Float>(repeating: r * gm), shift16 = SIMD16<Float>(repeating: bt)
            var accDa = SIMD16<Float>(), accDaX = SIMD16<Float>()
            var i = 0
            while i < spatial {
                let lanes = min(16, spatial - i)
                let xv = lanes == 16 ? load16(xs + i) : loadPrefix16(xs + i, count: lanes)
                var da = lanes == 16 ? load16(ds + i) : loadPrefix16(ds + i, count: lanes)
                let centered = xv - m16
                let xhat = centered * r16
                if silu { da *= siluDerivative16(centered * scale16 + shift16) }
                accDa += da
                accDaX += da * xhat
                let dxhat = da * gm
                if lanes == 16 { store16(dxhat, out + i) } else { storePrefix16(dxhat, out + i, count: lanes) }
                i += 16
            }
            let sDa = widenedHalves(accDa).sum(), sDaX = widenedHalves(accDaX).sum()
            parts[2 * (b * channels + ch)] = Float(sDaX)
            parts[2 * (b * channels + ch) + 1] = Float(sDa)
            sumA += Double(gm) * sDa
            sumB += Double(gm) * sDaX
        }
        let count = Double(cpg * spatial)
        let meanA = SIMD16<Float>(repeating: Float(sumA / count)), meanB = SIMD16<Float>(repeating: Float(sumB / count))
        // Second pass: dx = rstd·(γ·da - mean(γ·da) - x̂·mean(γ·da·x̂)), γ·da already in dx.
        let group = cpg * spatial
        var i = 0
        while i < group {
            let lanes = min(16, group - i)
            let p = dx + base + i, xs = x + base + i
            let xv = lanes == 16 ? load16(xs) : loadPrefix16(xs, count: lanes)
            let g16 = lanes == 16 ? load16(p) : loadPrefix16(p, count: lanes)
            let v = r16 * (g16 - meanA - (xv - m16) * r16 * meanB)
            if lanes == 16 { store16(v, p) } else { storePrefix16(v, p, count: lanes) }
            i += 16
        }
    }
    for c in 0..<channels {
        var sg = 0.0, sb = 0.0
        for b in 0..<batch {
            sg += Double(parts[2 * (b * channels + c)])
            sb += Double(parts[2 * (b * channels + c) + 1])
        }
        dGamma[c] += Float(sg)
        dBeta[c] += Float(sb)
    }
}

/// The plain twin of `groupNormBackward`, in float64 from the definition (statistics
/// recomputed from x): dx =, dGamma +=, dBeta +=.
func groupNormBackwardNaive(
    _ dy: UnsafePointer<Float>, x: UnsafePointer<Float>, batch: Int, channels: Int, spatial: Int, groups: Int,
    gamma: UnsafePointer<Float>, beta: UnsafePointer<Float>, eps: Float, silu: Bool,
    dx: UnsafeMutablePointer<Float>, dGamma: UnsafeMutablePointer<Float>, dBeta: UnsafeMutablePointer<Float>
) {
    let cpg = channels / groups, n = cpg * spatial
    for b in 0..<batch {
        for g in 0..<groups {
            let base = (b * channels + g * cpg) * spatial
            var mean = 0.0
            for i in 0..<n { mean += Double(x[base + i]) }
            mean /= Double(n)
            var variance = 0.0
            for i in 0..<n { variance += (Double(x[base + i]) - mean) * (Double(x[base + i]) - mean) }
            let rstd = 1 / (variance / Double(n) + Double(eps)).squareRoot()
            var xhat = [Double](repeating: 0, count: n), dxhat = [Double](repeating: 0, count: n)
            for i in 0..<n {
                let ch = g * cpg + i / spatial
                xhat[i] = (Double(x[base + i]) - mean) * rstd
                let a = Double(gamma[ch]) * xhat[i] + Double(beta[ch])
                var da = Double(dy[base + i])
                if silu {
                    let s = 1 / (1 + exp(-a))
                    da *= s * (1 + a * (1 - s))
                }
                dGamma[ch] += Float(da * xhat[i])
                dBeta[ch] += Float(da)
                dxhat[i] = da * Double(gamma[ch])
            }
            let m1 = dxhat.reduce(0, +) / Double(n)
            var m2 = 0.0
            for i in 0..<n { m2 += dxhat[i] * xhat[i] }
            m2 /= Double(n)
            for i in 0..<n { dx[base + i] = Float(rstd * (dxhat[i] - m1 - xhat[i] * m2)) }
        }
    }
}
