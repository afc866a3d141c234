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
        // Only the count matters for the timesteps; any valid schedule will do.
        let T = Int(numTimesteps), S = Int(steps)
        if S == 1 { out[0] = Int64(T - 1); return }
        let den = S - 1
        for (k, i) in (0..<S).reversed().enumerated() {
            let num = i * (T - 1)
            let q = num / den, r = num % den
            out[k] = Int64((2 * r > den || (2 * r == den && q % 2 == 1)) ? q + 1 : q)
        }
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

@_cdecl("swiftunet_model_sample")
public func swiftunet_model_sample(
    _ model: UnsafeMutableRawPointer?, _ betas: UnsafePointer<Double>?, _ numTimesteps: Int64,
    _ sampler: Int32, _ steps: Int64, _ eta: Double, _ clip: Int32, _ seed: UInt64,
    _ xT: UnsafePointer<Float>?, _ n: Int64, _ height: Int64, _ width: Int64, _ out: UnsafeMutablePointer<Float>?,
    _ progress: (@convention(c) (UnsafeMutableRawPointer?, Int64, Int64) -> Int32)?, _ context: UnsafeMutableRawPointer?
) -> Int32 {
    guarded {
        let m = try handle(model).model
        let schedule = try scheduleFromBetas(betas, numTimesteps)
        let kind: SamplerKind
        switch sampler {
        case samplerDDIM:
            guard steps >= 1 && steps <= numTimesteps else {
                throw argumentError("steps must be between 1 and the schedule's num_timesteps = \(numTimesteps), got \(steps)")
            }
            kind = .ddim(steps: Int(steps), eta: eta)
        case samplerDDPM:
            kind = .ddpm
        default:
            throw argumentError("sampler must be SWIFTUNET_SAMPLER_DDIM (0) or SWIFTUNET_SAMPLER_DDPM (1), got \(sampler)")
        }
        try kind.validate(for: schedule)
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
                     seed: seed, clip: clip != 0, start: xT, out: out ?? UnsafeMutablePointer(bitPattern: 64)!,
                     progress: callback)
    }
}
