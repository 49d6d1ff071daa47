// The daemon's own malloc: keep its large, growing arrays out of glibc's brk heap.
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
}
