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
/// Element by element, so the result does not depend on how the weights are split.
func adamWStep(weights w: UnsafeMutablePointer<Float>, gradients g: UnsafePointer<Float>,
               m: UnsafeMutablePointer<Float>, v: UnsafeMutablePointer<Float>, count: Int,
               step k: Int, options o: AdamWOptions) {
    let decay = Float(1 - o.lr * o.weightDecay)
    let b1 = Float(o.beta1), b2 = Float(o.beta2)
    let oneMinusB1 = Float(1 - o.beta1), oneMinusB2 = Float(1 - o.beta2)
    let stepSize = Float(o.lr / (1 - pow(o.beta1, Double(k))))
    let correction2 = Float((1 - pow(o.beta2, Double(k))).squareRoot())
    let eps = Float(o.eps)
    for i in 0..<count {
        let gi = g[i]
        let wi = w[i] * decay
        let mi = b1 * m[i] + oneMinusB1 * gi
        let vi = b2 * v[i] + oneMinusB2 * (gi * gi)
        m[i] = mi
        v[i] = vi
        w[i] = wi - stepSize * (mi / (vi.squareRoot() / correction2 + eps))
    }
}

/// ema ← d·ema + (1-d)·w over `count` values.
func emaUpdate(_ ema: UnsafeMutablePointer<Float>, weights w: UnsafePointer<Float>, count: Int, decay: Double) {
    let d = Float(decay), oneMinus = Float(1 - decay)
    for i in 0..<count { ema[i] = d * ema[i] + oneMinus * w[i] }
}

/// The gradient's global L2 norm, sqrt(Σ g²) over all `count` values, in float64 in order.
func globalNorm(_ g: UnsafePointer<Float>, count: Int) -> Double {
    var sum = 0.0
    for i in 0..<count { sum += Double(g[i]) * Double(g[i]) }
    return sum.squareRoot()
}

/// PyTorch's `clip_grad_norm_(max_norm)`: when the global norm n exceeds c, every gradient
/// is scaled by c / (n + 1e-6). Returns n (before clipping).
@discardableResult
func clipGradientNorm(_ g: UnsafeMutablePointer<Float>, count: Int, maxNorm: Double) -> Double {
    let n = globalNorm(g, count: count)
    if n > maxNorm {
        let scale = Float(maxNorm / (n + 1e-6))
        for i in 0..<count { g[i] *= scale }
    }
    return n
}
