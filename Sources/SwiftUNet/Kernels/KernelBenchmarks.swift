#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Seconds on a monotonic clock.
public func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}

/// Micro-benchmarks of single kernels, for the benchmark executable.
public enum KernelBenchmarks {
    /// Median seconds of `repeats` runs of C [m, n] = A [m, k] · B [k, n] over `images`
    /// independent B/C pairs (one parallel region, as a convolution layer would run).
    public static func gemmSeconds(m: Int, n: Int, k: Int, images: Int, repeats: Int) throws -> Double {
        var rng = SplitMix64(seed: 1)
        let a = try allocateFloatsOrThrow(m * k, "bench A")
        let b = try allocateFloatsOrThrow(images * k * n, "bench B")
        let c = try allocateFloatsOrThrow(images * m * n, "bench C")
        defer { freeFloats(a); freeFloats(b); freeFloats(c) }
        for i in 0..<(m * k) { a[i] = rng.nextUnitFloat() - 0.5 }
        for i in 0..<(images * k * n) { b[i] = rng.nextUnitFloat() - 0.5 }
        let packed = try PackedMatrix(rows: m, cols: k, source: a, ld: k)
        let ws = Workspace()
        var times: [Double] = []
        for _ in 0..<repeats {
            let t0 = monotonicSeconds()
            try batchedGemm(DenseOperands(weights: packed, b: b, bStride: k * n, ld: n, cBase: c, cStride: m * n,
                                          biasBase: nil, biasStride: 0),
                            n: n, images: images, ldc: n, accumulate: false, workspace: ws)
            times.append(monotonicSeconds() - t0)
            try ws.reset()
        }
        times.sort()
        return times[times.count / 2]
    }
}

extension KernelBenchmarks {
    /// Tasks run by each pool thread over `regions` regions of `tasks` busy tasks
    /// (a check that helpers do take part).
    public static func poolParticipation(regions: Int, tasks: Int, spin: Int) -> [Int] {
        let pool = ThreadPool.shared
        let maxThreads = pool.threadsFor(tasks)
        let counts = UnsafeMutablePointer<Int>.allocate(capacity: maxThreads * 16)
        counts.initialize(repeating: 0, count: maxThreads * 16)
        defer { counts.deallocate() }
        let sink = UnsafeMutablePointer<Double>.allocate(capacity: tasks)
        defer { sink.deallocate() }
        for _ in 0..<regions {
            pool.parallelFor(tasks, maxThreads: maxThreads) { task, thread in
                var x = Double(task)
                for _ in 0..<spin { x = x * 0.999_999 + 1e-9 }
                sink[task] = x
                counts[thread * 16] += 1
            }
        }
        return (0..<maxThreads).map { counts[$0 * 16] }
    }
}

extension KernelBenchmarks {
    /// GFLOP/s of the 8×32 and 8×16 micro-kernels on L1-resident panels (k = 256).
    public static func microKernelRates() -> (wide: Double, narrow: Double, tall: Double) {
        let kc = 256
        let a = allocateFloats(16 * kc)!, b = allocateFloats(32 * kc)!, c = allocateFloats(8 * 32)!
        defer { freeFloats(a); freeFloats(b); freeFloats(c) }
        for i in 0..<(16 * kc) { a[i] = 1e-3 }
        for i in 0..<(32 * kc) { b[i] = 1e-3 }
        c.initialize(repeating: 0, count: 256)
        let calls = 20_000
        var t0 = monotonicSeconds()
        for _ in 0..<calls { microKernel8x32(kc, a, b, c, 32) }
        let wide = Double(2 * 8 * 32 * kc * calls) / (monotonicSeconds() - t0) / 1e9
        t0 = monotonicSeconds()
        for _ in 0..<calls { microKernel8x16(kc, a, b, c, 32) }
        let narrow = Double(2 * 8 * 16 * kc * calls) / (monotonicSeconds() - t0) / 1e9
        let c2 = allocateFloats(16 * 32)!
        defer { freeFloats(c2) }
        c2.initialize(repeating: 0, count: 512)
        t0 = monotonicSeconds()
        for _ in 0..<calls { microKernel16x16(kc, a, a + 8 * kc, b, c2, 32) }
        let tall = Double(2 * 16 * 16 * kc * calls) / (monotonicSeconds() - t0) / 1e9
        return (wide, narrow, tall)
    }
}

extension KernelBenchmarks {
    /// Fastest of `repeats` 3×3 weight gradients of dy [batch, cout, h, w] and x [batch, cin,
    /// h, w]: `route` 0 the direct kernel, 2 and 4 Winograd F(2×2) and F(4×4), 5 F(4×4) with
    /// the tiles in one chain.
    public static func weightGradientSeconds(inChannels cin: Int, outChannels cout: Int, height h: Int, width w: Int,
                                             batch: Int, route: Int, repeats: Int) throws -> Double {
        var rng = SplitMix64(seed: 2)
        let x = try allocateFloatsOrThrow(batch * cin * h * w, "bench x")
        let dy = try allocateFloatsOrThrow(batch * cout * h * w, "bench dy")
        let dW = try allocateFloatsOrThrow(cout * cin * 9, "bench dW")
        defer { freeFloats(x); freeFloats(dy); freeFloats(dW) }
        for i in 0..<(batch * cin * h * w) { x[i] = rng.nextUnitFloat() - 0.5 }
        for i in 0..<(batch * cout * h * w) { dy[i] = rng.nextUnitFloat() - 0.5 }
        dW.update(repeating: 0, count: cout * cin * 9)
        let ws = Workspace()
        var times: [Double] = []
        for _ in 0..<repeats {
            let t0 = monotonicSeconds()
            if route == 0 {
                try conv3x3WeightGradient(dy, x: x, batch: batch, inChannels: cin, outChannels: cout, height: h,
                                          width: w, dWeight: dW, workspace: ws)
            } else {
                try winogradWeightGradient3x3(dy, x: x, batch: batch, inChannels: cin, outChannels: cout, height: h,
                                              width: w, tile: route == 2 ? .two : .four, dWeight: dW,
                                              splitTiles: route != 5, workspace: ws)
            }
            times.append(monotonicSeconds() - t0)
            try ws.reset()
        }
        // The fastest run: on a shared machine the others mostly measure the neighbours.
        return times.min()!
    }
}
