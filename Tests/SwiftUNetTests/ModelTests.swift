import XCTest
#if canImport(Glibc)
import Glibc
#endif
@testable import SwiftUNet

/// The whole model against an independent composition of the plain kernels,
/// following docs/model.md section 1 step by step.
final class ModelTests: XCTestCase {
    /// A forward written from docs/model.md with the plain kernels and float64 linear layers.
    private func specForward(_ m: DiffusionModel, x: [Float], t: [Int64], batch: Int, height: Int, width: Int) -> [Float] {
        func p(_ name: String) -> [Float] { m.parameter(named: name)!.values }
        let c = m.config, d = c.hiddenDims, levels = c.levels, td = c.timeDim

        func linear(_ x: [Float], _ prefix: String, _ nIn: Int, _ nOut: Int) -> [Float] {
            let w = p(prefix + ".weight"), b = p(prefix + ".bias")
            var y = [Float](repeating: 0, count: batch * nOut)
            for bi in 0..<batch {
                for o in 0..<nOut {
                    var s = Double(b[o])
                    for i in 0..<nIn { s += Double(w[o * nIn + i]) * Double(x[bi * nIn + i]) }
                    y[bi * nOut + o] = Float(s)
                }
            }
            return y
        }
        func conv(_ x: [Float], _ prefix: String, _ cin: Int, _ cout: Int, _ h: Int, _ w: Int,
                  k: Int, s: Int = 1, pad: Int, bias: [Float]? = nil) -> [Float] {
            let g = ConvGeometry(inChannels: cin, outChannels: cout, height: h, width: w, kernel: k, stride: s, padding: pad)
            var y = [Float](repeating: 0, count: batch * cout * g.outHeight * g.outWidth)
            conv2dNaive(x, batch: batch, geometry: g, weights: p(prefix + ".weight"),
                        bias: bias ?? p(prefix + ".bias"), biasBatchStride: bias == nil ? 0 : cout, y: &y, accumulate: false)
            return y
        }
        func norm(_ x: [Float], _ prefix: String, _ ch: Int, _ hw: Int, silu: Bool) -> [Float] {
            var y = x
            groupNormNaive(x, batch: batch, channels: ch, spatial: hw, groups: 8, gamma: p(prefix + ".weight"),
                           beta: p(prefix + ".bias"), eps: 1e-5, silu: silu, y: &y)
            return y
        }
        func res(_ x: [Float], _ prefix: String, _ cin: Int, _ cout: Int, _ h: Int, _ w: Int, _ temb: [Float]) -> [Float] {
            let proj = linear(temb, prefix + ".time_proj", td, cout)
            let b1 = p(prefix + ".conv1.bias")
            let bias1 = (0..<batch * cout).map { proj[$0] + b1[$0 % cout] }
            let h1 = conv(norm(x, prefix + ".norm1", cin, h * w, silu: true), prefix + ".conv1", cin, cout, h, w,
                          k: 3, pad: 1, bias: bias1)
            let h2 = conv(norm(h1, prefix + ".norm2", cout, h * w, silu: true), prefix + ".conv2", cout, cout, h, w, k: 3, pad: 1)
            let skip = cin == cout ? x : conv(x, prefix + ".skip", cin, cout, h, w, k: 1, pad: 0)
            return zip(h2, skip).map { $0 + $1 }
        }

        var e = [Float](repeating: 0, count: batch * td)
        sinusoidalEmbedding(t, batch: batch, dim: td, e: &e)
        var hidden = linear(e, "time_mlp.fc1", td, 4 * td)
        hidden = hidden.map { Float(0.5 * Double($0) * (1 + erf(Double($0) / 2.0.squareRoot()))) }
        let temb = linear(hidden, "time_mlp.fc2", 4 * td, td)

        var h = conv(x, "init_conv", c.channels, d[0], height, width, k: 3, pad: 1)
        var hh = height, ww = width
        var skips: [[Float]] = []
        for i in 0..<levels {
            let s = res(h, "down_blocks.\(i).res", d[i], d[i + 1], hh, ww, temb)
            skips.append(s)
            h = conv(s, "down_blocks.\(i).down", d[i + 1], d[i + 1], hh, ww, k: 4, s: 2, pad: 1)
            hh /= 2
            ww /= 2
        }
        let dl = d[levels], n = hh * ww
        h = res(h, "bottleneck.res1", dl, dl, hh, ww, temb)
        let qkv = conv(norm(h, "bottleneck.attn.norm", dl, n, silu: false), "bottleneck.attn.qkv", dl, 3 * dl, hh, ww, k: 1, pad: 0)
        var o = [Float](repeating: 0, count: batch * dl * n)
        for b in 0..<batch {
            var ob = [Float](repeating: 0, count: dl * n)
            attentionNaive(qkv: Array(qkv[(b * 3 * dl * n)..<((b + 1) * 3 * dl * n)]), channels: dl, positions: n, heads: 4, o: &ob)
            for i in 0..<dl * n { o[b * dl * n + i] = ob[i] }
        }
        let projected = conv(o, "bottleneck.attn.proj", dl, dl, hh, ww, k: 1, pad: 0)
        h = zip(h, projected).map { $0 + $1 }
        h = res(h, "bottleneck.res2", dl, dl, hh, ww, temb)
        for j in 0..<levels {
            let i = levels - 1 - j, ch = d[i + 1]
            let g = ConvGeometry(inChannels: ch, outChannels: ch, height: hh, width: ww, kernel: 4, stride: 2, padding: 1)
            var up = [Float](repeating: 0, count: batch * ch * 4 * hh * ww)
            convTranspose2dNaive(h, batch: batch, geometry: g, weights: p("up_blocks.\(j).up.weight"),
                                 bias: p("up_blocks.\(j).up.bias"), y: &up)
            hh *= 2
            ww *= 2
            let plane = ch * hh * ww
            var joined: [Float] = []
            for b in 0..<batch {
                joined += up[(b * plane)..<((b + 1) * plane)]
                joined += skips[i][(b * plane)..<((b + 1) * plane)]
            }
            h = res(joined, "up_blocks.\(j).res", 2 * ch, d[i], hh, ww, temb)
        }
        return conv(norm(h, "out_norm", d[0], hh * ww, silu: true), "out_conv", d[0], c.channels, hh, ww, k: 3, pad: 1)
    }

    /// Gives every GroupNorm a non-trivial affine so the test sees it.
    private func perturbNorms(_ m: DiffusionModel) throws {
        var sources: [[Float]] = m.parameters.map { $0.values }
        var rng = SplitMix64(seed: 99)
        for (i, p) in m.parameters.enumerated() where p.name.contains("norm") {
            for j in 0..<p.count {
                let u = rng.nextUnitFloat()
                sources[i][j] = p.name.hasSuffix("weight") ? 0.5 + u : u - 0.5
            }
        }
        let pointers = sources.map { arr -> UnsafeMutablePointer<Float> in
            let q = UnsafeMutablePointer<Float>.allocate(capacity: arr.count)
            q.initialize(from: arr, count: arr.count)
            return q
        }
        defer { pointers.forEach { $0.deallocate() } }
        try m.setParameters(pointers.map { UnsafePointer($0) })
    }

    func testForwardMatchesSpecComposition() throws {
        let cases: [(c: Int, dims: [Int], td: Int, b: Int, h: Int, w: Int)] = [
            (1, [8, 16], 8, 2, 4, 6),
            (3, [8, 16, 24], 16, 1, 8, 8),
            (2, [16, 8], 4, 1, 2, 2),
            (1, [8, 16], 8, 1, 16, 16),  // 16×16: the first level takes Winograd F(4×4) tiles
        ]
        for c in cases {
            let m = try DiffusionModel(imageSize: c.h, channels: c.c, hiddenDims: c.dims, timeDim: c.td, seed: 3)
            try perturbNorms(m)
            let x = try Tensor(shape: [c.b, c.c, c.h, c.w], values: randomValues(c.b * c.c * c.h * c.w, seed: 21))
            let t: [Int] = (0..<c.b).map { [0, 999, 17][$0 % 3] }
            let y = try m.forward(x, timesteps: t)
            let expected = specForward(m, x: x.values, t: t.map { Int64($0) }, batch: c.b, height: c.h, width: c.w)
            assertClose(y.values, expected, tolerance: 1e-5, "model \(c)")
        }
    }

    func testParameterNamesFollowStateDictOrder() throws {
        let m = try DiffusionModel(imageSize: 8, channels: 3, hiddenDims: [8, 16, 32], timeDim: 8)
        let names = m.parameters.map { $0.name }
        XCTAssertEqual(Array(names.prefix(6)), ["time_mlp.fc1.weight", "time_mlp.fc1.bias", "time_mlp.fc2.weight",
                                                "time_mlp.fc2.bias", "init_conv.weight", "init_conv.bias"])
        XCTAssertEqual(names.last, "out_conv.bias")
        XCTAssertTrue(names.contains("down_blocks.0.res.skip.weight"))
        XCTAssertFalse(names.contains("bottleneck.res1.skip.weight"))
        XCTAssertEqual(m.parameter(named: "up_blocks.0.up.weight")!.shape, [32, 32, 4, 4])
        XCTAssertEqual(m.parameter(named: "up_blocks.1.res.conv1.weight")!.shape, [8, 32, 3, 3])
        XCTAssertLessThan(names.firstIndex(of: "up_blocks.0.up.bias")!, names.firstIndex(of: "up_blocks.0.res.norm1.weight")!)
    }

    func testInvalidInputsThrow() throws {
        XCTAssertThrowsError(try DiffusionModel(imageSize: 8, channels: 3, hiddenDims: [8]))
        XCTAssertThrowsError(try DiffusionModel(imageSize: 8, channels: 3, hiddenDims: [8, 12]))
        XCTAssertThrowsError(try DiffusionModel(imageSize: 6, channels: 3, hiddenDims: [8, 16, 32]))
        XCTAssertThrowsError(try DiffusionModel(imageSize: 8, channels: 0))
        XCTAssertThrowsError(try DiffusionModel(imageSize: 8, channels: 1, timeDim: 7))
        let m = try DiffusionModel(imageSize: 4, channels: 1, hiddenDims: [8, 16], timeDim: 4)
        XCTAssertThrowsError(try m.forward(try Tensor(zeros: [1, 2, 4, 4]), timesteps: [0]))
        XCTAssertThrowsError(try m.forward(try Tensor(zeros: [1, 1, 3, 4]), timesteps: [0]))
        XCTAssertThrowsError(try m.forward(try Tensor(zeros: [1, 1, 4, 4]), timesteps: [-1]))
        XCTAssertThrowsError(try m.forward(try Tensor(zeros: [2, 1, 4, 4]), timesteps: [0]))
    }

    func testBatchOfOneMatchesBatchedImages() throws {
        let m = try DiffusionModel(imageSize: 8, channels: 3, hiddenDims: [8, 16, 32], timeDim: 16, seed: 5)
        let per = 3 * 8 * 8
        let xs = randomValues(3 * per, seed: 4)
        let batched = try m.forward(try Tensor(shape: [3, 3, 8, 8], values: xs), timesteps: [1, 50, 900])
        for (i, t) in [1, 50, 900].enumerated() {
            let single = try m.forward(try Tensor(shape: [1, 3, 8, 8], values: Array(xs[(i * per)..<((i + 1) * per)])),
                                       timesteps: [t])
            XCTAssertEqual(single.values, Array(batched.values[(i * per)..<((i + 1) * per)]), "image \(i)")
        }
    }

    /// Results must be bit-identical for every thread count (tasks tile outputs only).
    func testForwardIsBitIdenticalAcrossThreadCounts() throws {
        let m = try DiffusionModel(imageSize: 8, channels: 3, hiddenDims: [8, 16, 32], timeDim: 16, seed: 6)
        try perturbNorms(m)
        let x = try Tensor(shape: [2, 3, 8, 8], values: randomValues(2 * 3 * 64, seed: 8))
        let saved = ThreadPool.shared.numThreads
        defer { ThreadPool.shared.numThreads = saved }
        var results: [[Float]] = []
        for threads in [1, 2, 3] {
            ThreadPool.shared.numThreads = threads
            results.append(try m.forward(x, timesteps: [3, 700]).values)
        }
        XCTAssertEqual(results[0], results[1], "1 vs 2 threads")
        XCTAssertEqual(results[0], results[2], "1 vs 3 threads")
    }

    /// An image's output must not depend on the batch it is computed in, at any thread count.
    func testImageAloneMatchesImageInBatchAtEveryThreadCount() throws {
        let m = try DiffusionModel(imageSize: 12, channels: 1, hiddenDims: [16, 24], timeDim: 8, seed: 2)
        let per = 12 * 12
        let xs = randomValues(3 * per, seed: 10)
        let saved = ThreadPool.shared.numThreads
        defer { ThreadPool.shared.numThreads = saved }
        for threads in [1, 2, 3] {
            ThreadPool.shared.numThreads = threads
            let batched = try m.forward(try Tensor(shape: [3, 1, 12, 12], values: xs), timesteps: [5, 5, 400])
            for i in 0..<3 {
                let single = try m.forward(try Tensor(shape: [1, 1, 12, 12], values: Array(xs[(i * per)..<((i + 1) * per)])),
                                           timesteps: [[5, 5, 400][i]])
                XCTAssertEqual(single.values, Array(batched.values[(i * per)..<((i + 1) * per)]), "image \(i) threads \(threads)")
            }
        }
    }

    /// Concurrent forwards from several OS threads finish and agree with a sequential one.
    func testConcurrentForwardsAgree() throws {
        let m = try DiffusionModel(imageSize: 8, channels: 2, hiddenDims: [8, 16], timeDim: 8, seed: 4)
        let x = try Tensor(shape: [2, 2, 8, 8], values: randomValues(2 * 2 * 64, seed: 12))
        let expected = try m.forward(x, timesteps: [1, 2]).values
        let callers = (0..<4).map { _ in ConcurrentCaller(model: m, x: x) }
        var threads: [pthread_t] = []
        for caller in callers {
            var t = pthread_t()
            XCTAssertEqual(pthread_create(&t, nil, { raw in
                Unmanaged<ConcurrentCaller>.fromOpaque(raw!).takeUnretainedValue().run()
                return nil
            }, Unmanaged.passUnretained(caller).toOpaque()), 0)
            threads.append(t)
        }
        for t in threads { pthread_join(t, nil) }
        for (i, caller) in callers.enumerated() { XCTAssertEqual(caller.result, expected, "caller \(i)") }
    }
}

/// One OS thread's share of `testConcurrentForwardsAgree`: three forwards, keeps the last.
private final class ConcurrentCaller {
    let model: DiffusionModel
    let x: Tensor
    var result: [Float] = []
    init(model: DiffusionModel, x: Tensor) {
        self.model = model
        self.x = x
    }
    func run() {
        for _ in 0..<3 { result = (try? model.forward(x, timesteps: [1, 2]).values) ?? [] }
    }
}
