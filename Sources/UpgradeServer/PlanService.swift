import Foundation
import Hummingbird
import Logging
import Synchronization
import UpgradeCore
import UpgradeProtocol
import UpgradeRepository
import UpgradeTrust
import UpgradeZstd

#if canImport(Glibc)
import Glibc
#endif

/// The server's work: plans from the repository, the repository's files, reports. It holds no
/// key: it serves what the publisher signed and diffs; clients verify.
final class PlanService: Sendable {
    let configuration: ServerConfiguration
    let logger: Logger
    let metrics = ServerMetrics()
    let layout: RepositoryLayout
    /// Decoded release manifests with their digest (computing one re-encodes the whole tree).
    private let manifests = LRUCache<(manifest: Manifest, digest: SHA256Hash)>(capacity: 16)
    /// Paths in which two releases differ, by "product/from/to": computed once per pair.
    private let releaseChanges = LRUCache<[String]>(capacity: 64)
    let reportsFile = Mutex<Int32?>(nil)
    private let contentIndexes = Mutex([String: (stamp: String, index: [ContentKey: SHA256Hash])]())
    /// Bounds the on-demand delta work: a burst of clients cannot run more than this many
    /// computations (each holding base, target and delta in memory) at once.
    let deltaLimiter = AdmissionQueue(permits: 2, maxWaiting: .max, what: "delta computations")
    let deltaBudget: DeltaBudget
    /// Plans computed at once, and how many may wait (503 beyond).
    let planQueue: AdmissionQueue
    let reportLimiter: ReportRateLimiter
    let fleet: FleetService?

    init(configuration: ServerConfiguration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
        layout = RepositoryLayout(root: configuration.repository)
        planQueue = AdmissionQueue(
            permits: configuration.planConcurrency,
            maxWaiting: configuration.planQueue,
            what: "plan requests"
        )
        deltaBudget = DeltaBudget(perRequest: configuration.deltasPerRequest, perMinute: configuration.deltasPerMinute)
        reportLimiter = ReportRateLimiter(
            globalRate: configuration.reportsPerSecond,
            globalBurst: configuration.reportsPerSecond * 2,
            keyRate: configuration.reportsPerDevicePerSecond,
            keyBurst: 10
        )
        let metrics = metrics
        fleet = configuration.fleet.map {
            FleetService($0, layout: RepositoryLayout(root: configuration.repository), logger: logger, metrics: metrics)
        }
    }

    deinit {
        reportsFile.withLock { descriptor in
            if let descriptor { close(descriptor) }
        }
    }

    func addRoutes(to router: Router<BasicRequestContext>) {
        router.get("healthz") { _, _ in "ok\n" }
        router.get("metrics") { _, _ in
            let fleetGauges = await self.fleet?.gauges() ?? ""
            return Response(
                status: .ok,
                headers: [.contentType: "text/plain; version=0.0.4"],
                body: .init(byteBuffer: ByteBuffer(string: self.metrics.render() + fleetGauges))
            )
        }
        fleet?.addRoutes(to: router)
        router.post("v1/plan") { request, context in try await self.plan(request, context: context) }
        router.post("v1/reports") { request, context in try await self.report(request, context: context) }
        router.post(RouterPath(ObjectPack.path)) { request, context in try await self.pack(request, context: context) }
        router.post(RouterPath(DeltaPack.path)) { request, context in
            try await self.deltaPack(request, context: context)
        }
        router.get("objects/:fanout/:sha") { request, context in try await self.object(request, context: context) }
        router.get("deltas/:fanout/:name") { request, context in try await self.delta(request, context: context) }
        router.get("releases/:product/:version/:file") { request, context in try self.releaseFile(context) }
        router.get("releases/:product/:version/manifest-from/:file") { _, context in try self.manifestPatch(context) }
        router.get("channels/:product/:channel") { _, context in try self.channelFile(context) }
        router.get("roots/:file") { _, context in try self.rootFile(context) }
    }

    // MARK: Plans

    private func plan(_ request: Request, context: BasicRequestContext) async throws -> Response {
        let started = ContinuousClock.now
        var failed = true
        defer {
            let elapsed = ContinuousClock.now - started
            metrics.countPlan(
                seconds: Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18,
                failed: failed
            )
        }
        // The body is read only once the request has its turn: a queued request holds a socket.
        let credential = try configuration.deviceTokens?.credential(request.headers[.authorization])
        let (planRequest, response) = try await planQueue.run {
            let body = try await collect(request)
            try requireEntryBound(body)
            let planRequest: PlanRequest
            do {
                planRequest = try JSONDecoder().decode(PlanRequest.self, from: body)
            } catch {
                throw HTTPError(.badRequest, message: "malformed plan request: \(JSON.describe(error))")
            }
            try configuration.deviceTokens?.require(credential, for: planRequest.device.id)
            // The contact is written while the plan is computed; the answer waits for both, so
            // a device's "last seen" is stored when it gets its plan.
            let contactFleet =
                Names.isValid(planRequest.product) && ReportSchema.problem(planRequest.device) == nil ? fleet : nil
            async let contacted: Void? = contactFleet?.contact(planRequest)
            let plan: PlanResponse
            do {
                plan = try await computePlan(planRequest)
            } catch {
                await contacted
                throw error
            }
            await contacted
            return (planRequest, plan)
        }
        failed = false
        logger.info(
            "plan",
            metadata: [
                "product": "\(planRequest.product)", "from": "\(planRequest.installed?.version ?? "-")",
                "to": "\(response.version)", "device": "\(planRequest.device.id)",
            ]
        )
        var answer = try json(response, zstd: Self.acceptsZstd(request))
        answer.headers[HTTPFields.Element.Name(PlanHeaders.releaseHeader)!] = response.header
        return answer
    }

    func computePlan(_ request: PlanRequest) async throws -> PlanResponse {
        guard Names.isValid(request.product), Names.isValid(request.channel) else {
            throw HTTPError(.badRequest, message: "invalid product or channel name")
        }
        guard let channelBytes = read(layout.channel(request.product, request.channel)) else {
            throw HTTPError(.notFound, message: "no channel \(request.channel) for product \(request.product)")
        }
        let record: ChannelRecord
        do {
            record = try ChannelRecord(unverified: SignedEnvelope(encoded: channelBytes))
        } catch {
            throw HTTPError(.internalServerError, message: "channel record unreadable: \(error)")
        }
        // `sync --version V`: any published release of the product; the client checks its signature.
        let targetVersion = request.version ?? record.version
        if let version = request.version, Version(version) == nil {
            throw HTTPError(.badRequest, message: "invalid version \(version.debugDescription)")
        }
        // Auto-halt: the channel's release, not one a device asks for by name (`--version`) or
        // that the record pins to another release (it asks again, by name, once it reads the pin).
        let pinnedElsewhere: Bool
        switch record.decision(
            device: request.device.id,
            tags: request.device.tags ?? [],
            installed: request.installed?.version
        ) {
        case .pinned: pinnedElsewhere = true
        case .take, .hold: pinnedElsewhere = false
        }
        if request.version == nil, !pinnedElsewhere {
            try await fleet?.requireOffered(
                product: request.product,
                version: targetVersion,
                installed: request.installed?.version
            )
        }
        guard let headerBytes = read(layout.header(request.product, targetVersion)) else {
            if request.version != nil {
                throw HTTPError(.notFound, message: "no release \(targetVersion) of product \(request.product)")
            }
            throw HTTPError(.internalServerError, message: "the channel points to a missing release")
        }
        let target = try manifest(request.product, targetVersion).manifest

        let client: Manifest
        var plan: Plan
        if let encoded = request.manifest {
            try requireEntryBound(manifestPrefix: encoded)
            guard let bytes = Data(base64Encoded: encoded) else {
                throw HTTPError(.badRequest, message: "manifest is not base64")
            }
            do {
                client = try Manifest(canonical: [UInt8](bytes))
                // A first install: the plan is the whole signed manifest, which the client fetches
                // anyway; it builds the plan itself instead of receiving the tree twice.
                if client.entries.isEmpty, request.accepts?.contains("local-plan") == true {
                    var response = PlanResponse(
                        channel: channelBytes,
                        header: headerBytes,
                        version: targetVersion,
                        manifestPath: "releases/\(request.product)/\(targetVersion)/manifest",
                        plan: Plan(operations: []),
                        objects: [:]
                    )
                    response.localPlan = true
                    if request.accepts?.contains("inline-plan") == true {
                        response.planJSON = PlanJSON(Plan(operations: []))
                        response.plan = ""
                    }
                    return response
                }
                plan = Plan(from: client, to: target)
            } catch {
                throw HTTPError(.badRequest, message: "client manifest: \(error)")
            }
        } else if let delta = request.delta {
            guard let installed = request.installed, Version(installed.version) != nil else {
                throw HTTPError(.badRequest, message: "a delta needs the installed version")
            }
            guard delta.changed.count + delta.removed.count <= configuration.maxEntries else {
                throw HTTPError(
                    .contentTooLarge,
                    message: "the request describes more than \(configuration.maxEntries) entries"
                )
            }
            // A release this server no longer has (pruned, or from another repository): the
            // client sends its whole manifest instead, as it does for a base mismatch.
            guard let (base, baseDigest) = try? manifest(request.product, installed.version) else {
                throw HTTPError(
                    .conflict,
                    message:
                        "release \(installed.version) of \(request.product) is not on this server; send the whole manifest"
                )
            }
            guard baseDigest.hex == delta.base else {
                throw HTTPError(
                    .conflict,
                    message: "delta base \(delta.base) is not release \(installed.version); send the whole manifest"
                )
            }
            // O(changes): only the paths the client changed and those between its release and
            // the target are looked at (the plan equals the whole-tree diff).
            do {
                let tree = try delta.changedTree(base: base)
                let between = changes(request.product, from: installed.version, base, to: targetVersion, target)
                (plan, client) = try Plan.incremental(client: tree, target: target, releaseChanges: between)
            } catch {
                throw HTTPError(.badRequest, message: "client delta: \(error)")
            }
        } else {
            throw HTTPError(.badRequest, message: "send either manifest or delta")
        }

        var objects = [String: UInt64]()
        for operation in plan.operations {
            switch operation {
            case .add(_, _, let content), .replace(_, _, let content):
                if let sha = content.sha256, let size = fileSize(layout.object(sha)) { objects[sha.hex] = size }
            default: break
            }
        }
        var response = PlanResponse(
            channel: channelBytes,
            header: headerBytes,
            version: targetVersion,
            manifestPath: "releases/\(request.product)/\(targetVersion)/manifest",
            plan: plan,
            objects: objects
        )
        response.deltas = try await chooseDeltas(plan: plan, client: client, product: request.product, objects: objects)
        if request.accepts?.contains("inline-plan") == true {
            response.planJSON = PlanJSON(plan)
            response.plan = ""
        }
        return response
    }

    /// Per written file, a delta from content the client has when it is smaller than the whole
    /// object; computed on demand (bounded) and cached in the repository.
    private func chooseDeltas(
        plan: Plan,
        client: Manifest,
        product: String,
        objects: [String: UInt64]
    ) async throws -> [String: DeltaChoice] {
        guard configuration.deltas else { return [:] }
        let bases = plan.deltaBases(client: client)
        guard !bases.isEmpty else { return [:] }
        let clientIndex = client.index()
        let contents = try contentIndex(product)
        let store = DeltaStore(repository: configuration.repository, level: configuration.deltaLevel)
        var choices = [String: DeltaChoice]()
        var computed = 0
        for operation in plan.operations {
            let target: FileContent
            switch operation {
            case .add(_, _, let content), .replace(_, _, let content): target = content
            default: continue
            }
            // A base is always content this product published (found by size and XXH3 in the
            // content index), never a digest the client names: an anonymous request cannot make
            // the server diff, and cache, pairs of its choosing.
            guard let basePath = bases[operation.path], let baseFile = clientIndex[basePath]?.file,
                let targetSHA = target.sha256,
                let baseSHA = contents[ContentKey(baseFile)], baseFile.sha256 == nil || baseFile.sha256 == baseSHA,
                baseSHA != targetSHA,
                target.size <= UInt64(configuration.maxDeltaFileSize),
                baseFile.size <= UInt64(configuration.maxDeltaFileSize)
            else { continue }
            let base = FileContent(size: baseFile.size, xxh128: baseFile.xxh128, sha256: baseSHA)
            let size: UInt64?
            if let cached = store.cachedSize(base: baseSHA, target: targetSHA) {
                size = cached == 0 ? nil : cached
            } else {
                guard computed < deltaBudget.perRequest, deltaBudget.take() else {
                    metrics.countDeltaOverBudget()
                    continue
                }
                computed += 1
                size = try await deltaLimiter.run {
                    try await offPool { try? store.size(base: base, target: target) }
                }
            }
            guard let size, size < (objects[targetSHA.hex] ?? .max) else { continue }
            choices[operation.path] = DeltaChoice(
                base: basePath,
                baseSize: base.size,
                baseXXH128: base.xxh128.hex,
                baseSHA256: baseSHA.hex,
                targetSHA256: targetSHA.hex,
                size: size,
                path: DeltaStore.relativePath(base: baseSHA, target: targetSHA)
            )
        }
        return choices
    }

    /// The content index of a product, rebuilt when its releases change.
    private func contentIndex(_ product: String) throws -> [ContentKey: SHA256Hash] {
        let releases = (try? Catalog(repository: configuration.repository).releases(of: product)) ?? []
        let stamp = releases.map(\.header.manifestSHA256).joined()
        if let cached = contentIndexes.withLock({ $0[product] }), cached.stamp == stamp { return cached.index }
        let index = try Catalog(repository: configuration.repository).contentIndex(of: product)
        contentIndexes.withLock { $0[product] = (stamp, index) }
        return index
    }

    /// The paths in which two releases of a product differ, cached per pair.
    private func changes(
        _ product: String,
        from version: String,
        _ base: Manifest,
        to targetVersion: String,
        _ target: Manifest
    ) -> [String] {
        let key = "\(product)/\(version)/\(targetVersion)"
        if let cached = releaseChanges.get(key) { return cached }
        let paths = base.differingPaths(from: target)
        releaseChanges.put(key, paths)
        return paths
    }

    private func manifest(_ product: String, _ version: String) throws -> (manifest: Manifest, digest: SHA256Hash) {
        guard Names.isValid(product), Version(version) != nil else {
            throw HTTPError(.badRequest, message: "invalid release name")
        }
        if let cached = manifests.get("\(product)/\(version)") { return cached }
        guard let bytes = read(layout.manifest(product, version)) else {
            throw HTTPError(.notFound, message: "no release \(product) \(version)")
        }
        do {
            let manifest = try Manifest(canonical: bytes)
            let release = (manifest, manifest.digest)  // once per load, not per request
            manifests.put("\(product)/\(version)", release)
            return release
        } catch {
            throw HTTPError(.internalServerError, message: "release manifest unreadable: \(error)")
        }
    }

}
