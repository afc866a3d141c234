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

/// The transparent huge page size of x86-64 and arm64 Linux.
let hugePageBytes = 2 << 20

/// Allocates `count` floats on a 2 MiB boundary, rounded up to whole 2 MiB, and asks Linux
/// to back them with transparent huge pages (`MADV_HUGEPAGE`: a hint, ignored where the
/// system offers none). A stream through such memory crosses no 4 KiB page boundary, where
/// the hardware prefetchers stop, and needs one TLB entry per 2 MiB. Freed with `freeFloats`.
func allocateHugePageFloats(_ count: Int) -> UnsafeMutablePointer<Float>? {
    if count < 0 || count > maximumAllocationBytes / MemoryLayout<Float>.stride { return nil }
    let bytes = (max(count * MemoryLayout<Float>.stride, 64) + hugePageBytes - 1) & ~(hugePageBytes - 1)
    var raw: UnsafeMutableRawPointer? = nil
    if posix_memalign(&raw, hugePageBytes, bytes) != 0 { return nil }
    #if os(Linux)
    _ = madvise(raw, bytes, Int32(MADV_HUGEPAGE))
    #endif
    return raw?.bindMemory(to: Float.self, capacity: bytes / MemoryLayout<Float>.stride)
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

/// A temporary buffer of floats mapped straight from the system (`mmap`), returned to it by
/// `release()`. Large temporaries from malloc would stay resident after `free` (glibc raises
/// its mmap threshold after the first large free, so later ones come from its heap and are
/// kept there): each model's weight packing would leave megabytes behind.
struct MappedFloats {
    let base: UnsafeMutablePointer<Float>
    private let bytes: Int

    /// `count` floats (zero-filled, page-aligned), or `outOfMemory` naming `what`.
    init(_ count: Int, _ what: @autoclosure () -> String) throws {
        guard count >= 0 && count <= maximumAllocationBytes / MemoryLayout<Float>.stride else {
            throw SwiftUNetError.outOfMemory("cannot allocate \(count) floats for \(what())")
        }
        bytes = max(count, 1) * MemoryLayout<Float>.stride
        guard let raw = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
              raw != MAP_FAILED else {
            throw SwiftUNetError.outOfMemory("cannot allocate \(count) floats for \(what())")
        }
        base = raw.bindMemory(to: Float.self, capacity: max(count, 1))
    }

    func release() { munmap(base, bytes) }
}

/// The memory of one preparation of a model's packed weights: blocks carved in order from
/// huge-page chunks (`allocateHugePageFloats`). A batch-1 forward reads tens of megabytes of
/// transformed weights, each once, and on 4 KiB pages that stream stalls at every page
/// boundary. A matrix packed here keeps the store alive, so the chunks go with the last of them.
final class WeightStore {
    /// Floats per chunk (32 MiB of address space; only the pages written take memory).
    static let chunkFloats = (32 << 20) / MemoryLayout<Float>.stride
    private var chunks: [UnsafeMutablePointer<Float>] = []
    private var next: UnsafeMutablePointer<Float>? = nil
    private var left = 0
    /// Bytes of the blocks handed out so far (each rounded up to 64 bytes).
    private(set) var usedBytes = 0

    init() {}

    deinit {
        for chunk in chunks { freeFloats(chunk) }
    }

    /// `count` uninitialised floats, 64-byte aligned, valid while the store lives.
    func floats(_ count: Int, _ what: @autoclosure () -> String) throws -> UnsafeMutablePointer<Float> {
        let n = (max(count, 1) + 15) & ~15
        if n > left || next == nil {
            let size = max(n, WeightStore.chunkFloats)
            guard let chunk = allocateHugePageFloats(size) else {
                throw SwiftUNetError.outOfMemory("cannot allocate \(count) floats for \(what())")
            }
            chunks.append(chunk)
            next = chunk
            left = size
        }
        let p = next!
        next = p + n
        left -= n
        usedBytes += n * MemoryLayout<Float>.stride
        return p
    }
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
