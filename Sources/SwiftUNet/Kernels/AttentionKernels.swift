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

// MARK: training: forward keeping the probabilities, backward

/// row[0..<count] ← exp(row - max) / Σ exp(row - max): a softmax in place (16 lanes at a time).
@inline(__always)
private func softmaxInPlace(_ row: UnsafeMutablePointer<Float>, count: Int) {
    var mx = -Float.infinity
    for j in 0..<count { mx = max(mx, row[j]) }
    let m16 = Vec16(repeating: mx)
    var total: Float = 0
    var j = 0
    while j < count {
        let lanes = min(16, count - j)
        let e = exp16((lanes == 16 ? load16(row + j) : loadPrefix16(row + j, count: lanes)) - m16)
        if lanes == 16 {
            store16(e, row + j)
            total += e.sum()
        } else {
            storePrefix16(e, row + j, count: lanes)
            for lane in 0..<lanes { total += e[lane] }
        }
        j += 16
    }
    let inv = 1 / total
    for j in 0..<count { row[j] *= inv }
}

/// Multi-head attention for training. qkv [B, 3C, N] → o [B, C, N] and the attention
/// probabilities p [B, heads, N, N] (p[i, j]: query i, key j) that the backward reads:
/// p = softmax(qᵀk / √dh over keys), o = v·pᵀ per head. Tasks are (image, head).
func attentionTrainingForward(qkv: UnsafePointer<Float>, batch: Int, channels: Int, positions n: Int, heads: Int,
                              o: UnsafeMutablePointer<Float>, p: UnsafeMutablePointer<Float>) {
    let dh = channels / heads
    let scale = 1 / Float(dh).squareRoot()
    ThreadPool.shared.parallelFor(batch * heads) { task in
        let b = task / heads, h = task % heads
        let q = qkv + (b * 3 * channels + h * dh) * n, k = q + channels * n, v = k + channels * n
        let probs = p + task * n * n
        let out = o + (b * channels + h * dh) * n
        for i in 0..<n {
            let row = probs + i * n
            row.update(repeating: 0, count: n)
            for d in 0..<dh {
                let qd = q[d * n + i] * scale, kd = k + d * n
                for j in 0..<n { row[j] = row[j].addingProduct(qd, kd[j]) }
            }
            softmaxInPlace(row, count: n)
        }
        for d in 0..<dh {
            let vd = v + d * n, od = out + d * n
            for i in 0..<n {
                let row = probs + i * n
                var s: Float = 0
                for j in 0..<n { s = s.addingProduct(row[j], vd[j]) }
                od[i] = s
            }
        }
    }
}

/// Floats of scratch `attentionBackward` needs with `threads` threads.
func attentionBackwardScratchCount(positions n: Int, threads: Int) -> Int { threads * n * n }

/// The gradient of `attentionTrainingForward`: do [B, C, N], qkv, p → dqkv [B, 3C, N] (=).
/// With S = qᵀk/√dh and P = softmax(S): dP = doᵀ·v, dv = do·P, dS = P ∘ (dP - rowsum(P ∘ dP)),
/// dq = k·dSᵀ/√dh, dk = q·dS/√dh. Tasks are (image, head), each with its own dS scratch.
func attentionBackward(dOut: UnsafePointer<Float>, qkv: UnsafePointer<Float>, p: UnsafePointer<Float>,
                       batch: Int, channels: Int, positions n: Int, heads: Int,
                       dqkv: UnsafeMutablePointer<Float>, workspace: Workspace) throws {
    let dh = channels / heads
    let scale = 1 / Float(dh).squareRoot()
    let pool = ThreadPool.shared
    let threads = pool.threadsFor(batch * heads)
    let mark = workspace.mark()
    defer { workspace.release(to: mark) }
    let scratch = try workspace.floats(attentionBackwardScratchCount(positions: n, threads: threads))
    pool.parallelFor(batch * heads, maxThreads: threads) { task, thread in
        let b = task / heads, h = task % heads
        let q = qkv + (b * 3 * channels + h * dh) * n, k = q + channels * n, v = k + channels * n
        let dq = dqkv + (b * 3 * channels + h * dh) * n, dk = dq + channels * n, dv = dk + channels * n
        let probs = p + task * n * n
        let dO = dOut + (b * channels + h * dh) * n
        let ds = scratch + thread * n * n
        // dv[d, j] = Σ_i do[d, i]·P[i, j]
        for d in 0..<dh {
            let row = dv + d * n
            row.update(repeating: 0, count: n)
            for i in 0..<n {
                let g = dO[d * n + i], pi = probs + i * n
                for j in 0..<n { row[j] = row[j].addingProduct(g, pi[j]) }
            }
        }
        // dP[i, j] = Σ_d do[d, i]·v[d, j], then dS = P ∘ (dP - Σ_j P∘dP), scaled by 1/√dh.
        for i in 0..<n {
            let row = ds + i * n, pi = probs + i * n
            row.update(repeating: 0, count: n)
            for d in 0..<dh {
                let g = dO[d * n + i], vd = v + d * n
                for j in 0..<n { row[j] = row[j].addingProduct(g, vd[j]) }
            }
            var dot: Float = 0
            for j in 0..<n { dot = dot.addingProduct(pi[j], row[j]) }
            for j in 0..<n { row[j] = pi[j] * (row[j] - dot) * scale }
        }
        // dq[d, i] = Σ_j dS[i, j]·k[d, j];  dk[d, j] = Σ_i dS[i, j]·q[d, i]
        for d in 0..<dh {
            let kd = k + d * n, qd = q + d * n, dqd = dq + d * n, dkd = dk + d * n
            dkd.update(repeating: 0, count: n)
            for i in 0..<n {
                let row = ds + i * n
                var s: Float = 0
                for j in 0..<n { s = s.addingProduct(row[j], kd[j]) }
                dqd[i] = s
                let qi = qd[i]
                for j in 0..<n { dkd[j] = dkd[j].addingProduct(qi, row[j]) }
            }
        }
    }
}

/// The plain twin of `attentionBackward`, in float64 from the definition (probabilities
/// recomputed from qkv): do [C, N] per image → dqkv [B, 3C, N].
func attentionBackwardNaive(dOut: UnsafePointer<Float>, qkv: UnsafePointer<Float>, batch: Int, channels: Int,
                            positions n: Int, heads: Int, dqkv: UnsafeMutablePointer<Float>) {
    let dh = channels / heads
    let scale = 1 / Double(dh).squareRoot()
    for b in 0..<batch {
        for h in 0..<heads {
            func q(_ d: Int, _ i: Int) -> Double { Double(qkv[(b * 3 * channels + h * dh + d) * n + i]) }
            func k(_ d: Int, _ j: Int) -> Double { Double(qkv[(b * 3 * channels + channels + h * dh + d) * n + j]) }
            func v(_ d: Int, _ j: Int) -> Double { Double(qkv[(b * 3 * channels + 2 * channels + h * dh + d) * n + j]) }
            func g(_ d: Int, _ i: Int) -> Double { Double(dOut[(b * channels + h * dh + d) * n + i]) }
            var prob = [[Double]](repeating: [Double](repeating: 0, count: n), count: n)
            for i in 0..<n {
                var s = [Double](repeating: 0, count: n)
                for j in 0..<n { for d in 0..<dh { s[j] += q(d, i) * k(d, j) * scale } }
                let mx = s.max()!
                let e = s.map { exp($0 - mx) }
                let t = e.reduce(0, +)
                prob[i] = e.map { $0 / t }
            }
            var dS = prob
            for i in 0..<n {
                var dP = [Double](repeating: 0, count: n)
                for j in 0..<n { for d in 0..<dh { dP[j] += g(d, i) * v(d, j) } }
                var dot = 0.0
                for j in 0..<n { dot += prob[i][j] * dP[j] }
                for j in 0..<n { dS[i][j] = prob[i][j] * (dP[j] - dot) * scale }
            }
            for d in 0..<dh {
                for i in 0..<n {
                    var dq = 0.0, dk = 0.0, dv = 0.0
                    for j in 0..<n {
                        dq += dS[i][j] * k(d, j)
                        dk += dS[j][i] * q(d, j)
                        dv += prob[j][i] * g(d, j)
                    }
                    dqkv[(b * 3 * channels + h * dh + d) * n + i] = Float(dq)
                    dqkv[(b * 3 * channels + channels + h * dh + d) * n + i] = Float(dk)
                    dqkv[(b * 3 * channels + 2 * channels + h * dh + d) * n + i] = Float(dv)
                }
            }
        }
    }
}
