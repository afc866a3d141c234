// The C interface of sampling: noise schedules, q_sample, the seeded Gaussian
// generator and the DDIM / DDPM loops (declared in include/swiftunet.h, section
// "sampling"). Like ABI.swift, this file only checks and translates; nothing
// here may trap.

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import SwiftUNet

private let samplerDDIM: Int32 = 0
private let samplerDDPM: Int32 = 1
private let samplerDPMSolver2M: Int32 = 2

/// The sampler and spacing codes of swiftunet.h, checked.
private func samplerKind(_ sampler: Int32, steps: Int64, eta: Double, karras: Int32,
                         numTimesteps: Int64) throws -> SamplerKind {
    func checkSteps() throws {
        guard steps >= 1 && steps <= numTimesteps else {
            throw argumentError("steps must be between 1 and the schedule's num_timesteps = \(numTimesteps), got \(steps)")
        }
    }
    switch sampler {
    case samplerDDIM:
        try checkSteps()
        return .ddim(steps: Int(steps), eta: eta)
    case samplerDDPM:
        return .ddpm
    case samplerDPMSolver2M:
        try checkSteps()
        return .dpmSolver2M(steps: Int(steps), karras: karras != 0)
    default:
        throw argumentError(
            "sampler must be SWIFTUNET_SAMPLER_DDIM (0), SWIFTUNET_SAMPLER_DDPM (1) or SWIFTUNET_SAMPLER_DPMPP_2M (2), got \(sampler)")
    }
}

/// Custom timesteps from C: `steps` int64 values, or nil for the spacing's.
private func customTimesteps(_ p: UnsafePointer<Int64>?, _ steps: Int64, sampler: Int32) throws -> [Int]? {
    guard let p = p else { return nil }
    guard sampler != samplerDDPM else {
        throw argumentError("timesteps: DDPM visits every timestep; custom timesteps are for ddim and dpmpp_2m")
    }
    guard steps >= 1 && steps <= Int64(NoiseSchedule.maximumTimesteps) else {
        throw argumentError("timesteps: expected between 1 and \(NoiseSchedule.maximumTimesteps) values, got \(steps)")
    }
    return UnsafeBufferPointer(start: p, count: Int(steps)).map { t in
        Int(clamping: t)
    }
}

private func spacingOf(_ code: Int32) throws -> TimestepSpacing {
    guard let s = TimestepSpacing(rawValue: code) else {
        throw argumentError("timestep_spacing must be LINSPACE (0), LEADING (1) or TRAILING (2), got \(code)")
    }
    return s
}

/// A schedule from a C array of betas (validated by NoiseSchedule).
func scheduleFromBetas(_ betas: UnsafePointer<Double>?, _ count: Int64) throws -> NoiseSchedule {
    guard count >= 1 && count <= Int64(NoiseSchedule.maximumTimesteps) else {
        throw argumentError("num_timesteps must be between 1 and \(NoiseSchedule.maximumTimesteps), got \(count)")
    }
    guard let betas = betas else { throw argumentError("betas must not be NULL") }
    return try NoiseSchedule(betas: Array(UnsafeBufferPointer(start: betas, count: Int(count))))
}

private func checkTimestepCount(_ n: Int64) throws {
    guard n >= 1 && n <= Int64(NoiseSchedule.maximumTimesteps) else {
        throw argumentError("num_timesteps must be between 1 and \(NoiseSchedule.maximumTimesteps), got \(n)")
    }
}

private func write(_ s: NoiseSchedule, _ betas: UnsafeMutablePointer<Double>?, _ cumprod: UnsafeMutablePointer<Double>?) {
    if let b = betas { s.betas.withUnsafeBufferPointer { b.update(from: $0.baseAddress!, count: s.numTimesteps) } }
    if let a = cumprod { s.alphasCumprod.withUnsafeBufferPointer { a.update(from: $0.baseAddress!, count: s.numTimesteps) } }
}

@_cdecl("swiftunet_schedule_cosine")
public func swiftunet_schedule_cosine(
    _ numTimesteps: Int64, _ betas: UnsafeMutablePointer<Double>?, _ alphasCumprod: UnsafeMutablePointer<Double>?
) -> Int32 {
    guarded {
        try checkTimestepCount(numTimesteps)
        write(try NoiseSchedule.cosine(Int(numTimesteps)), betas, alphasCumprod)
    }
}

@_cdecl("swiftunet_schedule_linear")
public func swiftunet_schedule_linear(
    _ numTimesteps: Int64, _ betaStart: Double, _ betaEnd: Double,
    _ betas: UnsafeMutablePointer<Double>?, _ alphasCumprod: UnsafeMutablePointer<Double>?
) -> Int32 {
    guarded {
        try checkTimestepCount(numTimesteps)
        write(try NoiseSchedule.linear(Int(numTimesteps), betaStart: betaStart, betaEnd: betaEnd), betas, alphasCumprod)
    }
}

@_cdecl("swiftunet_schedule_from_betas")
public func swiftunet_schedule_from_betas(
    _ betas: UnsafePointer<Double>?, _ numTimesteps: Int64, _ alphasCumprod: UnsafeMutablePointer<Double>?
) -> Int32 {
    guarded { write(try scheduleFromBetas(betas, numTimesteps), nil, alphasCumprod) }
}

@_cdecl("swiftunet_ddim_timesteps")
public func swiftunet_ddim_timesteps(_ numTimesteps: Int64, _ steps: Int64, _ out: UnsafeMutablePointer<Int64>?) -> Int32 {
    guarded {
        try checkTimestepCount(numTimesteps)
        guard steps >= 1 && steps <= numTimesteps else {
            throw argumentError("steps must be between 1 and num_timesteps = \(numTimesteps), got \(steps)")
        }
        guard let out = out else { throw argumentError("out must not be NULL") }
        let ts = try NoiseSchedule.timesteps(numTimesteps: Int(numTimesteps), steps: Int(steps), spacing: .linspace)
        for (k, t) in ts.enumerated() { out[k] = Int64(t) }
    }
}

@_cdecl("swiftunet_q_sample")
public func swiftunet_q_sample(
    _ betas: UnsafePointer<Double>?, _ numTimesteps: Int64, _ x0: UnsafePointer<Float>?, _ timesteps: UnsafePointer<Int64>?,
    _ noise: UnsafePointer<Float>?, _ batch: Int64, _ perImage: Int64, _ out: UnsafeMutablePointer<Float>?
) -> Int32 {
    guarded {
        let s = try scheduleFromBetas(betas, numTimesteps)
        guard batch >= 0 && perImage >= 0 else {
            throw argumentError("batch and per_image must be >= 0, got \(batch) and \(perImage)")
        }
        let (total, overflow) = batch.multipliedReportingOverflow(by: perImage)
        if overflow || total > Int64(Int32.max) * 64 { throw argumentError("x0 is too large") }
        if total == 0 { return }
        guard let x0 = x0, let noise = noise, let out = out, let t = timesteps else {
            throw argumentError("x0, t, noise and out must not be NULL")
        }
        try s.qSample(x0: x0, timesteps: t, noise: noise, batch: Int(batch), perImage: Int(perImage), out: out)
    }
}

@_cdecl("swiftunet_randn")
public func swiftunet_randn(_ seed: UInt64, _ out: UnsafeMutablePointer<Float>?, _ count: Int64) -> Int32 {
    guarded {
        guard count >= 0 else { throw argumentError("count must be >= 0, got \(count)") }
        if count == 0 { return }
        guard let out = out else { throw argumentError("out must not be NULL") }
        var g = GaussianGenerator(seed: seed)
        g.fill(out, count: Int(count))
    }
}

@_cdecl("swiftunet_schedule_timesteps")
public func swiftunet_schedule_timesteps(_ numTimesteps: Int64, _ steps: Int64, _ spacing: Int32,
                                         _ out: UnsafeMutablePointer<Int64>?) -> Int32 {
    guarded {
        try checkTimestepCount(numTimesteps)
        let sp = try spacingOf(spacing)
        guard steps >= 1 && steps <= numTimesteps else {
            throw argumentError("steps must be between 1 and num_timesteps = \(numTimesteps), got \(steps)")
        }
        guard let out = out else { throw argumentError("out must not be NULL") }
        let ts = try NoiseSchedule.timesteps(numTimesteps: Int(numTimesteps), steps: Int(steps), spacing: sp)
        for (i, t) in ts.enumerated() { out[i] = Int64(t) }
    }
}

@_cdecl("swiftunet_randn_at")
public func swiftunet_randn_at(_ seed: UInt64, _ first: Int64, _ out: UnsafeMutablePointer<Float>?,
                               _ count: Int64) -> Int32 {
    guarded {
        guard count >= 0 else { throw argumentError("count must be >= 0, got \(count)") }
        guard first >= 0 else { throw argumentError("first must be >= 0, got \(first)") }
        if count == 0 { return }
        guard let out = out else { throw argumentError("out must not be NULL") }
        GaussianGenerator.fill(seed: seed, normalsFrom: UInt64(first), count: Int(count), into: out)
    }
}

@_cdecl("swiftunet_model_sample")
public func swiftunet_model_sample(
    _ model: UnsafeMutableRawPointer?, _ betas: UnsafePointer<Double>?, _ numTimesteps: Int64,
    _ sampler: Int32, _ steps: Int64, _ eta: Double, _ clip: Int32, _ seed: UInt64,
    _ xT: UnsafePointer<Float>?, _ n: Int64, _ height: Int64, _ width: Int64, _ out: UnsafeMutablePointer<Float>?,
    _ progress: (@convention(c) (UnsafeMutableRawPointer?, Int64, Int64) -> Int32)?, _ context: UnsafeMutableRawPointer?
) -> Int32 {
    swiftunet_model_sample_images(model, betas, numTimesteps, sampler, steps, eta, 0, nil, 0, clip, seed, 0, xT, n,
                                  height, width, out, progress, context)
}

@_cdecl("swiftunet_model_sample_images")
public func swiftunet_model_sample_images(
    _ model: UnsafeMutableRawPointer?, _ betas: UnsafePointer<Double>?, _ numTimesteps: Int64,
    _ sampler: Int32, _ steps: Int64, _ eta: Double, _ spacing: Int32, _ timesteps: UnsafePointer<Int64>?,
    _ karras: Int32, _ clip: Int32, _ seed: UInt64, _ firstImage: Int64,
    _ xT: UnsafePointer<Float>?, _ n: Int64, _ height: Int64, _ width: Int64, _ out: UnsafeMutablePointer<Float>?,
    _ progress: (@convention(c) (UnsafeMutableRawPointer?, Int64, Int64) -> Int32)?, _ context: UnsafeMutableRawPointer?
) -> Int32 {
    guarded {
        let m = try handle(model).model
        let schedule = try scheduleFromBetas(betas, numTimesteps)
        let kind = try samplerKind(sampler, steps: steps, eta: eta, karras: karras, numTimesteps: numTimesteps)
        let sp = try spacingOf(spacing)
        try kind.validate(for: schedule)
        let custom = try customTimesteps(timesteps, steps, sampler: sampler)
        // The plan checks the custom timesteps before any work.
        _ = try SamplingPlan(schedule: schedule, sampler: kind, spacing: sp, timesteps: custom)
        guard firstImage >= 0 else { throw argumentError("start must be >= 0, got \(firstImage)") }
        let limit = Int64(ModelConfig.maximumDimension)
        guard n >= 0 && n <= Int64(Int32.max) else { throw argumentError("n must be in [0, 2**31), got \(n)") }
        guard height >= 1 && height <= limit else { throw argumentError("height \(height) is out of range") }
        guard width >= 1 && width <= limit else { throw argumentError("width \(width) is out of range") }
        try m.validateInput(batch: 0, channels: m.config.channels, height: Int(height), width: Int(width),
                            timesteps: nil)
        if n > 0 {
            guard let out = out else { throw argumentError("out must not be NULL") }
            // n < 2^31 and every other factor <= 2^16: the product can exceed Int.max.
            let (perImage, o1) = (m.config.channels * Int(height)).multipliedReportingOverflow(by: Int(width))
            let (count, o2) = Int(n).multipliedReportingOverflow(by: perImage)
            if o1 || o2 || count > Int.max / 16 { throw SwiftUNetError.outOfMemory("sampling \(n) images of \(height)x\(width) is too large") }
            if let x = xT {
                let xs = UInt(bitPattern: x), os = UInt(bitPattern: out), bytes = UInt(count * 4)
                if xs < os + bytes && os < xs + bytes, xs != os {
                    throw argumentError("x_T must not partly overlap out")
                }
            }
            let chunk = m.samplingChunkSize(count: Int(n), height: Int(height), width: Int(width))
            let need = m.estimatedWorkspaceBytes(batch: chunk, height: Int(height), width: Int(width))
                + 12 * Double(count)
            if let budget = exceedsUsableMemory(need) {
                throw SwiftUNetError.outOfMemory(
                    "sampling \(n) images of \(height)x\(width) needs about \(gigabytes(need)) GB, more than the \(gigabytes(budget)) GB of memory available")
            }
        }
        var callback: ((Int, Int) -> Bool)? = nil
        if let p = progress {
            callback = { done, total in p(context, Int64(done), Int64(total)) == 0 }
        }
        try m.sample(count: Int(n), height: Int(height), width: Int(width), schedule: schedule, sampler: kind,
                     spacing: sp, timesteps: custom, seed: seed, firstImage: Int(firstImage), clip: clip != 0, start: xT, out: out ?? UnsafeMutablePointer(bitPattern: 64)!,
                     progress: callback)
    }
}

// MARK: schedulers

/// What a `swiftunet_scheduler *` points at: the scheduler and a lock, since the
/// scheduler keeps state between steps and the C interface may be called from
/// any thread.
final class SchedulerHandle {
    let scheduler: SamplingScheduler
    private let lock: UnsafeMutablePointer<pthread_mutex_t>

    init(_ scheduler: SamplingScheduler) {
        self.scheduler = scheduler
        lock = .allocate(capacity: 1)
        pthread_mutex_init(lock, nil)
    }

    deinit {
        pthread_mutex_destroy(lock)
        lock.deallocate()
    }

    func locked<R>(_ body: () throws -> R) rethrows -> R {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        return try body()
    }
}

private func schedulerHandle(_ p: UnsafeRawPointer?) throws -> SchedulerHandle {
    guard let p = p else { throw argumentError("scheduler must not be NULL") }
    return Unmanaged<SchedulerHandle>.fromOpaque(p).takeUnretainedValue()
}

@_cdecl("swiftunet_scheduler_create")
public func swiftunet_scheduler_create(
    _ betas: UnsafePointer<Double>?, _ numTimesteps: Int64, _ sampler: Int32, _ steps: Int64, _ eta: Double,
    _ spacing: Int32, _ timesteps: UnsafePointer<Int64>?, _ karras: Int32, _ clip: Int32,
    _ outScheduler: UnsafeMutablePointer<UnsafeMutableRawPointer?>?
) -> Int32 {
    guarded {
        guard let outScheduler = outScheduler else { throw argumentError("out_scheduler must not be NULL") }
        let schedule = try scheduleFromBetas(betas, numTimesteps)
        let kind = try samplerKind(sampler, steps: steps, eta: eta, karras: karras, numTimesteps: numTimesteps)
        let scheduler = try SamplingScheduler(schedule: schedule, sampler: kind, spacing: try spacingOf(spacing),
                                              clip: clip != 0,
                                              timesteps: try customTimesteps(timesteps, steps, sampler: sampler))
        outScheduler.pointee = Unmanaged.passRetained(SchedulerHandle(scheduler)).toOpaque()
    }
}

@_cdecl("swiftunet_scheduler_release")
public func swiftunet_scheduler_release(_ scheduler: UnsafeMutableRawPointer?) {
    guard let scheduler = scheduler else { return }
    Unmanaged<SchedulerHandle>.fromOpaque(scheduler).release()
}

@_cdecl("swiftunet_scheduler_num_steps")
public func swiftunet_scheduler_num_steps(_ scheduler: UnsafeRawPointer?) -> Int64 {
    guard let h = try? schedulerHandle(scheduler) else { return -1 }
    return Int64(h.scheduler.timesteps.count)
}

@_cdecl("swiftunet_scheduler_plan")
public func swiftunet_scheduler_plan(_ scheduler: UnsafeRawPointer?, _ timesteps: UnsafeMutablePointer<Int64>?,
                                     _ alphaBars: UnsafeMutablePointer<Double>?) -> Int32 {
    guarded {
        let plan = try schedulerHandle(scheduler).scheduler.plan
        if let t = timesteps { for (i, v) in plan.timesteps.enumerated() { t[i] = Int64(v) } }
        if let a = alphaBars { for (i, v) in plan.alphaBars.enumerated() { a[i] = v } }
    }
}

@_cdecl("swiftunet_scheduler_step_index")
public func swiftunet_scheduler_step_index(_ scheduler: UnsafeRawPointer?) -> Int64 {
    guard let h = try? schedulerHandle(scheduler) else { return -1 }
    return Int64(h.locked { h.scheduler.stepIndex })
}

@_cdecl("swiftunet_scheduler_reset")
public func swiftunet_scheduler_reset(_ scheduler: UnsafeMutableRawPointer?) -> Int32 {
    guarded {
        let h = try schedulerHandle(scheduler)
        h.locked { h.scheduler.reset() }
    }
}

private let noiseNone: Int32 = 0
private let noiseGiven: Int32 = 1
private let noiseStream: Int32 = 2

@_cdecl("swiftunet_scheduler_step")
public func swiftunet_scheduler_step(
    _ scheduler: UnsafeMutableRawPointer?, _ t: Int64, _ eps: UnsafePointer<Float>?, _ x: UnsafePointer<Float>?,
    _ batch: Int64, _ perImage: Int64, _ noiseKind: Int32, _ noise: UnsafePointer<Float>?, _ seed: UInt64,
    _ firstImage: Int64, _ out: UnsafeMutablePointer<Float>?
) -> Int32 {
    guarded {
        let h = try schedulerHandle(scheduler)
        guard batch >= 0 && perImage >= 0 else {
            throw argumentError("batch and per_image must be >= 0, got \(batch) and \(perImage)")
        }
        let (count, overflow) = batch.multipliedReportingOverflow(by: perImage)
        if overflow || count > Int64(Int.max / 16) { throw argumentError("x is too large") }
        guard let eps = eps, let x = x, let out = out else {
            throw argumentError("eps, x and out must not be NULL")
        }
        let bytes = UInt(count * 4)
        let os = UInt(bitPattern: out)
        for (p, name) in [(UInt(bitPattern: eps), "eps"), (UInt(bitPattern: noise), "noise")] where p != 0 {
            if p < os + bytes && os < p + bytes { throw argumentError("out must not overlap \(name)") }
        }
        let xs = UInt(bitPattern: x)
        if xs != os && xs < os + bytes && os < xs + bytes { throw argumentError("out must not partly overlap x") }
        let source: SamplingScheduler.Noise
        switch noiseKind {
        case noiseNone: source = .none
        case noiseGiven:
            guard let z = noise else { throw argumentError("noise must not be NULL with SWIFTUNET_NOISE_GIVEN") }
            source = .given(z)
        case noiseStream:
            guard firstImage >= 0 else { throw argumentError("start must be >= 0, got \(firstImage)") }
            source = .stream(seed: seed, firstImage: Int(firstImage))
        default:
            throw argumentError("noise_kind must be NONE (0), GIVEN (1) or STREAM (2), got \(noiseKind)")
        }
        guard t >= 0 && t <= Int64(Int32.max) else { throw argumentError("t must be a timestep >= 0, got \(t)") }
        try h.locked {
            try h.scheduler.step(timestep: Int(t), eps: eps, x: x, out: out, batch: Int(batch),
                                 perImage: Int(perImage), noise: source)
        }
    }
}
