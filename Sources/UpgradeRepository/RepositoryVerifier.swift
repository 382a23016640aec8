import Crypto
import UpgradeCore
import UpgradeSystem
public import UpgradeTrust

/// One thing wrong with a repository, named by its path relative to the repository root.
public struct RepositoryFinding: Hashable, Sendable, CustomStringConvertible {
    public let path: String
    public let message: String

    public var description: String { "\(path): \(message)" }
}

/// The result of checking a repository.
public struct RepositoryReport: Sendable {
    /// Problems: a client would refuse or fail on these. Any problem means a non-zero exit.
    public var problems: [RepositoryFinding] = []
    /// Harmless leftovers (an interrupted publish, unreferenced objects) and expired releases.
    public var warnings: [RepositoryFinding] = []
    public var releases = 0
    public var objects = 0
    public var channels = 0
}

/// Checks every signature, every manifest digest, every object's content and size, and every
/// channel record of a repository.
public struct RepositoryVerifier: Sendable {
    let layout: RepositoryLayout
    let trusted: TrustedKeys
    let now: Int64

    /// A verifier trusting `trusted`, judging expiry at `now`.
    public init(repository: String, trusted: TrustedKeys, now: Int64 = Timestamps.now()) {
        layout = RepositoryLayout(root: repository)
        self.trusted = trusted
        self.now = now
    }

    public func verify() -> RepositoryReport {
        var report = RepositoryReport()
        func problem(_ path: String, _ message: String) {
            report.problems.append(RepositoryFinding(path: layout.relative(path), message: message))
        }
        func warning(_ path: String, _ message: String) {
            report.warnings.append(RepositoryFinding(path: layout.relative(path), message: message))
        }

        guard FileSystem.exists(layout.marker) else {
            problem(layout.marker, "missing: \(layout.root.debugDescription) is not an upgrade repository")
            return report
        }
        var required = [SHA256Hash: (size: UInt64, by: String)]()
        var headerDigests = [String: (sha: SHA256Hash, sequence: UInt64)]()

        for product in FileSystem.list(layout.releases) {
            for version in FileSystem.list(layout.productReleases(product)) {
                let headerPath = layout.header(product, version)
                let manifestPath = layout.manifest(product, version)
                guard FileSystem.exists(headerPath) else {
                    warning(
                        layout.release(product, version),
                        "incomplete release without a header (interrupted publish): ignored; publish it again"
                    )
                    continue
                }
                report.releases += 1
                let header: ReleaseHeader
                do {
                    let bytes = try AtomicFile.read(headerPath)
                    // Expiry is a client decision; here an expired release is a warning.
                    header = try ReleaseHeader.verify(SignedEnvelope(encoded: bytes), trusted: trusted, now: .min)
                    headerDigests["\(product)/\(version)"] = (SHA256Hash.of(bytes), header.sequence)
                } catch {
                    problem(headerPath, "\(error)")
                    continue
                }
                if header.product != product || header.version != version {
                    problem(
                        headerPath,
                        "signed for \(header.product) \(header.version), stored as \(product) \(version)"
                    )
                }
                if header.expires <= now { warning(headerPath, "release expired at \(Timestamps.iso(header.expires))") }
                let manifest: Manifest
                do {
                    let bytes = try AtomicFile.read(manifestPath)
                    let digest = SHA256Hash.of(bytes)
                    guard digest.hex == header.manifestSHA256 else {
                        problem(
                            manifestPath,
                            "SHA-256 \(digest.hex) does not match the signed manifest digest \(header.manifestSHA256)"
                        )
                        continue
                    }
                    manifest = try Manifest(canonical: bytes)
                    try header.check(manifest)
                } catch {
                    problem(manifestPath, "\(error)")
                    continue
                }
                for entry in manifest.entries {
                    guard let file = entry.file else { continue }
                    guard let sha = file.sha256 else {
                        problem(manifestPath, "file \(entry.path.debugDescription) has no SHA-256")
                        continue
                    }
                    if let known = required[sha], known.size != file.size {
                        problem(
                            manifestPath,
                            "file \(entry.path.debugDescription) has size \(file.size) but \(known.by) gives \(known.size) for the same content"
                        )
                    }
                    required[sha] = (file.size, "\(product) \(version)")
                }
            }
        }

        let store = ObjectStore(layout: layout, level: 0)
        for (sha, requirement) in required.sorted(by: { $0.key < $1.key }) {
            report.objects += 1
            if let failure = store.verify(sha, size: requirement.size) {
                problem(layout.object(sha), "\(failure) (needed by \(requirement.by))")
            }
        }
        for directory in FileSystem.list(layout.objects) {
            for name in FileSystem.list(layout.objects + "/" + directory) {
                let path = layout.objects + "/" + directory + "/" + name
                if name.contains(".tmp-") {
                    warning(path, "temporary file of an interrupted publish")
                } else if let sha = SHA256Hash(hex: name), sha.hex.hasPrefix(directory) {
                    if required[sha] == nil { warning(path, "not referenced by any release") }
                } else {
                    warning(path, "not an object name")
                }
            }
        }

        for product in FileSystem.list(layout.channels) {
            for channel in FileSystem.list(layout.productChannels(product)) {
                let path = layout.channel(product, channel)
                if channel.contains(".tmp-") {
                    warning(path, "temporary file of an interrupted publish")
                    continue
                }
                report.channels += 1
                do {
                    let record = try ChannelRecord.verify(
                        SignedEnvelope(encoded: AtomicFile.read(path)),
                        trusted: trusted,
                        now: now
                    )
                    guard record.product == product, record.channel == channel else {
                        problem(path, "signed for \(record.product)/\(record.channel)")
                        continue
                    }
                    guard let target = headerDigests["\(product)/\(record.version)"] else {
                        problem(path, "points to \(product) \(record.version), which is not a verified release")
                        continue
                    }
                    if target.sha.hex != record.headerSHA256 || target.sequence != record.releaseSequence {
                        problem(path, "points to a header of \(product) \(record.version) other than the one published")
                    }
                } catch {
                    problem(path, "\(error)")
                }
            }
        }
        // Temporary files beside manifests and headers.
        for product in FileSystem.list(layout.releases) {
            for version in FileSystem.list(layout.productReleases(product)) {
                for name in FileSystem.list(layout.release(product, version)) where name.contains(".tmp-") {
                    warning(layout.release(product, version) + "/" + name, "temporary file of an interrupted publish")
                }
            }
        }
        return report
    }
}
