/// Winograd weights rebuilt at every training step, in the step's workspace.
///
/// Training changes the weights after every step, so the transformed forms the Winograd
/// routes read are made per call from the raw weights, straight into the packed layout
/// (`PackedMatrix`: panels of `gemmRowBlock` rows, k-major) and into workspace memory that
/// the next step reuses, so no step allocates. The same forms serve the input gradients:
///   - a 3×3 stride-1 padding-1 convolution's input gradient is the 3×3 convolution of dy
///     with the flipped kernel, channels swapped (wf[ci, co] = w[co, ci] rotated 180°);
///   - a 4×4 stride-2 padding-1 convolution and the 4×4 stride-2 padding-1 transposed
///     convolution with the same weight tensor are each other's input gradient
///     (PyTorch: conv2d's grad_input is conv_transpose2d(grad_out, W), and back).
///
/// These transforms run in float32 (the model's own `prepare` transforms in float64 and
/// rounds once); the difference is a rounding of the weights' transform, far below the
/// parity bound, and each value is computed the same way on any thread count.

/// Conv2d weights w [Cout, Cin, 3, 3] → F(m×m, 3×3) weights, in the workspace: those of the
/// convolution itself (U [Cout, Cin]), or with `inputGradient` those of its input
/// gradient (the convolution of dy [Cout] with the flipped kernel: U [Cin, Cout]).
func winogradWeightsForStep(_ w: UnsafePointer<Float>, inChannels: Int, outChannels: Int, tile: WinogradTile,
                            inputGradient: Bool, workspace: Workspace) throws -> WinogradWeights {
    let rows = inputGradient ? inChannels : outChannels
    let cols = inputGradient ? outChannels : inChannels
    let lanesPerColumn = gemmRowBlock, columnsPerVector = 16 / gemmRowBlock
    let matrixFloats = PackedMatrix.floatCount(rows: rows, cols: cols)
    let buffer = try workspace.floats(tile.positions * matrixFloats)
    guard 16 % gemmRowBlock == 0, rows % gemmRowBlock == 0, cols % columnsPerVector == 0 else {
        // Shapes the vector path does not tile: the plain transform, then packing.
        return try winogradWeightsForStepPlain(w, inChannels: inChannels, outChannels: outChannels, tile: tile,
                                               inputGradient: inputGradient, buffer: buffer, workspace: workspace)
    }
    let alpha = tile.alpha
    // G in a raw buffer: a Swift array read inside the tasks is retained and released per read.
    let gValues = winogradGFloat(tile)
    let g = UnsafeMutablePointer<Float>.allocate(capacity: gValues.count)
    g.initialize(from: gValues, count: gValues.count)
    defer { g.deallocate() }
    // Where the nine taps of result row r, column c start in w.
    @inline(__always) func offset(_ r: Int, _ c: Int) -> Int {
        inputGradient ? (c * inChannels + r) * 9 : (r * inChannels + c) * 9
    }
    let panels = rows / gemmRowBlock
    ThreadPool.shared.parallelFor(panels) { p in
        var lanes = [Int](repeating: 0, count: 16)
        var k = [Vec16](repeating: Vec16(), count: 9)
        var t = [Vec16](repeating: Vec16(), count: alpha * 3)
        lanes.withUnsafeMutableBufferPointer { lanes in
        k.withUnsafeMutableBufferPointer { k in
        t.withUnsafeMutableBufferPointer { t in
            for c0 in stride(from: 0, to: cols, by: columnsPerVector) {
                // Lane l holds row p·R + l % R, column c0 + l / R: 16 consecutive floats of a panel.
                for l in 0..<16 { lanes[l] = offset(p * lanesPerColumn + l % lanesPerColumn, c0 + l / lanesPerColumn) }
                for tap in 0..<9 {
                    var v = Vec16()
                    for l in 0..<16 { v[l] = w[lanes[l] + (inputGradient ? 8 - tap : tap)] }
                    k[tap] = v
                }
                // t = G · k [α, 3], then U = t · Gᵀ [α, α].
                for i in 0..<alpha {
                    let g0 = g[i * 3], g1 = g[i * 3 + 1], g2 = g[i * 3 + 2]
                    for j in 0..<3 { t[i * 3 + j] = g0 * k[j] + g1 * k[3 + j] + g2 * k[6 + j] }
                }
                let dst = buffer + p * gemmRowBlock * cols + c0 * gemmRowBlock
                for i in 0..<alpha {
                    let t0 = t[i * 3], t1 = t[i * 3 + 1], t2 = t[i * 3 + 2]
                    for j in 0..<alpha {
                        let u = t0 * g[j * 3] + t1 * g[j * 3 + 1] + t2 * g[j * 3 + 2]
                        store16(u, dst + (i * alpha + j) * matrixFloats)
                    }
                }
            }
        }
        }
        }
    }
    let positions = (0..<tile.positions).map {
        PackedMatrix(rows: rows, cols: cols, packed: buffer + $0 * matrixFloats)
    }
    return WinogradWeights(tile: tile, positions: positions)
}

/// The plain twin of `winogradWeightsForStep`: the weights of the (input-gradient)
/// convolution written out as a [rows, cols, 3, 3] tensor, transformed in float64 by the
/// inference's own `winogradTransform3x3`, then packed. `buffer` holds
/// `tile.positions · PackedMatrix.floatCount(rows:cols:)` floats.
func winogradWeightsForStepPlain(_ w: UnsafePointer<Float>, inChannels: Int, outChannels: Int, tile: WinogradTile,
                                 inputGradient: Bool, buffer: UnsafeMutablePointer<Float>,
                                 workspace: Workspace) throws -> WinogradWeights {
    let rows = inputGradient ? inChannels : outChannels
    let cols = inputGradient ? outChannels : inChannels
    let mark = workspace.mark()
    defer { workspace.release(to: mark) }
    var kernel = w
    if inputGradient {
        let flipped = try workspace.floats(rows * cols * 9)
        flippedKernel(w, inChannels: inChannels, outChannels: outChannels, taps: 9, into: flipped)
        kernel = UnsafePointer(flipped)
    }
    let count = max(1, rows * cols)
    let u = try workspace.floats(tile.positions * count)
    winogradTransform3x3(kernel, inChannels: cols, outChannels: rows, tile: tile, into: u)
    let matrixFloats = PackedMatrix.floatCount(rows: rows, cols: cols)
    let positions = (0..<tile.positions).map {
        PackedMatrix(rows: rows, cols: cols, source: u + $0 * count, rowStride: cols, colStride: 1,
                     buffer: buffer + $0 * matrixFloats)
    }
    return WinogradWeights(tile: tile, positions: positions)
}

/// G of F(m×m, 3×3) as float32, row-major [α, 3].
private func winogradGFloat(_ tile: WinogradTile) -> [Float] {
    switch tile {
    case .two:
        return [1, 0, 0, 0.5, 0.5, 0.5, 0.5, -0.5, 0.5, 0, 0, 1]
    case .four:
        return [1.0 / 4, 0, 0, -1.0 / 6, -1.0 / 6, -1.0 / 6, -1.0 / 6, 1.0 / 6, -1.0 / 6,
                1.0 / 24, 1.0 / 12, 1.0 / 6, 1.0 / 24, -1.0 / 12, 1.0 / 6, 0, 0, 1]
    }
}

/// Conv2d weights [Cout, Cin, 4, 4] (or, read as such, ConvTranspose2d weights
/// [Cin_t, Cout_t, 4, 4] for that layer's input gradient) → `StridedWinogradWeights`, in
/// the workspace.
func stridedWinogradWeightsForStep(_ w: UnsafePointer<Float>, inChannels: Int, outChannels: Int,
                                   workspace: Workspace) throws -> StridedWinogradWeights {
    let cols = 4 * inChannels
    let matrixFloats = PackedMatrix.floatCount(rows: outChannels, cols: cols)
    let packed = try workspace.floats(9 * matrixFloats)
    ThreadPool.shared.parallelFor(panelCount(outChannels)) { p in
        for ci in 0..<inChannels {
            // Row co's kernel for input channel ci: w + (co·Cin + ci)·16.
            let k = w + (p * 8 * inChannels + ci) * 16
            let rows = min(8, outChannels - p * 8)
            for py in 0..<2 {
                for px in 0..<2 {
                    @inline(__always) func tap(_ ty: Int, _ tx: Int) -> SIMD8<Float> {
                        panelLanes(k, rowStride: inChannels * 16, rows: rows, at: (2 * ty + py) * 4 + 2 * tx + px)
                    }
                    let column = ci * 4 + py * 2 + px
                    store2x2Transform(tap(0, 0), tap(0, 1), tap(1, 0), tap(1, 1), packed + p * 8 * cols + column * 8,
                                      stride: matrixFloats)
                }
            }
        }
    }
    return StridedWinogradWeights(positions: (0..<9).map {
        PackedMatrix(rows: outChannels, cols: cols, packed: packed + $0 * matrixFloats)
    })
}

/// ConvTranspose2d weights [Cin, Cout, 4, 4] (or, read as such, Conv2d weights
/// [Cout_c, Cin_c, 4, 4] for that layer's input gradient) → `TransposedWinogradWeights`,
/// in the workspace.
func transposedWinogradWeightsForStep(_ w: UnsafePointer<Float>, inChannels: Int, outChannels: Int,
                                      workspace: Workspace) throws -> TransposedWinogradWeights {
    let matrixFloats = PackedMatrix.floatCount(rows: outChannels, cols: inChannels)
    let packed = try workspace.floats(36 * matrixFloats)
    ThreadPool.shared.parallelFor(panelCount(outChannels)) { p in
        let rows = min(8, outChannels - p * 8)
        for ry in 0..<2 {
            for rx in 0..<2 {
                let parity = 2 * ry + rx
                let ty0 = subPixelTap(ry, 0), ty1 = subPixelTap(ry, 1)
                let tx0 = subPixelTap(rx, 0), tx1 = subPixelTap(rx, 1)
                for ci in 0..<inChannels {
                    // Output channel co's kernel for input channel ci: w + (ci·Cout + co)·16.
                    let k = w + (ci * outChannels + p * 8) * 16
                    @inline(__always) func tap(_ ty: Int, _ tx: Int) -> SIMD8<Float> {
                        panelLanes(k, rowStride: 16, rows: rows, at: ty * 4 + tx)
                    }
                    store2x2Transform(tap(ty0, tx0), tap(ty0, tx1), tap(ty1, tx0), tap(ty1, tx1),
                                      packed + 9 * parity * matrixFloats + p * 8 * inChannels + ci * 8,
                                      stride: matrixFloats)
                }
            }
        }
    }
    return TransposedWinogradWeights(positions: (0..<36).map {
        PackedMatrix(rows: outChannels, cols: inChannels, packed: packed + $0 * matrixFloats)
    })
}

/// The 8-row panels of a packed matrix of `rows` rows. The F(2×2, 2×2) forms are written
/// straight into the packed layout, lane l of a vector being row 8p + l of panel p: the
/// panel's 8 rows of one column sit together, so each value is one 8-float store.
@inline(__always)
private func panelCount(_ rows: Int) -> Int {
    precondition(gemmRowBlock == 8, "the F(2×2, 2×2) step forms are written in panels of 8 rows")
    return (rows + 7) / 8
}

/// One tap of a panel's rows: lane l = k[l·rowStride + tap] for the panel's first `rows`
/// rows, zero past them (the packed layout's rows past the last are zero).
@inline(__always)
private func panelLanes(_ k: UnsafePointer<Float>, rowStride: Int, rows: Int, at tap: Int) -> SIMD8<Float> {
    var v = SIMD8<Float>()
    for l in 0..<rows { v[l] = k[l * rowStride + tap] }
    return v
}

/// The nine values of G · [[a, b], [c, d]] · Gᵀ (G = [1 0; 1 1; 0 1]), 8 lanes at a time,
/// one 8-float store per value at dst + ξ·stride:
/// U = [[a, a+b, b], [a+c, (a+b)+(c+d), b+d], [c, c+d, d]].
@inline(__always)
private func store2x2Transform(_ a: SIMD8<Float>, _ b: SIMD8<Float>, _ c: SIMD8<Float>, _ d: SIMD8<Float>,
                               _ dst: UnsafeMutablePointer<Float>, stride: Int) {
    @inline(__always) func put(_ v: SIMD8<Float>, _ xi: Int) {
        UnsafeMutableRawPointer(dst + xi * stride).storeBytes(of: v, as: SIMD8<Float>.self)
    }
    let ab = a + b, cd = c + d
    put(a, 0)
    put(ab, 1)
    put(b, 2)
    put(a + c, 3)
    put(ab + cd, 4)
    put(b + d, 5)
    put(c, 6)
    put(cd, 7)
    put(d, 8)
}
