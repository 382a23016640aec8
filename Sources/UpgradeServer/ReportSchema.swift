import Foundation
import UpgradeCore
import UpgradeProtocol
import UpgradeTrust

/// What a report must look like before it is counted or written: names and versions well
/// formed, strings short and free of control characters, lists short, numbers finite.
enum ReportSchema {
    /// The result classes `/metrics` counts; anything else is `other`, so a client cannot
    /// create label values (or lines) of its choosing.
    static let resultClasses = ["installed", "rolled back", "up to date", "dry run", "failed", "skipped", "held"]

    /// The class of a reported result; clients since the typed JSON contract send the
    /// hyphenated tokens (`up-to-date`), older ones the spaced words.
    static func resultClass(_ reported: String) -> String {
        let result =
            ["up-to-date", "dry-run", "rolled-back"].first { reported.hasPrefix($0) }.map {
                $0.replacingOccurrences(of: "-", with: " ") + reported.dropFirst($0.count)
            } ?? reported
        return resultClasses.first { result == $0 || result.hasPrefix($0 + ":") || result.hasPrefix($0 + " ") }
            ?? "other"
    }

    /// Why a device description is refused (for the fleet store), or nil when it is well formed.
    static func problem(_ device: PlanRequest.Device) -> String? {
        for (field, value, limit) in [
            ("device.id", device.id, 128), ("device.os", device.os, 64), ("device.arch", device.arch, 64),
            ("device.platform", device.platform ?? "", 64), ("device.osVersion", device.osVersion ?? "", 128),
            ("device.model", device.model ?? "", 128),
        ] {
            if let problem = text(value, limit: limit) { return "\(field) \(problem)" }
        }
        guard !device.id.isEmpty else { return "device.id is empty" }
        let tags = device.tags ?? []
        guard tags.count <= 32 else { return "device.tags has more than 32 items" }
        for tag in tags {
            if let problem = text(tag, limit: 64) { return "a tag \(problem)" }
            if tag.isEmpty || tag.contains(",") { return "a tag is empty or contains a comma" }
        }
        return nil
    }

    /// Why `outcome` is refused, or nil when it is well formed.
    static func problem(_ outcome: SyncOutcome) -> String? {
        guard Names.isValid(outcome.product) else { return "product is not a valid name" }
        if let problem = problem(outcome.device) { return problem }
        if let problem = text(outcome.result, limit: 512) { return "result \(problem)" }
        if let digest = outcome.releaseDigest, SHA256Hash(hex: digest) == nil {
            return "releaseDigest is not a SHA-256 hex digest"
        }
        if let via = outcome.via, via != "online", via != "offline" { return "via is not online or offline" }
        if let at = outcome.at, (try? Date(at, strategy: .iso8601)) == nil { return "at is not an ISO 8601 time" }
        for (field, version) in [("fromVersion", outcome.fromVersion), ("toVersion", outcome.toVersion)] {
            if let version, Version(version) == nil { return "\(field) is not a version" }
        }
        guard outcome.durationSeconds.isFinite, outcome.durationSeconds >= 0 else {
            return "durationSeconds is not a non-negative number"
        }
        guard (outcome.deltas ?? 0) >= 0 else { return "deltas is negative" }
        for (field, list) in [("fallbacks", outcome.fallbacks ?? []), ("badPeers", outcome.badPeers ?? [])] {
            guard list.count <= 1000 else { return "\(field) has more than 1000 items" }
            for item in list {
                if let problem = text(item, limit: 1024) { return "an item of \(field) \(problem)" }
            }
        }
        return nil
    }

    private static func text(_ value: String, limit: Int) -> String? {
        if value.utf8.count > limit { return "is longer than \(limit) bytes" }
        if value.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) {
            return "contains a control character"
        }
        return nil
    }
}
