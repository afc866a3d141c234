/// Winograd F(2×2, 3×3) convolution (Lavin & Gray 2016) for 3×3, stride 1, padding 1.
///
/// Each 2×2 output tile comes from a 4×4 input tile d (rows 2ty-1..2ty+2, columns likewise):
///     Y = Aᵀ [ Σ_ci (G g Gᵀ)[co, ci] ⊙ (Bᵀ d_ci B) ] A
/// so the 36 multiplies of a direct 2×2×3×3 tile become 16, done as 16 GEMMs
/// U_ξ [Cout, Cin] · V_ξ [Cin, tiles]. Errors stay near float32 rounding (the
/// transforms only add, subtract and halve); the measured error against the
/// float64 reference is reported by `testWinogradMatchesNaive`.
///
/// Work is cut into tasks of 32 tiles of one image: the input transform writes
/// V straight into the packed-B panel layout [Cin][32] the micro-kernel reads,
/// the 16 products land in a per-thread buffer, and the output transform adds
/// bias (and the old y) and writes the 2×2 pixels. Tiles are fixed by the image
/// geometry, so results depend on neither the batch nor the thread count.

/// The 16 transformed weight matrices U_ξ = (G g Gᵀ)_ξ [Cout, Cin], ξ = 4·row + column.
struct WinogradWeights {
    let positions: [PackedMatrix]
    var outChannels: Int { positions[0].rows }
    var inChannels: Int { positions[0].cols }
}

/// Transforms Conv2d weights [Cout, Cin, 3, 3] into `WinogradWeights` (in float64, rounded once).
func packWinogradWeights(_ w: UnsafePointer<Float>, inChannels: Int, outChannels: Int) throws -> WinogradWeights {
    let g: [[Double]] = [[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]]
    let count = max(1, outChannels * inChannels)
    let u = try allocateFloatsOrThrow(16 * count, "Winograd weights")
    defer { freeFloats(u) }
    for co in 0..<outChannels {
        for ci in 0..<inChannels {
            let k = w + (co * inChannels + ci) * 9
            // t = G · k [4, 3], then U = t · Gᵀ [4, 4].
            var t = [[Double]](repeating: [0, 0, 0], count: 4)
            for i in 0..<4 {
                for j in 0..<3 {
                    t[i][j] = g[i][0] * Double(k[j]) + g[i][1] * Double(k[3 + j]) + g[i][2] * Double(k[6 + j])
                }
            }
            for i in 0..<4 {
                for j in 0..<4 {
                    let v = t[i][0] * g[j][0] + t[i][1] * g[j][1] + t[i][2] * g[j][2]
                    u[(i * 4 + j) * count + co * inChannels + ci] = Float(v)
                }
            }
        }
    }
    var positions: [PackedMatrix] = []
    for xi in 0..<16 {
        positions.append(try PackedMatrix(rows: outChannels, cols: inChannels, source: u + xi * count, ld: inChannels))
    }
    return WinogradWeights(positions: positions)
}

/// Floats of per-thread scratch for `winogradConv3x3`.
func winogradScratchFloats(inChannels: Int, outChannels: Int) -> Int {
    let rows = ((outChannels + gemmRowBlock - 1) / gemmRowBlock) * gemmRowBlock
    // V [16][Cin][32] + products [16][rows][32] + one 4×4 input tile block [16][32].
    return 16 * inChannels * gemmColumnBlock + 16 * rows * gemmColumnBlock + 16 * gemmColumnBlock
}

/// x [B, Cin, H, W] → y [B, Cout, H, W]: 3×3 convolution, stride 1, padding 1, by
/// Winograd F(2×2, 3×3); y = conv(x) + bias (+ y when `accumulate`), bias per image
/// at `bias + b * biasBatchStride`.
func winogradConv3x3(
    _ x: UnsafePointer<Float>, batch: Int, inChannels cin: Int, height h: Int, width w: Int,
    weights: WinogradWeights, bias: UnsafePointer<Float>, biasBatchStride: Int,
    y: UnsafeMutablePointer<Float>, accumulate: Bool, workspace: Workspace
) throws {
    let cout = weights.outChannels
    let tilesHigh = (h + 1) / 2, tilesWide = (w + 1) / 2, tiles = tilesHigh * tilesWide
    let chunks = (tiles + gemmColumnBlock - 1) / gemmColumnBlock
    let mark = workspace.mark()
    defer { workspace.release(to: mark) }
    // Input tile element (i, j) of tile (ty, tx) is padded pixel (2ty + i, 2tx + j): a 4×4,
    // stride-2, padding-1 window, so stride-2 phase planes make every row of tiles contiguous.
    let layout = PhasePlanes(height: h, width: w, stride: 2, pad: 1)
    let perImage = cin * layout.perChannel
    let planes = try workspace.floats(batch * perImage)
    layout.fill(x, batch: batch, channels: cin, height: h, width: w, into: planes)

    let pool = ThreadPool.shared
    let split = GemmSplit(m: cout, n: tiles, images: batch, threads: pool.threadsFor(batch * 4), columnsPerChunk: gemmColumnBlock)
    let taskCount = batch * split.tasksPerImage
    let maxThreads = pool.threadsFor(taskCount)
    let scratchFloats = winogradScratchFloats(inChannels: cin, outChannels: cout)
    let scratch = try workspace.floats(maxThreads * scratchFloats)
    let rowsPadded = ((cout + gemmRowBlock - 1) / gemmRowBlock) * gemmRowBlock
    pool.parallelFor(taskCount, maxThreads: maxThreads) { task, thread in
        let b = task / split.tasksPerImage
        let (m0, m1, n0, n1) = split.ranges(task % split.tasksPerImage, m: cout, n: tiles)
        let width = n1 - n0
        let v = scratch + thread * scratchFloats                 // [16][Cin][32]
        let products = v + 16 * cin * gemmColumnBlock            // [16][rowsPadded][32]
        let d = products + 16 * rowsPadded * gemmColumnBlock     // [16][32]
        let source = PhaseSource(planes: planes + b * perImage, layout: layout, kernel: 4,
                                 offsetY: 0, offsetX: 0, outWidth: tilesWide)
        // V_ξ[ci, t] = (Bᵀ d B)_ξ for the chunk's tiles, 16 lanes at a time.
        for ci in 0..<cin {
            source.packPanel(k0: ci * 16, kc: 16, n0: n0, width: width, into: d)
            for half in 0..<2 {
                let o = half * 16
                @inline(__always) func row(_ i: Int) -> (Vec16, Vec16, Vec16, Vec16) {
                    // Bᵀ on the columns of input row i: (d0 - d2, d1 + d2, d2 - d1, d1 - d3).
                    let d0 = load16(d + (4 * i) * 32 + o), d1 = load16(d + (4 * i + 1) * 32 + o)
                    let d2 = load16(d + (4 * i + 2) * 32 + o), d3 = load16(d + (4 * i + 3) * 32 + o)
                    return (d0 - d2, d1 + d2, d2 - d1, d1 - d3)
                }
                let r0 = row(0), r1 = row(1), r2 = row(2), r3 = row(3)
                let dst = v + ci * gemmColumnBlock + o
                let plane = cin * gemmColumnBlock
                @inline(__always) func put(_ i: Int, _ a: Vec16, _ bb: Vec16, _ c: Vec16, _ e: Vec16) {
                    store16(a, dst + (4 * i) * plane)
                    store16(bb, dst + (4 * i + 1) * plane)
                    store16(c, dst + (4 * i + 2) * plane)
                    store16(e, dst + (4 * i + 3) * plane)
                }
                // Bᵀ on the rows: (r0 - r2, r1 + r2, r2 - r1, r1 - r3).
                put(0, r0.0 - r2.0, r0.1 - r2.1, r0.2 - r2.2, r0.3 - r2.3)
                put(1, r1.0 + r2.0, r1.1 + r2.1, r1.2 + r2.2, r1.3 + r2.3)
                put(2, r2.0 - r1.0, r2.1 - r1.1, r2.2 - r1.2, r2.3 - r1.3)
                put(3, r1.0 - r3.0, r1.1 - r3.1, r1.2 - r3.2, r1.3 - r3.3)
            }
        }
        // The 16 products M_ξ [rows m0..<m1, 32] = U_ξ · V_ξ.
        for xi in 0..<16 {
            let u = weights.positions[xi]
            let vPanel = UnsafePointer(v + xi * cin * gemmColumnBlock)
            var m = m0
            while m < m1 {
                let out = products + (xi * rowsPadded + m) * gemmColumnBlock
                out.update(repeating: 0, count: gemmRowBlock * gemmColumnBlock)
                let aPanel = UnsafePointer(u.data + (m / gemmRowBlock) * gemmRowBlock * cin)
                if width <= 16 {
                    microKernel8x16(cin, aPanel, vPanel, out, gemmColumnBlock)
                } else {
                    microKernel8x32(cin, aPanel, vPanel, out, gemmColumnBlock)
                }
                m += gemmRowBlock
            }
        }
        // Y = Aᵀ M A, + bias (+ old y), written where the 2×2 tile lies inside the image.
        let yImage = y + b * cout * h * w
        let biasImage = bias + b * biasBatchStride
        for co in m0..<m1 {
            let yPlane = yImage + co * h * w
            let biasValue = Vec16(repeating: biasImage[co])
            for half in 0..<((width + 15) / 16) {
                let o = half * 16
                @inline(__always) func mRow(_ i: Int) -> (Vec16, Vec16) {
                    // Aᵀ on the columns of row i: (m0 + m1 + m2, m1 - m2 - m3).
                    let base = products + co * gemmColumnBlock + o
                    let step = rowsPadded * gemmColumnBlock
                    let a = load16(base + (4 * i) * step), bb = load16(base + (4 * i + 1) * step)
                    let c = load16(base + (4 * i + 2) * step), e = load16(base + (4 * i + 3) * step)
                    return (a + bb + c, bb - c - e)
                }
                let q0 = mRow(0), q1 = mRow(1), q2 = mRow(2), q3 = mRow(3)
                let y00 = q0.0 + q1.0 + q2.0 + biasValue, y01 = q0.1 + q1.1 + q2.1 + biasValue
                let y10 = q1.0 - q2.0 - q3.0 + biasValue, y11 = q1.1 - q2.1 - q3.1 + biasValue
                for lane in 0..<min(16, width - o) {
                    let t = n0 + o + lane
                    let ty = t / tilesWide, tx = t % tilesWide
                    let oy = 2 * ty, ox = 2 * tx
                    let p = yPlane + oy * w + ox
                    let right = ox + 1 < w, below = oy + 1 < h
                    if accumulate {
                        p[0] += y00[lane]
                        if right { p[1] += y01[lane] }
                        if below { p[w] += y10[lane] }
                        if right && below { p[w + 1] += y11[lane] }
                    } else {
                        p[0] = y00[lane]
                        if right { p[1] = y01[lane] }
                        if below { p[w] = y10[lane] }
                        if right && below { p[w + 1] = y11[lane] }
                    }
                }
            }
        }
    }
}
