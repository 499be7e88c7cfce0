import CoreML

/// The additive fp16 masks the package expects ([1, 1, query, total]: 0 where a key is visible, -65504
/// elsewhere), built the way swift-transformers builds them. The cache position is `total - query`:
/// the model reads it from these shapes.
enum AttentionMasks {
    static func make(query: Int, total: Int, slidingWindow: Int?) throws -> MLMultiArray {
        let shape = [1, 1, query, total].map { NSNumber(value: $0) }
        let mask = try MLMultiArray(shape: shape, dataType: .float16)
        let past = total - query
        mask.withUnsafeMutableBufferPointer(ofType: Float16.self) { buffer, strides in
            let rowStride = strides[2]
            let colStride = strides[3]
            for q in 0..<query {
                let position = past + q
                for k in 0..<total {
                    let causal = k <= position
                    let inside = slidingWindow.map { k > position - $0 } ?? true
                    buffer[q * rowStride + k * colStride] = causal && inside ? 0 : -Float16.greatestFiniteMagnitude
                }
            }
        }
        return mask
    }
}
