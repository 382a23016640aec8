import ArgumentParser
import Foundation
import UpgradeRepository
import UpgradeTrust

/// `upgrade releases`.
struct ReleasesCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "releases",
        abstract: "List the products, versions and channels of a repository (signatures unchecked; see verify-repo)."
    )

    @Option(help: "Repository directory.") var repo: String
    @Option(help: "Only this product.") var product: String?
    @Flag(help: "Print JSON.") var json = false

    /// One product in `--json` (docs/format.md, "Command output").
    struct ProductJSON: Encodable {
        struct Release: Encodable {
            var version: String
            var sequence: UInt64
            var created: String
            var expires: String
            var entries: Int
            var totalSize: UInt64
            var platform: String
        }
        struct Channel: Encodable {
            var version: String
            var sequence: UInt64
            var expires: String
        }
        var product: String
        var releases: [Release]
        var channels: [String: Channel]
    }

    func run() async throws {
        if json { JSONOutput.request(command: "releases") }
        let catalog = Catalog(repository: repo)
        let products = product.map { [$0] } ?? catalog.products()
        var document = [ProductJSON]()
        for product in products {
            let releases = try catalog.releases(of: product)
            let channels = catalog.channels(of: product).compactMap { catalog.channel(product, $0) }
            if json {
                document.append(
                    ProductJSON(
                        product: product,
                        releases: releases.map {
                            .init(
                                version: $0.header.version,
                                sequence: $0.header.sequence,
                                created: Timestamps.iso($0.header.created),
                                expires: Timestamps.iso($0.header.expires),
                                entries: $0.header.entries,
                                totalSize: $0.header.totalSize,
                                platform: $0.header.platform
                            )
                        },
                        channels: Dictionary(
                            channels.map {
                                (
                                    $0.channel,
                                    .init(
                                        version: $0.version,
                                        sequence: $0.sequence,
                                        expires: Timestamps.iso($0.expires)
                                    )
                                )
                            },
                            uniquingKeysWith: { first, _ in first }
                        )
                    )
                )
                continue
            }
            print(product)
            for release in releases {
                let tags = channels.filter { $0.releaseSequence == release.header.sequence }.map(\.channel)
                print(
                    "  \(release.header.version.padding(toLength: 14, withPad: " ", startingAt: 0)) #\(release.header.sequence)  \(Timestamps.iso(release.header.created))  \(release.header.entries) entries, \(Terminal.bytes(release.header.totalSize))\(tags.isEmpty ? "" : "  [\(tags.joined(separator: ", "))]")"
                )
            }
        }
        if json {
            struct Body: Encodable { var products: [ProductJSON] }
            JSONOutput.print(command: "releases", Body(products: document))
        }
    }
}
