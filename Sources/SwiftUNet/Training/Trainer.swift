/// Trains a `DiffusionModel` to predict noise (DDPM's simple loss), the loop of
/// docs/model.md section 5: per step, draw t and noise from the step's seeded stream, form
/// x_t = q_sample(x0, t, noise), loss = mse(model(x_t, t), noise), backward, clip the
/// gradient's global norm (optional), AdamW, EMA of the weights.
///
/// PyTorch equivalent: a loop over `torch.optim.AdamW`, `clip_grad_norm_` and an EMA
/// copy, except that a step here gives the same bits at every thread count, and a
/// trainer restored from its state continues bit for bit.
public final class Trainer {
    public let model: DiffusionModel
    public let schedule: NoiseSchedule
    public let options: AdamWOptions
    /// Clip the gradient's global norm to this (0: no clipping).
    public let gradClip: Double
    public let emaDecay: Double
    public let seed: UInt64
    public private(set) var stepCount = 0

    /// Floats in the flat parameter layout.
    public let total: Int
    private let ema: UnsafeMutablePointer<Float>
    private let firstMoments: UnsafeMutablePointer<Float>
    private let secondMoments: UnsafeMutablePointer<Float>
    private let gradients: UnsafeMutablePointer<Float>
    /// The parameters cut into pieces of at most `normChunkFloats` values: the tasks of the
    /// optimizer step.
    private let updatePieces: [(parameter: Int, start: Int, count: Int)]
    /// x_t, noise and t of the step, grown to the largest batch seen.
    private var inputs = StepInputs()
    private let lock = Mutex()

    public init(model: DiffusionModel, schedule: NoiseSchedule, options: AdamWOptions = AdamWOptions(),
                gradClip: Double = 0, emaDecay: Double = 0.999, seed: UInt64 = 0) throws {
        try options.validate()
        guard gradClip.isFinite && gradClip >= 0 else {
            throw SwiftUNetError.invalidArgument("grad_clip must be a finite number > 0 (or none), got \(gradClip)")
        }
        guard emaDecay >= 0 && emaDecay <= 1 else {
            throw SwiftUNetError.invalidArgument("ema_decay must be in [0, 1], got \(emaDecay)")
        }
        self.model = model
        self.schedule = schedule
        self.options = options
        self.gradClip = gradClip
        self.emaDecay = emaDecay
        self.seed = seed
        total = model.parameterTotal
        var pieces: [(parameter: Int, start: Int, count: Int)] = []
        for (index, p) in model.parameters.enumerated() {
            for start in stride(from: 0, to: p.count, by: normChunkFloats) {
                pieces.append((index, start, min(normChunkFloats, p.count - start)))
            }
        }
        updatePieces = pieces
        let n = max(1, total)
        ema = try allocateFloatsOrThrow(n, "the EMA weights")
        firstMoments = try allocateFloatsOrThrow(n, "AdamW's first moments")
        secondMoments = try allocateFloatsOrThrow(n, "AdamW's second moments")
        gradients = try allocateFloatsOrThrow(n, "the gradients")
        firstMoments.initialize(repeating: 0, count: n)
        secondMoments.initialize(repeating: 0, count: n)
        gradients.initialize(repeating: 0, count: n)
        ema.initialize(repeating: 0, count: n)
        model.weightsLock.withReadLock {
            for p in model.parameters { (ema + p.offset).update(from: p.data, count: p.count) }
        }
    }

    deinit {
        freeFloats(ema)
        freeFloats(firstMoments)
        freeFloats(secondMoments)
        freeFloats(gradients)
        inputs.free()
    }

    /// The timesteps t [batch] and noise [batch·perImage] of step `step` (0-based) of a trainer
    /// seeded with `seed`: a SplitMix64 stream seeded with
    /// SplitMix64(seed ^ step·0xD1B54A32D192ED03).next(); t[b] = ⌊next()·T / 2⁶⁴⌋ for each
    /// image in order, then the noise from the Gaussian generator continuing that stream.
    public static func draw(seed: UInt64, step: Int, numTimesteps: Int, batch: Int, perImage: Int,
                            t: UnsafeMutablePointer<Int64>, noise: UnsafeMutablePointer<Float>) {
        var mixer = SplitMix64(seed: seed ^ (UInt64(truncatingIfNeeded: step) &* 0xD1B5_4A32_D192_ED03))
        var generator = GaussianGenerator(seed: mixer.next())
        for b in 0..<batch {
            t[b] = Int64(generator.rng.next().multipliedFullWidth(by: UInt64(numTimesteps)).high)
        }
        generator.fill(noise, count: batch * perImage)
    }

    /// One training step on clean images x0 [batch, C, height, width] (batch >= 1); returns the
    /// loss before the update. On any error (including a non-finite loss or gradient)
    /// nothing changes: weights, moments, EMA and step count.
    public func step(_ x0: UnsafePointer<Float>, batch: Int, channels: Int, height: Int, width: Int) throws -> Double {
        try lock.withLock {
            if batch < 1 { throw SwiftUNetError.invalidArgument("x0 must hold at least one image, got batch \(batch)") }
            try model.validateShape(batch: batch, channels: channels, height: height, width: width, name: "x0")
            let perImage = channels * height * width
            let count = batch * perImage
            for i in 0..<count where !x0[i].isFinite {
                throw SwiftUNetError.invalidArgument("x0 has a non-finite value at flat index \(i)")
            }
            try inputs.reserve(batch: batch, count: count)
            Trainer.draw(seed: seed, step: stepCount, numTimesteps: schedule.numTimesteps, batch: batch,
                         perImage: perImage, t: inputs.t, noise: inputs.noise)
            try schedule.qSample(x0: x0, timesteps: inputs.t, noise: inputs.noise, batch: batch, perImage: perImage,
                                 out: inputs.xt)
            let loss = try model.lossAndGradient(inputs.xt, batch: batch, channels: channels, height: height,
                                                 width: width, timesteps: inputs.t, target: inputs.noise,
                                                 gradients: gradients)
            guard loss.isFinite else {
                throw SwiftUNetError.invalidArgument("the loss is not finite (\(loss)) at step \(stepCount + 1); nothing was changed")
            }
            let norm = gradClip > 0 ? clipGradientNorm(gradients, count: total, maxNorm: gradClip)
                                    : globalNorm(gradients, count: total)
            guard norm.isFinite else {
                throw SwiftUNetError.invalidArgument("the gradient is not finite at step \(stepCount + 1); nothing was changed")
            }
            let k = stepCount + 1
            model.updateWeights {
                // Element by element, so splitting the parameters into pieces changes no bit.
                let pieces = updatePieces
                ThreadPool.shared.parallelFor(pieces.count) { i in
                    let piece = pieces[i], p = model.parameters[piece.parameter]
                    let at = p.offset + piece.start
                    adamWStep(weights: p.data + piece.start, gradients: gradients + at, m: firstMoments + at,
                              v: secondMoments + at, count: piece.count, step: k, options: options)
                    emaUpdate(ema + at, weights: p.data + piece.start, count: piece.count, decay: emaDecay)
                }
            }
            stepCount = k
            return loss
        }
    }

    /// The trainer's state tensors, in the flat parameter layout.
    public enum State: Int32 {
        case ema = 0
        case firstMoments = 1
        case secondMoments = 2
    }

    /// Copies one state tensor (`total` floats) into dst.
    public func copyState(_ which: State, into dst: UnsafeMutablePointer<Float>) {
        lock.withLock {
            let src: UnsafeMutablePointer<Float>
            switch which {
            case .ema: src = ema
            case .firstMoments: src = firstMoments
            case .secondMoments: src = secondMoments
            }
            dst.update(from: src, count: total)
        }
    }

    /// Restores EMA, moments (`total` floats each: finite, second moments >= 0) and the step count.
    /// All or nothing.
    public func restore(ema newEMA: UnsafePointer<Float>, firstMoments m: UnsafePointer<Float>,
                        secondMoments v: UnsafePointer<Float>, stepCount k: Int) throws {
        if k < 0 { throw SwiftUNetError.invalidArgument("step_count must be >= 0, got \(k)") }
        for i in 0..<total {
            if !newEMA[i].isFinite { throw SwiftUNetError.invalidArgument("ema has a non-finite value at flat index \(i)") }
            if !m[i].isFinite { throw SwiftUNetError.invalidArgument("adam_m has a non-finite value at flat index \(i)") }
            if !(v[i].isFinite && v[i] >= 0) {
                throw SwiftUNetError.invalidArgument("adam_v must be finite and >= 0, got \(v[i]) at flat index \(i)")
            }
        }
        lock.withLock {
            ema.update(from: newEMA, count: total)
            firstMoments.update(from: m, count: total)
            secondMoments.update(from: v, count: total)
            stepCount = k
        }
    }
}

/// A trainer's per-step buffers: x_t, the noise and the timesteps, kept between steps.
private struct StepInputs {
    private(set) var xt = UnsafeMutablePointer<Float>(bitPattern: 64)!
    private(set) var noise = UnsafeMutablePointer<Float>(bitPattern: 64)!
    private(set) var t = UnsafeMutablePointer<Int64>(bitPattern: 64)!
    private var floats = 0
    private var images = 0

    mutating func reserve(batch: Int, count: Int) throws {
        if count > floats {
            let newXt = try allocateFloatsOrThrow(count, "x_t")
            guard let newNoise = try? allocateFloatsOrThrow(count, "the noise") else {
                freeFloats(newXt)
                throw SwiftUNetError.outOfMemory("could not allocate the noise of a training step")
            }
            if floats > 0 { freeFloats(xt); freeFloats(noise) }
            xt = newXt
            noise = newNoise
            floats = count
        }
        if batch > images {
            if images > 0 { t.deallocate() }
            t = .allocate(capacity: batch)
            images = batch
        }
    }

    func free() {
        if floats > 0 { freeFloats(xt); freeFloats(noise) }
        if images > 0 { t.deallocate() }
    }
}
