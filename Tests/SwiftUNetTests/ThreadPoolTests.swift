import XCTest
@testable import SwiftUNet

/// The worker pool: every task runs exactly once, on a thread index below the bound the
/// caller sized its scratch for, across many regions and changing thread counts.
final class ThreadPoolTests: XCTestCase {
    func testEveryTaskRunsOnceWithinTheThreadBound() {
        let pool = ThreadPool.shared
        let saved = pool.numThreads
        defer { pool.numThreads = saved }
        let maxTasks = 37
        let hits = UnsafeMutablePointer<Int>.allocate(capacity: maxTasks)
        defer { hits.deallocate() }
        for round in 0..<600 {
            pool.numThreads = [1, 2, 3, 2][round % 4]
            let count = 1 + round % maxTasks
            hits.initialize(repeating: 0, count: count)
            let bound = pool.threadsFor(count)
            var badThread = false
            pool.parallelFor(count, maxThreads: bound) { task, thread in
                if thread >= bound { badThread = true }
                hits[task] += 1
            }
            XCTAssertFalse(badThread, "thread index out of bounds in round \(round)")
            for i in 0..<count where hits[i] != 1 {
                XCTFail("task \(i) ran \(hits[i]) times in round \(round)")
            }
        }
    }

    /// The allocation-free form the kernels use: a `ParallelTasks` value read in place.
    func testTasksValueRunsEveryTaskOnce() {
        let pool = ThreadPool.shared
        let saved = pool.numThreads
        defer { pool.numThreads = saved }
        let maxTasks = 41
        let hits = UnsafeMutablePointer<Int>.allocate(capacity: maxTasks)
        let threadOf = UnsafeMutablePointer<Int>.allocate(capacity: maxTasks)
        defer { hits.deallocate(); threadOf.deallocate() }
        for round in 0..<400 {
            pool.numThreads = [2, 1, 3][round % 3]
            let count = 1 + round % maxTasks
            hits.initialize(repeating: 0, count: count)
            let bound = pool.threadsFor(count)
            pool.parallelFor(count, maxThreads: bound, CountingTasks(hits: hits, threadOf: threadOf))
            for i in 0..<count {
                XCTAssertEqual(hits[i], 1, "task \(i) in round \(round)")
                XCTAssertLessThan(threadOf[i], bound, "task \(i) in round \(round)")
            }
        }
    }

    func testNestedParallelForRunsInline() {
        var total = 0
        let lock = Mutex()
        ThreadPool.shared.parallelFor(4) { _ in
            ThreadPool.shared.parallelFor(5) { _ in lock.withLock { total += 1 } }
        }
        XCTAssertEqual(total, 20)
    }
}

private struct CountingTasks: ParallelTasks {
    let hits: UnsafeMutablePointer<Int>
    let threadOf: UnsafeMutablePointer<Int>
    func run(_ task: Int, thread: Int) {
        hits[task] += 1
        threadOf[task] = thread
    }
}
