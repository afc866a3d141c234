/// One named weight tensor of a model, in PyTorch's shape and layout.
public final class Parameter {
    /// How PyTorch initialises this tensor by default.
    enum Initialization {
        /// Uniform in ±1/√fanIn (nn.Linear, nn.Conv2d, nn.ConvTranspose2d weights and biases).
        case uniform(fanIn: Int)
        case ones
        case zeros
    }

    public let name: String
    public let shape: [Int]
    public let count: Int
    let initialization: Initialization
    let data: UnsafeMutablePointer<Float>
    /// Where this tensor starts in the model's flat parameter layout (state_dict order,
    /// tensors back to back): gradients, Adam moments and EMA weights use that layout.
    public let offset: Int

    init(name: String, shape: [Int], offset: Int, initialization: Initialization) throws {
        self.name = name
        self.offset = offset
        self.shape = shape
        self.count = shape.reduce(1, *)
        self.initialization = initialization
        self.data = try allocateFloatsOrThrow(count, "parameter \(name)")
        data.initialize(repeating: 0, count: count)
    }

    deinit { freeFloats(data) }

    public var values: [Float] { Array(UnsafeBufferPointer(start: data, count: count)) }

    /// Fills the tensor with PyTorch's default initialisation drawn from `rng`.
    func initialize(using rng: inout SplitMix64) {
        switch initialization {
        case .ones: data.update(repeating: 1, count: count)
        case .zeros: data.update(repeating: 0, count: count)
        case .uniform(let fanIn):
            let bound = Float(1.0 / Double(fanIn).squareRoot())
            for i in 0..<count { data[i] = (rng.nextUnitFloat() * 2 - 1) * bound }
        }
    }
}

/// Collects a model's parameters in state_dict order as its layers are built.
final class ParameterRegistry {
    private(set) var parameters: [Parameter] = []
    /// Floats in all parameters so far.
    private(set) var total = 0

    func make(_ name: String, _ shape: [Int], _ initialization: Parameter.Initialization) throws -> Parameter {
        let p = try Parameter(name: name, shape: shape, offset: total, initialization: initialization)
        parameters.append(p)
        total += p.count
        return p
    }
}

/// Gradients in the flat parameter layout: the gradient of parameter p is the
/// `p.count` floats at `base + p.offset`.
struct GradientBuffer {
    let base: UnsafeMutablePointer<Float>

    @inline(__always) func of(_ p: Parameter) -> UnsafeMutablePointer<Float> { base + p.offset }
}
