/// A dense float32 tensor in row-major (C) order, usually NCHW.
///
/// A tensor either owns its storage (allocated 64-byte aligned and freed with
/// it) or views memory that someone else owns, such as a caller's input array.
public final class Tensor {
    public let shape: [Int]
    public let count: Int
    public let data: UnsafeMutablePointer<Float>
    private let owned: Bool

    /// A zero-filled tensor. Throws `outOfMemory` when it cannot be allocated.
    public init(zeros shape: [Int]) throws {
        guard shape.allSatisfy({ $0 >= 0 }) else {
            throw SwiftUNetError.invalidArgument("tensor shape \(shape) has a negative dimension")
        }
        var n = 1
        for d in shape {
            let (p, o) = n.multipliedReportingOverflow(by: d)
            if o { throw SwiftUNetError.outOfMemory("tensor shape \(shape) is too large") }
            n = p
        }
        self.shape = shape
        self.count = n
        self.data = try allocateFloatsOrThrow(n, "a tensor of shape \(shape)")
        self.data.initialize(repeating: 0, count: n)
        self.owned = true
    }

    /// A tensor holding a copy of `values`, which must have `shape`'s element count.
    public convenience init(shape: [Int], values: [Float]) throws {
        try self.init(zeros: shape)
        guard values.count == count else {
            throw SwiftUNetError.invalidArgument("expected \(count) values for shape \(shape), got \(values.count)")
        }
        values.withUnsafeBufferPointer { data.update(from: $0.baseAddress!, count: count) }
    }

    /// A view of memory owned elsewhere; the caller keeps it alive.
    public init(viewing pointer: UnsafeMutablePointer<Float>, shape: [Int]) {
        self.shape = shape
        self.count = shape.reduce(1, *)
        self.data = pointer
        self.owned = false
    }

    deinit {
        if owned { freeFloats(data) }
    }

    public var values: [Float] { Array(UnsafeBufferPointer(start: data, count: count)) }

    public subscript(_ i: Int) -> Float {
        get { data[i] }
        set { data[i] = newValue }
    }
}
