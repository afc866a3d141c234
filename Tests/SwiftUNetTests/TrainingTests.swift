import XCTest
@testable import SwiftUNet

/// The training kernels against their plain twins over odd shapes (sizes that are not
/// multiples of the vector width, batch 1, 1×1 images), and the training pass's
/// guarantees: gradients that do not depend on the thread count, a trainer that
/// resumes bit for bit.
final class TrainingTests: XCTestCase {
    private func withThreads<R>(_ n: Int, _ body: () throws -> R) rethrows -> R {
        let saved = ThreadPool.shared.numThreads
        ThreadPool.shared.numThreads = n
        defer { ThreadPool.shared.numThreads = saved }
        return try body()
    }

    func testDenseGemmIsBitIdenticalToPlainLoops() throws {
        for (m, n, k) in [(1, 1, 1), (7, 33, 5), (9, 17, 300), (16, 40, 13), (3, 65, 257), (24, 1, 7)] {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let a = randomValues(m * k, seed: 1), b = randomValues(k * n, seed: 2)
                let aOp = MatrixOperand(a, ld: ta ? m : k, transposed: ta)
                let bOp = MatrixOperand(b, ld: tb ? k : n, transposed: tb)
                for accumulate in [false, true] {
                    for threads in [1, 2] {
                        var fast = randomValues(m * n, seed: 3), plain = fast
                        try withThreads(threads) {
                            try denseGemm(m: m, n: n, k: k, a: aOp, b: bOp, c: &fast, ldc: n, accumulate: accumulate,
                                          workspace: Workspace())
                        }
                        denseGemmPlain(m: m, n: n, k: k, a: aOp, b: bOp, c: &plain, ldc: n, accumulate: accumulate)
                        XCTAssertEqual(fast, plain, "\(m)x\(n)x\(k) tA=\(ta) tB=\(tb) acc=\(accumulate) threads=\(threads)")
                    }
                }
            }
        }
    }

    /// (Cin, Cout, H, W, kernel, stride, padding, batch)
    private let convShapes = [(3, 5, 7, 9, 3, 1, 1, 2), (9, 8, 1, 1, 3, 1, 1, 1), (5, 7, 6, 10, 4, 2, 1, 2),
                              (8, 3, 2, 2, 4, 2, 1, 1), (6, 11, 5, 3, 1, 1, 0, 3), (17, 9, 13, 5, 3, 1, 1, 1)]

    func testConvTrainingForwardMatchesNaive() throws {
        for (cin, cout, h, w, k, s, p, batch) in convShapes {
            let g = ConvGeometry(inChannels: cin, outChannels: cout, height: h, width: w, kernel: k, stride: s, padding: p)
            let x = randomValues(batch * cin * h * w, seed: 5), wts = randomValues(cout * cin * k * k, seed: 6)
            let bias = randomValues(cout, seed: 7)
            let n = batch * cout * g.outHeight * g.outWidth
            var fast = [Float](repeating: 0, count: n), plain = fast
            try convForwardTraining(x, batch: batch, geometry: g, weight: wts, bias: bias, y: &fast, workspace: Workspace())
            conv2dNaive(x, batch: batch, geometry: g, weights: wts, bias: bias, biasBatchStride: 0, y: &plain, accumulate: false)
            assertClose(fast, plain, tolerance: 1e-5, "conv forward \(g)")
        }
    }

    func testConvBackwardMatchesNaive() throws {
        for (cin, cout, h, w, k, s, p, batch) in convShapes {
            let g = ConvGeometry(inChannels: cin, outChannels: cout, height: h, width: w, kernel: k, stride: s, padding: p)
            let x = randomValues(batch * cin * h * w, seed: 8), wts = randomValues(cout * cin * k * k, seed: 9)
            let dy = randomValues(batch * cout * g.outHeight * g.outWidth, seed: 10)
            let start = randomValues(cout * cin * k * k, seed: 11), biasStart = randomValues(cout, seed: 12)
            var dW = start, dB = biasStart, dx = [Float](repeating: 0, count: x.count)
            var dWn = start, dBn = biasStart, dxn = dx
            try convBackwardTraining(dy, x: x, batch: batch, geometry: g, weight: wts, dWeight: &dW, dBias: &dB, dx: &dx,
                                     workspace: Workspace())
            convBackwardNaive(dy, x: x, batch: batch, geometry: g, weight: wts, dWeight: &dWn, dBias: &dBn, dx: &dxn)
            assertClose(dW, dWn, tolerance: 1e-5, "conv dW \(g)")
            assertClose(dB, dBn, tolerance: 1e-5, "conv db \(g)")
            assertClose(dx, dxn, tolerance: 1e-5, "conv dx \(g)")
            // Accumulating into dx adds to what is there.
            var dxAcc = dy.count > 0 ? randomValues(x.count, seed: 13) : []
            let before = dxAcc
            var scratchW = start, scratchB = biasStart
            try convBackwardTraining(dy, x: x, batch: batch, geometry: g, weight: wts, dWeight: &scratchW,
                                     dBias: &scratchB, dx: &dxAcc, accumulateDx: true, workspace: Workspace())
            assertClose(dxAcc, zip(before, dxn).map { $0 + $1 }, tolerance: 1e-5, "conv dx += \(g)")
        }
    }

    func testConvTransposeTrainingMatchesNaive() throws {
        for (cin, cout, h, w, batch) in [(3, 5, 1, 1, 1), (8, 8, 3, 5, 2), (9, 4, 4, 4, 1), (16, 24, 2, 7, 3)] {
            let g = ConvGeometry(inChannels: cin, outChannels: cout, height: h, width: w, kernel: 4, stride: 2, padding: 1)
            let x = randomValues(batch * cin * h * w, seed: 14), wts = randomValues(cin * cout * 16, seed: 15)
            let bias = randomValues(cout, seed: 16)
            let outCount = batch * cout * g.transposedHeight * g.transposedWidth
            var fast = [Float](repeating: 0, count: outCount), plain = fast
            try convTransposeForwardTraining(x, batch: batch, geometry: g, weight: wts, bias: bias, y: &fast,
                                             workspace: Workspace())
            convTranspose2dNaive(x, batch: batch, geometry: g, weights: wts, bias: bias, y: &plain)
            assertClose(fast, plain, tolerance: 1e-5, "conv transpose forward \(g)")

            let dy = randomValues(outCount, seed: 17)
            let start = randomValues(wts.count, seed: 18), biasStart = randomValues(cout, seed: 19)
            var dW = start, dB = biasStart, dx = [Float](repeating: 0, count: x.count)
            var dWn = start, dBn = biasStart, dxn = dx
            try convTransposeBackwardTraining(dy, x: x, batch: batch, geometry: g, weight: wts, dWeight: &dW, dBias: &dB,
                                              dx: &dx, workspace: Workspace())
            convTransposeBackwardNaive(dy, x: x, batch: batch, geometry: g, weight: wts, dWeight: &dWn, dBias: &dBn,
                                       dx: &dxn)
            assertClose(dW, dWn, tolerance: 1e-5, "conv transpose dW \(g)")
            assertClose(dB, dBn, tolerance: 1e-5, "conv transpose db \(g)")
            assertClose(dx, dxn, tolerance: 1e-5, "conv transpose dx \(g)")
        }
    }

    /// A weight-gradient kernel (`run(dy, x, batch, dW)`, adding into dW) against
    /// `convBackwardNaive`'s dW, at 1 and 2 threads, and the same bits at both.
    private func checkWeightGradient(_ g: ConvGeometry, batch: Int, seed: UInt64, _ name: String,
                                     _ run: ([Float], [Float], Int, inout [Float]) throws -> Void) throws {
        let x = randomValues(batch * g.inChannels * g.height * g.width, seed: seed)
        let wts = randomValues(g.outChannels * g.inChannels * g.kernel * g.kernel, seed: seed + 1)
        let dy = randomValues(batch * g.outChannels * g.outHeight * g.outWidth, seed: seed + 2)
        let start = randomValues(wts.count, seed: seed + 3)
        var dWn = start, dBn = [Float](repeating: 0, count: g.outChannels), dxn = [Float](repeating: 0, count: x.count)
        convBackwardNaive(dy, x: x, batch: batch, geometry: g, weight: wts, dWeight: &dWn, dBias: &dBn, dx: &dxn)
        var results: [[Float]] = []
        for threads in [1, 2] {
            var dW = start
            try withThreads(threads) { try run(dy, x, batch, &dW) }
            assertClose(dW, dWn, tolerance: 1e-5, "\(name) \(g) threads=\(threads)")
            results.append(dW)
        }
        XCTAssertEqual(results[0], results[1], "\(name) differs between 1 and 2 threads \(g)")
    }

    func testConv3x3WeightGradientMatchesNaive() throws {
        // (Cin, Cout, H, W, batch): odd channel counts, widths that are not multiples of 16,
        // odd heights (a row pair's second row missing), 1×1 images, batch 1; widths up to 8
        // take the row-major kernel (`conv3x3WeightGradientNarrow`), wider ones the row kernel.
        for (cin, cout, h, w, batch) in [(3, 5, 7, 9, 2), (1, 1, 1, 1, 1), (8, 3, 5, 17, 1), (4, 6, 2, 33, 3),
                                         (2, 8, 16, 16, 2), (5, 2, 1, 7, 1), (3, 4, 5, 8, 2), (6, 5, 8, 3, 1),
                                         (4, 2, 7, 7, 3)] {
            let g = ConvGeometry(inChannels: cin, outChannels: cout, height: h, width: w, kernel: 3, stride: 1, padding: 1)
            try checkWeightGradient(g, batch: batch, seed: 40, "direct 3x3 dW") { dy, x, batch, dW in
                try conv3x3WeightGradient(dy, x: x, batch: batch, inChannels: cin, outChannels: cout, height: h,
                                          width: w, dWeight: &dW, workspace: Workspace())
            }
        }
    }

    func testTranspose16x16MatchesItsPlainTwin() {
        let values = randomValues(256, seed: 70)
        let rows = (0..<16).map { Array(values[($0 * 16)..<($0 * 16 + 16)]) }
        let block = UnsafeMutablePointer<Vec16>.allocate(capacity: 32)
        defer { block.deallocate() }
        for i in 0..<16 { block[i] = Vec16(rows[i]) }
        transpose16x16(block, scratch: block + 16)
        let expected = transpose16x16Plain(rows)
        for i in 0..<16 { XCTAssertEqual((0..<16).map { block[i][$0] }, expected[i], "row \(i)") }
    }

    func testWinogradWeightGradientMatchesNaive() throws {
        // (Cin, Cout, H, W, batch): channel counts off the vectors and panels, sizes that are
        // not multiples of the tile (tiles overhanging the image), tile counts off whole
        // chunks, 1×1 images, batch 1, non-square images; the last two have tiles enough for
        // several groups and for the two halves (F(4×4): 4 × 64 tiles, F(2×2): 289).
        for tile in [WinogradTile.two, .four] {
            for (cin, cout, h, w, batch) in [(3, 5, 7, 9, 2), (1, 1, 1, 1, 1), (8, 3, 5, 17, 1), (4, 6, 2, 33, 3),
                                             (2, 8, 16, 16, 2), (5, 2, 1, 7, 1), (6, 5, 8, 3, 1), (4, 2, 7, 7, 3),
                                             (9, 7, 12, 10, 2), (17, 9, 32, 32, 4), (33, 16, 34, 34, 1)] {
                let g = ConvGeometry(inChannels: cin, outChannels: cout, height: h, width: w, kernel: 3, stride: 1,
                                     padding: 1)
                try checkWeightGradient(g, batch: batch, seed: 50, "Winograd F(\(tile.rawValue)) 3x3 dW") { dy, x, batch, dW in
                    try winogradWeightGradient3x3(dy, x: x, batch: batch, inChannels: cin, outChannels: cout,
                                                  height: h, width: w, tile: tile, dWeight: &dW, workspace: Workspace())
                }
            }
        }
    }

    func testPointwiseWeightGradientMatchesNaive() throws {
        // (Cin, Cout, H, W, batch): blocks of 4 with channels left over, planes with a tail.
        for (cin, cout, h, w, batch) in [(1, 1, 1, 1, 1), (5, 7, 3, 7, 2), (8, 4, 4, 4, 1), (3, 9, 5, 5, 3),
                                         (16, 6, 2, 17, 2)] {
            let g = ConvGeometry(inChannels: cin, outChannels: cout, height: h, width: w, kernel: 1, stride: 1, padding: 0)
            try checkWeightGradient(g, batch: batch, seed: 60, "1x1 dW") { dy, x, batch, dW in
                try pointwiseWeightGradient(dy, x: x, batch: batch, inChannels: cin, outChannels: cout,
                                            spatial: h * w, dWeight: &dW, workspace: Workspace())
            }
        }
    }

    /// The per-step Winograd weights against the inference's float64 transforms, element by element.
    func testWinogradWeightsForStepMatchTheirPlainTwins() throws {
        func elements(_ m: PackedMatrix) -> [Float] {
            (0..<m.rows).flatMap { r in (0..<m.cols).map { m.element(r, $0) } }
        }
        for (cin, cout) in [(8, 16), (16, 8), (3, 5), (24, 40), (10, 6)] {
            let w3 = randomValues(cout * cin * 9, seed: 44)
            for tile in [WinogradTile.two, .four] {
                for inputGradient in [false, true] {
                    let ws = Workspace()
                    let fast = try winogradWeightsForStep(w3, inChannels: cin, outChannels: cout, tile: tile,
                                                          inputGradient: inputGradient, workspace: ws)
                    let rows = inputGradient ? cin : cout, cols = inputGradient ? cout : cin
                    let buffer = try ws.floats(tile.positions * PackedMatrix.floatCount(rows: rows, cols: cols))
                    let plain = try winogradWeightsForStepPlain(w3, inChannels: cin, outChannels: cout, tile: tile,
                                                                inputGradient: inputGradient, buffer: buffer, workspace: ws)
                    XCTAssertEqual(fast.outChannels, rows)
                    XCTAssertEqual(fast.inChannels, cols)
                    for xi in 0..<tile.positions {
                        assertClose(elements(fast.positions[xi]), elements(plain.positions[xi]), tolerance: 1e-6,
                                    "Winograd step weights \(cin)->\(cout) \(tile) inputGradient=\(inputGradient) xi=\(xi)")
                    }
                }
            }
            let w4 = randomValues(cout * cin * 16, seed: 45)
            // The forms live in the workspace: it must outlive them.
            let ws = Workspace()
            let strided = try stridedWinogradWeightsForStep(w4, inChannels: cin, outChannels: cout, workspace: ws)
            let stridedPlain = try packStridedWinogradWeights(w4, inChannels: cin, outChannels: cout)
            for xi in 0..<9 {
                assertClose(elements(strided.positions[xi]), elements(stridedPlain.positions[xi]), tolerance: 1e-6,
                            "strided step weights \(cin)->\(cout) xi=\(xi)")
            }
            let transposed = try transposedWinogradWeightsForStep(w4, inChannels: cin, outChannels: cout, workspace: ws)
            let transposedPlain = try packTransposedWinogradWeights(w4, inChannels: cin, outChannels: cout)
            for xi in 0..<36 {
                assertClose(elements(transposed.positions[xi]), elements(transposedPlain.positions[xi]), tolerance: 1e-6,
                            "transposed step weights \(cin)->\(cout) xi=\(xi)")
            }
        }
    }

    /// Every training route of the convolution layers (Winograd F(2×2) and F(4×4), the
    /// strided and transposed Winograd forms, direct 3×3, GEMM) against the naive twins:
    /// forward, weight and bias gradients, input gradient (= and +=).
    func testConvolutionLayerTrainingRoutesMatchNaive() throws {
        // (Cin, Cout, H, W, kernel, stride, padding, batch)
        let shapes = [(8, 16, 6, 10, 3, 1, 1, 2), (16, 8, 12, 14, 3, 1, 1, 1), (3, 8, 5, 7, 3, 1, 1, 2),
                      (8, 3, 4, 4, 3, 1, 1, 1), (8, 8, 1, 1, 3, 1, 1, 1), (8, 16, 6, 10, 4, 2, 1, 2),
                      (16, 8, 8, 8, 4, 2, 1, 1), (3, 5, 4, 6, 4, 2, 1, 1), (8, 16, 5, 3, 1, 1, 0, 2)]
        for (cin, cout, h, w, k, s, p, batch) in shapes {
            let registry = ParameterRegistry()
            let conv = try Conv2d(registry, "conv", inChannels: cin, outChannels: cout, kernel: k, stride: s, padding: p)
            let g = conv.geometry(height: h, width: w)
            let x = randomValues(batch * cin * h * w, seed: 46)
            let outCount = batch * cout * g.outHeight * g.outWidth
            var y = [Float](repeating: 0, count: outCount), yn = y
            try conv.trainingForward(x, batch: batch, height: h, width: w, into: &y, workspace: Workspace())
            conv2dNaive(x, batch: batch, geometry: g, weights: conv.weight.data, bias: conv.bias.data,
                        biasBatchStride: 0, y: &yn, accumulate: false)
            assertClose(y, yn, tolerance: 1e-5, "conv layer forward \(g)")
            let dy = randomValues(outCount, seed: 47)
            var grads = [Float](repeating: 0, count: registry.total)
            var dx = [Float](repeating: 0, count: x.count)
            try grads.withUnsafeMutableBufferPointer { buffer in
                try conv.backward(dy, x: x, batch: batch, height: h, width: w,
                                  gradients: GradientBuffer(base: buffer.baseAddress!), dx: &dx, workspace: Workspace())
            }
            var dWn = [Float](repeating: 0, count: conv.weight.count), dBn = [Float](repeating: 0, count: cout)
            var dxn = dx
            convBackwardNaive(dy, x: x, batch: batch, geometry: g, weight: conv.weight.data, dWeight: &dWn,
                              dBias: &dBn, dx: &dxn)
            assertClose(Array(grads[conv.weight.offset..<conv.weight.offset + conv.weight.count]), dWn,
                        tolerance: 1e-5, "conv layer dW \(g)")
            assertClose(Array(grads[conv.bias.offset..<conv.bias.offset + cout]), dBn, tolerance: 1e-5,
                        "conv layer db \(g)")
            assertClose(dx, dxn, tolerance: 1e-5, "conv layer dx \(g)")
            if k != 4 {
                var dxAcc = randomValues(x.count, seed: 48)
                let before = dxAcc
                try grads.withUnsafeMutableBufferPointer { buffer in
                    try conv.backward(dy, x: x, batch: batch, height: h, width: w,
                                      gradients: GradientBuffer(base: buffer.baseAddress!), dx: &dxAcc,
                                      accumulateDx: true, workspace: Workspace())
                }
                assertClose(dxAcc, zip(before, dxn).map { $0 + $1 }, tolerance: 1e-5, "conv layer dx += \(g)")
            }
        }
        for (cin, cout, h, w, batch) in [(8, 16, 3, 5, 2), (16, 8, 4, 4, 1), (3, 5, 2, 3, 1), (8, 8, 1, 1, 1)] {
            let registry = ParameterRegistry()
            let up = try ConvTranspose2d(registry, "up", inChannels: cin, outChannels: cout, kernel: 4, stride: 2, padding: 1)
            let g = up.geometry(height: h, width: w)
            let x = randomValues(batch * cin * h * w, seed: 49)
            let outPlane = cout * g.transposedHeight * g.transposedWidth
            // The output written into a wider batch stride (as into the decoder's concatenation).
            let stride = outPlane + 7
            var y = [Float](repeating: 0, count: batch * stride), yn = [Float](repeating: 0, count: batch * outPlane)
            try up.trainingForward(x, batch: batch, height: h, width: w, into: &y, outputBatchStride: stride,
                                   workspace: Workspace())
            convTranspose2dNaive(x, batch: batch, geometry: g, weights: up.weight.data, bias: up.bias.data, y: &yn)
            let dense = (0..<batch).flatMap { b in y[(b * stride)..<(b * stride + outPlane)] }
            assertClose(Array(dense), yn, tolerance: 1e-5, "transposed layer forward \(g)")
            let dy = randomValues(batch * stride, seed: 50)
            var grads = [Float](repeating: 0, count: registry.total)
            var dx = [Float](repeating: 0, count: x.count)
            try grads.withUnsafeMutableBufferPointer { buffer in
                try up.backward(dy, dyBatchStride: stride, x: x, batch: batch, height: h, width: w,
                                gradients: GradientBuffer(base: buffer.baseAddress!), dx: &dx, workspace: Workspace())
            }
            let dyDense = Array((0..<batch).flatMap { b in dy[(b * stride)..<(b * stride + outPlane)] })
            var dWn = [Float](repeating: 0, count: up.weight.count), dBn = [Float](repeating: 0, count: cout)
            var dxn = dx
            convTransposeBackwardNaive(dyDense, x: x, batch: batch, geometry: g, weight: up.weight.data, dWeight: &dWn,
                                       dBias: &dBn, dx: &dxn)
            assertClose(Array(grads[up.weight.offset..<up.weight.offset + up.weight.count]), dWn, tolerance: 1e-5,
                        "transposed layer dW \(g)")
            assertClose(Array(grads[up.bias.offset..<up.bias.offset + cout]), dBn, tolerance: 1e-5,
                        "transposed layer db \(g)")
            assertClose(dx, dxn, tolerance: 1e-5, "transposed layer dx \(g)")
        }
    }

    func testElementwisePassesMatchTheirPlainTwins() {
        for count in [0, 1, 15, 16, 17, 1000, 70_000, 200_001] {
            let x = randomValues(count, seed: 56), y0 = randomValues(count, seed: 57)
            XCTAssertEqual(laneSum(x, count: count), laneSumPlain(x, count: count), "laneSum, \(count)")
            XCTAssertEqual(Double(laneSum(x, count: count)), x.reduce(0.0) { $0 + Double($1) },
                           accuracy: 1e-5 * Double(max(count, 1)), "laneSum against the sum, \(count)")
            for threads in [1, 2] {
                var y = y0
                withThreads(threads) { addInPlace(&y, x, count: count) }
                XCTAssertEqual(y, zip(y0, x).map { $0 + $1 }, "addInPlace, \(count), threads=\(threads)")
                var z = [Float](repeating: 0, count: count)
                withThreads(threads) { copyFloats(&z, from: x, count: count) }
                XCTAssertEqual(z, x, "copyFloats, \(count), threads=\(threads)")
            }
        }
    }

    func testOptimizerKernelsAreBitIdenticalToTheirPlainTwins() {
        let o = AdamWOptions(lr: 0.003, beta1: 0.85, beta2: 0.995, eps: 1e-7, weightDecay: 0.05)
        for count in [1, 15, 16, 17, 100, 40_000] {
            let g = randomValues(count, seed: 51)
            var w = randomValues(count, seed: 52), m = randomValues(count, seed: 53)
            var v = randomValues(count, seed: 54).map { abs($0) }
            var wp = w, mp = m, vp = v
            adamWStep(weights: &w, gradients: g, m: &m, v: &v, count: count, step: 7, options: o)
            adamWStepPlain(weights: &wp, gradients: g, m: &mp, v: &vp, count: count, step: 7, options: o)
            XCTAssertEqual(w, wp, "AdamW weights, \(count)")
            XCTAssertEqual(m, mp, "AdamW m, \(count)")
            XCTAssertEqual(v, vp, "AdamW v, \(count)")
            var ema = randomValues(count, seed: 55)
            let ema0 = ema
            emaUpdate(&ema, weights: w, count: count, decay: 0.99)
            XCTAssertEqual(ema, (0..<count).map { Float(0.99) * ema0[$0] + Float(1 - 0.99) * w[$0] }, "EMA, \(count)")
            let norms = [1, 2].map { threads in withThreads(threads) { globalNorm(g, count: count) } }
            XCTAssertEqual(norms[0], norms[1], "norm at 1 and 2 threads, \(count)")
            XCTAssertEqual(norms[0], globalNormPlain(g, count: count), "norm against its twin, \(count)")
            XCTAssertEqual(norms[0], g.reduce(0.0) { $0 + Double($1) * Double($1) }.squareRoot(),
                           accuracy: 1e-9 * Double(count), "norm against its definition, \(count)")
        }
    }

    func testGroupNormBackwardMatchesNaive() throws {
        for (batch, channels, spatial, groups) in [(1, 8, 1, 8), (2, 16, 7, 8), (3, 24, 49, 8), (1, 12, 20, 4), (2, 8, 64, 2)] {
            let x = randomValues(batch * channels * spatial, seed: 20).map { $0 * 3 + 0.5 }
            let dy = randomValues(x.count, seed: 21)
            let gamma = randomValues(channels, seed: 22).map { $0 + 1 }, beta = randomValues(channels, seed: 23)
            for silu in [false, true] {
                var y = [Float](repeating: 0, count: x.count), reference = y
                var mean = [Float](repeating: 0, count: batch * groups), rstd = mean
                groupNormTrainingForward(x, batch: batch, channels: channels, spatial: spatial, groups: groups,
                                         gamma: gamma, beta: beta, eps: 1e-5, silu: silu, y: &y, mean: &mean, rstd: &rstd)
                groupNormNaive(x, batch: batch, channels: channels, spatial: spatial, groups: groups, gamma: gamma,
                               beta: beta, eps: 1e-5, silu: silu, y: &reference)
                assertClose(y, reference, tolerance: 1e-5, "group norm forward \(batch)x\(channels)x\(spatial)")
                var dx = y, dG = [Float](repeating: 0.25, count: channels), dB = dG
                var dxn = y, dGn = dG, dBn = dG
                try groupNormBackward(dy, x: x, batch: batch, channels: channels, spatial: spatial, groups: groups,
                                      gamma: gamma, beta: beta, silu: silu, mean: mean, rstd: rstd, dx: &dx,
                                      dGamma: &dG, dBeta: &dB, workspace: Workspace())
                groupNormBackwardNaive(dy, x: x, batch: batch, channels: channels, spatial: spatial, groups: groups,
                                       gamma: gamma, beta: beta, eps: 1e-5, silu: silu, dx: &dxn, dGamma: &dGn, dBeta: &dBn)
                let label = "group norm backward \(batch)x\(channels)x\(spatial) groups=\(groups) silu=\(silu)"
                assertClose(dx, dxn, tolerance: 2e-5, label + " dx")
                assertClose(dG, dGn, tolerance: 2e-5, label + " dgamma")
                assertClose(dB, dBn, tolerance: 2e-5, label + " dbeta")
            }
        }
    }

    func testAttentionTrainingMatchesNaive() throws {
        for (batch, channels, n, heads) in [(1, 8, 1, 4), (2, 16, 7, 4), (1, 32, 20, 4), (3, 8, 17, 2)] {
            let qkv = randomValues(batch * 3 * channels * n, seed: 24).map { $0 * 2 }
            var o = [Float](repeating: 0, count: batch * channels * n), reference = o
            var p = [Float](repeating: 0, count: batch * heads * n * n)
            attentionTrainingForward(qkv: qkv, batch: batch, channels: channels, positions: n, heads: heads, o: &o, p: &p)
            for b in 0..<batch {
                var ob = [Float](repeating: 0, count: channels * n)
                attentionNaive(qkv: Array(qkv[(b * 3 * channels * n)..<((b + 1) * 3 * channels * n)]), channels: channels,
                               positions: n, heads: heads, o: &ob)
                for i in 0..<(channels * n) { reference[b * channels * n + i] = ob[i] }
            }
            assertClose(o, reference, tolerance: 1e-5, "attention forward \(batch)x\(channels)x\(n)")
            let dOut = randomValues(o.count, seed: 25)
            var dqkv = [Float](repeating: 0, count: qkv.count), dqkvNaive = dqkv
            try attentionBackward(dOut: dOut, qkv: qkv, p: p, batch: batch, channels: channels, positions: n,
                                  heads: heads, dqkv: &dqkv, workspace: Workspace())
            attentionBackwardNaive(dOut: dOut, qkv: qkv, batch: batch, channels: channels, positions: n, heads: heads,
                                   dqkv: &dqkvNaive)
            assertClose(dqkv, dqkvNaive, tolerance: 2e-5, "attention backward \(batch)x\(channels)x\(n)")
        }
    }

    func testLinearBackwardMatchesNaive() {
        for (batch, inF, outF) in [(1, 1, 1), (3, 17, 5), (32, 128, 33)] {
            let dy = randomValues(batch * outF, seed: 26), x = randomValues(batch * inF, seed: 27)
            let w = randomValues(outF * inF, seed: 28)
            var dW = randomValues(w.count, seed: 29), dB = randomValues(outF, seed: 30)
            var dWn = dW, dBn = dB
            var dx = [Float](repeating: 0, count: x.count), dxn = dx
            linearBackward(dy, x: x, batch: batch, inFeatures: inF, outFeatures: outF, weight: w, dWeight: &dW,
                           dBias: &dB, dx: &dx)
            linearBackwardNaive(dy, x: x, batch: batch, inFeatures: inF, outFeatures: outF, weight: w, dWeight: &dWn,
                                dBias: &dBn, dx: &dxn)
            assertClose(dW, dWn, tolerance: 1e-5, "linear dW")
            assertClose(dB, dBn, tolerance: 1e-5, "linear db")
            assertClose(dx, dxn, tolerance: 1e-5, "linear dx")
        }
    }

    func testGeluBackwardMatchesFiniteDifferences() {
        let x = randomValues(64, seed: 31).map { $0 * 4 }
        let ones = [Float](repeating: 1, count: x.count)
        var d = [Float](repeating: 0, count: x.count)
        geluBackward(ones, x: x, dx: &d, count: x.count)
        for i in 0..<x.count {
            let v = Double(x[i]), h = 1e-5
            func gelu(_ z: Double) -> Double { 0.5 * z * (1 + erf(z / 2.0.squareRoot())) }
            XCTAssertEqual(Double(d[i]), (gelu(v + h) - gelu(v - h)) / (2 * h), accuracy: 1e-5, "x = \(v)")
        }
    }

    private func tinyModel(channels: Int = 1, dims: [Int] = [8, 16]) throws -> DiffusionModel {
        try DiffusionModel(imageSize: 8, channels: channels, hiddenDims: dims, timeDim: 8, seed: 5)
    }

    /// The model's loss and gradient against central differences of its own forward (float32:
    /// a sample of weights in every tensor whose gradient is not structurally zero).
    func testLossAndGradientMatchFiniteDifferences() throws {
        let model = try tinyModel(channels: 3, dims: [8, 16, 16])
        let (batch, h, w) = (2, 8, 12)
        let x = randomValues(batch * 3 * h * w, seed: 32), target = randomValues(x.count, seed: 33)
        let t: [Int64] = [5, 600]
        var grads = [Float](repeating: 0, count: model.parameterTotal)
        let loss = try model.lossAndGradient(x, batch: batch, channels: 3, height: h, width: w, timesteps: t,
                                             target: target, gradients: &grads)
        func forwardLoss() throws -> Double {
            var out = [Float](repeating: 0, count: x.count)
            try model.forward(x, batch: batch, channels: 3, height: h, width: w, timesteps: t, out: &out)
            return zip(out, target).reduce(0.0) { $0 + Double($1.0 - $1.1) * Double($1.0 - $1.1) } / Double(x.count)
        }
        XCTAssertEqual(loss, try forwardLoss(), accuracy: 1e-5 * loss)
        var rng = SplitMix64(seed: 34)
        for p in model.parameters {
            let g = Array(UnsafeBufferPointer(start: grads.withUnsafeBufferPointer { $0.baseAddress! } + p.offset, count: p.count))
            let scale = g.map { abs($0) }.max()!
            if scale < 1e-6 { continue }  // e.g. biases just before a GroupNorm of one channel per group
            for _ in 0..<1 {
                let i = Int(rng.next() % UInt64(p.count))
                let old = p.data[i], e: Float = 2e-3
                var values = model.parameters.map { $0.values }
                let index = model.parameters.firstIndex { $0 === p }!
                values[index][i] = old + e
                try setAll(model, values)
                let plus = try forwardLoss()
                values[index][i] = old - e
                try setAll(model, values)
                let minus = try forwardLoss()
                values[index][i] = old
                try setAll(model, values)
                let fd = (plus - minus) / Double(2 * e)
                XCTAssertEqual(Double(g[i]), fd, accuracy: 2e-2 * Double(scale), "\(p.name)[\(i)]")
            }
        }
    }

    private func setAll(_ model: DiffusionModel, _ values: [[Float]]) throws {
        let pointers = values.map { v -> UnsafeMutablePointer<Float> in
            let p = UnsafeMutablePointer<Float>.allocate(capacity: v.count)
            p.initialize(from: v, count: v.count)
            return p
        }
        defer { pointers.forEach { $0.deallocate() } }
        try model.setParameters(pointers.map { UnsafePointer($0) })
    }

    func testGradientsAreBitIdenticalAtOneAndTwoThreads() throws {
        let model = try tinyModel(channels: 3, dims: [8, 16, 16])
        let x = randomValues(3 * 3 * 8 * 8, seed: 35), target = randomValues(x.count, seed: 36)
        let t: [Int64] = [0, 500, 999]
        var results: [[Float]] = []
        for threads in [1, 2, 3] {
            var grads = [Float](repeating: 0, count: model.parameterTotal)
            _ = try withThreads(threads) {
                try model.lossAndGradient(x, batch: 3, channels: 3, height: 8, width: 8, timesteps: t, target: target,
                                          gradients: &grads)
            }
            results.append(grads)
        }
        XCTAssertTrue(results[0].elementsEqual(results[1]) { $0.bitPattern == $1.bitPattern }, "1 vs 2 threads")
        XCTAssertTrue(results[0].elementsEqual(results[2]) { $0.bitPattern == $1.bitPattern }, "1 vs 3 threads")
    }

    private func snapshot(_ trainer: Trainer) -> [[UInt32]] {
        var states: [[UInt32]] = [trainer.model.parameters.flatMap { $0.values.map(\.bitPattern) }]
        for which in [Trainer.State.ema, .firstMoments, .secondMoments] {
            var v = [Float](repeating: 0, count: trainer.total)
            trainer.copyState(which, into: &v)
            states.append(v.map(\.bitPattern))
        }
        return states
    }

    func testTrainingIsBitIdenticalAcrossThreadsAndAfterRestore() throws {
        let x0 = randomValues(2 * 8 * 8, seed: 37)
        let schedule = try NoiseSchedule.cosine(1000)
        func run(threads: Int, steps: Int, restoreAfter: Int? = nil) throws -> [[UInt32]] {
            try withThreads(threads) {
                var trainer = try Trainer(model: try tinyModel(), schedule: schedule, gradClip: 1, emaDecay: 0.9, seed: 7)
                for k in 0..<steps {
                    if k == restoreAfter {
                        // A new model and trainer restored from the state so far.
                        let state = snapshot(trainer)
                        let model = try tinyModel()
                        try setAll(model, trainer.model.parameters.map { $0.values })
                        let resumed = try Trainer(model: model, schedule: schedule, gradClip: 1, emaDecay: 0.9, seed: 7)
                        let floats = state.map { $0.map(Float.init(bitPattern:)) }
                        try resumed.restore(ema: floats[1], firstMoments: floats[2], secondMoments: floats[3],
                                            stepCount: trainer.stepCount)
                        trainer = resumed
                    }
                    let loss = try trainer.step(x0, batch: 2, channels: 1, height: 8, width: 8)
                    XCTAssertTrue(loss.isFinite)
                }
                return snapshot(trainer)
            }
        }
        let one = try run(threads: 1, steps: 4)
        XCTAssertEqual(one, try run(threads: 2, steps: 4), "1 vs 2 threads")
        XCTAssertEqual(one, try run(threads: 2, steps: 4, restoreAfter: 2), "restored after 2 steps")
        XCTAssertNotEqual(one[0], try tinyModel().parameters.flatMap { $0.values.map(\.bitPattern) }, "weights moved")
    }

    func testAFailedStepChangesNothing() throws {
        let trainer = try Trainer(model: try tinyModel(), schedule: try NoiseSchedule.cosine(100), seed: 1)
        var x0 = randomValues(8 * 8, seed: 38)
        _ = try trainer.step(x0, batch: 1, channels: 1, height: 8, width: 8)
        let before = snapshot(trainer)
        x0[5] = .nan
        XCTAssertThrowsError(try trainer.step(x0, batch: 1, channels: 1, height: 8, width: 8))
        XCTAssertThrowsError(try trainer.step(x0, batch: 1, channels: 2, height: 8, width: 8))
        XCTAssertEqual(snapshot(trainer), before)
        XCTAssertEqual(trainer.stepCount, 1)
    }

    func testAdamWMatchesItsDefinition() {
        let o = AdamWOptions(lr: 0.01, beta1: 0.8, beta2: 0.99, eps: 1e-6, weightDecay: 0.1)
        var w: [Float] = [1, -2, 0.5], m: [Float] = [0.1, 0, -0.2], v: [Float] = [0.01, 0, 0.04]
        let g: [Float] = [0.3, -1, 0]
        let (w0, m0, v0) = (w, m, v)
        adamWStep(weights: &w, gradients: g, m: &m, v: &v, count: 3, step: 3, options: o)
        for i in 0..<3 {
            let mi = 0.8 * Double(m0[i]) + 0.2 * Double(g[i]), vi = 0.99 * Double(v0[i]) + 0.01 * Double(g[i] * g[i])
            let wi = Double(w0[i]) * (1 - 0.01 * 0.1)
                - 0.01 * (mi / (1 - pow(0.8, 3))) / ((vi / (1 - pow(0.99, 3))).squareRoot() + 1e-6)
            XCTAssertEqual(Double(m[i]), mi, accuracy: 1e-6)
            XCTAssertEqual(Double(v[i]), vi, accuracy: 1e-7)
            XCTAssertEqual(Double(w[i]), wi, accuracy: 1e-5)
        }
        var grads: [Float] = [3, 4]
        XCTAssertEqual(clipGradientNorm(&grads, count: 2, maxNorm: 1), 5, accuracy: 1e-12)
        XCTAssertEqual(Double(grads[0]), 3 / (5 + 1e-6), accuracy: 1e-6)
        var unclipped: [Float] = [0.3, 0.4]
        clipGradientNorm(&unclipped, count: 2, maxNorm: 1)
        XCTAssertEqual(unclipped, [0.3, 0.4])
    }
}
