#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Multi-head scaled dot-product attention over the positions of one image.
///
/// qkv [3C, N] (q, k, v stacked by channel, head h owning channels
/// [h·dh, (h+1)·dh) of each) → o [C, N], o = softmax(qᵀk / √dh over keys) · v.
/// `scratch` must hold `attentionScratchCount(channels:positions:)` floats.
func attentionForward(
    qkv: UnsafePointer<Float>, channels: Int, positions n: Int, heads: Int,
    o: UnsafeMutablePointer<Float>, scratch: UnsafeMutablePointer<Float>
) {
    let dh = channels / heads
    let scale = 1 / Float(dh).squareRoot()
    let qT = scratch                  // [N, dh]
    let scores = scratch + n * dh     // [N, N]
    for h in 0..<heads {
        let q = qkv + h * dh * n
        let k = qkv + (channels + h * dh) * n
        let v = qkv + (2 * channels + h * dh) * n
        for c in 0..<dh {
            for i in 0..<n { qT[i * dh + c] = q[c * n + i] * scale }
        }
        // scores [N, N] = qT [N, dh] · k [dh, N]
        gemmPlain(m: n, n: n, k: dh, a: qT, lda: dh, b: k, ldb: n,
                  c: scores, ldc: n, rowBias: nil, accumulate: false)
        for i in 0..<n {
            let row = scores + i * n
            var mx = -Float.infinity
            for j in 0..<n { mx = max(mx, row[j]) }
            var total: Float = 0
            for j in 0..<n {
                let e = expf(row[j] - mx)
                row[j] = e
                total += e
            }
            let inv = 1 / total
            for j in 0..<n { row[j] *= inv }
        }
        // o_h [dh, N]: o[c, i] = Σ_j v[c, j] · P[i, j]
        let oh = o + h * dh * n
        for c in 0..<dh {
            let vrow = v + c * n
            for i in 0..<n {
                let prow = scores + i * n
                var s: Float = 0
                for j in 0..<n { s += vrow[j] * prow[j] }
                oh[c * n + i] = s
            }
        }
    }
}

/// Floats of scratch `attentionForward` needs.
func attentionScratchCount(channels: Int, positions n: Int, heads: Int) -> Int {
    n * (channels / heads) + n * n
}

/// Plain twin of `attentionForward`, in float64.
/// qkv [3C, N] → o [C, N]
func attentionNaive(qkv: UnsafePointer<Float>, channels: Int, positions n: Int, heads: Int,
                    o: UnsafeMutablePointer<Float>) {
    let dh = channels / heads
    for h in 0..<heads {
        for i in 0..<n {
            var logits = [Double](repeating: 0, count: n)
            for j in 0..<n {
                var s = 0.0
                for c in 0..<dh {
                    s += Double(qkv[(h * dh + c) * n + i]) * Double(qkv[(channels + h * dh + c) * n + j])
                }
                logits[j] = s / Double(dh).squareRoot()
            }
            let mx = logits.max() ?? 0
            let e = logits.map { exp($0 - mx) }
            let total = e.reduce(0, +)
            for c in 0..<dh {
                var s = 0.0
                for j in 0..<n { s += e[j] / total * Double(qkv[(2 * channels + h * dh + c) * n + j]) }
                o[(h * dh + c) * n + i] = Float(s)
            }
        }
    }
}
