import Crypto
import Foundation
import Hummingbird
import UpgradeCore

/// Per-device credentials: a file of `DEVICE-ID SHA256-HEX` lines (`#` comments), the SHA-256
/// of each device's bearer token. The file holds no secret; `upgrade fleet token` writes it.
public struct DeviceTokens: Sendable {
    /// Device id by token digest.
    private let devices: [SHA256Hash: String]

    public var count: Int { devices.count }

    public init(contentsOf path: String) throws {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw ServerSetupError(description: "--device-tokens: cannot read \(path)")
        }
        try self.init(text: text, source: path)
    }

    public init(text: String, source: String) throws {
        var devices = [SHA256Hash: String]()
        for (number, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let fields = line.split(whereSeparator: \.isWhitespace)
            if fields.isEmpty || fields[0].hasPrefix("#") { continue }
            guard fields.count == 2, let digest = SHA256Hash(hex: fields[1]) else {
                throw ServerSetupError(
                    description: "--device-tokens: \(source) line \(number + 1) is not `DEVICE-ID SHA256-HEX`"
                )
            }
            devices[digest] = String(fields[0])
        }
        self.devices = devices
    }

    /// A new token for `device` (256 random bits, hex) and the line the tokens file gets for it.
    public static func issue(for device: String) -> (token: String, line: String) {
        var random = SystemRandomNumberGenerator()
        let token = (0..<32).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &random)) }.joined()
        return (token, "\(device) \(digest(token).hex)\n")
    }

    /// Whether `device` can be a tokens file's device id: 1-128 bytes, no white space.
    public static func isValidDevice(_ device: String) -> Bool {
        !device.isEmpty && device.utf8.count <= 128 && !device.contains(where: { $0.isWhitespace || $0.isNewline })
    }

    /// The digest of a token as the file records it.
    public static func digest(_ token: String) -> SHA256Hash {
        SHA256Hash(bytes: Array(SHA256.hash(data: Data(token.utf8))))!
    }

    /// The device an `Authorization: Bearer` header belongs to; 401 without a known token.
    func credential(_ authorization: String?) throws -> String {
        guard let authorization, authorization.hasPrefix("Bearer ") else {
            throw Self.unauthorized("a device token is required (Authorization: Bearer)")
        }
        let token = authorization.dropFirst("Bearer ".count).trimmingCharacters(in: .whitespaces)
        guard let device = devices[Self.digest(token)] else { throw Self.unauthorized("unknown device token") }
        return device
    }

    /// 401 unless the credential is the named device's.
    func require(_ credential: String?, for device: String) throws {
        guard let credential, credential == device else {
            throw Self.unauthorized("the device token is not device \(device)'s")
        }
    }

    private static func unauthorized(_ message: String) -> HTTPError {
        HTTPError(.unauthorized, headers: [.wwwAuthenticate: "Bearer realm=\"upgrade\""], message: message)
    }
}
