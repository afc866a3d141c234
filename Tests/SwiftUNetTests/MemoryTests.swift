import XCTest
@testable import SwiftUNet

/// What a model holds besides its raw weights: exactly the packed forms its forwards run.
final class MemoryTests: XCTestCase {
    /// Bytes of a packed [rows, cols] matrix as a weight store carves it (8-row panels,
    /// blocks rounded to 16 floats).
    private func matrixBytes(_ rows: Int, _ cols: Int) -> Int {
        let floats = max(1, (rows + 7) / 8 * 8 * cols)
        return (floats + 15) / 16 * 16 * 4
    }

    /// The packed bytes a model of `dims` should hold, computed from the architecture: each
    /// 3×3 convolution's F(4×4) weights where its expected size is at least 12 (F(2×2) below,
    /// or when `smallTilesAt` includes that size), the Winograd forms of the 4×4 ones, the
    /// GEMM form of the 1×1 ones.
    private func expectedPackedBytes(channels c: Int, dims d: [Int], imageSize: Int,
                                     smallTilesAt: Set<Int> = []) -> Int {
        var bytes = 0
        func conv3(_ cin: Int, _ cout: Int, expected: Int) {
            guard min(cin, cout) >= 8 else { return }  // the direct kernel reads the raw weights
            if expected >= 12 { bytes += 36 * matrixBytes(cout, cin) }
            if expected < 12 || smallTilesAt.contains(expected) { bytes += 16 * matrixBytes(cout, cin) }
        }
        func res(_ cin: Int, _ cout: Int, expected: Int) {
            conv3(cin, cout, expected: expected)
            conv3(cout, cout, expected: expected)
            if cin != cout { bytes += matrixBytes(cout, cin) }
        }
        func down(_ ch: Int) { bytes += ch >= 8 ? 9 * matrixBytes(ch, 4 * ch) : matrixBytes(ch, 16 * ch) }
        func up(_ ch: Int) { bytes += ch >= 8 ? 36 * matrixBytes(ch, ch) : 4 * matrixBytes(ch, 4 * ch) }
        let levels = d.count - 1
        conv3(c, d[0], expected: 0)
        for i in 0..<levels {
            res(d[i], d[i + 1], expected: imageSize >> i)
            down(d[i + 1])
        }
        res(d[levels], d[levels], expected: imageSize >> levels)
        bytes += matrixBytes(3 * d[levels], d[levels]) + matrixBytes(d[levels], d[levels])
        res(d[levels], d[levels], expected: imageSize >> levels)
        for j in 0..<levels {
            let i = levels - 1 - j
            up(d[i + 1])
            res(2 * d[i + 1], d[i], expected: imageSize >> i)
        }
        conv3(d[0], c, expected: 0)
        return bytes
    }

    func testPackedWeightsAreExactlyTheFormsTheForwardRuns() throws {
        let cases: [(c: Int, dims: [Int], size: Int)] = [
            (3, [16, 32, 64], 32), (1, [8, 16], 16), (8, [8, 16, 24], 8), (2, [8, 16], 24),
        ]
        for k in cases {
            let m = try DiffusionModel(imageSize: k.size, channels: k.c, hiddenDims: k.dims, timeDim: 16, seed: 1)
            XCTAssertEqual(m.packedWeightBytes, expectedPackedBytes(channels: k.c, dims: k.dims, imageSize: k.size),
                           "\(k)")
        }
    }

    func testSmallTilesArePreparedOnceForSmallerImages() throws {
        let m = try DiffusionModel(imageSize: 32, channels: 3, hiddenDims: [16, 32, 64], timeDim: 16, seed: 2)
        let atExpectedSize = expectedPackedBytes(channels: 3, dims: [16, 32, 64], imageSize: 32)
        _ = try m.forward(try Tensor(zeros: [1, 3, 32, 32]), timesteps: [5])
        XCTAssertEqual(m.packedWeightBytes, atExpectedSize)
        // At 16×16 the first level (expected 32) still runs F(4×4) tiles, the second
        // (expected 16) sees 8×8 and needs F(2×2) weights: prepared once, then kept.
        _ = try m.forward(try Tensor(zeros: [2, 3, 16, 16]), timesteps: [5, 6])
        let withSmallTiles = expectedPackedBytes(channels: 3, dims: [16, 32, 64], imageSize: 32, smallTilesAt: [16])
        XCTAssertGreaterThan(withSmallTiles, atExpectedSize)
        XCTAssertEqual(m.packedWeightBytes, withSmallTiles)
        for size in [16, 32, 16, 48] {
            _ = try m.forward(try Tensor(zeros: [1, 3, size, size]), timesteps: [7])
            XCTAssertEqual(m.packedWeightBytes, withSmallTiles, "after a forward at \(size)")
        }
        // New weights rebuild the same forms.
        let values = m.parameters.map { p in p.values.map { $0 * 0.5 } }
        try values.withPointers { try m.setParameters($0) }
        XCTAssertEqual(m.packedWeightBytes, withSmallTiles)
        // At 8×8 the first level needs them as well.
        _ = try m.forward(try Tensor(zeros: [1, 3, 8, 8]), timesteps: [7])
        XCTAssertEqual(m.packedWeightBytes,
                       expectedPackedBytes(channels: 3, dims: [16, 32, 64], imageSize: 32, smallTilesAt: [16, 32]))
    }

    /// A 4×4 stride-2 convolution keeps only its Winograd form; a call that accumulates (which
    /// that route declines) packs the GEMM form in the workspace and still computes y += conv(x).
    func testStridedConvolutionAccumulatesWithoutAKeptGemmForm() throws {
        let registry = ParameterRegistry()
        let conv = try Conv2d(registry, "down", inChannels: 8, outChannels: 16, kernel: 4, stride: 2, padding: 1)
        var rng = SplitMix64(seed: 9)
        conv.weight.initialize(using: &rng)
        conv.bias.initialize(using: &rng)
        try conv.prepare()
        XCTAssertNil(conv.packed)
        XCTAssertNotNil(conv.stridedWinograd)
        let (batch, h, w) = (2, 6, 10)
        let x = randomValues(batch * 8 * h * w, seed: 10)
        let y0 = randomValues(batch * 16 * (h / 2) * (w / 2), seed: 11)
        var y = y0, expected = y0
        let workspace = Workspace()
        try x.withUnsafeBufferPointer { xp in
            try y.withUnsafeMutableBufferPointer { yp in
                try conv.forward(xp.baseAddress!, batch: batch, height: h, width: w, into: yp.baseAddress!,
                                 accumulate: true, workspace: workspace)
            }
            expected.withUnsafeMutableBufferPointer { ep in
                conv2dNaive(xp.baseAddress!, batch: batch, geometry: conv.geometry(height: h, width: w),
                            weights: conv.weight.data, bias: conv.bias.data, biasBatchStride: 0,
                            y: ep.baseAddress!, accumulate: true)
            }
        }
        assertClose(y, expected, tolerance: 1e-5)
    }

    /// The F(2×2) weights prepared for a call below the expected size give the bits of a
    /// model that held them from the start: a model made for 32×32 images run at 8×8
    /// against the same weights made for 8×8 (every layer runs F(2×2) tiles in both).
    func testSmallTilesPreparedLaterGiveTheSameBits() throws {
        let x = try Tensor(shape: [2, 3, 8, 8], values: randomValues(2 * 3 * 64, seed: 4))
        let eager = try DiffusionModel(imageSize: 8, channels: 3, hiddenDims: [16, 32, 64], timeDim: 16, seed: 5)
        let lazy = try DiffusionModel(imageSize: 32, channels: 3, hiddenDims: [16, 32, 64], timeDim: 16, seed: 5)
        XCTAssertEqual(eager.parameters.map { $0.values }, lazy.parameters.map { $0.values })
        let expected = try eager.forward(x, timesteps: [300, 2]).values
        XCTAssertEqual(try lazy.forward(x, timesteps: [300, 2]).values, expected)
        XCTAssertEqual(try lazy.forward(x, timesteps: [300, 2]).values, expected)
    }
}

private extension Array where Element == [Float] {
    /// Calls `body` with a pointer to each array's storage.
    func withPointers<R>(_ body: ([UnsafePointer<Float>]) throws -> R) throws -> R {
        let copies = map { values -> UnsafeMutablePointer<Float> in
            let p = UnsafeMutablePointer<Float>.allocate(capacity: Swift.max(values.count, 1))
            p.initialize(from: values, count: values.count)
            return p
        }
        defer { copies.forEach { $0.deallocate() } }
        return try body(copies.map { UnsafePointer($0) })
    }
}
