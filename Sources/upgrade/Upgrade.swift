import ArgumentParser
import CUpgradeSys
import UpgradeApply

#if canImport(Glibc)
import Glibc
#endif

/// The `upgrade` command.
struct Upgrade: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "upgrade",
        abstract: "Bring an installed software tree to a signed release with the fewest bytes on the wire.",
        discussion: ExitStatus.helpText,
        subcommands: [
            ManifestCommand.self, DiffCommand.self, KeygenCommand.self, PublishCommand.self, ReleasesCommand.self,
            VerifyRepoCommand.self, BundleCommand.self, ApplyCommand.self, StatusCommand.self, VerifyCommand.self,
            RollbackCommand.self, RecoverCommand.self, ServeCommand.self, SyncCommand.self, ShareCommand.self,
            RootCommand.self, ChannelCommand.self, ConfirmCommand.self, FleetCommand.self,
        ]
    )
}

@main
enum Main {
    /// The tool's version. Printed by `upgrade --version` alone: ArgumentParser's own version
    /// flag is added to every subcommand and won over their `--version <v>` options (a
    /// `publish --version 1.4.0` with its directory forgotten printed this and exited 0).
    static let version = "0.1.0"

    static func main() async {
        if CommandLine.arguments.dropFirst().elementsEqual(["--version"]) {
            print(version)
            Glibc.exit(0)
        }
        JSONOutput.noteArguments(CommandLine.arguments)
        let status: ExitStatus
        do {
            var command = try Upgrade.parseAsRoot()
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
            status = .success
        } catch let exit as ExitCode {
            Glibc.exit(exit.rawValue)
        } catch let status as ExitStatus {
            if JSONOutput.requested { JSONOutput.printError(status, message: "exit \(status.rawValue)") }
            Glibc.exit(status.rawValue)
        } catch {
            status = report(error)
        }
        Glibc.exit(status.rawValue)
    }

    /// Prints an error the way a person needs it and picks the documented exit code.
    static func report(_ error: any Error) -> ExitStatus {
        let parserCode = Upgrade.exitCode(for: error)
        if parserCode == .success {
            // --help and --version.
            print(Upgrade.fullMessage(for: error))
            return .success
        }
        if case .interrupted(let signal, let what) = error as? ApplyError {
            Interruption.exitNow(signal, note: what)
        }
        if let classified = error as? any ClassifiedError {
            Terminal.error("\(classified)")
            if JSONOutput.requested {
                JSONOutput.printError(
                    classified.exitStatus,
                    message: "\(classified)",
                    details: (error as? any DetailedError)?.details ?? nil
                )
            }
            return classified.exitStatus
        }
        if parserCode == .validationFailure || error is ValidationError || "\(type(of: error))".contains("CommandError")
        {
            Terminal.error(Upgrade.fullMessage(for: error))
            Terminal.error("Run 'upgrade --help' for usage.")
            if JSONOutput.requested { JSONOutput.printError(.usage, message: Upgrade.message(for: error)) }
            return .usage
        }
        Terminal.error("\(error)")
        if JSONOutput.requested { JSONOutput.printError(.failure, message: "\(error)") }
        return .failure
    }

    /// For one-shot commands that scan a whole tree (a million entries is ~450 MB of arrays that
    /// come and go): big arrays from the heap instead of fresh mmaps, and memory freed mid-run
    /// kept for the next allocation instead of returned and faulted in again (a no-op sync of a
    /// million files: 2.07 s -> 1.98 s, mostly kernel page-clearing saved). Not for `serve`,
    /// whose footprint should follow its load.
    static func keepFreedMemory() {
        upgrade_keep_freed_memory()
    }

    /// For commands that change a root: SIGTERM/SIGINT end the run safely (see ``Interruption``)
    /// with one line saying what happened, and exit 128 + the signal.
    static func stopOnSignals() {
        Interruption.install { signal, note in
            Terminal.error(
                "interrupted by \(Interruption.name(signal)); \(note ?? "nothing was changed; finished downloads are kept for the next run")"
            )
            Glibc.exit(128 + signal)
        }
    }
}
