import Crypto
import Foundation
import Synchronization
import UpgradeCore
import UpgradeScan
import UpgradeSystem
public import UpgradeTrust
import UpgradeZstd

#if canImport(Glibc)
import Glibc
#endif

extension Publisher {
    /// Points the channel at the release, unless it already points at a later one.
    func updateChannel(
        _ request: PublishRequest,
        header: ReleaseHeader,
        headerBytes: [UInt8],
        catalog: Catalog,
        root: RootDocument?
    ) throws -> ChannelRecord? {
        let current = catalog.channel(request.product, request.channel)
        // A record the repository's root does not authorize (a wrong or leaked key) does not
        // hold the channel: it is replaced, whatever release it points at.
        var authorizedRecord = true
        if let root,
            let bytes = try? AtomicFile.read(layout.channel(request.product, request.channel)),
            let envelope = try? SignedEnvelope(encoded: bytes)
        {
            authorizedRecord =
                envelope.validSigners(among: root.keys(for: .channel)).count >= root.threshold(for: .channel)
        }
        if let current, authorizedRecord, current.releaseSequence > header.sequence { return nil }
        // A new release starts its own rollout; canary tags and pins carry over.
        var rollout = current?.rollout
        if current?.version != header.version || request.rolloutPercent != nil {
            rollout?.percent = request.rolloutPercent ?? 100
            rollout?.paused = false
            if rollout == nil, let percent = request.rolloutPercent { rollout = Rollout(percent: percent) }
        }
        let record = ChannelRecord(
            product: request.product,
            channel: request.channel,
            version: header.version,
            releaseSequence: header.sequence,
            headerSHA256: SHA256Hash.of(headerBytes),
            sequence: (current?.sequence ?? 0) + 1,
            created: request.now,
            expires: request.now + request.channelLifetime,
            rollout: rollout
        )
        try FileSystem.makeDirectories(layout.productChannels(request.product))
        try AtomicFile.write(
            record.signed(with: channelKeys).encoded(),
            to: layout.channel(request.product, request.channel)
        )
        return record
    }

    /// Signs a new record for a channel: pointed at `version` (any published release: an older
    /// one is a signed revert), its rollout rules changed by `change`; the sequence grows, so
    /// clients that saw the old record refuse it from now on.
    public func setChannel(
        product: String,
        channel: String,
        version: String?,
        lifetime: Int64 = 30 * 86_400,
        now: Int64 = Timestamps.now(),
        change: (inout Rollout) -> Void
    ) throws -> ChannelRecord {
        guard Names.isValid(product) else { throw PublishError.invalidName("product", product) }
        guard Names.isValid(channel) else { throw PublishError.invalidName("channel", channel) }
        let authorized = try RootFiles.newest(layout.root)
        try RootFiles.requireAuthorized(channelKeys, role: .channel, root: authorized)
        let lock = try FileLock(layout.lockFile, mode: .exclusive, timeout: nil)
        defer { withExtendedLifetime(lock) {} }
        let catalog = Catalog(layout: layout)
        let current = catalog.channel(product, channel)
        guard let wanted = version ?? current?.version else {
            throw PublishError.missing("channel \(product)/\(channel) has no record yet; give --version")
        }
        guard let release = try catalog.releases(of: product).first(where: { $0.header.version == wanted }) else {
            throw PublishError.missing("\(product) \(wanted) is not published in \(layout.root)")
        }
        var rollout = current?.rollout ?? Rollout()
        if current != nil && current?.version != wanted {
            rollout.percent = 100
            rollout.paused = false
        }
        change(&rollout)
        guard (0...100).contains(rollout.percent) else {
            throw PublishError.missing("--percent \(rollout.percent) is outside 0...100")
        }
        let record = ChannelRecord(
            product: product,
            channel: channel,
            version: wanted,
            releaseSequence: release.header.sequence,
            headerSHA256: SHA256Hash.of(release.headerBytes),
            sequence: (current?.sequence ?? 0) + 1,
            created: now,
            expires: now + lifetime,
            rollout: rollout == Rollout() ? nil : rollout
        )
        try FileSystem.makeDirectories(layout.productChannels(product))
        try AtomicFile.write(record.signed(with: channelKeys).encoded(), to: layout.channel(product, channel))
        return record
    }
}
