import Foundation

/// The TOML subset `upgrade sync --config FILE` reads: `key = value` lines with strings
/// (`"..."` with `\"`, `\\`, `\n`, `\t` escapes, or `'...'`), integers, floats, booleans and
/// one-line arrays of strings; `#` comments; no tables. Keys are the long flag names.
public struct ConfigFile: Sendable {
    /// A value of the subset.
    public enum Value: Sendable, Equatable {
        case string(String)
        case number(Double)
        case bool(Bool)
        case strings([String])
    }

    public let values: [String: Value]
    public let path: String

    /// Parses `text`; errors name the line.
    public init(text: String, path: String) throws(ConfigError) {
        var values = [String: Value]()
        for (index, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = Self.stripComment(String(raw)).trimmingCharacters(in: .whitespaces)
            if line.isEmpty { continue }
            func fail(_ why: String) -> ConfigError { .invalid(path: path, line: index + 1, why) }
            if line.hasPrefix("[") { throw fail("tables are not supported; put every key at the top level") }
            guard let equals = line.firstIndex(of: "=") else { throw fail("expected key = value") }
            let key = line[..<equals].trimmingCharacters(in: .whitespaces)
            let valueText = line[line.index(after: equals)...].trimmingCharacters(in: .whitespaces)
            guard !key.isEmpty, key.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" }) else {
                throw fail("invalid key \(key.debugDescription)")
            }
            guard values[key] == nil else { throw fail("key \(key) appears twice") }
            guard let value = Self.parseValue(valueText) else { throw fail("cannot read the value of \(key)") }
            values[key] = value
        }
        self.values = values
        self.path = path
    }

    /// Reads and parses a file.
    public init(path: String) throws(ConfigError) {
        guard let data = FileManager.default.contents(atPath: path) else { throw .unreadable(path) }
        try self.init(text: String(decoding: data, as: UTF8.self), path: path)
    }

    public func string(_ key: String) throws(ConfigError) -> String? {
        switch values[key] {
        case nil: return nil
        case .string(let s): return s
        default: throw .wrongType(path: path, key: key, expected: "a string")
        }
    }

    public func strings(_ key: String) throws(ConfigError) -> [String]? {
        switch values[key] {
        case nil: return nil
        case .string(let s): return [s]
        case .strings(let list): return list
        default: throw .wrongType(path: path, key: key, expected: "a string or an array of strings")
        }
    }

    public func number(_ key: String) throws(ConfigError) -> Double? {
        switch values[key] {
        case nil: return nil
        case .number(let n): return n
        default: throw .wrongType(path: path, key: key, expected: "a number")
        }
    }

    public func bool(_ key: String) throws(ConfigError) -> Bool? {
        switch values[key] {
        case nil: return nil
        case .bool(let b): return b
        default: throw .wrongType(path: path, key: key, expected: "true or false")
        }
    }

    /// Keys not in `known`, for a clear error about typos.
    public func unknownKeys(_ known: Set<String>) -> [String] { values.keys.filter { !known.contains($0) }.sorted() }

    private static func stripComment(_ line: String) -> String {
        var inString: Character?
        var escaped = false
        for (offset, char) in line.enumerated() {
            if escaped {
                escaped = false
                continue
            }
            if char == "\\" && inString == "\"" {
                escaped = true
                continue
            }
            if let quote = inString {
                if char == quote { inString = nil }
            } else if char == "\"" || char == "'" {
                inString = char
            } else if char == "#" {
                return String(line.prefix(offset))
            }
        }
        return line
    }

    private static func parseValue(_ text: String) -> Value? {
        if text == "true" { return .bool(true) }
        if text == "false" { return .bool(false) }
        if let string = parseString(text) { return .string(string) }
        if text.hasPrefix("[") && text.hasSuffix("]") {
            let inner = text.dropFirst().dropLast().trimmingCharacters(in: .whitespaces)
            if inner.isEmpty { return .strings([]) }
            var items = [String]()
            for part in splitArray(inner) {
                guard let item = parseString(part.trimmingCharacters(in: .whitespaces)) else { return nil }
                items.append(item)
            }
            return .strings(items)
        }
        if let number = Double(text.replacingOccurrences(of: "_", with: "")) { return .number(number) }
        return nil
    }

    private static func parseString(_ text: String) -> String? {
        if text.count >= 2, text.hasPrefix("'"), text.hasSuffix("'") { return String(text.dropFirst().dropLast()) }
        guard text.count >= 2, text.hasPrefix("\""), text.hasSuffix("\"") else { return nil }
        var out = ""
        var escaped = false
        for char in text.dropFirst().dropLast() {
            if escaped {
                switch char {
                case "n": out.append("\n")
                case "t": out.append("\t")
                case "\"", "\\": out.append(char)
                default: return nil
                }
                escaped = false
            } else if char == "\\" {
                escaped = true
            } else if char == "\"" {
                return nil
            } else {
                out.append(char)
            }
        }
        return escaped ? nil : out
    }

    private static func splitArray(_ text: String) -> [String] {
        var parts = [String]()
        var current = ""
        var inString: Character?
        for char in text {
            if let quote = inString {
                current.append(char)
                if char == quote { inString = nil }
            } else if char == "\"" || char == "'" {
                inString = char
                current.append(char)
            } else if char == "," {
                parts.append(current)
                current = ""
            } else {
                current.append(char)
            }
        }
        if !current.trimmingCharacters(in: .whitespaces).isEmpty { parts.append(current) }
        return parts
    }
}

/// A config file that cannot be used.
public enum ConfigError: Error, CustomStringConvertible {
    case unreadable(String)
    case invalid(path: String, line: Int, String)
    case wrongType(path: String, key: String, expected: String)
    case unknownKeys(path: String, [String])

    public var description: String {
        switch self {
        case .unreadable(let path): "cannot read config file \(path.debugDescription)"
        case .invalid(let path, let line, let why): "\(path):\(line): \(why)"
        case .wrongType(let path, let key, let expected): "\(path): \(key) must be \(expected)"
        case .unknownKeys(let path, let keys):
            "\(path): unknown keys \(keys.joined(separator: ", ")) (keys are the long flag names)"
        }
    }
}
