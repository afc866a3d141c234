#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The reverse-process samplers of docs/model.md section 3, run entirely in Swift: one
/// batched model forward per step, the per-element update in float64 on the
/// float32 state, the state rounded to float32 after every step.
///
/// docs/sampling.md states every formula, the operation order, and the random
/// stream; `swiftunet.reference.ddim_sample` / `ddpm_sample` / `dpmpp_2m_sample`
/// are the numpy twins.
public enum SamplerKind: Equatable {
    /// DDIM (Song et al. 2021) over `steps` timesteps of the schedule, `eta` in [0, 1].
    case ddim(steps: Int, eta: Double)
    /// DDPM ancestral sampling (Ho et al. 2020) over all T timesteps.
    case ddpm
    /// DPM-Solver++ (Lu et al. 2022), second order, multistep, data prediction,
    /// over `steps` timesteps; first order at the first and the last step, the
    /// last step going to sigma 0 (the predicted x0). `karras` replaces the
    /// schedule's sigmas by Karras et al.'s (rho = 7). diffusers equivalent:
    /// `DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2,
    /// final_sigmas_type="zero", use_karras_sigmas=karras)`.
    case dpmSolver2M(steps: Int, karras: Bool)

    /// Throws `invalidArgument` unless the options fit `schedule`.
    public func validate(for schedule: NoiseSchedule) throws {
        switch self {
        case let .ddim(steps, eta):
            try SamplerKind.checkSteps(steps, schedule)
            guard eta.isFinite && eta >= 0 && eta <= 1 else {
                throw SwiftUNetError.invalidArgument("eta must be in [0, 1], got \(eta)")
            }
        case let .dpmSolver2M(steps, karras):
            try SamplerKind.checkSteps(steps, schedule)
            if karras && schedule.numTimesteps < 2 {
                throw SwiftUNetError.invalidArgument("karras sigmas need a schedule of at least 2 timesteps")
            }
        case .ddpm:
            break
        }
    }

    private static func checkSteps(_ steps: Int, _ schedule: NoiseSchedule) throws {
        guard steps >= 1 && steps <= schedule.numTimesteps else {
            throw SwiftUNetError.invalidArgument(
                "steps must be between 1 and the schedule's num_timesteps = \(schedule.numTimesteps), got \(steps)")
        }
    }

    /// The timesteps visited, in order, with the default (`.linspace`) spacing.
    public func timesteps(for schedule: NoiseSchedule) throws -> [Int] {
        try SamplingPlan(schedule: schedule, sampler: self, spacing: .linspace).timesteps
    }
}

/// What a sampling run visits: the timestep of every step (the model's input)
/// and the alpha_bar the update uses there. alpha_bar is the schedule's at that
/// timestep, except with Karras sigmas, where it is `1/(1 + sigma²)` of the
/// Karras sigma and the timestep is that sigma's, interpolated in log sigma
/// over the schedule and rounded (as diffusers does).
public struct SamplingPlan: Equatable {
    public let timesteps: [Int]
    public let alphaBars: [Double]

    /// `timesteps`, when given, replaces the spacing's: the run visits exactly
    /// these (diffusers' `set_timesteps(timesteps=...)`); they must be strictly
    /// decreasing, in `0 ..< T`, as many as the sampler's steps, for DDIM or
    /// DPM-Solver++ without Karras sigmas, with `spacing` left at `.linspace`.
    public init(schedule: NoiseSchedule, sampler: SamplerKind, spacing: TimestepSpacing,
                timesteps custom: [Int]? = nil) throws {
        try sampler.validate(for: schedule)
        if let custom = custom {
            try SamplingPlan.checkCustom(custom, schedule: schedule, sampler: sampler, spacing: spacing)
            timesteps = custom
            alphaBars = custom.map { schedule.alphasCumprod[$0] }
            return
        }
        switch sampler {
        case .ddpm:
            // Every spacing gives all T timesteps when S = T.
            timesteps = Array((0..<schedule.numTimesteps).reversed())
        case .ddim(let steps, _), .dpmSolver2M(let steps, false):
            timesteps = try schedule.timesteps(steps: steps, spacing: spacing)
        case .dpmSolver2M(let steps, true):
            guard spacing == .linspace else {
                throw SwiftUNetError.invalidArgument(
                    "timestep_spacing has no effect with karras sigmas (they fix their own timesteps); leave it at \"linspace\"")
            }
            let sigmas = SamplingPlan.karrasSigmas(schedule: schedule, steps: steps)
            timesteps = sigmas.map { SamplingPlan.timestep(ofSigma: $0, schedule: schedule) }
            alphaBars = sigmas.map { 1 / (1 + $0 * $0) }
            return
        }
        alphaBars = timesteps.map { schedule.alphasCumprod[$0] }
    }

    private static func checkCustom(_ ts: [Int], schedule: NoiseSchedule, sampler: SamplerKind,
                                    spacing: TimestepSpacing) throws {
        let steps: Int
        switch sampler {
        case .ddpm:
            throw SwiftUNetError.invalidArgument("timesteps: DDPM visits every timestep; custom timesteps are for ddim and dpmpp_2m")
        case .dpmSolver2M(_, true):
            throw SwiftUNetError.invalidArgument("timesteps: karras sigmas fix their own timesteps; give one or the other")
        case .ddim(let s, _), .dpmSolver2M(let s, false):
            steps = s
        }
        guard spacing == .linspace else {
            throw SwiftUNetError.invalidArgument("timesteps: a spacing has no effect with custom timesteps; leave it at \"linspace\"")
        }
        guard ts.count == steps else {
            throw SwiftUNetError.invalidArgument("timesteps: expected \(steps) values (the steps), got \(ts.count)")
        }
        let T = schedule.numTimesteps
        for (i, t) in ts.enumerated() {
            guard t >= 0 && t < T else {
                throw SwiftUNetError.invalidArgument("timesteps[\(i)] must be in [0, \(T)) (the schedule's timesteps), got \(t)")
            }
            if i > 0 && t >= ts[i - 1] {
                throw SwiftUNetError.invalidArgument(
                    "timesteps must be strictly decreasing, got \(ts[i - 1]) then \(t) at index \(i)")
            }
        }
    }

    /// Karras et al. (2022): `(smax^(1/7) + r·(smin^(1/7) - smax^(1/7)))^7` for
    /// r = i/(S-1), i = 0..<S (`numpy.linspace(0, 1, S)`), from the schedule's
    /// largest to smallest sigma, `sigma_t = sqrt((1 - ab_t)/ab_t)`.
    public static func karrasSigmas(schedule: NoiseSchedule, steps: Int) -> [Double] {
        let ab = schedule.alphasCumprod
        let sigmaMin = ((1 - ab[0]) / ab[0]).squareRoot()
        let sigmaMax = ((1 - ab[ab.count - 1]) / ab[ab.count - 1]).squareRoot()
        let rho = 7.0
        let minInv = pow(sigmaMin, 1 / rho), maxInv = pow(sigmaMax, 1 / rho)
        let delta = steps > 1 ? 1.0 / Double(steps - 1) : 0
        return (0..<steps).map { i in
            let ramp = i == steps - 1 && steps > 1 ? 1.0 : Double(i) * delta
            return pow(maxInv + ramp * (minInv - maxInv), rho)
        }
    }

    /// diffusers' `_sigma_to_t`, rounded: the fractional index where log(sigma)
    /// falls between two neighbouring log sigmas of the schedule, ties to even.
    public static func timestep(ofSigma sigma: Double, schedule: NoiseSchedule) -> Int {
        let ab = schedule.alphasCumprod
        let T = ab.count
        let logSigma = log(max(sigma, 1e-10))
        func logSigmaAt(_ t: Int) -> Double { log(((1 - ab[t]) / ab[t]).squareRoot()) }
        // The last index whose log sigma is <= log(sigma), at most T-2.
        var low = 0
        for t in 0..<T where logSigma - logSigmaAt(t) >= 0 { low = t }
        low = min(low, T - 2)
        let lo = logSigmaAt(low), hi = logSigmaAt(low + 1)
        let w = min(max((lo - logSigma) / (lo - hi), 0), 1)
        let t = (1 - w) * Double(low) + w * Double(low + 1)
        return Int(t.rounded(.toNearestOrEven))
    }
}

/// Where the random numbers of a sampling run come from (docs/sampling.md, "The
/// random stream"): one SplitMix64 stream of `seed`, addressed by image, so that
/// images k..<k+n of a seed are the same whichever call draws them.
///
/// - x_T of image i: normals `i·P ..< (i+1)·P` of the stream, i.e. row i of
///   `randn((N, C, H, W), seed)` for any N > i (P = C·H·W);
/// - the noise of step k (of S) of image i: a fresh tensor of P normals from
///   output `2^63 + (i·S + k)·P'` on, `P'` = P rounded up to even.
public enum SamplingNoise {
    public static let stepNoiseBase: UInt64 = 1 << 63

    private static func evenUp(_ p: Int) -> UInt64 { UInt64(p + (p & 1)) }

    /// Throws unless every address a run of images `first ..< first + count` uses fits below 2^63.
    public static func checkRange(firstImage: Int, count: Int, perImage: Int, steps: Int) throws {
        guard firstImage >= 0 else { throw SwiftUNetError.invalidArgument("start must be >= 0, got \(firstImage)") }
        let end = UInt64(firstImage) + UInt64(max(count, 0))
        let (a, o1) = end.multipliedReportingOverflow(by: UInt64(max(steps, 1)))
        let (b, o2) = a.multipliedReportingOverflow(by: evenUp(perImage))
        guard !o1 && !o2 && b <= stepNoiseBase else {
            throw SwiftUNetError.invalidArgument(
                "start + n = \(end) images of \(perImage) values over \(steps) steps exceed the random stream (2^63 values)")
        }
    }

    /// x_T of images `first ..< first + count` [count, P].
    public static func fillStart(seed: UInt64, firstImage: Int, count: Int, perImage: Int,
                                 into out: UnsafeMutablePointer<Float>) {
        GaussianGenerator.fill(seed: seed, normalsFrom: UInt64(firstImage) * UInt64(perImage),
                               count: count * perImage, into: out)
    }

    /// The noise of step `step` of a run of `steps` steps, images `first ..< first + count` [count, P].
    public static func fillStepNoise(seed: UInt64, firstImage: Int, count: Int, perImage: Int, step: Int, steps: Int,
                                     into out: UnsafeMutablePointer<Float>) {
        for r in 0..<count {
            let slot = UInt64(firstImage + r) * UInt64(steps) + UInt64(step)
            var g = GaussianGenerator(seed: seed, skipping: stepNoiseBase &+ slot &* evenUp(perImage))
            g.fill(out + r * perImage, count: perImage)
        }
    }
}

/// The per-step coefficients and element updates, kept apart from the loop so
/// tests can check them against the plain definitions.
public enum SamplerMath {
    /// x0 = (x - sqrt(1 - ab)·eps) / sqrt(ab), clipped to [-1, 1] when `clip`.
    @inline(__always)
    public static func predictX0(x: Double, eps: Double, sqrtAlphaBar: Double, sqrtOneMinusAlphaBar: Double,
                                 clip: Bool) -> Double {
        let x0 = (x - sqrtOneMinusAlphaBar * eps) / sqrtAlphaBar
        return clip ? min(max(x0, -1), 1) : x0
    }

    /// One DDIM step from alpha_bar `ab` to `abPrev`:
    /// x' = sqrt(abPrev)·x0 + sqrt(1 - abPrev - sigma²)·eps + sigma·z,
    /// sigma = eta·sqrt((1 - abPrev)/(1 - ab))·sqrt(1 - ab/abPrev).
    public struct DDIMCoefficients: Equatable {
        public var sqrtAlphaBar: Double
        public var sqrtOneMinusAlphaBar: Double
        public var sqrtAlphaBarPrev: Double
        public var direction: Double
        public var sigma: Double

        public init(alphaBar ab: Double, alphaBarPrev abPrev: Double, eta: Double) {
            sqrtAlphaBar = ab.squareRoot()
            sqrtOneMinusAlphaBar = (1 - ab).squareRoot()
            sqrtAlphaBarPrev = abPrev.squareRoot()
            sigma = eta * ((1 - abPrev) / (1 - ab)).squareRoot() * (1 - ab / abPrev).squareRoot()
            direction = max(0, 1 - abPrev - sigma * sigma).squareRoot()
        }
    }

    /// One DDPM ancestral step at timestep t:
    /// mean = beta_t·sqrt(abPrev)/(1 - ab)·x0 + (1 - abPrev)·sqrt(1 - beta_t)/(1 - ab)·x_t,
    /// x' = mean + sqrt(beta_t·(1 - abPrev)/(1 - ab))·z, with no noise at t = 0.
    public struct DDPMCoefficients: Equatable {
        public var sqrtAlphaBar: Double
        public var sqrtOneMinusAlphaBar: Double
        public var meanX0: Double
        public var meanXt: Double
        public var std: Double

        public init(schedule: NoiseSchedule, t: Int) {
            let ab = schedule.alphasCumprod[t]
            let abPrev = t > 0 ? schedule.alphasCumprod[t - 1] : 1.0
            let beta = schedule.betas[t]
            sqrtAlphaBar = ab.squareRoot()
            sqrtOneMinusAlphaBar = (1 - ab).squareRoot()
            meanX0 = beta * abPrev.squareRoot() / (1 - ab)
            meanXt = (1 - abPrev) * (1 - beta).squareRoot() / (1 - ab)
            std = t > 0 ? (beta * (1 - abPrev) / (1 - ab)).squareRoot() : 0
        }
    }

    /// One DPM-Solver++ step (data prediction) from alpha_bar `ab` to `abNext`
    /// (`nil`: the last step, to sigma 0), with `abPrevious` the alpha_bar of the
    /// step before (`nil` at the first step: first order). With alpha = sqrt(ab),
    /// sigma = sqrt(1 - ab), lambda = log(alpha) - log(sigma), h = lambda' - lambda:
    /// first order  x' = (sigma'/sigma)·x + alpha'·(1 - e^-h)·x0,
    /// second order x' = the same + 0.5·alpha'·(1 - e^-h)/r·(x0 - x0_prev),
    /// r = (lambda - lambda_prev)/h; the last step gives x' = x0.
    public struct DPMSolverCoefficients: Equatable {
        public var sqrtAlphaBar: Double
        public var sqrtOneMinusAlphaBar: Double
        /// 0: the last step (x' = x0); 1 or 2: the solver order.
        public var order: Int
        public var ratio: Double
        public var dataWeight: Double
        public var correctionWeight: Double

        public static func lambda(_ ab: Double) -> Double { log(ab.squareRoot()) - log((1 - ab).squareRoot()) }

        public init(alphaBar ab: Double, alphaBarNext abNext: Double?, alphaBarPrevious abPrevious: Double?) {
            sqrtAlphaBar = ab.squareRoot()
            sqrtOneMinusAlphaBar = (1 - ab).squareRoot()
            ratio = 0; dataWeight = 1; correctionWeight = 0; order = 0
            guard let next = abNext else { return }
            let lambdaS = DPMSolverCoefficients.lambda(ab), lambdaT = DPMSolverCoefficients.lambda(next)
            let h = lambdaT - lambdaS
            ratio = (1 - next).squareRoot() / sqrtOneMinusAlphaBar
            dataWeight = next.squareRoot() * -expm1(-h)
            order = 1
            if let previous = abPrevious {
                let r = (lambdaS - DPMSolverCoefficients.lambda(previous)) / h
                correctionWeight = 0.5 * dataWeight / r
                order = 2
            }
        }
    }

    /// x ← DPM-Solver++(x, eps) for `count` elements; `previousX0` holds the last
    /// step's x0 (read at order 2) and receives this step's.
    public static func dpmSolverUpdate(_ x: UnsafeMutablePointer<Float>, eps: UnsafePointer<Float>,
                                       previousX0: UnsafeMutablePointer<Double>, count: Int,
                                       _ c: DPMSolverCoefficients, clip: Bool) {
        for i in 0..<count {
            let xi = Double(x[i])
            let x0 = predictX0(x: xi, eps: Double(eps[i]), sqrtAlphaBar: c.sqrtAlphaBar,
                               sqrtOneMinusAlphaBar: c.sqrtOneMinusAlphaBar, clip: clip)
            switch c.order {
            case 0: x[i] = Float(x0)
            case 1: x[i] = Float(c.ratio * xi + c.dataWeight * x0)
            default: x[i] = Float(c.ratio * xi + c.dataWeight * x0 + c.correctionWeight * (x0 - previousX0[i]))
            }
            previousX0[i] = x0
        }
    }

    /// x ← DDIM(x, eps, z) for `count` elements; `z` is read only when sigma > 0.
    public static func ddimUpdate(_ x: UnsafeMutablePointer<Float>, eps: UnsafePointer<Float>, noise z: UnsafePointer<Float>?,
                                  count: Int, _ c: DDIMCoefficients, clip: Bool) {
        if c.sigma > 0, let z = z {
            for i in 0..<count {
                let e = Double(eps[i])
                let x0 = predictX0(x: Double(x[i]), eps: e, sqrtAlphaBar: c.sqrtAlphaBar,
                                   sqrtOneMinusAlphaBar: c.sqrtOneMinusAlphaBar, clip: clip)
                x[i] = Float(c.sqrtAlphaBarPrev * x0 + c.direction * e + c.sigma * Double(z[i]))
            }
        } else {
            for i in 0..<count {
                let e = Double(eps[i])
                let x0 = predictX0(x: Double(x[i]), eps: e, sqrtAlphaBar: c.sqrtAlphaBar,
                                   sqrtOneMinusAlphaBar: c.sqrtOneMinusAlphaBar, clip: clip)
                x[i] = Float(c.sqrtAlphaBarPrev * x0 + c.direction * e)
            }
        }
    }

    /// x ← DDPM(x, eps, z) for `count` elements; `z` (when given) is added as std·z.
    public static func ddpmUpdate(_ x: UnsafeMutablePointer<Float>, eps: UnsafePointer<Float>, noise z: UnsafePointer<Float>?,
                                  count: Int, _ c: DDPMCoefficients, clip: Bool) {
        for i in 0..<count {
            let xt = Double(x[i])
            let x0 = predictX0(x: xt, eps: Double(eps[i]), sqrtAlphaBar: c.sqrtAlphaBar,
                               sqrtOneMinusAlphaBar: c.sqrtOneMinusAlphaBar, clip: clip)
            let mean = c.meanX0 * x0 + c.meanXt * xt
            if let z = z {
                x[i] = Float(mean + c.std * Double(z[i]))
            } else {
                x[i] = Float(mean)
            }
        }
    }
}

/// A sampler that a caller drives one step at a time (diffusers' scheduler
/// `step`), and the step code of `DiffusionModel.sample` too: the loop there is
/// `for t in timesteps { eps = model(x, t); step(t, eps, x) }`, so a caller's
/// own loop with the same settings and noise gives the same bits.
///
/// DPM-Solver++ keeps the previous step's x0 between steps, so a scheduler is
/// one trajectory at a time and not for concurrent use.
public final class SamplingScheduler {
    public let schedule: NoiseSchedule
    public let sampler: SamplerKind
    public let spacing: TimestepSpacing
    public let clip: Bool
    public let plan: SamplingPlan
    /// The next step (0 ..< timesteps.count; timesteps.count when all are done).
    public private(set) var stepIndex = 0
    private var previousX0: UnsafeMutablePointer<Double>? = nil
    private var previousCount = 0
    private var noise: UnsafeMutablePointer<Float>? = nil
    private var noiseCount = 0

    /// Where the noise of a stochastic step comes from.
    public enum Noise {
        case none
        /// `batch · perImage` standard normals given by the caller.
        case given(UnsafePointer<Float>)
        /// The per-image stream of `SamplingNoise` for images `firstImage ..< firstImage + batch`.
        case stream(seed: UInt64, firstImage: Int)
    }

    /// `timesteps`: custom timesteps in place of the spacing's (`SamplingPlan`).
    public init(schedule: NoiseSchedule, sampler: SamplerKind, spacing: TimestepSpacing = .linspace,
                clip: Bool = true, timesteps: [Int]? = nil) throws {
        self.schedule = schedule
        self.sampler = sampler
        self.spacing = spacing
        self.clip = clip
        self.plan = try SamplingPlan(schedule: schedule, sampler: sampler, spacing: spacing, timesteps: timesteps)
    }

    deinit {
        freeDoubles(previousX0)
        freeFloats(noise)
    }

    public var timesteps: [Int] { plan.timesteps }

    /// Starts a new trajectory at the next step.
    public func reset() { stepIndex = 0 }

    private func ddimCoefficients(_ k: Int, eta: Double) -> SamplerMath.DDIMCoefficients {
        let next = k + 1 < plan.alphaBars.count ? plan.alphaBars[k + 1] : 1.0
        return SamplerMath.DDIMCoefficients(alphaBar: plan.alphaBars[k], alphaBarPrev: next, eta: eta)
    }

    /// Whether step k adds noise (DDIM steps with sigma > 0, DDPM steps with t > 0).
    public func needsNoise(step k: Int) -> Bool {
        switch sampler {
        case .ddim(_, let eta): return ddimCoefficients(k, eta: eta).sigma > 0
        case .ddpm: return plan.timesteps[k] > 0
        case .dpmSolver2M: return false
        }
    }

    /// The step index of timestep `t`: the next step, or 0 when `t` is the first
    /// timestep (a new trajectory). Anything else is an error.
    public func stepIndex(for t: Int) throws -> Int {
        let ts = plan.timesteps
        if stepIndex < ts.count && ts[stepIndex] == t { return stepIndex }
        if ts[0] == t { return 0 }
        if stepIndex < ts.count {
            throw SwiftUNetError.invalidArgument(
                "t = \(t) is not the next timestep: step \(stepIndex) of \(ts.count) is at t = \(ts[stepIndex]) (or start again at t = \(ts[0]))")
        }
        throw SwiftUNetError.invalidArgument(
            "all \(ts.count) steps are done; t = \(t) is not the first timestep \(ts[0]) (call reset() or start at t = \(ts[0]))")
    }

    /// One step of `batch` images of `perImage` values from `x` (at timestep `t`)
    /// with the model's prediction `eps`, into `out` (which may be `x`).
    public func step(timestep t: Int, eps: UnsafePointer<Float>, x: UnsafePointer<Float>,
                     out: UnsafeMutablePointer<Float>, batch: Int, perImage: Int, noise source: Noise) throws {
        let k = try stepIndex(for: t)
        guard batch >= 0 && perImage >= 0 else {
            throw SwiftUNetError.invalidArgument("batch and per_image must be >= 0, got \(batch) and \(perImage)")
        }
        let (count, overflow) = batch.multipliedReportingOverflow(by: perImage)
        if overflow { throw SwiftUNetError.outOfMemory("\(batch) images of \(perImage) values are too many") }

        var z: UnsafePointer<Float>? = nil
        if needsNoise(step: k) {
            switch source {
            case .none:
                throw SwiftUNetError.invalidArgument(
                    "step \(k) (t = \(t)) adds noise: give a generator or the noise")
            case .given(let p):
                z = p
            case .stream(let seed, let first):
                try SamplingNoise.checkRange(firstImage: first, count: batch, perImage: perImage,
                                             steps: plan.timesteps.count)
                if noiseCount != count {
                    freeFloats(noise); noise = nil; noiseCount = 0
                    noise = try allocateFloatsOrThrow(max(count, 1), "the sampling noise")
                    noiseCount = count
                }
                SamplingNoise.fillStepNoise(seed: seed, firstImage: first, count: batch, perImage: perImage,
                                            step: k, steps: plan.timesteps.count, into: noise!)
                z = UnsafePointer(noise!)
            }
        }
        if case .dpmSolver2M = sampler {
            if k == 0 && previousCount != count {
                freeDoubles(previousX0); previousX0 = nil; previousCount = 0
                previousX0 = try allocateDoublesOrThrow(max(count, 1), "the previous step's x0")
                previousCount = count
            } else if k > 0 && previousCount != count {
                throw SwiftUNetError.invalidArgument(
                    "x holds \(count) values but held \(previousCount) at the steps before (same batch and size for a whole trajectory)")
            }
        }

        if UnsafePointer(out) != x { out.update(from: x, count: count) }
        switch sampler {
        case .ddim(_, let eta):
            SamplerMath.ddimUpdate(out, eps: eps, noise: z, count: count, ddimCoefficients(k, eta: eta), clip: clip)
        case .ddpm:
            SamplerMath.ddpmUpdate(out, eps: eps, noise: z, count: count,
                                   SamplerMath.DDPMCoefficients(schedule: schedule, t: t), clip: clip)
        case .dpmSolver2M:
            let ab = plan.alphaBars
            let c = SamplerMath.DPMSolverCoefficients(
                alphaBar: ab[k], alphaBarNext: k + 1 < ab.count ? ab[k + 1] : nil,
                alphaBarPrevious: k > 0 && k + 1 < ab.count ? ab[k - 1] : nil)
            SamplerMath.dpmSolverUpdate(out, eps: eps, previousX0: previousX0!, count: count, c, clip: clip)
        }
        stepIndex = k + 1
    }
}

extension DiffusionModel {
    /// Generates `count` images [count, C, height, width] into `out`: images
    /// `firstImage ..< firstImage + count` of `seed` (see `SamplingNoise`), so
    /// runs over consecutive ranges of images concatenate to one run of all.
    ///
    /// x_T comes from the stream unless `start` is given (then it is copied);
    /// each step is `SamplingScheduler.step` with the stream's noise.
    ///
    /// `progress(done, total)` is called before the first step (done = 0) and after
    /// every step, on the calling thread; returning false stops the loop with
    /// `SwiftUNetError.interrupted` (the model stays usable; `out` then holds a
    /// partly denoised state).
    ///
    /// Each step's forward covers all images at once, or chunks of at most
    /// `samplingChunkSize` (and `maxBatch`, when given) images.
    public func sample(count: Int, height: Int, width: Int, schedule: NoiseSchedule, sampler: SamplerKind,
                       spacing: TimestepSpacing = .linspace, timesteps customTimesteps: [Int]? = nil,
                       seed: UInt64, firstImage: Int = 0, clip: Bool = true,
                       start: UnsafePointer<Float>? = nil, out: UnsafeMutablePointer<Float>,
                       progress: ((Int, Int) -> Bool)? = nil, maxBatch: Int? = nil) throws {
        let scheduler = try SamplingScheduler(schedule: schedule, sampler: sampler, spacing: spacing, clip: clip,
                                              timesteps: customTimesteps)
        let timesteps = scheduler.timesteps
        if count < 0 { throw SwiftUNetError.invalidArgument("n must be >= 0, got \(count)") }
        // Shapes only (batch 0 needs no timesteps).
        try validateInput(batch: 0, channels: config.channels, height: height, width: width, timesteps: nil)
        let (perImage, o1) = (config.channels * height).multipliedReportingOverflow(by: width)
        let (total, o2) = count.multipliedReportingOverflow(by: perImage)
        if o1 || o2 { throw SwiftUNetError.outOfMemory("\(count) images of \(height)x\(width) are too many") }
        try SamplingNoise.checkRange(firstImage: firstImage, count: count, perImage: perImage, steps: timesteps.count)

        if let p = progress, !p(0, timesteps.count) { throw SwiftUNetError.interrupted }
        if count == 0 {
            if let p = progress, !p(timesteps.count, timesteps.count) { throw SwiftUNetError.interrupted }
            return
        }

        if let s = start {
            out.update(from: s, count: total)
        } else {
            SamplingNoise.fillStart(seed: seed, firstImage: firstImage, count: count, perImage: perImage, into: out)
        }

        let eps = try allocateFloatsOrThrow(total, "the predicted noise")
        defer { freeFloats(eps) }
        var tBuffer = [Int64](repeating: 0, count: count)

        var chunk = samplingChunkSize(count: count, height: height, width: width)
        if let limit = maxBatch { chunk = max(1, min(chunk, limit)) }
        for (k, t) in timesteps.enumerated() {
            for i in 0..<count { tBuffer[i] = Int64(t) }
            try tBuffer.withUnsafeBufferPointer { tp in
                var first = 0
                while first < count {
                    let m = min(chunk, count - first)
                    try forward(UnsafePointer(out + first * perImage), batch: m, channels: config.channels,
                                height: height, width: width, timesteps: tp.baseAddress!, out: eps + first * perImage)
                    first += m
                }
            }
            try scheduler.step(timestep: t, eps: eps, x: out, out: out, batch: count, perImage: perImage,
                               noise: .stream(seed: seed, firstImage: firstImage))
            if let p = progress, !p(k + 1, timesteps.count) { throw SwiftUNetError.interrupted }
        }
    }

    /// Activation memory one sampling forward may use; larger runs are split into
    /// several forwards of fewer images (the random stream and the update are
    /// unchanged: they always cover the whole batch).
    public static let samplingActivationBudget: Double = 2 * 1024 * 1024 * 1024

    /// Images per forward call of `sample`: all `count` when their activations fit
    /// `samplingActivationBudget`, else as many as do (at least 1). Depends only on
    /// the configuration and the arguments, never on the thread count.
    public func samplingChunkSize(count: Int, height: Int, width: Int) -> Int {
        let one = estimatedWorkspaceBytes(batch: 1, height: height, width: width)
        let perImage = max(1, estimatedWorkspaceBytes(batch: 2, height: height, width: width) - one)
        let fits = (DiffusionModel.samplingActivationBudget - (one - perImage)) / perImage
        return max(1, min(count, fits >= Double(count) ? count : Int(max(1, fits))))
    }

    /// Convenience: `count` images as a tensor [count, C, size, size] (size defaults to image_size).
    public func sample(count: Int, size: Int? = nil, schedule: NoiseSchedule, sampler: SamplerKind,
                       spacing: TimestepSpacing = .linspace, seed: UInt64, firstImage: Int = 0,
                       clip: Bool = true) throws -> Tensor {
        let s = size ?? config.imageSize
        let out = try Tensor(zeros: [count, config.channels, s, s])
        try sample(count: count, height: s, width: s, schedule: schedule, sampler: sampler, spacing: spacing,
                   seed: seed, firstImage: firstImage, clip: clip, out: out.data)
        return out
    }
}

/// `count` doubles (64-byte aligned) or `outOfMemory`; freed with `freeDoubles`.
private func allocateDoublesOrThrow(_ count: Int, _ what: @autoclosure () -> String) throws -> UnsafeMutablePointer<Double> {
    // Two floats per double: the float allocator's checks and alignment apply.
    let (floats, overflow) = count.multipliedReportingOverflow(by: 2)
    guard !overflow, let p = allocateFloats(floats) else {
        throw SwiftUNetError.outOfMemory("cannot allocate \(count) doubles for \(what())")
    }
    return UnsafeMutableRawPointer(p).bindMemory(to: Double.self, capacity: count)
}

private func freeDoubles(_ p: UnsafeMutablePointer<Double>?) {
    free(p)
}
