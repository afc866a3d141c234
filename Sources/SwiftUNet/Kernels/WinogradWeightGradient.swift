/// The weight gradient of a 3×3, stride-1, padding-1 convolution by Winograd F(m×m, 3×3),
/// the forward's algorithm differentiated with respect to the kernel.
///
/// A forward tile is Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A (`winogradConv3x3`). Y is linear in
/// each of the α² products, so the tile's share of the kernel gradient is
///     dW = Gᵀ [ (A dY Aᵀ) ⊙ (Bᵀ d B) ] G,
/// with dY the tile's m×m output gradient (zero past the image) and d its α×α input tile.
/// Summed over every tile of the batch, each position ξ is one matrix product,
///     M_ξ [Cout, Cin] = U_ξ [Cout, tiles] · V_ξ [tiles, Cin],   U = A dY Aᵀ, V = Bᵀ d B,
/// and dW[co, ci] = Gᵀ M[co, ci] G. Per tile and channel pair that is α² multiplies
/// instead of 9·m² (F(4×4): 36 against 144).
///
/// The transforms run 16 channels per vector on channel-last copies of x and dy, and
/// write U and V straight into the GEMM's packed layouts (U as 8-row A panels, V as
/// 32-column B panels), so the products are the inference micro-kernels over k = tiles.
///
/// Order of the sums, the same on every kernel variant and thread count: each M element is
/// two chains of fused multiply-adds (the micro-kernels' contract, continued across groups
/// of tiles), one over each half of the tiles in batch order, then added; Gᵀ M G goes rows
/// first, each sum over α in order, and is then added to dW. Its plain twin is
/// `convBackwardNaive`.
///
///     dy [B, Cout, H, W], x [B, Cin, H, W] → dWeight [Cout, Cin, 3, 3] +=
func winogradWeightGradient3x3(_ dy: UnsafePointer<Float>, x: UnsafePointer<Float>, batch: Int, inChannels cin: Int,
                               outChannels cout: Int, height h: Int, width w: Int, tile: WinogradTile,
                               dWeight: UnsafeMutablePointer<Float>, splitTiles: Bool = true,
                               workspace: Workspace) throws {
    if batch == 0 || h == 0 || w == 0 || cin == 0 || cout == 0 { return }
    let mTile = tile.rawValue, alpha = tile.alpha, positions = tile.positions
    let tilesHigh = (h + mTile - 1) / mTile, tilesWide = (w + mTile - 1) / mTile
    let perImage = tilesHigh * tilesWide, tiles = batch * perImage
    let pool = ThreadPool.shared
    let mark = workspace.mark()
    defer { workspace.release(to: mark) }
    // Channel-last copies: x [B, m·tilesHigh + 2, m·tilesWide + 2, Cin → 32k] with its one-pixel
    // zero border, dy [B, m·tilesHigh, m·tilesWide, Cout → 16k]; zeros past the image and past
    // the last channel, so whole vectors and panels read zeros there.
    let xPitch = (cin + 31) / 32 * 32, dyPitch = (cout + 15) / 16 * 16
    let xRows = mTile * tilesHigh + 2, xCols = mTile * tilesWide + 2
    let dyRows = mTile * tilesHigh, dyCols = mTile * tilesWide
    let xLast = try workspace.floats(batch * xRows * xCols * xPitch)
    let dyLast = try workspace.floats(batch * dyRows * dyCols * dyPitch)
    channelsLast(x, batch: batch, channels: cin, height: h, width: w, into: xLast, rows: xRows, columns: xCols,
                 pitch: xPitch, border: 1)
    channelsLast(dy, batch: batch, channels: cout, height: h, width: w, into: dyLast, rows: dyRows, columns: dyCols,
                 pitch: dyPitch, border: 0)
    // The tiles are split into two halves (one when there are few), each summed into its own
    // M as one task, so that two threads each keep their work in their own core's cache; the
    // halves' M are added at the end. The split depends on the tile count only, never on the
    // thread count. Within a half, the tiles go in groups whose U and V stay in L2 (about
    // 512 KiB): each group is transformed, then multiplied into the half's M, continuing the
    // sums of the groups before it (the same chains as one pass, so the group size changes no bit).
    let chunkTiles = 8, splitHalfTiles = 128
    let halves = splitTiles && tiles >= 2 * splitHalfTiles ? 2 : 1
    let firstHalf = halves == 2 ? (tiles / 2 + chunkTiles - 1) / chunkTiles * chunkTiles : tiles
    let bytesPerTile = positions * (xPitch + dyPitch) * MemoryLayout<Float>.stride
    let groupTiles = min(gemmDepthBlock, max(2 * chunkTiles, (512 * 1024 / bytesPerTile) / chunkTiles * chunkTiles))
    // Per half: U_ξ, Cout/8 A panels [group][8]; V_ξ, Cin/32 B panels [group][32]; positions
    // 16 floats past a multiple of 4 KiB apart (as the forward's `winogradVPlane`), so a tile's
    // α² stores do not all fall in one L1 set. Then the transforms' block [α²][8 tiles + 1].
    let uStride = dyPitch * groupTiles + 16, vStride = xPitch * groupTiles + 16
    let blockVectors = positions * (chunkTiles + 1)
    let halfFloats = positions * (uStride + vStride) + blockVectors * 16
    // (One set per half; with one chain, U and V of the first set and a block per thread.)
    let threads = pool.threadsFor(Int.max)
    let halfBuffers = try workspace.floats(max(halves, threads) * halfFloats)
    // M_ξ [Cout rows (whole panels), 32] per B panel, per half.
    let uPanels = (cout + 7) / 8, vPanels = xPitch / 32
    let productRows = uPanels * gemmRowBlock
    let productFloats = positions * vPanels * productRows * gemmColumnBlock
    let products = try workspace.floats(halves * productFloats)
    let xGroups = xPitch / 16, dyGroups = dyPitch / 16
    // One item of a group's transforms: 8 tiles (from t0 on) × 16 channels of x or of dy
    // (`group`), into the block [α²][8 tiles], then each position's run written out at once
    // (tile by tile, a tile's α² stores went to α² pages and missed the TLB).
    let transformItem = { (g0: Int, groupCount: Int, item: Int, u: UnsafeMutablePointer<Float>,
                           v: UnsafeMutablePointer<Float>, scratch: UnsafeMutablePointer<Vec16>) in
        let staged = scratch + positions
        let t0 = (item / (xGroups + dyGroups)) * chunkTiles, group = item % (xGroups + dyGroups)
        let count = min(chunkTiles, groupCount - t0)
        let isInput = group < xGroups
        let c0 = (isInput ? group : group - xGroups) * 16
        for i in 0..<count {
            let t = g0 + t0 + i
            let b = t / perImage, n = t % perImage, ty = n / tilesWide, tx = n % tilesWide
            let out = staged + i
            if isInput {
                // Every lane of the B panels, the padding channels' zeros included.
                let window = UnsafePointer(xLast + ((b * xRows + mTile * ty) * xCols + mTile * tx) * xPitch + c0)
                // (A branch per tile size, so that each call inlines its transform.)
                if tile == .two {
                    tileTransform(window, rowStep: xCols * xPitch, columnStep: xPitch, rows: 4, alpha: 4,
                                  block: scratch, out: out, outStep: chunkTiles, transform: winogradInput2)
                } else {
                    tileTransform(window, rowStep: xCols * xPitch, columnStep: xPitch, rows: 6, alpha: 6,
                                  block: scratch, out: out, outStep: chunkTiles, transform: winogradInput4)
                }
            } else {
                let window = UnsafePointer(dyLast + ((b * dyRows + mTile * ty) * dyCols + mTile * tx) * dyPitch + c0)
                if tile == .two {
                    tileTransform(window, rowStep: dyCols * dyPitch, columnStep: dyPitch, rows: 2, alpha: 4,
                                  block: scratch, out: out, outStep: chunkTiles, transform: winogradGradientLift2)
                } else {
                    tileTransform(window, rowStep: dyCols * dyPitch, columnStep: dyPitch, rows: 4, alpha: 6,
                                  block: scratch, out: out, outStep: chunkTiles, transform: winogradGradientLift4)
                }
            }
        }
        if isInput {
            // V_ξ's B panel c0 / 32, rows t0 ..< t0 + count, lanes c0 % 32 ..< + 16.
            let dst = v + ((c0 / 32) * groupTiles + t0) * gemmColumnBlock + c0 % 32
            for xi in 0..<positions {
                let run = dst + xi * vStride, from = staged + xi * chunkTiles
                for i in 0..<count { store16(from[i], run + i * gemmColumnBlock) }
            }
        } else {
            // Channels c0 ..< c0 + 8 and c0 + 8 ..< c0 + 16 are two A panels.
            let low = UnsafeMutableRawPointer(u + ((c0 / 8) * groupTiles + t0) * gemmRowBlock)
            let high = low + groupTiles * gemmRowBlock * MemoryLayout<Float>.stride
            let rowBytes = gemmRowBlock * MemoryLayout<Float>.stride
            for xi in 0..<positions {
                let offset = xi * uStride * MemoryLayout<Float>.stride, from = staged + xi * chunkTiles
                for i in 0..<count {
                    (low + offset + i * rowBytes).storeBytes(of: from[i].lowHalf, as: SIMD8<Float>.self)
                    (high + offset + i * rowBytes).storeBytes(of: from[i].highHalf, as: SIMD8<Float>.self)
                }
            }
        }
    }
    // One item of a group's products, (ξ, B panel): M_ξ += U_ξ · V_ξ over the group's tiles,
    // every A panel over the B panel (the first group of a chain starts the sums).
    let productItem = { (g0: Int, groupCount: Int, chainStart: Bool, item: Int, u: UnsafePointer<Float>,
                         v: UnsafePointer<Float>, m: UnsafeMutablePointer<Float>) in
        let xi = item / vPanels, panel = item % vPanels
        let aPanels = u + xi * uStride
        let c = m + item * productRows * gemmColumnBlock
        let bPanel = v + xi * vStride + panel * groupTiles * gemmColumnBlock
        for p in 0..<uPanels {
            microKernel8x32(groupCount, aPanels + p * groupTiles * gemmRowBlock, bPanel,
                            c + p * gemmRowBlock * gemmColumnBlock, gemmColumnBlock,
                            start: chainStart ? .zero : .current)
        }
    }
    let scratchAt = { (index: Int) -> (UnsafeMutablePointer<Float>, UnsafeMutablePointer<Float>, UnsafeMutablePointer<Vec16>) in
        let buffers = halfBuffers + index * halfFloats
        let v = buffers + positions * uStride
        return (buffers, v, UnsafeMutableRawPointer(v + positions * vStride).bindMemory(to: Vec16.self,
                                                                                        capacity: blockVectors))
    }
    if halves == 2 {
        // Each half is one task, its groups one after another.
        pool.parallelFor(2, maxThreads: pool.threadsFor(2)) { half, _ in
            let (u, v, scratch) = scratchAt(half)
            let (begin, end) = half == 0 ? (0, firstHalf) : (firstHalf, tiles)
            for g0 in stride(from: begin, to: end, by: groupTiles) {
                let groupCount = min(groupTiles, end - g0)
                let items = ((groupCount + chunkTiles - 1) / chunkTiles) * (xGroups + dyGroups)
                for item in 0..<items { transformItem(g0, groupCount, item, u, v, scratch) }
                for item in 0..<(positions * vPanels) {
                    productItem(g0, groupCount, g0 == begin, item, u, v, products + half * productFloats)
                }
            }
        }
    } else {
        // One chain: each group's transforms, then its products, shared out over the threads.
        let (u, v, _) = scratchAt(0)
        for g0 in stride(from: 0, to: tiles, by: groupTiles) {
            let groupCount = min(groupTiles, tiles - g0)
            let items = ((groupCount + chunkTiles - 1) / chunkTiles) * (xGroups + dyGroups)
            pool.parallelFor(items, maxThreads: min(threads, items)) { item, thread in
                transformItem(g0, groupCount, item, u, v, scratchAt(thread).2)
            }
            pool.parallelFor(positions * vPanels) { item in productItem(g0, groupCount, g0 == 0, item, u, v, products) }
        }
    }
    // dW[co, ci] += Gᵀ M G, 16 input channels at a time: rows first (α² → 3·α), then columns.
    let g = winogradG(tile).flatMap { $0.map { Float($0) } }
    let gTable = try workspace.floats(alpha * 3)
    for i in 0..<(alpha * 3) { gTable[i] = g[i] }
    let outputThreads = pool.threadsFor(cout)
    let scratchVectors = positions + 3 * alpha + 9
    let scratch = try workspace.floats(outputThreads * scratchVectors * 16)
    let positionStep = vPanels * productRows * gemmColumnBlock
    pool.parallelFor(cout, maxThreads: outputThreads) { co, thread in
        let summed = UnsafeMutableRawPointer(scratch + thread * scratchVectors * 16)
            .bindMemory(to: Vec16.self, capacity: scratchVectors)
        let rows = summed + positions, kernel = rows + 3 * alpha
        for c0 in stride(from: 0, to: cin, by: 16) {
            // Position ξ of (co, c0 ..< c0 + 16) in M, the first half's plus the second's, each
            // read once into `summed` (the positions lie a multiple of 4 KiB apart).
            let first = UnsafePointer(products + ((c0 / 32) * productRows + co) * gemmColumnBlock + c0 % 32)
            for xi in 0..<positions {
                let p = first + xi * positionStep
                summed[xi] = halves == 2 ? load16(p) + load16(p + productFloats) : load16(p)
            }
            for ky in 0..<3 {
                for c in 0..<alpha {
                    var sum = Vec16()
                    for r in 0..<alpha { sum += gTable[r * 3 + ky] * summed[r * alpha + c] }
                    rows[ky * alpha + c] = sum
                }
            }
            for ky in 0..<3 {
                for kx in 0..<3 {
                    var sum = Vec16()
                    for c in 0..<alpha { sum += gTable[c * 3 + kx] * rows[ky * alpha + c] }
                    kernel[ky * 3 + kx] = sum
                }
            }
            let out = dWeight + (co * cin + c0) * 9
            for lane in 0..<min(16, cin - c0) {
                for tap in 0..<9 { out[lane * 9 + tap] += kernel[tap][lane] }
            }
        }
    }
}

/// x [B, C, H, W] (image b at x + b·imageStride, C·H·W when not given) → dst [B, rows,
/// columns, pitch] with pixel (y, x) at row y + border, column x + border, and zeros
/// everywhere else (the border, past the image, channels C ..< pitch). Parallel over rows
/// of the batch.
func channelsLast(_ x: UnsafePointer<Float>, imageStride: Int? = nil, batch: Int, channels: Int, height h: Int,
                  width w: Int, into dst: UnsafeMutablePointer<Float>, rows: Int, columns: Int, pitch: Int,
                  border: Int) {
    let planeStride = h * w, imageFloats = imageStride ?? channels * planeStride
    // The end of the last image: a whole-vector load may not reach past it.
    let end = x + (batch - 1) * imageFloats + channels * planeStride
    ThreadPool.shared.parallelFor(batch * rows) { task in
        let b = task / rows, r = task % rows, iy = r - border
        let row = dst + task * columns * pitch
        if iy < 0 || iy >= h {
            row.update(repeating: 0, count: columns * pitch)
            return
        }
        // Zeros: the border pixels, the pixels past the image, the padding channels.
        row.update(repeating: 0, count: border * pitch)
        (row + (border + w) * pitch).update(repeating: 0, count: (columns - border - w) * pitch)
        if pitch > channels {
            for ix in 0..<w { (row + (border + ix) * pitch + channels).update(repeating: 0, count: pitch - channels) }
        }
        // 16 pixels × 16 channels at a time through a small block: one vector load per
        // channel, then the block read across. (Element by element, the loads of one pixel's
        // channels fell a plane apart, 4 KiB at 32×32, all in one L1 set, and missed.)
        let src = x + b * imageFloats + iy * w
        withUnsafeTemporaryAllocation(of: Vec16.self, capacity: 32) { buffer in
            let block = buffer.baseAddress!
            for x0 in stride(from: 0, to: w, by: 16) {
                let n = min(16, w - x0)
                let inside = laneIndices16 .< Int32(n)
                for c0 in stride(from: 0, to: channels, by: 16) {
                    let count = min(16, channels - c0)
                    for c in 0..<16 {
                        // A short row: a whole vector with the lanes past it zeroed (lane by lane
                        // is a chain of dependent inserts), unless it would read past x.
                        let p = src + (c0 + c) * planeStride + x0
                        // The rows of later tasks: these loads stream down 16 planes at once,
                        // further apart than the prefetchers look ahead.
                        if c < count && iy + 2 < h { prefetchForRead(p + 2 * w) }
                        block[c] = c >= count ? Vec16()
                            : n == 16 ? load16(p)
                            : p + 16 <= end ? load16(p).replacing(with: 0, where: .!inside) : loadPrefix16(p, count: n)
                    }
                    transpose16x16(block, scratch: block + 16)
                    for px in 0..<n {
                        let p = row + (x0 + px + border) * pitch + c0
                        if count == 16 { store16(block[px], p) } else { storePrefix16(block[px], p, count: count) }
                    }
                }
            }
        }
    }
}

/// Transposes the 16×16 block m (row i = m[i]) in place: four rounds of a perfect shuffle,
/// each taking the even lanes of rows 2i and 2i + 1 into row i and their odd lanes into row
/// 8 + i. A round moves element (row r, lane c) to (c₀r₃r₂r₁, r₀c₃c₂c₁), a rotation of the
/// eight index bits r₃r₂r₁r₀c₃c₂c₁c₀ by one; four rounds swap row and lane.
@inline(__always)
func transpose16x16(_ m: UnsafeMutablePointer<Vec16>, scratch: UnsafeMutablePointer<Vec16>) {
    var from = m, to = scratch
    for _ in 0..<4 {
        for i in 0..<8 {
            let a = from[2 * i], b = from[2 * i + 1]
            to[i] = Vec16(lowHalf: a.evenHalf, highHalf: b.evenHalf)
            to[8 + i] = Vec16(lowHalf: a.oddHalf, highHalf: b.oddHalf)
        }
        swap(&from, &to)
    }
}

/// The plain twin of `transpose16x16`: out[j][i] = m[i][j].
func transpose16x16Plain(_ m: [[Float]]) -> [[Float]] {
    (0..<16).map { j in (0..<16).map { i in m[i][j] } }
}

/// One tile's transform, 16 channels per vector: the `rows` × `rows` window (element (i, j)
/// at window + i·rowStep + j·columnStep) goes through `transform` along each row, then
/// along each column of the result, into the α × α positions ξ = α·row + column at
/// out[ξ·outStep] (`block`: the intermediate). Bᵀ d B of an input tile (rows = α, `transform`
/// Bᵀ) and A dY Aᵀ of an output-gradient tile (rows = m, `transform` A) are both this.
@inline(__always)
private func tileTransform(_ window: UnsafePointer<Float>, rowStep: Int, columnStep: Int, rows: Int, alpha: Int,
                           block: UnsafeMutablePointer<Vec16>, out: UnsafeMutablePointer<Vec16>, outStep: Int,
                           transform: ((Int) -> Vec16, (Int, Vec16) -> Void) -> Void) {
    for i in 0..<rows {
        transform({ load16(window + i * rowStep + $0 * columnStep) }, { block[i * alpha + $0] = $1 })
    }
    for j in 0..<alpha {
        transform({ block[$0 * alpha + j] }, { out[($0 * alpha + j) * outStep] = $1 })
    }
}

/// A applied to m = 2 values (the transpose of F(2×2)'s output transform Aᵀ):
/// (d0, d0 + d1, d0 - d1, -d1).
@inline(__always)
func winogradGradientLift2(_ d: (Int) -> Vec16, _ out: (Int, Vec16) -> Void) {
    let d0 = d(0), d1 = d(1)
    out(0, d0)
    out(1, d0 + d1)
    out(2, d0 - d1)
    out(3, -d1)
}

/// A applied to m = 4 values (F(4×4)'s Aᵀ read down its columns: the points 0, 1, -1, 2,
/// -2 and ∞).
@inline(__always)
func winogradGradientLift4(_ d: (Int) -> Vec16, _ out: (Int, Vec16) -> Void) {
    let d0 = d(0), d1 = d(1), d2 = d(2), d3 = d(3)
    let two: Float = 2, four: Float = 4, eight: Float = 8
    let even1 = d0 + d2, odd1 = d1 + d3
    let even2 = d0 + four * d2, odd2 = two * d1 + eight * d3
    out(0, d0)
    out(1, even1 + odd1)
    out(2, even1 - odd1)
    out(3, even2 + odd2)
    out(4, even2 - odd2)
    out(5, d3)
}
