/* The ABI target is header-only; SwiftPM needs one source file. */
#include "kmemleak_abi.h"
