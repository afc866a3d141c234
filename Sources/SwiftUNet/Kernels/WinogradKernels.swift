/// Winograd convolution F(m×m, 3×3) (Lavin & Gray 2016) for 3×3, stride 1, padding 1,
/// with output tiles m = 2 or m = 4 (input tiles α = m + 2).
///
/// Each m×m output tile comes from an α×α input tile d (rows m·ty-1 ..< m·ty+α-1, columns likewise):
///     Y = Aᵀ [ Σ_ci (G g Gᵀ)[co, ci] ⊙ (Bᵀ d_ci B) ] A
/// so a tile's 9·m² multiplies per channel pair become α² (F(2×2): 36 → 16,
/// F(4×4): 144 → 36), done as α² GEMMs U_ξ [Cout, Cin] · V_ξ [Cin, tiles].
///
/// Accuracy (measured by `testWinogradErrorAgainstFloat64`, 64→64 channels at 32×32,
/// max|err| / max|ref| against a float64 direct convolution): F(2×2) 2.4e-7 (its
/// transforms only add, subtract and halve: float32 rounding level, below the direct
/// float32 sum's 9.7e-7); F(4×4) 4.1e-6 (its transforms scale by up to 8 and 1/24).
/// Both sit far inside docs/model.md's 1e-4 bound, so no test tolerance was loosened.
///
/// Work is cut into tasks of 32 tiles (numbered across the batch): the input transform writes
/// V straight into the packed-B panel layout [Cin][32] the micro-kernel reads,
/// the α² products land in a per-thread buffer, and the output transform adds
/// bias (and the old y) and writes the m×m pixels. Tiles are fixed by the image
/// geometry and every lane's arithmetic is the same whatever kernel or task
/// computes it, so results depend on neither the batch nor the thread count.

/// Output tile size of a Winograd convolution: F(2×2, 3×3) or F(4×4, 3×3).
enum WinogradTile: Int {
    case two = 2
    case four = 4
    /// Input tile side α = m + 2.
    var alpha: Int { rawValue + 2 }
    /// Number of transformed positions ξ (α²), each one GEMM.
    var positions: Int { alpha * alpha }
}

/// The α² transformed weight matrices U_ξ = (G g Gᵀ)_ξ [Cout, Cin], ξ = α·row + column.
struct WinogradWeights {
    let tile: WinogradTile
    let positions: [PackedMatrix]
    var outChannels: Int { positions[0].rows }
    var inChannels: Int { positions[0].cols }
}

/// G of F(m×m, 3×3) [α, 3] (Lavin & Gray 2016).
func winogradG(_ tile: WinogradTile) -> [[Double]] {
    switch tile {
    case .two:
        return [[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]]
    case .four:
        return [[1.0 / 4, 0, 0], [-1.0 / 6, -1.0 / 6, -1.0 / 6], [-1.0 / 6, 1.0 / 6, -1.0 / 6],
                [1.0 / 24, 1.0 / 12, 1.0 / 6], [1.0 / 24, -1.0 / 12, 1.0 / 6], [0, 0, 1]]
    }
}

/// Transforms Conv2d weights [Cout, Cin, 3, 3] into `WinogradWeights` (in float64, rounded once).
func packWinogradWeights(_ w: UnsafePointer<Float>, inChannels: Int, outChannels: Int,
                         tile: WinogradTile = .two, store: WeightStore? = nil) throws -> WinogradWeights {
    let count = max(1, outChannels * inChannels)
    let transformed = try MappedFloats(tile.positions * count, "Winograd weights")
    defer { transformed.release() }
    let u = transformed.base
    winogradTransform3x3(w, inChannels: inChannels, outChannels: outChannels, tile: tile, into: u)
    var positions: [PackedMatrix] = []
    for xi in 0..<tile.positions {
        positions.append(try PackedMatrix(rows: outChannels, cols: inChannels, source: u + xi * count, ld: inChannels, store: store))
    }
    return WinogradWeights(tile: tile, positions: positions)
}

/// w [Cout, Cin, 3, 3] → u [α², Cout·Cin]: U_ξ = (G g Gᵀ)_ξ row-major [Cout, Cin] at
/// u + ξ·Cout·Cin, computed in float64 and rounded once.
func winogradTransform3x3(_ w: UnsafePointer<Float>, inChannels: Int, outChannels: Int, tile: WinogradTile,
                          into u: UnsafeMutablePointer<Float>) {
    let g = winogradG(tile), alpha = tile.alpha
    let count = max(1, outChannels * inChannels)
    var t = [[Double]](repeating: [0, 0, 0], count: alpha)
    for co in 0..<outChannels {
        for ci in 0..<inChannels {
            let k = w + (co * inChannels + ci) * 9
            // t = G · k [α, 3], then U = t · Gᵀ [α, α].
            for i in 0..<alpha {
                for j in 0..<3 {
                    t[i][j] = g[i][0] * Double(k[j]) + g[i][1] * Double(k[3 + j]) + g[i][2] * Double(k[6 + j])
                }
            }
            for i in 0..<alpha {
                for j in 0..<alpha {
                    let v = t[i][0] * g[j][0] + t[i][1] * g[j][1] + t[i][2] * g[j][2]
                    u[(i * alpha + j) * count + co * inChannels + ci] = Float(v)
                }
            }
        }
    }
}

/// Bᵀ of F(2×2, 3×3) applied to 4 vectors: reads d(0..<4), then writes out(0..<4). The
/// callers' closures place the vectors, so a pass can read from the planes or write to V.
@inline(__always)
func winogradInput2(_ d: (Int) -> Vec16, _ out: (Int, Vec16) -> Void) {
    let d0 = d(0), d1 = d(1), d2 = d(2), d3 = d(3)
    out(0, d0 - d2)
    out(1, d1 + d2)
    out(2, d2 - d1)
    out(3, d1 - d3)
}

/// Bᵀ of F(4×4, 3×3) applied to 6 vectors: reads d(0..<6), then writes out(0..<6).
@inline(__always)
func winogradInput4(_ d: (Int) -> Vec16, _ out: (Int, Vec16) -> Void) {
    let d0 = d(0), d1 = d(1), d2 = d(2), d3 = d(3), d4 = d(4), d5 = d(5)
    let four: Float = 4, five: Float = 5, two: Float = 2
    out(0, four * d0 - five * d2 + d4)
    out(1, d3 + d4 - four * (d1 + d2))
    out(2, four * (d1 - d2) - d3 + d4)
    out(3, two * (d3 - d1) - d2 + d4)
    out(4, two * (d1 - d3) - d2 + d4)
    out(5, four * d1 - five * d3 + d5)
}

/// Bᵀ d B of Winograd F(2×2, 2×2) for 16 tiles (Bᵀ = [1 -1 0; 0 1 0; 0 -1 1]): the 3×3 input
/// tile d(i, j) = d[i·rowStep + j·columnStep]; transformed position ξ = 3·row + column is
/// stored at dst + ξ·positionStride. The strided and the transposed 4×4 routes both reduce
/// to these 2×2 convolutions over 3×3 sub-windows.
@inline(__always)
func winogradInput2x2(_ d: UnsafePointer<Vec16>, rowStep: Int, columnStep: Int, into dst: UnsafeMutablePointer<Float>,
                      positionStride: Int) {
    // Bᵀ on columns: (d0 - d1, d1, d2 - d1) per row, then on rows; the first pass stays in
    // registers (nine vectors), where a pass through `block` measured slower.
    @inline(__always) func columns(_ i: Int) -> (Vec16, Vec16, Vec16) {
        let row = d + i * rowStep
        let a = row[0], c = row[columnStep], e = row[2 * columnStep]
        return (a - c, c, e - c)
    }
    let r0 = columns(0), r1 = columns(1), r2 = columns(2)
    @inline(__always) func rows(_ j: Int, _ t0: Vec16, _ t1: Vec16, _ t2: Vec16) {
        store16(t0 - t1, dst + j * positionStride)
        store16(t1, dst + (3 + j) * positionStride)
        store16(t2 - t1, dst + (6 + j) * positionStride)
    }
    rows(0, r0.0, r1.0, r2.0)
    rows(1, r0.1, r1.1, r2.1)
    rows(2, r0.2, r1.2, r2.2)
}

/// Aᵀ M A + bias of Winograd F(2×2, 2×2) for 16 tiles (Aᵀ = [1 1 0; 0 1 1]): position
/// ξ = 3·row + column of M is at m + ξ·step (plus `second`'s, laid out alike, when given);
/// out[2a + b] = output (a, b). The strided and the transposed 4×4 routes both end in it.
@inline(__always)
func winogradOutput2x2(_ m: UnsafePointer<Float>, second: UnsafePointer<Float>? = nil, step: Int, bias: Vec16,
                       into out: UnsafeMutablePointer<Vec16>) {
    @inline(__always) func mv(_ xi: Int) -> Vec16 {
        if let second = second { return load16(m + xi * step) + load16(second + xi * step) }
        return load16(m + xi * step)
    }
    let s0 = mv(0) + mv(3), s1 = mv(1) + mv(4), s2 = mv(2) + mv(5)   // rows 0 + 1
    let r0 = mv(3) + mv(6), r1 = mv(4) + mv(7), r2 = mv(5) + mv(8)   // rows 1 + 2
    out[0] = s0 + s1 + bias
    out[1] = s1 + s2 + bias
    out[2] = r0 + r1 + bias
    out[3] = r1 + r2 + bias
}

/// Aᵀ of F(2×2, 3×3) applied to 4 vectors: reads m(0..<4), then writes out(0..<2).
@inline(__always)
func winogradOutput2(_ m: (Int) -> Vec16, _ out: (Int, Vec16) -> Void) {
    let m0 = m(0), m1 = m(1), m2 = m(2), m3 = m(3)
    out(0, m0 + m1 + m2)
    out(1, m1 - m2 - m3)
}

/// Aᵀ of F(4×4, 3×3) applied to 6 vectors: reads m(0..<6), then writes out(0..<4).
@inline(__always)
func winogradOutput4(_ m: (Int) -> Vec16, _ out: (Int, Vec16) -> Void) {
    let m0 = m(0), m1 = m(1), m2 = m(2), m3 = m(3), m4 = m(4), m5 = m(5)
    let sum12 = m1 + m2, diff12 = m1 - m2, sum34 = m3 + m4, diff34 = m3 - m4
    let two: Float = 2, four: Float = 4, eight: Float = 8
    out(0, m0 + sum12 + sum34)
    out(1, diff12 + two * diff34)
    out(2, sum12 + four * sum34)
    out(3, diff12 + eight * diff34 + m5)
}

/// One output row of four adjacent F(4×4) tiles: lanes 4g..<4g+4 of the tiles' row
/// vectors a, b, c, d (output columns 0, 1, 2, 3 of each tile), interleaved tile by tile.
/// Constant lane indices let the compiler use two-source permutes instead of scalar moves.
@inline(__always)
func interleaveTileRow(_ a: Vec16, _ b: Vec16, _ c: Vec16, _ d: Vec16, group: Int) -> Vec16 {
    switch group {
    case 0: return Vec16(a[0], b[0], c[0], d[0], a[1], b[1], c[1], d[1], a[2], b[2], c[2], d[2], a[3], b[3], c[3], d[3])
    case 1: return Vec16(a[4], b[4], c[4], d[4], a[5], b[5], c[5], d[5], a[6], b[6], c[6], d[6], a[7], b[7], c[7], d[7])
    case 2: return Vec16(a[8], b[8], c[8], d[8], a[9], b[9], c[9], d[9], a[10], b[10], c[10], d[10], a[11], b[11], c[11], d[11])
    default: return Vec16(a[12], b[12], c[12], d[12], a[13], b[13], c[13], d[13], a[14], b[14], c[14], d[14], a[15], b[15], c[15], d[15])
    }
}

/// The bias of output channel `channel` for tiles firstTile ..< firstTile + lanes, one per
/// lane: image b's bias vector is at bias + b·batchStride, and 16 tiles may span two images.
@inline(__always)
func laneBias(_ bias: UnsafePointer<Float>, batchStride: Int, channel: Int, firstTile: Int, lanes: Int,
              tilesPerImage: Int) -> Vec16 {
    let first = firstTile / tilesPerImage
    if batchStride == 0 || (firstTile + lanes - 1) / tilesPerImage == first {
        return Vec16(repeating: bias[first * batchStride + channel])
    }
    var v = Vec16()
    for lane in 0..<lanes { v[lane] = bias[((firstTile + lane) / tilesPerImage) * batchStride + channel] }
    return v
}

/// One output row of four adjacent 2×2 tiles: lanes 4g..<4g+4 of the tiles' row vectors
/// a and b (output columns 0 and 1 of each tile), interleaved tile by tile.
@inline(__always)
func interleavePairRow(_ a: Vec16, _ b: Vec16, group: Int) -> SIMD8<Float> {
    switch group {
    case 0: return SIMD8(a[0], b[0], a[1], b[1], a[2], b[2], a[3], b[3])
    case 1: return SIMD8(a[4], b[4], a[5], b[5], a[6], b[6], a[7], b[7])
    case 2: return SIMD8(a[8], b[8], a[9], b[9], a[10], b[10], a[11], b[11])
    default: return SIMD8(a[12], b[12], a[13], b[13], a[14], b[14], a[15], b[15])
    }
}

/// p[0..<count] = v[0..<count] (+ the old values when `accumulate`), count in 1...8.
@inline(__always)
func storeRowPrefix8(_ v: SIMD8<Float>, _ p: UnsafeMutablePointer<Float>, count: Int, accumulate: Bool) {
    let raw = UnsafeMutableRawPointer(p)
    if count == 8 {
        raw.storeBytes(of: accumulate ? raw.loadUnaligned(as: SIMD8<Float>.self) + v : v, as: SIMD8<Float>.self)
        return
    }
    var start = 0
    if count >= 4 {
        let low = v.lowHalf
        raw.storeBytes(of: accumulate ? raw.loadUnaligned(as: SIMD4<Float>.self) + low : low, as: SIMD4<Float>.self)
        start = 4
    }
    for i in start..<count { p[i] = accumulate ? p[i] + v[i] : v[i] }
}

/// p[0..<count] = v[0..<count] (+ the old values when `accumulate`), count in 1...16: an
/// output row of four tiles, cut short where the last one overhangs the image.
@inline(__always)
func storeRowPrefix(_ v: Vec16, _ p: UnsafeMutablePointer<Float>, count: Int, accumulate: Bool) {
    if count == 16 {
        store16(accumulate ? load16(p) + v : v, p)
        return
    }
    storeRowPrefix8(v.lowHalf, p, count: min(count, 8), accumulate: accumulate)
    if count > 8 { storeRowPrefix8(v.highHalf, p + 8, count: count - 8, accumulate: accumulate) }
}

/// The vector path of every Winograd output transform, for one output channel and tiles
/// firstTile ..< firstTile + lanes (numbered across the batch, `tilesWide` to a tile row,
/// `tilesPerImage` to an image; image b's height × width plane of the channel starts at
/// plane + b·imageStride). Each group g of four lanes (4g ..< 4g + 4) whose tiles lie side
/// by side on one tile row writes each of its output rows as 4·tileSize contiguous
/// pixels, cut short at the image's edge: `row(r, g)` gives row r of the group, the four
/// tiles' values one after another in its first 4·tileSize lanes. Returns the lanes
/// written (a bit per lane); the caller writes the others one by one.
@inline(__always)
func storeTileGroups(tileSize m: Int, firstTile: Int, lanes: Int, tilesWide: Int, tilesPerImage: Int,
                     plane: UnsafeMutablePointer<Float>, imageStride: Int, height: Int, width: Int,
                     accumulate: Bool, row: (_ r: Int, _ group: Int) -> Vec16) -> Int {
    var written = 0
    for group in 0..<(lanes / 4) {
        let t = firstTile + 4 * group
        let n = t % tilesPerImage, tx = n % tilesWide
        if tx + 4 > tilesWide { continue }     // (also keeps the four in one image)
        let oy = (n / tilesWide) * m, ox = tx * m
        let count = min(4 * m, width - ox)
        let p = plane + (t / tilesPerImage) * imageStride + oy * width + ox
        for r in 0..<min(m, height - oy) {
            storeRowPrefix(row(r, group), p + r * width, count: count, accumulate: accumulate)
        }
        written |= 0xF << (4 * group)
    }
    return written
}

/// Floats from one transformed position's V to the next, for k rows of V: [k][32] and 16
/// floats more. The input transforms write every position of one channel in turn; at k·32
/// (a multiple of 4 KiB for the usual channel counts) those stores all fell in one L1 set
/// and took twice as long (a loop of such stores, 590 KB: 23 against 12 µs).
@inline(__always)
func winogradVPlane(k: Int) -> Int { k * gemmColumnBlock + 16 }

/// Floats of per-thread scratch for `winogradConv3x3`.
func winogradScratchFloats(inChannels: Int, outChannels: Int, tile: WinogradTile) -> Int {
    let rows = ((outChannels + gemmRowBlock - 1) / gemmRowBlock) * gemmRowBlock
    let p = tile.positions
    // V [α²][Cin][32] (planes `winogradVPlane` apart) + products [α²][rows][32] + two α×α blocks of Vec16.
    return p * winogradVPlane(k: inChannels) + p * rows * gemmColumnBlock + 2 * p * 16
}

/// Where the tiles of a chunk lie in one window position's phase plane, for loading them
/// 16 lanes at a time without packing. Tiles are numbered row-major, `tilesWide` to a row,
/// image after image (`tilesPerImage` each), and tile (ty, tx) of image b sits at
/// b·imageStride + ty·rowStride + tx from the position's offset in image 0. So consecutive
/// tiles on a tile row are consecutive floats, and a 16-lane half of the chunk covers a
/// few runs of them: two at 32×32 (rows of 8 tiles), three at 28×28 (rows of 7). `load`
/// reads each run with one unaligned load, shifted so the run's lanes land in place,
/// merges the runs by mask, and zeroes the lanes past the chunk. The loads may reach 15
/// floats before or after the planes; `WinogradPlan` pads for that.
struct TileRuns {
    let halves: Int
    let width: Int
    /// [half]: index of the half's first run in `shifts` and `masks`.
    let firstRun: UnsafeMutablePointer<Int>
    /// [half]: the number of runs.
    let counts: UnsafeMutablePointer<Int>
    /// [run]: offset of the run's loads, relative to lane 0.
    let shifts: UnsafeMutablePointer<Int>
    /// [run]: the lanes of the run.
    let masks: UnsafeMutablePointer<SIMDMask<SIMD16<Int32>>>
    /// [half]: the lanes inside the chunk.
    let valid: UnsafeMutablePointer<SIMDMask<SIMD16<Int32>>>

    /// The 16 tiles of `half` at window position `p` (that position's address for tile 0).
    @inline(__always)
    func load(_ p: UnsafePointer<Float>, half: Int) -> Vec16 {
        let first = firstRun[half]
        var d = load16(p + shifts[first])
        for r in (first + 1)..<(first + counts[half]) { d = d.replacing(with: load16(p + shifts[r]), where: masks[r]) }
        if width - half * 16 < 16 { d = d.replacing(with: 0, where: .!valid[half]) }
        return d
    }

    /// The loads of `half` with its offsets and masks held in locals, when it has at most
    /// four runs (every half of images at least 4 tiles wide, at chunk boundaries on whole
    /// tile rows): read from the tables on every load, they took most of the input
    /// transforms' time.
    @inline(__always)
    func fewRuns(_ half: Int) -> FewRuns? {
        let first = firstRun[half], count = counts[half]
        if count > 4 { return nil }
        let none = SIMDMask<SIMD16<Int32>>()
        return FewRuns(count: count, shift0: shifts[first], shift1: count > 1 ? shifts[first + 1] : 0,
                       shift2: count > 2 ? shifts[first + 2] : 0, shift3: count > 3 ? shifts[first + 3] : 0,
                       mask1: count > 1 ? masks[first + 1] : none, mask2: count > 2 ? masks[first + 2] : none,
                       mask3: count > 3 ? masks[first + 3] : none,
                       partial: width - half * 16 < 16, outside: .!valid[half])
    }
}

/// Loads of the 16 tiles of one half of a chunk at a window position (see `TileRuns`).
protocol TileLoads {
    func load(_ p: UnsafePointer<Float>) -> Vec16
}

/// A half of at most four runs (`TileRuns.fewRuns`): the same loads and merges as
/// `TileRuns.load`, so the same values.
struct FewRuns: TileLoads {
    let count: Int
    let shift0: Int, shift1: Int, shift2: Int, shift3: Int
    let mask1: SIMDMask<SIMD16<Int32>>, mask2: SIMDMask<SIMD16<Int32>>, mask3: SIMDMask<SIMD16<Int32>>
    let partial: Bool
    let outside: SIMDMask<SIMD16<Int32>>

    @inline(__always)
    func load(_ p: UnsafePointer<Float>) -> Vec16 {
        var d = load16(p + shift0)
        if count > 1 { d = d.replacing(with: load16(p + shift1), where: mask1) }
        if count > 2 { d = d.replacing(with: load16(p + shift2), where: mask2) }
        if count > 3 { d = d.replacing(with: load16(p + shift3), where: mask3) }
        if partial { d = d.replacing(with: 0, where: outside) }
        return d
    }
}

/// Any half, read through the tables of `TileRuns`.
struct ManyRuns: TileLoads {
    let runs: TileRuns
    let half: Int

    @inline(__always)
    func load(_ p: UnsafePointer<Float>) -> Vec16 { runs.load(p, half: half) }
}

/// What a Winograd route's input transform works with, for one chunk: the input channels
/// to transform, the offset of each window position in a channel's planes, two blocks
/// of Vec16 scratch, and V (position ξ's plane at v + ξ·vPlane for the 3×3 route; the
/// strided and transposed routes place their positions themselves).
struct InputTransformContext {
    let channels: Range<Int>
    let offsets: UnsafePointer<Int>
    let blockA: UnsafeMutablePointer<Vec16>
    let blockB: UnsafeMutablePointer<Vec16>
    let v: UnsafeMutablePointer<Float>
    let vPlane: Int
}

/// A route's input transform of one half of a chunk, given how to load its tiles.
protocol WinogradInputHalves {
    func transformHalf<Loads: TileLoads>(_ loads: Loads, half: Int, _ context: InputTransformContext)
}

extension WinogradInputHalves {
    /// The input transform of `channels` for tiles n0 ..< n0 + width of `plan`, whose window
    /// is kernel × kernel padded pixels: every half through `transformHalf`.
    @inline(__always)
    func transformWindows(_ plan: WinogradPlan, kernel: Int, n0: Int, width: Int, channels: Range<Int>,
                          blockA: UnsafeMutablePointer<Vec16>, blockB: UnsafeMutablePointer<Vec16>,
                          into v: UnsafeMutablePointer<Float>, vPlane: Int) {
        withWindowOffsets(plan.layout, kernel: kernel) { offsets in
            plan.withTileRuns(n0: n0, width: width) { runs in
                transformHalves(runs, InputTransformContext(channels: channels, offsets: offsets, blockA: blockA,
                                                            blockB: blockB, v: v, vPlane: vPlane))
            }
        }
    }

    /// Transforms every half of the chunk that `runs` describes, each with the cheapest loads that serve it.
    @inline(__always)
    func transformHalves(_ runs: TileRuns, _ context: InputTransformContext) {
        for half in 0..<runs.halves {
            if let few = runs.fewRuns(half) {
                transformHalf(few, half: half, context)
            } else {
                transformHalf(ManyRuns(runs: runs, half: half), half: half, context)
            }
        }
    }
}

/// Calls `body` with the `TileRuns` of tiles n0 ..< n0 + width (numbered across the batch).
/// Storage is sized to the runs there are, so it stays on the stack (under 1 KiB) for every
/// image at least 5 tiles wide; narrower ones with many tile rows in a chunk may spill to the heap.
@inline(__always)
func withTileRuns<R>(n0: Int, width: Int, tilesWide: Int, rowStride: Int, tilesPerImage: Int, imageStride: Int,
                     _ body: (TileRuns) -> R) -> R {
    let halves = (width + 15) / 16
    // Runs of each half: a new one starts at the half's first lane and at every tile row start
    // (an image's first tile starts a tile row, so runs never cross images).
    var runCount = 0
    for half in 0..<halves {
        let t0 = n0 + half * 16, t1 = n0 + min(width, half * 16 + 16)
        runCount += 1 + (t1 - 1) / tilesWide - t0 / tilesWide
    }
    return withUnsafeTemporaryAllocation(of: Int.self, capacity: 2 * halves + runCount) { ints in
        withUnsafeTemporaryAllocation(of: SIMDMask<SIMD16<Int32>>.self, capacity: runCount + halves) { masks in
            let p = ints.baseAddress!
            let runs = TileRuns(halves: halves, width: width, firstRun: p, counts: p + halves, shifts: p + 2 * halves,
                                masks: masks.baseAddress!, valid: masks.baseAddress! + runCount)
            let laneIndex = laneIndices16
            var run = 0
            for half in 0..<halves {
                let limit = min(16, width - half * 16)
                runs.firstRun[half] = run
                var lane = 0
                while lane < limit {
                    let t = n0 + half * 16 + lane
                    let n = t % tilesPerImage, tx = n % tilesWide
                    let length = min(tilesWide - tx, limit - lane)
                    runs.shifts[run] = (t / tilesPerImage) * imageStride + (n / tilesWide) * rowStride + tx - lane
                    runs.masks[run] = (laneIndex .>= Int32(lane)) .& (laneIndex .< Int32(lane + length))
                    lane += length
                    run += 1
                }
                runs.counts[half] = run - runs.firstRun[half]
                runs.valid[half] = laneIndex .< Int32(limit)
            }
            return body(runs)
        }
    }
}

/// Calls `body` with the offset, in a channel's phase planes, of each position (ky, kx) of a
/// kernel×kernel window (index ky·kernel + kx) whose top-left is padded pixel (0, 0).
@inline(__always)
func withWindowOffsets<R>(_ layout: PhasePlanes, kernel: Int, _ body: (UnsafePointer<Int>) -> R) -> R {
    withUnsafeTemporaryAllocation(of: Int.self, capacity: kernel * kernel) { offsets in
        let s = layout.stride
        for ky in 0..<kernel {
            for kx in 0..<kernel {
                offsets[ky * kernel + kx] = ((ky % s) * s + kx % s) * layout.phasePlane + (ky / s) * layout.wp + kx / s
            }
        }
        return body(UnsafePointer(offsets.baseAddress!))
    }
}

/// What every Winograd route prepares before its parallel region: the input as
/// stride-s phase planes (zero-padded far enough for the tiles' overhang), and the
/// cut of the work into tasks of (block of output channels, chunk of up to 32 tiles),
/// with per-thread scratch. Tiles are numbered across the batch, image after image, so
/// a chunk may hold the last tiles of one image and the first of the next: small images
/// (16 tiles at 8×8) then fill whole 32-column panels, and each weight read feeds twice
/// the columns. A tile's arithmetic does not depend on its chunk, so neither do results.
/// Everything is taken from `workspace`; the caller's mark releases it.
struct WinogradPlan {
    let layout: PhasePlanes
    let planes: UnsafeMutablePointer<Float>
    let perImage: Int
    let split: GemmSplit
    let taskCount: Int
    let maxThreads: Int
    let scratchBase: UnsafeMutablePointer<Float>
    let scratchFloats: Int
    let inChannels: Int
    let outChannels: Int
    /// Output channels rounded up to whole micro-tile rows.
    let rowsPadded: Int
    /// Tiles of one image.
    let tiles: Int
    /// Tiles of the batch.
    let totalTiles: Int
    let tilesWide: Int

    /// x [B, Cin, H, W] → planes [B, Cin, s, s, Hp, Wp], normalised on the way when
    /// `normalize` is given; `scratchFloats` per thread.
    init(_ x: UnsafePointer<Float>, batch: Int, inChannels cin: Int, outChannels cout: Int,
         height h: Int, width w: Int, stride: Int, tilesHigh: Int, tilesWide: Int,
         scratchFloats: Int, normalize: GroupNormSpec? = nil, workspace: Workspace) throws {
        let pool = ThreadPool.shared
        layout = PhasePlanes(height: h, width: w, stride: stride, pad: 1,
                             minimumRows: tilesHigh + 1, minimumColumns: tilesWide + 1)
        perImage = cin * layout.perChannel
        // 16 floats of slack either side for the shifted loads of `TileRuns`.
        planes = try workspace.floats(batch * perImage + 32) + 16
        try layout.fill(x, batch: batch, channels: cin, height: h, width: w, into: planes, normalize: normalize,
                        workspace: workspace)
        tiles = tilesHigh * tilesWide
        totalTiles = batch * tiles
        self.tilesWide = tilesWide
        split = GemmSplit(m: cout, n: totalTiles, images: 1, threads: pool.threadsFor(batch * 4),
                          columnsPerChunk: gemmColumnBlock, tasksPerThread: 1)
        taskCount = split.tasksPerImage
        maxThreads = pool.threadsFor(taskCount)
        self.scratchFloats = scratchFloats
        scratchBase = try workspace.floats(maxThreads * scratchFloats)
        inChannels = cin
        outChannels = cout
        rowsPadded = ((cout + gemmRowBlock - 1) / gemmRowBlock) * gemmRowBlock
    }

    /// The output channels m0..<m1 and tiles n0..<n1 (of the batch) of `task`.
    @inline(__always)
    func ranges(_ task: Int) -> (Int, Int, Int, Int) {
        split.ranges(task, m: outChannels, n: totalTiles)
    }

    /// The `TileRuns` of tiles n0 ..< n0 + width of the batch in these planes.
    @inline(__always)
    func withTileRuns<R>(n0: Int, width: Int, _ body: (TileRuns) -> R) -> R {
        SwiftUNet.withTileRuns(n0: n0, width: width, tilesWide: tilesWide, rowStride: layout.wp, tilesPerImage: tiles,
                               imageStride: perImage, body)
    }

    /// The scratch of `thread`: V first (a task's transformed input).
    @inline(__always)
    func scratch(thread: Int) -> UnsafeMutablePointer<Float> { scratchBase + thread * scratchFloats }

    /// The rest of `thread`'s scratch, after its V of `transformedFloats`: the products
    /// [positions][rowsPadded][32], then `vectors` Vec16 for the transforms.
    @inline(__always)
    func buffers(thread: Int, transformedFloats: Int, positions: Int,
                 vectors: Int) -> (UnsafeMutablePointer<Float>, UnsafeMutablePointer<Vec16>) {
        let products = scratch(thread: thread) + transformedFloats
        let blocks = UnsafeMutableRawPointer(products + positions * rowsPadded * gemmColumnBlock)
            .bindMemory(to: Vec16.self, capacity: vectors)
        return (products, blocks)
    }
}

/// The element-wise stage of every Winograd route: for each transformed position ξ,
/// M_ξ [rows m0..<m1, 32] = U_ξ [rows, k] · V_ξ [k, 32-column panel].
/// positions[ξ] are the packed U_ξ; V_ξ starts at v + ξ·vPlane; M_ξ at
/// products + (ξ·rowsPadded + row)·gemmColumnBlock. `width` is the panel's used columns.
/// With `depth`, only k in that range (of the full `k`); with `addToOld`, that range's
/// sum is its own chain from zero, added to the M already there.
@inline(__always)
func winogradPositionProducts(
    _ positions: [PackedMatrix], k: Int, depth: Range<Int>? = nil, addToOld: Bool = false,
    v: UnsafeMutablePointer<Float>, vPlane: Int,
    products: UnsafeMutablePointer<Float>, rowsPadded: Int, m0: Int, m1: Int, width: Int
) {
    let k0 = depth?.lowerBound ?? 0, kc = (depth?.upperBound ?? k) - k0
    let nextPanel = nextPanelFloats(k: k)
    for xi in 0..<positions.count {
        let u = positions[xi]
        let vPanel = UnsafePointer(v + xi * vPlane + k0 * gemmColumnBlock)
        var row = m0
        while row < m1 {
            let out = products + (xi * rowsPadded + row) * gemmColumnBlock
            let aPanel = UnsafePointer(u.data + (row / gemmRowBlock) * gemmRowBlock * k + k0 * gemmRowBlock)
            if width <= 16 && m1 - row >= 2 * gemmRowBlock {
                microKernel16x16(kc, aPanel, aPanel + gemmRowBlock * k, vPanel, out, gemmColumnBlock,
                                 start: .zero, addToOld: addToOld, prefetchAhead: 2 * nextPanel)
                row += 2 * gemmRowBlock
                continue
            }
            if width <= 16 {
                microKernel8x16(kc, aPanel, vPanel, out, gemmColumnBlock, start: .zero, addToOld: addToOld,
                                prefetchAhead: nextPanel)
            } else {
                microKernel8x32(kc, aPanel, vPanel, out, gemmColumnBlock, start: .zero, addToOld: addToOld,
                                prefetchAhead: nextPanel)
            }
            row += gemmRowBlock
        }
    }
}

/// A Winograd route's work on one (block of output channels, chunk of tiles), in its two
/// stages: transform the chunk's input into V, then multiply by the weights and transform
/// back into the output. Tiles are numbered across the batch (`WinogradPlan`). Scratch
/// comes from the thread's share of `plan`.
protocol WinogradStages {
    var plan: WinogradPlan { get }
    /// Floats of one chunk's V.
    var transformedFloats: Int { get }
    /// V of tiles n0 ..< n0 + width, every input channel.
    func transformInput(n0: Int, width: Int, into v: UnsafeMutablePointer<Float>, thread: Int)
    /// Output channels m0..<m1 of tiles n0..<n1, from V.
    func multiplyAndTransformBack(m0: Int, m1: Int, n0: Int, n1: Int, v: UnsafeMutablePointer<Float>, thread: Int)
}

extension WinogradStages {
    /// Both stages of task (block of output channels, chunk) on the thread's own V.
    @inline(__always)
    func run(_ task: Int, thread: Int) {
        let (m0, m1, n0, n1) = plan.ranges(task)
        let v = plan.scratch(thread: thread)
        transformInput(n0: n0, width: n1 - n0, into: v, thread: thread)
        multiplyAndTransformBack(m0: m0, m1: m1, n0: n0, n1: n1, v: v, thread: thread)
    }
}

/// Runs a Winograd route's tasks, each both stages on its own V. With fewer chunks than
/// threads (batch 1, at most 32 tiles) the output channels are split and each task repeats
/// its chunk's input transform. Sharing that transform out by input channels first costs
/// one region more, and every task then reads a V written partly on the other core; it
/// measured slower at batch 1 on 2 threads: alternating builds (`SwiftUNetBench 20 2
/// 0,2,4 1`, best of 6), repeated against shared transform: 2.99 / 3.47 ms gray28-small,
/// 3.27 / 3.36 rgb32-small, 11.8 / 12.8 rgb32-large.
@inline(__always)
func runWinogradStages<Stages: WinogradStages & ParallelTasks>(_ stages: Stages) {
    ThreadPool.shared.parallelFor(stages.plan.taskCount, maxThreads: stages.plan.maxThreads, stages)
}

/// A Winograd route whose products can be summed as two chains over halves of the input
/// channels (its `inputSplit`), so that at batch 1 two threads can each take one half.
protocol WinogradChannelHalves: WinogradStages {
    /// U_ξ [Cout, K], K = `columnsPerChannel` · Cin.
    var positions: [PackedMatrix] { get }
    /// Columns of K (rows of V) per input channel: 1 for the 3×3 route, 4 (phases) for the strided one.
    var columnsPerChannel: Int { get }
    /// V of tiles n0 ..< n0 + width, input channels `channels` only, with the blocks of scratch `scratch`.
    func transformInput(n0: Int, width: Int, channels: Range<Int>, into v: UnsafeMutablePointer<Float>, scratch: Int)
    /// The products buffer of scratch `scratch`.
    func products(scratch: Int) -> UnsafeMutablePointer<Float>
    /// Where the input channels split into two sums, if they do (a function of the shape only).
    var inputSplit: Int? { get }
    /// Output channels m0..<m1 of tiles n0..<n1 from the products plus `second`'s (laid out alike) when given.
    func transformBack(m0: Int, m1: Int, n0: Int, n1: Int, products: UnsafeMutablePointer<Float>,
                       second: UnsafePointer<Float>?, thread: Int)
}

extension WinogradChannelHalves {
    /// Output channels m0..<m1 of tiles n0..<n1 (of the batch) from V: the products
    /// M_ξ [rows m0..<m1, 32] = U_ξ · V_ξ (as two chains over the halves of the input
    /// channels, the second added to the first, when they split), then transformed back.
    @inline(__always)
    func multiplyAndTransformBack(m0: Int, m1: Int, n0: Int, n1: Int, v: UnsafeMutablePointer<Float>, thread: Int) {
        let products = products(scratch: thread)
        let k = columnsPerChannel * plan.inChannels, vPlane = winogradVPlane(k: k)
        if let split = inputSplit {
            let middle = columnsPerChannel * split
            winogradPositionProducts(positions, k: k, depth: 0..<middle, v: v, vPlane: vPlane,
                                     products: products, rowsPadded: plan.rowsPadded, m0: m0, m1: m1, width: n1 - n0)
            winogradPositionProducts(positions, k: k, depth: middle..<k, addToOld: true, v: v, vPlane: vPlane,
                                     products: products, rowsPadded: plan.rowsPadded, m0: m0, m1: m1, width: n1 - n0)
        } else {
            winogradPositionProducts(positions, k: k, v: v, vPlane: vPlane, products: products,
                                     rowsPadded: plan.rowsPadded, m0: m0, m1: m1, width: n1 - n0)
        }
        transformBack(m0: m0, m1: m1, n0: n0, n1: n1, products: products, second: nil, thread: thread)
    }
}

/// Runs `stages` as two regions when its images are one chunk (batch 1) and two threads are
/// there: first each thread transforms and multiplies half of the input channels, every
/// output channel, into its own products; then each transforms back half of the output
/// channels from the sum of both halves' products. Splitting the output channels instead
/// would have both threads transform all of the input. Returns false (nothing run) otherwise.
@inline(__always)
func runChannelHalves<Stages: WinogradChannelHalves>(_ stages: Stages, split: Int) -> Bool {
    guard stages.plan.totalTiles <= gemmColumnBlock, stages.plan.maxThreads >= 2 else { return false }
    let pool = ThreadPool.shared
    pool.parallelFor(2, maxThreads: 2, ChannelHalvesProducts(stages: stages, split: split))
    pool.parallelFor(2, maxThreads: 2, ChannelHalvesTransformBack(stages: stages))
    return true
}

/// Region 1 of `runChannelHalves`: task h transforms input channels [0, split) (h = 0) or
/// [split, Cin) (h = 1) of the one chunk and multiplies them, every output channel, into
/// the products of scratch h.
private struct ChannelHalvesProducts<Stages: WinogradChannelHalves>: ParallelTasks {
    let stages: Stages
    let split: Int

    func run(_ task: Int, thread: Int) {
        let plan = stages.plan, cin = plan.inChannels, per = stages.columnsPerChannel
        let channels = task == 0 ? 0..<split : split..<cin
        let v = plan.scratch(thread: task)
        stages.transformInput(n0: 0, width: plan.totalTiles, channels: channels, into: v, scratch: task)
        winogradPositionProducts(stages.positions, k: per * cin, depth: (per * channels.lowerBound)..<(per * channels.upperBound),
                                 v: v, vPlane: winogradVPlane(k: per * cin), products: stages.products(scratch: task),
                                 rowsPadded: plan.rowsPadded, m0: 0, m1: plan.outChannels, width: plan.totalTiles)
    }
}

/// Region 2 of `runChannelHalves`: task h transforms back half of the output channels from
/// half 0's products plus half 1's (the value `addToOld` gives on one thread).
private struct ChannelHalvesTransformBack<Stages: WinogradChannelHalves>: ParallelTasks {
    let stages: Stages

    func run(_ task: Int, thread: Int) {
        let plan = stages.plan, cout = plan.outChannels
        let middle = ((cout / gemmRowBlock + 1) / 2) * gemmRowBlock
        let (m0, m1) = task == 0 ? (0, min(middle, cout)) : (min(middle, cout), cout)
        if m0 >= m1 { return }
        stages.transformBack(m0: m0, m1: m1, n0: 0, n1: plan.totalTiles, products: stages.products(scratch: 0),
                             second: UnsafePointer(stages.products(scratch: 1)), thread: thread)
    }
}

/// x [B, Cin, H, W] → y [B, Cout, H, W]: 3×3 convolution, stride 1, padding 1, by
/// Winograd F(2×2, 3×3); y = conv(x) + bias (+ y when `accumulate`), bias per image
/// at `bias + b * biasBatchStride`. With `normalize`, the convolution reads
/// GroupNorm(x) (+ SiLU), normalised on the way into the padded planes.
func winogradConv3x3(
    _ x: UnsafePointer<Float>, batch: Int, inChannels cin: Int, height h: Int, width w: Int,
    weights: WinogradWeights, bias: UnsafePointer<Float>, biasBatchStride: Int,
    y: UnsafeMutablePointer<Float>, accumulate: Bool, normalize: GroupNormSpec? = nil, workspace: Workspace
) throws {
    let cout = weights.outChannels
    let tile = weights.tile, m = tile.rawValue
    let tilesHigh = (h + m - 1) / m, tilesWide = (w + m - 1) / m
    let mark = workspace.mark()
    defer { workspace.release(to: mark) }
    // Input tile element (i, j) of tile (ty, tx) is padded pixel (m·ty + i, m·tx + j): an α×α,
    // stride-m, padding-1 window, so stride-m phase planes make every row of tiles contiguous.
    let plan = try WinogradPlan(x, batch: batch, inChannels: cin, outChannels: cout, height: h, width: w, stride: m,
                                tilesHigh: tilesHigh, tilesWide: tilesWide,
                                scratchFloats: winogradScratchFloats(inChannels: cin, outChannels: cout, tile: tile),
                                normalize: normalize, workspace: workspace)
    let split = Winograd3x3Tasks.inputSplit(inChannels: cin, outChannels: cout, tiles: tilesHigh * tilesWide, normalize: normalize)
    let tasks = Winograd3x3Tasks(plan: plan, weights: weights, tile: tile, h: h, w: w, y: y, bias: bias,
                                 biasBatchStride: biasBatchStride, accumulate: accumulate, inputSplit: split)
    if let split = split, runChannelHalves(tasks, split: split) { return }
    runWinogradStages(tasks)
}

/// The tasks of `winogradConv3x3`: task = (block of output channels, chunk of ≤ 32 tiles),
/// each transforming its chunk's input, then multiplying and transforming back.
private struct Winograd3x3Tasks: ParallelTasks, WinogradChannelHalves, WinogradInputHalves {
    let plan: WinogradPlan
    let weights: WinogradWeights
    let tile: WinogradTile
    let h: Int
    let w: Int
    let y: UnsafeMutablePointer<Float>
    let bias: UnsafePointer<Float>
    let biasBatchStride: Int
    let accumulate: Bool
    /// Where the input channels split into two sums (`inputSplit(...)`), if they do.
    let inputSplit: Int?

    /// Layers with at least twice as many input channels as output channels, on images of
    /// at most one chunk of tiles (a 32-column panel), sum their products over the input
    /// channels as two chains, [0, Cin/2) and [Cin/2, Cin), added at the end: so that at
    /// batch 1 two threads can each take half the input channels (see `winogradConv3x3`)
    /// with the same result as one thread at any batch. Splitting the output channels
    /// instead, each thread would transform all of the input, which costs more than the
    /// products in such layers (the decoder's first convolution, on the concatenation).
    /// The halves hold whole GroupNorm groups. A function of the shape only.
    static func inputSplit(inChannels cin: Int, outChannels cout: Int, tiles: Int, normalize: GroupNormSpec?) -> Int? {
        guard tiles <= gemmColumnBlock, cin >= 2 * cout, cin >= 32, cin % 2 == 0 else { return nil }
        if let norm = normalize, norm.groups % 2 != 0 { return nil }
        return cin / 2
    }

    /// A thread's scratch: V [α²][Cin][32], products [α²][rowsPadded][32] and two α×α
    /// blocks of Vec16.
    @inline(__always)
    func buffers(thread: Int) -> (products: UnsafeMutablePointer<Float>, blockA: UnsafeMutablePointer<Vec16>,
                                  blockB: UnsafeMutablePointer<Vec16>) {
        let positions = tile.positions
        let (products, blockA) = plan.buffers(thread: thread, transformedFloats: transformedFloats,
                                              positions: positions, vectors: 2 * positions)
        return (products, blockA, blockA + positions)
    }

    var transformedFloats: Int { tile.positions * winogradVPlane(k: plan.inChannels) }
    var positions: [PackedMatrix] { weights.positions }
    var columnsPerChannel: Int { 1 }
    func products(scratch: Int) -> UnsafeMutablePointer<Float> { buffers(thread: scratch).products }

    /// V_ξ[ci, t] = (Bᵀ d B)_ξ for every input channel and tiles n0 ..< n0 + width (numbered
    /// across the batch), into v [α²][Cin][32]. The input tiles are read straight from the phase
    /// planes (`TileRuns`): position (i, j) of tile (ty, tx) is padded pixel (m·ty + i, m·tx + j).
    @inline(__always)
    func transformInput(n0: Int, width: Int, into v: UnsafeMutablePointer<Float>, thread: Int) {
        transformInput(n0: n0, width: width, channels: 0..<plan.inChannels, into: v, scratch: thread)
    }

    /// `transformInput` of the input channels `channels` only, with the transform blocks of
    /// scratch `scratch`.
    @inline(__always)
    func transformInput(n0: Int, width: Int, channels: Range<Int>, into v: UnsafeMutablePointer<Float>, scratch: Int) {
        let (_, blockA, blockB) = buffers(thread: scratch)
        transformWindows(plan, kernel: tile.alpha, n0: n0, width: width, channels: channels, blockA: blockA,
                         blockB: blockB, into: v, vPlane: winogradVPlane(k: plan.inChannels))
    }

    /// One half of `transformInput`, channel by channel, its tiles read by `loads`.
    @inline(__always)
    func transformHalf<Loads: TileLoads>(_ loads: Loads, half: Int, _ context: InputTransformContext) {
        if tile == .two {
            transformHalf(loads, half: half, context, alpha: WinogradTile.two.alpha, transform: winogradInput2)
        } else {
            transformHalf(loads, half: half, context, alpha: WinogradTile.four.alpha, transform: winogradInput4)
        }
    }

    /// `transformHalf` with α and Bᵀ fixed. The tiles are read straight into the first pass
    /// and the second pass writes straight into V, so only the intermediate block goes
    /// through memory (docs/KERNELS.md: a block in scratch between every step was 2-4% of the
    /// forward slower).
    @inline(__always)
    func transformHalf<Loads: TileLoads>(_ loads: Loads, half: Int, _ context: InputTransformContext, alpha: Int,
                                         transform: ((Int) -> Vec16, (Int, Vec16) -> Void) -> Void) {
        let perChannel = plan.layout.perChannel, offsets = context.offsets, vPlane = context.vPlane
        let block = context.blockB
        for ci in context.channels {
            let channel = UnsafePointer(plan.planes + ci * perChannel)
            // Columns of every row, then rows of every column.
            for i in 0..<alpha {
                transform({ loads.load(channel + offsets[i * alpha + $0]) }, { block[i * alpha + $0] = $1 })
            }
            let dst = context.v + ci * gemmColumnBlock + half * 16
            for j in 0..<alpha {
                transform({ block[$0 * alpha + j] }, { store16($1, dst + ($0 * alpha + j) * vPlane) })
            }
        }
    }

    /// Output channels m0..<m1 of tiles n0..<n1 from the products M (plus `second`'s, laid
    /// out alike, when given): Y = Aᵀ M A + bias (+ old y), written where each tile lies inside its image.
    @inline(__always)
    func transformBack(m0: Int, m1: Int, n0: Int, n1: Int, products: UnsafeMutablePointer<Float>,
                       second: UnsafePointer<Float>?, thread: Int) {
        let (_, blockA, blockB) = buffers(thread: thread)
        let tilesWide = plan.tilesWide, cout = plan.outChannels
        let rowsPadded = plan.rowsPadded, width = n1 - n0
        let m = tile.rawValue
        let tiles = plan.tiles, imageFloats = cout * h * w
        let step = rowsPadded * gemmColumnBlock
        for co in m0..<m1 {
            for half in 0..<((width + 15) / 16) {
                let o = half * 16
                let lanes = min(16, width - o)
                let biasValue = laneBias(bias, batchStride: biasBatchStride, channel: co, firstTile: n0 + o,
                                         lanes: lanes, tilesPerImage: tiles)
                let base = products + co * gemmColumnBlock + o
                let other = second.map { $0 + co * gemmColumnBlock + o }
                // Rows of every column (α → m), then columns of every row; Y [m][m] + bias in blockA.
                if tile == .two {
                    transformBackBlock(base, other, step: step, alpha: WinogradTile.two.alpha, bias: biasValue,
                                       blockA: blockA, blockB: blockB, transform: winogradOutput2)
                } else {
                    transformBackBlock(base, other, step: step, alpha: WinogradTile.four.alpha, bias: biasValue,
                                       blockA: blockA, blockB: blockB, transform: winogradOutput4)
                }
                // Lanes written by the vector path (bit per lane); the rest go one by one.
                let written = storeTileGroups(tileSize: m, firstTile: n0 + o, lanes: lanes, tilesWide: tilesWide,
                                              tilesPerImage: tiles, plane: y + co * h * w, imageStride: imageFloats,
                                              height: h, width: w, accumulate: accumulate) { r, group in
                    tile == .four
                        ? interleaveTileRow(blockA[4 * r], blockA[4 * r + 1], blockA[4 * r + 2], blockA[4 * r + 3],
                                            group: group)
                        : Vec16(lowHalf: interleavePairRow(blockA[2 * r], blockA[2 * r + 1], group: group),
                                highHalf: SIMD8<Float>())
                }
                for lane in 0..<lanes where written & (1 << lane) == 0 {
                    let t = n0 + o + lane, n = t % tiles
                    let oy = (n / tilesWide) * m, ox = (n % tilesWide) * m
                    let rows = min(m, h - oy), cols = min(m, w - ox)
                    let yPlane = y + (t / tiles) * imageFloats + co * h * w
                    for r in 0..<rows {
                        let p = yPlane + (oy + r) * w + ox
                        if accumulate {
                            for c in 0..<cols { p[c] += blockA[r * m + c][lane] }
                        } else {
                            for c in 0..<cols { p[c] = blockA[r * m + c][lane] }
                        }
                    }
                }
            }
        }
    }

    /// Aᵀ M A + bias of one half's 16 tiles of one output channel into blockA [m][m], m = α - 2:
    /// M's position ξ at products + ξ·step (plus `second`'s when given), read straight into
    /// the first pass; only the intermediate block goes through blockB.
    @inline(__always)
    func transformBackBlock(_ products: UnsafePointer<Float>, _ second: UnsafePointer<Float>?, step: Int, alpha: Int,
                            bias: Vec16, blockA: UnsafeMutablePointer<Vec16>, blockB: UnsafeMutablePointer<Vec16>,
                            transform: ((Int) -> Vec16, (Int, Vec16) -> Void) -> Void) {
        let m = alpha - 2
        for j in 0..<alpha {
            if let second = second {
                transform({ load16(products + ($0 * alpha + j) * step) + load16(second + ($0 * alpha + j) * step) },
                          { blockB[$0 * alpha + j] = $1 })
            } else {
                transform({ load16(products + ($0 * alpha + j) * step) }, { blockB[$0 * alpha + j] = $1 })
            }
        }
        for i in 0..<m {
            transform({ blockB[i * alpha + $0] }, { blockA[i * m + $0] = $1 + bias })
        }
    }
}


/// The input transform of one half of a chunk for the routes built on F(2×2, 2×2) (the
/// strided and the transposed 4×4 convolutions): for each channel, the window's
/// `windowSize` taps are loaded, then each of its four 3×3 sub-windows (s = 0..<4, starting
/// at tap origin(s), rows `rowStep` and columns `columnStep` taps apart) is transformed
/// into destination(ci, s), its 9 positions `positionStride` apart.
@inline(__always)
func transformSubWindows<Loads: TileLoads>(
    _ loads: Loads, plan: WinogradPlan, _ context: InputTransformContext, windowSize: Int, rowStep: Int,
    columnStep: Int, origin: (Int) -> Int, positionStride: Int,
    destination: (_ ci: Int, _ subWindow: Int) -> UnsafeMutablePointer<Float>
) {
    let perChannel = plan.layout.perChannel, window = context.blockA
    for ci in context.channels {
        let channel = UnsafePointer(plan.planes + ci * perChannel)
        for q in 0..<windowSize { window[q] = loads.load(channel + context.offsets[q]) }
        for sub in 0..<4 {
            winogradInput2x2(window + origin(sub), rowStep: rowStep, columnStep: columnStep,
                             into: destination(ci, sub), positionStride: positionStride)
        }
    }
}

// MARK: - 4×4 stride-2 convolution by Winograd F(2×2, 2×2)

/// Weights of a 4×4, stride-2, padding-1 convolution as Winograd F(2×2, 2×2) over
/// its four input phases: U_ξ [Cout, 4·Cin], column (ci·4 + 2py + px), ξ = 3·row + column.
///
/// Output pixel (oy, ox) reads padded pixels (2oy + ky, 2ox + kx); with ky = 2ty + py that is
/// phase (py, px) at (oy + ty, ox + tx): a 2×2 correlation of each phase plane with the
/// kernel taps w[2ty + py, 2tx + px]. F(2×2, 2×2) does each 2×2 output tile with 9
/// multiplies instead of 16 (transforms: adds only, G = [1 0; 1 1; 0 1],
/// Bᵀ = [1 -1 0; 0 1 0; 0 -1 1], Aᵀ = [1 1 0; 0 1 1]).
struct StridedWinogradWeights {
    let positions: [PackedMatrix]
    var outChannels: Int { positions[0].rows }
    /// 4·Cin
    var phaseChannels: Int { positions[0].cols }
}

/// Conv2d weights [Cout, Cin, 4, 4] → `StridedWinogradWeights` (float64, rounded once).
func packStridedWinogradWeights(_ w: UnsafePointer<Float>, inChannels: Int, outChannels: Int,
                                 store: WeightStore? = nil) throws -> StridedWinogradWeights {
    let cols = 4 * inChannels
    let count = max(1, outChannels * cols)
    let transformed = try MappedFloats(9 * count, "Winograd weights")
    defer { transformed.release() }
    let u = transformed.base
    let g: [[Double]] = [[1, 0], [1, 1], [0, 1]]
    for co in 0..<outChannels {
        for ci in 0..<inChannels {
            let k = w + (co * inChannels + ci) * 16
            for py in 0..<2 {
                for px in 0..<2 {
                    // taps[ty][tx] = w[2ty + py, 2tx + px]; U = G · taps · Gᵀ.
                    for i in 0..<3 {
                        for j in 0..<3 {
                            var v = 0.0
                            for ty in 0..<2 {
                                for tx in 0..<2 {
                                    v += g[i][ty] * Double(k[(2 * ty + py) * 4 + 2 * tx + px]) * g[j][tx]
                                }
                            }
                            u[(i * 3 + j) * count + co * cols + ci * 4 + py * 2 + px] = Float(v)
                        }
                    }
                }
            }
        }
    }
    var positions: [PackedMatrix] = []
    for xi in 0..<9 {
        positions.append(try PackedMatrix(rows: outChannels, cols: cols, source: u + xi * count, ld: cols, store: store))
    }
    return StridedWinogradWeights(positions: positions)
}

/// Floats of per-thread scratch for `winogradConv4x4Stride2`.
func stridedWinogradScratchFloats(inChannels: Int, outChannels: Int) -> Int {
    let rows = ((outChannels + gemmRowBlock - 1) / gemmRowBlock) * gemmRowBlock
    // V [9][4·Cin][32] (planes `winogradVPlane` apart) + products [9][rows][32] + a 6×6 window and a block of Vec16.
    return 9 * winogradVPlane(k: 4 * inChannels) + 9 * rows * gemmColumnBlock + (36 + 18) * 16
}

/// x [B, Cin, H, W] → y [B, Cout, Ho, Wo] (Ho = ⌊H/2⌋, Wo = ⌊W/2⌋): 4×4 convolution, stride 2,
/// padding 1, by Winograd F(2×2, 2×2) on the four input phases; y = conv(x) + bias.
///
/// Output tile (TY, TX) (pixels 2TY.., 2TX..) reads the padded 6×6 window at (4TY, 4TX): the
/// same stride-4 gather as F(4×4, 3×3); sub-window (py, px) of it, rows 2i + py and
/// columns 2j + px, is the phase's 3×3 input tile.
func winogradConv4x4Stride2(
    _ x: UnsafePointer<Float>, batch: Int, inChannels cin: Int, height h: Int, width w: Int,
    weights: StridedWinogradWeights, bias: UnsafePointer<Float>,
    y: UnsafeMutablePointer<Float>, workspace: Workspace
) throws {
    let cout = weights.outChannels, k = weights.phaseChannels
    let ho = h / 2, wo = w / 2
    let tilesHigh = (ho + 1) / 2, tilesWide = (wo + 1) / 2
    if ho == 0 || wo == 0 || batch == 0 { return }
    let mark = workspace.mark()
    defer { workspace.release(to: mark) }
    let plan = try WinogradPlan(x, batch: batch, inChannels: cin, outChannels: cout, height: h, width: w, stride: 4,
                                tilesHigh: tilesHigh, tilesWide: tilesWide,
                                scratchFloats: stridedWinogradScratchFloats(inChannels: cin, outChannels: cout),
                                workspace: workspace)
    let split = StridedWinogradTasks.inputSplit(inChannels: cin, tiles: tilesHigh * tilesWide)
    let tasks = StridedWinogradTasks(plan: plan, weights: weights, k: k, ho: ho, wo: wo, y: y, bias: bias,
                                     inputSplit: split)
    if let split = split, runChannelHalves(tasks, split: split) { return }
    runWinogradStages(tasks)
}

/// The tasks of `winogradConv4x4Stride2`: task = (block of output channels, chunk of ≤ 32 tiles).
private struct StridedWinogradTasks: ParallelTasks, WinogradChannelHalves, WinogradInputHalves {
    let plan: WinogradPlan
    let weights: StridedWinogradWeights
    let k: Int
    let ho: Int
    let wo: Int
    let y: UnsafeMutablePointer<Float>
    let bias: UnsafePointer<Float>
    /// Where the input channels split into two sums (`inputSplit(...)`), if they do.
    let inputSplit: Int?

    /// Images of at most one chunk of tiles (a 32-column panel) sum their products over the
    /// input channels as two chains, [0, Cin/2) and [Cin/2, Cin), added at the end, so that
    /// at batch 1 two threads can each take half the input channels (`winogradConv4x4Stride2`)
    /// with the same result as one thread at any batch: with four phases per input channel
    /// the input transform costs more than the products' share a thread saves by splitting
    /// the output channels instead. A function of the shape only.
    static func inputSplit(inChannels cin: Int, tiles: Int) -> Int? {
        guard tiles <= gemmColumnBlock, cin >= 16, cin % 2 == 0 else { return nil }
        return cin / 2
    }

    var transformedFloats: Int { 9 * winogradVPlane(k: k) }
    var positions: [PackedMatrix] { weights.positions }
    var columnsPerChannel: Int { 4 }
    func products(scratch: Int) -> UnsafeMutablePointer<Float> { buffers(thread: scratch).products }

    /// A thread's scratch: V [9][4·Cin][32], products [9][rowsPadded][32], the 6×6 input
    /// window and an output block of Vec16.
    @inline(__always)
    func buffers(thread: Int) -> (products: UnsafeMutablePointer<Float>, window: UnsafeMutablePointer<Vec16>,
                                  block: UnsafeMutablePointer<Vec16>) {
        let (products, window) = plan.buffers(thread: thread, transformedFloats: transformedFloats, positions: 9,
                                              vectors: 36 + 18)
        return (products, window, window + 36)
    }

    @inline(__always)
    func transformInput(n0: Int, width: Int, into v: UnsafeMutablePointer<Float>, thread: Int) {
        transformInput(n0: n0, width: width, channels: 0..<plan.inChannels, into: v, scratch: thread)
    }

    /// `transformInput` of the input channels `channels` only, with the blocks of scratch `scratch`.
    @inline(__always)
    func transformInput(n0: Int, width: Int, channels: Range<Int>, into v: UnsafeMutablePointer<Float>, scratch: Int) {
        let (_, window, block) = buffers(thread: scratch)
        transformWindows(plan, kernel: 6, n0: n0, width: width, channels: channels, blockA: window,
                         blockB: block, into: v, vPlane: winogradVPlane(k: k))
    }

    /// One half of `transformInput`, channel by channel, its tiles read by `loads`.
    @inline(__always)
    func transformHalf<Loads: TileLoads>(_ loads: Loads, half: Int, _ context: InputTransformContext) {
        // Phase (py, px)'s 3×3 sub-window: every other row and column from (py, px).
        transformSubWindows(loads, plan: plan, context, windowSize: 36, rowStep: 12, columnStep: 2,
                            origin: { 6 * ($0 / 2) + $0 % 2 }, positionStride: context.vPlane) { ci, phase in
            context.v + (ci * 4 + phase) * gemmColumnBlock + half * 16
        }
    }

    /// Output channels m0..<m1 of tiles n0..<n1 from the products (plus `second`'s, laid out
    /// alike, when given): Aᵀ M A + bias, written where each tile lies inside its image.
    @inline(__always)
    func transformBack(m0: Int, m1: Int, n0: Int, n1: Int, products: UnsafeMutablePointer<Float>,
                       second: UnsafePointer<Float>?, thread: Int) {
        let width = n1 - n0, tilesWide = plan.tilesWide
        let cout = plan.outChannels, rowsPadded = plan.rowsPadded
        let block = buffers(thread: thread).block
        let tiles = plan.tiles, imageFloats = cout * ho * wo
        let step = rowsPadded * gemmColumnBlock
        for co in m0..<m1 {
            let biasValue = Vec16(repeating: bias[co])
            for half in 0..<((width + 15) / 16) {
                let o = half * 16
                winogradOutput2x2(products + co * gemmColumnBlock + o, second: second.map { $0 + co * gemmColumnBlock + o },
                                  step: step, bias: biasValue, into: block)
                let lanes = min(16, width - o)
                let written = storeTileGroups(tileSize: 2, firstTile: n0 + o, lanes: lanes, tilesWide: tilesWide,
                                              tilesPerImage: tiles, plane: y + co * ho * wo, imageStride: imageFloats,
                                              height: ho, width: wo, accumulate: false) { r, group in
                    Vec16(lowHalf: interleavePairRow(block[2 * r], block[2 * r + 1], group: group), highHalf: SIMD8<Float>())
                }
                for lane in 0..<lanes where written & (1 << lane) == 0 {
                    let t = n0 + o + lane, n = t % tiles
                    let oy = (n / tilesWide) * 2, ox = (n % tilesWide) * 2
                    let p = y + (t / tiles) * imageFloats + co * ho * wo + oy * wo + ox
                    let right = ox + 1 < wo, below = oy + 1 < ho
                    p[0] = block[0][lane]
                    if right { p[1] = block[1][lane] }
                    if below { p[wo] = block[2][lane] }
                    if right && below { p[wo + 1] = block[3][lane] }
                }
            }
        }
    }
}

// MARK: - 4×4 stride-2 transposed convolution by Winograd F(2×2, 2×2) per sub-pixel parity

/// ConvTranspose2d(k 4, stride 2, padding 1) weights as four sub-pixel 2×2 kernels, each in
/// Winograd F(2×2, 2×2) form: parity p = 2·ry + rx, U_{p,ξ} [Cout, Cin] at index 9·p + ξ.
struct TransposedWinogradWeights {
    let positions: [PackedMatrix]
    var outChannels: Int { positions[0].rows }
    var inChannels: Int { positions[0].cols }
}

/// ConvTranspose2d weights [Cin, Cout, 4, 4] → `TransposedWinogradWeights` (float64, rounded once).
func packTransposedWinogradWeights(_ w: UnsafePointer<Float>, inChannels: Int, outChannels: Int,
                                    store: WeightStore? = nil) throws -> TransposedWinogradWeights {
    let count = max(1, outChannels * inChannels)
    let transformed = try MappedFloats(36 * count, "Winograd weights")
    defer { transformed.release() }
    let u = transformed.base
    let g: [[Double]] = [[1, 0], [1, 1], [0, 1]]
    for ry in 0..<2 {
        for rx in 0..<2 {
            let parity = 2 * ry + rx
            for ci in 0..<inChannels {
                for co in 0..<outChannels {
                    // taps[ty][tx] = w[ci, co, subPixelTap(ry, ty), subPixelTap(rx, tx)].
                    @inline(__always) func tap(_ ty: Int, _ tx: Int) -> Double {
                        Double(w[((ci * outChannels + co) * 4 + subPixelTap(ry, ty)) * 4 + subPixelTap(rx, tx)])
                    }
                    for i in 0..<3 {
                        for j in 0..<3 {
                            var v = 0.0
                            for ty in 0..<2 {
                                for tx in 0..<2 { v += g[i][ty] * tap(ty, tx) * g[j][tx] }
                            }
                            u[(9 * parity + i * 3 + j) * count + co * inChannels + ci] = Float(v)
                        }
                    }
                }
            }
        }
    }
    var positions: [PackedMatrix] = []
    for p in 0..<36 {
        positions.append(try PackedMatrix(rows: outChannels, cols: inChannels, source: u + p * count, ld: inChannels, store: store))
    }
    return TransposedWinogradWeights(positions: positions)
}

/// Floats of per-thread scratch for `winogradConvTranspose4x4Stride2`.
func transposedWinogradScratchFloats(inChannels: Int, outChannels: Int) -> Int {
    let rows = ((outChannels + gemmRowBlock - 1) / gemmRowBlock) * gemmRowBlock
    // V [36][Cin][32] (planes `winogradVPlane` apart) + products [36][rows][32] + a 4×4 window and a block of Vec16.
    return 36 * winogradVPlane(k: inChannels) + 36 * rows * gemmColumnBlock + (16 + 18) * 16
}

/// x [B, Cin, H, W] → y [B, Cout, 2H, 2W] (image stride `outputBatchStride`):
/// ConvTranspose2d(k 4, stride 2, padding 1) as four sub-pixel 2×2 convolutions, each by
/// Winograd F(2×2, 2×2).
///
/// Parity (ry, rx) output (i, j) — pixel (2i + ry, 2j + rx) — reads padded input rows
/// i + ry + t, t ∈ {0, 1}. A tile of 2×2 parity outputs at (2TY, 2TX) therefore reads
/// the padded 4×4 window at (2TY, 2TX), rows ry..<ry+3 and columns rx..<rx+3 of it, and
/// all four parities of the tile together fill the 4×4 output block at (4TY, 4TX).
func winogradConvTranspose4x4Stride2(
    _ x: UnsafePointer<Float>, batch: Int, inChannels cin: Int, height h: Int, width w: Int,
    weights: TransposedWinogradWeights, bias: UnsafePointer<Float>,
    y: UnsafeMutablePointer<Float>, outputBatchStride: Int? = nil, workspace: Workspace
) throws {
    let cout = weights.outChannels
    let ho = 2 * h, wo = 2 * w
    let yStride = outputBatchStride ?? cout * ho * wo
    let tilesHigh = (h + 1) / 2, tilesWide = (w + 1) / 2
    if batch == 0 || tilesHigh * tilesWide == 0 { return }
    let mark = workspace.mark()
    defer { workspace.release(to: mark) }
    let plan = try WinogradPlan(x, batch: batch, inChannels: cin, outChannels: cout, height: h, width: w, stride: 2,
                                tilesHigh: tilesHigh, tilesWide: tilesWide,
                                scratchFloats: transposedWinogradScratchFloats(inChannels: cin, outChannels: cout),
                                workspace: workspace)
    runWinogradStages(TransposedWinogradTasks(plan: plan, weights: weights, h: h, w: w, ho: ho, wo: wo,
                                                  yStride: yStride, y: y, bias: bias))
}

/// The tasks of `winogradConvTranspose4x4Stride2`: task = (block of output channels, chunk of ≤ 32 tiles).
private struct TransposedWinogradTasks: ParallelTasks, WinogradStages, WinogradInputHalves {
    let plan: WinogradPlan
    let weights: TransposedWinogradWeights
    let h: Int
    let w: Int
    let ho: Int
    let wo: Int
    let yStride: Int
    let y: UnsafeMutablePointer<Float>
    let bias: UnsafePointer<Float>

    var transformedFloats: Int { 36 * winogradVPlane(k: plan.inChannels) }

    /// A thread's scratch: V [36][Cin][32], products [36][rowsPadded][32], the 4×4 input
    /// window and an output block of Vec16.
    @inline(__always)
    func buffers(thread: Int) -> (products: UnsafeMutablePointer<Float>, window: UnsafeMutablePointer<Vec16>,
                                  block: UnsafeMutablePointer<Vec16>) {
        let (products, window) = plan.buffers(thread: thread, transformedFloats: transformedFloats, positions: 36,
                                              vectors: 16 + 18)
        return (products, window, window + 16)
    }

    @inline(__always)
    func transformInput(n0: Int, width: Int, into v: UnsafeMutablePointer<Float>, thread: Int) {
        let (_, window, block) = buffers(thread: thread)
        transformWindows(plan, kernel: 4, n0: n0, width: width, channels: 0..<plan.inChannels, blockA: window,
                         blockB: block, into: v, vPlane: winogradVPlane(k: plan.inChannels))
    }

    /// One half of `transformInput`, channel by channel, its tiles read by `loads`.
    @inline(__always)
    func transformHalf<Loads: TileLoads>(_ loads: Loads, half: Int, _ context: InputTransformContext) {
        // Output phase (ry, rx)'s 3×3 sub-window: rows ry..., columns rx... of the 4×4 window.
        transformSubWindows(loads, plan: plan, context, windowSize: 16, rowStep: 4, columnStep: 1,
                            origin: { 4 * ($0 / 2) + $0 % 2 }, positionStride: context.vPlane) { ci, phase in
            context.v + 9 * phase * context.vPlane + ci * gemmColumnBlock + half * 16
        }
    }

    @inline(__always)
    func multiplyAndTransformBack(m0: Int, m1: Int, n0: Int, n1: Int, v: UnsafeMutablePointer<Float>, thread: Int) {
        let width = n1 - n0, tilesWide = plan.tilesWide
        let cin = plan.inChannels, rowsPadded = plan.rowsPadded
        let (products, _, block) = buffers(thread: thread)
        let vPlane = winogradVPlane(k: cin)
        winogradPositionProducts(weights.positions, k: cin, v: v, vPlane: vPlane, products: products,
                                 rowsPadded: rowsPadded, m0: m0, m1: m1, width: width)
        let tiles = plan.tiles
        let step = rowsPadded * gemmColumnBlock
        for co in m0..<m1 {
            let biasValue = Vec16(repeating: bias[co])
            for half in 0..<((width + 15) / 16) {
                let o = half * 16
                // block[4·parity + 2a + b] = output (a, b) of that parity for 16 tiles.
                for parity in 0..<4 {
                    winogradOutput2x2(products + (9 * parity * rowsPadded + co) * gemmColumnBlock + o, step: step,
                                      bias: biasValue, into: block + 4 * parity)
                }
                // Each tile's output block is 4×4 pixels; column 2b + rx of its row 2a + ry is
                // parity (ry, rx)'s output (a, b).
                let lanes = min(16, width - o)
                let written = storeTileGroups(tileSize: 4, firstTile: n0 + o, lanes: lanes, tilesWide: tilesWide,
                                              tilesPerImage: tiles, plane: y + co * ho * wo, imageStride: yStride,
                                              height: ho, width: wo, accumulate: false) { r, group in
                    let a = r >> 1, ry = r & 1
                    let even = block + 4 * (2 * ry) + 2 * a, odd = block + 4 * (2 * ry + 1) + 2 * a
                    return interleaveTileRow(even[0], odd[0], even[1], odd[1], group: group)
                }
                for lane in 0..<lanes where written & (1 << lane) == 0 {
                    let t = n0 + o + lane, n = t % tiles
                    let ty = n / tilesWide, tx = n % tilesWide
                    // Parity output (2ty + a, 2tx + b) is pixel (4ty + 2a + ry, 4tx + 2b + rx).
                    let rows = min(4, ho - 4 * ty), cols = min(4, wo - 4 * tx)
                    let p = y + (t / tiles) * yStride + co * ho * wo + 4 * ty * wo + 4 * tx
                    for r in 0..<rows {
                        let a = r >> 1, ry = r & 1
                        for c in 0..<cols {
                            let bb = c >> 1, rx = c & 1
                            p[r * wo + c] = block[4 * (2 * ry + rx) + 2 * a + bb][lane]
                        }
                    }
                }
            }
        }
    }
}
