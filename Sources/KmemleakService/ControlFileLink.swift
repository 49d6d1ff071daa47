// `--control-link PATH`: PATH becomes a symbolic link to MOUNTPOINT/kmemleak, so that the unit can mount
// in a directory of its own and still give `echo scan > /mnt/kmemleak` without hiding the rest of /mnt.
import Glibc

/// Why the link could not be made (the mount itself still serves).
public enum ControlFileLinkError: Error, Sendable, Equatable, CustomStringConvertible {
    /// Something that is not our link is already at the path: never replaced, never removed.
    case occupied(path: String, by: String)
    case call(String, path: String, errno: Int32)

    public var description: String {
        switch self {
        case .occupied(let path, let by):
            return "\(path): already exists (\(by)); not replaced"
        case .call(let call, let path, let errno):
            return "\(call)(\(path)): \(String(cString: strerror(errno))) (errno \(errno))"
        }
    }
}

/// A symbolic link at `path` to `target`, made at start and removed at stop only while it is still ours.
public struct ControlFileLink: Sendable, Equatable {
    public let path: String
    public let target: String

    public init(path: String, target: String) {
        self.path = path
        self.target = target
    }

    /// Makes the link. A link that already points to `target` (left by a daemon that was killed) is kept;
    /// anything else at the path (a file, a directory, a link elsewhere) is an administrator's and is left
    /// alone with an error.
    public func create() throws(ControlFileLinkError) {
        for _ in 0..<2 {
            if let existing = try currentTarget() {
                if existing == target { return }
                throw .occupied(path: path, by: "a symbolic link to \(existing)")
            }
            if symlink(target, path) == 0 { return }
            let error = errno
            // Made by someone else between the two calls: look again, once.
            guard error == EEXIST else { throw .call("symlink", path: path, errno: error) }
        }
        throw .occupied(path: path, by: "created while the daemon was making it")
    }

    /// Removes the link if it is still ours (points to `target`); false if it was not there or not ours.
    @discardableResult
    public func remove() -> Bool {
        guard (try? currentTarget()) == .some(target) else { return false }
        return unlink(path) == 0
    }

    /// What the symbolic link at `path` points to; nil when nothing is there; throws when something
    /// other than a symbolic link is there.
    func currentTarget() throws(ControlFileLinkError) -> String? {
        var st = stat()
        guard lstat(path, &st) == 0 else {
            let error = errno
            if error == ENOENT { return nil }
            throw .call("lstat", path: path, errno: error)
        }
        guard (st.st_mode & S_IFMT) == S_IFLNK else {
            throw .occupied(path: path, by: (st.st_mode & S_IFMT) == S_IFDIR ? "a directory" : "not a symbolic link")
        }
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = readlink(path, &buffer, buffer.count - 1)
        guard n >= 0 else { throw .call("readlink", path: path, errno: errno) }
        return String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
