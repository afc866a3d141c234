#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Keys per block of the online softmax.
let attentionKeyBlock = 64

/// Multi-head scaled dot-product attention over the positions of one image, for
/// the queries [q0, q1) of head `head` (at most 16 of them).
///
/// qkv [3C, N] (q, k, v stacked by channel, head h owning channels
/// [h·dh, (h+1)·dh) of each) → o [C, N], o = softmax(qᵀk / √dh over keys) · v.
/// The 16 queries sit in the lanes of one vector (q and o rows are contiguous in the
/// query index) and keys are scalars broadcast to them, so a lane's softmax, its
/// running maximum and its weighted sums need no horizontal reductions, and each
/// lane's arithmetic is the same whatever other queries share the vector.
/// Keys are visited in blocks of 64 with an online (running-max) softmax, so no
/// N×N score matrix exists and no exponent ever sees a positive argument.
/// `scratch` holds `attentionScratchCount(headDim:)` floats.
func attentionForward(
    qkv: UnsafePointer<Float>, channels: Int, positions n: Int, heads: Int,
    head: Int, queries q0: Int, _ q1: Int,
    o: UnsafeMutablePointer<Float>, scratch: UnsafeMutablePointer<Float>
) {
    let dh = channels / heads
    let lanes = q1 - q0
    let scale = Vec16(repeating: 1 / Float(dh).squareRoot())
    let q = qkv + head * dh * n + q0
    let k = qkv + (channels + head * dh) * n
    let v = qkv + (2 * channels + head * dh) * n
    let oh = o + head * dh * n + q0
    let vectors = UnsafeMutableRawPointer(scratch).bindMemory(to: Vec16.self, capacity: 2 * dh + attentionKeyBlock)
    let scaledQ = vectors, acc = vectors + dh, scores = vectors + 2 * dh
    // q·(1/√dh) for the block's queries; lanes past the last query read zeros.
    for c in 0..<dh {
        let row = lanes == 16 ? load16(q + c * n) : loadPrefix16(q + c * n, count: lanes)
        scaledQ[c] = row * scale
        acc[c] = Vec16()
    }
    var runningMax = Vec16(repeating: -.infinity)
    var total = Vec16()
    var j0 = 0
    while j0 < n {
        let keys = min(attentionKeyBlock, n - j0)
        // scores[j] = Σ_c q_c · k[c, j0 + j], channels in order; eight keys at a time for
        // independent accumulators.
        var j = 0
        while j + 8 <= keys {
            var s0 = Vec16(), s1 = Vec16(), s2 = Vec16(), s3 = Vec16()
            var s4 = Vec16(), s5 = Vec16(), s6 = Vec16(), s7 = Vec16()
            for c in 0..<dh {
                let qc = scaledQ[c]
                let kr = k + c * n + j0 + j
                s0.addProduct(qc, Vec16(repeating: kr[0])); s1.addProduct(qc, Vec16(repeating: kr[1]))
                s2.addProduct(qc, Vec16(repeating: kr[2])); s3.addProduct(qc, Vec16(repeating: kr[3]))
                s4.addProduct(qc, Vec16(repeating: kr[4])); s5.addProduct(qc, Vec16(repeating: kr[5]))
                s6.addProduct(qc, Vec16(repeating: kr[6])); s7.addProduct(qc, Vec16(repeating: kr[7]))
            }
            scores[j] = s0; scores[j + 1] = s1; scores[j + 2] = s2; scores[j + 3] = s3
            scores[j + 4] = s4; scores[j + 5] = s5; scores[j + 6] = s6; scores[j + 7] = s7
            j += 8
        }
        while j < keys {
            var s = Vec16()
            for c in 0..<dh { s.addProduct(scaledQ[c], Vec16(repeating: k[c * n + j0 + j])) }
            scores[j] = s
            j += 1
        }
        var blockMax = scores[0]
        for j in 1..<keys { blockMax = pointwiseMax(blockMax, scores[j]) }
        let newMax = pointwiseMax(runningMax, blockMax)
        // Rescale what was accumulated under the old maximum; the first block has nothing to rescale.
        if j0 > 0 {
            let rescale = exp16(runningMax - newMax)
            total *= rescale
            for c in 0..<dh { acc[c] *= rescale }
        }
        runningMax = newMax
        for j in 0..<keys {
            let p = exp16(scores[j] - newMax)
            scores[j] = p
            total += p
        }
        // acc[c] += Σ_j p_j · v[c, j0 + j], keys in order; eight channels at a time.
        var c = 0
        while c + 8 <= dh {
            var a0 = acc[c], a1 = acc[c + 1], a2 = acc[c + 2], a3 = acc[c + 3]
            var a4 = acc[c + 4], a5 = acc[c + 5], a6 = acc[c + 6], a7 = acc[c + 7]
            let vr = v + c * n + j0
            for j in 0..<keys {
                let p = scores[j]
                a0.addProduct(p, Vec16(repeating: vr[j])); a1.addProduct(p, Vec16(repeating: vr[n + j]))
                a2.addProduct(p, Vec16(repeating: vr[2 * n + j])); a3.addProduct(p, Vec16(repeating: vr[3 * n + j]))
                a4.addProduct(p, Vec16(repeating: vr[4 * n + j])); a5.addProduct(p, Vec16(repeating: vr[5 * n + j]))
                a6.addProduct(p, Vec16(repeating: vr[6 * n + j])); a7.addProduct(p, Vec16(repeating: vr[7 * n + j]))
            }
            acc[c] = a0; acc[c + 1] = a1; acc[c + 2] = a2; acc[c + 3] = a3
            acc[c + 4] = a4; acc[c + 5] = a5; acc[c + 6] = a6; acc[c + 7] = a7
            c += 8
        }
        while c < dh {
            var a = acc[c]
            let vr = v + c * n + j0
            for j in 0..<keys { a.addProduct(scores[j], Vec16(repeating: vr[j])) }
            acc[c] = a
            c += 1
        }
        j0 += keys
    }
    let inverse = 1 / total
    for c in 0..<dh {
        let out = acc[c] * inverse
        if lanes == 16 {
            store16(out, oh + c * n)
        } else {
            storePrefix16(out, oh + c * n, count: lanes)
        }
    }
}

/// Floats of scratch `attentionForward` needs per thread.
func attentionScratchCount(headDim: Int) -> Int {
    16 * (2 * headDim + attentionKeyBlock)
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
