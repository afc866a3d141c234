#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Keys per block of the online softmax.
let attentionKeyBlock = 64

/// Multi-head scaled dot-product attention over the positions of one image, for
/// the queries [q0, q1) of head `head`.
///
/// qkv [3C, N] (q, k, v stacked by channel, head h owning channels
/// [h·dh, (h+1)·dh) of each) → o [C, N], o = softmax(qᵀk / √dh over keys) · v.
/// Keys are visited in blocks of 64 with an online (running-max) softmax, so
/// no N×N score matrix exists and no exponent ever sees a positive argument.
/// Vectorised over keys: scores of 16 keys per SIMD16, and per-channel partial
/// sums of p·v kept in 16 lanes and reduced once at the end (fixed order).
/// `scratch` holds `attentionScratchCount(headDim:)` floats.
func attentionForward(
    qkv: UnsafePointer<Float>, channels: Int, positions n: Int, heads: Int,
    head: Int, queries q0: Int, _ q1: Int,
    o: UnsafeMutablePointer<Float>, scratch: UnsafeMutablePointer<Float>
) {
    let dh = channels / heads
    let scale = 1 / Float(dh).squareRoot()
    let q = qkv + head * dh * n
    let k = qkv + (channels + head * dh) * n
    let v = qkv + (2 * channels + head * dh) * n
    let oh = o + head * dh * n
    let partial = UnsafeMutableRawPointer(scratch).bindMemory(to: Vec16.self, capacity: dh + attentionKeyBlock / 16)
    let scores = partial + dh                      // one key block of scores
    for i in q0..<q1 {
        for c in 0..<dh { partial[c] = Vec16() }
        var runningMax = -Float.infinity
        var total = Vec16()
        var j0 = 0
        while j0 < n {
            let keys = min(attentionKeyBlock, n - j0)
            let vectors = (keys + 15) / 16
            // scores[j] = (q_i · k_j) / √dh for the block; lanes past the last key get -inf.
            for t in 0..<vectors { scores[t] = Vec16() }
            for c in 0..<dh {
                let qc = Vec16(repeating: q[c * n + i] * scale)
                let krow = k + c * n + j0
                for t in 0..<vectors {
                    if 16 * t + 16 <= keys {
                        scores[t].addProduct(qc, load16(krow + 16 * t))
                    } else {
                        var kv = Vec16()
                        for l in 0..<(keys - 16 * t) { kv[l] = krow[16 * t + l] }
                        scores[t].addProduct(qc, kv)
                    }
                }
            }
            var blockMax = -Float.infinity
            // Lanes past the last key (only in the last vector) take no part in the max.
            if keys % 16 != 0 {
                for l in (keys % 16)..<16 { scores[vectors - 1][l] = -.infinity }
            }
            for t in 0..<vectors { blockMax = max(blockMax, scores[t].max()) }
            let newMax = max(runningMax, blockMax)
            // Rescale what was accumulated under the old maximum (exp(-inf) = 0 the first time).
            let rescale = Vec16(repeating: runningMax == -.infinity ? 0 : expf(runningMax - newMax))
            runningMax = newMax
            total *= rescale
            for c in 0..<dh { partial[c] *= rescale }
            let m16 = Vec16(repeating: newMax)
            for t in 0..<vectors { scores[t] = exp16(scores[t] - m16) }
            // exp16 clamps its argument at -87.3, so lanes past the last key are zeroed explicitly.
            if keys % 16 != 0 {
                for l in (keys % 16)..<16 { scores[vectors - 1][l] = 0 }
            }
            for t in 0..<vectors { total += scores[t] }
            for c in 0..<dh {
                let vrow = v + c * n + j0
                var acc = partial[c]
                for t in 0..<vectors {
                    if 16 * t + 16 <= keys {
                        acc.addProduct(scores[t], load16(vrow + 16 * t))
                    } else {
                        var vv = Vec16()
                        for l in 0..<(keys - 16 * t) { vv[l] = vrow[16 * t + l] }
                        acc.addProduct(scores[t], vv)
                    }
                }
                partial[c] = acc
            }
            j0 += keys
        }
        let inverse = 1 / total.sum()
        for c in 0..<dh { oh[c * n + i] = partial[c].sum() * inverse }
    }
}

/// Floats of scratch `attentionForward` needs per thread.
func attentionScratchCount(headDim: Int) -> Int {
    16 * (headDim + attentionKeyBlock / 16)
}

/// Queries per attention task.
let attentionQueryChunk = 16

/// qkv [B, 3C, N] → o [B, C, N]: every image and head, in parallel over
/// (image, head, block of 16 queries); each task's arithmetic is fixed.
func attentionBatched(
    qkv: UnsafePointer<Float>, batch: Int, channels: Int, positions n: Int, heads: Int,
    o: UnsafeMutablePointer<Float>, workspace: Workspace
) throws {
    let chunks = (n + attentionQueryChunk - 1) / attentionQueryChunk
    let tasks = batch * heads * chunks
    let pool = ThreadPool.shared
    let maxThreads = pool.threadsFor(tasks)
    let perThread = attentionScratchCount(headDim: channels / heads)
    let mark = workspace.mark()
    defer { workspace.release(to: mark) }
    let scratch = try workspace.floats(maxThreads * perThread)
    pool.parallelFor(tasks, maxThreads: maxThreads,
                     AttentionTasks(qkv: qkv, o: o, scratch: scratch, perThread: perThread,
                                    channels: channels, positions: n, heads: heads, chunks: chunks))
}

/// The tasks of `attentionBatched`: task = (image, head, block of 16 queries).
private struct AttentionTasks: ParallelTasks {
    let qkv: UnsafePointer<Float>
    let o: UnsafeMutablePointer<Float>
    let scratch: UnsafeMutablePointer<Float>
    let perThread: Int
    let channels: Int
    let positions: Int
    let heads: Int
    let chunks: Int

    func run(_ task: Int, thread: Int) {
        let n = positions
        let b = task / (heads * chunks), rest = task % (heads * chunks)
        let head = rest / chunks, chunk = rest % chunks
        let q0 = chunk * attentionQueryChunk
        attentionForward(qkv: qkv + b * 3 * channels * n, channels: channels, positions: n, heads: heads,
                         head: head, queries: q0, min(n, q0 + attentionQueryChunk),
                         o: o + b * channels * n, scratch: scratch + thread * perThread)
    }
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
