#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Sinusoidal timestep encoding.
/// t [B] → e [B, dim]: sin(t·freq) then cos(t·freq), freq[i] = exp(-ln(10000)·i/(dim/2 - 1)).
/// Computed in float64 and rounded once, as docs/model.md fixes.
func sinusoidalEmbedding(_ t: UnsafePointer<Int64>, batch: Int, dim: Int, e: UnsafeMutablePointer<Float>) {
    let half = dim / 2
    let logBase = log(10000.0)
    for b in 0..<batch {
        let tb = Double(t[b])
        for i in 0..<half {
            let freq = exp(-logBase * Double(i) / Double(half - 1))
            let a = tb * freq
            e[b * dim + i] = Float(sin(a))
            e[b * dim + half + i] = Float(cos(a))
        }
    }
}

/// x [B, in] → y [B, out]: y = x · Wᵀ + bias, W [out, in] (nn.Linear).
///
/// Dot products in 16 lanes (then a fixed-order lane sum), per image, so an
/// image's result does not depend on the batch. Four outputs at a time: their
/// independent chains hide the fused multiply-add latency that one chain waits on.
func linearForward(_ x: UnsafePointer<Float>, batch: Int, inFeatures: Int, outFeatures: Int,
                   weight: UnsafePointer<Float>, bias: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>) {
    let vectorEnd = inFeatures & ~15
    @inline(__always) func finish(_ lanes: SIMD16<Float>, _ w: UnsafePointer<Float>, _ xb: UnsafePointer<Float>) -> Float {
        var s = lanes.sum()
        var i = vectorEnd
        while i < inFeatures {
            s += w[i] * xb[i]
            i += 1
        }
        return s
    }
    for b in 0..<batch {
        let xb = x + b * inFeatures
        let yb = y + b * outFeatures
        var o = 0
        while o + 4 <= outFeatures {
            let w0 = weight + o * inFeatures, w1 = w0 + inFeatures, w2 = w1 + inFeatures, w3 = w2 + inFeatures
            var l0 = SIMD16<Float>(), l1 = SIMD16<Float>(), l2 = SIMD16<Float>(), l3 = SIMD16<Float>()
            var i = 0
            while i < vectorEnd {
                let xv = load16(xb + i)
                l0.addProduct(load16(w0 + i), xv)
                l1.addProduct(load16(w1 + i), xv)
                l2.addProduct(load16(w2 + i), xv)
                l3.addProduct(load16(w3 + i), xv)
                i += 16
            }
            yb[o] = finish(l0, w0, xb) + bias[o]
            yb[o + 1] = finish(l1, w1, xb) + bias[o + 1]
            yb[o + 2] = finish(l2, w2, xb) + bias[o + 2]
            yb[o + 3] = finish(l3, w3, xb) + bias[o + 3]
            o += 4
        }
        while o < outFeatures {
            let w = weight + o * inFeatures
            var lanes = SIMD16<Float>()
            var i = 0
            while i < vectorEnd {
                lanes.addProduct(load16(w + i), load16(xb + i))
                i += 16
            }
            yb[o] = finish(lanes, w, xb) + bias[o]
            o += 1
        }
    }
}

/// Plain twin of `linearForward`.
/// x [B, in] → y [B, out]
func linearNaive(_ x: UnsafePointer<Float>, batch: Int, inFeatures: Int, outFeatures: Int,
                 weight: UnsafePointer<Float>, bias: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>) {
    for b in 0..<batch {
        for o in 0..<outFeatures {
            var s = 0.0
            for i in 0..<inFeatures { s += Double(weight[o * inFeatures + i]) * Double(x[b * inFeatures + i]) }
            y[b * outFeatures + o] = Float(s) + bias[o]
        }
    }
}

/// In place: x ← GELU(x) = x·Φ(x), the exact (erf) form.
func geluInPlace(_ x: UnsafeMutablePointer<Float>, count: Int) {
    for i in 0..<count {
        let v = Double(x[i])
        x[i] = Float(0.5 * v * (1 + erf(v / 2.0.squareRoot())))
    }
}

// MARK: training

/// dx = dy · GELU'(x), GELU'(x) = Φ(x) + x·φ(x) (exact form), x the pre-activation.
func geluBackward(_ dy: UnsafePointer<Float>, x: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>, count: Int) {
    let invSqrt2 = 1 / 2.0.squareRoot(), invSqrt2Pi = 1 / (2 * Double.pi).squareRoot()
    for i in 0..<count {
        let v = Double(x[i])
        let cdf = 0.5 * (1 + erf(v * invSqrt2))
        let pdf = invSqrt2Pi * exp(-0.5 * v * v)
        dx[i] = Float(Double(dy[i]) * (cdf + v * pdf))
    }
}

/// The gradients of `linearForward`: dy [B, out], x [B, in], W [out, in] →
/// dW [out, in] +=, db [out] +=, and dx [B, in] = dy · W when `dx` is given.
/// Images are added in order: the same bits at any thread count.
func linearBackward(_ dy: UnsafePointer<Float>, x: UnsafePointer<Float>, batch: Int, inFeatures: Int, outFeatures: Int,
                    weight: UnsafePointer<Float>, dWeight: UnsafeMutablePointer<Float>, dBias: UnsafeMutablePointer<Float>,
                    dx: UnsafeMutablePointer<Float>?) {
    ThreadPool.shared.parallelFor(outFeatures) { o in
        let row = dWeight + o * inFeatures
        var db: Float = 0
        for b in 0..<batch {
            let d = dy[b * outFeatures + o]
            db += d
            let xb = x + b * inFeatures
            for i in 0..<inFeatures { row[i] = row[i].addingProduct(d, xb[i]) }
        }
        dBias[o] += db
    }
    guard let dx = dx else { return }
    ThreadPool.shared.parallelFor(batch) { b in
        let out = dx + b * inFeatures
        out.update(repeating: 0, count: inFeatures)
        for o in 0..<outFeatures {
            let d = dy[b * outFeatures + o], w = weight + o * inFeatures
            for i in 0..<inFeatures { out[i] = out[i].addingProduct(d, w[i]) }
        }
    }
}

/// The plain twin of `linearBackward`, in float64.
func linearBackwardNaive(_ dy: UnsafePointer<Float>, x: UnsafePointer<Float>, batch: Int, inFeatures: Int,
                         outFeatures: Int, weight: UnsafePointer<Float>, dWeight: UnsafeMutablePointer<Float>,
                         dBias: UnsafeMutablePointer<Float>, dx: UnsafeMutablePointer<Float>) {
    for o in 0..<outFeatures {
        var db = 0.0
        for b in 0..<batch { db += Double(dy[b * outFeatures + o]) }
        dBias[o] += Float(db)
        for i in 0..<inFeatures {
            var s = 0.0
            for b in 0..<batch { s += Double(dy[b * outFeatures + o]) * Double(x[b * inFeatures + i]) }
            dWeight[o * inFeatures + i] += Float(s)
        }
    }
    for b in 0..<batch {
        for i in 0..<inFeatures {
            var s = 0.0
            for o in 0..<outFeatures { s += Double(dy[b * outFeatures + o]) * Double(weight[o * inFeatures + i]) }
            dx[b * inFeatures + i] = Float(s)
        }
    }
}

/// loss = mean((pred - target)²) over `count` elements (PyTorch's mse_loss, reduction
/// "mean"), summed in float64 in order; grad = 2·(pred - target)/count.
func mseLossAndGradient(_ pred: UnsafePointer<Float>, target: UnsafePointer<Float>, count: Int,
                        grad: UnsafeMutablePointer<Float>) -> Double {
    var sum = 0.0
    let scale = Float(2.0 / Double(count))
    for i in 0..<count {
        let d = pred[i] - target[i]
        sum += Double(d) * Double(d)
        grad[i] = d * scale
    }
    return sum / Double(count)
}

/// Floats per task of the element-wise passes below: fixed, so nothing depends on the thread count.
let elementwiseChunkFloats = 1 << 16

/// y[i] += x[i] for i in 0..<count, split over the threads (element by element: the same bits).
func addInPlace(_ y: UnsafeMutablePointer<Float>, _ x: UnsafePointer<Float>, count: Int) {
    ThreadPool.shared.parallelFor((count + elementwiseChunkFloats - 1) / elementwiseChunkFloats) { c in
        let start = c * elementwiseChunkFloats, end = min(count, start + elementwiseChunkFloats)
        for i in start..<end { y[i] += x[i] }
    }
}

/// y[0..<count] = x[0..<count], split over the threads.
func copyFloats(_ y: UnsafeMutablePointer<Float>, from x: UnsafePointer<Float>, count: Int) {
    ThreadPool.shared.parallelFor((count + elementwiseChunkFloats - 1) / elementwiseChunkFloats) { c in
        let start = c * elementwiseChunkFloats
        (y + start).update(from: x + start, count: min(count, start + elementwiseChunkFloats) - start)
    }
}

/// The sum of a vector's 16 lanes as a tree: halves added lane by lane down to two, then
/// those two (a fixed order, a few instructions).
@inline(__always)
func horizontalSum(_ v: Vec16) -> Float {
    let eight = v.lowHalf + v.highHalf
    let four = eight.lowHalf + eight.highHalf
    let two = four.lowHalf + four.highHalf
    return two[0] + two[1]
}

/// The plain twin of `horizontalSum`: the same additions on 16 scalars.
func horizontalSumPlain(_ lanes: [Float]) -> Float {
    var width = 16, values = lanes
    while width > 2 {
        width /= 2
        for i in 0..<width { values[i] = values[i] + values[i + width] }
    }
    return values[0] + values[1]
}

/// Σ x[0..<count] in float32 over 16 lanes (element i in lane i mod 16, then the lanes in
/// order, then the tail): a fixed order, so the same bits wherever it runs.
@inline(__always)
func laneSum(_ x: UnsafePointer<Float>, count: Int) -> Float {
    var lanes = Vec16()
    var i = 0
    while i + 16 <= count {
        lanes += load16(x + i)
        i += 16
    }
    var sum = horizontalSum(lanes)
    while i < count {
        sum += x[i]
        i += 1
    }
    return sum
}

/// The plain twin of `laneSum`: the same additions, one at a time.
func laneSumPlain(_ x: UnsafePointer<Float>, count: Int) -> Float {
    var lanes = [Float](repeating: 0, count: 16)
    let whole = count / 16 * 16
    for i in 0..<whole { lanes[i % 16] += x[i] }
    var sum = horizontalSumPlain(lanes)
    for i in whole..<count { sum += x[i] }
    return sum
}
