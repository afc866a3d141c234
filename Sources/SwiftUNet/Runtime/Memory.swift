#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Errors raised by the SwiftUNet library. Every public entry point reports
/// bad input with one of these instead of trapping.
public enum SwiftUNetError: Error, CustomStringConvertible, Equatable {
    /// An argument is invalid; the message names it and says what was expected.
    case invalidArgument(String)
    /// An allocation failed or would exceed any sensible size.
    case outOfMemory(String)
    /// A long-running call was asked to stop.
    case interrupted

    public var description: String {
        switch self {
        case .invalidArgument(let m): return m
        case .outOfMemory(let m): return m
        case .interrupted: return "interrupted"
        }
    }
}

/// Allocations above this are refused rather than attempted (64 GiB).
let maximumAllocationBytes = 64 << 30

/// Allocates `count` floats aligned to 64 bytes (one cache line, one zmm register).
/// Returns nil instead of trapping when the memory cannot be had.
@inline(__always)
func allocateFloats(_ count: Int) -> UnsafeMutablePointer<Float>? {
    if count < 0 || count > maximumAllocationBytes / MemoryLayout<Float>.stride { return nil }
    var raw: UnsafeMutableRawPointer? = nil
    let bytes = max(64, ((count * MemoryLayout<Float>.stride) + 63) & ~63)
    if posix_memalign(&raw, 64, bytes) != 0 { return nil }
    return raw?.bindMemory(to: Float.self, capacity: max(count, 16))
}

@inline(__always)
func freeFloats(_ p: UnsafeMutablePointer<Float>?) {
    free(p)
}

/// Like `allocateFloats`, but throws `outOfMemory` naming what was being allocated.
func allocateFloatsOrThrow(_ count: Int, _ what: @autoclosure () -> String) throws -> UnsafeMutablePointer<Float> {
    guard let p = allocateFloats(count) else {
        throw SwiftUNetError.outOfMemory("cannot allocate \(count) floats for \(what())")
    }
    return p
}

/// A pthread mutex held in stable heap memory.
final class Mutex {
    private let m: UnsafeMutablePointer<pthread_mutex_t>
    init() {
        m = .allocate(capacity: 1)
        pthread_mutex_init(m, nil)
    }
    deinit {
        pthread_mutex_destroy(m)
        m.deallocate()
    }
    @inline(__always) func lock() { pthread_mutex_lock(m) }
    @inline(__always) func unlock() { pthread_mutex_unlock(m) }
    /// Takes the lock if it is free; never blocks.
    @inline(__always) func tryLock() -> Bool { pthread_mutex_trylock(m) == 0 }
    @inline(__always) func withLock<R>(_ body: () throws -> R) rethrows -> R {
        lock(); defer { unlock() }
        return try body()
    }
}

/// A pthread reader-writer lock: forwards read the weights, loads write them.
final class ReadWriteLock {
    private let l: UnsafeMutablePointer<pthread_rwlock_t>
    init() {
        l = .allocate(capacity: 1)
        pthread_rwlock_init(l, nil)
    }
    deinit {
        pthread_rwlock_destroy(l)
        l.deallocate()
    }
    func withReadLock<R>(_ body: () throws -> R) rethrows -> R {
        pthread_rwlock_rdlock(l); defer { pthread_rwlock_unlock(l) }
        return try body()
    }
    func withWriteLock<R>(_ body: () throws -> R) rethrows -> R {
        pthread_rwlock_wrlock(l); defer { pthread_rwlock_unlock(l) }
        return try body()
    }
}
