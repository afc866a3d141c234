#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// How the timesteps of a run of S < T steps are spread over 0..<T
/// (diffusers' `timestep_spacing`); see `NoiseSchedule.timesteps(steps:spacing:)`.
public enum TimestepSpacing: Int32, CaseIterable, Equatable {
    case linspace = 0
    case leading = 1
    case trailing = 2
}

/// The forward-process noise schedule of a diffusion model (docs/model.md section 3),
/// in float64: `betas[t]` for t in 0..<T and `alphasCumprod[t] = prod_{s<=t}(1 - betas[s])`.
///
/// PyTorch/diffusers equivalent: `DDPMScheduler(beta_schedule="squaredcos_cap_v2")`
/// for `cosine`, `beta_schedule="linear"` for `linear`.
public struct NoiseSchedule: Equatable {
    public let betas: [Double]
    public let alphasCumprod: [Double]

    /// Schedules longer than this are refused (a million steps is far past any use).
    public static let maximumTimesteps = 1 << 20

    public var numTimesteps: Int { betas.count }

    /// A schedule from explicit betas: each must be finite and in (0, 1), and the
    /// products must stay usable: `alphasCumprod[0] < 1` (so 1 - ab > 0 at every t)
    /// and `alphasCumprod[T-1] > 0` (no underflow to 0). `alphasCumprod` is the
    /// running product, left to right, in float64 (the same order as `numpy.cumprod`).
    public init(betas: [Double]) throws {
        guard betas.count >= 1 && betas.count <= NoiseSchedule.maximumTimesteps else {
            throw SwiftUNetError.invalidArgument(
                "a schedule needs between 1 and \(NoiseSchedule.maximumTimesteps) timesteps, got \(betas.count)")
        }
        for (i, b) in betas.enumerated() where !(b.isFinite && b > 0 && b < 1) {
            throw SwiftUNetError.invalidArgument("betas[\(i)] must be in (0, 1), got \(b)")
        }
        var cumprod = [Double](repeating: 0, count: betas.count)
        var running = 1.0
        for i in 0..<betas.count {
            running *= (1 - betas[i])
            cumprod[i] = running
        }
        guard cumprod[0] < 1 else {
            throw SwiftUNetError.invalidArgument("betas[0] = \(betas[0]) is too small: 1 - betas[0] rounds to 1 in float64")
        }
        guard cumprod[betas.count - 1] > 0 else {
            throw SwiftUNetError.invalidArgument("alphas_cumprod underflows to 0: the betas are too large for \(betas.count) timesteps")
        }
        self.betas = betas
        self.alphasCumprod = cumprod
    }

    static func checkTimesteps(_ T: Int) throws {
        guard T >= 1 && T <= maximumTimesteps else {
            throw SwiftUNetError.invalidArgument("num_timesteps must be between 1 and \(maximumTimesteps), got \(T)")
        }
    }

    /// Nichol & Dhariwal (2021): `f(u) = cos(((u/T) + 0.008) / 1.008 · π/2)²`,
    /// `beta_t = min(1 - f(t+1)/f(t), 0.999)`.
    public static func cosine(_ T: Int) throws -> NoiseSchedule {
        try checkTimesteps(T)
        let s = 0.008
        func f(_ u: Int) -> Double {
            let c = cos((Double(u) / Double(T) + s) / (1 + s) * Double.pi / 2)
            return c * c
        }
        let betas = (0..<T).map { t in min(1 - f(t + 1) / f(t), 0.999) }
        return try NoiseSchedule(betas: betas)
    }

    /// Betas evenly spaced from `betaStart` to `betaEnd`, computed as numpy.linspace
    /// does: `start + i·((end - start)/(T - 1))`, the last one exactly `end`.
    public static func linear(_ T: Int, betaStart: Double = 1e-4, betaEnd: Double = 0.02) throws -> NoiseSchedule {
        try checkTimesteps(T)
        for (name, v) in [("beta_start", betaStart), ("beta_end", betaEnd)] where !(v.isFinite && v > 0 && v < 1) {
            throw SwiftUNetError.invalidArgument("\(name) must be in (0, 1), got \(v)")
        }
        var betas = [Double](repeating: betaStart, count: T)
        if T > 1 {
            let step = (betaEnd - betaStart) / Double(T - 1)
            for i in 0..<T { betas[i] = Double(i) * step + betaStart }
            betas[T - 1] = betaEnd
        }
        return try NoiseSchedule(betas: betas)
    }

    /// The timesteps a DDIM run of `steps` steps visits, in order (descending):
    /// `round(i·(T-1)/(S-1))` for i = S-1 down to 0, the quotient rounded exactly
    /// with ties to even (as Python's `round` and `numpy.round` do). `steps = 1`
    /// visits the single timestep T-1.
    public func ddimTimesteps(steps: Int) throws -> [Int] {
        let T = numTimesteps
        guard steps >= 1 && steps <= T else {
            throw SwiftUNetError.invalidArgument("steps must be between 1 and num_timesteps = \(T), got \(steps)")
        }
        return NoiseSchedule.linspaceTimesteps(T, steps)
    }

    private static func linspaceTimesteps(_ T: Int, _ steps: Int) -> [Int] {
        if steps == 1 { return [T - 1] }
        let den = steps - 1
        return (0..<steps).reversed().map { i in
            let num = i * (T - 1)
            let q = num / den, r = num % den
            if 2 * r > den || (2 * r == den && q % 2 == 1) { return q + 1 }
            return q
        }
    }

    /// The timesteps a run of `steps` steps visits under `spacing`, in order
    /// (strictly decreasing). diffusers' `timestep_spacing` of `DDIMScheduler`:
    /// - `.linspace`: `ddimTimesteps(steps:)` (the SPEC rule, the default);
    /// - `.leading`: `k·(T div S)` for k = S-1 down to 0 (`steps_offset` 0);
    /// - `.trailing`: `round(k·T/S) - 1` for k = S down to 1, the quotient
    ///   rounded exactly with ties to even.
    public func timesteps(steps: Int, spacing: TimestepSpacing) throws -> [Int] {
        try NoiseSchedule.timesteps(numTimesteps: numTimesteps, steps: steps, spacing: spacing)
    }

    /// `timesteps(steps:spacing:)` of any schedule of `T` timesteps (they depend on T only).
    public static func timesteps(numTimesteps T: Int, steps: Int, spacing: TimestepSpacing) throws -> [Int] {
        guard steps >= 1 && steps <= T else {
            throw SwiftUNetError.invalidArgument("steps must be between 1 and num_timesteps = \(T), got \(steps)")
        }
        switch spacing {
        case .linspace:
            return linspaceTimesteps(T, steps)
        case .leading:
            let ratio = T / steps
            return (0..<steps).reversed().map { $0 * ratio }
        case .trailing:
            return (1...steps).reversed().map { k in
                let num = k * T
                let q = num / steps, r = num % steps
                let rounded = (2 * r > steps || (2 * r == steps && q % 2 == 1)) ? q + 1 : q
                return rounded - 1
            }
        }
    }

    /// `x_t = sqrt(ab_t)·x0 + sqrt(1 - ab_t)·noise` with one timestep per image,
    /// computed in float64 and rounded to float32 once. `x0`, `noise`, `out`
    /// hold `batch · perImage` floats; `out` may alias either input.
    public func qSample(x0: UnsafePointer<Float>, timesteps: UnsafePointer<Int64>, noise: UnsafePointer<Float>,
                        batch: Int, perImage: Int, out: UnsafeMutablePointer<Float>) throws {
        for b in 0..<batch where timesteps[b] < 0 || timesteps[b] >= Int64(numTimesteps) {
            throw SwiftUNetError.invalidArgument(
                "t[\(b)] must be in [0, \(numTimesteps)) (the schedule's timesteps), got \(timesteps[b])")
        }
        for b in 0..<batch {
            let ab = alphasCumprod[Int(timesteps[b])]
            let a = ab.squareRoot(), c = (1 - ab).squareRoot()
            let base = b * perImage
            for i in base..<(base + perImage) {
                out[i] = Float(a * Double(x0[i]) + c * Double(noise[i]))
            }
        }
    }
}
