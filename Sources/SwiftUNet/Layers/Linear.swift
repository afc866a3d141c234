/// y = x·Wᵀ + b over the last axis: PyTorch's `nn.Linear(inFeatures, outFeatures)`.
final class Linear {
    let inFeatures: Int
    let outFeatures: Int
    let weight: Parameter
    let bias: Parameter

    init(_ registry: ParameterRegistry, _ prefix: String, inFeatures: Int, outFeatures: Int) throws {
        self.inFeatures = inFeatures
        self.outFeatures = outFeatures
        weight = try registry.make(prefix + ".weight", [outFeatures, inFeatures], .uniform(fanIn: inFeatures))
        bias = try registry.make(prefix + ".bias", [outFeatures], .uniform(fanIn: inFeatures))
    }

    /// x [B, in] → y [B, out]
    func forward(_ x: UnsafePointer<Float>, batch: Int, into y: UnsafeMutablePointer<Float>) {
        linearForward(x, batch: batch, inFeatures: inFeatures, outFeatures: outFeatures,
                      weight: weight.data, bias: bias.data, y: y)
    }
}

extension Linear {
    /// dy [B, out], the forward's x [B, in] → weight and bias gradients (+=), dx [B, in] (=) when given.
    func backward(_ dy: UnsafePointer<Float>, x: UnsafePointer<Float>, batch: Int, gradients: GradientBuffer,
                  dx: UnsafeMutablePointer<Float>?) {
        linearBackward(dy, x: x, batch: batch, inFeatures: inFeatures, outFeatures: outFeatures, weight: weight.data,
                       dWeight: gradients.of(weight), dBias: gradients.of(bias), dx: dx)
    }
}
