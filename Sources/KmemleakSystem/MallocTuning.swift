// The daemon's own malloc: keep its large, growing arrays out of glibc's brk heap, and its threads'
// transients in one arena.
import CKmemleakSys

public enum MallocTuning {
    /// The mmap threshold the daemon fixes: glibc's initial value (128 KiB).
    public static let mmapThreshold: Int32 = 128 * 1024

    /// Fixes glibc's mmap threshold. glibc raises its dynamic threshold every time a mmapped block is
    /// freed, so once the engine's index arrays have grown (by copies) a few times, later copies come
    /// from the brk heap and the freed old ones stay resident: about 19 B per tracked object at 300 K
    /// objects (BENCHMARKS.md, issue 10). Returns false if glibc refused.
    @discardableResult
    public static func fixMmapThreshold() -> Bool { ckml_malloc_set_mmap_threshold(mmapThreshold) == 1 }

    /// Arenas the daemon's malloc may use: one. glibc gives a thread that mallocs while the arenas it
    /// knows are busy an arena of its own (up to 8 per core), and what a thread frees stays in its
    /// arena: the scan's workers, the FUSE threads (a report's symbolization) and the scanning thread
    /// each kept their transients resident, about 1 B per tracked object on the realistic C heap at
    /// 1 M objects (BENCHMARKS.md, goal 5, branch `memc`). The daemon's threads malloc little while
    /// they scan (batches and arrays are reused), so the one arena's lock costs no measurable scan time.
    public static let arenaMax: Int32 = 1

    /// Limits glibc's arenas to `arenaMax`. Returns false if glibc refused.
    @discardableResult
    public static func limitArenas() -> Bool { ckml_malloc_set_arena_max(arenaMax) == 1 }

    /// Gives the free pages of malloc's heap back to the system (`malloc_trim(0)`: free chunks inside the
    /// heap too, not only at its top). Returns whether any memory was released.
    @discardableResult
    public static func returnFreeMemory() -> Bool { ckml_malloc_trim() == 1 }
}
