/// A bump allocator for the activations of one forward pass.
///
/// Buffers are taken with `floats(_:)` and given back in stack order with
/// `mark()` / `release(to:)`. The first pass at a new shape may overflow the
/// block into side chunks; `reset()` then grows the block to the high-water
/// mark, so later passes at that shape allocate nothing.
final class Workspace {
    private var block: UnsafeMutablePointer<Float>? = nil
    private var capacity = 0
    private var top = 0
    private var highWater = 0
    /// Side chunks of the current pass, mapped from the system so that freeing them
    /// returns their memory (see `MappedFloats`), each with the level `top` had when it was
    /// taken: `release(to:)` below that level frees it at once, so a first pass holds at
    /// most its high-water mark, not the sum of all its temporaries.
    private var overflow: [(chunk: MappedFloats, level: Int, floats: Int)] = []
    private var overflowFloats = 0
    /// Whether this pass needed a side chunk (then `reset` grows the block).
    private var overflowed = false

    init() {}

    deinit {
        freeFloats(block)
        for entry in overflow { entry.chunk.release() }
    }

    /// Bytes currently reserved by this workspace.
    var reservedBytes: Int { (capacity + overflowFloats) * MemoryLayout<Float>.stride }

    /// Round every buffer to whole cache lines so each starts 64-byte aligned.
    @inline(__always) private static func rounded(_ n: Int) -> Int { (n + 15) & ~15 }

    /// An uninitialised buffer of `count` floats, valid until released.
    func floats(_ count: Int) throws -> UnsafeMutablePointer<Float> {
        let n = Workspace.rounded(max(count, 1))
        let newTop = top + n
        highWater = max(highWater, newTop)
        if newTop <= capacity, let b = block {
            top = newTop
            return b + (newTop - n)
        }
        // Past the block: serve from a side chunk and remember the need.
        let chunk = try MappedFloats(n, "activations")
        overflow.append((chunk, top, n))
        overflowFloats += n
        overflowed = true
        top = newTop
        return chunk.base
    }

    /// A workspace tensor of the given shape (uninitialised).
    func tensor(_ shape: [Int]) throws -> Tensor {
        let n = shape.reduce(1, *)
        return Tensor(viewing: try floats(n), shape: shape)
    }

    func mark() -> Int { top }

    func release(to mark: Int) {
        top = mark
        while let last = overflow.last, last.level >= mark {
            last.chunk.release()
            overflowFloats -= last.floats
            overflow.removeLast()
        }
    }

    /// Ends a pass: frees side chunks and grows the block to what the pass needed.
    func reset() throws {
        top = 0
        if overflowed {
            for entry in overflow { entry.chunk.release() }
            overflow.removeAll(keepingCapacity: true)
            overflowFloats = 0
            overflowed = false
            freeFloats(block)
            block = nil
            capacity = 0
            // From 1 MiB up on huge pages (see `allocateHugePageFloats`), rounded up to 2 MiB.
            if highWater * MemoryLayout<Float>.stride >= hugePageBytes / 2, let p = allocateHugePageFloats(highWater) {
                block = p
            } else {
                block = try allocateFloatsOrThrow(highWater, "the activation arena")
            }
            capacity = highWater
        }
    }
}
