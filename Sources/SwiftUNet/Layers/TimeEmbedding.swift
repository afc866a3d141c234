/// The timestep embedding: sinusoidal encoding → `fc1` Linear(T, 4T) → exact GELU →
/// `fc2` Linear(4T, T). PyTorch's `time_mlp` module of docs/model.md.
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

/// What `TimeEmbedding.backward` needs: the encoding, fc1's output and the GELU's.
struct TimeEmbeddingSaved {
    let encoding: UnsafeMutablePointer<Float>
    let preActivation: UnsafeMutablePointer<Float>
    let activation: UnsafeMutablePointer<Float>
}

extension TimeEmbedding {
    /// Training forward: t [B] → temb [B, T], keeping the intermediate values.
    func trainingForward(_ t: UnsafePointer<Int64>, batch: Int, into temb: UnsafeMutablePointer<Float>,
                         workspace: Workspace) throws -> TimeEmbeddingSaved {
        let saved = TimeEmbeddingSaved(encoding: try workspace.floats(batch * dim),
                                       preActivation: try workspace.floats(batch * 4 * dim),
                                       activation: try workspace.floats(batch * 4 * dim))
        sinusoidalEmbedding(t, batch: batch, dim: dim, e: saved.encoding)
        fc1.forward(saved.encoding, batch: batch, into: saved.preActivation)
        saved.activation.update(from: saved.preActivation, count: batch * 4 * dim)
        geluInPlace(saved.activation, count: batch * 4 * dim)
        fc2.forward(saved.activation, batch: batch, into: temb)
        return saved
    }

    /// dtemb [B, T] → the gradients of fc1 and fc2 (+=); the sinusoid has none.
    func backward(_ dtemb: UnsafePointer<Float>, batch: Int, saved: TimeEmbeddingSaved, gradients: GradientBuffer,
                  workspace: Workspace) throws {
        let mark = workspace.mark()
        defer { workspace.release(to: mark) }
        let dActivation = try workspace.floats(batch * 4 * dim)
        fc2.backward(dtemb, x: saved.activation, batch: batch, gradients: gradients, dx: dActivation)
        geluBackward(dActivation, x: saved.preActivation, dx: dActivation, count: batch * 4 * dim)
        fc1.backward(dActivation, x: saved.encoding, batch: batch, gradients: gradients, dx: nil)
    }
}
