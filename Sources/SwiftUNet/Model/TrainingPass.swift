/// The model's training forward and backward, side by side: the forward keeps every
/// activation the backward reads in one workspace (planned by the shapes alone, so the
/// workspace grows on the first step and allocates nothing after), the backward walks
/// the layers in reverse.
///
/// Every kernel on this path keeps its summation order whatever the thread count, and
/// weight gradients add the images in order, so the gradient is the same bit for bit
/// on any number of threads.
extension DiffusionModel {
    /// Floats in all parameters: the length of the flat layout (`Parameter.offset`).
    public var parameterTotal: Int { parameters.last.map { $0.offset + $0.count } ?? 0 }

    /// loss = mean((model(x, t) - target)²) over every element, and its gradient for every
    /// parameter into `gradients` (`parameterTotal` floats, flat layout, overwritten).
    /// x and target [batch, C, height, width], batch >= 1. The weights are not changed.
    public func lossAndGradient(_ x: UnsafePointer<Float>, batch: Int, channels: Int, height: Int, width: Int,
                                timesteps: UnsafePointer<Int64>, target: UnsafePointer<Float>,
                                gradients: UnsafeMutablePointer<Float>) throws -> Double {
        try validateInput(batch: batch, channels: channels, height: height, width: width, timesteps: timesteps)
        if batch < 1 { throw SwiftUNetError.invalidArgument("batch must be >= 1 for a loss (a mean over no elements), got \(batch)") }
        return try weightsLock.withReadLock {
            let workspace = takeWorkspace()
            defer { giveBack(workspace) }
            defer { try? workspace.reset() }
            gradients.update(repeating: 0, count: parameterTotal)
            return try trainingPass(x, batch: batch, height: height, width: width, timesteps: timesteps,
                                    target: target, gradients: GradientBuffer(base: gradients), workspace: workspace)
        }
    }

    /// The floats per image of the largest activation gradient passed between layers.
    private func largestGradientPlane(height: Int, width: Int) -> Int {
        let d = config.hiddenDims
        var largest = 0, spatial = height * width
        for i in 0..<config.levels {
            largest = max(largest, max(d[i], d[i + 1]) * spatial)
            spatial /= 4
        }
        return max(largest, d[config.levels] * spatial)
    }

    private func trainingPass(_ x: UnsafePointer<Float>, batch: Int, height: Int, width: Int,
                              timesteps: UnsafePointer<Int64>, target: UnsafePointer<Float>,
                              gradients: GradientBuffer, workspace ws: Workspace) throws -> Double {
        let d = config.hiddenDims, levels = config.levels, c = config.channels

        // Forward, keeping each layer's input and saved values.
        let temb = try ws.floats(batch * config.timeDim)
        let timeSaved = try timeEmbedding.trainingForward(timesteps, batch: batch, into: temb, workspace: ws)
        let initOut = try ws.floats(batch * d[0] * height * width)
        try initConv.trainingForward(x, batch: batch, height: height, width: width, into: initOut, workspace: ws)

        var downInputs: [UnsafeMutablePointer<Float>] = [], skips: [UnsafeMutablePointer<Float>] = []
        var downSaved: [ResBlockSaved] = []
        var h = initOut, hh = height, ww = width
        for (i, block) in downBlocks.enumerated() {
            let skip = try ws.floats(batch * d[i + 1] * hh * ww)
            let next = try ws.floats(batch * d[i + 1] * (hh / 2) * (ww / 2))
            downSaved.append(try block.trainingForward(h, batch: batch, height: hh, width: ww, temb: temb, skip: skip,
                                                       into: next, workspace: ws))
            downInputs.append(h)
            skips.append(skip)
            h = next
            hh /= 2
            ww /= 2
        }
        let dl = d[levels]
        let middleInput = h
        let mid1 = try ws.floats(batch * dl * hh * ww)
        let middleInSaved = try middleIn.trainingForward(middleInput, batch: batch, height: hh, width: ww, temb: temb,
                                                         into: mid1, workspace: ws)
        let mid2 = try ws.floats(batch * dl * hh * ww)
        let attentionSaved = try attention.trainingForward(mid1, batch: batch, height: hh, width: ww, into: mid2,
                                                           workspace: ws)
        let mid3 = try ws.floats(batch * dl * hh * ww)
        let middleOutSaved = try middleOut.trainingForward(mid2, batch: batch, height: hh, width: ww, temb: temb,
                                                           into: mid3, workspace: ws)
        h = mid3
        var upInputs: [UnsafeMutablePointer<Float>] = [], upSaved: [UpBlockSaved] = []
        for (j, block) in upBlocks.enumerated() {
            let i = levels - 1 - j
            let next = try ws.floats(batch * d[i] * (hh * 2) * (ww * 2))
            upSaved.append(try block.trainingForward(h, batch: batch, height: hh, width: ww, temb: temb,
                                                     skip: skips[i], into: next, workspace: ws))
            upInputs.append(h)
            h = next
            hh *= 2
            ww *= 2
        }
        let decoderOut = h
        let spatial = height * width
        // out_conv's input (the normalised decoder output) lives only while it is read; the
        // backward recomputes it from the saved statistics.
        let outNormSaved = GroupNormSaved(mean: try ws.floats(batch * outNorm.groups),
                                          rstd: try ws.floats(batch * outNorm.groups))
        let count = batch * c * spatial
        let prediction = try ws.floats(count)
        let normedMark = ws.mark()
        let normed = try ws.floats(batch * d[0] * spatial)
        outNorm.trainingForward(decoderOut, batch: batch, spatial: spatial, silu: true, into: normed,
                                saving: outNormSaved)
        try outConv.trainingForward(normed, batch: batch, height: height, width: width, into: prediction, workspace: ws)
        ws.release(to: normedMark)

        // Loss, then backward through the same layers in reverse.
        let dPrediction = try ws.floats(count)
        let loss = mseLossAndGradient(prediction, target: target, count: count, grad: dPrediction)
        let dtemb = try ws.floats(batch * config.timeDim)
        dtemb.update(repeating: 0, count: batch * config.timeDim)
        let plane = largestGradientPlane(height: height, width: width)
        var g = try ws.floats(batch * plane), other = try ws.floats(batch * plane)
        let dSkips = try (0..<levels).map { i in try ws.floats(batch * d[i + 1] * (height >> i) * (width >> i)) }

        let backwardMark = ws.mark()
        let normedAgain = try ws.floats(batch * d[0] * spatial)
        outNorm.recompute(decoderOut, batch: batch, spatial: spatial, silu: true, saved: outNormSaved, into: normedAgain)
        try outConv.backward(dPrediction, x: normedAgain, batch: batch, height: height, width: width,
                             gradients: gradients, dx: other, workspace: ws)
        ws.release(to: backwardMark)
        try outNorm.backward(other, x: decoderOut, batch: batch, spatial: spatial, silu: true, saved: outNormSaved,
                             gradients: gradients, dx: g, workspace: ws)
        for j in (0..<levels).reversed() {
            let i = levels - 1 - j
            hh = height >> (i + 1)
            ww = width >> (i + 1)
            try upBlocks[j].backward(g, x: upInputs[j], batch: batch, height: hh, width: ww, temb: temb,
                                     saved: upSaved[j], gradients: gradients, dx: other, dSkip: dSkips[i],
                                     dtemb: dtemb, workspace: ws)
            swap(&g, &other)
        }
        hh = height >> levels
        ww = width >> levels
        try middleOut.backward(g, x: mid2, batch: batch, height: hh, width: ww, temb: temb, saved: middleOutSaved,
                               gradients: gradients, dx: other, dtemb: dtemb, workspace: ws)
        swap(&g, &other)
        try attention.backward(g, x: mid1, batch: batch, height: hh, width: ww, saved: attentionSaved,
                               gradients: gradients, dx: other, workspace: ws)
        swap(&g, &other)
        try middleIn.backward(g, x: middleInput, batch: batch, height: hh, width: ww, temb: temb,
                              saved: middleInSaved, gradients: gradients, dx: other, dtemb: dtemb, workspace: ws)
        swap(&g, &other)
        for i in (0..<levels).reversed() {
            hh = height >> i
            ww = width >> i
            try downBlocks[i].backward(g, dSkip: dSkips[i], x: downInputs[i], batch: batch, height: hh, width: ww,
                                       temb: temb, skip: skips[i], saved: downSaved[i], gradients: gradients,
                                       dx: other, dtemb: dtemb, workspace: ws)
            swap(&g, &other)
        }
        try initConv.backward(g, x: x, batch: batch, height: height, width: width, gradients: gradients, dx: nil,
                              workspace: ws)
        try timeEmbedding.backward(dtemb, batch: batch, saved: timeSaved, gradients: gradients, workspace: ws)
        return loss
    }
}
