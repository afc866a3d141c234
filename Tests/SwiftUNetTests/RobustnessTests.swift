import Foundation
import XCTest
@testable import SwiftUNet

/// Concurrency and bad-input tests of the model. They are small enough to run
/// under the address and thread sanitizers (scripts/sanitize.sh), which is
/// what they are mostly for: a data race between forwards, or between a
/// forward and a weight update, or a use-after-free when models come and go
/// on several threads, is reported there even when the results look right.
final class RobustnessTests: XCTestCase {
    private func tinyModel(seed: UInt64 = 1) throws -> DiffusionModel {
        try DiffusionModel(imageSize: 4, channels: 2, hiddenDims: [8, 16], timeDim: 8, seed: seed)
    }

    private func input(_ batch: Int, seed: UInt64) throws -> Tensor {
        try Tensor(shape: [batch, 2, 4, 4], values: randomValues(batch * 2 * 16, seed: seed))
    }

    /// Many threads forwarding through one model get the sequential results.
    func testConcurrentForwardsOnOneModelMatchSequential() throws {
        let m = try tinyModel()
        let inputs = try (0..<8).map { try input(1 + $0 % 3, seed: UInt64($0)) }
        let steps = (0..<8).map { i in (0..<(1 + i % 3)).map { 37 * i + $0 } }
        let expected = try (0..<8).map { try m.forward(inputs[$0], timesteps: steps[$0]).values }
        let results = UnsafeMutablePointer<[Float]?>.allocate(capacity: 8 * 4)
        results.initialize(repeating: nil, count: 8 * 4)
        defer { results.deinitialize(count: 8 * 4); results.deallocate() }
        DispatchQueue.concurrentPerform(iterations: 8) { k in
            for r in 0..<4 {
                let i = (k + r) % 8
                results[k * 4 + r] = try? m.forward(inputs[i], timesteps: steps[i]).values
            }
        }
        for k in 0..<8 {
            for r in 0..<4 {
                XCTAssertEqual(results[k * 4 + r], expected[(k + r) % 8], "thread \(k) call \(r)")
            }
        }
    }

    /// Weight updates racing with forwards: every output is that of one whole
    /// set of weights, never a mix, and nothing races underneath.
    func testSetParametersWhileForwarding() throws {
        let a = try tinyModel(seed: 1), b = try tinyModel(seed: 2)
        let x = try input(2, seed: 9)
        let ya = try a.forward(x, timesteps: [3, 4]).values
        let yb = try b.forward(x, timesteps: [3, 4]).values
        let weightsA = a.parameters.map { $0.values }, weightsB = b.parameters.map { $0.values }
        let m = try tinyModel(seed: 1)
        let lock = NSLock()
        var outputs: [[Float]] = []
        DispatchQueue.concurrentPerform(iterations: 3) { k in
            if k == 0 {
                for i in 0..<10 {
                    let w = i % 2 == 0 ? weightsB : weightsA
                    let pointers = w.map { v -> UnsafeMutablePointer<Float> in
                        let p = UnsafeMutablePointer<Float>.allocate(capacity: v.count)
                        p.initialize(from: v, count: v.count)
                        return p
                    }
                    try? m.setParameters(pointers.map { UnsafePointer($0) })
                    pointers.forEach { $0.deallocate() }
                }
            } else {
                for _ in 0..<10 {
                    if let y = try? m.forward(x, timesteps: [3, 4]).values {
                        lock.lock(); outputs.append(y); lock.unlock()
                    }
                }
            }
        }
        XCTAssertEqual(outputs.count, 20)
        for y in outputs { XCTAssertTrue(y == ya || y == yb) }
    }

    /// Models created, used and dropped on many threads at once.
    func testModelsComeAndGoOnManyThreads() throws {
        let x = try input(1, seed: 3)
        let expected = try tinyModel(seed: 5).forward(x, timesteps: [7]).values
        let failures = UnsafeMutablePointer<Int>.allocate(capacity: 4)
        failures.initialize(repeating: 0, count: 4)
        defer { failures.deallocate() }
        DispatchQueue.concurrentPerform(iterations: 4) { k in
            for _ in 0..<5 {
                guard let m = try? self.tinyModel(seed: 5),
                      let y = try? m.forward(x, timesteps: [7]).values, y == expected else {
                    failures[k] += 1
                    continue
                }
            }
        }
        XCTAssertEqual((0..<4).map { failures[$0] }, [0, 0, 0, 0])
    }

    /// Bad inputs throw (never trap) and leave the model usable.
    func testBadInputsThrowAndModelStillWorks() throws {
        let m = try tinyModel()
        let x = try input(1, seed: 1)
        let before = try m.forward(x, timesteps: [10]).values
        let bad: [() throws -> Void] = [
            { _ = try m.forward(try Tensor(zeros: [1, 3, 4, 4]), timesteps: [0]) },
            { _ = try m.forward(try Tensor(zeros: [1, 2, 5, 4]), timesteps: [0]) },
            { _ = try m.forward(try Tensor(zeros: [1, 2, 4, 0]), timesteps: [0]) },
            { _ = try m.forward(try Tensor(zeros: [1, 2, 4]), timesteps: [0]) },
            { _ = try m.forward(x, timesteps: [Int(DiffusionModel.maximumTimestep) + 1]) },
            { _ = try m.forward(x, timesteps: [Int.min]) },
            { _ = try m.forward(x, timesteps: []) },
            { _ = try Tensor(zeros: [Int.max, 2]) },
            { _ = try Tensor(zeros: [-1]) },
            { _ = try DiffusionModel(imageSize: 4, channels: 1, hiddenDims: [], timeDim: 8) },
            { _ = try DiffusionModel(imageSize: 4, channels: 1, hiddenDims: [8, 1 << 40], timeDim: 8) },
            { _ = try DiffusionModel(imageSize: 4, channels: Int.min, hiddenDims: [8, 16], timeDim: 8) },
            { _ = try DiffusionModel(imageSize: Int.max, channels: 1, hiddenDims: [8, 16], timeDim: 8) },
            { try m.setParameters([]) },
        ]
        for (i, call) in bad.enumerated() {
            XCTAssertThrowsError(try call(), "bad call \(i)")
        }
        // Non-finite weights are refused and the old ones kept.
        let pointers = m.parameters.map { p -> UnsafeMutablePointer<Float> in
            let q = UnsafeMutablePointer<Float>.allocate(capacity: p.count)
            q.initialize(from: p.values, count: p.count)
            return q
        }
        defer { pointers.forEach { $0.deallocate() } }
        pointers[pointers.count - 1][0] = .nan
        XCTAssertThrowsError(try m.setParameters(pointers.map { UnsafePointer($0) }))
        XCTAssertEqual(try m.forward(x, timesteps: [10]).values, before)
    }

    /// NaN in the input propagates to the output instead of trapping.
    func testNaNPropagates() throws {
        let m = try tinyModel()
        var v = randomValues(2 * 16, seed: 2)
        v[5] = .nan
        let y = try m.forward(try Tensor(shape: [1, 2, 4, 4], values: v), timesteps: [1]).values
        XCTAssertTrue(y.contains { $0.isNaN })
    }
}
