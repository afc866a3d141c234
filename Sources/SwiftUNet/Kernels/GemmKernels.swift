/// Single-precision matrix multiply kernels.
///
/// All matrices are row-major. The weight operand `A` [M, K] is packed once
/// (when weights are loaded) into `PackedMatrix`; the data operand `B` [K, N]
/// is packed panel by panel while the product runs, by a `PanelSource` that
/// may build it on the fly (an implicit im2col for convolutions).
///
/// Arithmetic contract (what makes results independent of threads and batch):
/// every output element is computed as
///     c = rowBias[m] (+ C_old when accumulating), then c = fma(A[m,k], B[k,n], c) for k = 0..<K in order,
/// by the same instructions whatever the tile, task or thread it falls in.

import SwiftUNetSupport

/// Rows of A per micro-tile (hidden sizes are multiples of 8, so no waste there).
let gemmRowBlock = 8
/// Columns of B per micro-tile: two SIMD16 vectors.
let gemmColumnBlock = 32
/// K rows per packed B block: a 256×32 B panel (32 KB) stays in L1 while the
/// A panels of the block (M×256 floats) stay in L2.
let gemmDepthBlock = 256
/// Columns of B per task (multiple of `gemmColumnBlock`).
let gemmTaskColumns = 128

typealias Vec16 = SIMD16<Float>

/// A hint to bring the cache line holding `p` into L1 (no fault if `p` is not mapped).
@inline(__always) func prefetchForRead(_ p: UnsafeRawPointer) { swiftunet_prefetch_read(p) }

@inline(__always) func load16(_ p: UnsafePointer<Float>) -> Vec16 {
    UnsafeRawPointer(p).loadUnaligned(as: Vec16.self)
}
@inline(__always) func store16(_ v: Vec16, _ p: UnsafeMutablePointer<Float>) {
    UnsafeMutableRawPointer(p).storeBytes(of: v, as: Vec16.self)
}
/// p[0..<count] in the first lanes, zeros after (count in 0...16): a vector from the end
/// of a run, without reading past it.
@inline(__always) func loadPrefix16(_ p: UnsafePointer<Float>, count: Int) -> Vec16 {
    var v = Vec16()
    for lane in 0..<count { v[lane] = p[lane] }
    return v
}
/// p[0..<count] = v's first `count` lanes (count in 0...16).
@inline(__always) func storePrefix16(_ v: Vec16, _ p: UnsafeMutablePointer<Float>, count: Int) {
    for lane in 0..<count { p[lane] = v[lane] }
}
/// 0, 1, ..., 15: compared with a lane count, it gives the mask of the lanes before or after it.
@inline(__always) var laneIndices16: SIMD16<Int32> {
    SIMD16<Int32>(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
}

/// A weight matrix A [rows, cols] prepared for `gemm`: panels of 8 rows, each
/// stored k-major ([cols][8]), rows past the end zero-filled.
public final class PackedMatrix {
    public let rows: Int
    public let cols: Int
    let data: UnsafeMutablePointer<Float>
    /// Number of 8-row panels.
    let panels: Int

    /// The store `data` was carved from (nil: `data` is an allocation of its own).
    private let store: WeightStore?
    /// False when `data` is a caller's buffer (a workspace), which the caller frees.
    private let ownsData: Bool

    /// Packs `source` [rows, cols] with leading dimension `ld` (>= cols), into `store` when given.
    init(rows: Int, cols: Int, source: UnsafePointer<Float>, ld: Int, store: WeightStore? = nil) throws {
        self.rows = rows
        self.cols = cols
        panels = (rows + gemmRowBlock - 1) / gemmRowBlock
        let count = max(1, panels * gemmRowBlock * cols)
        data = try store?.floats(count, "packed weights") ?? allocateFloatsOrThrow(count, "packed weights")
        self.store = store
        ownsData = true
        data.initialize(repeating: 0, count: count)
        for r in 0..<rows {
            let panel = data + (r / gemmRowBlock) * gemmRowBlock * cols
            let lane = r % gemmRowBlock
            for k in 0..<cols { panel[k * gemmRowBlock + lane] = source[r * ld + k] }
        }
    }

    /// A view of `packed`, already in this layout (`floatCount(rows:cols:)` floats owned and
    /// kept alive by the caller).
    init(rows: Int, cols: Int, packed: UnsafeMutablePointer<Float>) {
        self.rows = rows
        self.cols = cols
        panels = (rows + gemmRowBlock - 1) / gemmRowBlock
        data = packed
        store = nil
        ownsData = false
    }

    /// Floats a packed [rows, cols] matrix occupies.
    static func floatCount(rows: Int, cols: Int) -> Int {
        max(1, ((rows + gemmRowBlock - 1) / gemmRowBlock) * gemmRowBlock * cols)
    }

    /// Packs A [rows, cols], element (r, k) at `source[r·rowStride + k·colStride]`, into
    /// `buffer` (`floatCount(rows:cols:)` floats, owned and kept alive by the caller).
    /// With rowStride 1 this packs the transpose of a row-major matrix.
    init(rows: Int, cols: Int, source: UnsafePointer<Float>, rowStride: Int, colStride: Int,
         buffer: UnsafeMutablePointer<Float>) {
        self.rows = rows
        self.cols = cols
        panels = (rows + gemmRowBlock - 1) / gemmRowBlock
        data = buffer
        store = nil
        ownsData = false
        // Each panel written in order, k by k: the eight source rows are eight streams.
        let packPanel = { (p: Int) in
            let panel = buffer + p * gemmRowBlock * cols
            let live = min(gemmRowBlock, rows - p * gemmRowBlock)
            let first = source + p * gemmRowBlock * rowStride
            if live == gemmRowBlock && colStride == 1 {
                let r0 = first, r1 = first + rowStride, r2 = first + 2 * rowStride, r3 = first + 3 * rowStride
                let r4 = first + 4 * rowStride, r5 = first + 5 * rowStride, r6 = first + 6 * rowStride
                let r7 = first + 7 * rowStride
                var dst = panel
                for k in 0..<cols {
                    dst[0] = r0[k]; dst[1] = r1[k]; dst[2] = r2[k]; dst[3] = r3[k]
                    dst[4] = r4[k]; dst[5] = r5[k]; dst[6] = r6[k]; dst[7] = r7[k]
                    dst += gemmRowBlock
                }
                return
            }
            for k in 0..<cols {
                let column = first + k * colStride
                let dst = panel + k * gemmRowBlock
                for lane in 0..<live { dst[lane] = column[lane * rowStride] }
                for lane in live..<gemmRowBlock { dst[lane] = 0 }
            }
        }
        if panels * cols >= 4096 {
            ThreadPool.shared.parallelFor(panels) { packPanel($0) }
        } else {
            for p in 0..<panels { packPanel(p) }
        }
    }

    deinit {
        if store == nil && ownsData { freeFloats(data) }
    }

    /// Element (r, k) of the original matrix (for tests and slow paths).
    func element(_ r: Int, _ k: Int) -> Float {
        data[(r / gemmRowBlock) * gemmRowBlock * cols + k * gemmRowBlock + r % gemmRowBlock]
    }
}

/// Something that can write a block of the B operand in packed panel form.
protocol PanelSource {
    /// Writes B rows [k0, k0+kc) × columns [n0, n0+width) (width <= 32) into
    /// `dst` [kc][32], zero-filling columns width..<32.
    func packPanel(k0: Int, kc: Int, n0: Int, width: Int, into dst: UnsafeMutablePointer<Float>)
}

/// B is a plain row-major matrix [K, N] with leading dimension `ld`.
struct DenseSource: PanelSource {
    let b: UnsafePointer<Float>
    let ld: Int

    @inline(__always)
    func packPanel(k0: Int, kc: Int, n0: Int, width: Int, into dst: UnsafeMutablePointer<Float>) {
        var src = b + k0 * ld + n0
        var d = dst
        if width == gemmColumnBlock {
            for _ in 0..<kc {
                store16(load16(src), d)
                store16(load16(src + 16), d + 16)
                src += ld
                d += gemmColumnBlock
            }
        } else {
            for _ in 0..<kc {
                d.update(from: src, count: width)
                (d + width).update(repeating: 0, count: gemmColumnBlock - width)
                src += ld
                d += gemmColumnBlock
            }
        }
    }
}

/// Where a micro-tile's sums start.
enum TileStart {
    /// The values in C (a later k block continues them).
    case current
    /// +0: C's old values are not read (with `addToOld` they are added at the end).
    case zero
    /// Each row's bias (0 without one), plus C's old value when `onOld`: the values
    /// `bias[r]` or `C += bias[r]` would leave in C, without writing them there first.
    case bias(UnsafePointer<Float>?, onOld: Bool)

    /// Row r's start at p, as many lanes as the accumulator has (16 or 8).
    @inline(__always)
    func value<V: SIMD>(_ p: UnsafeMutablePointer<Float>, row r: Int) -> V where V.Scalar == Float {
        switch self {
        case .current: return UnsafeRawPointer(p).loadUnaligned(as: V.self)
        case .zero: return V()
        case .bias(let bias, let onOld):
            let b = V(repeating: bias?[r] ?? 0)
            return onOld ? UnsafeRawPointer(p).loadUnaligned(as: V.self) + b : b
        }
    }
}

/// The tile kernels below (`microKernel8x32`, `microKernel8x16`, `microKernel16x16`) have one
/// meaning in every build: C tile = start + A panel · B panel, each element's products summed by
/// fused multiply-adds for k ascending. How a tile is cut into register blocks depends on the
/// instruction set the library is compiled for (Package.swift defines one SWIFTUNET_ISA_* flag):
/// - AVX-512 (32 zmm registers): the whole tile in 16 or 32 SIMD16 accumulators.
/// - every other target (AVX2+FMA and baseline x86-64 with 16 ymm/xmm registers, arm64 NEON with
///   32 q registers): blocks of SIMD8 accumulators that fit 16 ymm (4×24: 12 accumulators; 8×8
///   and 4×16: 8), see `NarrowKernels` and `eightRowBlock`.
/// The block changes which registers hold a sum, never the sum's operations or their order,
/// so every variant's GEMM gives the same bits, whatever the thread count.

/// The micro-kernels' store: the sum itself, or with `addToOld` the old value plus the sum
/// (a product over a second range of k kept as its own chain, then added: see
/// `winogradPositionProducts`).
@inline(__always)
func finishTile<V: SIMD>(_ v: V, _ p: UnsafeMutablePointer<Float>, addToOld: Bool) where V.Scalar == Float {
    UnsafeMutableRawPointer(p).storeBytes(of: addToOld ? UnsafeRawPointer(p).loadUnaligned(as: V.self) + v : v,
                                          as: V.self)
}

/// Rows 8 × one vector of columns (16 lanes: AVX-512's 8×16 tile; 8 lanes: the last 8
/// columns of a narrow 8×32 tile): C[8, lanes] (row stride ldc) = start + A panel [kc][8] ·
/// B [kc][lanes] (row stride `gemmColumnBlock`), eight accumulators.
@inline(__always)
func eightRowBlock<V: SIMD>(_ kc: Int, _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>,
                            _ c: UnsafeMutablePointer<Float>, _ ldc: Int, start: TileStart, addToOld: Bool,
                            prefetchAhead: Int, lanes: V.Type) where V.Scalar == Float {
    @inline(__always) func initial(_ r: Int) -> V { start.value(c + r * ldc, row: r) }
    @inline(__always) func store(_ v: V, _ r: Int) { finishTile(v, c + r * ldc, addToOld: addToOld) }
    var c0 = initial(0), c1 = initial(1), c2 = initial(2), c3 = initial(3)
    var c4 = initial(4), c5 = initial(5), c6 = initial(6), c7 = initial(7)
    var pa = a, pb = b
    for _ in 0..<kc {
        if prefetchAhead > 0 { prefetchForRead(pa + prefetchAhead) }
        let b0 = UnsafeRawPointer(pb).loadUnaligned(as: V.self)
        c0.addProduct(V(repeating: pa[0]), b0)
        c1.addProduct(V(repeating: pa[1]), b0)
        c2.addProduct(V(repeating: pa[2]), b0)
        c3.addProduct(V(repeating: pa[3]), b0)
        c4.addProduct(V(repeating: pa[4]), b0)
        c5.addProduct(V(repeating: pa[5]), b0)
        c6.addProduct(V(repeating: pa[6]), b0)
        c7.addProduct(V(repeating: pa[7]), b0)
        pa += gemmRowBlock
        pb += gemmColumnBlock
    }
    store(c0, 0); store(c1, 1); store(c2, 2); store(c3, 3)
    store(c4, 4); store(c5, 5); store(c6, 6); store(c7, 7)
}

#if SWIFTUNET_ISA_AVX512

/// 8×32 micro-kernel: C[8, 32] (row stride ldc) += A panel [kc][8] · B panel [kc][32].
/// Sixteen SIMD16 accumulators stay in registers over the whole k loop. The sums start
/// from `start`; with `addToOld` (and start `.zero`) C becomes old C + sum (`finishTile`).
///
/// With `prefetchAhead` > 0, each k step also asks for A's data that many floats further
/// on: the panel of the next call (`nextPanelFloats`). The packed weights of a whole model
/// outgrow L2, and each panel is read once per call in one 4 KiB-page-crossing stream,
/// which the hardware prefetchers pick up late.
@inline(__always)
func microKernel8x32(_ kc: Int, _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>,
                     _ c: UnsafeMutablePointer<Float>, _ ldc: Int, start: TileStart = .current, addToOld: Bool = false,
                     prefetchAhead: Int = 0) {
    @inline(__always) func initial(_ p: UnsafeMutablePointer<Float>, _ r: Int) -> Vec16 { start.value(p, row: r) }
    @inline(__always) func store16(_ v: Vec16, _ p: UnsafeMutablePointer<Float>) { finishTile(v, p, addToOld: addToOld) }
    var c00 = initial(c, 0), c01 = initial(c + 16, 0)
    var c10 = initial(c + ldc, 1), c11 = initial(c + ldc + 16, 1)
    var c20 = initial(c + 2 * ldc, 2), c21 = initial(c + 2 * ldc + 16, 2)
    var c30 = initial(c + 3 * ldc, 3), c31 = initial(c + 3 * ldc + 16, 3)
    var c40 = initial(c + 4 * ldc, 4), c41 = initial(c + 4 * ldc + 16, 4)
    var c50 = initial(c + 5 * ldc, 5), c51 = initial(c + 5 * ldc + 16, 5)
    var c60 = initial(c + 6 * ldc, 6), c61 = initial(c + 6 * ldc + 16, 6)
    var c70 = initial(c + 7 * ldc, 7), c71 = initial(c + 7 * ldc + 16, 7)
    var pa = a, pb = b
    for _ in 0..<kc {
        if prefetchAhead > 0 { prefetchForRead(pa + prefetchAhead) }
        let b0 = load16(pb), b1 = load16(pb + 16)
        var s = Vec16(repeating: pa[0]); c00.addProduct(s, b0); c01.addProduct(s, b1)
        s = Vec16(repeating: pa[1]); c10.addProduct(s, b0); c11.addProduct(s, b1)
        s = Vec16(repeating: pa[2]); c20.addProduct(s, b0); c21.addProduct(s, b1)
        s = Vec16(repeating: pa[3]); c30.addProduct(s, b0); c31.addProduct(s, b1)
        s = Vec16(repeating: pa[4]); c40.addProduct(s, b0); c41.addProduct(s, b1)
        s = Vec16(repeating: pa[5]); c50.addProduct(s, b0); c51.addProduct(s, b1)
        s = Vec16(repeating: pa[6]); c60.addProduct(s, b0); c61.addProduct(s, b1)
        s = Vec16(repeating: pa[7]); c70.addProduct(s, b0); c71.addProduct(s, b1)
        pa += gemmRowBlock
        pb += gemmColumnBlock
    }
    store16(c00, c); store16(c01, c + 16)
    store16(c10, c + ldc); store16(c11, c + ldc + 16)
    store16(c20, c + 2 * ldc); store16(c21, c + 2 * ldc + 16)
    store16(c30, c + 3 * ldc); store16(c31, c + 3 * ldc + 16)
    store16(c40, c + 4 * ldc); store16(c41, c + 4 * ldc + 16)
    store16(c50, c + 5 * ldc); store16(c51, c + 5 * ldc + 16)
    store16(c60, c + 6 * ldc); store16(c61, c + 6 * ldc + 16)
    store16(c70, c + 7 * ldc); store16(c71, c + 7 * ldc + 16)
}

/// 8×16 micro-kernel for panels with at most 16 live columns (same arithmetic per lane).
@inline(__always)
func microKernel8x16(_ kc: Int, _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>,
                     _ c: UnsafeMutablePointer<Float>, _ ldc: Int, start: TileStart = .current, addToOld: Bool = false,
                     prefetchAhead: Int = 0) {
    eightRowBlock(kc, a, b, c, ldc, start: start, addToOld: addToOld, prefetchAhead: prefetchAhead, lanes: Vec16.self)
}

/// 16×16 micro-kernel for panels with at most 16 live columns: two 8-row A panels
/// (`a0` rows 0..<8, `a1` rows 8..<16) so that 16 independent FMA chains cover the
/// FMA latency (the 8×16 kernel's 8 chains run at about half the rate). Same
/// per-lane arithmetic as the other kernels.
@inline(__always)
func microKernel16x16(_ kc: Int, _ a0: UnsafePointer<Float>, _ a1: UnsafePointer<Float>, _ b: UnsafePointer<Float>,
                      _ c: UnsafeMutablePointer<Float>, _ ldc: Int, start: TileStart = .current, addToOld: Bool = false,
                      prefetchAhead: Int = 0) {
    @inline(__always) func initial(_ p: UnsafeMutablePointer<Float>, _ r: Int) -> Vec16 { start.value(p, row: r) }
    @inline(__always) func store16(_ v: Vec16, _ p: UnsafeMutablePointer<Float>) { finishTile(v, p, addToOld: addToOld) }
    var c0 = initial(c, 0), c1 = initial(c + ldc, 1), c2 = initial(c + 2 * ldc, 2), c3 = initial(c + 3 * ldc, 3)
    var c4 = initial(c + 4 * ldc, 4), c5 = initial(c + 5 * ldc, 5), c6 = initial(c + 6 * ldc, 6), c7 = initial(c + 7 * ldc, 7)
    let d = c + 8 * ldc
    var d0 = initial(d, 8), d1 = initial(d + ldc, 9), d2 = initial(d + 2 * ldc, 10), d3 = initial(d + 3 * ldc, 11)
    var d4 = initial(d + 4 * ldc, 12), d5 = initial(d + 5 * ldc, 13), d6 = initial(d + 6 * ldc, 14), d7 = initial(d + 7 * ldc, 15)
    // Two panels' worth of A per call: one cache line of the next call's per k step.
    var pa = a0, qa = a1, pb = b, ahead = a0 + prefetchAhead
    for _ in 0..<kc {
        if prefetchAhead > 0 { prefetchForRead(ahead); ahead += 16 }
        let b0 = load16(pb)
        c0.addProduct(Vec16(repeating: pa[0]), b0)
        c1.addProduct(Vec16(repeating: pa[1]), b0)
        c2.addProduct(Vec16(repeating: pa[2]), b0)
        c3.addProduct(Vec16(repeating: pa[3]), b0)
        c4.addProduct(Vec16(repeating: pa[4]), b0)
        c5.addProduct(Vec16(repeating: pa[5]), b0)
        c6.addProduct(Vec16(repeating: pa[6]), b0)
        c7.addProduct(Vec16(repeating: pa[7]), b0)
        d0.addProduct(Vec16(repeating: qa[0]), b0)
        d1.addProduct(Vec16(repeating: qa[1]), b0)
        d2.addProduct(Vec16(repeating: qa[2]), b0)
        d3.addProduct(Vec16(repeating: qa[3]), b0)
        d4.addProduct(Vec16(repeating: qa[4]), b0)
        d5.addProduct(Vec16(repeating: qa[5]), b0)
        d6.addProduct(Vec16(repeating: qa[6]), b0)
        d7.addProduct(Vec16(repeating: qa[7]), b0)
        pa += gemmRowBlock
        qa += gemmRowBlock
        pb += gemmColumnBlock
    }
    store16(c0, c); store16(c1, c + ldc); store16(c2, c + 2 * ldc); store16(c3, c + 3 * ldc)
    store16(c4, c + 4 * ldc); store16(c5, c + 5 * ldc); store16(c6, c + 6 * ldc); store16(c7, c + 7 * ldc)
    store16(d0, d); store16(d1, d + ldc); store16(d2, d + 2 * ldc); store16(d3, d + 3 * ldc)
    store16(d4, d + 4 * ldc); store16(d5, d + 5 * ldc); store16(d6, d + 6 * ldc); store16(d7, d + 7 * ldc)
}

#else

typealias Vec8 = SIMD8<Float>

@inline(__always) func load8(_ p: UnsafePointer<Float>) -> Vec8 {
    UnsafeRawPointer(p).loadUnaligned(as: Vec8.self)
}

/// Register blocks for targets with 16 vector registers of 8 lanes (AVX2) or 32 of 4 (NEON).
/// Each block covers some rows and columns of one tile: `a` points at its first row's lane
/// in an 8-row A panel ([kc][8]), `b` at its first column in a 32-column B panel ([kc][32]),
/// `c` at its first element in C (row stride ldc); `firstRow` is that row's index in the
/// tile (for the bias). When `prefetch` is given, each k step hints the cache line at
/// `prefetch + k·prefetchStep` (the next tile call's A panel).
enum NarrowKernels {
    /// Rows 4 × columns 24: twelve accumulators, three B vectors and one broadcast (16 ymm).
    @inline(__always)
    static func block4x24(_ kc: Int, _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>,
                          _ c: UnsafeMutablePointer<Float>, _ ldc: Int, firstRow r0: Int,
                          start: TileStart, addToOld: Bool,
                          prefetch: UnsafePointer<Float>? = nil, prefetchStep: Int = 0) {
        @inline(__always) func initial(_ p: UnsafeMutablePointer<Float>, _ r: Int) -> Vec8 { start.value(p, row: r0 + r) }
        @inline(__always) func store(_ v: Vec8, _ p: UnsafeMutablePointer<Float>) { finishTile(v, p, addToOld: addToOld) }
        let c1 = c + ldc, c2 = c + 2 * ldc, c3 = c + 3 * ldc
        var s00 = initial(c, 0), s01 = initial(c + 8, 0), s02 = initial(c + 16, 0)
        var s10 = initial(c1, 1), s11 = initial(c1 + 8, 1), s12 = initial(c1 + 16, 1)
        var s20 = initial(c2, 2), s21 = initial(c2 + 8, 2), s22 = initial(c2 + 16, 2)
        var s30 = initial(c3, 3), s31 = initial(c3 + 8, 3), s32 = initial(c3 + 16, 3)
        var pa = a, pb = b, ahead = prefetch
        for _ in 0..<kc {
            if let p = ahead { prefetchForRead(p); ahead = p + prefetchStep }
            let b0 = load8(pb), b1 = load8(pb + 8), b2 = load8(pb + 16)
            var s = Vec8(repeating: pa[0]); s00.addProduct(s, b0); s01.addProduct(s, b1); s02.addProduct(s, b2)
            s = Vec8(repeating: pa[1]); s10.addProduct(s, b0); s11.addProduct(s, b1); s12.addProduct(s, b2)
            s = Vec8(repeating: pa[2]); s20.addProduct(s, b0); s21.addProduct(s, b1); s22.addProduct(s, b2)
            s = Vec8(repeating: pa[3]); s30.addProduct(s, b0); s31.addProduct(s, b1); s32.addProduct(s, b2)
            pa += gemmRowBlock
            pb += gemmColumnBlock
        }
        store(s00, c); store(s01, c + 8); store(s02, c + 16)
        store(s10, c1); store(s11, c1 + 8); store(s12, c1 + 16)
        store(s20, c2); store(s21, c2 + 8); store(s22, c2 + 16)
        store(s30, c3); store(s31, c3 + 8); store(s32, c3 + 16)
    }

    /// Rows 4 × columns 16: eight accumulators.
    @inline(__always)
    static func block4x16(_ kc: Int, _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>,
                          _ c: UnsafeMutablePointer<Float>, _ ldc: Int, firstRow r0: Int,
                          start: TileStart, addToOld: Bool,
                          prefetch: UnsafePointer<Float>? = nil, prefetchStep: Int = 0) {
        @inline(__always) func initial(_ p: UnsafeMutablePointer<Float>, _ r: Int) -> Vec8 { start.value(p, row: r0 + r) }
        @inline(__always) func store(_ v: Vec8, _ p: UnsafeMutablePointer<Float>) { finishTile(v, p, addToOld: addToOld) }
        let c1 = c + ldc, c2 = c + 2 * ldc, c3 = c + 3 * ldc
        var s00 = initial(c, 0), s01 = initial(c + 8, 0)
        var s10 = initial(c1, 1), s11 = initial(c1 + 8, 1)
        var s20 = initial(c2, 2), s21 = initial(c2 + 8, 2)
        var s30 = initial(c3, 3), s31 = initial(c3 + 8, 3)
        var pa = a, pb = b, ahead = prefetch
        for _ in 0..<kc {
            if let p = ahead { prefetchForRead(p); ahead = p + prefetchStep }
            let b0 = load8(pb), b1 = load8(pb + 8)
            var s = Vec8(repeating: pa[0]); s00.addProduct(s, b0); s01.addProduct(s, b1)
            s = Vec8(repeating: pa[1]); s10.addProduct(s, b0); s11.addProduct(s, b1)
            s = Vec8(repeating: pa[2]); s20.addProduct(s, b0); s21.addProduct(s, b1)
            s = Vec8(repeating: pa[3]); s30.addProduct(s, b0); s31.addProduct(s, b1)
            pa += gemmRowBlock
            pb += gemmColumnBlock
        }
        store(s00, c); store(s01, c + 8)
        store(s10, c1); store(s11, c1 + 8)
        store(s20, c2); store(s21, c2 + 8)
        store(s30, c3); store(s31, c3 + 8)
    }
}

/// 8×32 tile: C[8, 32] (row stride ldc) += A panel [kc][8] · B panel [kc][32], as rows 0..<4
/// and 4..<8 of columns 0..<24, then all rows of columns 24..<32. Sums start from `start`;
/// with `addToOld` C becomes old C + sum. `prefetchAhead`: as in the AVX-512 kernel.
@inline(__always)
func microKernel8x32(_ kc: Int, _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>,
                     _ c: UnsafeMutablePointer<Float>, _ ldc: Int, start: TileStart = .current, addToOld: Bool = false,
                     prefetchAhead: Int = 0) {
    NarrowKernels.block4x24(kc, a, b, c, ldc, firstRow: 0, start: start, addToOld: addToOld,
                            prefetch: prefetchAhead > 0 ? a + prefetchAhead : nil, prefetchStep: gemmRowBlock)
    NarrowKernels.block4x24(kc, a + 4, b, c + 4 * ldc, ldc, firstRow: 4, start: start, addToOld: addToOld)
    eightRowBlock(kc, a, b + 24, c + 24, ldc, start: start, addToOld: addToOld, prefetchAhead: 0, lanes: Vec8.self)
}

/// 8×16 tile for panels with at most 16 live columns: rows 0..<4, then 4..<8.
@inline(__always)
func microKernel8x16(_ kc: Int, _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>,
                     _ c: UnsafeMutablePointer<Float>, _ ldc: Int, start: TileStart = .current, addToOld: Bool = false,
                     prefetchAhead: Int = 0) {
    NarrowKernels.block4x16(kc, a, b, c, ldc, firstRow: 0, start: start, addToOld: addToOld,
                            prefetch: prefetchAhead > 0 ? a + prefetchAhead : nil, prefetchStep: gemmRowBlock)
    NarrowKernels.block4x16(kc, a + 4, b, c + 4 * ldc, ldc, firstRow: 4, start: start, addToOld: addToOld)
}

/// 16×16 tile from two 8-row A panels (`a0` rows 0..<8, `a1` rows 8..<16): four 4×16 blocks.
@inline(__always)
func microKernel16x16(_ kc: Int, _ a0: UnsafePointer<Float>, _ a1: UnsafePointer<Float>, _ b: UnsafePointer<Float>,
                      _ c: UnsafeMutablePointer<Float>, _ ldc: Int, start: TileStart = .current, addToOld: Bool = false,
                      prefetchAhead: Int = 0) {
    // Two panels' worth of A per call: one cache line of the next call's per k step.
    NarrowKernels.block4x16(kc, a0, b, c, ldc, firstRow: 0, start: start, addToOld: addToOld,
                            prefetch: prefetchAhead > 0 ? a0 + prefetchAhead : nil, prefetchStep: 16)
    NarrowKernels.block4x16(kc, a0 + 4, b, c + 4 * ldc, ldc, firstRow: 4, start: start, addToOld: addToOld)
    let d = c + 8 * ldc
    NarrowKernels.block4x16(kc, a1, b, d, ldc, firstRow: 8, start: start, addToOld: addToOld)
    NarrowKernels.block4x16(kc, a1 + 4, b, d + 4 * ldc, ldc, firstRow: 12, start: start, addToOld: addToOld)
}

#endif

/// The distance in a `PackedMatrix` of k columns from an 8-row panel to the next one: the
/// micro-kernels' `prefetchAhead` (twice that for the 16-row kernel).
@inline(__always)
func nextPanelFloats(k: Int) -> Int { gemmRowBlock * k }

/// Floats of per-thread scratch `gemmTile` needs: one packed B panel plus an edge tile.
let gemmScratchFloats = gemmDepthBlock * gemmColumnBlock + gemmRowBlock * gemmColumnBlock

/// One task of a GEMM: C rows [m0, m1) × columns [n0, n1) of C [M, N] = A · B (+ C) + rowBias.
///
/// c [M, ldc] → c; B comes from `source`; `scratch` holds `gemmScratchFloats`.
/// m0 is a multiple of 8; any column range works (B is packed one 32-column panel at a time).
@inline(__always)
func gemmTile<Source: PanelSource>(
    _ a: PackedMatrix, source: Source, m0: Int, m1: Int, n0: Int, n1: Int,
    c: UnsafeMutablePointer<Float>, ldc: Int,
    rowBias: UnsafePointer<Float>?, accumulate: Bool, scratch: UnsafeMutablePointer<Float>
) {
    let k = a.cols
    let packedB = scratch
    let edge = scratch + gemmDepthBlock * gemmColumnBlock
    let width = n1 - n0
    // Start value of every element: bias (+ the old C); the k loop continues from it. The
    // micro-kernels take it in registers on the first k block (`TileStart.bias`); a pass
    // over C first cost a store and a reload of every element per call, and dominated at
    // small k (the 1×1 convolutions). Ragged tiles and k = 0 still set it in C.
    @inline(__always) func start(_ m: Int, rows: Int, _ tile: UnsafeMutablePointer<Float>, cols: Int) {
        for r in 0..<rows {
            let row = tile + r * ldc
            let bias = rowBias?[m + r] ?? 0
            if accumulate {
                for j in 0..<cols { row[j] += bias }
            } else {
                row.update(repeating: bias, count: cols)
            }
        }
    }
    @inline(__always) func kernelStart(_ m: Int, firstBlock: Bool) -> TileStart {
        firstBlock ? .bias(rowBias.map { $0 + m }, onOld: accumulate) : .current
    }
    if k == 0 {
        start(m0, rows: m1 - m0, c + m0 * ldc + n0, cols: width)
        return
    }
    let panelsN = (width + gemmColumnBlock - 1) / gemmColumnBlock
    let nextPanel = nextPanelFloats(k: k)
    var k0 = 0
    while k0 < k {
        let kc = min(gemmDepthBlock, k - k0)
        for p in 0..<panelsN {
            // Pack one 32-column panel (<= 32 KB, stays in L1) and sweep every row panel over it.
            let pn = n0 + p * gemmColumnBlock
            let cols = min(gemmColumnBlock, n1 - pn)
            source.packPanel(k0: k0, kc: kc, n0: pn, width: cols, into: packedB)
            let bPanel = UnsafePointer(packedB)
            var m = m0
            while m < m1 {
                let rows = min(gemmRowBlock, m1 - m)
                let aPanel = UnsafePointer(a.data + (m / gemmRowBlock) * gemmRowBlock * k + k0 * gemmRowBlock)
                let ct = c + m * ldc + pn
                if cols == 16 && m1 - m >= 2 * gemmRowBlock {
                    microKernel16x16(kc, aPanel, aPanel + gemmRowBlock * k, bPanel, ct, ldc,
                                     start: kernelStart(m, firstBlock: k0 == 0), prefetchAhead: 2 * nextPanel)
                    m += 2 * gemmRowBlock
                    continue
                }
                if rows == gemmRowBlock && cols == gemmColumnBlock {
                    microKernel8x32(kc, aPanel, bPanel, ct, ldc, start: kernelStart(m, firstBlock: k0 == 0),
                                    prefetchAhead: nextPanel)
                } else if rows == gemmRowBlock && cols == 16 {
                    microKernel8x16(kc, aPanel, bPanel, ct, ldc, start: kernelStart(m, firstBlock: k0 == 0),
                                    prefetchAhead: nextPanel)
                } else {
                    if k0 == 0 { start(m, rows: rows, ct, cols: cols) }
                    // Ragged tile: run the full kernel on a zero-padded copy.
                    edge.update(repeating: 0, count: gemmRowBlock * gemmColumnBlock)
                    for r in 0..<rows { (edge + r * gemmColumnBlock).update(from: ct + r * ldc, count: cols) }
                    if cols <= 16 {
                        microKernel8x16(kc, aPanel, bPanel, edge, gemmColumnBlock)
                    } else {
                        microKernel8x32(kc, aPanel, bPanel, edge, gemmColumnBlock)
                    }
                    for r in 0..<rows { (ct + r * ldc).update(from: edge + r * gemmColumnBlock, count: cols) }
                }
                m += gemmRowBlock
            }
        }
        k0 += kc
    }
}

/// How a batch of GEMMs with the same A is cut into tasks: per image, column
/// chunks of `gemmTaskColumns`, and row chunks when that alone leaves too few
/// tasks to keep every thread busy. The split never changes any result.
struct GemmSplit {
    let columnChunks: Int
    let rowChunks: Int
    let rowsPerChunk: Int
    let tasksPerImage: Int

    let columnsPerChunk: Int

    /// `tasksPerThread`: how many tasks per thread to aim for (load balance against the
    /// cost of repeating B's packing in every row chunk).
    init(m: Int, n: Int, images: Int, threads: Int, columnsPerChunk: Int = gemmTaskColumns, tasksPerThread: Int = 4) {
        let wanted = tasksPerThread * threads
        // Too few tasks: narrow the column chunks first (no repeated packing), then
        // split rows (each row chunk packs its own copy of B).
        var columns = columnsPerChunk
        if threads > 1 && images * ((n + columns - 1) / columns) < wanted { columns = gemmColumnBlock }
        self.columnsPerChunk = columns
        columnChunks = max(1, (n + columns - 1) / columns)
        let panels = max(1, (m + gemmRowBlock - 1) / gemmRowBlock)
        let have = images * columnChunks
        let rc = threads > 1 && have < wanted ? min(panels, (wanted + have - 1) / have) : 1
        let panelsPerChunk = (panels + rc - 1) / rc
        rowsPerChunk = panelsPerChunk * gemmRowBlock
        rowChunks = (panels + panelsPerChunk - 1) / panelsPerChunk
        tasksPerImage = columnChunks * rowChunks
    }

    /// (rows, columns) of one task of one image.
    @inline(__always)
    func ranges(_ task: Int, m: Int, n: Int) -> (Int, Int, Int, Int) {
        let rc = task % rowChunks, cc = task / rowChunks
        let m0 = rc * rowsPerChunk, n0 = cc * columnsPerChunk
        return (m0, min(m, m0 + rowsPerChunk), n0, min(n, n0 + columnsPerChunk))
    }
}

/// Image i of a batch of same-shaped GEMMs: C_i [M, ldc] = A_i · B_i (+ C_i) + bias_i.
protocol BatchedGemmOperands {
    associatedtype Source: PanelSource
    /// A_i, packed (every A_i has the same shape).
    func a(_ image: Int) -> PackedMatrix
    /// B_i.
    func source(_ image: Int) -> Source
    /// C_i.
    func c(_ image: Int) -> UnsafeMutablePointer<Float>
    /// The row bias added to C_i, if any.
    func bias(_ image: Int) -> UnsafePointer<Float>?
}

/// One A for every image; B_i a dense [K, N] matrix (leading dimension `ld`) at
/// b + i·bStride; C_i at c + i·cStride; bias_i at bias + i·biasStride.
struct DenseOperands: BatchedGemmOperands {
    let weights: PackedMatrix
    let b: UnsafePointer<Float>
    let bStride: Int
    let ld: Int
    let cBase: UnsafeMutablePointer<Float>
    let cStride: Int
    let biasBase: UnsafePointer<Float>?
    let biasStride: Int

    @inline(__always) func a(_ image: Int) -> PackedMatrix { weights }
    @inline(__always) func source(_ image: Int) -> DenseSource { DenseSource(b: b + image * bStride, ld: ld) }
    @inline(__always) func c(_ image: Int) -> UnsafeMutablePointer<Float> { cBase + image * cStride }
    @inline(__always) func bias(_ image: Int) -> UnsafePointer<Float>? { biasBase.map { $0 + image * biasStride } }
}

/// Runs `images` GEMMs in parallel: image i's C = A_i · B_i (+ C) + bias_i, each
/// [M, n] with leading dimension `ldc`, as `operands` gives them.
@inline(__always)
func batchedGemm<Operands: BatchedGemmOperands>(
    _ operands: Operands, n: Int, images: Int, ldc: Int, accumulate: Bool, workspace: Workspace
) throws {
    if images == 0 || n == 0 { return }
    let m = operands.a(0).rows
    if m == 0 { return }
    let pool = ThreadPool.shared
    let threads = pool.threadsFor(images * 4)
    let split = GemmSplit(m: m, n: n, images: images, threads: threads)
    let taskCount = images * split.tasksPerImage
    let maxThreads = pool.threadsFor(taskCount)
    let mark = workspace.mark()
    defer { workspace.release(to: mark) }
    let scratch = try workspace.floats(maxThreads * gemmScratchFloats)
    pool.parallelFor(taskCount, maxThreads: maxThreads,
                     BatchedGemmTasks(operands: operands, split: split, m: m, n: n, ldc: ldc,
                                      accumulate: accumulate, scratch: scratch))
}

/// The tasks of `batchedGemm`: task = (image, block of rows and columns).
private struct BatchedGemmTasks<Operands: BatchedGemmOperands>: ParallelTasks {
    let operands: Operands
    let split: GemmSplit
    let m: Int
    let n: Int
    let ldc: Int
    let accumulate: Bool
    let scratch: UnsafeMutablePointer<Float>

    @inline(__always)
    func run(_ task: Int, thread: Int) {
        let image = task / split.tasksPerImage
        let (m0, m1, n0, n1) = split.ranges(task % split.tasksPerImage, m: m, n: n)
        gemmTile(operands.a(image), source: operands.source(image), m0: m0, m1: m1, n0: n0, n1: n1,
                 c: operands.c(image), ldc: ldc, rowBias: operands.bias(image), accumulate: accumulate,
                 scratch: scratch + thread * gemmScratchFloats)
    }
}

/// C [M, N] = A [M, K] · B [K, N] (+ C when `accumulate`) (+ rowBias[m] per row).
///
/// `b` has leading dimension `ldb`, `c` has `ldc`. Every output element sums
/// its K products in the same order however M and N are split.
func gemm(
    _ a: PackedMatrix, b: UnsafePointer<Float>, ldb: Int, n: Int,
    c: UnsafeMutablePointer<Float>, ldc: Int,
    rowBias: UnsafePointer<Float>?, accumulate: Bool
) throws {
    let workspace = Workspace()
    try batchedGemm(DenseOperands(weights: a, b: b, bStride: 0, ld: ldb, cBase: c, cStride: 0,
                                  biasBase: rowBias, biasStride: 0),
                    n: n, images: 1, ldc: ldc, accumulate: accumulate, workspace: workspace)
}

/// The plain twin of `gemm`: C [M, N] = A [M, K] · B [K, N] (+ C) (+ rowBias).
func gemmPlain(
    m: Int, n: Int, k: Int,
    a: UnsafePointer<Float>, lda: Int,
    b: UnsafePointer<Float>, ldb: Int,
    c: UnsafeMutablePointer<Float>, ldc: Int,
    rowBias: UnsafePointer<Float>?, accumulate: Bool
) {
    for i in 0..<m {
        let crow = c + i * ldc
        let arow = a + i * lda
        if !accumulate { crow.update(repeating: 0, count: n) }
        for p in 0..<k {
            let av = arow[p]
            let brow = b + p * ldb
            for j in 0..<n { crow[j] += av * brow[j] }
        }
        if let bias = rowBias {
            let bv = bias[i]
            for j in 0..<n { crow[j] += bv }
        }
    }
}
