/// The man page part of `kmemleakd --help`. ArgumentParser wraps at 80 columns (the terminal's width
/// when it is one): keep every line under 78 characters.
let helpDiscussion = """
    kmemleakd is the user-space twin of the kernel's kmemleak. Programs started
    with libkmemleak.so (LD_PRELOAD) record every allocation in a table shared
    with the daemon. The daemon scans the memory of those processes (data and
    bss of every loaded object, thread stacks, registered regions, then the
    heap objects reachable from them) and reports allocated objects that
    nothing points to any more. As with the kernel's debugfs file
    /sys/kernel/debug/kmemleak, everything goes through one file,
    MOUNTPOINT/kmemleak. The daemon runs in the foreground, logs to stderr
    (lines start with "kmemleak: ", like the kernel log) and unmounts cleanly
    on SIGTERM, SIGINT or SIGHUP.

    CONTROL COMMANDS
      Written to MOUNTPOINT/kmemleak, one command per write(2). Only the
      first 63 bytes of a write are read; commands match by prefix (the
      kernel's strncmp); a trailing newline is fine; the offset is ignored.
      scan         Scan memory now; the write returns when the scan is done.
                   New leaks are logged as
                   "kmemleak: N new suspected memory leaks (see ...)".
      clear        Clear the list of current possible leaks: objects
                   reported so far are not reported again. Also allowed
                   after "off", where it frees all metadata.
      dump=ADDR    Log what is known about the object containing ADDR (hex
                   0x..., decimal or octal 0...; interior pointers are
                   fine) to the daemon's log; nothing goes to the file.
                   Unknown address or bad number: EINVAL.
      scan=on      Start the automatic scanning thread (it scans at once,
                   then once per period).
      scan=off     Stop the automatic scanning thread.
      scan=SECS    Set the automatic scan period to SECS seconds and restart
                   the thread; scan=0 stops it. Not a number: EINVAL; too
                   large: ERANGE.
      stack=on     Scan thread stacks (the default).
      stack=off    Do not scan thread stacks.
      off          Disable the detector, irreversibly. Afterwards every
                   command except clear fails with EPERM ("Operation not
                   permitted"); leaks already reported stay readable until
                   "clear".
      Anything else fails with EINVAL ("Invalid argument"). A write that a
      signal interrupts while it waits for a running scan fails with EINTR.

    READING
      cat MOUNTPOINT/kmemleak prints one record per unreferenced object, in
      allocation order, without header: "unreferenced object 0xADDR (size
      N):", the comm, pid and jiffies of the allocating thread, a hex dump of
      the first 32 bytes, and the backtrace with its crc. A read never starts
      a scan, but waits while one runs. Each open file reads one consistent
      snapshot.

    VIEWS
      Read-only files (mode 0444) next to the control file, each one
      consistent snapshot per open file, covering exactly the leaks that
      MOUNTPOINT/kmemleak shows (suppressed ones in none of them):
      kmemleak.summary
             One block per distinct backtrace, largest total size first:
             bytes, objects, direct and indirect counts (as LeakSanitizer
             classifies them), the pids and comms, the frames; then the
             suppressions used and a SUMMARY line of totals.
      kmemleak.json
             NDJSON, one object per leak (schema in README.md).
      kmemleak.pb.gz
             A gzip-compressed pprof profile (google/pprof profile.proto):
             sample types inuse_objects/count and inuse_space/bytes, one
             sample per stack and process, labels pid and comm, mappings
             with build ids. Reads with `go tool pprof -top`; Pyroscope and
             Parca ingest it.
      kmemleak.prom
             The Prometheus text exposition format, for node_exporter's
             textfile collector pointed at the mount: per client (labels
             comm, pid) suspected leaks and bytes, tracked objects and bytes;
             per daemon scans, scan duration, clients, errors; suppressed
             leaks and bytes per pattern. No stack labels.

    SUPPRESSIONS
      --suppressions FILE reads LeakSanitizer's format: one leak:PATTERN
      per line, # comments and blank lines. PATTERN matches a substring of
      the module path, function or source file name of any frame; * is any
      run of characters, ^ and $ anchor the start and end. Leaks that a
      suppressed leak points to, directly or through other leaks, are
      suppressed with it. A bad file (any
      other line, an empty pattern, unreadable) stops the daemon before it
      mounts, with the file and line.

    FILES
      MOUNTPOINT/kmemleak
             The control file, mode 0644, in a FUSE file system (fsname
             kmemleak, type fuse.kmemleak) that only root may enter unless
             --allow-other is given.
      MOUNTPOINT/kmemleak.summary, .json, .pb.gz, .prom
             The views (see VIEWS), mode 0444.
      /mnt/kmemleak
             The service's --control-link: a symbolic link to
             /run/kmemleakd/kmemleak, where the unit mounts the file system,
             so that nothing else under /mnt is hidden. Made after the mount,
             removed at stop; anything else already at the path is left alone
             (one error line) and the mount still serves.
      RUN_DIR/<pid>.client, RUN_DIR/<pid>.<random>.client
             One per client process, created by libkmemleak.so when the
             process starts (the second form when another user holds the
             first name); the daemon adopts the process through it and
             drops it when the process exits. Files of processes that are
             gone, or that another user wrote, are removed (regular files
             only). Clients of RUN_DIR without a file (their table is then
             a memfd named after RUN_DIR) are found in /proc unless
             --no-discover-proc. A forked child writes no file: it is found
             in /proc by its copy of the table (with --no-discover-proc, as
             a child of an adopted client).

    ENVIRONMENT
      KMEMLEAK_RUN_DIR
             In clients: where libkmemleak.so registers (default
             /run/kmemleak). In the daemon: the default of --run-dir. Both
             must name the same directory.
      LD_PRELOAD=libkmemleak.so
             Loads the client library into a program (or link -lkmemleak).
      KMEMLEAK=off
             In a client: do not track this process.
      KMEMLEAK_WRITE_TRACKING=off
             In a client: no userfaultfd for write tracking; a scan with
             new candidates then re-reads all of its memory while frozen.
      NOTIFY_SOCKET
             Set by systemd (Type=notify): READY=1 is sent once
             MOUNTPOINT/kmemleak is served, STOPPING=1 at shutdown.
      JOURNAL_STREAM
             Set by systemd: log lines then carry syslog priorities (<6>).
      KMEMLEAKD_LOG_LEVEL
             Daemon log threshold: trace, debug, info (default), notice,
             warning, error or critical. debug also logs each confirmation:
             the bytes re-read, the freeze's duration and its parts.
      KMEMLEAKD_SCAN_WORKERS
             The default of --scan-workers: how many threads share a scan's
             reads and address lookups (default: the online CPUs, at most
             4; 1 scans on one thread). Reports are the same for any value.
      DEBUGINFOD_URLS
             In the daemon: debug files missing from --debug-file-directory
             are fetched by build id from these debuginfod servers. Unset
             (the default under systemd), nothing reaches the network.

    EXAMPLE
      # kmemleakd --scan-period 0 /mnt &
      # LD_PRELOAD=/usr/lib/libkmemleak.so KMEMLEAK_RUN_DIR=/run/kmemleak \\
            ./server &
      # echo scan > /mnt/kmemleak
      # cat /mnt/kmemleak
      # echo clear > /mnt/kmemleak
      # kill %1          (SIGTERM: /mnt is unmounted, the daemon exits 0)

    SECURITY
      The daemon runs as root and reads its clients' memory; every byte a
      client writes into its table and every file it maps is treated as
      hostile. A client cannot crash the daemon, and its cost is bounded:
      at most --max-objects live objects (default 4194304; table slots up
      to twice that), 131072 threads, 4096 regions and 1048576 scan areas,
      else it is dropped with one log line; mapped ELF files are parsed
      with no descriptor kept and nothing of them mapped: at most 1170
      program headers, and an in-memory copy of at most 512 MiB of symbol
      tables and DWARF (compressed sections: 1 GiB declared, MiniDebugInfo:
      128 MiB) that elfutils reads, in a cache of at most 4096 files and
      256 MiB. Separate debug files are looked up only under
      --debug-file-directory, never next to a client's files.
      Names the client controls (comm, symbol and module names) are
      escaped in the report and the log (\\n, \\", \\\\, \\xNN), so each
      line keeps the kernel's shape.
      Without --allow-other only root can enter the mount. With it, any
      user may read MOUNTPOINT/kmemleak and the views but sees only the
      records of clients that run as that user (real, effective, saved and
      fs uid, and dumpable, as /proc decides), fixed when a file is first
      read; root sees every client. Only root may write commands (scan, clear,
      off, stack=, scan=, dump=): other users get EACCES ("Permission
      denied"), from the file's mode 0644 and from the daemon itself.

    MOUNT POINT
      A stale mount left by a killed daemon ("Transport endpoint is not
      connected") is cleared and replaced at start. A mount point on which
      another file system is mounted and alive is an error: mounts are never
      stacked. The mount hides whatever the directory held, so give the
      daemon a directory of its own (the unit: /run/kmemleakd) and use
      --control-link for a well-known path such as /mnt/kmemleak.

    EXIT STATUS
      0    stopped by SIGTERM, SIGINT or SIGHUP, or unmounted from outside
      1    runtime failure: the mount point is busy or cannot be mounted, or
           the detector failed to start
      64   usage error: unknown option, bad number, MOUNTPOINT missing or
           not a directory
    """
