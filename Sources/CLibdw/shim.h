// elfutils (libdwfl, libdw, libelf) for the daemon's symbolizer (Sources/KmemleakSystem/DebugInfo.swift),
// and the two callbacks libdwfl needs that Swift cannot hand it as C function pointers with state.
//
// The rule these callbacks keep: libdwfl opens nothing the client chose. The module's ELF image is the
// daemon's own copy (elf_memory, built and validated in Swift), and separate debug files are looked up
// only under the debug-file directory (never the client's directory or its .debug/, never by a path the
// client wrote, never through realpath of a client path).
#include <elfutils/libdwfl.h>
#include <elfutils/libdw.h>
#include <elfutils/libdwelf.h>
#include <libelf.h>
#include <gelf.h>
#include <dwarf.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* What one module's callbacks need (owned by the Swift DebugModule, which outlives its Dwfl). */
struct kml_module_data {
    Elf *elf;                     /* handed to libdwfl by find_elf, which then owns it (NULL after) */
    const char *debug_directory;  /* absolute; the only place debug files are looked for */
};

static inline int kml_dwfl_find_elf(Dwfl_Module *mod, void **userdata, const char *modname,
                                    Dwarf_Addr base, char **file_name, Elf **elfp) {
    (void)mod; (void)base;
    struct kml_module_data *data = (struct kml_module_data *)*userdata;
    if (data == NULL) return -1;
    *elfp = data->elf;
    data->elf = NULL;
    /* The name only tells find_debuginfo which subdirectory of the debug directory to try. */
    if (file_name != NULL && *file_name == NULL && modname != NULL) *file_name = strdup(modname);
    return -1; /* no descriptor: the image is in memory */
}

/* A debug-file candidate under the debug directory: regular file, opened without blocking. */
static inline int kml_open_debug_candidate(const char *path, const unsigned char *id, int id_len) {
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) return -1;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) { close(fd); return -1; }
    if (id_len > 0) {
        /* Same build id as the module, as libdwfl's own path search checks. */
        Elf *elf = elf_begin(fd, ELF_C_READ_MMAP, NULL);
        const void *found = NULL;
        ssize_t n = elf != NULL ? dwelf_elf_gnu_build_id(elf, &found) : -1;
        int same = n == id_len && memcmp(found, id, (size_t)id_len) == 0;
        if (elf != NULL) elf_end(elf);
        if (!same) { close(fd); return -1; }
    }
    return fd;
}

static inline int kml_try_debuglink(const char *dir, const char *subdir, const char *name,
                                    const unsigned char *id, int id_len, char **found) {
    size_t len = strlen(dir) + strlen(subdir) + strlen(name) + 3;
    char *path = malloc(len);
    if (path == NULL) return -1;
    snprintf(path, len, "%s%s/%s", dir, subdir, name);
    int fd = kml_open_debug_candidate(path, id, id_len);
    if (fd >= 0) *found = path; else free(path);
    return fd;
}

static inline int kml_dwfl_find_debuginfo(Dwfl_Module *mod, void **userdata, const char *modname,
                                          Dwarf_Addr base, const char *file_name, const char *debuglink_file,
                                          GElf_Word debuglink_crc, char **debuginfo_file_name) {
    /* 1. DIR/.build-id/xx/yyyy.debug (the callbacks' debuginfo_path names only DIR). */
    int fd = dwfl_build_id_find_debuginfo(mod, userdata, modname, base, file_name, debuglink_file,
                                          debuglink_crc, debuginfo_file_name);
    if (fd >= 0) return fd;
    struct kml_module_data *data = (struct kml_module_data *)*userdata;
    /* 2. .gnu_debuglink, a bare file name (the client wrote it: no '/', so no way out of DIR), in
       DIR/<directory of the main file>/ and in DIR/. The alternate (dwz) file is found by build id only. */
    if (data != NULL && debuglink_file != NULL && debuglink_file[0] != '\0' && strchr(debuglink_file, '/') == NULL
        && strcmp(debuglink_file, ".") != 0 && strcmp(debuglink_file, "..") != 0) {
        const unsigned char *id = NULL;
        GElf_Addr id_vaddr;
        int id_len = dwfl_module_build_id(mod, &id, &id_vaddr);
        if (id_len < 0) id_len = 0;
        if (file_name != NULL && file_name[0] == '/') {
            const char *slash = strrchr(file_name, '/');
            char *subdir = strndup(file_name, (size_t)(slash - file_name));
            if (subdir != NULL) {
                fd = kml_try_debuglink(data->debug_directory, subdir, debuglink_file, id, id_len, debuginfo_file_name);
                free(subdir);
                if (fd >= 0) return fd;
            }
        }
        fd = kml_try_debuglink(data->debug_directory, "", debuglink_file, id, id_len, debuginfo_file_name);
        if (fd >= 0) return fd;
    }
    /* 3. debuginfod, by build id, only when the administrator set DEBUGINFOD_URLS. No file name and no
       debuglink: libdwfl's standard search then neither walks nor canonicalizes client paths. */
    const char *urls = getenv("DEBUGINFOD_URLS");
    if (urls != NULL && urls[0] != '\0')
        return dwfl_standard_find_debuginfo(mod, userdata, modname, base, NULL, NULL, 0, debuginfo_file_name);
    return -1;
}

/* Fills CALLBACKS with ours; CALLBACKS and *DEBUGINFO_PATH (the debug directory alone) must outlive
   every Dwfl begun with them. */
static inline void kml_dwfl_callbacks_init(Dwfl_Callbacks *callbacks, char **debuginfo_path) {
    memset(callbacks, 0, sizeof *callbacks);
    callbacks->find_elf = kml_dwfl_find_elf;
    callbacks->find_debuginfo = kml_dwfl_find_debuginfo;
    callbacks->section_address = dwfl_offline_section_address;
    callbacks->debuginfo_path = debuginfo_path;
}

/* Reports the one module of DWFL at [LOW, HIGH) (the file's own addresses) with DATA as its userdata. */
static inline Dwfl_Module *kml_dwfl_report(Dwfl *dwfl, const char *name, Dwarf_Addr low, Dwarf_Addr high,
                                           struct kml_module_data *data) {
    dwfl_report_begin(dwfl);
    Dwfl_Module *mod = dwfl_report_module(dwfl, name, low, high);
    if (mod != NULL) {
        void **userdata = NULL;
        dwfl_module_info(mod, &userdata, NULL, NULL, NULL, NULL, NULL, NULL);
        if (userdata != NULL) *userdata = data;
    }
    dwfl_report_end(dwfl, NULL, NULL);
    return mod;
}
