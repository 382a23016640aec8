// Debian's libxxhash 0.8.1 exports the x86 runtime-dispatch entry points (AVX2/AVX-512 when the
// CPU has them, ~30 GB/s) besides the plain SSE2 ones (~5.5 GB/s). Swift does not import the
// header's replacement macros, so the Swift wrapper calls the *_dispatch functions by name.
#define XXH_DISPATCH_DISABLE_REPLACE 1
#include <xxhash.h>
#if defined(__x86_64__)
#include <xxh_x86dispatch.h>
#endif
