import Foundation

/// The JSON form of a plan (see docs/format.md, "Plan JSON").
extension Plan {
    /// The value of the JSON `format` field.
    public static let jsonFormat = "upgrade-plan/1"

    /// Deterministic JSON: the same plan always gives the same bytes.
    public func jsonEncoded() -> Data {
        JSON.encode(PlanJSON(format: Self.jsonFormat, summary: summary, operations: operations.map(OperationJSON.init)))
    }
}

/// The JSON document of a plan, as a Codable value (the plan response carries it inline).
public struct PlanJSON: Codable, Sendable {
    public var format: String
    public var summary: Plan.Summary
    public var operations: [OperationJSON]

    public init(_ plan: Plan) {
        format = Plan.jsonFormat
        summary = plan.summary
        operations = plan.operations.map(OperationJSON.init)
    }

    init(format: String, summary: Plan.Summary, operations: [OperationJSON]) {
        self.format = format
        self.summary = summary
        self.operations = operations
    }
}

/// One plan operation in JSON: in plans on the wire and in the `operations` of `--json` output.
public struct OperationJSON: Codable, Sendable, Hashable {
    /// `mkdir`, `add`, `replace`, `symlink`, `delete` or `chmod`.
    public var op: String
    public var path: String
    /// For `delete`: what is deleted.
    public var kind: String?
    /// Octal permission bits.
    public var mode: String?
    public var size: UInt64?
    public var xxh128: String?
    public var sha256: String?
    /// For `symlink`: the link's target.
    public var target: String?

    public init(_ operation: PlanOperation) {
        op = operation.name
        path = operation.path
        switch operation {
        case .mkdir(_, let mode), .chmod(_, let mode):
            self.mode = FileMode.string(mode)
        case .add(_, let mode, let content), .replace(_, let mode, let content):
            self.mode = FileMode.string(mode)
            size = content.size
            xxh128 = content.xxh128.hex
            sha256 = content.sha256?.hex
        case .symlink(_, let target):
            self.target = target
        case .delete(_, let kind):
            self.kind = kind.description
        }
    }
}

extension Plan {
    /// Decodes the JSON form, checking every field; paths are validated when the plan is applied.
    public init(json data: Data) throws(PlanDecodingError) {
        let document: PlanJSON
        do {
            document = try JSONDecoder().decode(PlanJSON.self, from: data)
        } catch {
            throw .malformed("JSON: \(JSON.describe(error))")
        }
        try self.init(document: document)
    }

    /// The plan a decoded JSON document describes, every field checked.
    public init(document: PlanJSON) throws(PlanDecodingError) {
        guard document.format == Self.jsonFormat else {
            throw .malformed("format is \(document.format.debugDescription)")
        }
        var operations = [PlanOperation]()
        operations.reserveCapacity(document.operations.count)
        for (index, operation) in document.operations.enumerated() {
            operations.append(try operation.operation(index))
        }
        self.init(operations: operations)
    }
}

extension OperationJSON {
    func operation(_ index: Int) throws(PlanDecodingError) -> PlanOperation {
        func fail(_ why: String) -> PlanDecodingError {
            .malformed("operation \(index + 1) (\(op) \(path.debugDescription)): \(why)")
        }
        func parsedMode() throws(PlanDecodingError) -> UInt32 {
            guard let mode, let value = FileMode.parse(mode) else { throw fail("needs an octal mode") }
            return value
        }
        func content() throws(PlanDecodingError) -> FileContent {
            guard let size, let hex = xxh128, let xxh = XXH128Digest(hex: hex) else {
                throw fail("needs size and xxh128")
            }
            var sha: SHA256Hash?
            if let hex = sha256 {
                guard let digest = SHA256Hash(hex: hex) else { throw fail("bad sha256") }
                sha = digest
            }
            return FileContent(size: size, xxh128: xxh, sha256: sha)
        }
        switch op {
        case "mkdir": return .mkdir(path: path, mode: try parsedMode())
        case "add": return .add(path: path, mode: try parsedMode(), content: try content())
        case "replace": return .replace(path: path, mode: try parsedMode(), content: try content())
        case "symlink":
            guard let target else { throw fail("needs a target") }
            return .symlink(path: path, target: target)
        case "delete":
            guard let kind, let parsed = EntryKind(name: kind) else { throw fail("needs a kind") }
            return .delete(path: path, kind: parsed)
        case "chmod": return .chmod(path: path, mode: try parsedMode())
        default: throw fail("unknown operation")
        }
    }
}

/// Why bytes are not a plan.
public enum PlanDecodingError: Error, Hashable, Sendable, CustomStringConvertible {
    case malformed(String)

    public var description: String {
        switch self {
        case .malformed(let why): "malformed plan: \(why)"
        }
    }
}
