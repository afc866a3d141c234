/// An encoder level: `s = res(x, temb)`, `y = down(s)` with a 4×4 stride-2 Conv2d.
/// `s` is kept as the skip for the matching decoder level.
final class DownBlock {
    let res: ResBlock
    let down: Conv2d

    init(_ registry: ParameterRegistry, _ prefix: String, inChannels: Int, outChannels: Int, timeDim: Int) throws {
        res = try ResBlock(registry, prefix + ".res", inChannels: inChannels, outChannels: outChannels, timeDim: timeDim)
        down = try Conv2d(registry, prefix + ".down", inChannels: outChannels, outChannels: outChannels,
                          kernel: 4, stride: 2, padding: 1)
    }

    func prepare(store: WeightStore? = nil) throws {
        try res.prepare(store: store)
        try down.prepare(store: store)
    }

    /// x [B, Cin, H, W] → skip [B, Cout, H, W], y [B, Cout, H/2, W/2]
    func forward(_ x: UnsafePointer<Float>, batch: Int, height: Int, width: Int, temb: UnsafePointer<Float>,
                 skip: UnsafeMutablePointer<Float>, into y: UnsafeMutablePointer<Float>,
                 workspace: Workspace) throws {
        try res.forward(x, batch: batch, height: height, width: width, temb: temb, into: skip, workspace: workspace)
        try down.forward(skip, batch: batch, height: height, width: width, into: y, workspace: workspace)
    }
}

/// A decoder level: `u = up(x)` with a 4×4 stride-2 ConvTranspose2d, then
/// `y = res(concat([u, skip]), temb)` (upsampled channels first).
final class UpBlock {
    let channels: Int
    let up: ConvTranspose2d
    let res: ResBlock

    init(_ registry: ParameterRegistry, _ prefix: String, channels: Int, outChannels: Int, timeDim: Int) throws {
        self.channels = channels
        up = try ConvTranspose2d(registry, prefix + ".up", inChannels: channels, outChannels: channels,
                                 kernel: 4, stride: 2, padding: 1)
        res = try ResBlock(registry, prefix + ".res", inChannels: 2 * channels, outChannels: outChannels, timeDim: timeDim)
    }

    func prepare(store: WeightStore? = nil) throws {
        try up.prepare(store: store)
        try res.prepare(store: store)
    }

    /// x [B, C, H, W], skip [B, C, 2H, 2W] → y [B, Cout, 2H, 2W]. With `skipInPlace` (batch
    /// 1 only), the skip is already the second half of a [2C, 2H, 2W] concatenation buffer,
    /// and the upsampled channels are written in front of it.
    func forward(_ x: UnsafePointer<Float>, batch: Int, height: Int, width: Int, temb: UnsafePointer<Float>,
                 skip: UnsafeMutablePointer<Float>, skipInPlace: Bool = false, into y: UnsafeMutablePointer<Float>,
                 workspace: Workspace) throws {
        let outSpatial = 4 * height * width
        let plane = channels * outSpatial
        let mark = workspace.mark()
        defer { workspace.release(to: mark) }
        precondition(!skipInPlace || batch == 1, "skips are in place at batch 1 only")
        // The upsampled channels go straight into the first half of each image's concatenation.
        let joined = skipInPlace ? skip - plane : try workspace.floats(batch * 2 * plane)
        try up.forward(x, batch: batch, height: height, width: width, into: joined,
                       outputBatchStride: 2 * plane, workspace: workspace)
        if !skipInPlace {
            for b in 0..<batch {
                (joined + (2 * b + 1) * plane).update(from: skip + b * plane, count: plane)
            }
        }
        try res.forward(joined, batch: batch, height: 2 * height, width: 2 * width, temb: temb,
                        into: y, workspace: workspace)
    }
}

// MARK: training

extension DownBlock {
    /// Training forward: x [B, Cin, H, W] → skip [B, Cout, H, W] (kept by the caller, it is
    /// also the down convolution's input) and y [B, Cout, H/2, W/2].
    func trainingForward(_ x: UnsafePointer<Float>, batch: Int, height: Int, width: Int, temb: UnsafePointer<Float>,
                         skip: UnsafeMutablePointer<Float>, into y: UnsafeMutablePointer<Float>,
                         workspace: Workspace) throws -> ResBlockSaved {
        let saved = try res.trainingForward(x, batch: batch, height: height, width: width, temb: temb, into: skip,
                                            workspace: workspace)
        try down.trainingForward(skip, batch: batch, height: height, width: width, into: y, workspace: workspace)
        return saved
    }

    /// dy [B, Cout, H/2, W/2] and dSkip [B, Cout, H, W] (the decoder's gradient of the skip)
    /// → dx [B, Cin, H, W] (=), dtemb (+=), parameter gradients (+=).
    func backward(_ dy: UnsafePointer<Float>, dSkip: UnsafePointer<Float>, x: UnsafePointer<Float>, batch: Int,
                  height: Int, width: Int, temb: UnsafePointer<Float>, skip: UnsafePointer<Float>,
                  saved: ResBlockSaved, gradients: GradientBuffer, dx: UnsafeMutablePointer<Float>,
                  dtemb: UnsafeMutablePointer<Float>, workspace: Workspace) throws {
        let count = batch * res.outChannels * height * width
        let mark = workspace.mark()
        defer { workspace.release(to: mark) }
        let dS = try workspace.floats(count)
        try down.backward(dy, x: skip, batch: batch, height: height, width: width, gradients: gradients, dx: dS,
                          workspace: workspace)
        for i in 0..<count { dS[i] += dSkip[i] }
        try res.backward(dS, x: x, batch: batch, height: height, width: width, temb: temb, saved: saved,
                         gradients: gradients, dx: dx, dtemb: dtemb, workspace: workspace)
    }
}

/// What `UpBlock.backward` needs: the concatenation [u, skip] and the ResBlock's values.
struct UpBlockSaved {
    let joined: UnsafeMutablePointer<Float>
    let res: ResBlockSaved
}

extension UpBlock {
    /// Training forward: x [B, C, H, W], skip [B, C, 2H, 2W] → y [B, Cout, 2H, 2W].
    func trainingForward(_ x: UnsafePointer<Float>, batch: Int, height: Int, width: Int, temb: UnsafePointer<Float>,
                         skip: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>,
                         workspace: Workspace) throws -> UpBlockSaved {
        let plane = channels * 4 * height * width
        let joined = try workspace.floats(batch * 2 * plane)
        try up.trainingForward(x, batch: batch, height: height, width: width, into: joined,
                               outputBatchStride: 2 * plane, workspace: workspace)
        for b in 0..<batch { (joined + (2 * b + 1) * plane).update(from: skip + b * plane, count: plane) }
        let saved = try res.trainingForward(joined, batch: batch, height: 2 * height, width: 2 * width, temb: temb,
                                            into: y, workspace: workspace)
        return UpBlockSaved(joined: joined, res: saved)
    }

    /// dy [B, Cout, 2H, 2W] → dx [B, C, H, W] (=), dSkip [B, C, 2H, 2W] (=), dtemb (+=),
    /// parameter gradients (+=).
    func backward(_ dy: UnsafePointer<Float>, x: UnsafePointer<Float>, batch: Int, height: Int, width: Int,
                  temb: UnsafePointer<Float>, saved: UpBlockSaved, gradients: GradientBuffer,
                  dx: UnsafeMutablePointer<Float>, dSkip: UnsafeMutablePointer<Float>,
                  dtemb: UnsafeMutablePointer<Float>, workspace: Workspace) throws {
        let plane = channels * 4 * height * width
        let mark = workspace.mark()
        defer { workspace.release(to: mark) }
        let dJoined = try workspace.floats(batch * 2 * plane)
        try res.backward(dy, x: saved.joined, batch: batch, height: 2 * height, width: 2 * width, temb: temb,
                         saved: saved.res, gradients: gradients, dx: dJoined, dtemb: dtemb, workspace: workspace)
        for b in 0..<batch { (dSkip + b * plane).update(from: dJoined + (2 * b + 1) * plane, count: plane) }
        try up.backward(dJoined, dyBatchStride: 2 * plane, x: x, batch: batch, height: height, width: width,
                        gradients: gradients, dx: dx, workspace: workspace)
    }
}
