import AsyncHTTPClient
import Foundation

/// The proxy a request to the server or mirror goes through, from the environment the way curl
/// reads it: `http_proxy` for http:// URLs, `https_proxy` for https:// (tunnelled with
/// CONNECT), upper-case forms as fallbacks (`HTTP_PROXY` is ignored when the process looks
/// like CGI, as curl does), and `no_proxy` (comma-separated host names, domain suffixes such
/// as `.example.com` or `example.com`, `*`, or IP literals) for hosts reached directly.
/// Loopback is never proxied unless named by the proxy itself. LAN peers never use a proxy.
public struct ProxySettings: Sendable, Equatable {
    public var http: Endpoint?
    public var https: Endpoint?
    public var noProxy: [String]

    /// A proxy's address and, when its URL carries `user:password@`, basic credentials.
    public struct Endpoint: Sendable, Equatable {
        public var host: String
        public var port: Int
        public var user: String?
        public var password: String?
    }

    public init(http: Endpoint? = nil, https: Endpoint? = nil, noProxy: [String] = []) {
        self.http = http
        self.https = https
        self.noProxy = noProxy
    }

    /// Reads the variables; a value that is not a proxy URL is an error naming the variable.
    public init(environment: [String: String]) throws(ProxyError) {
        func value(_ names: String...) -> (String, String)? {
            for name in names { if let v = environment[name], !v.isEmpty { return (name, v) } }
            return nil
        }
        let cgi = environment["REQUEST_METHOD"] != nil
        let httpValue = cgi ? value("http_proxy") : value("http_proxy", "HTTP_PROXY")
        self.http = try httpValue.map { (name, text) throws(ProxyError) in try Self.endpoint(text, variable: name) }
        self.https = try value("https_proxy", "HTTPS_PROXY").map { (name, text) throws(ProxyError) in
            try Self.endpoint(text, variable: name)
        }
        self.noProxy = (value("no_proxy", "NO_PROXY")?.1 ?? "").split(separator: ",").map {
            $0.trimmingCharacters(in: .whitespaces).lowercased()
        }.filter { !$0.isEmpty }
    }

    /// The proxy for `url`, or nil to connect directly.
    public func proxy(for url: String) -> Endpoint? {
        guard let components = URLComponents(string: url), let host = components.host?.lowercased() else { return nil }
        let endpoint = components.scheme?.lowercased() == "https" ? https : http
        guard let endpoint else { return nil }
        let bare = host.trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
        if bare == "localhost" || bare.hasPrefix("127.") || bare == "::1" {
            // Loopback goes direct unless the proxy lives there too (then the user means it).
            if !(endpoint.host.hasPrefix("127.") || endpoint.host == "localhost" || endpoint.host == "::1") {
                return nil
            }
        }
        for pattern in noProxy {
            if pattern == "*" { return nil }
            let suffix = pattern.hasPrefix(".") ? String(pattern.dropFirst()) : pattern
            let patternHost = suffix.split(separator: ":").count == 2 ? String(suffix.split(separator: ":")[0]) : suffix
            if bare == patternHost || bare.hasSuffix("." + patternHost) { return nil }
        }
        return endpoint
    }

    /// AsyncHTTPClient's form of the proxy for `url`.
    func configuration(for url: String) -> HTTPClient.Configuration.Proxy? {
        guard let endpoint = proxy(for: url) else { return nil }
        if let user = endpoint.user {
            return .server(
                host: endpoint.host,
                port: endpoint.port,
                authorization: .basic(username: user, password: endpoint.password ?? "")
            )
        }
        return .server(host: endpoint.host, port: endpoint.port)
    }

    private static func endpoint(_ text: String, variable: String) throws(ProxyError) -> Endpoint {
        let withScheme = text.contains("://") ? text : "http://" + text
        guard let components = URLComponents(string: withScheme), let host = components.host, !host.isEmpty,
            components.scheme?.lowercased() == "http"
        else {
            throw .invalid(variable: variable, why: "expected http://HOST:PORT (an HTTP proxy)")
        }
        return Endpoint(
            host: host,
            port: components.port ?? 80,
            user: components.user?.removingPercentEncoding,
            password: components.password?.removingPercentEncoding
        )
    }
}

/// A proxy variable that cannot be used. The message names the variable, never its value
/// (which may hold a password).
public enum ProxyError: Error, CustomStringConvertible {
    case invalid(variable: String, why: String)

    public var description: String {
        switch self {
        case .invalid(let variable, let why): "$\(variable) is not a usable proxy: \(why)"
        }
    }
}
