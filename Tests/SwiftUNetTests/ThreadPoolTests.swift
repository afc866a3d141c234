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

    func testNestedParallelForRunsInline() {
        var total = 0
        let lock = Mutex()
        ThreadPool.shared.parallelFor(4) { _ in
            ThreadPool.shared.parallelFor(5) { _ in lock.withLock { total += 1 } }
        }
        XCTAssertEqual(total, 20)
    }
}
