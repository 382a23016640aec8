import Crypto
import Foundation
import UpgradeCore
public import UpgradeTrust

/// The root of trust a root directory holds (`STATE/roots/N.json`, every root it verified, so a
/// neighbour can be handed the chain; `STATE/roots/anchor` names the `--trust` it grew from).
///
/// A client is given its first root once (`--trust`); from then on it walks forward: root N+1
/// is taken only when signed by a threshold of root N's root keys and a threshold of its own.
/// Keys rotate in-band through whatever delivers roots: the server, a mirror, a bundle, a peer.
extension RootSession {
    /// Largest root document read from any source.
    public static let maxRootBytes = 64 << 10

    /// The newest root stored for this anchor, or the anchor's own root when none is (or the
    /// anchor changed: a new `--trust` starts a new chain).
    public func trustedRoot(anchor: TrustedKeys) -> RootDocument {
        let fingerprint = Self.fingerprint(anchor.root)
        guard value("roots/anchor") == fingerprint else { return anchor.root }
        var newest = anchor.root
        for name in (try? store.tree.subdirectory("roots").list()) ?? [] where name.hasSuffix(".json") {
            guard let version = UInt64(name.dropLast(5)), version > newest.version,
                let bytes = store.read("roots/\(name)"),
                let envelope = try? SignedEnvelope(encoded: bytes),
                let root = try? RootDocument(unverified: envelope), root.version == version
            else { continue }
            newest = root
        }
        return newest
    }

    /// The stored root `version` (file bytes), for handing the chain on (peers).
    public func storedRoot(_ version: UInt64) -> [UInt8]? {
        store.read("roots/\(version).json")
    }

    /// The root this run trusts: the newest stored for `anchor`, walked forward through the
    /// roots `fetch` returns for version N+1, N+2, … until it returns nil; each is verified and
    /// stored. Throws when one does not verify or the newest has expired at `now`. Signatures
    /// by keys a rotation revoked count no more, and the floors they set are discarded
    /// (``channelFloor(_:root:)``, ``installedReleaseIsTrusted(by:)``).
    public func advanceTrust(
        anchor: TrustedKeys,
        now: Int64,
        fetch: (UInt64) async throws -> [UInt8]?
    ) async throws -> TrustedKeys {
        var current = trustedRoot(anchor: anchor)
        var stored = false
        for _ in 0..<1024 {
            let version = current.version + 1
            guard let bytes = try await fetch(version) else { break }
            let next: RootDocument
            do {
                guard bytes.count <= Self.maxRootBytes else {
                    throw TrustError.malformed("root \(version) is larger than \(Self.maxRootBytes) bytes")
                }
                next = try current.verifyNext(SignedEnvelope(encoded: bytes))
            } catch let error as TrustError {
                // A client given bare keys (the implicit root 0) whose repository's root 1 is
                // not signed by one of them keeps its keys: it was never on that chain, and
                // refusing every sync the day a publisher adds a root would break the fleet.
                if current.version == 0 { break }
                throw ApplyError.verification("root \(version): \(error)")
            }
            if !stored {
                _ = try directory("roots")
                try setValue("roots/anchor", Self.fingerprint(anchor.root))
                stored = true
            }
            try store.write("roots/\(version).json", bytes)
            current = next
        }
        do {
            try current.checkExpiry(now: now)
        } catch {
            throw ApplyError.verification("\(error); the publisher must sign a new root")
        }
        return TrustedKeys(root: current)
    }

    /// ``advanceTrust(anchor:now:fetch:)`` through the roots of a bundle's roots section.
    public func advanceTrust(anchor: TrustedKeys, now: Int64, files: [[UInt8]]) async throws -> TrustedKeys {
        var roots = [UInt64: [UInt8]]()
        for bytes in files {
            if let envelope = try? SignedEnvelope(encoded: bytes), let root = try? RootDocument(unverified: envelope) {
                roots[root.version] = bytes
            }
        }
        let found = roots
        return try await advanceTrust(anchor: anchor, now: now) { found[$0] }
    }

    /// Names an anchor: SHA-256 over its version and sorted keys and roles.
    static func fingerprint(_ root: RootDocument) -> String {
        var text = "\(root.version)"
        for (id, key) in root.keys.sorted(by: { $0.key < $1.key }) { text += "|\(id)=\(key)" }
        for role in Role.allCases {
            text +=
                "|\(role.rawValue):\(root.threshold(for: role)):\((root.roles[role]?.keyids ?? []).joined(separator: ","))"
        }
        return SHA256Hash(bytes: Array(SHA256.hash(data: Array(text.utf8))))!.hex
    }

    // MARK: Sequence floors

    /// The channel sequence floor for `name`, unless every key that set it has since been
    /// revoked from the channel role of `root` (fast-forward recovery from a leaked key).
    /// Floors written before signers were recorded count as they are.
    public func channelFloor(_ name: String, root: RootDocument) -> UInt64 {
        guard let text = value(name) else { return 0 }
        let parts = text.split(separator: " ")
        guard let sequence = parts.first.flatMap({ UInt64($0) }) else { return 0 }
        guard parts.count > 1 else { return sequence }
        let signers = parts[1].split(separator: ",").map(String.init)
        let trusted = Set(root.roles[.channel]?.keyids ?? [])
        return signers.contains(where: trusted.contains) ? sequence : 0
    }

    /// Records the channel sequence floor for `name` with the keys that signed it.
    public func setChannelFloor(_ name: String, sequence: UInt64, signers: Set<String>) throws {
        try setValue(name, signers.isEmpty ? "\(sequence)" : "\(sequence) \(signers.sorted().joined(separator: ","))")
    }

    /// Whether the installed release's header is signed as `root` requires for releases. A
    /// release whose keys were revoked sets no floor: the next trusted release may have a lower
    /// sequence and is installed without `--allow-downgrade`.
    public func installedReleaseIsTrusted(by root: RootDocument) -> Bool {
        guard let installed = installedHeader, let envelope = try? SignedEnvelope(encoded: installed.headerBytes)
        else { return true }
        return envelope.validSigners(among: root.keys(for: .release)).count >= root.threshold(for: .release)
    }
}
