// Facts about a client process that its table cannot be trusted to tell: whose it is (for the
// per-user view of the report, `--allow-other`) and how many CPUs it can have.
import Glibc

public enum ProcessOwner {
    /// The uid `pid` runs as, by /proc's rules for an unprivileged reader (ptrace_may_access): real,
    /// effective, saved and filesystem uids all equal, and the process dumpable (the kernel then owns
    /// /proc/PID by that uid; a setuid program or one that called PR_SET_DUMPABLE 0 has it owned by
    /// root). nil when the uids differ or the process is gone: only root may see such a client.
    public static func uid(of pid: Int32) -> uid_t? {
        guard let status = try? ProcFile.read("/proc/\(pid)/status", limit: 64 << 10) else { return nil }
        guard let uids = parseUids(status), let first = uids.first, uids.allSatisfy({ $0 == first }) else { return nil }
        var st = stat()
        guard stat("/proc/\(pid)", &st) == 0, st.st_uid == first else { return nil }
        return first
    }

    /// The four numbers of the `Uid:` line of /proc/PID/status.
    static func parseUids(_ status: [UInt8]) -> [uid_t]? {
        let text = String(decoding: status, as: UTF8.self)
        guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix("Uid:") }) else { return nil }
        let fields = line.dropFirst(4).split(whereSeparator: { $0 == "\t" || $0 == " " }).compactMap { uid_t($0) }
        return fields.count == 4 ? fields : nil
    }
}

public enum HostCPUs {
    /// The host's possible CPU ids + 1 (/sys/devices/system/cpu/possible, the shim's nr_cpu_ids): a
    /// client on this kernel cannot have more, whatever its header says.
    public static let possible: Int = {
        guard let bytes = try? ProcFile.read("/sys/devices/system/cpu/possible", limit: 4096) else {
            return max(1, sysconf(Int32(_SC_NPROCESSORS_CONF)))
        }
        return parsePossible(bytes) ?? max(1, sysconf(Int32(_SC_NPROCESSORS_CONF)))
    }()

    /// "0-3,8-11\n" -> 12 (the last id + 1).
    static func parsePossible(_ bytes: [UInt8]) -> Int? {
        let text = String(decoding: bytes, as: UTF8.self)
        guard let last = text.split(whereSeparator: { $0 == "," || $0 == "-" || $0 == "\n" || $0 == " " }).last, let id = Int(last), id >= 0,
              id < 1 << 20 else { return nil }
        return id + 1
    }
}
