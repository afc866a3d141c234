#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// AdamW's hyper-parameters: PyTorch's `torch.optim.AdamW` (decoupled weight decay,
/// bias-corrected moments), whose defaults these are.
public struct AdamWOptions: Equatable {
    public var lr: Double = 1e-3
    public var beta1: Double = 0.9
    public var beta2: Double = 0.999
    public var eps: Double = 1e-8
    public var weightDecay: Double = 1e-2

    public init(lr: Double = 1e-3, beta1: Double = 0.9, beta2: Double = 0.999, eps: Double = 1e-8,
                weightDecay: Double = 1e-2) {
        self.lr = lr
        self.beta1 = beta1
        self.beta2 = beta2
        self.eps = eps
        self.weightDecay = weightDecay
    }

    /// Throws `invalidArgument` naming the first option out of range.
    public func validate() throws {
        func check(_ ok: Bool, _ message: String) throws {
            if !ok { throw SwiftUNetError.invalidArgument(message) }
        }
        try check(lr.isFinite && lr > 0, "lr must be a finite number > 0, got \(lr)")
        try check(beta1 >= 0 && beta1 < 1, "betas[0] must be in [0, 1), got \(beta1)")
        try check(beta2 >= 0 && beta2 < 1, "betas[1] must be in [0, 1), got \(beta2)")
        try check(eps.isFinite && eps > 0, "eps must be a finite number > 0, got \(eps)")
        try check(weightDecay.isFinite && weightDecay >= 0, "weight_decay must be a finite number >= 0, got \(weightDecay)")
    }
}

/// One AdamW step over `count` weights at step k (1-based), PyTorch's formulas:
/// w ← w·(1 - lr·wd); m ← β1·m + (1-β1)·g; v ← β2·v + (1-β2)·g²;
/// w ← w - (lr / (1-β1ᵏ)) · m / (sqrt(v) / sqrt(1-β2ᵏ) + eps).
/// Element by element (16 lanes at a time, each lane the same operations in the same order
/// as `adamWStepPlain`), so the result depends neither on how the weights are split nor on
/// the vector width.
func adamWStep(weights w: UnsafeMutablePointer<Float>, gradients g: UnsafePointer<Float>,
               m: UnsafeMutablePointer<Float>, v: UnsafeMutablePointer<Float>, count: Int,
               step k: Int, options o: AdamWOptions) {
    let c = AdamWConstants(step: k, options: o)
    var i = 0
    while i + 16 <= count {
        let gi = load16(g + i)
        let wi = load16(w + i) * c.decay
        let mi = c.beta1 * load16(m + i) + c.oneMinusBeta1 * gi
        let vi = c.beta2 * load16(v + i) + c.oneMinusBeta2 * (gi * gi)
        store16(mi, m + i)
        store16(vi, v + i)
        store16(wi - c.stepSize * (mi / (vi.squareRoot() / c.correction2 + c.eps)), w + i)
        i += 16
    }
    adamWStepPlain(weights: w + i, gradients: g + i, m: m + i, v: v + i, count: count - i, step: k, options: o)
}

/// The plain twin of `adamWStep`: one element at a time.
func adamWStepPlain(weights w: UnsafeMutablePointer<Float>, gradients g: UnsafePointer<Float>,
                    m: UnsafeMutablePointer<Float>, v: UnsafeMutablePointer<Float>, count: Int,
                    step k: Int, options o: AdamWOptions) {
    let c = AdamWConstants(step: k, options: o)
    for i in 0..<count {
        let gi = g[i]
        let wi = w[i] * c.decay
        let mi = c.beta1 * m[i] + c.oneMinusBeta1 * gi
        let vi = c.beta2 * v[i] + c.oneMinusBeta2 * (gi * gi)
        m[i] = mi
        v[i] = vi
        w[i] = wi - c.stepSize * (mi / (vi.squareRoot() / c.correction2 + c.eps))
    }
}

/// AdamW's per-step scalars in float32, computed in float64 and rounded once.
private struct AdamWConstants {
    let decay, beta1, beta2, oneMinusBeta1, oneMinusBeta2, stepSize, correction2, eps: Float

    init(step k: Int, options o: AdamWOptions) {
        decay = Float(1 - o.lr * o.weightDecay)
        beta1 = Float(o.beta1)
        beta2 = Float(o.beta2)
        oneMinusBeta1 = Float(1 - o.beta1)
        oneMinusBeta2 = Float(1 - o.beta2)
        stepSize = Float(o.lr / (1 - pow(o.beta1, Double(k))))
        correction2 = Float((1 - pow(o.beta2, Double(k))).squareRoot())
        eps = Float(o.eps)
    }
}

/// ema ← d·ema + (1-d)·w over `count` values (lane by lane: the same bits as a scalar loop).
func emaUpdate(_ ema: UnsafeMutablePointer<Float>, weights w: UnsafePointer<Float>, count: Int, decay: Double) {
    let d = Float(decay), oneMinus = Float(1 - decay)
    var i = 0
    while i + 16 <= count {
        store16(d * load16(ema + i) + oneMinus * load16(w + i), ema + i)
        i += 16
    }
    for j in i..<count { ema[j] = d * ema[j] + oneMinus * w[j] }
}

/// Floats per chunk of `globalNorm`: a fixed split, so the sum's order never depends on the
/// thread count.
let normChunkFloats = 1 << 14

/// The gradient's global L2 norm, sqrt(Σ g²) over all `count` values, in float64: each chunk
/// of `normChunkFloats` sums its squares over 8 lanes (element i in lane i mod 8), adds the
/// lanes in order, and the chunks' sums are added in order. The same bits on any thread count.
func globalNorm(_ g: UnsafePointer<Float>, count: Int) -> Double {
    let chunks = (count + normChunkFloats - 1) / normChunkFloats
    if chunks == 0 { return 0 }
    let partial = UnsafeMutablePointer<Double>.allocate(capacity: chunks)
    defer { partial.deallocate() }
    ThreadPool.shared.parallelFor(chunks) { c in
        let start = c * normChunkFloats, end = min(count, start + normChunkFloats)
        var lanes = SIMD8<Double>()
        var i = start
        while i + 8 <= end {
            let x = SIMD8<Double>(SIMD8<Float>(g[i], g[i + 1], g[i + 2], g[i + 3], g[i + 4], g[i + 5], g[i + 6], g[i + 7]))
            lanes.addProduct(x, x)
            i += 8
        }
        var sum = 0.0
        for lane in 0..<8 { sum += lanes[lane] }
        for j in i..<end { sum += Double(g[j]) * Double(g[j]) }
        partial[c] = sum
    }
    var total = 0.0
    for c in 0..<chunks { total += partial[c] }
    return total.squareRoot()
}

/// The plain twin of `globalNorm`: the same order of additions, one element at a time.
func globalNormPlain(_ g: UnsafePointer<Float>, count: Int) -> Double {
    var total = 0.0
    var start = 0
    while start < count {
        let end = min(count, start + normChunkFloats)
        var lanes = [Double](repeating: 0, count: 8)
        var i = start
        while i + 8 <= end {
            for lane in 0..<8 { lanes[lane].addProduct(Double(g[i + lane]), Double(g[i + lane])) }
            i += 8
        }
        var sum = 0.0
        for lane in 0..<8 { sum += lanes[lane] }
        for j in i..<end { sum += Double(g[j]) * Double(g[j]) }
        total += sum
        start = end
    }
    return total.squareRoot()
}

/// PyTorch's `clip_grad_norm_(max_norm)`: when the global norm n exceeds c, every gradient
/// is scaled by c / (n + 1e-6). Returns n (before clipping).
@discardableResult
func clipGradientNorm(_ g: UnsafeMutablePointer<Float>, count: Int, maxNorm: Double) -> Double {
    let n = globalNorm(g, count: count)
    if n > maxNorm {
        let scale = Float(maxNorm / (n + 1e-6))
        ThreadPool.shared.parallelFor((count + normChunkFloats - 1) / normChunkFloats) { c in
            let start = c * normChunkFloats, end = min(count, start + normChunkFloats)
            for i in start..<end { g[i] *= scale }
        }
    }
    return n
}
