/// The timestep embedding: sinusoidal encoding → `fc1` Linear(T, 4T) → exact GELU →
/// `fc2` Linear(4T, T). PyTorch's `time_mlp` module of the SPEC.
final class TimeEmbedding {
    let dim: Int
    let fc1: Linear
    let fc2: Linear

    init(_ registry: ParameterRegistry, _ prefix: String, dim: Int) throws {
        self.dim = dim
        fc1 = try Linear(registry, prefix + ".fc1", inFeatures: dim, outFeatures: 4 * dim)
        fc2 = try Linear(registry, prefix + ".fc2", inFeatures: 4 * dim, outFeatures: dim)
    }

    /// t [B] → temb [B, T]
    func forward(_ t: UnsafePointer<Int64>, batch: Int, into temb: UnsafeMutablePointer<Float>,
                 workspace: Workspace) throws {
        let mark = workspace.mark()
        defer { workspace.release(to: mark) }
        let encoding = try workspace.floats(batch * dim)
        let hidden = try workspace.floats(batch * 4 * dim)
        sinusoidalEmbedding(t, batch: batch, dim: dim, e: encoding)
        fc1.forward(encoding, batch: batch, into: hidden)
        geluInPlace(hidden, count: batch * 4 * dim)
        fc2.forward(hidden, batch: batch, into: temb)
    }
}
