import Foundation
import TOMLKit

/// The TOML file `upgrade sync --config FILE` reads (TOML 1.0, parsed by toml++ through
/// TOMLKit): top-level `key = value` pairs whose keys are the long flag names; strings,
/// integers, floats, booleans and arrays of strings (one line or many). Errors name the file
/// and the line: syntax errors from the parser, type errors and unknown keys from the line the
/// key is on.
public struct ConfigFile: Sendable {
    /// A value the flags take.
    public enum Value: Sendable, Equatable {
        case string(String)
        case number(Double)
        case bool(Bool)
        case strings([String])
        /// Any other TOML value (a table, a date, an array of numbers): named in type errors.
        case other(String)
    }

    public let values: [String: Value]
    public let path: String
    private let lines: [String: Int]

    /// Parses `text`; errors name the line.
    public init(text: String, path: String) throws(ConfigError) {
        let table: TOMLTable
        do {
            table = try TOMLTable(string: text)
        } catch let error as TOMLParseError {
            throw .invalid(path: path, line: error.source.begin.line, error.description)
        } catch {
            throw .invalid(path: path, line: 0, "\(error)")
        }
        var values = [String: Value]()
        for key in table.keys {
            guard let value = table[key] else { continue }
            values[key] = Self.value(value)
        }
        self.values = values
        self.path = path
        self.lines = Self.keyLines(text, keys: Set(values.keys))
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
        default: throw wrongType(key, "a string")
        }
    }

    public func strings(_ key: String) throws(ConfigError) -> [String]? {
        switch values[key] {
        case nil: return nil
        case .string(let s): return [s]
        case .strings(let list): return list
        default: throw wrongType(key, "a string or an array of strings")
        }
    }

    public func number(_ key: String) throws(ConfigError) -> Double? {
        switch values[key] {
        case nil: return nil
        case .number(let n): return n
        default: throw wrongType(key, "a number")
        }
    }

    public func bool(_ key: String) throws(ConfigError) -> Bool? {
        switch values[key] {
        case nil: return nil
        case .bool(let b): return b
        default: throw wrongType(key, "true or false")
        }
    }

    /// Keys not in `known`, for a clear error about typos.
    public func unknownKeys(_ known: Set<String>) -> [String] { values.keys.filter { !known.contains($0) }.sorted() }

    /// The error for unknown keys, naming the line of the first.
    public func unknownKeysError(_ keys: [String]) -> ConfigError {
        .unknownKeys(path: path, line: keys.compactMap { lines[$0] }.min() ?? 0, keys)
    }

    private func wrongType(_ key: String, _ expected: String) -> ConfigError {
        let found: String
        switch values[key] {
        case .string: found = "a string"
        case .number: found = "a number"
        case .bool: found = "a boolean"
        case .strings: found = "an array"
        case .other(let what): found = what
        case nil: found = "nothing"
        }
        return .wrongType(path: path, line: lines[key] ?? 0, key: key, expected: expected, found: found)
    }

    private static func value(_ value: any TOMLValueConvertible) -> Value {
        switch value.type {
        case .string: return .string(value.string ?? "")
        case .int: return .number(Double(value.int ?? 0))
        case .double: return .number(value.double ?? 0)
        case .bool: return .bool(value.bool ?? false)
        case .array:
            guard let array = value.array else { return .other("an array") }
            var strings = [String]()
            for item in array {
                guard item.type == .string, let string = item.string else { return .other("an array of non-strings") }
                strings.append(string)
            }
            return .strings(strings)
        case .table: return .other("a table")
        default: return .other("a \(value.type)")
        }
    }

    /// The line each top-level key is defined on (for messages; TOMLKit keeps no positions).
    private static func keyLines(_ text: String, keys: Set<String>) -> [String: Int] {
        var lines = [String: Int]()
        for (index, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.drop { $0 == " " || $0 == "\t" }
            guard let equals = line.firstIndex(of: "=") else { continue }
            var key = line[..<equals].trimmingCharacters(in: .whitespaces)
            if key.count >= 2, key.first == "\"" || key.first == "'", key.last == key.first {
                key = String(key.dropFirst().dropLast())
            }
            if keys.contains(key), lines[key] == nil { lines[key] = index + 1 }
        }
        return lines
    }
}

/// A config file that cannot be used. Messages name the file and the line (`FILE:LINE: …`).
public enum ConfigError: Error, CustomStringConvertible {
    case unreadable(String)
    case invalid(path: String, line: Int, String)
    case wrongType(path: String, line: Int, key: String, expected: String, found: String)
    case unknownKeys(path: String, line: Int, [String])

    public var description: String {
        func at(_ path: String, _ line: Int) -> String { line > 0 ? "\(path):\(line)" : path }
        switch self {
        case .unreadable(let path): return "cannot read config file \(path.debugDescription)"
        case .invalid(let path, let line, let why): return "\(at(path, line)): \(why)"
        case .wrongType(let path, let line, let key, let expected, let found):
            return "\(at(path, line)): \(key) must be \(expected), not \(found)"
        case .unknownKeys(let path, let line, let keys):
            return "\(at(path, line)): unknown keys \(keys.joined(separator: ", ")) (keys are the long flag names)"
        }
    }
}
