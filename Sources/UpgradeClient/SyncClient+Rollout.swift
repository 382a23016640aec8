import UpgradeApply
import UpgradeProtocol
import UpgradeTrust

extension SyncClient {
    /// Why the signed rollout rules keep this device where it is, and the version a pin holds it
    /// at (to be installed in the same run), or nil when it takes the release.
    static func rolloutStop(
        _ record: ChannelRecord,
        device: PlanRequest.Device,
        options: SyncOptions,
        installed: String?
    ) -> (why: String, pin: String?)? {
        switch record.decision(device: device.id, tags: options.tags, installed: installed) {
        case .take: nil
        case .hold(let why): (why, nil)
        case .pinned(let version): ("pinned at \(version) by the channel's rules", version == installed ? nil : version)
        }
    }

    /// Rolls back a release whose probation (`--confirm-within`) ran out unconfirmed and
    /// remembers it as failed; what was done, or nil when nothing was on expired probation.
    static func expireProbation(session: RootSession, now: Int64) throws -> String? {
        guard let probation = session.probation, now > probation.deadline else { return nil }
        let back = try session.rollback()
        try session.setValue(
            FailedRelease.key(probation.headerSHA256),
            FailedRelease(
                version: probation.version,
                at: Timestamps.iso(now),
                reason: "not confirmed by \(Timestamps.iso(probation.deadline)) (upgrade confirm)"
            ).encoded
        )
        try session.endProbation()
        return
            "rolled back \(probation.version), unconfirmed since \(Timestamps.iso(probation.deadline)), to \(back.toVersion ?? "the previous release")"
    }
}

/// A release that was installed here and rolled back (a failing hook or health check), kept in
/// the state directory as `failed-HEADERSHA`: version, when, why.
struct FailedRelease {
    var version: String
    var at: String
    var reason: String

    static func key(_ headerDigest: String) -> String { "failed-\(headerDigest.prefix(32))" }

    init(version: String, at: String, reason: String) {
        self.version = version
        self.at = at
        self.reason = reason
    }

    init?(_ text: String?) {
        let parts = text?.split(separator: "\t", maxSplits: 2).map(String.init) ?? []
        guard parts.count == 3 else { return nil }
        (version, at, reason) = (parts[0], parts[1], parts[2])
    }

    var encoded: String { [version, at, reason.replacingOccurrences(of: "\n", with: " ")].joined(separator: "\t") }
}
