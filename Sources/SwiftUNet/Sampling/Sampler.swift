/// The reverse-process samplers of docs/model.md section 3, run entirely in Swift: one
/// batched model forward per step, the per-element update in float64 on the
/// float32 state, the state rounded to float32 after every step.
///
/// docs/sampling.md states every formula, the operation order, and the random
/// stream; `swiftunet.reference.ddim_sample` / `ddpm_sample` are the numpy twins.
public enum SamplerKind: Equatable {
    /// DDIM (Song et al. 2021) over `steps` timesteps of the schedule, `eta` in [0, 1].
    case ddim(steps: Int, eta: Double)
    /// DDPM ancestral sampling (Ho et al. 2020) over all T timesteps.
    case ddpm

    /// Throws `invalidArgument` unless the options fit `schedule`.
    public func validate(for schedule: NoiseSchedule) throws {
        if case let .ddim(steps, eta) = self {
            guard steps >= 1 && steps <= schedule.numTimesteps else {
                throw SwiftUNetError.invalidArgument(
                    "steps must be between 1 and the schedule's num_timesteps = \(schedule.numTimesteps), got \(steps)")
            }
            guard eta.isFinite && eta >= 0 && eta <= 1 else {
                throw SwiftUNetError.invalidArgument("eta must be in [0, 1], got \(eta)")
            }
        }
    }

    /// The timesteps visited, in order.
    public func timesteps(for schedule: NoiseSchedule) throws -> [Int] {
        try validate(for: schedule)
        switch self {
        case .ddim(let steps, _): return try schedule.ddimTimesteps(steps: steps)
        case .ddpm: return Array((0..<schedule.numTimesteps).reversed())
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

extension DiffusionModel {
    /// Generates `count` images [count, C, height, width] into `out`.
    ///
    /// The random stream is one `GaussianGenerator(seed:)`: first x_T (unless
    /// `start` is given, then it is copied and no draws are made for it), then one
    /// whole [count, C, H, W] tensor for every step that adds noise (DDIM steps
    /// with sigma > 0, DDPM steps with t > 0), in step order.
    ///
    /// `progress(done, total)` is called before the first step (done = 0) and after
    /// every step, on the calling thread; returning false stops the loop with
    /// `SwiftUNetError.interrupted` (the model stays usable; `out` then holds a
    /// partly denoised state).
    ///
    /// Each step's forward covers all images at once, or chunks of at most
    /// `samplingChunkSize` (and `maxBatch`, when given) images.
    public func sample(count: Int, height: Int, width: Int, schedule: NoiseSchedule, sampler: SamplerKind,
                       seed: UInt64, clip: Bool = true, start: UnsafePointer<Float>? = nil,
                       out: UnsafeMutablePointer<Float>, progress: ((Int, Int) -> Bool)? = nil,
                       maxBatch: Int? = nil) throws {
        let timesteps = try sampler.timesteps(for: schedule)
        if count < 0 { throw SwiftUNetError.invalidArgument("n must be >= 0, got \(count)") }
        // Shapes only (batch 0 needs no timesteps).
        try validateInput(batch: 0, channels: config.channels, height: height, width: width, timesteps: nil)
        let (perImage, o1) = (config.channels * height).multipliedReportingOverflow(by: width)
        let (total, o2) = count.multipliedReportingOverflow(by: perImage)
        if o1 || o2 { throw SwiftUNetError.outOfMemory("\(count) images of \(height)x\(width) are too many") }

        if let p = progress, !p(0, timesteps.count) { throw SwiftUNetError.interrupted }
        if count == 0 {
            if let p = progress, !p(timesteps.count, timesteps.count) { throw SwiftUNetError.interrupted }
            return
        }

        var gen = GaussianGenerator(seed: seed)
        if let s = start {
            out.update(from: s, count: total)
        } else {
            gen.fill(out, count: total)
        }

        let eps = try allocateFloatsOrThrow(total, "the predicted noise")
        defer { freeFloats(eps) }
        var noise: UnsafeMutablePointer<Float>? = nil
        defer { freeFloats(noise) }
        func drawNoise() throws -> UnsafeMutablePointer<Float> {
            if noise == nil { noise = try allocateFloatsOrThrow(total, "the sampling noise") }
            gen.fill(noise!, count: total)
            return noise!
        }
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
            switch sampler {
            case .ddim(_, let eta):
                let abPrev = k + 1 < timesteps.count ? schedule.alphasCumprod[timesteps[k + 1]] : 1.0
                let c = SamplerMath.DDIMCoefficients(alphaBar: schedule.alphasCumprod[t], alphaBarPrev: abPrev, eta: eta)
                let z = c.sigma > 0 ? try drawNoise() : nil
                SamplerMath.ddimUpdate(out, eps: eps, noise: z, count: total, c, clip: clip)
            case .ddpm:
                let c = SamplerMath.DDPMCoefficients(schedule: schedule, t: t)
                let z = t > 0 ? try drawNoise() : nil
                SamplerMath.ddpmUpdate(out, eps: eps, noise: z, count: total, c, clip: clip)
            }
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
                       seed: UInt64, clip: Bool = true) throws -> Tensor {
        let s = size ?? config.imageSize
        let out = try Tensor(zeros: [count, config.channels, s, s])
        try sample(count: count, height: s, width: s, schedule: schedule, sampler: sampler, seed: seed, clip: clip,
                   out: out.data)
        return out
    }
}
