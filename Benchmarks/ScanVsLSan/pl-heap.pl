#!/usr/bin/perl
# pl-heap: a perl heap for the scan benchmark (issue 10 goal 1), with scan-client's protocol.
#
#     pl-heap.pl [N] [L]      N: live malloc blocks to aim at (default 1340000), L: planted leaks (default 1000)
#
# Debian's /usr/bin/perl (system malloc, ithreads). Builds records (a hash of an id, a name, a score and an
# array of tags; every 8th record a longer text note; every 4th record indexed by name in a second hash)
# until about N blocks are live as the daemon counts them (kmemleak_tracked_objects), plants L leaks,
# prints "LEAK 0x..." per leak and "READY", then obeys stdin: "lsan" runs
# __lsan_do_recoverable_leak_check() (when liblsan is preloaded) and prints "LSAN <nanoseconds> <found>";
# "exit" (or EOF) exits.
#
# What the scanners see: perl keeps its SV heads and most SV bodies (and the hash entries) in arenas, malloc'd
# blocks of 4080 bytes holding many of them; the per-record malloc blocks are the string buffers, the hash
# bucket arrays, the arrays' element vectors and the shared hash keys. A record is about 4.5 blocks, perl with
# its modules loaded about 11 400 (measured with the daemon's kmemleak_tracked_objects: the constants below).
#
# The leaks are malloc'd through FFI::Platypus (Debian: libffi-platypus-perl): perl itself has no way to
# call malloc and drop the pointer; every block perl allocates stays owned by some SV. A pointer comes back
# into perl as an integer in an SV head; freed SV heads keep their last value inside a live arena, so a
# freed head would hold a stale copy of the address and hide the leak from any conservative scan (the
# daemon's and LeakSanitizer's alike). So the pad variable is zeroed after each leak and the freed heads are
# then taken over by zero scalars (perl reuses them last in, first out). (A planting in which the address is
# never an integer, posix_memalign into a string's buffer, missed as many leaks: what is missed are perl's
# own stale words, in its arenas, save stack and live frames.)
use strict;
use warnings;
use Time::HiRes qw(clock_gettime CLOCK_MONOTONIC);

BEGIN {
    eval { require FFI::Platypus; 1 }
        or die "pl-heap.pl: needs the perl module FFI::Platypus (Debian: apt-get install libffi-platypus-perl; `make deps`)\n";
}

use constant RECORD_BLOCKS => 4.48;
use constant INTERPRETER_BLOCKS => 11400;

my $live = @ARGV > 0 ? $ARGV[0] : 1340000;
my $leaks = @ARGV > 1 ? $ARGV[1] : 1000;

my $ffi = FFI::Platypus->new(api => 2);
$ffi->lib(undef);
my $malloc = $ffi->function(malloc => ['size_t'] => 'opaque');
my $memset = $ffi->function(memset => ['opaque', 'int', 'size_t'] => 'void');
my $check_address = $ffi->find_symbol('__lsan_do_recoverable_leak_check');
my $lsan_check = defined $check_address ? $ffi->function($check_address => [] => 'int') : undef;

my @words = qw(alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november);
my (@records, %by_name);
my $count = int(($live - INTERPRETER_BLOCKS - $leaks) / RECORD_BLOCKS);
for my $i (0 .. $count - 1) {
    my $name = "user-$i";
    my $record = {
        id    => $i + 1000,
        name  => $name,
        score => $i * 0.5,
        tags  => [$i * 7 + 1000, $words[$i % @words] . "-$i"],
    };
    $record->{note} = join(' ', map { $words[($i + $_) % @words] } 0 .. 24) if $i % 8 == 0;
    $by_name{$name} = $record if $i % 4 == 0;
    push @records, $record;
}

my $out = '';
for my $k (0 .. $leaks - 1) {
    my $size = 16 + ($k * 7919) % 1024;
    my $p = $malloc->call($size);
    $memset->call($p, 0x5A, $size);
    $out .= sprintf("LEAK 0x%x\n", $p);
    $p = 0;
}
# The SV heads the calls used are free now and keep their last integers: zero scalars take them over.
{ my @scrub = (0) x 64; }

$| = 1;
print $out, "READY\n";
while (my $line = <STDIN>) {
    if ($line =~ /^lsan/) {
        if (!defined $lsan_check) {
            print "LSAN unavailable\n";
            next;
        }
        my $start = clock_gettime(CLOCK_MONOTONIC);
        my $found = $lsan_check->call();
        printf "LSAN %d %d\n", (clock_gettime(CLOCK_MONOTONIC) - $start) * 1e9, $found;
    } elsif ($line =~ /^exit/) {
        last;
    }
}
