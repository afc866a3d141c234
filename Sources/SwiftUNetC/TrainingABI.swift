// The C interface of training (declared in include/swiftunet.h): loss_and_grad and the
// trainer. Like ABI.swift, it only checks pointers and sizes and translates errors.

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import SwiftUNet

/// What a `swiftunet_trainer *` points at: the trainer and the handle of its model
/// (held, so the model outlives the trainer).
final class TrainerHandle {
    let trainer: Trainer
    let model: ModelHandle

    init(_ trainer: Trainer, model: ModelHandle) {
        self.trainer = trainer
        self.model = model
    }
}

func trainerHandle(_ p: UnsafeRawPointer?) throws -> TrainerHandle {
    guard let p = p else { throw argumentError("trainer must not be NULL") }
    return Unmanaged<TrainerHandle>.fromOpaque(p).takeUnretainedValue()
}

/// Refuses a training pass whose activations could not fit in memory, before anything is
/// allocated. The saved activations and their gradients take a few times a forward's.
private func checkTrainingMemory(_ m: DiffusionModel, batch: Int64, height: Int64, width: Int64) throws {
    let need = 3 * m.estimatedWorkspaceBytes(batch: Int(batch), height: Int(height), width: Int(width))
    if let budget = exceedsUsableMemory(need) {
        throw SwiftUNetError.outOfMemory(
            "training at batch \(batch) and \(height)x\(width) needs about \(gigabytes(need)) GB of activations, more than the \(gigabytes(budget)) GB of memory available")
    }
}

/// Refuses a buffer that overlaps another (both `count` floats).
private func checkDisjoint(_ a: UnsafeRawPointer, _ aName: String, _ b: UnsafeRawPointer, _ bName: String,
                           bytes: Int, otherBytes: Int) throws {
    let aStart = UInt(bitPattern: a), bStart = UInt(bitPattern: b)
    if aStart < bStart + UInt(otherBytes) && bStart < aStart + UInt(bytes) {
        throw argumentError("\(aName) must not overlap \(bName)")
    }
}

@_cdecl("swiftunet_model_param_total")
public func swiftunet_model_param_total(_ model: UnsafeRawPointer?) -> Int64 {
    guard let h = try? handle(model) else { return -1 }
    return Int64(h.model.parameterTotal)
}

@_cdecl("swiftunet_model_loss_and_grad")
public func swiftunet_model_loss_and_grad(
    _ model: UnsafeMutableRawPointer?, _ x: UnsafePointer<Float>?, _ batch: Int64, _ channels: Int64,
    _ height: Int64, _ width: Int64, _ timesteps: UnsafePointer<Int64>?, _ target: UnsafePointer<Float>?,
    _ loss: UnsafeMutablePointer<Double>?, _ grads: UnsafeMutablePointer<Float>?, _ gradsCount: Int64
) -> Int32 {
    guarded {
        let m = try handle(model).model
        let count = try checkedImageCount(m, batch: batch, channels: channels, height: height, width: width,
                                          timesteps: timesteps)
        if batch < 1 { throw argumentError("batch must be >= 1 (the loss is a mean), got \(batch)") }
        guard let x = x else { throw argumentError("x must not be NULL") }
        guard let target = target else { throw argumentError("target must not be NULL") }
        guard let loss = loss else { throw argumentError("loss must not be NULL") }
        guard let grads = grads else { throw argumentError("grads must not be NULL") }
        guard gradsCount == Int64(m.parameterTotal) else {
            throw argumentError("grads must hold \(m.parameterTotal) floats (param_total), got \(gradsCount)")
        }
        try checkDisjoint(grads, "grads", x, "x", bytes: Int(gradsCount) * 4, otherBytes: count * 4)
        try checkDisjoint(grads, "grads", target, "target", bytes: Int(gradsCount) * 4, otherBytes: count * 4)
        try checkTrainingMemory(m, batch: batch, height: height, width: width)
        loss.pointee = try m.lossAndGradient(x, batch: Int(batch), channels: Int(channels), height: Int(height),
                                             width: Int(width), timesteps: timesteps!, target: target,
                                             gradients: grads)
    }
}

@_cdecl("swiftunet_trainer_create")
public func swiftunet_trainer_create(
    _ model: UnsafeMutableRawPointer?, _ betas: UnsafePointer<Double>?, _ numTimesteps: Int64,
    _ lr: Double, _ beta1: Double, _ beta2: Double, _ eps: Double, _ weightDecay: Double,
    _ gradClip: Double, _ emaDecay: Double, _ seed: UInt64,
    _ outTrainer: UnsafeMutablePointer<UnsafeMutableRawPointer?>?
) -> Int32 {
    guarded {
        let h = try handle(model)
        guard let outTrainer = outTrainer else { throw argumentError("out_trainer must not be NULL") }
        let schedule = try scheduleFromBetas(betas, numTimesteps)
        let options = AdamWOptions(lr: lr, beta1: beta1, beta2: beta2, eps: eps, weightDecay: weightDecay)
        let trainer = try h.withParameters {
            try Trainer(model: h.model, schedule: schedule, options: options, gradClip: gradClip,
                        emaDecay: emaDecay, seed: seed)
        }
        outTrainer.pointee = Unmanaged.passRetained(TrainerHandle(trainer, model: h)).toOpaque()
    }
}

@_cdecl("swiftunet_trainer_retain")
public func swiftunet_trainer_retain(_ trainer: UnsafeMutableRawPointer?) {
    guard let trainer = trainer else { return }
    _ = Unmanaged<TrainerHandle>.fromOpaque(trainer).retain()
}

@_cdecl("swiftunet_trainer_release")
public func swiftunet_trainer_release(_ trainer: UnsafeMutableRawPointer?) {
    guard let trainer = trainer else { return }
    Unmanaged<TrainerHandle>.fromOpaque(trainer).release()
}

@_cdecl("swiftunet_trainer_step")
public func swiftunet_trainer_step(
    _ trainer: UnsafeMutableRawPointer?, _ x0: UnsafePointer<Float>?, _ batch: Int64, _ channels: Int64,
    _ height: Int64, _ width: Int64, _ loss: UnsafeMutablePointer<Double>?
) -> Int32 {
    guarded {
        let h = try trainerHandle(trainer)
        let m = h.trainer.model
        _ = try checkedImageCount(m, batch: batch, channels: channels, height: height, width: width,
                                  timesteps: nil, checkTimesteps: false, name: "x0")
        if batch < 1 { throw argumentError("x0 must hold at least one image, got batch \(batch)") }
        guard let x0 = x0 else { throw argumentError("x0 must not be NULL") }
        guard let loss = loss else { throw argumentError("loss must not be NULL") }
        try checkTrainingMemory(m, batch: batch, height: height, width: width)
        // get_param must not read weights halfway through an update.
        loss.pointee = try h.model.withParameters {
            try h.trainer.step(x0, batch: Int(batch), channels: Int(channels), height: Int(height), width: Int(width))
        }
    }
}

@_cdecl("swiftunet_trainer_step_count")
public func swiftunet_trainer_step_count(_ trainer: UnsafeRawPointer?) -> Int64 {
    guard let h = try? trainerHandle(trainer) else { return -1 }
    return Int64(h.trainer.stepCount)
}

@_cdecl("swiftunet_trainer_draw")
public func swiftunet_trainer_draw(
    _ seed: UInt64, _ step: Int64, _ numTimesteps: Int64, _ batch: Int64, _ perImage: Int64,
    _ t: UnsafeMutablePointer<Int64>?, _ noise: UnsafeMutablePointer<Float>?
) -> Int32 {
    guarded {
        guard step >= 0 else { throw argumentError("step must be >= 0, got \(step)") }
        guard numTimesteps >= 1 && numTimesteps <= Int64(NoiseSchedule.maximumTimesteps) else {
            throw argumentError("num_timesteps must be in [1, \(NoiseSchedule.maximumTimesteps)], got \(numTimesteps)")
        }
        guard batch >= 0 && batch <= Int64(Int32.max) else { throw argumentError("batch must be in [0, 2**31), got \(batch)") }
        guard perImage >= 0 && perImage <= (Int64(1) << 40) / max(1, batch) else {
            throw argumentError("per_image must be >= 0 and batch * per_image at most 2**40, got \(perImage)")
        }
        if batch == 0 { return }
        guard let t = t else { throw argumentError("t must not be NULL") }
        guard let noise = noise else { throw argumentError("noise must not be NULL") }
        Trainer.draw(seed: seed, step: Int(step), numTimesteps: Int(numTimesteps), batch: Int(batch),
                     perImage: Int(perImage), t: t, noise: noise)
    }
}

private func trainerState(_ which: Int32) throws -> Trainer.State {
    guard let state = Trainer.State(rawValue: which) else {
        throw argumentError("which must be SWIFTUNET_STATE_EMA (0), _ADAM_M (1) or _ADAM_V (2), got \(which)")
    }
    return state
}

@_cdecl("swiftunet_trainer_get_state")
public func swiftunet_trainer_get_state(
    _ trainer: UnsafeRawPointer?, _ which: Int32, _ dst: UnsafeMutablePointer<Float>?, _ count: Int64
) -> Int32 {
    guarded {
        let h = try trainerHandle(trainer)
        let state = try trainerState(which)
        guard count == Int64(h.trainer.total) else {
            throw argumentError("dst must hold \(h.trainer.total) floats (param_total), got \(count)")
        }
        guard let dst = dst else { throw argumentError("dst must not be NULL") }
        h.trainer.copyState(state, into: dst)
    }
}

@_cdecl("swiftunet_trainer_set_state")
public func swiftunet_trainer_set_state(
    _ trainer: UnsafeMutableRawPointer?, _ ema: UnsafePointer<Float>?, _ adamM: UnsafePointer<Float>?,
    _ adamV: UnsafePointer<Float>?, _ count: Int64, _ stepCount: Int64
) -> Int32 {
    guarded {
        let h = try trainerHandle(trainer)
        guard count == Int64(h.trainer.total) else {
            throw argumentError("each state tensor must hold \(h.trainer.total) floats (param_total), got \(count)")
        }
        guard let ema = ema else { throw argumentError("ema must not be NULL") }
        guard let adamM = adamM else { throw argumentError("adam_m must not be NULL") }
        guard let adamV = adamV else { throw argumentError("adam_v must not be NULL") }
        guard stepCount >= 0 else { throw argumentError("step_count must be >= 0, got \(stepCount)") }
        try h.trainer.restore(ema: ema, firstMoments: adamM, secondMoments: adamV, stepCount: Int(stepCount))
    }
}
