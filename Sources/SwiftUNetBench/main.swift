// Benchmark of the SwiftUNet forward: the six cases of the performance issue,
// at 1 and 2 threads, median milliseconds and GFLOP/s (FLOPs counted as a
// direct convolution would do them), plus a GEMM-only throughput line.
//
//     swift run -c release SwiftUNetBench [repeats]
import SwiftUNet
#if canImport(Glibc)
import Glibc
#endif

/// 2·MACs of one image's forward, counted as direct convolutions and matmuls.
func forwardFlops(channels c: Int, hidden d: [Int], timeDim t: Int, height: Int, width: Int) -> Double {
    var macs = 0.0
    func conv(_ cin: Int, _ cout: Int, _ k: Int, _ outPixels: Int) { macs += Double(cin * cout * k * k * outPixels) }
    func res(_ cin: Int, _ cout: Int, _ p: Int) {
        conv(cin, cout, 3, p); conv(cout, cout, 3, p)
        if cin != cout { conv(cin, cout, 1, p) }
        macs += Double(t * cout)
    }
    macs += Double(t * 4 * t * 2)
    var p = height * width
    conv(c, d[0], 3, p)
    let levels = d.count - 1
    for i in 0..<levels {
        res(d[i], d[i + 1], p)
        conv(d[i + 1], d[i + 1], 4, p / 4)
        p /= 4
    }
    let dl = d[levels]
    res(dl, dl, p)
    conv(dl, 3 * dl, 1, p); macs += Double(2 * p * p * dl); conv(dl, dl, 1, p)
    res(dl, dl, p)
    for j in 0..<levels {
        let i = levels - 1 - j
        macs += Double(d[i + 1] * d[i + 1] * 16 * p)  // transposed conv: 4 taps per output pixel
        p *= 4
        res(2 * d[i + 1], d[i], p)
    }
    conv(d[0], c, 3, p)
    return 2 * macs
}

setvbuf(stdout, nil, _IOLBF, 0)
// Arguments: [repeats] [thread counts, comma-separated] [case indices 0-5, comma-separated]
//            [batch sizes, comma-separated: replace 1 and 8 (cases 2k and 2k+1 pick the config)]
let arguments = CommandLine.arguments
let repeats = arguments.count > 1 ? Int(arguments[1]) ?? 15 : 15
let threadCounts = arguments.count > 2 ? arguments[2].split(separator: ",").compactMap { Int($0) } : [1, 2]
let selectedCases = arguments.count > 3 ? Set(arguments[3].split(separator: ",").compactMap { Int($0) }) : Set(0..<6)
let batchSizes = arguments.count > 4 ? arguments[4].split(separator: ",").compactMap { Int($0) } : [1, 8]
print("SwiftUNet \(BuildInfo.summary), median of \(repeats)")
let cases: [(size: Int, c: Int, dims: [Int])] = [(32, 3, [32, 64, 128]), (32, 3, [64, 128, 256]), (28, 1, [32, 64, 128])]
if arguments.count > 1 && arguments[1] == "pool" {
    ThreadPool.shared.numThreads = 2
    for spin in [1_000, 100_000] {
        let t0 = monotonicSeconds()
        let counts = KernelBenchmarks.poolParticipation(regions: 200, tasks: 16, spin: spin)
        print("pool: 200 regions x 16 tasks of \(spin) steps: tasks per thread \(counts), \(fmt((monotonicSeconds() - t0) * 1e3)) ms")
    }
    exit(0)
}
// 3×3 weight-gradient kernels: SwiftUNetBench dw <cin> <cout> <h> <w> <batch> <threads> [routes]
// (milliseconds of the direct kernel (route 0) and of Winograd F(2×2) and F(4×4) (2, 4))
if arguments.count > 1 && arguments[1] == "dw" {
    let v = arguments.dropFirst(2).compactMap { Int($0) }
    ThreadPool.shared.numThreads = v[5]
    var line = "dw cin=\(v[0]) cout=\(v[1]) \(v[2])x\(v[3]) b=\(v[4]) threads=\(v[5]):"
    let routes = arguments.count > 8 ? arguments[8].split(separator: ",").compactMap { Int($0) } : [0, 2, 4]
    for route in routes {
        let s = try KernelBenchmarks.weightGradientSeconds(inChannels: v[0], outChannels: v[1], height: v[2],
                                                           width: v[3], batch: v[4], route: route,
                                                           repeats: routes.count == 1 ? 60 : 15)
        line += "  \(route == 0 ? "direct" : route == 5 ? "F4-one-chain" : "F\(route)") \(fmt(s * 1e3)) ms"
    }
    print(line)
    exit(0)
}

// Training steps: SwiftUNetBench train <case 0-2> <batch> <threads> <steps>
// (Trainer.step on random images in [-1, 1]; the first step, which grows the arena, is not timed).
if arguments.count > 1 && arguments[1] == "train" {
    let ci = arguments.count > 2 ? Int(arguments[2]) ?? 0 : 0
    let batch = arguments.count > 3 ? Int(arguments[3]) ?? 8 : 8
    ThreadPool.shared.numThreads = arguments.count > 4 ? Int(arguments[4]) ?? 1 : 1
    let steps = arguments.count > 5 ? Int(arguments[5]) ?? 10 : 10
    let cfg = cases[ci]
    let model = try DiffusionModel(imageSize: cfg.size, channels: cfg.c, hiddenDims: cfg.dims, timeDim: 128, seed: 0)
    let trainer = try Trainer(model: model, schedule: try NoiseSchedule.cosine(1000), seed: 0)
    var rng = SplitMix64(seed: 7)
    let n = batch * cfg.c * cfg.size * cfg.size
    let x = try Tensor(shape: [batch, cfg.c, cfg.size, cfg.size], values: (0..<n).map { _ in rng.nextUnitFloat() * 2 - 1 })
    var times: [Double] = []
    var faults = 0
    for s in 0...steps {
        if s == 1 { faults = minorFaults() }
        let t0 = monotonicSeconds()
        let loss = try trainer.step(x.data, batch: batch, channels: cfg.c, height: cfg.size, width: cfg.size)
        if s > 0 { times.append(monotonicSeconds() - t0) }
        if s == 0 || s == steps { print("step \(s) loss \(loss)") }
    }
    faults = minorFaults() - faults
    times.sort()
    print("page faults per timed step: \(faults / max(1, steps))")
    print("train \(cfg.size)x\(cfg.size)x\(cfg.c) \(cfg.dims) b=\(batch) threads=\(ThreadPool.shared.numThreads): "
          + "median \(fmt(times[times.count / 2] * 1e3)) ms  min \(fmt(times[0] * 1e3)) ms  arena \(model.arenaBytes >> 20) MiB")
    exit(0)
}
if arguments.count > 1 && arguments[1] == "micro" {
    for _ in 0..<3 {
        let r = KernelBenchmarks.microKernelRates()
        print("micro-kernel 8x32: \(fmt(r.wide)) GFLOP/s  8x16: \(fmt(r.narrow))  16x16: \(fmt(r.tall)) GFLOP/s")
    }
    exit(0)
}
for threads in threadCounts {
    ThreadPool.shared.numThreads = threads
    for (ci, cfg) in cases.enumerated() where selectedCases.contains(2 * ci) || selectedCases.contains(2 * ci + 1) {
        let model = try DiffusionModel(imageSize: cfg.size, channels: cfg.c, hiddenDims: cfg.dims, timeDim: 128, seed: 0)
        for batch in batchSizes where selectedCases.contains(2 * ci) || selectedCases.contains(2 * ci + 1) {
            var rng = SplitMix64(seed: 7)
            let n = batch * cfg.c * cfg.size * cfg.size
            let x = try Tensor(shape: [batch, cfg.c, cfg.size, cfg.size], values: (0..<n).map { _ in rng.nextUnitFloat() * 2 - 1 })
            let out = try Tensor(zeros: x.shape)
            let t = (0..<batch).map { Int64(($0 * 137) % 1000) }
            var times: [Double] = [], cpuTimes: [Double] = []
            for r in 0..<(repeats + 2) {
                let c0 = processCPUSeconds()
                let t0 = monotonicSeconds()
                try t.withUnsafeBufferPointer {
                    try model.forward(x.data, batch: batch, channels: cfg.c, height: cfg.size, width: cfg.size,
                                      timesteps: $0.baseAddress!, out: out.data)
                }
                if r >= 2 {
                    times.append(monotonicSeconds() - t0)
                    cpuTimes.append(processCPUSeconds() - c0)
                }
            }
            times.sort()
            cpuTimes.sort()
            let median = times[times.count / 2]
            let flops = Double(batch) * forwardFlops(channels: cfg.c, hidden: cfg.dims, timeDim: 128, height: cfg.size, width: cfg.size)
            let label = "\(cfg.size)x\(cfg.size)x\(cfg.c) \(cfg.dims) b=\(batch) threads=\(threads)"
            print(label + String(repeating: " ", count: max(0, 44 - label.count))
                  + " median \(fmt(median * 1e3)) ms  min \(fmt(times[0] * 1e3)) ms  \(fmt(flops / median / 1e9)) GFLOP/s"
                  + "  cpu \(fmt(cpuTimes[cpuTimes.count / 2] * 1e3)) ms  arena \(model.arenaBytes / 1024) KiB")
        }
    }
    // GEMM alone: a 128 × 1024 × 1152 product (a 3×3 conv of 128 channels at 32×32) over 4 images.
    if arguments.count > 3 { continue }   // cases were picked: forward only (for profiling)
    let (m, nn, k, images) = (128, 1024, 1152, 4)
    let s = try KernelBenchmarks.gemmSeconds(m: m, n: nn, k: k, images: images, repeats: repeats)
    print("GEMM \(m)x\(nn)x\(k) x\(images) threads=\(threads): \(fmt(s * 1e3)) ms  \(fmt(2.0 * Double(m * nn * k * images) / s / 1e9)) GFLOP/s")
}

func fmt(_ v: Double) -> String {
    let r = (v * 100).rounded() / 100
    return String(r)
}

/// User + system CPU seconds of this process (all threads): a load-independent
/// cost measure on a shared machine.
func processCPUSeconds() -> Double {
    var usage = rusage()
    getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &usage)
    return Double(usage.ru_utime.tv_sec) + Double(usage.ru_utime.tv_usec) * 1e-6
        + Double(usage.ru_stime.tv_sec) + Double(usage.ru_stime.tv_usec) * 1e-6
}

/// Minor page faults of this process so far.
func minorFaults() -> Int {
    var usage = rusage()
    getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &usage)
    return usage.ru_minflt
}
