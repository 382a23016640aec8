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

struct PlanJSON: Codable {
    var format: String
    var summary: Plan.Summary
    var operations: [OperationJSON]
}

struct OperationJSON: Codable {
    var op: String
    var path: String
    var kind: String?
    var mode: String?
    var size: UInt64?
    var xxh128: String?
    var sha256: String?
    var target: String?

    init(_ operation: PlanOperation) {
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
