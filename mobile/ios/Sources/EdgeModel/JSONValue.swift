import Foundation

/// A JSON value as the contract reads it: numbers are doubles, objects keep Python's equality (1 == 1.0).
public enum JSONValue: Decodable, Equatable, Sendable {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    public init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() {
            self = .null
        } else if let b = try? c.decode(Bool.self) {
            self = .bool(b)
        } else if let n = try? c.decode(Double.self) {
            self = .number(n)
        } else if let s = try? c.decode(String.self) {
            self = .string(s)
        } else if let a = try? c.decode([JSONValue].self) {
            self = .array(a)
        } else {
            self = .object(try c.decode([String: JSONValue].self))
        }
    }

    /// Parse strict JSON text (no NaN or Infinity), or nil when it is not JSON.
    public static func parse(_ text: String) -> JSONValue? {
        guard let data = text.data(using: .utf8) else { return nil }
        return try? JSONDecoder().decode(JSONValue.self, from: data)
    }

    /// The JSON-schema type name of this value ("integer" for whole numbers, as Python's checker says).
    var schemaType: String {
        switch self {
        case .null: return "null"
        case .bool: return "boolean"
        case let .number(n): return n.isFinite && n.rounded() == n ? "integer" : "number"
        case .string: return "string"
        case .array: return "array"
        case .object: return "object"
        }
    }

    func matches(type expected: JSONValue) -> Bool {
        let allowed: [JSONValue]
        if case let .array(list) = expected { allowed = list } else { allowed = [expected] }
        let actual = schemaType
        return allowed.contains(.string(actual)) || (actual == "integer" && allowed.contains(.string("number")))
    }
}
