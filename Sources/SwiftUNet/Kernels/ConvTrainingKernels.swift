/// Convolutions for training: forward, and the gradients with respect to the input,
/// the weight and the bias, as GEMMs over explicit im2col matrices (one image at a
/// time, so the column buffer stays small). PyTorch semantics: cross-correlation,
/// zero padding; ConvTranspose2d weight [in, out, k, k].
///
/// Weight and bias gradients add the images in order (image 0 first), and every GEMM
/// keeps its per-element order whatever the thread count, so the gradients are the
/// same bit for bit on any number of threads.

/// The output positions ox in 0..<outSize whose input position ox·stride + offset lies in 0..<inSize.
@inline(__always)
private func validOutputs(offset: Int, stride: Int, inSize: Int, outSize: Int) -> Range<Int> {
    // ox·s + offset >= 0  ⇔  ox >= ⌈-offset / s⌉;  ox·s + offset <= inSize - 1  ⇔  ox <= ⌊(inSize - 1 - offset) / s⌋
    let lo = offset >= 0 ? 0 : (-offset + stride - 1) / stride
    let top = inSize - 1 - offset
    let hi = top < 0 ? 0 : min(outSize, top / stride + 1)
    return lo < hi ? lo..<hi : 0..<0
}

/// x [C, H, W] (one image) → col [C·k·k, Ho·Wo]:
/// col[(c·k + ky)·k + kx, oy·Wo + ox] = x[c, oy·s - p + ky, ox·s - p + kx] (0 outside).
func im2col(_ x: UnsafePointer<Float>, geometry g: ConvGeometry, channels: Int, col: UnsafeMutablePointer<Float>) {
    let k = g.kernel, s = g.stride, p = g.padding
    let ho = g.outHeight, wo = g.outWidth, n = ho * wo
    ThreadPool.shared.parallelFor(channels) { c in
        let plane = x + c * g.height * g.width
        for ky in 0..<k {
            let rows = validOutputs(offset: ky - p, stride: s, inSize: g.height, outSize: ho)
            for kx in 0..<k {
                let dst = col + ((c * k + ky) * k + kx) * n
                let cols = validOutputs(offset: kx - p, stride: s, inSize: g.width, outSize: wo)
                for oy in 0..<ho {
                    let d = dst + oy * wo
                    guard rows.contains(oy) else { d.update(repeating: 0, count: wo); continue }
                    let src = plane + (oy * s - p + ky) * g.width + (kx - p)
                    if cols.lowerBound > 0 { d.update(repeating: 0, count: cols.lowerBound) }
                    if s == 1 {
                        if !cols.isEmpty { (d + cols.lowerBound).update(from: src + cols.lowerBound, count: cols.count) }
                    } else {
                        for ox in cols { d[ox] = src[ox * s] }
                    }
                    if cols.upperBound < wo { (d + cols.upperBound).update(repeating: 0, count: wo - cols.upperBound) }
                }
            }
        }
    }
}

/// The adjoint of `im2col`: col [C·k·k, Ho·Wo] → dx [C, H, W] +=. Each channel adds its
/// taps in the order (ky, kx, oy, ox), whatever the thread count.
func col2imAdd(_ col: UnsafePointer<Float>, geometry g: ConvGeometry, channels: Int, dx: UnsafeMutablePointer<Float>) {
    let k = g.kernel, s = g.stride, p = g.padding
    let ho = g.outHeight, wo = g.outWidth, n = ho * wo
    ThreadPool.shared.parallelFor(channels) { c in
        let plane = dx + c * g.height * g.width
        for ky in 0..<k {
            let rows = validOutputs(offset: ky - p, stride: s, inSize: g.height, outSize: ho)
            for kx in 0..<k {
                let src = col + ((c * k + ky) * k + kx) * n
                let cols = validOutputs(offset: kx - p, stride: s, inSize: g.width, outSize: wo)
                for oy in rows {
                    let d = plane + (oy * s - p + ky) * g.width + (kx - p)
                    let r = src + oy * wo
                    for ox in cols { d[ox * s] += r[ox] }
                }
            }
        }
    }
}

/// Whether a convolution reads its input as it is (1×1, stride 1, no padding): then the
/// image itself is the im2col matrix.
@inline(__always)
private func isPointwise(_ g: ConvGeometry) -> Bool { g.kernel == 1 && g.stride == 1 && g.padding == 0 }

/// db[c] += Σ over images and positions of dy[b, c, :] (image b at dy + b·batchStride): each
/// image's plane by `laneSum`, the images added in order in float64.
func biasGradientAdd(_ dy: UnsafePointer<Float>, batch: Int, channels: Int, spatial: Int, batchStride: Int,
                     db: UnsafeMutablePointer<Float>) {
    // One task per channel: each channel's order of additions is the same on any thread count.
    ThreadPool.shared.parallelFor(channels) { c in
        var sum = 0.0
        for b in 0..<batch {
            sum += Double(laneSum(dy + b * batchStride + c * spatial, count: spatial))
        }
        db[c] += Float(sum)
    }
}

/// x [B, Cin, H, W] → y [B, Cout, Ho, Wo] = conv(x, weight) + bias, with weight
/// [Cout, Cin, k, k]. `perImageBias` [B, Cout] replaces `bias` when given; with
/// `accumulate` y's contents are added. The weights are packed for the GEMM on each call
/// (a copy, cheap beside the product: training changes them every step), then the
/// inference's implicit-GEMM convolution runs over the whole batch.
func convForwardTraining(_ x: UnsafePointer<Float>, batch: Int, geometry g: ConvGeometry,
                         weight: UnsafePointer<Float>, bias: UnsafePointer<Float>,
                         perImageBias: UnsafePointer<Float>? = nil,
                         y: UnsafeMutablePointer<Float>, accumulate: Bool = false, workspace: Workspace) throws {
    let kk = g.inChannels * g.kernel * g.kernel
    let mark = workspace.mark()
    defer { workspace.release(to: mark) }
    let w = PackedMatrix(rows: g.outChannels, cols: kk, source: weight, rowStride: kk, colStride: 1,
                         buffer: try workspace.floats(PackedMatrix.floatCount(rows: g.outChannels, cols: kk)))
    try conv2dForward(x, batch: batch, geometry: g, weights: w, bias: perImageBias ?? bias,
                      biasBatchStride: perImageBias == nil ? 0 : g.outChannels, y: y, accumulate: accumulate,
                      workspace: workspace)
}

/// Zeros for `count` bias entries, from the workspace.
private func zeroBias(_ count: Int, _ workspace: Workspace) throws -> UnsafeMutablePointer<Float> {
    let z = try workspace.floats(count)
    z.update(repeating: 0, count: count)
    return z
}

/// The kernel of a stride-1 convolution's input gradient: w [Cout, Cin, k, k] (taps = k·k)
/// rotated 180° with its channels swapped, wf[ci, co, t] = w[co, ci, taps - 1 - t].
func flippedKernel(_ w: UnsafePointer<Float>, inChannels: Int, outChannels: Int, taps: Int,
                   into wf: UnsafeMutablePointer<Float>) {
    for co in 0..<outChannels {
        for ci in 0..<inChannels {
            let src = w + (co * inChannels + ci) * taps, dst = wf + (ci * outChannels + co) * taps
            for t in 0..<taps { dst[t] = src[taps - 1 - t] }
        }
    }
}

/// The gradients of `convForwardTraining`: dy [B, Cout, Ho, Wo] (image b at dy + b·dyBatchStride),
/// x [B, Cin, H, W] → dWeight [Cout, Cin, k, k] += (when given), dBias [Cout] +=, and when `dx` is given
/// dx [B, Cin, H, W] = (or += with `accumulateDx`) the input gradient.
func convBackwardTraining(_ dy: UnsafePointer<Float>, dyBatchStride: Int? = nil, x: UnsafePointer<Float>,
                          batch: Int, geometry g: ConvGeometry, weight: UnsafePointer<Float>,
                          dWeight: UnsafeMutablePointer<Float>?, dBias: UnsafeMutablePointer<Float>?,
                          dx: UnsafeMutablePointer<Float>?, accumulateDx: Bool = false, workspace: Workspace) throws {
    let kk = g.inChannels * g.kernel * g.kernel, n = g.outHeight * g.outWidth
    let inPlane = g.inChannels * g.height * g.width
    let dyStride = dyBatchStride ?? g.outChannels * n
    let mark = workspace.mark()
    defer { workspace.release(to: mark) }
    if let dBias = dBias {
        biasGradientAdd(dy, batch: batch, channels: g.outChannels, spatial: n, batchStride: dyStride, db: dBias)
    }
    if let dWeight = dWeight, isPointwise(g) {
        let dyPanel = try workspace.floats(PackedMatrix.floatCount(rows: g.outChannels, cols: n))
        for b in 0..<batch {
            // dW [Cout, Cin] += dy_b [Cout, n] · x_bᵀ [n, Cin] (the image is its own im2col matrix)
            let a = PackedMatrix(rows: g.outChannels, cols: n, source: dy + b * dyStride, rowStride: n, colStride: 1,
                                 buffer: dyPanel)
            try matmul(a, StridedSource(b: x + b * inPlane, kStride: 1, nStride: n), n: kk, c: dWeight, ldc: kk,
                       accumulate: true, workspace: workspace)
        }
    } else if let dWeight = dWeight {
        try windowWeightGradient(dy, rowCount: g.outChannels, rowsBatchStride: dyStride, windowed: x, batch: batch,
                                 geometry: g, dWeight: dWeight, workspace: workspace)
    }
    guard let dx = dx else { return }
    let kkOut = g.outChannels * g.kernel * g.kernel
    let keepsSize = g.stride == 1 && 2 * g.padding == g.kernel - 1
    if keepsSize && dyStride == g.outChannels * n {
        // A stride-1 convolution that keeps the image size has as input gradient the convolution of
        // dy with the flipped kernel, its channels swapped: wf[ci, co, ky, kx] = W[co, ci, k-1-ky, k-1-kx].
        let wf = try workspace.floats(g.inChannels * kkOut)
        flippedKernel(weight, inChannels: g.inChannels, outChannels: g.outChannels, taps: g.kernel * g.kernel,
                      into: wf)
        let packed = PackedMatrix(rows: g.inChannels, cols: kkOut, source: wf, rowStride: kkOut, colStride: 1,
                                  buffer: try workspace.floats(PackedMatrix.floatCount(rows: g.inChannels, cols: kkOut)))
        let dyGeometry = ConvGeometry(inChannels: g.outChannels, outChannels: g.inChannels, height: g.height,
                                      width: g.width, kernel: g.kernel, stride: 1, padding: g.kernel - 1 - g.padding)
        try conv2dForward(dy, batch: batch, geometry: dyGeometry, weights: packed,
                          bias: try zeroBias(g.inChannels, workspace), biasBatchStride: 0, y: dx,
                          accumulate: accumulateDx, workspace: workspace)
        return
    }
    // Otherwise: dcol = Wᵀ · dy_b, scattered back onto the image (col2im).
    let col = try workspace.floats(kk * n)
    let wt = PackedMatrix(rows: kk, cols: g.outChannels, source: weight, rowStride: 1, colStride: kk,
                          buffer: try workspace.floats(PackedMatrix.floatCount(rows: kk, cols: g.outChannels)))
    for b in 0..<batch {
        let dxb = dx + b * inPlane
        try matmul(wt, StridedSource(b: dy + b * dyStride, kStride: n, nStride: 1), n: n, c: col, ldc: n,
                   accumulate: false, workspace: workspace)
        if !accumulateDx { dxb.update(repeating: 0, count: inPlane) }
        col2imAdd(col, geometry: g, channels: g.inChannels, dx: dxb)
    }
}

/// The weight gradient of a convolution as one GEMM over the whole batch:
///     dW [M, C, k, k] += Σ_b rows_b [M, n] · im2col(windowed_b)ᵀ [n, C·k·k],
/// rows [B, M, n] (image b at rows + b·rowsBatchStride), windowed [B, C, H, W] (image b at
/// windowed + b·windowedBatchStride), read through `geometry`'s windows (n = Ho·Wo). For a
/// convolution, rows = dy and windowed = x (dW [Cout, Cin, k, k]); for a transposed one,
/// rows = x and windowed = dy on the adjoint geometry (dW [Cin, Cout, k, k]).
///
/// The im2col matrix is built transposed, [B·n, k·k·C], from a channel-last copy of the
/// padded input (a window row's k taps are k·C contiguous floats there), so the GEMM reads
/// it as a dense B operand; rows are packed as the A panels with k = (image, position). Each
/// element is one chain of fused multiply-adds over the images and positions in order, then
/// added to dW: the same bits on every thread count and kernel variant. Plain twin:
/// `convBackwardNaive` / `convTransposeBackwardNaive`.
func windowWeightGradient(_ rows: UnsafePointer<Float>, rowCount m: Int, rowsBatchStride: Int,
                          windowed: UnsafePointer<Float>, windowedBatchStride: Int? = nil, batch: Int,
                          geometry g: ConvGeometry, dWeight: UnsafeMutablePointer<Float>,
                          workspace: Workspace) throws {
    let c = g.inChannels, k = g.kernel, s = g.stride, p = g.padding
    let ho = g.outHeight, wo = g.outWidth, n = ho * wo
    if batch == 0 || n == 0 || m == 0 || c == 0 { return }
    let depth = batch * n, width = k * k * c
    let mark = workspace.mark()
    defer { workspace.release(to: mark) }
    // Channel-last with a zero border of `padding`, far enough for every window.
    let paddedRows = max(g.height + 2 * p, (ho - 1) * s + k), paddedColumns = max(g.width + 2 * p, (wo - 1) * s + k)
    let last = try workspace.floats(batch * paddedRows * paddedColumns * c)
    channelsLast(windowed, imageStride: windowedBatchStride, batch: batch, channels: c, height: g.height,
                 width: g.width, into: last, rows: paddedRows, columns: paddedColumns, pitch: c, border: p)
    // colT [B·n, k·k·C]: row (b, oy, ox), column (ky·k + kx)·C + ci.
    let colT = try workspace.floats(depth * width)
    let pool = ThreadPool.shared
    let rowsPerTask = 32
    pool.parallelFor((depth + rowsPerTask - 1) / rowsPerTask) { task in
        for row in (task * rowsPerTask)..<min(depth, task * rowsPerTask + rowsPerTask) {
            let b = row / n, oy = (row % n) / wo, ox = row % wo
            let dst = colT + row * width
            for ky in 0..<k {
                let src = last + ((b * paddedRows + oy * s + ky) * paddedColumns + ox * s) * c
                (dst + ky * k * c).update(from: src, count: k * c)
            }
        }
    }
    // rows as A panels [M/8][B·n][8].
    let panels = (m + gemmRowBlock - 1) / gemmRowBlock
    let packed = try workspace.floats(PackedMatrix.floatCount(rows: m, cols: depth))
    pool.parallelFor(panels * batch) { task in
        let panel = task / batch, b = task % batch
        let dst = packed + (panel * depth + b * n) * gemmRowBlock
        for lane in 0..<gemmRowBlock {
            let r = panel * gemmRowBlock + lane
            if r < m {
                let src = rows + b * rowsBatchStride + r * n
                for q in 0..<n { dst[q * gemmRowBlock + lane] = src[q] }
            } else {
                for q in 0..<n { dst[q * gemmRowBlock + lane] = 0 }
            }
        }
    }
    let product = try workspace.floats(m * width)
    try matmul(PackedMatrix(rows: m, cols: depth, packed: packed), StridedSource(b: colT, kStride: width, nStride: 1),
               n: width, c: product, ldc: width, accumulate: false, workspace: workspace)
    // dW[r, ci, tap] += product[r, tap·C + ci]
    pool.parallelFor(m) { r in
        let src = product + r * width, dst = dWeight + r * width
        for ci in 0..<c {
            for tap in 0..<(k * k) { dst[ci * k * k + tap] += src[tap * c + ci] }
        }
    }
}

/// The convolution whose input gradient a transposed convolution computes: from the
/// transposed output [Cout, Ho, Wo] back to [Cin, H, W].
@inline(__always)
private func adjointGeometry(_ g: ConvGeometry) -> ConvGeometry {
    ConvGeometry(inChannels: g.outChannels, outChannels: g.inChannels, height: g.transposedHeight,
                 width: g.transposedWidth, kernel: g.kernel, stride: g.stride, padding: g.padding)
}

/// x [B, Cin, H, W] → y [B, Cout, Ho, Wo] = ConvTranspose2d(x, weight [Cin, Cout, k, k]) + bias,
/// image b at y + b·yBatchStride: col = Wᵀ·x_b, then col2im onto the bias.
func convTransposeForwardTraining(_ x: UnsafePointer<Float>, batch: Int, geometry g: ConvGeometry,
                                  weight: UnsafePointer<Float>, bias: UnsafePointer<Float>,
                                  y: UnsafeMutablePointer<Float>, yBatchStride: Int? = nil,
                                  workspace: Workspace) throws {
    let adj = adjointGeometry(g)
    let kk = g.outChannels * g.kernel * g.kernel, n = g.height * g.width
    let outSpatial = adj.height * adj.width
    let mark = workspace.mark()
    defer { workspace.release(to: mark) }
    // Wᵀ [Cout·k·k, Cin] from weight viewed as [Cin, Cout·k·k].
    let wt = PackedMatrix(rows: kk, cols: g.inChannels, source: weight, rowStride: 1, colStride: kk,
                          buffer: try workspace.floats(PackedMatrix.floatCount(rows: kk, cols: g.inChannels)))
    let col = try workspace.floats(kk * n)
    for b in 0..<batch {
        try matmul(wt, StridedSource(b: x + b * g.inChannels * n, kStride: n, nStride: 1), n: n, c: col, ldc: n,
                   accumulate: false, workspace: workspace)
        let yb = y + b * (yBatchStride ?? g.outChannels * outSpatial)
        for c in 0..<g.outChannels { (yb + c * outSpatial).update(repeating: bias[c], count: outSpatial) }
        col2imAdd(col, geometry: adj, channels: g.outChannels, dx: yb)
    }
}

/// The gradients of `convTransposeForwardTraining`: dy [B, Cout, Ho, Wo] (image b at
/// dy + b·dyBatchStride), x [B, Cin, H, W] → dWeight [Cin, Cout, k, k] +=, dBias +=,
/// dx [B, Cin, H, W] = the input gradient (a convolution of dy with the same weight).
func convTransposeBackwardTraining(_ dy: UnsafePointer<Float>, dyBatchStride: Int? = nil, x: UnsafePointer<Float>,
                                   batch: Int, geometry g: ConvGeometry, weight: UnsafePointer<Float>,
                                   dWeight: UnsafeMutablePointer<Float>, dBias: UnsafeMutablePointer<Float>,
                                   dx: UnsafeMutablePointer<Float>?, workspace: Workspace) throws {
    let adj = adjointGeometry(g)
    let kk = g.outChannels * g.kernel * g.kernel, n = g.height * g.width
    let outPlane = g.outChannels * adj.height * adj.width
    let dyStride = dyBatchStride ?? outPlane
    let mark = workspace.mark()
    defer { workspace.release(to: mark) }
    biasGradientAdd(dy, batch: batch, channels: g.outChannels, spatial: adj.height * adj.width,
                    batchStride: dyStride, db: dBias)
    // dW [Cin, Cout·k·k] += Σ_b x_b [Cin, n] · im2col(dy_b)ᵀ [n, Cout·k·k]
    try windowWeightGradient(x, rowCount: g.inChannels, rowsBatchStride: g.inChannels * n, windowed: dy,
                             windowedBatchStride: dyStride, batch: batch, geometry: adj, dWeight: dWeight,
                             workspace: workspace)
    guard let dx = dx else { return }
    // dx = conv(dy, weight) with weight [Cin, Cout, k, k] read as a [out = Cin, in = Cout] kernel.
    var dyDense = dy
    if dyStride != outPlane {
        let copy = try workspace.floats(batch * outPlane)
        for b in 0..<batch { (copy + b * outPlane).update(from: dy + b * dyStride, count: outPlane) }
        dyDense = UnsafePointer(copy)
    }
    let w = PackedMatrix(rows: g.inChannels, cols: kk, source: weight, rowStride: kk, colStride: 1,
                         buffer: try workspace.floats(PackedMatrix.floatCount(rows: g.inChannels, cols: kk)))
    try conv2dForward(dyDense, batch: batch, geometry: adj, weights: w, bias: try zeroBias(g.inChannels, workspace),
                      biasBatchStride: 0, y: dx, accumulate: false, workspace: workspace)
}

/// The weight gradient of a 3×3, stride-1, padding-1 convolution, computed directly
/// (no im2col): dy [B, Cout, H, W], x [B, Cin, H, W] → dWeight [Cout, Cin, 3, 3] +=
///     dW[co, ci, ky, kx] = Σ_b Σ_(oy, ox) dy[b, co, oy, ox] · x[b, ci, oy + ky - 1, ox + kx - 1].
///
/// Vectorised along output rows, 16 positions per vector: one task holds two output
/// channels × the nine taps of one input channel in 18 accumulators over every image and
/// pair of rows (reading x through a copy with a zero border), then adds each accumulator's lanes
/// in a fixed order. A task's sums do not depend on which thread runs it, so the gradient
/// is the same bit for bit on any thread count. Its plain twin is `convBackwardNaive`.
func conv3x3WeightGradient(_ dy: UnsafePointer<Float>, x: UnsafePointer<Float>, batch: Int, inChannels: Int,
                           outChannels: Int, height: Int, width: Int, dWeight: UnsafeMutablePointer<Float>,
                           workspace: Workspace) throws {
    if batch == 0 || height == 0 || width == 0 { return }
    if width <= 8 {
        try conv3x3WeightGradientNarrow(dy, x: x, batch: batch, inChannels: inChannels, outChannels: outChannels,
                                        height: height, width: width, dWeight: dWeight, workspace: workspace)
        return
    }
    let pitch = width + 2, plane = (height + 2) * pitch, spatial = height * width
    let mark = workspace.mark()
    defer { workspace.release(to: mark) }
    // x [B, Cin, H+2, W+2] with a zero border, and a zero row of slack for the reach of the
    // last row pair and vector.
    let slack = pitch + 32
    let padded = try workspace.floats(batch * inChannels * plane + slack)
    ThreadPool.shared.parallelFor(batch * inChannels) { i in
        let dst = padded + i * plane, src = x + i * spatial
        dst.update(repeating: 0, count: pitch)
        for y in 0..<height {
            let row = dst + (y + 1) * pitch
            row[0] = 0
            (row + 1).update(from: src + y * width, count: width)
            row[width + 1] = 0
        }
        (dst + (height + 1) * pitch).update(repeating: 0, count: pitch)
    }
    (padded + batch * inChannels * plane).update(repeating: 0, count: slack)
    // dy [B, Cout, H, 16·vectors]: rows padded with zeros to whole vectors, so that lanes
    // past the row end add nothing (and every load is a whole vector).
    let vectors = (width + 15) / 16, dyPitch = vectors * 16, dyPlane = height * dyPitch
    let dyPadded = try workspace.floats(batch * outChannels * dyPlane)
    ThreadPool.shared.parallelFor(batch * outChannels) { i in
        let dst = dyPadded + i * dyPlane, src = dy + i * spatial
        for y in 0..<height {
            (dst + y * dyPitch).update(from: src + y * width, count: width)
            (dst + y * dyPitch + width).update(repeating: 0, count: dyPitch - width)
        }
    }
    // The missing second channel of an odd last pair reads zeros.
    let zeroRow = try workspace.floats(dyPitch)
    zeroRow.update(repeating: 0, count: dyPitch)
    ThreadPool.shared.parallelFor(((outChannels + 1) / 2) * inChannels) { task in
        let co = (task / inChannels) * 2, ci = task % inChannels
        let second = co + 1 < outChannels
        var a00 = Vec16(), a01 = Vec16(), a02 = Vec16(), a03 = Vec16(), a04 = Vec16(), a05 = Vec16(), a06 = Vec16(), a07 = Vec16(), a08 = Vec16()
        var a10 = Vec16(), a11 = Vec16(), a12 = Vec16(), a13 = Vec16(), a14 = Vec16(), a15 = Vec16(), a16 = Vec16(), a17 = Vec16(), a18 = Vec16()
        for b in 0..<batch {
            let dy0 = UnsafePointer(dyPadded + (b * outChannels + co) * dyPlane)
            let dy1 = second ? dy0 + dyPlane : UnsafePointer(zeroRow)
            let dy1Row = second ? dyPitch : 0
            let xp = padded + (b * inChannels + ci) * plane
            // Two output rows at a time: padded rows oy..<oy+4 feed taps ky of row oy (q = ky)
            // and of row oy + 1 (q = ky + 1), so each x vector loaded serves up to four sums.
            // An odd last row pairs with a zero row of dy.
            for oy in stride(from: 0, to: height, by: 2) {
                let r0 = UnsafePointer(xp + oy * pitch), r1 = r0 + pitch, r2 = r1 + pitch, r3 = r2 + pitch
                let last = oy + 1 == height
                let row00 = dy0 + oy * dyPitch, row10 = dy1 + oy * dy1Row
                let row01 = last ? UnsafePointer(zeroRow) : row00 + dyPitch
                let row11 = last ? UnsafePointer(zeroRow) : row10 + dy1Row
                for v in 0..<vectors {
                    let o = v * 16
                    let d00 = load16(row00 + o), d10 = load16(row10 + o)
                    let d01 = load16(row01 + o), d11 = load16(row11 + o)
                    var xv: Vec16
                    xv = load16(r0 + o + 0); a00.addProduct(d00, xv); a10.addProduct(d10, xv)
                    xv = load16(r0 + o + 1); a01.addProduct(d00, xv); a11.addProduct(d10, xv)
                    xv = load16(r0 + o + 2); a02.addProduct(d00, xv); a12.addProduct(d10, xv)
                    xv = load16(r1 + o + 0); a03.addProduct(d00, xv); a13.addProduct(d10, xv); a00.addProduct(d01, xv); a10.addProduct(d11, xv)
                    xv = load16(r1 + o + 1); a04.addProduct(d00, xv); a14.addProduct(d10, xv); a01.addProduct(d01, xv); a11.addProduct(d11, xv)
                    xv = load16(r1 + o + 2); a05.addProduct(d00, xv); a15.addProduct(d10, xv); a02.addProduct(d01, xv); a12.addProduct(d11, xv)
                    xv = load16(r2 + o + 0); a06.addProduct(d00, xv); a16.addProduct(d10, xv); a03.addProduct(d01, xv); a13.addProduct(d11, xv)
                    xv = load16(r2 + o + 1); a07.addProduct(d00, xv); a17.addProduct(d10, xv); a04.addProduct(d01, xv); a14.addProduct(d11, xv)
                    xv = load16(r2 + o + 2); a08.addProduct(d00, xv); a18.addProduct(d10, xv); a05.addProduct(d01, xv); a15.addProduct(d11, xv)
                    xv = load16(r3 + o + 0); a06.addProduct(d01, xv); a16.addProduct(d11, xv)
                    xv = load16(r3 + o + 1); a07.addProduct(d01, xv); a17.addProduct(d11, xv)
                    xv = load16(r3 + o + 2); a08.addProduct(d01, xv); a18.addProduct(d11, xv)
                }
            }
        }
        addTapSums(dWeight + (co * inChannels + ci) * 9, a00, a01, a02, a03, a04, a05, a06, a07, a08)
        if second {
            addTapSums(dWeight + ((co + 1) * inChannels + ci) * 9, a10, a11, a12, a13, a14, a15, a16, a17, a18)
        }
    }
}

/// row[t] += the lanes of the t-th sum added as a tree, for the nine taps of one kernel.
@inline(__always)
private func addTapSums(_ row: UnsafeMutablePointer<Float>, _ s0: Vec16, _ s1: Vec16, _ s2: Vec16, _ s3: Vec16,
                        _ s4: Vec16, _ s5: Vec16, _ s6: Vec16, _ s7: Vec16, _ s8: Vec16) {
    row[0] += horizontalSum(s0)
    row[1] += horizontalSum(s1)
    row[2] += horizontalSum(s2)
    row[3] += horizontalSum(s3)
    row[4] += horizontalSum(s4)
    row[5] += horizontalSum(s5)
    row[6] += horizontalSum(s6)
    row[7] += horizontalSum(s7)
    row[8] += horizontalSum(s8)
}

/// `conv3x3WeightGradient` for images at most 8 pixels wide, where a vector along one row
/// would leave half its lanes or more empty: a plane's positions are taken 16 at a time in
/// row-major order (two rows or more per vector). x is read through a copy with
/// zeros above and below each plane, at offsets (ky - 1)·W + (kx - 1) from the output
/// position; the taps that would cross the left or right edge read the neighbouring row,
/// so dy is masked to zero at those lanes (column 0 for kx = 0, column W - 1 for kx = 2).
/// As in the wide kernel, each task's sums cover every image and no sum is split.
private func conv3x3WeightGradientNarrow(_ dy: UnsafePointer<Float>, x: UnsafePointer<Float>, batch: Int,
                                         inChannels: Int, outChannels: Int, height: Int, width: Int,
                                         dWeight: UnsafeMutablePointer<Float>, workspace: Workspace) throws {
    let spatial = height * width
    let vectors = (spatial + 15) / 16, dyPitch = vectors * 16
    // Zeros before a plane: the row above it and one more (kx = 0 at the first pixel); after
    // it: the rest of the last vector, the row below and one more.
    let lead = width + 1, xPitch = lead + dyPitch + width + 1
    let mark = workspace.mark()
    defer { workspace.release(to: mark) }
    let xPadded = try workspace.floats(batch * inChannels * xPitch)
    ThreadPool.shared.parallelFor(batch * inChannels) { i in
        let dst = xPadded + i * xPitch
        dst.update(repeating: 0, count: lead)
        (dst + lead).update(from: x + i * spatial, count: spatial)
        (dst + lead + spatial).update(repeating: 0, count: xPitch - lead - spatial)
    }
    let dyPadded = try workspace.floats(batch * outChannels * dyPitch + dyPitch)
    ThreadPool.shared.parallelFor(batch * outChannels) { i in
        let dst = dyPadded + i * dyPitch
        dst.update(from: dy + i * spatial, count: spatial)
        (dst + spatial).update(repeating: 0, count: dyPitch - spatial)
    }
    // The missing second channel of an odd last pair reads zeros.
    let zeroPlane = dyPadded + batch * outChannels * dyPitch
    zeroPlane.update(repeating: 0, count: dyPitch)
    // Lanes at column 0 and at column W - 1, per vector of a plane.
    // (Raw buffers: reading Swift arrays inside the tasks retains and releases them per read.)
    let leftEdge = UnsafeMutablePointer<SIMDMask<SIMD16<Int32>>>.allocate(capacity: vectors)
    let rightEdge = UnsafeMutablePointer<SIMDMask<SIMD16<Int32>>>.allocate(capacity: vectors)
    defer {
        leftEdge.deallocate()
        rightEdge.deallocate()
    }
    for v in 0..<vectors {
        let column = (SIMD16<Int32>(repeating: Int32(v * 16)) &+ laneIndices16) % Int32(width)
        (leftEdge + v).initialize(to: column .== 0)
        (rightEdge + v).initialize(to: column .== Int32(width - 1))
    }
    ThreadPool.shared.parallelFor(((outChannels + 1) / 2) * inChannels) { task in
        let co = (task / inChannels) * 2, ci = task % inChannels
        let second = co + 1 < outChannels
        var a00 = Vec16(), a01 = Vec16(), a02 = Vec16(), a03 = Vec16(), a04 = Vec16(), a05 = Vec16(), a06 = Vec16(), a07 = Vec16(), a08 = Vec16()
        var a10 = Vec16(), a11 = Vec16(), a12 = Vec16(), a13 = Vec16(), a14 = Vec16(), a15 = Vec16(), a16 = Vec16(), a17 = Vec16(), a18 = Vec16()
        for b in 0..<batch {
            let dy0 = UnsafePointer(dyPadded + (b * outChannels + co) * dyPitch)
            let dy1 = second ? dy0 + dyPitch : UnsafePointer(zeroPlane)
            let xp = UnsafePointer(xPadded + (b * inChannels + ci) * xPitch + lead)
            for v in 0..<vectors {
                let p = v * 16
                let d0 = load16(dy0 + p), d1 = load16(dy1 + p)
                let d0L = d0.replacing(with: 0, where: leftEdge[v]), d1L = d1.replacing(with: 0, where: leftEdge[v])
                let d0R = d0.replacing(with: 0, where: rightEdge[v]), d1R = d1.replacing(with: 0, where: rightEdge[v])
                var xv: Vec16
                let x0 = xp + p + -1 * width
                xv = load16(x0 - 1); a00.addProduct(d0L, xv); a10.addProduct(d1L, xv)
                xv = load16(x0); a01.addProduct(d0, xv); a11.addProduct(d1, xv)
                xv = load16(x0 + 1); a02.addProduct(d0R, xv); a12.addProduct(d1R, xv)
                let x1 = xp + p + 0 * width
                xv = load16(x1 - 1); a03.addProduct(d0L, xv); a13.addProduct(d1L, xv)
                xv = load16(x1); a04.addProduct(d0, xv); a14.addProduct(d1, xv)
                xv = load16(x1 + 1); a05.addProduct(d0R, xv); a15.addProduct(d1R, xv)
                let x2 = xp + p + 1 * width
                xv = load16(x2 - 1); a06.addProduct(d0L, xv); a16.addProduct(d1L, xv)
                xv = load16(x2); a07.addProduct(d0, xv); a17.addProduct(d1, xv)
                xv = load16(x2 + 1); a08.addProduct(d0R, xv); a18.addProduct(d1R, xv)
            }
        }
        addTapSums(dWeight + (co * inChannels + ci) * 9, a00, a01, a02, a03, a04, a05, a06, a07, a08)
        if second {
            addTapSums(dWeight + ((co + 1) * inChannels + ci) * 9, a10, a11, a12, a13, a14, a15, a16, a17, a18)
        }
    }
}

/// The weight gradient of a 1×1 convolution, directly: dy [B, Cout, n] (image b at
/// dy + b·dyBatchStride), x [B, Cin, n] → dWeight [Cout, Cin] += Σ_b dy_b · x_bᵀ.
/// A task holds a 4 × 4 block of dWeight in 16 SIMD16 sums over every image and position
/// (16 positions per vector, the last vector of a plane zero-filled past its end), then adds
/// each sum's lanes as a tree: no sum is split, so the same bits on any thread count.
/// Plain twin: `convBackwardNaive`.
func pointwiseWeightGradient(_ dy: UnsafePointer<Float>, dyBatchStride: Int? = nil, x: UnsafePointer<Float>,
                             batch: Int, inChannels: Int, outChannels: Int, spatial: Int,
                             dWeight: UnsafeMutablePointer<Float>, workspace: Workspace) throws {
    if batch == 0 || spatial == 0 { return }
    let dyStride = dyBatchStride ?? outChannels * spatial
    let mark = workspace.mark()
    defer { workspace.release(to: mark) }
    // Rows past the last channel of a block read zeros.
    let zeros = try workspace.floats(spatial)
    zeros.update(repeating: 0, count: spatial)
    let whole = spatial / 16 * 16, tail = spatial - whole
    let ciBlocks = (inChannels + 3) / 4
    ThreadPool.shared.parallelFor(((outChannels + 3) / 4) * ciBlocks) { task in
        let co0 = (task / ciBlocks) * 4, ci0 = (task % ciBlocks) * 4
        var a00 = Vec16(), a01 = Vec16(), a02 = Vec16(), a03 = Vec16()
        var a10 = Vec16(), a11 = Vec16(), a12 = Vec16(), a13 = Vec16()
        var a20 = Vec16(), a21 = Vec16(), a22 = Vec16(), a23 = Vec16()
        var a30 = Vec16(), a31 = Vec16(), a32 = Vec16(), a33 = Vec16()
        for b in 0..<batch {
            let dy0 = co0 + 0 < outChannels ? dy + b * dyStride + (co0 + 0) * spatial : UnsafePointer(zeros)
            let dy1 = co0 + 1 < outChannels ? dy + b * dyStride + (co0 + 1) * spatial : UnsafePointer(zeros)
            let dy2 = co0 + 2 < outChannels ? dy + b * dyStride + (co0 + 2) * spatial : UnsafePointer(zeros)
            let dy3 = co0 + 3 < outChannels ? dy + b * dyStride + (co0 + 3) * spatial : UnsafePointer(zeros)
            let x0 = ci0 + 0 < inChannels ? x + (b * inChannels + ci0 + 0) * spatial : UnsafePointer(zeros)
            let x1 = ci0 + 1 < inChannels ? x + (b * inChannels + ci0 + 1) * spatial : UnsafePointer(zeros)
            let x2 = ci0 + 2 < inChannels ? x + (b * inChannels + ci0 + 2) * spatial : UnsafePointer(zeros)
            let x3 = ci0 + 3 < inChannels ? x + (b * inChannels + ci0 + 3) * spatial : UnsafePointer(zeros)
            @inline(__always) func step(_ p: Int, _ load: (UnsafePointer<Float>) -> Vec16) {
                let d0 = load(dy0 + p), d1 = load(dy1 + p), d2 = load(dy2 + p), d3 = load(dy3 + p)
                    let x0 = load(x0 + p), x1 = load(x1 + p), x2 = load(x2 + p), x3 = load(x3 + p)
                    a00.addProduct(d0, x0); a01.addProduct(d0, x1); a02.addProduct(d0, x2); a03.addProduct(d0, x3)
                    a10.addProduct(d1, x0); a11.addProduct(d1, x1); a12.addProduct(d1, x2); a13.addProduct(d1, x3)
                    a20.addProduct(d2, x0); a21.addProduct(d2, x1); a22.addProduct(d2, x2); a23.addProduct(d2, x3)
                    a30.addProduct(d3, x0); a31.addProduct(d3, x1); a32.addProduct(d3, x2); a33.addProduct(d3, x3)
            }
            var p = 0
            while p < whole {
                step(p) { load16($0) }
                p += 16
            }
            if tail > 0 { step(whole) { loadPrefix16($0, count: tail) } }
        }
        // dW[co0 + r, ci0 + c] += the lanes of sum (r, c) added as a tree, inside the matrix only.
        @inline(__always) func addRow(_ r: Int, _ s0: Vec16, _ s1: Vec16, _ s2: Vec16, _ s3: Vec16) {
            if co0 + r >= outChannels { return }
            let row = dWeight + (co0 + r) * inChannels + ci0
            if ci0 + 0 < inChannels { row[0] += horizontalSum(s0) }
            if ci0 + 1 < inChannels { row[1] += horizontalSum(s1) }
            if ci0 + 2 < inChannels { row[2] += horizontalSum(s2) }
            if ci0 + 3 < inChannels { row[3] += horizontalSum(s3) }
        }
        addRow(0, a00, a01, a02, a03)
        addRow(1, a10, a11, a12, a13)
        addRow(2, a20, a21, a22, a23)
        addRow(3, a30, a31, a32, a33)
    }
}

/// The plain twin of `convBackwardTraining` (direct loops over every tap): dWeight +=,
/// dBias +=, dx = the input gradient.
func convBackwardNaive(_ dy: UnsafePointer<Float>, x: UnsafePointer<Float>, batch: Int, geometry g: ConvGeometry,
                       weight w: UnsafePointer<Float>, dWeight: UnsafeMutablePointer<Float>,
                       dBias: UnsafeMutablePointer<Float>, dx: UnsafeMutablePointer<Float>) {
    let ho = g.outHeight, wo = g.outWidth, k = g.kernel
    dx.update(repeating: 0, count: batch * g.inChannels * g.height * g.width)
    for b in 0..<batch {
        for co in 0..<g.outChannels {
            for oy in 0..<ho {
                for ox in 0..<wo {
                    let d = dy[((b * g.outChannels + co) * ho + oy) * wo + ox]
                    dBias[co] += d
                    for ci in 0..<g.inChannels {
                        for ky in 0..<k {
                            let iy = oy * g.stride - g.padding + ky
                            if iy < 0 || iy >= g.height { continue }
                            for kx in 0..<k {
                                let ix = ox * g.stride - g.padding + kx
                                if ix < 0 || ix >= g.width { continue }
                                let wi = ((co * g.inChannels + ci) * k + ky) * k + kx
                                let xi = ((b * g.inChannels + ci) * g.height + iy) * g.width + ix
                                dWeight[wi] += d * x[xi]
                                dx[xi] += d * w[wi]
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The plain twin of `convTransposeBackwardTraining`: dWeight +=, dBias +=, dx = the input gradient.
func convTransposeBackwardNaive(_ dy: UnsafePointer<Float>, x: UnsafePointer<Float>, batch: Int,
                                geometry g: ConvGeometry, weight w: UnsafePointer<Float>,
                                dWeight: UnsafeMutablePointer<Float>, dBias: UnsafeMutablePointer<Float>,
                                dx: UnsafeMutablePointer<Float>) {
    let ho = g.transposedHeight, wo = g.transposedWidth, k = g.kernel
    dx.update(repeating: 0, count: batch * g.inChannels * g.height * g.width)
    for b in 0..<batch {
        for co in 0..<g.outChannels {
            for oy in 0..<ho {
                for ox in 0..<wo {
                    let d = dy[((b * g.outChannels + co) * ho + oy) * wo + ox]
                    dBias[co] += d
                    for ci in 0..<g.inChannels {
                        for ky in 0..<k {
                            let ny = oy + g.padding - ky
                            if ny < 0 || ny % g.stride != 0 || ny / g.stride >= g.height { continue }
                            for kx in 0..<k {
                                let nx = ox + g.padding - kx
                                if nx < 0 || nx % g.stride != 0 || nx / g.stride >= g.width { continue }
                                let wi = ((ci * g.outChannels + co) * k + ky) * k + kx
                                let xi = ((b * g.inChannels + ci) * g.height + ny / g.stride) * g.width + nx / g.stride
                                dWeight[wi] += d * x[xi]
                                dx[xi] += d * w[wi]
                            }
                        }
                    }
                }
            }
        }
    }
}
