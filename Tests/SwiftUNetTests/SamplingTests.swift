import XCTest
@testable import SwiftUNet
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Noise schedules, the Gaussian generator and the sampler step math against
/// their plain definitions (docs/model.md section 3, docs/sampling.md).
final class SamplingTests: XCTestCase {
    // MARK: schedules

    func testCosineScheduleMatchesDefinition() throws {
        let T = 1000
        let s = try NoiseSchedule.cosine(T)
        XCTAssertEqual(s.numTimesteps, T)
        func f(_ u: Double) -> Double {
            let v = cos((u / Double(T) + 0.008) / 1.008 * Double.pi / 2)
            return v * v
        }
        var ab = 1.0
        for t in 0..<T {
            let beta = min(1 - f(Double(t + 1)) / f(Double(t)), 0.999)
            XCTAssertEqual(s.betas[t], beta, accuracy: 1e-15)
            ab *= 1 - beta
            XCTAssertEqual(s.alphasCumprod[t], ab, accuracy: 1e-15)
            // Without the clip, alpha_bar_t would be f(t+1)/f(0).
            if beta < 0.999 { XCTAssertEqual(s.alphasCumprod[t], f(Double(t + 1)) / f(0), accuracy: 1e-12) }
        }
        XCTAssertEqual(s.betas[T - 1], 0.999)
        for t in 1..<T { XCTAssertLessThan(s.alphasCumprod[t], s.alphasCumprod[t - 1]) }
    }

    func testLinearScheduleIsEvenlySpaced() throws {
        let s = try NoiseSchedule.linear(1000, betaStart: 1e-4, betaEnd: 0.02)
        XCTAssertEqual(s.betas.first, 1e-4)
        XCTAssertEqual(s.betas.last, 0.02)
        for t in 0..<1000 { XCTAssertEqual(s.betas[t], 1e-4 + Double(t) * (0.02 - 1e-4) / 999, accuracy: 1e-17) }
        let one = try NoiseSchedule.linear(1, betaStart: 0.3, betaEnd: 0.5)
        XCTAssertEqual(one.betas, [0.3])
        XCTAssertEqual(one.alphasCumprod, [0.7])
    }

    func testScheduleValidation() {
        XCTAssertThrowsError(try NoiseSchedule.cosine(0))
        XCTAssertThrowsError(try NoiseSchedule(betas: []))
        XCTAssertThrowsError(try NoiseSchedule(betas: [0.1, 1.0]))
        XCTAssertThrowsError(try NoiseSchedule(betas: [0.1, .nan]))
        XCTAssertThrowsError(try NoiseSchedule(betas: [1e-20, 0.1]))  // 1 - beta rounds to 1
        XCTAssertThrowsError(try NoiseSchedule.linear(10, betaStart: 0, betaEnd: 0.02))
        XCTAssertNoThrow(try NoiseSchedule(betas: [0.5]))
    }

    func testDDIMTimesteps() throws {
        let s = try NoiseSchedule.cosine(1000)
        XCTAssertEqual(try s.ddimTimesteps(steps: 1), [999])
        XCTAssertEqual(try s.ddimTimesteps(steps: 2), [999, 0])
        XCTAssertEqual(try s.ddimTimesteps(steps: 1000), Array((0..<1000).reversed()))
        // 999 * i / 6 has ties at odd i: 166.5 -> 166, 499.5 -> 500, 832.5 -> 832 (ties to even).
        XCTAssertEqual(try s.ddimTimesteps(steps: 7), [999, 832, 666, 500, 333, 166, 0])
        for steps in [3, 10, 50, 250, 999] {
            let ts = try s.ddimTimesteps(steps: steps)
            XCTAssertEqual(ts.count, steps)
            XCTAssertEqual(ts.first, 999)
            XCTAssertEqual(ts.last, 0)
            for k in 1..<ts.count { XCTAssertLessThan(ts[k], ts[k - 1]) }
            for (k, t) in ts.enumerated() {
                let exact = Double(steps - 1 - k) * 999 / Double(steps - 1)
                XCTAssertLessThanOrEqual(abs(Double(t) - exact), 0.5)
            }
        }
        XCTAssertThrowsError(try s.ddimTimesteps(steps: 0))
        XCTAssertThrowsError(try s.ddimTimesteps(steps: 1001))
    }

    func testQSample() throws {
        let s = try NoiseSchedule.linear(50)
        let x0 = randomValues(24, seed: 1), noise = randomValues(24, seed: 2)
        let t: [Int64] = [0, 49, 17]
        var out = [Float](repeating: 0, count: 24)
        try s.qSample(x0: x0, timesteps: t, noise: noise, batch: 3, perImage: 8, out: &out)
        for b in 0..<3 {
            let ab = s.alphasCumprod[Int(t[b])]
            for i in (b * 8)..<(b * 8 + 8) {
                XCTAssertEqual(out[i], Float(ab.squareRoot() * Double(x0[i]) + (1 - ab).squareRoot() * Double(noise[i])))
            }
        }
        XCTAssertThrowsError(try s.qSample(x0: x0, timesteps: [50, 0, 0], noise: noise, batch: 3, perImage: 8, out: &out))
    }

    // MARK: generator

    func testGaussianGeneratorDefinition() {
        var g = GaussianGenerator(seed: 42)
        let z = g.normals(5)
        var rng = SplitMix64(seed: 42)
        var expected: [Float] = []
        for _ in 0..<3 {
            let u1 = Double((rng.next() >> 11) + 1) / 9_007_199_254_740_992.0
            let u2 = Double(rng.next() >> 11) / 9_007_199_254_740_992.0
            let r = sqrt(-2 * log(u1))
            expected.append(Float(r * cos(2 * Double.pi * u2)))
            expected.append(Float(r * sin(2 * Double.pi * u2)))
        }
        XCTAssertEqual(z, Array(expected.prefix(5)))  // the odd count drops the last z1
        // The next fill starts a new pair.
        var fresh = GaussianGenerator(seed: 42)
        XCTAssertEqual(g.normals(2), [Float](fresh.normals(8)[6..<8]))
    }

    func testGaussianGeneratorStatistics() {
        var g = GaussianGenerator(seed: 7)
        let z = g.normals(200_000)
        let mean = z.reduce(0.0) { $0 + Double($1) } / Double(z.count)
        let variance = z.reduce(0.0) { $0 + Double($1) * Double($1) } / Double(z.count) - mean * mean
        XCTAssertEqual(mean, 0, accuracy: 0.01)
        XCTAssertEqual(variance, 1, accuracy: 0.015)
        XCTAssertTrue(z.allSatisfy { $0.isFinite })
    }

    // MARK: step math

    func testDDIMStepWithTrueNoiseMovesAlongTheTrajectory() {
        // If eps is the noise that made x from x0 (|x0| <= 1), a deterministic DDIM
        // step lands on sqrt(ab_prev)·x0 + sqrt(1 - ab_prev)·eps.
        let ab = 0.3, abPrev = 0.8
        let x0 = randomValues(64, seed: 3), eps = randomValues(64, seed: 4).map { $0 * 2 }
        var x = (0..<64).map { Float(ab.squareRoot() * Double(x0[$0]) + (1 - ab).squareRoot() * Double(eps[$0])) }
        let c = SamplerMath.DDIMCoefficients(alphaBar: ab, alphaBarPrev: abPrev, eta: 0)
        XCTAssertEqual(c.sigma, 0)
        SamplerMath.ddimUpdate(&x, eps: eps, noise: nil, count: 64, c, clip: true)
        for i in 0..<64 {
            let want = abPrev.squareRoot() * Double(x0[i]) + (1 - abPrev).squareRoot() * Double(eps[i])
            XCTAssertEqual(Double(x[i]), want, accuracy: 1e-6)
        }
    }

    func testDDIMSigmaAndFinalStep() {
        let ab = 0.2, abPrev = 0.6, eta = 0.7
        let c = SamplerMath.DDIMCoefficients(alphaBar: ab, alphaBarPrev: abPrev, eta: eta)
        let sigma = eta * sqrt((1 - abPrev) / (1 - ab)) * sqrt(1 - ab / abPrev)
        XCTAssertEqual(c.sigma, sigma, accuracy: 1e-15)
        XCTAssertEqual(c.direction, sqrt(1 - abPrev - sigma * sigma), accuracy: 1e-15)
        // eta = 1 is DDPM's posterior standard deviation.
        let c1 = SamplerMath.DDIMCoefficients(alphaBar: ab, alphaBarPrev: abPrev, eta: 1)
        XCTAssertEqual(c1.sigma * c1.sigma, (1 - abPrev) / (1 - ab) * (1 - ab / abPrev), accuracy: 1e-15)
        // The last step (ab_prev = 1) returns the clipped x0 and adds no noise.
        let last = SamplerMath.DDIMCoefficients(alphaBar: ab, alphaBarPrev: 1, eta: 1)
        XCTAssertEqual(last.sigma, 0)
        var x: [Float] = [0.5, -3, 3]
        let eps: [Float] = [0.1, 0.2, -0.3]
        let want = (0..<3).map { i -> Float in
            let x0 = (Double(x[i]) - sqrt(1 - ab) * Double(eps[i])) / sqrt(ab)
            return Float(min(max(x0, -1), 1))
        }
        SamplerMath.ddimUpdate(&x, eps: eps, noise: nil, count: 3, last, clip: true)
        XCTAssertEqual(x, want)
    }

    func testDDPMCoefficientsArePosteriorOfQ() throws {
        let s = try NoiseSchedule.linear(100, betaStart: 1e-3, betaEnd: 0.05)
        for t in [0, 1, 50, 99] {
            let c = SamplerMath.DDPMCoefficients(schedule: s, t: t)
            let ab = s.alphasCumprod[t], abPrev = t > 0 ? s.alphasCumprod[t - 1] : 1, beta = s.betas[t]
            // Ho et al. (2020), eq. 7.
            XCTAssertEqual(c.meanX0, sqrt(abPrev) * beta / (1 - ab), accuracy: 1e-14)
            XCTAssertEqual(c.meanXt, sqrt(1 - beta) * (1 - abPrev) / (1 - ab), accuracy: 1e-14)
            XCTAssertEqual(c.std * c.std, t > 0 ? (1 - abPrev) / (1 - ab) * beta : 0, accuracy: 1e-15)
            // The mean is unbiased along the trajectory: x0 = 1, eps = 0 gives sqrt(ab_prev).
            XCTAssertEqual(c.meanX0 + c.meanXt * sqrt(ab), sqrt(abPrev), accuracy: 1e-12)
        }
    }

    // MARK: the loop

    private func smallModel() throws -> DiffusionModel {
        try DiffusionModel(imageSize: 8, channels: 2, hiddenDims: [8, 16], timeDim: 8, seed: 3)
    }

    func testSampleIsDeterministicAndMatchesAManualLoop() throws {
        let m = try smallModel()
        let s = try NoiseSchedule.cosine(20)
        let a = try m.sample(count: 3, schedule: s, sampler: .ddim(steps: 4, eta: 0.5), seed: 9)
        let b = try m.sample(count: 3, schedule: s, sampler: .ddim(steps: 4, eta: 0.5), seed: 9)
        XCTAssertEqual(a.values, b.values)
        XCTAssertEqual(a.shape, [3, 2, 8, 8])

        // The same loop written out with the public pieces: x_T is the start of
        // the seed's stream, each step's noise the per-image slots of SamplingNoise.
        var g = GaussianGenerator(seed: 9)
        let x = try Tensor(shape: [3, 2, 8, 8], values: g.normals(384))
        let ts = try s.ddimTimesteps(steps: 4)
        var z = [Float](repeating: 0, count: 384)
        for (k, t) in ts.enumerated() {
            let eps = try m.forward(x, timesteps: [t, t, t])
            let abPrev = k + 1 < ts.count ? s.alphasCumprod[ts[k + 1]] : 1
            let c = SamplerMath.DDIMCoefficients(alphaBar: s.alphasCumprod[t], alphaBarPrev: abPrev, eta: 0.5)
            z.withUnsafeMutableBufferPointer { zp in
                for image in 0..<3 {
                    // Image i's slot: outputs from 2^63 + (i*S + k)*P of the seed's stream.
                    var gi = GaussianGenerator(seed: 9, skipping: (1 << 63) + UInt64((image * 4 + k) * 128))
                    gi.fill(zp.baseAddress! + image * 128, count: 128)
                }
                SamplerMath.ddimUpdate(x.data, eps: eps.data, noise: c.sigma > 0 ? zp.baseAddress : nil,
                                       count: 384, c, clip: true)
            }
        }
        XCTAssertEqual(a.values, x.values)

        // Images 1..2 drawn on their own are rows 1..2 of the run of all three.
        let tail = try m.sample(count: 2, schedule: s, sampler: .ddim(steps: 4, eta: 0.5), seed: 9, firstImage: 1)
        XCTAssertEqual(tail.values, Array(a.values[128...]))
    }

    func testSkippingAndRowsOfTheStream() throws {
        var g = GaussianGenerator(seed: 77)
        let whole = g.normals(21)
        for first in [0, 1, 2, 5, 10] {
            var part = [Float](repeating: 0, count: 21 - first)
            part.withUnsafeMutableBufferPointer {
                GaussianGenerator.fill(seed: 77, normalsFrom: UInt64(first), count: 21 - first, into: $0.baseAddress!)
            }
            XCTAssertEqual(part, Array(whole[first...]), "from \(first)")
        }
        var a = GaussianGenerator(seed: 5)
        for _ in 0..<6 { _ = a.rng.next() }
        var b = GaussianGenerator(seed: 5, skipping: 6)
        XCTAssertEqual(a.rng.next(), b.rng.next())
    }

    func testSpacings() throws {
        XCTAssertEqual(try NoiseSchedule.timesteps(numTimesteps: 1000, steps: 10, spacing: .leading),
                       [900, 800, 700, 600, 500, 400, 300, 200, 100, 0])
        XCTAssertEqual(try NoiseSchedule.timesteps(numTimesteps: 1000, steps: 10, spacing: .trailing),
                       [999, 899, 799, 699, 599, 499, 399, 299, 199, 99])
        // 1000·k/16 = 62.5·k: ties at odd k round to even (62.5 -> 62, 187.5 -> 188).
        let trailing16 = try NoiseSchedule.timesteps(numTimesteps: 1000, steps: 16, spacing: .trailing)
        XCTAssertEqual(trailing16.last, 61)
        XCTAssertEqual(trailing16[trailing16.count - 3], 187)
        for T in [1, 2, 7, 50, 1000] {
            for S in Set([1, 2, 3, T / 2, T].filter { $0 >= 1 && $0 <= T }) {
                for sp in TimestepSpacing.allCases {
                    let ts = try NoiseSchedule.timesteps(numTimesteps: T, steps: S, spacing: sp)
                    XCTAssertEqual(ts.count, S)
                    XCTAssertTrue(zip(ts, ts.dropFirst()).allSatisfy { $0 > $1 }, "\(T) \(S) \(sp)")
                    XCTAssertTrue(ts.allSatisfy { $0 >= 0 && $0 < T })
                }
            }
        }
        XCTAssertEqual(try NoiseSchedule.timesteps(numTimesteps: 1000, steps: 7, spacing: .linspace),
                       [999, 832, 666, 500, 333, 166, 0])
    }

    func testCustomTimestepsPlanAndValidation() throws {
        let s = try NoiseSchedule.cosine(100)
        let ts = [99, 90, 70, 31]
        for kind in [SamplerKind.ddim(steps: 4, eta: 0.5), .dpmSolver2M(steps: 4, karras: false)] {
            let plan = try SamplingPlan(schedule: s, sampler: kind, spacing: .linspace, timesteps: ts)
            XCTAssertEqual(plan.timesteps, ts)
            XCTAssertEqual(plan.alphaBars, ts.map { s.alphasCumprod[$0] })
            XCTAssertEqual(try SamplingScheduler(schedule: s, sampler: kind, timesteps: ts).timesteps, ts)
        }
        let dpm = SamplerKind.dpmSolver2M(steps: 4, karras: false)
        func refused(_ kind: SamplerKind, _ ts: [Int], spacing: TimestepSpacing = .linspace, _ words: String) {
            XCTAssertThrowsError(try SamplingPlan(schedule: s, sampler: kind, spacing: spacing, timesteps: ts)) { e in
                XCTAssertTrue("\(e)".contains(words), "\(e)")
            }
        }
        refused(dpm, [99, 90, 90, 31], "strictly decreasing")
        refused(dpm, [31, 70, 90, 99], "strictly decreasing")
        refused(dpm, [100, 90, 70, 31], "[0, 100)")
        refused(dpm, [99, 90, 70, -1], "[0, 100)")
        refused(dpm, [99, 90, 70], "expected 4")
        refused(dpm, ts, spacing: .trailing, "spacing")
        refused(.dpmSolver2M(steps: 4, karras: true), ts, "karras")
        refused(.ddpm, ts, "DDPM")
    }

    func testDPMSolverFirstOrderIsDeterministicDDIM() throws {
        // DPM-Solver++'s first-order step is DDIM with eta 0 (Lu et al. 2022, section 4).
        let s = try NoiseSchedule.cosine(100)
        for (t, next) in [(99, 80), (50, 40), (10, 0)] {
            let ab = s.alphasCumprod[t], abNext = s.alphasCumprod[next]
            let dpm = SamplerMath.DPMSolverCoefficients(alphaBar: ab, alphaBarNext: abNext, alphaBarPrevious: nil)
            let ddim = SamplerMath.DDIMCoefficients(alphaBar: ab, alphaBarPrev: abNext, eta: 0)
            XCTAssertEqual(dpm.order, 1)
            for (xv, e) in [(0.3, -1.2), (-2.0, 0.5)] {
                let x0 = (xv - ddim.sqrtOneMinusAlphaBar * e) / ddim.sqrtAlphaBar
                let viaDDIM = ddim.sqrtAlphaBarPrev * x0 + ddim.direction * e
                XCTAssertEqual(dpm.ratio * xv + dpm.dataWeight * x0, viaDDIM, accuracy: 1e-12)
            }
        }
        let last = SamplerMath.DPMSolverCoefficients(alphaBar: 0.5, alphaBarNext: nil, alphaBarPrevious: 0.3)
        XCTAssertEqual(last.order, 0)
        let second = SamplerMath.DPMSolverCoefficients(alphaBar: 0.5, alphaBarNext: 0.7, alphaBarPrevious: 0.3)
        XCTAssertEqual(second.order, 2)
        // r = (lambda - lambda_prev)/h with lambda = log(sqrt(ab/(1-ab))).
        let lam = { (a: Double) in 0.5 * log(a / (1 - a)) }
        let r = (lam(0.5) - lam(0.3)) / (lam(0.7) - lam(0.5))
        XCTAssertEqual(second.correctionWeight, 0.5 * second.dataWeight / r, accuracy: 1e-12)
    }

    func testSchedulerLoopEqualsSample() throws {
        let m = try smallModel()
        let s = try NoiseSchedule.cosine(40)
        for kind in [SamplerKind.dpmSolver2M(steps: 6, karras: false), .dpmSolver2M(steps: 5, karras: true),
                     .ddim(steps: 5, eta: 0.8), .ddpm] {
            let want = try m.sample(count: 2, schedule: s, sampler: kind, spacing: .linspace, seed: 3)
            let sched = try SamplingScheduler(schedule: s, sampler: kind)
            var g = GaussianGenerator(seed: 3)
            let x = try Tensor(shape: [2, 2, 8, 8], values: g.normals(256))
            for t in sched.timesteps {
                let eps = try m.forward(x, timesteps: [t, t])
                try sched.step(timestep: t, eps: eps.data, x: x.data, out: x.data, batch: 2, perImage: 128,
                               noise: .stream(seed: 3, firstImage: 0))
            }
            XCTAssertEqual(x.values, want.values, "\(kind)")
            // All steps done: only the first timestep (a new run) is accepted.
            XCTAssertThrowsError(try sched.stepIndex(for: sched.timesteps.last! + 1000))
            XCTAssertEqual(try sched.stepIndex(for: sched.timesteps[0]), 0)
        }
    }

    func testChunkedForwardsGiveTheSameImages() throws {
        let m = try smallModel()
        let s = try NoiseSchedule.cosine(30)
        let whole = try Tensor(zeros: [5, 2, 8, 8]), chunked = try Tensor(zeros: [5, 2, 8, 8])
        try m.sample(count: 5, height: 8, width: 8, schedule: s, sampler: .ddim(steps: 6, eta: 0.3), seed: 4,
                     out: whole.data)
        try m.sample(count: 5, height: 8, width: 8, schedule: s, sampler: .ddim(steps: 6, eta: 0.3), seed: 4,
                     out: chunked.data, maxBatch: 2)
        assertClose(chunked.values, whole.values, tolerance: 1e-5)
        XCTAssertEqual(m.samplingChunkSize(count: 7, height: 8, width: 8), 7)
        let big = try DiffusionModel(imageSize: 32, channels: 3, hiddenDims: [32, 64, 128], timeDim: 128)
        let chunk = big.samplingChunkSize(count: 100_000, height: 32, width: 32)
        XCTAssertGreaterThanOrEqual(chunk, 1)
        XCTAssertLessThan(chunk, 100_000)
        XCTAssertLessThanOrEqual(big.estimatedWorkspaceBytes(batch: chunk, height: 32, width: 32),
                                 DiffusionModel.samplingActivationBudget)
        XCTAssertEqual(big.samplingChunkSize(count: 100_000, height: 4096, width: 4096), 1)
    }

    func testDDPMUsesEveryTimestepAndStartAndInterrupt() throws {
        let m = try smallModel()
        let s = try NoiseSchedule.linear(6)
        var seen: [Int] = []
        let out = try Tensor(zeros: [2, 2, 8, 8])
        let start = try Tensor(shape: [2, 2, 8, 8], values: randomValues(256, seed: 5))
        try m.sample(count: 2, height: 8, width: 8, schedule: s, sampler: .ddpm, seed: 1, start: start.data,
                     out: out.data, progress: { done, total in seen.append(done); XCTAssertEqual(total, 6); return true })
        XCTAssertEqual(seen, Array(0...6))
        XCTAssertTrue(out.values.allSatisfy { $0.isFinite })

        // Stopping after two steps throws `interrupted`; the model still works.
        XCTAssertThrowsError(try m.sample(count: 2, height: 8, width: 8, schedule: s, sampler: .ddpm, seed: 1,
                                          out: out.data, progress: { done, _ in done < 2 })) { error in
            XCTAssertEqual(error as? SwiftUNetError, .interrupted)
        }
        let again = try Tensor(zeros: [2, 2, 8, 8])
        try m.sample(count: 2, height: 8, width: 8, schedule: s, sampler: .ddpm, seed: 1, start: start.data,
                     out: again.data)
        XCTAssertEqual(out.values.count, again.values.count)
        let reference = try Tensor(zeros: [2, 2, 8, 8])
        try m.sample(count: 2, height: 8, width: 8, schedule: s, sampler: .ddpm, seed: 1, start: start.data,
                     out: reference.data)
        XCTAssertEqual(again.values, reference.values)

        XCTAssertNoThrow(try m.sample(count: 0, schedule: s, sampler: .ddpm, seed: 0))
        XCTAssertThrowsError(try m.sample(count: 1, schedule: s, sampler: .ddim(steps: 7, eta: 0), seed: 0))
        XCTAssertThrowsError(try m.sample(count: 1, schedule: s, sampler: .ddim(steps: 3, eta: 1.5), seed: 0))
        XCTAssertThrowsError(try m.sample(count: 1, size: 5, schedule: s, sampler: .ddpm, seed: 0))
    }
}
