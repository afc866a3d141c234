// The C interface of SwiftUNet (declared in include/swiftunet.h).
//
// This file only translates: it checks pointers and sizes, converts between C
// and Swift types, and turns every thrown error into a status code and a
// per-thread message. Nothing here may trap.

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import SwiftUNet

private let statusOK: Int32 = 0
private let statusArgument: Int32 = 1
private let statusMemory: Int32 = 2
private let statusInterrupted: Int32 = 3
private let statusInternal: Int32 = 4

// MARK: per-thread error message and debug slot

private let errorKey: pthread_key_t = {
    var key = pthread_key_t()
    pthread_key_create(&key) { free($0) }
    return key
}()

private let lastInputKey: pthread_key_t = {
    var key = pthread_key_t()
    pthread_key_create(&key, nil)
    return key
}()

private func setLastError(_ message: String) {
    free(pthread_getspecific(errorKey))
    pthread_setspecific(errorKey, strdup(message))
}

private func clearLastError() {
    free(pthread_getspecific(errorKey))
    pthread_setspecific(errorKey, nil)
}

/// Runs `body`, mapping thrown errors to status codes with a message.
func guarded(_ body: () throws -> Void) -> Int32 {
    clearLastError()
    do {
        try body()
        return statusOK
    } catch let e as SwiftUNetError {
        setLastError(e.description)
        switch e {
        case .invalidArgument: return statusArgument
        case .outOfMemory: return statusMemory
        case .interrupted: return statusInterrupted
        }
    } catch {
        setLastError("internal error: \(error)")
        return statusInternal
    }
}

func argumentError(_ message: String) -> SwiftUNetError { .invalidArgument(message) }

// MARK: handles

/// What a `swiftunet_model *` points at: the model plus the C strings its
/// parameter names are handed out as.
final class ModelHandle {
    let model: DiffusionModel
    let names: [UnsafeMutablePointer<CChar>]
    /// Serialises get_param against set_params: a copy taken while the weights
    /// are being replaced would otherwise mix old and new values (forwards are
    /// already protected by the model's own read-write lock).
    private let paramLock: UnsafeMutablePointer<pthread_mutex_t>

    init(_ model: DiffusionModel) {
        self.model = model
        names = model.parameters.map { strdup($0.name)! }
        paramLock = .allocate(capacity: 1)
        pthread_mutex_init(paramLock, nil)
    }

    deinit {
        for n in names { free(n) }
        pthread_mutex_destroy(paramLock)
        paramLock.deallocate()
    }

    func withParameters<R>(_ body: () throws -> R) rethrows -> R {
        pthread_mutex_lock(paramLock)
        defer { pthread_mutex_unlock(paramLock) }
        return try body()
    }
}

func handle(_ p: UnsafeRawPointer?) throws -> ModelHandle {
    guard let p = p else { throw argumentError("model must not be NULL") }
    return Unmanaged<ModelHandle>.fromOpaque(p).takeUnretainedValue()
}

// MARK: library

private let staticEmpty: UnsafeMutablePointer<CChar> = strdup("")!

@_cdecl("swiftunet_last_error")
public func swiftunet_last_error() -> UnsafePointer<CChar> {
    if let p = pthread_getspecific(errorKey) {
        return UnsafePointer(p.assumingMemoryBound(to: CChar.self))
    }
    return UnsafePointer(staticEmpty)
}

@_cdecl("swiftunet_abi_version")
public func swiftunet_abi_version() -> Int32 { 1 }

private let buildInfoString: UnsafeMutablePointer<CChar> = strdup(BuildInfo.summary)!

@_cdecl("swiftunet_build_info")
public func swiftunet_build_info() -> UnsafePointer<CChar> { UnsafePointer(buildInfoString) }

@_cdecl("swiftunet_set_num_threads")
public func swiftunet_set_num_threads(_ n: Int64) -> Int32 {
    guarded {
        guard n >= 1 && n <= 256 else { throw argumentError("num_threads must be between 1 and 256, got \(n)") }
        ThreadPool.shared.numThreads = Int(n)
    }
}

@_cdecl("swiftunet_get_num_threads")
public func swiftunet_get_num_threads() -> Int64 { Int64(ThreadPool.shared.numThreads) }

// MARK: models

@_cdecl("swiftunet_model_create")
public func swiftunet_model_create(
    _ imageSize: Int64, _ channels: Int64, _ hiddenDims: UnsafePointer<Int64>?, _ nHiddenDims: Int64,
    _ timeDim: Int64, _ seed: UInt64, _ outModel: UnsafeMutablePointer<UnsafeMutableRawPointer?>?
) -> Int32 {
    guarded {
        guard let outModel = outModel else { throw argumentError("out_model must not be NULL") }
        outModel.pointee = nil
        guard nHiddenDims >= 0 && nHiddenDims <= 16 else {
            throw argumentError("hidden_dims must have between 2 and 16 entries, got \(nHiddenDims)")
        }
        guard let dims = hiddenDims ?? (nHiddenDims == 0 ? UnsafePointer(bitPattern: 8) : nil) else {
            throw argumentError("hidden_dims must not be NULL")
        }
        // Int is 64-bit on every platform this library builds for, so no value changes here;
        // validate() then names any value out of range as the caller gave it.
        let config = ModelConfig(imageSize: Int(imageSize), channels: Int(channels),
                                 hiddenDims: (0..<Int(nHiddenDims)).map { Int(dims[$0]) },
                                 timeDim: Int(timeDim))
        try config.validate()
        try checkParameterMemory(config)
        let model = try DiffusionModel(imageSize: config.imageSize, channels: config.channels,
                                       hiddenDims: config.hiddenDims, timeDim: config.timeDim, seed: seed)
        outModel.pointee = Unmanaged.passRetained(ModelHandle(model)).toOpaque()
    }
}

/// Refuses configurations whose weights alone would not fit in memory.
private func checkParameterMemory(_ c: ModelConfig) throws {
    let d = c.hiddenDims.map { Double($0) }, t = Double(c.timeDim)
    var count = 8 * t * t + Double(c.channels) * d[0] * 18
    for i in 0..<(d.count - 1) { count += 40 * d[i + 1] * d[i + 1] + 9 * d[i] * d[i + 1] }
    count += 22 * d.last! * d.last!
    let bytes = count * 4
    if let budget = exceedsUsableMemory(bytes) {
        throw SwiftUNetError.outOfMemory(
            "the model's weights would need about \(gigabytes(bytes)) GB, more than the \(gigabytes(budget)) GB of memory available")
    }
}

func physicalMemoryBytes() -> Double {
    Double(sysconf(Int32(_SC_PHYS_PAGES))) * Double(sysconf(Int32(_SC_PAGESIZE)))
}

func gigabytes(_ bytes: Double) -> String {
    let g = bytes / 1e9
    return g >= 10 ? String(Int(g.rounded())) : String(Double(Int((g * 10).rounded())) / 10)
}

/// nil when `bytes` more memory may be asked for; else the budget it exceeds.
///
/// The budget is the machine's physical memory and, for requests above 64 MB
/// (where reading /proc costs nothing next to the work), also what is
/// available right now: MemAvailable from /proc/meminfo, and what is left under
/// the process's RLIMIT_AS and RLIMIT_DATA. Without this a request that does
/// not fit is granted by the kernel's overcommit, and the process is OOM-killed
/// (or an address-space limit stops it half-way) while the memory is touched.
func exceedsUsableMemory(_ bytes: Double) -> Double? {
    let physical = physicalMemoryBytes()
    if bytes > physical { return physical }
    if bytes <= 64 * 1024 * 1024 { return nil }
    let budget = availableMemoryBytes()
    return bytes > budget ? budget : nil
}

/// Memory this process can still get (see `exceedsUsableMemory`).
func availableMemoryBytes() -> Double {
    var budget = physicalMemoryBytes()
    #if os(Linux)
    if let meminfo = readSmallFile("/proc/meminfo") {
        for line in meminfo.split(separator: "\n") where line.hasPrefix("MemAvailable:") {
            let fields = line.split(separator: " ")
            if fields.count >= 2, let kb = Double(fields[1]) { budget = min(budget, kb * 1024) }
        }
    }
    // /proc/self/statm: size resident shared text lib data dt, in pages.
    let page = Double(sysconf(Int32(_SC_PAGESIZE)))
    let statm = (readSmallFile("/proc/self/statm") ?? "")
        .split(whereSeparator: { $0 == " " || $0 == "\n" }).compactMap { Double($0) }.map { $0 * page }
    func headroom(_ resource: Int32, used: Double) {
        var rl = rlimit()
        if getrlimit(__rlimit_resource_t(resource), &rl) == 0 && rl.rlim_cur != rlim_t.max {
            budget = min(budget, max(0, Double(rl.rlim_cur) - used))
        }
    }
    if statm.count >= 6 {
        headroom(Int32(RLIMIT_AS.rawValue), used: statm[0])
        headroom(Int32(RLIMIT_DATA.rawValue), used: statm[5])
    }
    #endif
    return budget
}

#if os(Linux)
/// The text of a small file such as /proc/meminfo (at most 64 KB), or nil.
private func readSmallFile(_ path: String) -> String? {
    guard let f = fopen(path, "r") else { return nil }
    defer { fclose(f) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)
    while bytes.count < 1 << 16 {
        let n = fread(&chunk, 1, chunk.count, f)
        if n <= 0 { break }
        bytes += chunk[0..<n]
    }
    return String(decoding: bytes, as: UTF8.self)
}
#endif

@_cdecl("swiftunet_model_retain")
public func swiftunet_model_retain(_ model: UnsafeMutableRawPointer?) {
    guard let model = model else { return }
    _ = Unmanaged<ModelHandle>.fromOpaque(model).retain()
}

@_cdecl("swiftunet_model_release")
public func swiftunet_model_release(_ model: UnsafeMutableRawPointer?) {
    guard let model = model else { return }
    Unmanaged<ModelHandle>.fromOpaque(model).release()
}

@_cdecl("swiftunet_model_config")
public func swiftunet_model_config(
    _ model: UnsafeRawPointer?, _ imageSize: UnsafeMutablePointer<Int64>?, _ channels: UnsafeMutablePointer<Int64>?,
    _ timeDim: UnsafeMutablePointer<Int64>?, _ hiddenDims: UnsafeMutablePointer<Int64>?, _ capacity: Int64,
    _ nHiddenDims: UnsafeMutablePointer<Int64>?
) -> Int32 {
    guarded {
        let c = try handle(model).model.config
        imageSize?.pointee = Int64(c.imageSize)
        channels?.pointee = Int64(c.channels)
        timeDim?.pointee = Int64(c.timeDim)
        nHiddenDims?.pointee = Int64(c.hiddenDims.count)
        if let out = hiddenDims {
            for (i, v) in c.hiddenDims.enumerated() where Int64(i) < capacity { out[i] = Int64(v) }
        }
    }
}

@_cdecl("swiftunet_model_param_count")
public func swiftunet_model_param_count(_ model: UnsafeRawPointer?) -> Int64 {
    guard let h = try? handle(model) else { return 0 }
    return Int64(h.model.parameters.count)
}

@_cdecl("swiftunet_model_param_info")
public func swiftunet_model_param_info(
    _ model: UnsafeRawPointer?, _ index: Int64, _ name: UnsafeMutablePointer<UnsafePointer<CChar>?>?,
    _ ndim: UnsafeMutablePointer<Int64>?, _ shape: UnsafeMutablePointer<Int64>?, _ numel: UnsafeMutablePointer<Int64>?
) -> Int32 {
    guarded {
        let h = try handle(model)
        let params = h.model.parameters
        guard index >= 0 && index < Int64(params.count) else {
            throw argumentError("index must be in [0, \(params.count)), got \(index)")
        }
        let p = params[Int(index)]
        name?.pointee = UnsafePointer(h.names[Int(index)])
        ndim?.pointee = Int64(p.shape.count)
        if let shape = shape {
            for i in 0..<4 { shape[i] = i < p.shape.count ? Int64(p.shape[i]) : 0 }
        }
        numel?.pointee = Int64(p.count)
    }
}

@_cdecl("swiftunet_model_get_param")
public func swiftunet_model_get_param(
    _ model: UnsafeRawPointer?, _ index: Int64, _ dst: UnsafeMutablePointer<Float>?, _ numel: Int64
) -> Int32 {
    guarded {
        let h = try handle(model)
        let params = h.model.parameters
        guard index >= 0 && index < Int64(params.count) else {
            throw argumentError("index must be in [0, \(params.count)), got \(index)")
        }
        let p = params[Int(index)]
        guard numel == Int64(p.count) else {
            throw argumentError("dst for \(p.name) must hold \(p.count) floats, got \(numel)")
        }
        guard let dst = dst else { throw argumentError("dst must not be NULL") }
        let values = h.withParameters { p.values }
        values.withUnsafeBufferPointer { dst.update(from: $0.baseAddress!, count: p.count) }
    }
}

@_cdecl("swiftunet_model_set_params")
public func swiftunet_model_set_params(
    _ model: UnsafeMutableRawPointer?, _ sources: UnsafePointer<UnsafePointer<Float>?>?, _ n: Int64
) -> Int32 {
    guarded {
        let h = try handle(model)
        let m = h.model
        guard n == Int64(m.parameters.count) else {
            throw argumentError("expected \(m.parameters.count) parameter tensors, got \(n)")
        }
        guard let sources = sources else { throw argumentError("sources must not be NULL") }
        var list: [UnsafePointer<Float>] = []
        for i in 0..<Int(n) {
            guard let s = sources[i] else {
                throw argumentError("sources[\(i)] (\(m.parameters[i].name)) must not be NULL")
            }
            list.append(s)
        }
        try h.withParameters { try m.setParameters(list) }
    }
}

/// Checks the C-side ranges of an image batch [batch, channels, height, width], then the
/// model's own rules (`validateInput`); returns the element count.
func checkedImageCount(_ m: DiffusionModel, batch: Int64, channels: Int64, height: Int64, width: Int64,
                       timesteps: UnsafePointer<Int64>?, checkTimesteps: Bool = true, name: String = "x") throws -> Int {
    let limit = Int64(ModelConfig.maximumDimension)
    guard batch >= 0 && batch <= Int64(Int32.max) else { throw argumentError("batch must be in [0, 2**31), got \(batch)") }
    guard channels >= 0 && channels <= limit else {
        throw argumentError("\(name) must have \(m.config.channels) channels, got \(channels)")
    }
    guard height >= 0 && height <= limit else { throw argumentError("\(name) height \(height) is out of range") }
    guard width >= 0 && width <= limit else { throw argumentError("\(name) width \(width) is out of range") }
    if checkTimesteps {
        try m.validateInput(batch: Int(batch), channels: Int(channels), height: Int(height), width: Int(width),
                            timesteps: timesteps)
    } else {
        try m.validateShape(batch: Int(batch), channels: Int(channels), height: Int(height), width: Int(width), name: name)
    }
    let (count, overflow) = (Int(batch) * Int(channels)).multipliedReportingOverflow(by: Int(height) * Int(width))
    if overflow { throw SwiftUNetError.outOfMemory("\(name) is too large") }
    return count
}

@_cdecl("swiftunet_model_forward")
public func swiftunet_model_forward(
    _ model: UnsafeMutableRawPointer?, _ x: UnsafePointer<Float>?, _ batch: Int64, _ channels: Int64,
    _ height: Int64, _ width: Int64, _ timesteps: UnsafePointer<Int64>?, _ out: UnsafeMutablePointer<Float>?
) -> Int32 {
    pthread_setspecific(lastInputKey, x.map { UnsafeMutableRawPointer(mutating: $0) })
    return guarded {
        let m = try handle(model).model
        let count = try checkedImageCount(m, batch: batch, channels: channels, height: height, width: width,
                                          timesteps: timesteps)
        if batch == 0 { return }
        guard let x = x else { throw argumentError("x must not be NULL") }
        guard let out = out else { throw argumentError("out must not be NULL") }
        let xStart = UInt(bitPattern: x), oStart = UInt(bitPattern: out), bytes = UInt(count * 4)
        if xStart < oStart + bytes && oStart < xStart + bytes {
            throw argumentError("out must not overlap x")
        }
        let need = m.estimatedWorkspaceBytes(batch: Int(batch), height: Int(height), width: Int(width))
        if !m.workspaceIsProven(need), let budget = exceedsUsableMemory(need) {
            throw SwiftUNetError.outOfMemory(
                "a forward at batch \(batch) and \(height)x\(width) needs about \(gigabytes(need)) GB of activations, more than the \(gigabytes(budget)) GB of memory available")
        }
        try m.forward(x, batch: Int(batch), channels: Int(channels), height: Int(height), width: Int(width),
                      timesteps: timesteps!, out: out)
        m.noteWorkspaceProven(need)
    }
}

@_cdecl("swiftunet_debug_last_input")
public func swiftunet_debug_last_input() -> UnsafeRawPointer? {
    UnsafeRawPointer(pthread_getspecific(lastInputKey))
}
