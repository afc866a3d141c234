#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Synchronization

/// The worker threads shared by every model.
///
/// `parallelFor` splits a range of independent tasks over persistent pthreads
/// (created once, then parked). Tasks must not depend on which thread runs
/// them, which keeps results identical for every thread count.
///
/// One parallel region runs at a time. A caller that finds the pool busy (a
/// second OS thread calling forward concurrently, or a task that itself calls
/// `parallelFor`) runs its tasks inline on its own thread instead of waiting,
/// so there is no deadlock and no unbounded waiting.
public final class ThreadPool {
    public static let shared = ThreadPool()

    private let settingsLock = Mutex()
    private var threads: Int

    /// Held by the thread that currently owns the workers.
    private let regionLock = Mutex()
    /// Set while a thread owns the workers (see `threadsFor`).
    private let regionActive = Atomic<Bool>(false)
    /// Workers started so far (they live until the process exits).
    private var workers: [pthread_t] = []
    /// The process the workers belong to: after fork() the child has none of them.
    private var workersPid: pid_t = getpid()

    // The current region, written by its owner before `ticket` is published: its tasks
    // value (on the owner's stack) and the function that runs one task of it.
    private var regionTasks: UnsafeRawPointer? = nil
    private var regionRun: (UnsafeRawPointer, Int, Int) -> Void = { _, _, _ in }
    private var regionCount = 0
    /// (generation << 16) | helpers: one word, so a worker never pairs one
    /// region's generation with another's helper count.
    private let ticket = Atomic<Int>(0)
    /// Next task index to hand out in the current region.
    private let nextTask = Atomic<Int>(0)
    /// Bit 0: the region is closed to new helpers; bits 1..<32: helpers inside it;
    /// bits 32...: the region's generation, so a helper can only join the region
    /// whose ticket (and helper count, and scratch size) it read.
    /// The owner closes the region once it runs out of tasks and then waits only
    /// for helpers that joined, never for one that has not woken up yet.
    private let regionState = Atomic<Int>(1)

    @inline(__always) private static func helpersInside(_ state: Int) -> Int { (state >> 1) & 0x7FFF_FFFF }

    @inline(__always) private static func stateGeneration(_ generation: Int) -> Int { (generation & 0x7FFF_FFFF) << 32 }

    /// Checks of the ticket before a worker yields between checks, then before it sleeps.
    static let pureSpinChecks = 4_000
    static let spinChecks = 20_000
    /// Checks of the helpers' exit before a region's owner sleeps until they have left.
    static let ownerSpinChecks = 20_000

    private let sleepMutex: UnsafeMutablePointer<pthread_mutex_t>
    private let wakeUp: UnsafeMutablePointer<pthread_cond_t>
    /// The owner of a closed region sleeps on `allLeft` (with `doneMutex`) until its last helper leaves.
    private let doneMutex: UnsafeMutablePointer<pthread_mutex_t>
    private let allLeft: UnsafeMutablePointer<pthread_cond_t>

    private init() {
        threads = ThreadPool.defaultThreadCount()
        sleepMutex = .allocate(capacity: 1)
        pthread_mutex_init(sleepMutex, nil)
        wakeUp = .allocate(capacity: 1)
        pthread_cond_init(wakeUp, nil)
        doneMutex = .allocate(capacity: 1)
        pthread_mutex_init(doneMutex, nil)
        allLeft = .allocate(capacity: 1)
        pthread_cond_init(allLeft, nil)
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
        get { settingsLock.withLock { threads } }
        set { settingsLock.withLock { threads = max(1, min(newValue, 256)) } }
    }

    /// How many threads a region of `count` tasks would use at most (>= 1). Callers
    /// that need per-thread scratch allocate this many and pass it as `maxThreads`.
    /// While a region runs (a task's own kernels, or another OS thread's call) this is 1:
    /// such a call would run inline, so it should not split its work for threads it
    /// will not get (row splits repeat packing and transforms).
    public func threadsFor(_ count: Int) -> Int {
        if regionActive.load(ordering: .relaxed) { return 1 }
        return max(1, min(numThreads, count))
    }

    /// Runs `body(i)` for every i in 0..<count.
    ///
    /// Closures are for code off the hot path: at ≥ 2 threads each call boxes the
    /// closure on the heap (`withoutActuallyEscaping`). Kernels pass `ParallelTasks`.
    public func parallelFor(_ count: Int, _ body: (Int) -> Void) {
        parallelFor(count, maxThreads: threadsFor(count)) { task, _ in body(task) }
    }

    /// Runs `body(task, thread)` for every task in 0..<count, where `thread` in
    /// 0..<maxThreads identifies the running thread (for per-thread scratch).
    public func parallelFor(_ count: Int, maxThreads: Int, _ body: (Int, Int) -> Void) {
        if count <= 0 { return }
        if min(maxThreads, threadsFor(count)) <= 1 {
            for i in 0..<count { body(i, 0) }
            return
        }
        withoutActuallyEscaping(body) { escapable in
            parallelFor(count, maxThreads: maxThreads, ClosureTasks(body: escapable))
        }
    }

    /// Runs `tasks.run(task, thread:)` for every task in 0..<count, where `thread` in
    /// 0..<maxThreads identifies the running thread (for per-thread scratch).
    ///
    /// The workers read `tasks` in place on the caller's stack, through a function
    /// specialised for `Tasks`: nothing is allocated.
    @inline(__always)
    public func parallelFor<Tasks: ParallelTasks>(_ count: Int, maxThreads: Int, _ tasks: Tasks) {
        if count <= 0 { return }
        let participants = min(maxThreads, threadsFor(count))
        if participants <= 1 || !regionLock.tryLock() {
            for i in 0..<count { tasks.run(i, thread: 0) }
            return
        }
        withUnsafePointer(to: tasks) { p in
            runRegion(count, participants: participants, tasks: UnsafeRawPointer(p)) { raw, task, thread in
                raw.assumingMemoryBound(to: Tasks.self).pointee.run(task, thread: thread)
            }
        }
    }

    /// Shares `count` tasks between the caller and up to `participants − 1` workers.
    /// Called with `regionLock` held; releases it.
    private func runRegion(_ count: Int, participants: Int, tasks: UnsafeRawPointer,
                           run: @escaping (UnsafeRawPointer, Int, Int) -> Void) {
        regionActive.store(true, ordering: .relaxed)
        defer {
            regionActive.store(false, ordering: .relaxed)
            regionLock.unlock()
        }
        if workersPid != getpid() { forgetWorkersAfterFork() }
        let helpers = startWorkers(upTo: participants - 1)
        if helpers == 0 {
            for i in 0..<count { run(tasks, i, 0) }
            return
        }
        regionTasks = tasks
        regionRun = run
        regionCount = count
        nextTask.store(0, ordering: .relaxed)
        let generation = (ticket.load(ordering: .relaxed) >> 16) &+ 1
        regionState.store(ThreadPool.stateGeneration(generation), ordering: .releasing)
        pthread_mutex_lock(sleepMutex)
        ticket.store((generation << 16) | helpers, ordering: .releasing)
        pthread_cond_broadcast(wakeUp)
        pthread_mutex_unlock(sleepMutex)

        runTasks(thread: 0)
        // Close the region, then wait for the helpers inside: they read `tasks`, which
        // lives on the caller's stack. Spin briefly (helpers usually finish within
        // microseconds of the owner), then sleep until the last helper out signals: a
        // helper descheduled on a loaded machine must not make the owner burn a core yielding.
        regionState.wrappingAdd(1, ordering: .acquiringAndReleasing)
        var spins = 0
        while ThreadPool.helpersInside(regionState.load(ordering: .acquiring)) != 0 {
            spins += 1
            if spins > ThreadPool.ownerSpinChecks {
                pthread_mutex_lock(doneMutex)
                while ThreadPool.helpersInside(regionState.load(ordering: .acquiring)) != 0 {
                    pthread_cond_wait(allLeft, doneMutex)
                }
                pthread_mutex_unlock(doneMutex)
                break
            }
        }
        regionTasks = nil
        regionRun = ThreadPool.noRegion
    }

    private static let noRegion: (UnsafeRawPointer, Int, Int) -> Void = { _, _, _ in }

    @inline(__always)
    private func runTasks(thread: Int) {
        let run = regionRun
        let tasks = regionTasks!
        let count = regionCount
        while true {
            let i = nextTask.wrappingAdd(1, ordering: .relaxed).oldValue
            if i >= count { break }
            run(tasks, i, thread)
        }
    }

    /// Enters region `generation` unless its owner has already closed it (or moved on).
    private func join(generation: Int) -> Bool {
        let tag = ThreadPool.stateGeneration(generation)
        var state = regionState.load(ordering: .acquiring)
        while state & 1 == 0 && state & ~0xFFFF_FFFF == tag {
            let (exchanged, current) = regionState.compareExchange(
                expected: state, desired: state + 2, ordering: .acquiringAndReleasing)
            if exchanged { return true }
            state = current
        }
        return false
    }

    /// In a child process after fork() only the forking thread exists: the
    /// workers listed are the parent's, and the sleep mutex may have been
    /// copied while one of them held it. Start afresh; workers are started
    /// again on demand. (Called with `regionLock` held.)
    private func forgetWorkersAfterFork() {
        workers.removeAll()
        pthread_mutex_init(sleepMutex, nil)
        pthread_cond_init(wakeUp, nil)
        pthread_mutex_init(doneMutex, nil)
        pthread_cond_init(allLeft, nil)
        workersPid = getpid()
    }

    /// Starts workers until there are `n`, as far as the system allows; returns
    /// how many helpers a region can use (<= n).
    private func startWorkers(upTo n: Int) -> Int {
        while workers.count < n {
            let index = workers.count + 1
            // The worker must start from the generation before the region about to be
            // published (it may first run after the publication).
            let generation = ticket.load(ordering: .relaxed) >> 16
            let context = Unmanaged.passRetained(WorkerContext(pool: self, index: index, generation: generation)).toOpaque()
            var thread = pthread_t()
            var attributes = pthread_attr_t()
            pthread_attr_init(&attributes)
            pthread_attr_setstacksize(&attributes, 1 << 20)
            let started = pthread_create(&thread, &attributes, { raw in
                let context = Unmanaged<WorkerContext>.fromOpaque(raw!).takeRetainedValue()
                context.pool.workerLoop(index: context.index, seen: context.generation)
                return nil
            }, context)
            pthread_attr_destroy(&attributes)
            if started != 0 {
                // Out of threads or memory (container limits, RLIMIT_AS, ...): run the
                // region with the workers there are (possibly none) instead of trapping.
                Unmanaged<WorkerContext>.fromOpaque(context).release()
                break
            }
            workers.append(thread)
        }
        return min(n, workers.count)
    }

    /// A worker: spin briefly for the next region (regions come in quick
    /// succession during a forward), then sleep on the condition variable.
    private func workerLoop(index: Int, seen start: Int) {
        var seen = start
        while true {
            var word = ticket.load(ordering: .acquiring)
            // Spin briefly (regions of one forward follow each other within microseconds),
            // yielding the CPU after the first few thousand checks so that on a busy
            // machine a spinning helper does not starve the thread that owns the region.
            var spins = 0
            while word >> 16 == seen && spins < ThreadPool.spinChecks {
                spins += 1
                if spins > ThreadPool.pureSpinChecks { sched_yield() }
                word = ticket.load(ordering: .acquiring)
            }
            if word >> 16 == seen {
                pthread_mutex_lock(sleepMutex)
                word = ticket.load(ordering: .acquiring)
                while word >> 16 == seen {
                    pthread_cond_wait(wakeUp, sleepMutex)
                    word = ticket.load(ordering: .acquiring)
                }
                pthread_mutex_unlock(sleepMutex)
            }
            seen = word >> 16
            let helpers = word & 0xFFFF
            if index <= helpers && join(generation: seen) {
                runTasks(thread: index)
                let left = regionState.wrappingSubtract(2, ordering: .releasing).newValue
                if left & 1 != 0 && ThreadPool.helpersInside(left) == 0 {
                    // The region is closed and this was the last helper: the owner may be asleep.
                    pthread_mutex_lock(doneMutex)
                    pthread_cond_signal(allLeft)
                    pthread_mutex_unlock(doneMutex)
                }
            }
        }
    }
}

/// The work of one parallel region: `run(task, thread:)` for every task index, where
/// `thread` (0..<maxThreads) names the running thread, for per-thread scratch.
///
/// A kernel's tasks are a small struct of the pointers and sizes they need, which
/// `parallelFor` hands to the workers in place: unlike a closure (whose context must
/// be boxed on the heap to reach another thread), this allocates nothing.
public protocol ParallelTasks {
    func run(_ task: Int, thread: Int)
}

/// A closure as `ParallelTasks` (for code off the hot path).
private struct ClosureTasks: ParallelTasks {
    let body: (Int, Int) -> Void
    func run(_ task: Int, thread: Int) { body(task, thread) }
}

private final class WorkerContext {
    let pool: ThreadPool
    let index: Int
    let generation: Int
    init(pool: ThreadPool, index: Int, generation: Int) {
        self.pool = pool
        self.index = index
        self.generation = generation
    }
}
