// KmemleakSystem: the only module of kmemleakd that makes system calls.
//
//   SystemError.swift     typed errors (call, errno, path/pid), EINTR-retrying wrappers, FileHandleFD
//   Proc.swift            /proc/PID/{maps,stat,task,exe}: MapEntry, ProcStat, liveness
//   ProcessMemory.swift   MemoryReader over process_vm_readv: coalesced batches, exact fault attribution
//   TableStorage.swift    where a table's bytes are: a memfd (pread) or the client's private memory
//                         (process_vm_readv of present anonymous pages only, per /proc/PID/pagemap)
//   ClientTable.swift     the client's table (kmemleak_abi.h) read from its storage: Rendezvous,
//                         TableHeader validation, seqlock-consistent ObjectRecord/ThreadRecord/
//                         RegionRecord/AreaRecord streams, cached traces and comms, daemon fields
//   ClientDiscovery.swift rendezvous directory scan (adopt, remove stale), ClientID, ClientReportContext
//   Roots.swift           RootRange: writable PT_LOAD data of every ELF object, thread stacks, static TLS
//   ELF.swift             a small validated ELF64 reader: program headers, build id
//   ELFDebugImage.swift   the validated in-memory copy of a file's symbols and DWARF that libelf reads
//   DebugInfo.swift       elfutils (libdwfl/libdw): symbols, file:line, inline chains of one file
//   Symbolizer.swift      frames and %pS text for a process's return addresses, shared ELFCache
//   MallocTuning.swift    the daemon's own malloc: a fixed mmap threshold, one arena
//
// Everything read from a client (its table, its rendezvous file, its maps, its ELF files) is untrusted:
// malformed input gives a typed error, never a trap and never an allocation sized by a claimed count.
import KmemleakEngine
