import CoreML
import Tokenizers

/// Greedy decoding held to a constrained labels contract's labels: Core ML has no grammar, so EdgeModel picks
/// each token itself, the best-scoring one that keeps the answer on a label's token path. A path is a label's
/// token ids as the tokenizer encodes the label alone and after one space; once a path is complete the answer may
/// only end (an eos id, or the first token of a stop string). The build simulated the package with the same
/// choice (packager/label_choice.py), so its accuracy and validity are this decoding's.
struct LabelChoice {
    let paths: [[Int]]
    let ends: Set<Int>

    /// The choice `contract` asks for, or nil when it is not a constrained labels contract.
    init?(contract: Contract, tokenizer: Tokenizer) {
        guard contract.task == "labels", contract.constrained, let labels = contract.labels, !labels.isEmpty else {
            return nil
        }
        var paths: [[Int]] = []
        for label in labels {
            for text in [label, " " + label] {
                let ids = tokenizer.encode(text: text, addSpecialTokens: false)
                if !ids.isEmpty && !paths.contains(ids) {
                    paths.append(ids)
                }
            }
        }
        var ends = Set(contract.eosIds)
        for stop in contract.stopStrings where !stop.isEmpty {
            if let first = tokenizer.encode(text: stop, addSpecialTokens: false).first {
                ends.insert(first)
            }
        }
        self.paths = paths
        self.ends = ends
    }

    /// The tokens that may follow `answer`, in ascending order (none once an answer has ended).
    func allowed(after answer: [Int]) -> [Int] {
        var allowed = Set<Int>()
        for path in paths where path.count >= answer.count && path.starts(with: answer) {
            if path.count > answer.count {
                allowed.insert(path[answer.count])
            } else if path.count == answer.count {
                allowed.formUnion(ends)
            }
        }
        return allowed.sorted()
    }

    /// The allowed token after `answer` with the largest logit at the last position of a [1, seq, vocab] float16
    /// array (the lowest id of equal logits, as argmax picks); the argmax when nothing is allowed.
    func best(_ logits: MLMultiArray, after answer: [Int]) -> Int {
        let allowed = allowed(after: answer)
        guard !allowed.isEmpty else { return EdgeModel.argmaxOfLastRow(logits) }
        let seq = logits.shape[1].intValue
        return logits.withUnsafeBufferPointer(ofType: Float16.self) { buffer in
            let base = (seq - 1) * logits.strides[1].intValue
            let colStride = logits.strides[2].intValue
            var best = allowed[0]
            for id in allowed.dropFirst() where buffer[base + id * colStride] > buffer[base + best * colStride] {
                best = id
            }
            return best
        }
    }
}
