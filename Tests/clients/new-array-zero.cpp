// new-array-zero: `new T[0]` for a T with a destructor allocates an 8-byte block holding the element
// count 0 (the array cookie) and returns the block's end. Keeps four such pointers in a global (not
// leaks: LeakSanitizer counts them too) and drops one (a leak, reported at its block start).
// Prints "KEEP 0x..." / "LEAK 0x..." (block starts), then "READY", and waits for stdin EOF or "exit".
#include <cstdint>
#include <cstdio>
#include <cstring>

struct Tracked {
    int value = 0;
    ~Tracked() { std::fputs("", stdout); }  // a destructor the compiler must run: new[] stores a cookie
};

static Tracked *held[4];

static __attribute__((noinline)) void say(const char *tag, const void *end) {
    // The block starts at the cookie, 8 bytes before what new[] returned.
    std::printf("%s 0x%lx\n", tag, static_cast<unsigned long>(reinterpret_cast<uintptr_t>(end) - 8));
}

static __attribute__((noinline)) void allocate() {
    for (auto &h : held) {
        h = new Tracked[0];
        say("KEEP", h);
    }
    Tracked *dropped = new Tracked[0];
    say("LEAK", dropped);
}

static __attribute__((noinline)) void scrub_stack() {
    volatile char area[16 * 1024];
    std::memset(const_cast<char *>(area), 0, sizeof area);
}

int main() {
    allocate();
    scrub_stack();
    std::printf("READY\n");
    std::fflush(stdout);
    char line[64];
    while (std::fgets(line, sizeof line, stdin) && std::strncmp(line, "exit", 4) != 0) {
    }
    return 0;
}
