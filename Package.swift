// swift-tools-version: 6.2
import PackageDescription

let package = Package(
    name: "upgrade",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "upgrade", targets: ["upgrade"]),
        .library(name: "UpgradeCore", targets: ["UpgradeCore"]),
        .library(name: "UpgradeScan", targets: ["UpgradeScan"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-crypto.git", from: "4.5.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1", traits: []),
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.37.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/LebJe/TOMLKit.git", from: "0.6.0"),
        .package(url: "https://github.com/groue/GRDB.swift.git", from: "7.10.0"),
        .package(url: "https://github.com/vapor/postgres-nio.git", from: "1.33.2"),
    ],
    targets: [
        // C libraries from Debian, wrapped once each by one Swift target below.
        .systemLibrary(
            name: "CXXHash",
            pkgConfig: "libxxhash",
            providers: [.apt(["libxxhash-dev"])]
        ),
        .systemLibrary(
            name: "CZstd",
            pkgConfig: "libzstd",
            providers: [.apt(["libzstd-dev"])]
        ),

        // The file-system floor: system-call errors, EINTR-safe reads and writes, atomic files,
        // one file lock, file identity. Everything that touches a disk stands on it.
        .target(name: "UpgradeSystem"),
        // Pure core: manifest, path rules, canonical encoding, diff, plan. No I/O.
        .target(
            name: "UpgradeCore",
            dependencies: [.product(name: "Crypto", package: "swift-crypto")]
        ),
        // XXH3-128 as a Swift value type (the only importer of CXXHash).
        .target(name: "UpgradeHash", dependencies: ["CXXHash", "UpgradeCore"]),
        // zstd compression as a Swift value type (the only importer of CZstd).
        .target(name: "UpgradeZstd", dependencies: ["CZstd"]),
        // Keys, signed envelopes, release headers, channel records, versions: pure, clock injected.
        .target(
            name: "UpgradeTrust",
            dependencies: ["UpgradeCore", .product(name: "Crypto", package: "swift-crypto")]
        ),
        // The release repository on disk: objects, publish, verify, catalog.
        .target(
            name: "UpgradeRepository",
            dependencies: [
                "UpgradeCore", "UpgradeScan", "UpgradeSystem", "UpgradeTrust", "UpgradeZstd", "UpgradeBundle",
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        // Linux syscalls that need _GNU_SOURCE (renameat2, O_PATH, syncfs, spawn setsid).
        .target(name: "CUpgradeSys"),
        // The wire protocol between `upgrade sync` and `upgrade serve`: pure values.
        .target(name: "UpgradeProtocol", dependencies: ["UpgradeCore"]),
        // LAN peers: announcements (UDP multicast pinned to one interface, TTL 1, on NIO datagram
        // channels), discovery, and the peer server of `upgrade share` (Hummingbird, reading the
        // root through the engine); the announcer and the watcher are services of the share.
        .target(
            name: "UpgradePeer",
            dependencies: [
                "UpgradeApply", "UpgradeCore", "UpgradeSystem", "UpgradeTrust",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // The fleet store: devices, history, first attempts per release; SQLite (GRDB) or PostgreSQL.
        .target(
            name: "UpgradeFleet",
            dependencies: [
                "UpgradeProtocol", "UpgradeTrust",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // `upgrade serve`: the plan server on Hummingbird (buildApplication apart from main). It
        // reads the repository, never a root: no dependency on the apply engine.
        .target(
            name: "UpgradeServer",
            dependencies: [
                "UpgradeCore", "UpgradeProtocol", "UpgradeRepository", "UpgradeTrust", "UpgradeZstd", "UpgradeFleet",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "HummingbirdTLS", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ]
        ),
        // `upgrade sync`: ask, verify, fetch (parallel, resumable), install through the engine, report.
        .target(
            name: "UpgradeClient",
            dependencies: [
                "UpgradeCore", "UpgradeProtocol", "UpgradeApply", "UpgradeTrust", "UpgradeZstd", "UpgradeScan",
                "UpgradePeer", "UpgradeSystem",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "TOMLKit", package: "TOMLKit"),
            ]
        ),
        // Offline bundle container: writer and random-access reader.
        .target(name: "UpgradeBundle", dependencies: ["UpgradeCore", "UpgradeSystem"]),
        // The transactional apply engine: staging, journal, commit, rollback, recovery, hooks.
        .target(
            name: "UpgradeApply",
            dependencies: [
                "UpgradeCore", "UpgradeScan", "UpgradeSystem", "UpgradeTrust", "UpgradeZstd", "UpgradeBundle",
                "CUpgradeSys",
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        // Tree scanner, stat cache, manifest files on disk.
        .target(name: "UpgradeScan", dependencies: ["UpgradeCore", "UpgradeHash", "UpgradeSystem", "CUpgradeSys"]),

        // The command-line tool: wires library calls, renders results.
        .executableTarget(
            name: "upgrade",
            dependencies: [
                "UpgradeCore", "UpgradeScan", "UpgradeTrust", "UpgradeRepository", "UpgradeApply", "UpgradeBundle",
                "UpgradeServer", "UpgradeClient", "UpgradeProtocol", "UpgradePeer", "UpgradeFleet", "UpgradeSystem",
                "CUpgradeSys",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // `make bench`: compares the project with rsync, xxhsum, zstd on the same data.
        .executableTarget(name: "upgrade-bench", dependencies: []),

        // Helpers shared by the test targets: scratch trees, deterministic bytes, running programs.
        .target(name: "UpgradeTestSupport", path: "Tests/UpgradeTestSupport"),
        .testTarget(name: "UpgradeCoreTests", dependencies: ["UpgradeCore"]),
        .testTarget(name: "UpgradeSystemTests", dependencies: ["UpgradeSystem", "UpgradeTestSupport"]),
        .testTarget(name: "UpgradeApplyTests", dependencies: ["UpgradeApply", "UpgradeCore"]),
        .testTarget(
            name: "UpgradeServerTests",
            dependencies: [
                "UpgradeServer", "UpgradeRepository", "UpgradeProtocol", "UpgradeTrust", "UpgradeCore", "UpgradeZstd",
                "UpgradeTestSupport",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(
            name: "UpgradeClientTests",
            dependencies: [
                "UpgradeClient", "UpgradeCore", "UpgradeZstd", "UpgradeTestSupport", "UpgradeApply", "UpgradeRepository",
                "UpgradeServer", "UpgradeTrust",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(
            name: "UpgradeScanTests",
            dependencies: ["UpgradeScan", "UpgradeHash", "UpgradeCore", "UpgradeTestSupport"]
        ),
        .testTarget(
            name: "UpgradePeerTests",
            dependencies: [
                "UpgradePeer",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .testTarget(name: "UpgradeHashTests", dependencies: ["UpgradeHash", "UpgradeCore", "UpgradeTestSupport"]),
        .testTarget(name: "UpgradeBundleTests", dependencies: ["UpgradeBundle", "UpgradeCore", "UpgradeTestSupport"]),
        .testTarget(name: "UpgradeProtocolTests", dependencies: ["UpgradeProtocol", "UpgradeCore", "UpgradeZstd"]),
        .testTarget(
            name: "UpgradeRepositoryTests",
            dependencies: ["UpgradeRepository", "UpgradeCore", "UpgradeTrust", "UpgradeTestSupport"]
        ),
        .testTarget(name: "UpgradeZstdTests", dependencies: ["UpgradeZstd", "UpgradeTestSupport"]),
        .testTarget(name: "UpgradeTrustTests", dependencies: ["UpgradeTrust", "UpgradeCore"]),
        .testTarget(
            name: "UpgradeFleetTests",
            dependencies: ["UpgradeFleet", "UpgradeProtocol", "UpgradeTestSupport", .product(name: "Logging", package: "swift-log")]
        ),
        .testTarget(
            name: "UpgradeCLITests",
            dependencies: [
                "UpgradeCore", "UpgradeTrust", "UpgradeRepository", "UpgradeApply", "UpgradeScan", "UpgradeBundle",
                "UpgradeProtocol", "UpgradeZstd", "UpgradeTestSupport", "CUpgradeSys",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
    ]
)

// Settings for every Swift target, in one place (swift-log's Package.swift does the same):
// Swift 6 mode is the package default; warnings fail the build. Undeclared imports fail it too,
// through `--explicit-target-dependency-import-check error` (Makefile, SWIFT_BUILD_FLAGS).
for target in package.targets where target.type != .system && target.name != "CUpgradeSys" {
    target.swiftSettings = (target.swiftSettings ?? []) + [.treatAllWarnings(as: .error)]
}
