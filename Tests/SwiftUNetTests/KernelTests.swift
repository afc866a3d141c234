import XCTest
@testable import SwiftUNet

/// Each fast kernel against its plain twin, over shapes that are not multiples
/// of the vector width, batch 1 and 1×1 images.
final class KernelTests: XCTestCase {
    func testGemmMatchesPlainLoops() throws {
        for (m, n, k) in [(1, 1, 1), (7, 33, 5), (6, 32, 16), (13, 17, 29), (64, 100, 9), (3, 257, 70), (24, 48, 19), (40, 16, 300)] {
            let a = randomValues(m * k, seed: 1), b = randomValues(k * n, seed: 2)
            let bias = randomValues(m, seed: 3)
            let packed = try a.withUnsafeBufferPointer { try PackedMatrix(rows: m, cols: k, source: $0.baseAddress!, ld: k) }
            for accumulate in [false, true] {
                var fast = randomValues(m * n, seed: 4), plain = fast
                try b.withUnsafeBufferPointer { bp in
                    try bias.withUnsafeBufferPointer { biasp in
                        try fast.withUnsafeMutableBufferPointer { cp in
                            try gemm(packed, b: bp.baseAddress!, ldb: n, n: n, c: cp.baseAddress!, ldc: n,
                                     rowBias: biasp.baseAddress!, accumulate: accumulate)
                        }
                    }
                }
                // Independent definition: C = A·B (+ C) + bias.
                for i in 0..<m {
                    for j in 0..<n {
                        var s: Double = accumulate ? Double(plain[i * n + j]) : 0
                        for p in 0..<k { s += Double(a[i * k + p]) * Double(b[p * n + j]) }
                        plain[i * n + j] = Float(s) + bias[i]
                    }
                }
                assertClose(fast, plain, tolerance: 1e-5, "gemm \(m)x\(n)x\(k) accumulate=\(accumulate)")
            }
        }
    }

    /// The tile kernels of whichever variant this build is (AVX-512's SIMD16 tiles or the
    /// narrow SIMD8 blocks) against a plain loop of fused multiply-adds in k order, bit for bit:
    /// every start (current C, zero, bias, bias on old C), with and without `addToOld`, odd
    /// depths, a row stride wider than the tile, with and without prefetching.
    func testTileKernelsMatchPlainFusedLoops() {
        let ldc = 37
        for kc in [1, 3, 8, 17, 256] {
            let a = randomValues(16 * kc, seed: 40), b = randomValues(gemmColumnBlock * kc, seed: 41)
            let bias = randomValues(16, seed: 42)
            let old = randomValues(16 * ldc, seed: 43)
            // a holds two 8-row panels [kc][8] back to back; b one 32-column panel [kc][32].
            func plain(rows: Int, cols: Int, start: Int, addToOld: Bool) -> [Float] {
                var c = old
                for r in 0..<rows {
                    let panel = (r / 8) * 8 * kc, lane = r % 8
                    for j in 0..<cols {
                        var s: Float
                        switch start {
                        case 0: s = old[r * ldc + j]
                        case 1: s = 0
                        case 2: s = bias[r]
                        default: s = old[r * ldc + j] + bias[r]
                        }
                        for k in 0..<kc { s = s.addingProduct(a[panel + k * 8 + lane], b[k * gemmColumnBlock + j]) }
                        c[r * ldc + j] = addToOld ? old[r * ldc + j] + s : s
                    }
                }
                return c
            }
            for start in 0..<4 {
                for addToOld in start == 1 ? [false, true] : [false] {
                    for prefetch in [0, 8 * kc] {
                        for (rows, cols) in [(8, 32), (8, 16), (16, 16)] {
                            var c = old
                            a.withUnsafeBufferPointer { ap in
                                b.withUnsafeBufferPointer { bp in
                                    bias.withUnsafeBufferPointer { biasp in
                                        c.withUnsafeMutableBufferPointer { cp in
                                            let tileStart: TileStart = [.current, .zero, .bias(biasp.baseAddress!, onOld: false),
                                                                        .bias(biasp.baseAddress!, onOld: true)][start]
                                            let pa = ap.baseAddress!, pb = bp.baseAddress!, pc = cp.baseAddress!
                                            switch (rows, cols) {
                                            case (8, 32):
                                                microKernel8x32(kc, pa, pb, pc, ldc, start: tileStart, addToOld: addToOld,
                                                                prefetchAhead: prefetch)
                                            case (8, 16):
                                                microKernel8x16(kc, pa, pb, pc, ldc, start: tileStart, addToOld: addToOld,
                                                                prefetchAhead: prefetch)
                                            default:
                                                microKernel16x16(kc, pa, pa + 8 * kc, pb, pc, ldc, start: tileStart,
                                                                 addToOld: addToOld, prefetchAhead: prefetch / 2)
                                            }
                                        }
                                    }
                                }
                            }
                            let expected = plain(rows: rows, cols: cols, start: start, addToOld: addToOld)
                            XCTAssertEqual(c, expected, "\(rows)x\(cols) kc=\(kc) start=\(start) addToOld=\(addToOld) [\(BuildInfo.summary)]")
                        }
                    }
                }
            }
        }
    }

    /// The GEMM keeps the arithmetic contract bit for bit on every variant: each element is
    /// bias (+ old C), then fused multiply-adds for k ascending (k beyond one depth block too).
    func testGemmIsFusedMultiplyAddsInKOrder() throws {
        for (m, n, k) in [(1, 1, 1), (7, 33, 5), (17, 16, 300), (24, 70, 257), (9, 15, 2)] {
            let a = randomValues(m * k, seed: 50), b = randomValues(k * n, seed: 51), bias = randomValues(m, seed: 52)
            let packed = try a.withUnsafeBufferPointer { try PackedMatrix(rows: m, cols: k, source: $0.baseAddress!, ld: k) }
            for accumulate in [false, true] {
                let old = randomValues(m * n, seed: 53)
                var fast = old
                try b.withUnsafeBufferPointer { bp in
                    try bias.withUnsafeBufferPointer { biasp in
                        try fast.withUnsafeMutableBufferPointer { cp in
                            try gemm(packed, b: bp.baseAddress!, ldb: n, n: n, c: cp.baseAddress!, ldc: n,
                                     rowBias: biasp.baseAddress!, accumulate: accumulate)
                        }
                    }
                }
                var expected = old
                for i in 0..<m {
                    for j in 0..<n {
                        var s = accumulate ? old[i * n + j] + bias[i] : bias[i]
                        for p in 0..<k { s = s.addingProduct(a[i * k + p], b[p * n + j]) }
                        expected[i * n + j] = s
                    }
                }
                XCTAssertEqual(fast, expected, "gemm \(m)x\(n)x\(k) accumulate=\(accumulate) [\(BuildInfo.summary)]")
            }
        }
    }

    /// Matrices packed into a `WeightStore` hold the same panels as ones with their own
    /// allocation, each 64-byte aligned and apart from the others, one of them larger than a
    /// chunk; they stay readable after the store's last other reference is gone.
    func testPackedMatricesInAWeightStore() throws {
        let shapes = [(1, 1), (9, 7), (16, 33), (8, WeightStore.chunkFloats / 8 + 3), (5, 3)]
        var store: WeightStore? = WeightStore()
        var matrices: [(PackedMatrix, [Float])] = []
        for (i, (rows, cols)) in shapes.enumerated() {
            let source = randomValues(rows * cols, seed: UInt64(20 + i))
            let packed = try source.withUnsafeBufferPointer {
                try PackedMatrix(rows: rows, cols: cols, source: $0.baseAddress!, ld: cols, store: store)
            }
            matrices.append((packed, source))
        }
        store = nil
        var ranges: [(Int, Int)] = []
        for (packed, source) in matrices {
            let start = Int(bitPattern: packed.data)
            XCTAssertEqual(start % 64, 0, "\(packed.rows)x\(packed.cols) alignment")
            ranges.append((start, start + packed.panels * gemmRowBlock * packed.cols * 4))
            let own = try source.withUnsafeBufferPointer {
                try PackedMatrix(rows: packed.rows, cols: packed.cols, source: $0.baseAddress!, ld: packed.cols)
            }
            let count = packed.panels * gemmRowBlock * packed.cols
            XCTAssertTrue((0..<count).allSatisfy { packed.data[$0] == own.data[$0] }, "\(packed.rows)x\(packed.cols) panels")
        }
        ranges.sort { $0.0 < $1.0 }
        for (earlier, later) in zip(ranges, ranges.dropFirst()) { XCTAssertLessThanOrEqual(earlier.1, later.0) }
        let huge = try XCTUnwrap(allocateHugePageFloats(3))
        defer { freeFloats(huge) }
        XCTAssertEqual(Int(bitPattern: huge) % hugePageBytes, 0)
    }

    func testConv2dMatchesNaive() throws {
        let cases: [(b: Int, cin: Int, cout: Int, h: Int, w: Int, k: Int, s: Int, p: Int)] = [
            (1, 1, 1, 1, 1, 1, 1, 0), (1, 3, 8, 1, 1, 3, 1, 1), (2, 3, 5, 7, 9, 3, 1, 1),
            (1, 8, 8, 6, 10, 4, 2, 1), (3, 5, 7, 2, 2, 4, 2, 1), (2, 16, 24, 5, 3, 1, 1, 0),
            (1, 9, 17, 11, 13, 3, 1, 1), (1, 3, 5, 5, 37, 4, 2, 1),
        ]
        for c in cases {
            let g = ConvGeometry(inChannels: c.cin, outChannels: c.cout, height: c.h, width: c.w,
                                 kernel: c.k, stride: c.s, padding: c.p)
            let x = randomValues(c.b * c.cin * c.h * c.w, seed: 5)
            let w = randomValues(c.cout * c.cin * c.k * c.k, seed: 6)
            let bias = randomValues(c.b * c.cout, seed: 7)
            let outCount = c.b * c.cout * g.outHeight * g.outWidth
            let packed = try w.withUnsafeBufferPointer {
                try PackedMatrix(rows: c.cout, cols: c.cin * c.k * c.k, source: $0.baseAddress!, ld: c.cin * c.k * c.k)
            }
            for accumulate in [false, true] {
                for perImage in [false, true] {
                    var fast = randomValues(outCount, seed: 8), plain = fast
                    let ws = Workspace()
                    try conv2dForward(x, batch: c.b, geometry: g, weights: packed, bias: bias,
                                      biasBatchStride: perImage ? c.cout : 0, y: &fast,
                                      accumulate: accumulate, workspace: ws)
                    conv2dNaive(x, batch: c.b, geometry: g, weights: w, bias: bias,
                                biasBatchStride: perImage ? c.cout : 0, y: &plain, accumulate: accumulate)
                    assertClose(fast, plain, tolerance: 1e-5, "conv \(c) acc=\(accumulate) perImage=\(perImage)")
                }
            }
        }
    }

    /// The direct 3×3 kernel of the few-channel convolutions against the plain loops: batch 1
    /// and 3, 1×1 and 2×2 images, widths off the vector width (one vector, a pair, a pair plus
    /// a ragged one), channel counts off the block of 4 output channels.
    func testDirect3x3MatchesNaive() throws {
        let cases: [(b: Int, cin: Int, cout: Int, h: Int, w: Int)] = [
            (1, 1, 1, 1, 1), (3, 3, 5, 2, 2), (1, 3, 32, 7, 9), (2, 32, 3, 5, 37), (1, 5, 1, 17, 16),
            (1, 1, 32, 28, 28), (2, 4, 4, 3, 33), (1, 7, 6, 4, 48),
        ]
        for c in cases {
            let g = ConvGeometry(inChannels: c.cin, outChannels: c.cout, height: c.h, width: c.w,
                                 kernel: 3, stride: 1, padding: 1)
            let x = randomValues(c.b * c.cin * c.h * c.w, seed: 51)
            let w = randomValues(c.cout * c.cin * 9, seed: 52)
            let bias = randomValues(c.b * c.cout, seed: 53)
            for accumulate in [false, true] {
                for perImage in [false, true] {
                    var fast = randomValues(c.b * c.cout * c.h * c.w, seed: 54), plain = fast
                    try conv3x3DirectForward(x, batch: c.b, inChannels: c.cin, outChannels: c.cout, height: c.h,
                                             width: c.w, weights: w, bias: bias, biasBatchStride: perImage ? c.cout : 0,
                                             y: &fast, accumulate: accumulate, workspace: Workspace())
                    conv2dNaive(x, batch: c.b, geometry: g, weights: w, bias: bias,
                                biasBatchStride: perImage ? c.cout : 0, y: &plain, accumulate: accumulate)
                    assertClose(fast, plain, tolerance: 1e-5, "direct 3x3 \(c) acc=\(accumulate) perImage=\(perImage)")
                }
            }
        }
    }

    /// Winograd F(2×2, 3×3) against the direct definition, with odd sizes (partial 2×2
    /// tiles), 1×1 and 2×2 images, odd channel counts and more than 32 tiles (several chunks).
    /// The tolerance is the same 1e-5 as the other kernels: F(2×2) transforms only add,
    /// subtract and halve, so its error stays at float32 rounding (measured ~1e-7 relative).
    func testWinogradMatchesNaive() throws {
        let cases: [(b: Int, cin: Int, cout: Int, h: Int, w: Int)] = [
            (1, 8, 8, 1, 1), (2, 5, 3, 2, 2), (1, 17, 9, 7, 5), (3, 8, 16, 3, 9), (1, 16, 24, 14, 12), (2, 9, 8, 13, 11), (1, 8, 8, 5, 35),
            // F(4×4) rows of four tiles cut short by the image edge (30, 14), bottom overhang (10),
            // and tile rows of 7 that groups of four straddle (28).
            (1, 8, 8, 6, 30), (2, 8, 9, 10, 14), (1, 8, 8, 28, 28),
            // Chunks of at most 16 tiles with output channels off the 16-row kernel's blocks.
            (1, 8, 40, 8, 8), (2, 9, 33, 7, 7), (1, 16, 64, 14, 14),
            // Input channels summed in two halves (at batch 1, one half per thread).
            (1, 48, 24, 7, 7), (2, 40, 17, 14, 14),
        ]
        var worst: Float = 0
        for c in cases {
            let g = ConvGeometry(inChannels: c.cin, outChannels: c.cout, height: c.h, width: c.w,
                                 kernel: 3, stride: 1, padding: 1)
            let x = randomValues(c.b * c.cin * c.h * c.w, seed: 31)
            let w = randomValues(c.cout * c.cin * 9, seed: 32)
            let bias = randomValues(c.b * c.cout, seed: 33)
            for tile in [WinogradTile.two, .four] {
            let weights = try packWinogradWeights(w, inChannels: c.cin, outChannels: c.cout, tile: tile)
            for accumulate in [false, true] {
                for perImage in [false, true] {
                    var fast = randomValues(c.b * c.cout * c.h * c.w, seed: 34), plain = fast
                    try winogradConv3x3(x, batch: c.b, inChannels: c.cin, height: c.h, width: c.w, weights: weights,
                                        bias: bias, biasBatchStride: perImage ? c.cout : 0, y: &fast,
                                        accumulate: accumulate, workspace: Workspace())
                    conv2dNaive(x, batch: c.b, geometry: g, weights: w, bias: bias,
                                biasBatchStride: perImage ? c.cout : 0, y: &plain, accumulate: accumulate)
                    worst = max(worst, relativeError(fast, plain))
                    assertClose(fast, plain, tolerance: 1e-5, "winograd \(tile) \(c) acc=\(accumulate) perImage=\(perImage)")
                }
            }
            }
        }
        print("Winograd worst relative error vs float32 direct: \(worst)")
    }

    /// At batch 1 on several threads the output channels are split into row chunks, each
    /// repeating its chunk's input transform. The result must equal the one-thread result
    /// bit for bit: channel counts off the 8-row blocks, more than 32 tiles (two chunks),
    /// both tile sizes, with and without the fused GroupNorm.
    func testWinogradRowSplitsAreBitIdenticalToOneThread() throws {
        let saved = ThreadPool.shared.numThreads
        defer { ThreadPool.shared.numThreads = saved }
        let gamma = randomValues(64, seed: 41), beta = randomValues(64, seed: 42)
        // The last two split their input channels into two sums (at most 32 tiles,
        // Cin >= 2·Cout), which two threads take half each.
        for (cin, cout, h, w) in [(20, 40, 9, 7), (20, 48, 13, 14), (8, 17, 4, 4), (64, 24, 9, 7), (48, 17, 13, 14)] {
            let x = randomValues(cin * h * w, seed: 43)
            let wts = randomValues(cout * cin * 9, seed: 44)
            let bias = randomValues(cout, seed: 45)
            for tile in [WinogradTile.two, .four] {
                let weights = try packWinogradWeights(wts, inChannels: cin, outChannels: cout, tile: tile)
                for normalize in [false, true] {
                    let spec = gamma.withUnsafeBufferPointer { g in
                        beta.withUnsafeBufferPointer { b in
                            GroupNormSpec(groups: cin % 8 == 0 ? 8 : 4, gamma: g.baseAddress!, beta: b.baseAddress!,
                                          eps: 1e-5, silu: true)
                        }
                    }
                    var results: [[Float]] = []
                    for threads in [1, 2, 3] {
                        ThreadPool.shared.numThreads = threads
                        var y = [Float](repeating: 0, count: cout * h * w)
                        try winogradConv3x3(x, batch: 1, inChannels: cin, height: h, width: w, weights: weights,
                                            bias: bias, biasBatchStride: 0, y: &y, accumulate: false,
                                            normalize: normalize ? spec : nil, workspace: Workspace())
                        results.append(y)
                    }
                    XCTAssertEqual(results[0], results[1], "\(cin)->\(cout) \(h)x\(w) \(tile) norm=\(normalize): 1 vs 2 threads")
                    XCTAssertEqual(results[0], results[2], "\(cin)->\(cout) \(h)x\(w) \(tile) norm=\(normalize): 1 vs 3 threads")
                }
            }
        }
    }

    /// Winograd chunks of 32 tiles run across image boundaries (tiles are numbered over the
    /// batch), so each image's output must not depend on its neighbours: a batch of 3 gives,
    /// image by image and bit for bit, what each image gives alone, in all three routes.
    /// Shapes: 16 tiles per image (chunks hold two images), 49 (chunks cut images at 17 and
    /// 15 tiles), 1 tile per image; per-image bias where the route takes one.
    func testWinogradImagesAreBitIdenticalAloneAndInABatch() throws {
        let batch = 3
        func alone(_ count: Int, _ run: (Int, UnsafeMutablePointer<Float>) throws -> Void) rethrows -> [Float] {
            var out = [Float](repeating: .nan, count: batch * count)
            try out.withUnsafeMutableBufferPointer { p in
                for b in 0..<batch { try run(b, p.baseAddress! + b * count) }
            }
            return out
        }
        // At 8×8 and 14×14 with 40 and 33 output channels: alone, each image's 16 tiles take
        // the 16-column kernels; in the batch, chunks of 32 tiles take the 32-column one.
        // The last two split their input channels into two sums; alone (batch 1) two threads
        // each take half of them.
        for (cin, cout, h, w) in [(8, 16, 8, 8), (9, 8, 28, 28), (8, 8, 2, 2), (16, 12, 14, 14), (12, 40, 8, 8),
                                  (8, 33, 14, 14), (48, 24, 7, 7), (40, 17, 14, 14)] {
            let x = randomValues(batch * cin * h * w, seed: 71)
            let bias = randomValues(batch * cout, seed: 72)
            for tile in [WinogradTile.two, .four] {
                let weights = try packWinogradWeights(randomValues(cout * cin * 9, seed: 73), inChannels: cin,
                                                      outChannels: cout, tile: tile)
                var together = [Float](repeating: .nan, count: batch * cout * h * w)
                try winogradConv3x3(x, batch: batch, inChannels: cin, height: h, width: w, weights: weights, bias: bias,
                                    biasBatchStride: cout, y: &together, accumulate: false, workspace: Workspace())
                let separate = try alone(cout * h * w) { b, y in
                    try winogradConv3x3(Array(x[(b * cin * h * w)..<((b + 1) * cin * h * w)]), batch: 1, inChannels: cin,
                                        height: h, width: w, weights: weights, bias: Array(bias[(b * cout)...]),
                                        biasBatchStride: 0, y: y, accumulate: false, workspace: Workspace())
                }
                XCTAssertTrue(together == separate, "3x3 \(tile) \(cin)->\(cout) \(h)x\(w)")
            }
            let w4 = randomValues(cout * cin * 16, seed: 74)
            let strided = try packStridedWinogradWeights(w4, inChannels: cin, outChannels: cout)
            let outCount = cout * (h / 2) * (w / 2)
            var together = [Float](repeating: .nan, count: batch * outCount)
            try winogradConv4x4Stride2(x, batch: batch, inChannels: cin, height: h, width: w, weights: strided,
                                       bias: bias, y: &together, workspace: Workspace())
            var separate = try alone(outCount) { b, y in
                try winogradConv4x4Stride2(Array(x[(b * cin * h * w)..<((b + 1) * cin * h * w)]), batch: 1,
                                           inChannels: cin, height: h, width: w, weights: strided, bias: bias, y: y,
                                           workspace: Workspace())
            }
            XCTAssertTrue(together == separate, "strided \(cin)->\(cout) \(h)x\(w)")
            let transposed = try packTransposedWinogradWeights(randomValues(cin * cout * 16, seed: 75), inChannels: cin,
                                                               outChannels: cout)
            let upCount = cout * 4 * h * w
            together = [Float](repeating: .nan, count: batch * upCount)
            try winogradConvTranspose4x4Stride2(x, batch: batch, inChannels: cin, height: h, width: w,
                                                weights: transposed, bias: bias, y: &together, workspace: Workspace())
            separate = try alone(upCount) { b, y in
                try winogradConvTranspose4x4Stride2(Array(x[(b * cin * h * w)..<((b + 1) * cin * h * w)]), batch: 1,
                                                    inChannels: cin, height: h, width: w, weights: transposed,
                                                    bias: bias, y: y, workspace: Workspace())
            }
            XCTAssertTrue(together == separate, "transposed \(cin)->\(cout) \(h)x\(w)")
        }
    }

    /// The same for the strided and transposed Winograd routes, whose output channels are
    /// split the same way.
    func testStridedAndTransposedRowSplitsAreBitIdenticalToOneThread() throws {
        let saved = ThreadPool.shared.numThreads
        defer { ThreadPool.shared.numThreads = saved }
        for (cin, cout, h, w) in [(20, 40, 12, 10), (9, 24, 8, 8), (16, 17, 14, 14)] {
            let x = randomValues(cin * h * w, seed: 51)
            let wts = randomValues(cout * cin * 16, seed: 52)
            let bias = randomValues(cout, seed: 53)
            let strided = try packStridedWinogradWeights(wts, inChannels: cin, outChannels: cout)
            let transposedWeights = randomValues(cin * cout * 16, seed: 54)
            let transposed = try packTransposedWinogradWeights(transposedWeights, inChannels: cin, outChannels: cout)
            var down: [[Float]] = [], up: [[Float]] = []
            for threads in [1, 2, 3] {
                ThreadPool.shared.numThreads = threads
                var y = [Float](repeating: 0, count: cout * (h / 2) * (w / 2))
                try winogradConv4x4Stride2(x, batch: 1, inChannels: cin, height: h, width: w, weights: strided,
                                           bias: bias, y: &y, workspace: Workspace())
                down.append(y)
                var z = [Float](repeating: 0, count: cout * 4 * h * w)
                try winogradConvTranspose4x4Stride2(x, batch: 1, inChannels: cin, height: h, width: w,
                                                    weights: transposed, bias: bias, y: &z, workspace: Workspace())
                up.append(z)
            }
            XCTAssertEqual(down[0], down[1], "strided \(cin)->\(cout) \(h)x\(w): 1 vs 2 threads")
            XCTAssertEqual(down[0], down[2], "strided \(cin)->\(cout) \(h)x\(w): 1 vs 3 threads")
            XCTAssertEqual(up[0], up[1], "transposed \(cin)->\(cout) \(h)x\(w): 1 vs 2 threads")
            XCTAssertEqual(up[0], up[2], "transposed \(cin)->\(cout) \(h)x\(w): 1 vs 3 threads")
        }
    }

    /// Measures each Winograd tile size against a float64 direct convolution at model-like
    /// sizes (64 → 64 channels, 32×32, unit-variance data) and bounds it well inside the
    /// docs/model.md's 1e-4: F(2×2) sits near float32 rounding, F(4×4) about an order above
    /// (its transforms multiply by up to 8 and 1/24, amplifying rounding).
    func testWinogradErrorAgainstFloat64() throws {
        let (cin, cout, h, w) = (64, 64, 32, 32)
        let x = randomValues(cin * h * w, seed: 41).map { $0 * 1.7 }
        let wts = randomValues(cout * cin * 9, seed: 42).map { $0 / 24 }
        let bias = randomValues(cout, seed: 43)
        var exact = [Double](repeating: 0, count: cout * h * w)
        for co in 0..<cout {
            for oy in 0..<h {
                for ox in 0..<w {
                    var s = Double(bias[co])
                    for ci in 0..<cin {
                        for ky in 0..<3 {
                            let iy = oy + ky - 1
                            if iy < 0 || iy >= h { continue }
                            for kx in 0..<3 {
                                let ix = ox + kx - 1
                                if ix < 0 || ix >= w { continue }
                                s += Double(wts[((co * cin + ci) * 3 + ky) * 3 + kx]) * Double(x[(ci * h + iy) * w + ix])
                            }
                        }
                    }
                    exact[(co * h + oy) * w + ox] = s
                }
            }
        }
        let reference = exact.map { Float($0) }
        for tile in [WinogradTile.two, .four] {
            let weights = try packWinogradWeights(wts, inChannels: cin, outChannels: cout, tile: tile)
            var y = [Float](repeating: 0, count: cout * h * w)
            try winogradConv3x3(x, batch: 1, inChannels: cin, height: h, width: w, weights: weights, bias: bias,
                                biasBatchStride: 0, y: &y, accumulate: false, workspace: Workspace())
            let e = relativeError(y, reference)
            print("Winograd F(\(tile.rawValue)x\(tile.rawValue),3x3) relative error vs float64 direct: \(e)")
            XCTAssertLessThan(e, tile == .two ? 2e-6 : 1e-5)
        }
        var direct = [Float](repeating: 0, count: cout * h * w)
        conv2dNaive(x, batch: 1, geometry: ConvGeometry(inChannels: cin, outChannels: cout, height: h, width: w,
                                                        kernel: 3, stride: 1, padding: 1),
                    weights: wts, bias: bias, biasBatchStride: 0, y: &direct, accumulate: false)
        print("direct float32 relative error vs float64 direct: \(relativeError(direct, reference))")
    }

    /// The 4×4 stride-2 convolution by Winograd F(2×2, 2×2) on input phases, against the
    /// direct definition: odd sizes (partial tiles, an unused last row/column), 2×2 and
    /// 3×3 images (one output pixel), odd channel counts, several 32-tile chunks.
    func testStridedWinogradMatchesNaive() throws {
        let cases: [(b: Int, cin: Int, cout: Int, h: Int, w: Int)] = [
            (1, 8, 8, 2, 2), (2, 5, 3, 3, 3), (1, 17, 9, 7, 6), (3, 8, 16, 4, 10), (1, 16, 24, 32, 18), (2, 9, 8, 13, 37),
            (1, 8, 40, 16, 16), (2, 9, 33, 14, 14),
            // images of at most 32 tiles with >= 16 input channels: the two-chain sums (input halves)
            (1, 16, 24, 14, 14), (2, 32, 16, 8, 8), (1, 20, 9, 12, 10),
        ]
        for c in cases {
            let g = ConvGeometry(inChannels: c.cin, outChannels: c.cout, height: c.h, width: c.w,
                                 kernel: 4, stride: 2, padding: 1)
            let x = randomValues(c.b * c.cin * c.h * c.w, seed: 61)
            let w = randomValues(c.cout * c.cin * 16, seed: 62)
            let bias = randomValues(c.cout, seed: 63)
            let weights = try packStridedWinogradWeights(w, inChannels: c.cin, outChannels: c.cout)
            var fast = [Float](repeating: .nan, count: c.b * c.cout * g.outHeight * g.outWidth), plain = fast
            try winogradConv4x4Stride2(x, batch: c.b, inChannels: c.cin, height: c.h, width: c.w, weights: weights,
                                       bias: bias, y: &fast, workspace: Workspace())
            conv2dNaive(x, batch: c.b, geometry: g, weights: w, bias: bias, biasBatchStride: 0, y: &plain, accumulate: false)
            assertClose(fast, plain, tolerance: 1e-5, "strided winograd \(c)")
        }
    }

    func testConvTransposeMatchesNaive() throws {
        let cases: [(b: Int, cin: Int, cout: Int, h: Int, w: Int)] = [
            (1, 1, 1, 1, 1), (2, 3, 5, 2, 3), (1, 8, 8, 4, 4), (3, 17, 9, 5, 7), (1, 16, 16, 1, 2), (1, 9, 12, 9, 20),
            (1, 8, 40, 8, 8), (2, 9, 33, 7, 7), (2, 8, 8, 14, 14), (1, 8, 9, 6, 13),
        ]
        for c in cases {
            let g = ConvGeometry(inChannels: c.cin, outChannels: c.cout, height: c.h, width: c.w,
                                 kernel: 4, stride: 2, padding: 1)
            let x = randomValues(c.b * c.cin * c.h * c.w, seed: 9)
            let w = randomValues(c.cin * c.cout * 16, seed: 10)
            let bias = randomValues(c.cout, seed: 11)
            let outCount = c.b * c.cout * g.transposedHeight * g.transposedWidth
            XCTAssertEqual(g.transposedHeight, 2 * c.h)
            var fast = [Float](repeating: .nan, count: outCount), plain = fast
            let packed = try packTransposedConvWeights(w, inChannels: c.cin, outChannels: c.cout, kernel: 4)
            try convTranspose2dForward(x, batch: c.b, geometry: g, weights: packed, bias: bias,
                                       y: &fast, workspace: Workspace())
            convTranspose2dNaive(x, batch: c.b, geometry: g, weights: w, bias: bias, y: &plain)
            assertClose(fast, plain, tolerance: 1e-5, "convT \(c)")
            // The Winograd F(2×2, 2×2) sub-pixel route (odd sizes leave partial tiles).
            var winograd = [Float](repeating: .nan, count: outCount)
            let wWeights = try packTransposedWinogradWeights(w, inChannels: c.cin, outChannels: c.cout)
            try winogradConvTranspose4x4Stride2(x, batch: c.b, inChannels: c.cin, height: c.h, width: c.w,
                                                weights: wWeights, bias: bias, y: &winograd, workspace: Workspace())
            assertClose(winograd, plain, tolerance: 1e-5, "Winograd convT \(c)")
        }
    }

    /// GroupNorm + SiLU fused into a convolution's padded-plane fill gives exactly the
    /// values of `groupNormForward` then the plain convolution (same arithmetic), for the
    /// Winograd tiles and the implicit GEMM, odd sizes, groups of 1 to 3 channels, 1 and 2 threads.
    func testNormalizedFillMatchesGroupNormThenConvolution() throws {
        let pool = ThreadPool.shared
        let saved = pool.numThreads
        defer { pool.numThreads = saved }
        let cases: [(b: Int, cin: Int, cout: Int, h: Int, w: Int, groups: Int)] = [
            (1, 8, 8, 1, 1, 8), (2, 16, 9, 7, 5, 8), (3, 24, 8, 13, 11, 8), (1, 8, 3, 17, 16, 4), (1, 32, 16, 8, 8, 8),
        ]
        for threads in [1, 2] {
            pool.numThreads = threads
            for c in cases {
                let x = randomValues(c.b * c.cin * c.h * c.w, seed: 41).map { $0 * 2 + 0.3 }
                let w = randomValues(c.cout * c.cin * 9, seed: 42)
                let bias = randomValues(c.cout, seed: 43)
                let gamma = randomValues(c.cin, seed: 44), beta = randomValues(c.cin, seed: 45)
                var normed = [Float](repeating: .nan, count: x.count)
                groupNormForward(x, batch: c.b, channels: c.cin, spatial: c.h * c.w, groups: c.groups,
                                 gamma: gamma, beta: beta, eps: 1e-5, silu: true, y: &normed)
                try gamma.withUnsafeBufferPointer { gp in
                    try beta.withUnsafeBufferPointer { bp in
                        let spec = GroupNormSpec(groups: c.groups, gamma: gp.baseAddress!, beta: bp.baseAddress!,
                                                 eps: 1e-5, silu: true)
                        for tile in [WinogradTile.two, .four] where c.cout >= 8 {
                            let weights = try packWinogradWeights(w, inChannels: c.cin, outChannels: c.cout, tile: tile)
                            var fused = [Float](repeating: .nan, count: c.b * c.cout * c.h * c.w), split = fused
                            try winogradConv3x3(x, batch: c.b, inChannels: c.cin, height: c.h, width: c.w, weights: weights,
                                                bias: bias, biasBatchStride: 0, y: &fused, accumulate: false,
                                                normalize: spec, workspace: Workspace())
                            try winogradConv3x3(normed, batch: c.b, inChannels: c.cin, height: c.h, width: c.w,
                                                weights: weights, bias: bias, biasBatchStride: 0, y: &split,
                                                accumulate: false, workspace: Workspace())
                            XCTAssertEqual(fused, split, "winograd \(tile) \(c) threads=\(threads)")
                        }
                        let g = ConvGeometry(inChannels: c.cin, outChannels: c.cout, height: c.h, width: c.w,
                                             kernel: 3, stride: 1, padding: 1)
                        let packed = try PackedMatrix(rows: c.cout, cols: c.cin * 9, source: w, ld: c.cin * 9)
                        var fused = [Float](repeating: .nan, count: c.b * c.cout * c.h * c.w), split = fused
                        try conv2dForward(x, batch: c.b, geometry: g, weights: packed, bias: bias, biasBatchStride: 0,
                                          y: &fused, accumulate: false, normalize: spec, workspace: Workspace())
                        try conv2dForward(normed, batch: c.b, geometry: g, weights: packed, bias: bias, biasBatchStride: 0,
                                          y: &split, accumulate: false, workspace: Workspace())
                        XCTAssertEqual(fused, split, "implicit GEMM \(c) threads=\(threads)")
                        var directFused = [Float](repeating: .nan, count: fused.count), directSplit = directFused
                        try conv3x3DirectForward(x, batch: c.b, inChannels: c.cin, outChannels: c.cout, height: c.h,
                                                 width: c.w, weights: w, bias: bias, biasBatchStride: 0, y: &directFused,
                                                 accumulate: false, normalize: spec, workspace: Workspace())
                        try conv3x3DirectForward(normed, batch: c.b, inChannels: c.cin, outChannels: c.cout, height: c.h,
                                                 width: c.w, weights: w, bias: bias, biasBatchStride: 0, y: &directSplit,
                                                 accumulate: false, workspace: Workspace())
                        XCTAssertEqual(directFused, directSplit, "direct 3x3 \(c) threads=\(threads)")
                    }
                }
            }
        }
    }

    func testGroupNormMatchesNaive() {
        for (b, c, hw, groups) in [(1, 8, 1, 8), (2, 16, 7, 8), (3, 24, 33, 8), (1, 64, 64, 8), (2, 8, 5, 2)] {
            let x = randomValues(b * c * hw, seed: 12).map { $0 * 3 + 0.5 }
            let gamma = randomValues(c, seed: 13), beta = randomValues(c, seed: 14)
            for silu in [false, true] {
                var fast = [Float](repeating: .nan, count: x.count), plain = fast
                groupNormForward(x, batch: b, channels: c, spatial: hw, groups: groups, gamma: gamma, beta: beta,
                                 eps: 1e-5, silu: silu, y: &fast)
                groupNormNaive(x, batch: b, channels: c, spatial: hw, groups: groups, gamma: gamma, beta: beta,
                               eps: 1e-5, silu: silu, y: &plain)
                assertClose(fast, plain, tolerance: 1e-5, "groupnorm b=\(b) c=\(c) hw=\(hw) silu=\(silu)")
            }
        }
    }

    func testAttentionMatchesNaive() throws {
        // n = 130 spans three key blocks (64, 64, 2) of the online softmax; the * 4 scale
        // makes logits large enough that a softmax without the running max would overflow.
        for (c, n, heads) in [(8, 1, 4), (16, 7, 4), (32, 64, 4), (24, 33, 4), (12, 5, 1), (20, 130, 4)] {
            let qkv = randomValues(3 * c * n, seed: 15).map { $0 * 4 }
            var fast = [Float](repeating: .nan, count: c * n), plain = fast
            try attentionBatched(qkv: qkv, batch: 1, channels: c, positions: n, heads: heads, o: &fast, workspace: Workspace())
            attentionNaive(qkv: qkv, channels: c, positions: n, heads: heads, o: &plain)
            assertClose(fast, plain, tolerance: 1e-5, "attention c=\(c) n=\(n)")
        }
    }

    /// The vector exp behind SiLU and softmax: within 1e-6 relative of float64 exp over the
    /// range that matters (SiLU and softmax never need e^x beyond float range).
    func testFastExpIsAccurate() {
        var worst = 0.0
        var x: Float = -87
        while x < 88 {
            var lanes = SIMD16<Float>()
            for l in 0..<16 { lanes[l] = x + Float(l) * 0.000_37 }
            let e = exp16(lanes)
            for l in 0..<16 {
                let exact = exp(Double(lanes[l]))
                worst = max(worst, abs(Double(e[l]) - exact) / exact)
            }
            x += 0.0137
        }
        XCTAssertLessThan(worst, 1e-6, "exp16 worst relative error \(worst)")
        // SiLU saturates cleanly at both ends.
        let s = silu16(SIMD16<Float>(repeating: -200))
        XCTAssertEqual(s[0], 0, accuracy: 1e-30)
        XCTAssertEqual(silu16(SIMD16<Float>(repeating: 200))[3], 200)
    }

    func testLinearMatchesNaive() {
        for (b, nIn, nOut) in [(1, 1, 1), (3, 17, 5), (2, 128, 33), (1, 200, 8)] {
            let x = randomValues(b * nIn, seed: 51), w = randomValues(nOut * nIn, seed: 52), bias = randomValues(nOut, seed: 53)
            var fast = [Float](repeating: .nan, count: b * nOut), plain = fast
            linearForward(x, batch: b, inFeatures: nIn, outFeatures: nOut, weight: w, bias: bias, y: &fast)
            linearNaive(x, batch: b, inFeatures: nIn, outFeatures: nOut, weight: w, bias: bias, y: &plain)
            assertClose(fast, plain, tolerance: 1e-5, "linear b=\(b) \(nIn)→\(nOut)")
        }
    }

    func testSinusoidalEmbeddingIsSinesThenCosines() {
        let t: [Int64] = [0, 7, 999]
        var e = [Float](repeating: 0, count: 3 * 8)
        sinusoidalEmbedding(t, batch: 3, dim: 8, e: &e)
        // t = 0: sin = 0, cos = 1.
        XCTAssertEqual(Array(e[0..<8]), [0, 0, 0, 0, 1, 1, 1, 1])
        // freq[0] = 1 and freq[half-1] = 1e-4.
        XCTAssertEqual(e[8], Float(sin(7.0)))
        XCTAssertEqual(e[8 + 4], Float(cos(7.0)))
        XCTAssertEqual(e[16 + 3], Float(sin(999.0 * 1e-4)), accuracy: 1e-7)
    }

    func testSplitMix64KnownOutputs() {
        var rng = SplitMix64(seed: 0)
        XCTAssertEqual(rng.next(), 0xE220_A839_7B1D_CDAF)
        XCTAssertEqual(rng.next(), 0x6E78_9E6A_A1B9_65F4)
        XCTAssertEqual(rng.next(), 0x06C4_5D18_8009_454F)
    }

    /// `copyRun` copies and `zeroRun` zeroes exactly `count` floats for every run length
    /// (their ragged ends use overlapping vector moves) and write nothing around them.
    func testCopyRunAndZeroRunEveryLength() {
        let src = (0..<80).map { Float($0) + 0.5 }
        for count in 0...70 {
            for offset in 0..<3 {
                var dst = [Float](repeating: -1, count: 80)
                src.withUnsafeBufferPointer { s in
                    dst.withUnsafeMutableBufferPointer { d in
                        copyRun(from: s.baseAddress! + offset, to: d.baseAddress! + 1, count: count)
                    }
                }
                for i in 0..<80 {
                    let expected: Float = i >= 1 && i <= count ? src[offset + i - 1] : -1
                    XCTAssertEqual(dst[i], expected, "count \(count) offset \(offset) index \(i)")
                }
                dst.withUnsafeMutableBufferPointer { zeroRun($0.baseAddress! + offset, count: count) }
                for i in offset..<80 {
                    let expected: Float = i < offset + count ? 0 : i >= 1 && i <= count ? src[offset + i - 1] : -1
                    XCTAssertEqual(dst[i], expected, "zeroRun count \(count) offset \(offset) index \(i)")
                }
            }
        }
    }
}
