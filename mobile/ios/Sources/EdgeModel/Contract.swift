import Foundation

// The task contract, ported from packager/contract.py: prompts are rendered and answers read exactly as
// the build verified them. Where Swift and Python differ on a primitive (what strip() removes, JSON
// number types) a helper reproduces Python's behaviour.

/// prefix + template (with {instruction} and {input} filled in) + suffix.
public struct PromptFormat: Decodable, Sendable {
    public var prefix: String = ""
    public var template: String = "{input}"
    public var suffix: String = ""
    public var source: String = "plain"
}

/// What a caller needs to drive the model the way it was fine-tuned (the "contract" of edgepack.json).
public struct Contract: Decodable, Sendable {
    public var task: String = "text"
    public var labels: [String]?
    public var prompt: PromptFormat = PromptFormat()
    public var addBos: Bool = true
    public var bosId: Int?
    public var eosIds: [Int] = []
    public var stopStrings: [String] = []
    public var maxNewTokens: Int = 128
    public var constrained: Bool = false
    public var jsonSchema: JSONValue?

    enum CodingKeys: String, CodingKey {
        case task, labels, prompt, constrained
        case addBos = "add_bos"
        case bosId = "bos_id"
        case eosIds = "eos_ids"
        case stopStrings = "stop_strings"
        case maxNewTokens = "max_new_tokens"
        case jsonSchema = "json_schema"
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        task = try c.decodeIfPresent(String.self, forKey: .task) ?? "text"
        labels = try c.decodeIfPresent([String].self, forKey: .labels)
        prompt = try c.decodeIfPresent(PromptFormat.self, forKey: .prompt) ?? PromptFormat()
        addBos = try c.decodeIfPresent(Bool.self, forKey: .addBos) ?? true
        bosId = try c.decodeIfPresent(Int.self, forKey: .bosId)
        eosIds = try c.decodeIfPresent([Int].self, forKey: .eosIds) ?? []
        stopStrings = try c.decodeIfPresent([String].self, forKey: .stopStrings) ?? []
        maxNewTokens = try c.decodeIfPresent(Int.self, forKey: .maxNewTokens) ?? 128
        constrained = try c.decodeIfPresent(Bool.self, forKey: .constrained) ?? false
        jsonSchema = try c.decodeIfPresent(JSONValue.self, forKey: .jsonSchema)
    }
}

/// A prompt template or contract that cannot be used as written.
public struct ContractFormatError: Error, CustomStringConvertible {
    public let description: String
}

/// {ok, value, error, text}: the same four fields, in the same meaning, as parse_output() in Python.
public struct ParseResult: Sendable {
    public let ok: Bool
    public let value: JSONValue
    public let errorCode: String?
    public let errorPath: String?
    public let text: String
}

// Exactly the characters for which Python's str.isspace() is true, i.e. what str.strip() removes.
private let pythonWhitespace: Set<UInt32> = [
    0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x1C, 0x1D, 0x1E, 0x1F, 0x20, 0x85, 0xA0, 0x1680, 0x2000, 0x2001, 0x2002,
    0x2003, 0x2004, 0x2005, 0x2006, 0x2007, 0x2008, 0x2009, 0x200A, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000,
]

/// Return text without leading and trailing whitespace, as Python's str.strip() defines it.
public func pythonStrip(_ text: String) -> String {
    let scalars = Array(text.unicodeScalars)
    var start = 0
    var end = scalars.count
    while start < end, pythonWhitespace.contains(scalars[start].value) { start += 1 }
    while end > start, pythonWhitespace.contains(scalars[end - 1].value) { end -= 1 }
    var out = String.UnicodeScalarView()
    out.append(contentsOf: scalars[start..<end])
    return String(out)
}

/// Replace {name} placeholders; `{{` and `}}` are literal braces; an unknown name is an error.
public func fillTemplate(_ template: String, values: [String: String]) throws -> String {
    var out = ""
    let chars = Array(template)
    var i = 0
    while i < chars.count {
        let ch = chars[i]
        if ch == "{", i + 1 < chars.count, chars[i + 1] == "{" {
            out.append("{")
            i += 2
        } else if ch == "}", i + 1 < chars.count, chars[i + 1] == "}" {
            out.append("}")
            i += 2
        } else if ch == "{" {
            guard let end = chars[i...].firstIndex(of: "}") else {
                throw ContractFormatError(description: "unclosed placeholder at \(i) in prompt template")
            }
            let name = String(chars[(i + 1)..<end])
            guard let value = values[name] else {
                throw ContractFormatError(description: "unknown placeholder {\(name)} in prompt template")
            }
            out += value
            i = end + 1
        } else {
            out.append(ch)
            i += 1
        }
    }
    return out
}

/// Return the exact text the model sees (BOS is not included: EdgeModel adds it when addBos).
public func renderPrompt(_ contract: Contract, input: String, instruction: String = "") throws -> String {
    let body = try fillTemplate(contract.prompt.template, values: ["input": input, "instruction": instruction])
    return contract.prompt.prefix + body + contract.prompt.suffix
}

/// Cut the raw generation at the first stop string, then strip surrounding whitespace.
public func cleanOutput(_ contract: Contract, raw: String) -> String {
    var cut = raw.endIndex
    for stop in contract.stopStrings where !stop.isEmpty {
        // .literal: Foundation otherwise matches canonically equivalent text, Python does not.
        if let range = raw.range(of: stop, options: .literal), range.lowerBound < cut {
            cut = range.lowerBound
        }
    }
    return pythonStrip(String(raw[..<cut]))
}

/// Return {ok, value, error, text} for a raw generation under the contract. Nothing is repaired.
public func parseOutput(_ contract: Contract, raw: String) -> ParseResult {
    let text = cleanOutput(contract, raw: raw)
    switch contract.task {
    case "labels":
        // Scalar by scalar, as Python compares: Swift's == treats "cafe\u{301}" (NFD) as "café".
        if (contract.labels ?? []).contains(where: { $0.unicodeScalars.elementsEqual(text.unicodeScalars) }) {
            return ParseResult(ok: true, value: .string(text), errorCode: nil, errorPath: nil, text: text)
        }
        return ParseResult(ok: false, value: .null, errorCode: "unknown_label", errorPath: "", text: text)
    case "json":
        guard let value = JSONValue.parse(text) else {
            return ParseResult(ok: false, value: .null, errorCode: "invalid_json", errorPath: "", text: text)
        }
        if let path = schemaViolation(value, schema: contract.jsonSchema ?? .object([:]), path: "") {
            return ParseResult(ok: false, value: value, errorCode: "schema_mismatch", errorPath: path, text: text)
        }
        return ParseResult(ok: true, value: value, errorCode: nil, errorPath: nil, text: text)
    default:
        return ParseResult(ok: true, value: .string(text), errorCode: nil, errorPath: nil, text: text)
    }
}

/// Return the JSON pointer of the first violation of the JSON-schema subset every bridge supports, or nil.
///
/// Supported: type, enum, const, properties, required, additionalProperties (false), items, minItems,
/// maxItems; checked in the same order as packager/contract.py's schema_violation.
public func schemaViolation(_ value: JSONValue, schema: JSONValue, path: String) -> String? {
    guard case let .object(rules) = schema else { return nil }
    if let type = rules["type"], !value.matches(type: type) { return path }
    if let constant = rules["const"], constant != value { return path }
    if case let .array(allowed)? = rules["enum"], !allowed.contains(value) { return path }
    if case let .object(fields) = value {
        let properties: [String: JSONValue]
        if case let .object(props)? = rules["properties"] { properties = props } else { properties = [:] }
        if case let .array(required)? = rules["required"] {
            for case let .string(name) in required where fields[name] == nil {
                return "\(path)/\(name)"
            }
        }
        for (key, sub) in properties.sorted(by: { $0.key < $1.key }) {
            if let item = fields[key], let found = schemaViolation(item, schema: sub, path: "\(path)/\(key)") {
                return found
            }
        }
        if rules["additionalProperties"] == .bool(false) {
            for key in fields.keys.sorted() where properties[key] == nil {
                return "\(path)/\(key)"
            }
        }
    }
    if case let .array(items) = value {
        if case let .number(low)? = rules["minItems"], Double(items.count) < low { return path }
        if case let .number(high)? = rules["maxItems"], Double(items.count) > high { return path }
        if let itemSchema = rules["items"] {
            for (index, item) in items.enumerated() {
                if let found = schemaViolation(item, schema: itemSchema, path: "\(path)/\(index)") {
                    return found
                }
            }
        }
    }
    return nil
}
