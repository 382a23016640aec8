import ArgumentParser
import UpgradeRepository

/// `upgrade keygen --output FILE`.
struct KeygenCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keygen",
        abstract: "Create an Ed25519 publisher key pair.",
        discussion: """
            Writes the private key to FILE (mode 0600) and the public key to FILE.pub, one line \
            of the form ed25519:<base64> that fits a config file or a --trust flag. An existing \
            key is never replaced unless --force is given (exit 5 otherwise).
            """
    )

    @Option(name: .shortAndLong, help: "Private key file to create.")
    var output: String

    @Flag(help: "Replace an existing key pair.")
    var force = false

    func run() async throws {
        let key = try KeyFiles.generate(at: output, overwrite: force)
        print("private key: \(output)")
        print("public key:  \(output).pub  (key id \(key.keyID))")
        print(key.text)
    }
}
