#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The worker threads shared by every model.
///
/// `parallelFor` splits a range of independent tasks over the workers. Tasks
/// must not depend on which thread runs them, which keeps results identical
/// for every thread count.
public final class ThreadPool {
    public static let shared = ThreadPool()

    private let lock = Mutex()
    private var threads: Int

    private init() {
        threads = ThreadPool.defaultThreadCount()
    }

    /// SWIFTUNET_NUM_THREADS when set to a positive integer, else the CPUs available.
    static func defaultThreadCount() -> Int {
        if let env = getenv("SWIFTUNET_NUM_THREADS"), let n = Int(String(cString: env)), n > 0 {
            return min(n, 256)
        }
        let n = sysconf(Int32(_SC_NPROCESSORS_ONLN))
        return max(1, min(Int(n), 256))
    }

    public var numThreads: Int {
        get { lock.withLock { threads } }
        set { lock.withLock { threads = max(1, min(newValue, 256)) } }
    }

    /// Runs `body(i)` for every i in 0..<count.
    public func parallelFor(_ count: Int, _ body: (Int) -> Void) {
        for i in 0..<count { body(i) }
    }
}
